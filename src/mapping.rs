//! Directory attributes → portal (SCIM) attributes. Pure: no I/O.
//!
//! A mapping target is a SCIM attribute path (RFC 7644 §3.5.2) of the forms the portal's
//! user resource needs:
//!
//! * `userName`, `displayName`, `active`: a core attribute;
//! * `name.familyName`: a sub-attribute of a complex attribute;
//! * `emails[type eq "work"].value`: one element of a multi-valued complex attribute, picked by
//!   a value filter on one of its sub-attributes;
//! * `urn:ietf:params:scim:schemas:extension:faxportal:2.0:User:subUnit`: an extension
//!   attribute, with any of the forms above after the schema URN.
//!
//! A target that is a multi-valued attribute of simple values (e.g. the portal's
//! `faxNumbers`) takes every value of the directory attribute; any other target takes the
//! first value.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Mutex, OnceLock, PoisonError};

use serde::{Serialize, Serializer};
use serde_json::{Map, Value as Json};

pub(crate) mod packed;
pub use packed::{Packed, Strings, ValueRef};

/// A parsed SCIM attribute path. Paths are interned: each distinct path ([`PathParts`])
/// is made once and kept for the life of the process, so a clone is a pointer copy (no
/// reference count for the threads that map users to share), the baselines and
/// attribute maps of many users hold one copy of each path, and two paths are equal
/// exactly when they are one. The paths a process makes are those of its config, its
/// state and the access rules: a few dozen, not one per user.
#[derive(Clone)]
pub struct AttrPath(&'static PathParts);

impl PartialEq for AttrPath {
    fn eq(&self, other: &AttrPath) -> bool {
        self.same(other)
    }
}

impl Eq for AttrPath {}

impl Hash for AttrPath {
    fn hash<H: Hasher>(&self, state: &mut H) {
        std::ptr::hash(self.0, state)
    }
}

impl Ord for AttrPath {
    /// By the parts (so maps of paths list them by name); one path is equal to itself
    /// without looking.
    fn cmp(&self, other: &AttrPath) -> std::cmp::Ordering {
        if self.same(other) {
            return std::cmp::Ordering::Equal;
        }
        self.0.cmp(other.0)
    }
}

impl PartialOrd for AttrPath {
    fn partial_cmp(&self, other: &AttrPath) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The parts of an [`AttrPath`].
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PathParts {
    /// Schema URN of an extension attribute; `None` for the core schema.
    pub schema: Option<String>,
    pub attr: String,
    /// `(sub-attribute, value)` of a `[sub eq "value"]` filter.
    pub filter: Option<(String, String)>,
    pub sub: Option<String>,
}

impl Deref for AttrPath {
    type Target = PathParts;

    fn deref(&self) -> &PathParts {
        self.0
    }
}

impl fmt::Debug for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AttrPath({self})")
    }
}

impl From<PathParts> for AttrPath {
    /// The interned path of `parts`: the one made before, or a new one.
    fn from(parts: PathParts) -> AttrPath {
        static PATHS: OnceLock<Mutex<HashSet<&'static PathParts>>> = OnceLock::new();
        let mut paths = PATHS
            .get_or_init(Mutex::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(&made) = paths.get(&parts) {
            return AttrPath(made);
        }
        let made: &'static PathParts = Box::leak(Box::new(parts));
        paths.insert(made);
        AttrPath(made)
    }
}

impl AttrPath {
    /// Whether `self` and `other` are one path: since paths are interned, whether they
    /// are equal.
    pub fn same(&self, other: &AttrPath) -> bool {
        std::ptr::eq(self.0, other.0)
    }

    /// The name to ask the portal for this attribute by, in a listing's `attributes`
    /// parameter (RFC 7644 §3.4.2.5): `name.familyName`, `emails` (a filtered element is
    /// picked here, so the whole attribute comes), `urn:…:User:subUnit`.
    pub fn attribute_name(&self) -> String {
        let mut name = String::new();
        if let Some(s) = &self.schema {
            name.push_str(s);
            name.push(':');
        }
        name.push_str(&self.attr);
        if let (None, Some(sub)) = (&self.filter, &self.sub) {
            name.push('.');
            name.push_str(sub);
        }
        name
    }

