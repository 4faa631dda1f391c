//! Distinguished names (RFC 4514), parsed rather than compared as strings.
//!
//! One directory writes `ou=R&D\, Lab`, another `ou=R&D\2C Lab`; a member value may say
//! `CN=Anna` where the entry's own DN says `cn=anna`, or put spaces after the commas. These
//! all name the same entry. A [`Dn`] is the list of its RDNs (leaf first), each a set of
//! attribute type and value pairs with every escape undone; [`Dn::key`] renders it in one
//! canonical form (types lowercased and known OIDs named, values case-folded with
//! insignificant spaces removed, the AVAs of a multi-valued RDN sorted) so that equal names
//! have equal keys whatever their spelling. Pure; no I/O.

use std::fmt;

/// A parsed distinguished name. The empty DN (the root DSE) has no RDNs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dn {
    /// Leaf first: `uid=anna,ou=people,dc=x` is `[uid=anna, ou=people, dc=x]`.
    rdns: Vec<Rdn>,
}

/// One relative distinguished name: one or more `type=value` pairs joined by `+`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rdn {
    avas: Vec<Ava>,
}

/// An attribute type and value assertion, with the value unescaped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ava {
    /// The attribute type as written (`ou`, `OU`, `2.5.4.11`).
    pub attr: String,
    /// The value with every escape undone (`R&D, Lab`).
    pub value: String,
}

/// Why a string is not a DN.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a valid distinguished name (RFC 4514): {problem} at character {at}")]
pub struct DnError {
    pub problem: &'static str,
    /// 1-based position in the input, in characters.
    pub at: usize,
}

impl Dn {
    /// Parses an RFC 4514 string. Lenient where real directories are: spaces around `,`,
    /// `+` and `=`, `;` as an RDN separator (RFC 2253), `oid.` prefixes on numeric types.
    pub fn parse(text: &str) -> Result<Dn, DnError> {
        Parser::new(text).dn()
    }

    pub fn rdns(&self) -> &[Rdn] {
        &self.rdns
    }

    /// The canonical comparison key: equal for DNs that name the same entry.
    pub fn key(&self) -> String {
        let mut out = String::with_capacity(64);
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            rdn.write_key(&mut out);
        }
        out
    }

    /// Whether this DN is `base` or below it.
    pub fn is_within(&self, base: &Dn) -> bool {
        self.below(base).is_some()
    }

    /// The RDNs of this DN above which `base` sits (leaf first), when this DN is `base` or
    /// below it; `Some(&[])` for `base` itself.
    pub fn below(&self, base: &Dn) -> Option<&[Rdn]> {
        let n = self.rdns.len().checked_sub(base.rdns.len())?;
        let (own, tail) = self.rdns.split_at(n);
        tail.iter()
            .zip(&base.rdns)
            .all(|(a, b)| a.key() == b.key())
            .then_some(own)
    }
}

impl Rdn {
    pub fn avas(&self) -> &[Ava] {
        &self.avas
    }

    /// The value of the AVA whose type is `attr` (case-insensitive, OIDs understood).
    pub fn value_of(&self, attr: &str) -> Option<&str> {
        let wanted = type_key(attr);
        self.avas
            .iter()
            .find(|a| type_key(&a.attr) == wanted)
            .map(|a| a.value.as_str())
    }

    fn key(&self) -> String {
        let mut out = String::new();
        self.write_key(&mut out);
        out
    }

    /// Appends [`Rdn::key`] to `out`; one AVA (nearly every RDN) without a detour.
    fn write_key(&self, out: &mut String) {
        if let [ava] = self.avas.as_slice() {
            ava.write_key(out);
            return;
        }
        let mut parts: Vec<String> = self
            .avas
            .iter()
            .map(|a| {
                let mut part = String::new();
                a.write_key(&mut part);
                part
            })
            .collect();
        parts.sort();
        out.push_str(&parts.join("+"));
    }
}

