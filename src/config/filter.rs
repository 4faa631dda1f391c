//! LDAP filters in the config, checked at load with the `ldap3` crate's own parser (the one
//! that will send them), so a bad filter is a config error naming its key instead of a
//! "filter parse error" at 3 a.m. The parser only says yes or no; [`locate`] finds where an
//! RFC 4515 filter breaks, to point the admin at it.

/// `None` when the filter is a parenthesised RFC 4515 filter that `ldap3` accepts, else
/// what is wrong and where (1-based character). `ldap3` alone would also take a bare
/// `cn=x`, which dirsync cannot combine with its own clauses (`(&FILTER(uSNChanged>=N))`).
pub fn problem(filter: &str) -> Option<(usize, &'static str)> {
    match (locate(filter), ldap3::parse_filter(filter)) {
        (Some(found), _) => Some(found),
        (None, Ok(_)) => None,
        (None, Err(())) => Some((1, "not a filter the LDAP library can parse")),
    }
}

/// The filter with a caret under character `at`, for an error message.
pub fn pointed(filter: &str, at: usize) -> String {
    format!(
        "    {filter}\n    {}^",
        " ".repeat(filter.chars().take(at.saturating_sub(1)).count())
    )
}

/// Where an RFC 4515 filter string breaks, by a small recursive descent.
fn locate(filter: &str) -> Option<(usize, &'static str)> {
    let chars: Vec<char> = filter.chars().collect();
    let mut pos = 0;
    skip_spaces(&chars, &mut pos);
    one(&chars, &mut pos).err().or_else(|| {
        skip_spaces(&chars, &mut pos);
        (pos < chars.len()).then_some((
            pos + 1,
            "text after the end of the filter (to combine filters, wrap them in (&...) or (|...))",
        ))
    })
}

type Found = (usize, &'static str);

fn skip_spaces(chars: &[char], pos: &mut usize) {
    while chars.get(*pos) == Some(&' ') {
        *pos += 1;
    }
}

fn one(chars: &[char], pos: &mut usize) -> Result<(), Found> {
    if chars.get(*pos) != Some(&'(') {
        return Err((*pos + 1, "expected `(`"));
    }
    *pos += 1;
    match chars.get(*pos) {
        Some('&' | '|') => {
            *pos += 1;
            skip_spaces(chars, pos);
            while chars.get(*pos) == Some(&'(') {
                one(chars, pos)?;
                skip_spaces(chars, pos);
            }
        }
        Some('!') => {
            *pos += 1;
            skip_spaces(chars, pos);
            one(chars, pos)?;
            skip_spaces(chars, pos);
        }
        _ => item(chars, pos)?,
    }
    if chars.get(*pos) != Some(&')') {
        return Err((*pos + 1, "expected `)`"));
    }
    *pos += 1;
    Ok(())
}

/// `attr=value`, `attr~=`, `attr>=`, `attr<=`, `attr=*` and substrings, `attr:dn:rule:=`.
fn item(chars: &[char], pos: &mut usize) -> Result<(), Found> {
    let start = *pos;
    while chars
        .get(*pos)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | ';' | ':'))
    {
        *pos += 1;
    }
    let op_at = *pos;
    if op_at == start {
        return Err((start + 1, "expected an attribute name"));
    }
    match (chars.get(*pos), chars.get(*pos + 1)) {
        (Some('='), _) => *pos += 1,
        (Some('~' | '>' | '<'), Some('=')) => *pos += 2,
        _ => {
            return Err((
                op_at + 1,
                "expected `=`, `~=`, `>=` or `<=` after the attribute name",
            ))
        }
    }
    while let Some(&c) = chars.get(*pos) {
        match c {
            ')' => return Ok(()),
            '(' => return Err((*pos + 1, "`(` in a value must be escaped as \\28")),
            '\\' => {
                let hex = |i: usize| chars.get(i).is_some_and(char::is_ascii_hexdigit);
                if !(hex(*pos + 1) && hex(*pos + 2)) {
                    return Err((*pos + 1, "`\\` must be followed by two hex digits"));
                }
                *pos += 3;
            }
            _ => *pos += 1,
        }
    }
    Err((*pos + 1, "expected `)`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_filters_pass() {
        for f in [
            "(objectClass=inetOrgPerson)",
            "(&(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
            "(|(cn=a*b*c)(mail=*@x.se)(cn=\\28x\\29))",
            "(memberOf:1.2.840.113556.1.4.1941:=cn=G,dc=x)",
            "(uSNChanged>=12)",
        ] {
            assert_eq!(problem(f), None, "{f}");
        }
    }

    #[test]
    fn bad_filters_say_where_they_break() {
        for (f, at, what) in [
            (
                "(objectClass=inetOrgPerson)(uid=*)",
                28,
                "text after the end",
            ),
            ("(objectClass)", 13, "expected `=`"),
            ("(cn=a\\zz)", 6, "two hex digits"),
            ("objectClass=x", 1, "expected `(`"),
            ("(&(cn=a)(cn=b)", 15, "expected `)`"),
            ("(cn=a(b))", 6, "escaped"),
            ("(=x)", 2, "attribute name"),
        ] {
            let (pos, problem) = problem(f).unwrap_or_else(|| panic!("{f} passed"));
            assert_eq!(pos, at, "{f}: {problem}");
            assert!(problem.contains(what), "{f}: {problem}");
        }
    }

    #[test]
    fn the_caret_points_at_the_character() {
        assert_eq!(pointed("(cn)", 4), "    (cn)\n       ^");
    }
}