    /// Parses a path. The error says what is wrong, for the config error message.
    pub fn parse(text: &str) -> Result<AttrPath, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("empty attribute path".into());
        }
        let (schema, rest) = split_schema(text)?;
        let (head, filter, sub) = match rest.find('[') {
            Some(open) => {
                let (filter, used) =
                    parse_filter(&rest[open + 1..]).map_err(|e| format!("`{text}`: {e}"))?;
                let after = &rest[open + 1 + used..];
                let sub = match after.strip_prefix('.') {
                    Some(s) => Some(s.to_string()),
                    None if after.is_empty() => None,
                    None => return Err(format!("`{text}`: expected `.` after `]`")),
                };
                (&rest[..open], Some(filter), sub)
            }
            None => match rest.split_once('.') {
                Some((a, s)) => (a, None, Some(s.to_string())),
                None => (rest, None, None),
            },
        };
        check_name(head).map_err(|e| format!("`{text}`: {e}"))?;
        if let Some(s) = &sub {
            check_name(s).map_err(|e| format!("`{text}`: {e}"))?;
        }
        if filter.is_some() && sub.is_none() {
            return Err(format!(
                "`{text}`: a filtered path must name the sub-attribute to set, e.g. `{head}[type eq \"work\"].value`"
            ));
        }
        Ok(AttrPath::from(PathParts {
            schema,
            attr: head.to_string(),
            filter,
            sub,
        }))
    }

    pub fn parts(&self) -> &PathParts {
        self.0
    }

    /// True for the login attribute, `userName` of the core schema.
    pub fn is_user_name(&self) -> bool {
        self.schema.is_none() && self.attr.eq_ignore_ascii_case("userName") && self.sub.is_none()
    }

    /// The path of the attribute as the portal's `/Schemas` describes it, lowercase:
    /// `name.familyname`, `emails.value`, `urn:…:user:subunit`.
    pub fn schema_key(&self) -> String {
        let mut key = String::new();
        if let Some(s) = &self.schema {
            key.push_str(s);
            key.push(':');
        }
        key.push_str(&self.attr);
        if let Some(s) = &self.sub {
            key.push('.');
            key.push_str(s);
        }
        key.to_ascii_lowercase()
    }

    /// The path that removes this value: for a filtered path, the whole matching element
    /// (removing only `.value` would leave an element with just a `type`).
    pub fn removal_path(&self) -> String {
        match &self.filter {
            Some(_) => AttrPath::from(PathParts {
                sub: None,
                ..self.parts().clone()
            })
            .to_string(),
            None => self.to_string(),
        }
    }

    /// Reads this path's value from a SCIM resource.
    pub fn get(&self, resource: &Json) -> Option<Value> {
        let container = match &self.schema {
            Some(urn) => get_ci(resource, urn)?,
            None => resource,
        };
        let attr = get_ci(container, &self.attr)?;
        let target = match (&self.filter, &self.sub) {
            (Some((fsub, fval)), Some(sub)) => {
                let element = attr
                    .as_array()?
                    .iter()
                    .find(|e| filter_matches(e, fsub, fval))?;
                get_ci(element, sub)?
            }
            // A sub-attribute of a multi-valued attribute: the list of its values.
            (None, Some(sub)) if attr.is_array() => {
                let values: Vec<String> = attr
                    .as_array()?
                    .iter()
                    .filter_map(|e| get_ci(e, sub).and_then(Json::as_str).map(str::to_string))
                    .collect();
                return (!values.is_empty()).then(|| Value::many(values));
            }
            (None, Some(sub)) => get_ci(attr, sub)?,
            _ => attr,
        };
        Value::from_json(target)
    }

    /// Writes this path's value into a resource being built for creation.
    pub fn set(&self, resource: &mut Map<String, Json>, value: &Value) {
        let container = match &self.schema {
            Some(urn) => match object_entry(resource, urn) {
                Some(c) => c,
                None => return,
            },
            None => resource,
        };
        match (&self.filter, &self.sub) {
            (Some((fsub, fval)), Some(sub)) => {
                let list = container
                    .entry(self.attr.clone())
                    .or_insert_with(|| Json::Array(Vec::new()));
                if !list.is_array() {
                    *list = Json::Array(Vec::new());
                }
                if let Json::Array(items) = list {
                    let pos = items.iter().position(|e| filter_matches(e, fsub, fval));
                    let element = match pos {
                        Some(i) => &mut items[i],
                        None => {
                            let mut e = Map::new();
                            e.insert(fsub.clone(), Json::String(fval.clone()));
                            items.push(Json::Object(e));
                            let last = items.len() - 1;
                            &mut items[last]
                        }
                    };
                    if let Json::Object(e) = element {
                        e.insert(sub.clone(), value.to_json());
                    }
                }
            }
            (None, Some(sub)) => match value {
                Value::Many(values) => {
                    container.insert(self.attr.clone(), list_elements(sub, values));
                }
                Value::One(_) => {
                    if let Some(o) = object_entry(container, &self.attr) {
                        o.insert(sub.clone(), value.to_json());
                    }
                }
            },
            _ => {
                container.insert(self.attr.clone(), value.to_json());
            }
        }
    }

    /// The PATCH operation (RFC 7644 §3.5.2) that takes this attribute from `old` to `new`.
    pub fn patch_op(&self, old: Option<&Value>, new: Option<&Value>) -> Json {
        match (old, new, &self.filter) {
            (_, None, _) => serde_json::json!({"op": "remove", "path": self.removal_path()}),
            // A filtered `replace` that matches no element is `noTarget` (RFC 7644 §3.5.2.3):
            // add the element instead.
            (None, Some(v), Some((fsub, fval))) => {
                let mut element = Map::new();
                element.insert(fsub.clone(), Json::String(fval.clone()));
                if let Some(sub) = &self.sub {
                    element.insert(sub.clone(), v.to_json());
                }
                let path = AttrPath::from(PathParts {
                    filter: None,
                    sub: None,
                    ..self.parts().clone()
                });
                serde_json::json!({"op": "add", "path": path.to_string(), "value": [element]})
            }
            // The values of a multi-valued attribute's sub-attribute (`roles.value`): the
            // whole list is replaced.
            (_, Some(Value::Many(values)), None) if self.sub.is_some() => {
                let path = AttrPath::from(PathParts {
                    sub: None,
                    ..self.parts().clone()
                });
                let sub = self.sub.as_deref().unwrap_or("value");
                serde_json::json!({"op": "replace", "path": path.to_string(), "value": list_elements(sub, values)})
            }
            (_, Some(v), _) => {
                serde_json::json!({"op": "replace", "path": self.to_string(), "value": v.to_json()})
            }
        }
    }
}