impl Ava {
    /// Appends `type=value` as keys compare it: [`type_key`], then the [`fold`]ed value
    /// with [`escape_key`]. ASCII (nearly every name) is folded in place.
    fn write_key(&self, out: &mut String) {
        let attr = self.attr.trim();
        if attr.bytes().all(|b| b.is_ascii_alphabetic() || b == b'-') && !attr.is_empty() {
            out.extend(attr.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            out.push_str(&type_key(attr));
        }
        out.push('=');
        if self.value.is_ascii() {
            for (i, word) in self.value.split_whitespace().enumerate() {
                if i > 0 {
                    out.push(' ');
                }
                for c in word.chars() {
                    if matches!(c, '\\' | ',' | '+' | '=') {
                        out.push('\\');
                    }
                    out.push(c.to_ascii_lowercase());
                }
            }
        } else {
            out.push_str(&escape_key(&fold(&self.value)));
        }
    }
}

impl fmt::Display for Dn {
    /// RFC 4514 form, with the values escaped where the RFC requires it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rdn) in self.rdns.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            for (j, ava) in rdn.avas.iter().enumerate() {
                if j > 0 {
                    f.write_str("+")?;
                }
                write!(f, "{}={}", ava.attr, escape_value(&ava.value))?;
            }
        }
        Ok(())
    }
}

/// The comparison key of a DN string. A string that does not parse as a DN keys as its
/// trimmed, lowercased self, behind a prefix no parsed DN can have, so it equals only
/// another spelling of the same broken string and never a real entry.
pub fn key(text: &str) -> String {
    if is_plain(text) {
        // No escapes, spaces or multi-valued RDNs: the key is the text lowercased.
        return text.to_ascii_lowercase();
    }
    match Dn::parse(text) {
        Ok(dn) => dn.key(),
        Err(_) => format!("\u{0}{}", text.trim().to_lowercase()),
    }
}

/// Whether `text` is a DN of the plainest form, whose key is its lowercased self:
/// RDNs of one `name=value` each, names of letters, digits and hyphens starting with a
/// letter (no OIDs), values of letters, digits and `.`, `_`, `@`, `-` only.
pub fn is_plain(text: &str) -> bool {
    // Per RDN: a name (letter first), `=`, then a value (at least one byte).
    #[derive(PartialEq)]
    enum At {
        NameStart,
        Name,
        ValueStart,
        Value,
    }
    let mut at = At::NameStart;
    for b in text.bytes() {
        at = match (at, b) {
            (At::NameStart, b) if b.is_ascii_alphabetic() => At::Name,
            (At::Name, b) if b.is_ascii_alphanumeric() || b == b'-' => At::Name,
            (At::Name, b'=') => At::ValueStart,
            (At::ValueStart | At::Value, b)
                if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-') =>
            {
                At::Value
            }
            (At::Value, b',') => At::NameStart,
            _ => return false,
        };
    }
    at == At::Value
}

/// Whether two DN strings name the same entry.
pub fn same(a: &str, b: &str) -> bool {
    key(a) == key(b)
}

/// Escapes a value for use in a DN string (RFC 4514 section 2.4).
pub fn escape_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == last => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// Attribute type as compared: lowercased, `oid.` dropped, well-known OIDs by name.
fn type_key(attr: &str) -> String {
    let t = attr.trim().to_ascii_lowercase();
    let t = t.strip_prefix("oid.").unwrap_or(&t);
    let named = match t {
        "2.5.4.3" => "cn",
        "2.5.4.6" => "c",
        "2.5.4.7" => "l",
        "2.5.4.8" => "st",
        "2.5.4.9" => "street",
        "2.5.4.10" => "o",
        "2.5.4.11" => "ou",
        "0.9.2342.19200300.100.1.1" => "uid",
        "0.9.2342.19200300.100.1.25" => "dc",
        other => other,
    };
    named.to_string()
}

/// A value as compared: case-folded, runs of white space made one space, ends trimmed
/// (the naming attributes of directories match case- and space-insensitively).
fn fold(value: &str) -> String {
    value
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// Escapes the characters that separate parts of a key, so that keys are unambiguous.
fn escape_key(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '+' | '=') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

impl Parser {
    fn new(text: &str) -> Parser {
        Parser {
            chars: text.chars().collect(),
            pos: 0,
        }
    }

    fn err(&self, problem: &'static str) -> DnError {
        DnError {
            problem,
            at: self.pos + 1,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek() == Some(' ') {
            self.pos += 1;
        }
    }

    fn dn(mut self) -> Result<Dn, DnError> {
        self.skip_spaces();
        if self.peek().is_none() {
            return Ok(Dn { rdns: Vec::new() });
        }
        let mut rdns = Vec::new();
        loop {
            rdns.push(self.rdn()?);
            match self.peek() {
                None => return Ok(Dn { rdns }),
                Some(',' | ';') => self.pos += 1,
                Some(_) => return Err(self.err("expected `,` between RDNs")),
            }
        }
    }

    fn rdn(&mut self) -> Result<Rdn, DnError> {
        let mut avas = vec![self.ava()?];
        while self.peek() == Some('+') {
            self.pos += 1;
            avas.push(self.ava()?);
        }
        Ok(Rdn { avas })
    }

    fn ava(&mut self) -> Result<Ava, DnError> {
        self.skip_spaces();
        let attr = self.attribute_type()?;
        self.skip_spaces();
        if self.peek() != Some('=') {
            return Err(self.err("expected `=` after the attribute type"));
        }
        self.pos += 1;
        self.skip_spaces();
        let value = if self.peek() == Some('#') {
            self.hex_value()?
        } else {
            self.string_value()?
        };
        Ok(Ava { attr, value })
    }

    /// `descr` (a letter, then letters, digits, hyphens) or a numeric OID.
    fn attribute_type(&mut self) -> Result<String, DnError> {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                self.pos += 1;
            } else {
                break;
            }
        }
        let t: String = self.chars[start..self.pos].iter().collect();
        let bare = t
            .strip_prefix("oid.")
            .or_else(|| t.strip_prefix("OID."))
            .unwrap_or(&t);
        let descr = bare.starts_with(|c: char| c.is_ascii_alphabetic())
            && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        let oid = !bare.is_empty()
            && bare
                .split('.')
                .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
        if descr || oid {
            Ok(t)
        } else {
            self.pos = start;
            Err(self.err("expected an attribute type (a name or a numeric OID)"))
        }
    }

    /// `#` and the hex of a BER value. String types are decoded to their text; anything
    /// else is kept as `#hex`, lowercased, which compares equal to the same encoding.
    fn hex_value(&mut self) -> Result<String, DnError> {
        self.pos += 1;
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
            self.pos += 1;
        }
        let hex: String = self.chars[start..self.pos].iter().collect();
        if hex.is_empty() || !hex.len().is_multiple_of(2) {
            return Err(self.err("a `#` value needs an even number of hex digits"));
        }
        self.skip_spaces();
        if !matches!(self.peek(), None | Some(',' | ';' | '+')) {
            return Err(self.err("unexpected character after a `#` value"));
        }
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        Ok(ber_string(&bytes).unwrap_or_else(|| format!("#{}", hex.to_ascii_lowercase())))
    }

    /// A string value: escapes undone (`\,`, `\2C`, hex-escaped UTF-8), unescaped spaces
    /// at either end dropped.
    fn string_value(&mut self) -> Result<String, DnError> {
        let mut bytes: Vec<u8> = Vec::new();
        // Length of `bytes` up to the last character that was escaped or not a space.
        let mut significant = 0;
        while let Some(c) = self.peek() {
            match c {
                ',' | ';' | '+' => break,
                '\\' => {
                    self.pos += 1;
                    match self.peek() {
                        Some(h) if h.is_ascii_hexdigit() => {
                            let lo = self.chars.get(self.pos + 1).copied();
                            let Some(lo) = lo.filter(char::is_ascii_hexdigit) else {
                                return Err(self.err("`\\` must be followed by two hex digits or a special character"));
                            };
                            let byte = (hex_digit(h) << 4) | hex_digit(lo);
                            bytes.push(byte);
                            self.pos += 2;
                        }
                        Some(s) if " \"#+,;<=>\\".contains(s) => {
                            bytes.push(s as u8);
                            self.pos += 1;
                        }
                        _ => {
                            return Err(self.err(
                                "`\\` must be followed by two hex digits or a special character",
                            ))
                        }
                    }
                    significant = bytes.len();
                }
                c => {
                    let mut buf = [0u8; 4];
                    bytes.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    if c != ' ' {
                        significant = bytes.len();
                    }
                    self.pos += 1;
                }
            }
        }
        bytes.truncate(significant);
        String::from_utf8(bytes).map_err(|_| self.err("hex escapes that are not UTF-8"))
    }
}