impl fmt::Display for AttrPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.schema {
            write!(f, "{s}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some((fsub, fval)) = &self.filter {
            // A JSON string, as SCIM filters take them: quotes and backslashes escaped.
            let quoted = serde_json::to_string(fval).map_err(|_| fmt::Error)?;
            write!(f, "[{fsub} eq {quoted}]")?;
        }
        if let Some(s) = &self.sub {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

impl Serialize for AttrPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Read back as written (a saved report): parsed, as the config's paths are.
impl<'de> serde::Deserialize<'de> for AttrPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AttrPath, D::Error> {
        let text = String::deserialize(d)?;
        AttrPath::parse(&text).map_err(serde::de::Error::custom)
    }
}

fn split_schema(text: &str) -> Result<(Option<String>, &str), String> {
    if !text.to_ascii_lowercase().starts_with("urn:") {
        return Ok((None, text));
    }
    // The attribute name follows the last `:` that is not inside a filter.
    let end = text.find('[').unwrap_or(text.len());
    let colon = text[..end]
        .rfind(':')
        .ok_or_else(|| format!("`{text}`: schema URN without attribute"))?;
    let (schema, rest) = (&text[..colon], &text[colon + 1..]);
    if rest.is_empty() {
        return Err(format!("`{text}`: schema URN without attribute"));
    }
    // A URN attribute path may still carry `.sub`; the URN itself has no dots after
    // its version (`…:2.0:User`), so split at the first dot after the last colon.
    Ok((Some(schema.to_string()), rest))
}

/// `sub eq "value"]` at the start of `text` (after the `[`): the sub-attribute, the value
/// (a JSON string, RFC 7644 section 3.4.2.2, so `\"` and `\\` are escapes), and how many
/// bytes up to and including the `]` were used.
fn parse_filter(text: &str) -> Result<((String, String), usize), String> {
    let unsupported = || {
        format!(
            "unsupported filter `[{}`: only `[subAttribute eq \"value\"]` is supported",
            text
        )
    };
    let body = text.trim_start();
    let (sub, rest) = body.split_once(' ').ok_or_else(unsupported)?;
    let rest = rest.trim_start();
    let (op, rest) = rest.split_once(' ').ok_or_else(unsupported)?;
    if !op.eq_ignore_ascii_case("eq") {
        return Err(unsupported());
    }
    let value_text = rest.trim_start();
    if !value_text.starts_with('"') {
        let shown: String = value_text.chars().take_while(|c| *c != ']').collect();
        return Err(format!("filter value {shown} must be a \"quoted string\""));
    }
    // The closing quote: the first `"` not escaped by a backslash.
    let mut end = None;
    let mut escaped = false;
    for (i, c) in value_text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or_else(|| "the filter value's closing `\"` is missing".to_string())?;
    let value: String = serde_json::from_str(&value_text[..=end])
        .map_err(|e| format!("the filter value is not a valid quoted string ({e})"))?;
    let after = &value_text[end + 1..];
    let close = after.trim_start();
    if !close.starts_with(']') {
        return Err("expected `]` after the filter value".to_string());
    }
    check_name(sub)?;
    let used = text.len() - close.len() + 1;
    Ok(((sub.to_string(), value), used))
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$');
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a SCIM attribute name"))
    }
}