fn hex_digit(c: char) -> u8 {
    c.to_digit(16).map_or(0, |d| d as u8)
}

/// The text of a BER-encoded string value (UTF8String, PrintableString, IA5String,
/// OCTET STRING holding UTF-8, ...), definite length only.
fn ber_string(bytes: &[u8]) -> Option<String> {
    let (&tag, rest) = bytes.split_first()?;
    if !matches!(tag, 0x04 | 0x0c | 0x13 | 0x14 | 0x16 | 0x1a) {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, content) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (content.len() == len)
        .then(|| String::from_utf8(content.to_vec()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(dn: &str) -> Vec<Vec<(String, String)>> {
        Dn::parse(dn)
            .unwrap()
            .rdns()
            .iter()
            .map(|r| {
                r.avas()
                    .iter()
                    .map(|a| (a.attr.clone(), a.value.clone()))
                    .collect()
            })
            .collect()
    }

    fn pair(a: &str, v: &str) -> (String, String) {
        (a.to_string(), v.to_string())
    }

    #[test]
    fn rfc_4514_examples_parse() {
        // Section 4 of RFC 4514.
        assert_eq!(
            values("UID=jsmith,DC=example,DC=net"),
            vec![
                vec![pair("UID", "jsmith")],
                vec![pair("DC", "example")],
                vec![pair("DC", "net")]
            ]
        );
        assert_eq!(
            values("OU=Sales+CN=J.  Smith,DC=example,DC=net")[0],
            vec![pair("OU", "Sales"), pair("CN", "J.  Smith")]
        );
        assert_eq!(
            values("CN=James \\\"Jim\\\" Smith\\, III,DC=example,DC=net")[0],
            vec![pair("CN", "James \"Jim\" Smith, III")]
        );
        assert_eq!(
            values("CN=Before\\0dAfter,DC=example,DC=net")[0],
            vec![pair("CN", "Before\rAfter")]
        );
        assert_eq!(
            values("1.3.6.1.4.1.1466.0=#04024869,DC=example,DC=com")[0],
            vec![pair("1.3.6.1.4.1.1466.0", "Hi")]
        );
        assert_eq!(
            values("CN=Lu\\C4\\8Di\\C4\\87")[0],
            vec![pair("CN", "Lučić")]
        );
    }

    #[test]
    fn the_same_name_spelt_differently_has_one_key() {
        let spellings = [
            r"ou=R&D\, Lab,dc=example,dc=com",
            r"ou=R&D\2C Lab,dc=example,dc=com",
            r"OU=r&d\2c lab, DC=Example ,dc=COM",
            r"2.5.4.11=R&D\, Lab;0.9.2342.19200300.100.1.25=example,dc=com",
            r"ou = R&D\2C  Lab , dc=example,dc=com",
        ];
        for s in spellings {
            assert_eq!(key(s), key(spellings[0]), "{s}");
            assert!(same(s, spellings[0]));
        }
        assert_eq!(
            key(r"ou=\C3\85sg\C3\A5rd \C3\98st\, Plus\+,dc=x"),
            key("ou=Åsgård Øst\\, Plus\\+,dc=x")
        );
        assert_eq!(key(r"cn=\#1,dc=x"), key(r"cn=\231,dc=x"));
        assert_eq!(key(r#"cn=say \"hi\",dc=x"#), key(r"cn=say \22hi\22,dc=x"));
        assert_eq!(key(r"cn=back\\slash,dc=x"), key(r"cn=back\5Cslash,dc=x"));
    }

    #[test]
    fn multi_valued_rdns_compare_in_any_order() {
        assert!(same("cn=a+uid=b,dc=x", "UID=B+CN=A,dc=x"));
        assert!(!same("cn=a+uid=b,dc=x", "cn=a,dc=x"));
        assert_eq!(Dn::parse("cn=a+uid=b,dc=x").unwrap().rdns().len(), 2);
    }

    #[test]
    fn different_names_have_different_keys() {
        for (a, b) in [
            ("cn=a,dc=x", "cn=b,dc=x"),
            (r"cn=a\,b,dc=x", "cn=a,cn=b,dc=x"),
            (r"cn=a\+uid=b,dc=x", "cn=a+uid=b,dc=x"),
            ("cn=a,dc=x", "ou=a,dc=x"),
            ("cn=a,dc=x", "cn=a,dc=x,dc=y"),
        ] {
            assert!(!same(a, b), "{a} vs {b}");
        }
    }

    #[test]
    fn escaped_spaces_at_the_ends_are_kept_and_others_trimmed() {
        assert_eq!(values(r"cn=\ a\ ,dc=x")[0], vec![pair("cn", " a ")]);
        assert_eq!(values("cn=  a  ,dc=x")[0], vec![pair("cn", "a")]);
    }

    #[test]
    fn malformed_dns_are_errors_with_a_position() {
        for bad in [
            "cn",
            "=a",
            "cn=a,,dc=x",
            r"cn=a\zz",
            r"cn=a\4",
            "cn=#123",
            r"cn=\FF\FE",
            "c n=a",
            "cn=a,",
        ] {
            let e = Dn::parse(bad).expect_err(bad);
            assert!(e.at >= 1, "{bad}: {e}");
        }
        // Unparseable strings still key consistently, and never as a real DN.
        assert!(same("cn=a\\zz", "CN=A\\ZZ"));
        assert!(!same("cn=a\\zz", "cn=azz"));
        // `=` inside a value needs no escape.
        assert!(same(r"cn=a\=b,dc=x", "cn=a=b,dc=x"));
    }

    #[test]
    fn the_empty_dn_is_the_root() {
        assert!(Dn::parse("").unwrap().rdns().is_empty());
        let root = Dn::parse("").unwrap();
        assert!(Dn::parse("dc=x").unwrap().is_within(&root));
    }

    #[test]
    fn below_gives_the_rdns_under_a_base() {
        let dn = Dn::parse(r"uid=a,ou=Sales,OU=Stockholm\2C Main,ou=people,dc=x").unwrap();
        let base = Dn::parse(r"ou=People, DC=X").unwrap();
        let own = dn.below(&base).unwrap();
        let ous: Vec<&str> = own.iter().filter_map(|r| r.value_of("ou")).collect();
        assert_eq!(ous, ["Sales", "Stockholm, Main"]);
        assert!(dn.below(&Dn::parse("ou=other,dc=x").unwrap()).is_none());
        assert_eq!(base.below(&base).map(<[Rdn]>::len), Some(0));
    }

    #[test]
    fn display_escapes_what_the_rfc_requires_and_round_trips() {
        for s in [
            r"ou=R&D\, Lab,dc=x",
            r"cn=\#x\+y\;z\<\>\=\\\ ,dc=x",
            r"cn=\ lead,dc=x",
            "cn=a+uid=b,dc=x",
            "cn=Åsgård,dc=x",
        ] {
            let dn = Dn::parse(s).unwrap();
            let shown = dn.to_string();
            assert_eq!(Dn::parse(&shown).unwrap(), dn, "{s} → {shown}");
        }
        assert_eq!(
            Dn::parse(r"ou=R&D\2C Lab,dc=x").unwrap().to_string(),
            r"ou=R&D\, Lab,dc=x"
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn attr() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["cn", "OU", "dc", "uid", "o", "2.5.4.3", "l"])
            .prop_map(str::to_string)
    }

    /// A value as a directory holds it: any characters but NUL, not empty.
    fn value() -> impl Strategy<Value = String> {
        "[^\u{0}]{1,12}"
    }

    fn dn() -> impl Strategy<Value = Dn> {
        prop::collection::vec(
            prop::collection::vec((attr(), value()), 1..3).prop_map(|avas| Rdn {
                avas: avas
                    .into_iter()
                    .map(|(attr, value)| Ava { attr, value })
                    .collect(),
            }),
            1..5,
        )
        .prop_map(|rdns| Dn { rdns })
    }

    /// The same DN with every value character hex-escaped (`\C3\A5`), as other tools
    /// write member values.
    fn hex_spelling(dn: &Dn) -> String {
        dn.rdns
            .iter()
            .map(|r| {
                r.avas
                    .iter()
                    .map(|a| {
                        let hex: String = a.value.bytes().map(|b| format!("\\{b:02X}")).collect();
                        format!("{}={hex}", a.attr)
                    })
                    .collect::<Vec<_>>()
                    .join("+")
            })
            .collect::<Vec<_>>()
            .join(" , ")
    }

    proptest! {
        #[test]
        fn an_avas_key_is_its_type_key_and_folded_escaped_value(
            attr in attr(),
            value in prop_oneof!["[ -~\t\u{b}\u{c}]{0,12}", value()],
        ) {
            let mut fast = String::new();
            Ava { attr: attr.clone(), value: value.clone() }.write_key(&mut fast);
            prop_assert_eq!(fast, format!("{}={}", type_key(&attr), escape_key(&fold(&value))));
        }

        #[test]
        fn a_plain_dn_keys_as_when_parsed(
            text in "([a-zA-Z][a-zA-Z0-9-]{0,3}=[a-zA-Z0-9._@-]{1,6},){0,3}[a-zA-Z][a-zA-Z0-9-]{0,3}=[a-zA-Z0-9._@-]{1,6}",
        ) {
            prop_assert!(is_plain(&text));
            let parsed = Dn::parse(&text).map(|d| d.key());
            prop_assert_eq!(Ok(key(&text)), parsed);
        }

        #[test]
        fn what_counts_as_plain_keys_as_when_parsed(text in "[a-zA-Z0-9=,;._@+ #-]{1,16}") {
            if is_plain(&text) {
                let parsed = Dn::parse(&text).map(|d| d.key());
                prop_assert_eq!(Ok(key(&text)), parsed);
            }
        }

        #[test]
        fn parsing_any_text_never_panics(text in any::<String>()) {
            let _ = Dn::parse(&text);
            let _ = key(&text);
        }

        #[test]
        fn a_dn_shown_parses_back_to_itself(dn in dn()) {
            let shown = dn.to_string();
            prop_assert_eq!(Dn::parse(&shown), Ok(dn.clone()), "{}", shown);
        }

        #[test]
        fn every_spelling_of_a_dn_has_its_key(dn in dn()) {
            let hex = hex_spelling(&dn);
            prop_assert_eq!(key(&hex), dn.key(), "{}", hex);
            prop_assert!(same(&dn.to_string(), &hex));
        }

        #[test]
        fn ascii_case_never_changes_the_key(dn in dn()) {
            let shown = dn.to_string();
            if shown.is_ascii() {
                prop_assert_eq!(key(&shown.to_ascii_uppercase()), key(&shown.to_ascii_lowercase()));
            }
        }
    }
}