/// Whether a multi-valued element matches `[fsub eq "fval"]`; booleans and numbers compare
/// by their text, string values without case (RFC 7643 `caseExact` false).
fn filter_matches(element: &Json, fsub: &str, fval: &str) -> bool {
    match get_ci(element, fsub) {
        Some(Json::String(s)) => s.eq_ignore_ascii_case(fval),
        Some(Json::Bool(b)) => b.to_string() == fval,
        Some(Json::Number(n)) => n.to_string() == fval,
        _ => false,
    }
}

/// The elements of a multi-valued complex attribute holding `values` in `sub`. A single
/// value is the primary one (the portal's role: one primary value).
fn list_elements(sub: &str, values: &[String]) -> Json {
    let single = values.len() == 1;
    Json::Array(
        values
            .iter()
            .map(|v| {
                let mut e = Map::new();
                e.insert(sub.to_string(), Json::String(v.clone()));
                if single {
                    e.insert("primary".into(), Json::Bool(true));
                }
                Json::Object(e)
            })
            .collect(),
    )
}

/// SCIM attribute names are case-insensitive (RFC 7643 §2.1).
fn get_ci<'a>(value: &'a Json, key: &str) -> Option<&'a Json> {
    let obj = value.as_object()?;
    obj.get(key).or_else(|| {
        obj.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

/// The object under `key`, made (or replacing a non-object) when needed. Always `Some`;
/// an `Option` only so that no code path can panic.
fn object_entry<'a>(
    map: &'a mut Map<String, Json>,
    key: &str,
) -> Option<&'a mut Map<String, Json>> {
    let slot = map
        .entry(key.to_string())
        .or_insert_with(|| Json::Object(Map::new()));
    if !slot.is_object() {
        *slot = Json::Object(Map::new());
    }
    slot.as_object_mut()
}

/// A mapped attribute value: one string, or a set of strings for a multi-valued target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    One(String),
    /// Sorted and de-duplicated, so that order never shows up as a change.
    Many(Box<[String]>),
}

impl Value {
    pub fn many(mut values: Vec<String>) -> Value {
        values.sort();
        values.dedup();
        Value::Many(values.into_boxed_slice())
    }

    /// Reads a value as SCIM (or the state store) holds it; `null` and objects are absent.
    pub fn from_json(v: &Json) -> Option<Value> {
        match v {
            Json::Null => None,
            Json::String(s) => Some(Value::One(s.clone())),
            Json::Bool(b) => Some(Value::One(b.to_string())),
            Json::Number(n) => Some(Value::One(n.to_string())),
            Json::Array(items) => {
                let strings: Vec<String> = items
                    .iter()
                    .filter_map(|i| match i {
                        Json::String(s) => Some(s.clone()),
                        Json::Bool(b) => Some(b.to_string()),
                        Json::Number(n) => Some(n.to_string()),
                        _ => None,
                    })
                    .collect();
                Some(Value::many(strings))
            }
            Json::Object(_) => None,
        }
    }

    pub fn to_json(&self) -> Json {
        match self {
            Value::One(s) => Json::String(s.clone()),
            Value::Many(v) => Json::Array(v.iter().cloned().map(Json::String).collect()),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::One(s) => write!(f, "{s:?}"),
            Value::Many(v) => write!(f, "{v:?}"),
        }
    }
}

/// For property tests: an absent value, one string or a set of strings (possibly
/// empty), of up to three characters from `alphabet` (a regex class body, `a-c`).
#[cfg(test)]
pub(crate) fn any_value(
    alphabet: &str,
) -> impl proptest::strategy::Strategy<Value = Option<Value>> {
    use proptest::prelude::*;
    let string = || {
        proptest::string::string_regex(&format!("[{alphabet}]{{0,3}}")).expect("a regex class body")
    };
    prop_oneof![
        Just(None),
        string().prop_map(|s| Some(Value::One(s))),
        prop::collection::vec(string(), 0..4).prop_map(|v| Some(Value::Many(v.into()))),
    ]
}

/// Who owns a mapped portal attribute.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Owner {
    /// Admin-locked: the directory value always wins; a portal edit is reverted.
    #[default]
    Directory,
    /// User-editable: written when the user is created, never again.
    Portal,
    /// The directory value flows when the directory changed it since the last sync,
    /// unless the user changed it in the portal too: then the portal value stays and the
    /// conflict is reported.
    Merge,
}

/// One configured mapping rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Directory attribute, compared case-insensitively (LDAP attribute names are).
    pub from: String,
    pub to: AttrPath,
    /// The target takes all values (a multi-valued attribute of simple values).
    pub multi: bool,
    pub owner: Owner,
}

/// What the directory says a user's portal attributes should be.
pub type Attributes = BTreeMap<AttrPath, Value>;

/// Maps one directory entry's attributes (lowercased names) to portal attributes.
/// Values are trimmed; empty values count as absent.
pub fn map_entry(rules: &[Rule], attrs: &crate::source::EntryAttrs) -> Attributes {
    let mut out = Attributes::new();
    for rule in rules {
        let Some(vs) = with_lowercase(&rule.from, |name| attrs.get(name)) else {
            continue;
        };
        let mut values = vs.iter().map(|v| v.trim()).filter(|v| !v.is_empty());
        let value = if rule.multi {
            let values: Vec<String> = values.map(str::to_string).collect();
            (!values.is_empty()).then(|| Value::many(values))
        } else {
            values.next().map(|v| Value::One(v.to_string()))
        };
        if let Some(v) = value {
            out.insert(rule.to.clone(), v);
        }
    }
    out
}

/// `f` of `name` lowercased (ASCII), without allocating for a short name.
fn with_lowercase<T>(name: &str, f: impl FnOnce(&str) -> T) -> T {
    if !name.bytes().any(|b| b.is_ascii_uppercase()) {
        return f(name);
    }
    let mut buf = [0u8; 64];
    match buf.get_mut(..name.len()) {
        Some(short) => {
            short.copy_from_slice(name.as_bytes());
            short.make_ascii_lowercase();
            // Lowercasing ASCII letters keeps UTF-8 valid.
            match std::str::from_utf8(short) {
                Ok(lower) => f(lower),
                Err(_) => f(&name.to_ascii_lowercase()),
            }
        }
        None => f(&name.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FAX: &str = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User";

    #[test]
    fn parses_the_forms_the_portal_needs() {
        let p = AttrPath::parse("name.familyName").unwrap();
        assert_eq!(
            (p.attr.as_str(), p.sub.as_deref()),
            ("name", Some("familyName"))
        );
        let p = AttrPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        assert_eq!(p.filter, Some(("type".into(), "work".into())));
        assert_eq!(p.to_string(), r#"emails[type eq "work"].value"#);
        let p = AttrPath::parse(&format!("{FAX}:subUnit")).unwrap();
        assert_eq!(p.schema.as_deref(), Some(FAX));
        assert_eq!(p.attr, "subUnit");
        assert_eq!(p.to_string(), format!("{FAX}:subUnit"));
        assert_eq!(p.schema_key(), format!("{FAX}:subunit").to_lowercase());
        assert!(AttrPath::parse("userName").unwrap().is_user_name());
    }

    #[test]
    fn rejects_malformed_paths_with_a_reason() {
        for bad in [
            "",
            "emails[type eq \"work\"",
            "emails[type eq \"work\"]",
            "emails[type co \"w\"].value",
            "emails[type eq work].value",
            "na me",
            "urn:x:",
        ] {
            assert!(AttrPath::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn reads_and_builds_resources() {
        let mut m = Map::new();
        let work = AttrPath::parse(r#"emails[type eq "work"].value"#).unwrap();
        let family = AttrPath::parse("name.familyName").unwrap();
        let sub = AttrPath::parse(&format!("{FAX}:subUnit")).unwrap();
        let fax = AttrPath::parse(&format!("{FAX}:faxNumbers")).unwrap();
        work.set(&mut m, &Value::One("a@x.se".into()));
        family.set(&mut m, &Value::One("Berg".into()));
        sub.set(&mut m, &Value::One("Stockholm/Sales".into()));
        fax.set(&mut m, &Value::many(vec!["2".into(), "1".into()]));
        let r = Json::Object(m);
        assert_eq!(
            r,
            json!({"emails":[{"type":"work","value":"a@x.se"}],"name":{"familyName":"Berg"},
                   FAX: {"subUnit":"Stockholm/Sales","faxNumbers":["1","2"]}})
        );
        assert_eq!(work.get(&r), Some(Value::One("a@x.se".into())));
        assert_eq!(family.get(&r), Some(Value::One("Berg".into())));
        assert_eq!(fax.get(&r), Some(Value::many(vec!["1".into(), "2".into()])));
        let home = AttrPath::parse(r#"emails[type eq "home"].value"#).unwrap();
        assert_eq!(home.get(&r), None);
    }

    #[test]
    fn attribute_names_are_case_insensitive_when_reading() {
        let r =
            json!({"Name": {"FamilyName": "Berg"}, "EMAILS": [{"Type": "Work", "Value": "a@x"}]});
        assert_eq!(
            AttrPath::parse("name.familyName").unwrap().get(&r),
            Some(Value::One("Berg".into()))
        );
        assert_eq!(
            AttrPath::parse(r#"emails[type eq "work"].value"#)
                .unwrap()
                .get(&r),
            Some(Value::One("a@x".into()))
        );
    }

    #[test]
    fn patch_ops_add_replace_and_remove() {
        let work = AttrPath::parse(r#"phoneNumbers[type eq "work"].value"#).unwrap();
        let v = Value::One("+46 8 123".into());
        assert_eq!(
            work.patch_op(None, Some(&v)),
            json!({"op":"add","path":"phoneNumbers","value":[{"type":"work","value":"+46 8 123"}]})
        );
        assert_eq!(
            work.patch_op(Some(&v), Some(&Value::One("1".into()))),
            json!({"op":"replace","path":"phoneNumbers[type eq \"work\"].value","value":"1"})
        );
        assert_eq!(
            work.patch_op(Some(&v), None),
            json!({"op":"remove","path":"phoneNumbers[type eq \"work\"]"})
        );
        let family = AttrPath::parse("name.familyName").unwrap();
        assert_eq!(
            family.patch_op(None, Some(&v)),
            json!({"op":"replace","path":"name.familyName","value":"+46 8 123"})
        );
    }

    #[test]
    fn role_list_is_read_written_and_patched_as_one_primary_value() {
        let roles = AttrPath::parse("roles.value").unwrap();
        let r = json!({"roles": [{"value": "regular", "primary": true}]});
        assert_eq!(
            roles.get(&r),
            Some(Value::Many(vec!["regular".into()].into()))
        );
        assert_eq!(roles.get(&json!({"roles": []})), None);
        let v = Value::Many(vec!["administrator".into()].into());
        assert_eq!(
            roles.patch_op(Some(&Value::Many(vec!["regular".into()].into())), Some(&v)),
            json!({"op": "replace", "path": "roles", "value": [{"value": "administrator", "primary": true}]})
        );
        let mut m = Map::new();
        roles.set(&mut m, &v);
        assert_eq!(
            Json::Object(m),
            json!({"roles": [{"value": "administrator", "primary": true}]})
        );
    }

    #[test]
    fn one_service_is_one_filtered_element() {
        let fax = AttrPath::parse(r#"entitlements[value eq "fax"].value"#).unwrap();
        let r = json!({"entitlements": [{"value": "sms"}, {"value": "FAX"}]});
        assert_eq!(fax.get(&r), Some(Value::One("FAX".into())));
        assert_eq!(
            fax.patch_op(Some(&Value::One("fax".into())), None),
            json!({"op": "remove", "path": "entitlements[value eq \"fax\"]"})
        );
        assert_eq!(
            fax.patch_op(None, Some(&Value::One("fax".into()))),
            json!({"op": "add", "path": "entitlements", "value": [{"value": "fax"}]})
        );
    }

    #[test]
    fn maps_first_value_or_all_values_and_ignores_blank_ones() {
        let rules = vec![
            Rule {
                from: "sn".into(),
                to: AttrPath::parse("name.familyName").unwrap(),
                multi: false,
                owner: Owner::Directory,
            },
            Rule {
                from: "facsimileTelephoneNumber".into(),
                to: AttrPath::parse(&format!("{FAX}:faxNumbers")).unwrap(),
                multi: true,
                owner: Owner::Directory,
            },
            Rule {
                from: "title".into(),
                to: AttrPath::parse("title").unwrap(),
                multi: false,
                owner: Owner::Directory,
            },
        ];
        let mut attrs = BTreeMap::new();
        attrs.insert(
            "sn".to_string(),
            vec![" Berg ".to_string(), "Other".to_string()],
        );
        attrs.insert(
            "facsimiletelephonenumber".to_string(),
            vec!["2".into(), "1".into(), "2".into()],
        );
        attrs.insert("title".to_string(), vec!["  ".to_string()]);
        let out = map_entry(&rules, &attrs.into());
        assert_eq!(out.len(), 2);
        assert_eq!(out[&rules[0].to], Value::One("Berg".into()));
        assert_eq!(
            out[&rules[1].to],
            Value::Many(vec!["1".into(), "2".into()].into())
        );
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn name() -> impl Strategy<Value = String> {
        "[a-zA-Z$][a-zA-Z0-9_$-]{0,10}"
    }

    fn path() -> impl Strategy<Value = AttrPath> {
        let schema = prop::option::of(prop::sample::select(vec![
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User",
            "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User",
        ]));
        (
            schema,
            name(),
            prop::option::of((name(), any::<String>())),
            name(),
            any::<bool>(),
        )
            .prop_map(|(schema, attr, filter, sub, with_sub)| {
                AttrPath::from(PathParts {
                    schema: schema.map(str::to_string),
                    attr,
                    sub: (with_sub || filter.is_some()).then_some(sub),
                    filter,
                })
            })
    }

    proptest! {
        #[test]
        fn parsing_any_text_never_panics(text in any::<String>()) {
            let _ = AttrPath::parse(&text);
        }

        #[test]
        fn a_path_shown_parses_back_to_itself(p in path()) {
            let shown = p.to_string();
            prop_assert_eq!(AttrPath::parse(&shown), Ok(p), "{}", shown);
        }

        #[test]
        fn what_parses_shows_as_a_fixed_point(text in "[a-zA-Z:.]{1,12}(\\[[a-z]{1,4} eq \"[^\"]{0,6}\"\\])?(\\.[a-z]{1,4})?") {
            if let Ok(p) = AttrPath::parse(&text) {
                let again = AttrPath::parse(&p.to_string());
                prop_assert_eq!(again, Ok(p));
            }
        }
    }
}
