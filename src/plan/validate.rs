//! Which directory users can be synced: each needs a login that is a plain email address;
//! two entries claiming one login are both held back, since either could be the right one.
//! Control characters in other values (a tab in `givenName`) are replaced by spaces and
//! noted, rather than holding the whole user back.

use super::folded::Multi;
use super::{Skipped, Wanted};
use crate::mapping::{self, Attributes, Rule, Value};
use crate::source::DirectoryUser;

pub(super) fn validate<'a>(
    users: &'a [DirectoryUser],
    rules: &[Rule],
    login_rules: &[Rule],
    skipped: &mut Vec<Skipped>,
    notes: &mut Vec<String>,
) -> Vec<Wanted<'a>> {
    let login_rule = rules.iter().find(|r| r.to.is_user_name());
    let mut ok: Vec<Wanted<'a>> = Vec::new();
    for user in users {
        // Only an entry with a control character anywhere has every attribute mapped
        // here, to say what is cleaned; the others are mapped when they are planned.
        let suspect = user
            .attrs
            .iter()
            .any(|(_, vs)| vs.iter().any(|v| v.chars().any(char::is_control)));
        let attrs = mapping::map_entry(if suspect { rules } else { login_rules }, &user.attrs);
        let user_name = match attrs.iter().find(|(p, _)| p.is_user_name()) {
            Some((_, Value::One(v))) => v.clone(),
            _ => {
                skipped.push(Skipped {
                    dn: user.dn.clone(),
                    problem: format!(
                        "no {} (mapped to userName, the portal login)",
                        login_rule.map_or("login attribute", |r| r.from.as_str())
                    ),
                });
                continue;
            }
        };
        if let Err(problem) = check_login(&user_name) {
            skipped.push(Skipped {
                dn: user.dn.clone(),
                problem,
            });
            continue;
        }
        let mut attrs = attrs;
        let cleaned = clean(&mut attrs);
        if !cleaned.is_empty() {
            notes.push(format!(
                "{}: control characters in {} were replaced by spaces",
                user.dn,
                cleaned.join(", ")
            ));
        }
        ok.push(Wanted { user, user_name });
    }

    // Logins must be unique (the portal compares them without case).
    let mut by_login: Multi<'_, usize> = Multi::with_capacity(ok.len());
    for (i, w) in ok.iter().enumerate() {
        by_login.push(&w.user_name, i);
    }
    let mut dropped = vec![false; ok.len()];
    let mut clashes: Vec<&[usize]> = by_login.repeated().collect();
    clashes.sort();
    for idx in clashes {
        for &i in idx {
            dropped[i] = true;
            let others: Vec<&str> = idx
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| ok[j].user.dn.as_str())
                .collect();
            skipped.push(Skipped {
                dn: ok[i].user.dn.clone(),
                problem: format!(
                    "login {} is also used by {}",
                    ok[i].user_name,
                    others.join(", ")
                ),
            });
        }
    }
    ok.into_iter()
        .zip(dropped)
        .filter_map(|(w, d)| (!d).then_some(w))
        .collect()
}

/// Replaces control characters in the values by spaces; returns the paths touched
/// (`` `path` ``), in path order.
pub(super) fn clean(attrs: &mut Attributes) -> Vec<String> {
    let mut cleaned: Vec<String> = Vec::new();
    for (path, value) in attrs.iter_mut() {
        let strings = match value {
            Value::One(s) => std::slice::from_mut(s),
            Value::Many(vs) => &mut vs[..],
        };
        let mut touched = false;
        for s in strings {
            if s.chars().any(char::is_control) {
                *s = s
                    .chars()
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                touched = true;
            }
        }
        if touched {
            cleaned.push(format!("`{path}`"));
        }
    }
    cleaned
}

/// The portal's login is a plain email address: valid by RFC 5322 (the `email_address`
/// crate), with a domain of at least two labels and no domain literal, and without the
/// quoted forms, backslashes, brackets and braces that RFC allows but that portals, mail
/// systems and JSON consumers stumble on (`"a b"@x.se`, `<script>@x.se`, `{"a":1}@x.se`).
fn check_login(login: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "login {login:?} is not a usable email address: {why}"
        ))
    };
    if login.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains spaces or control characters");
    }
    if login.contains(['"', '\\', '<', '>', '{', '}', '[', ']', '(', ')']) {
        return bad("it contains quotes, backslashes, brackets or braces");
    }
    let options = email_address::Options {
        minimum_sub_domains: 2,
        allow_domain_literal: false,
        allow_display_text: false,
        ..email_address::Options::default()
    };
    match email_address::EmailAddress::parse_with_options(login, options) {
        Ok(_) => Ok(()),
        Err(e) => bad(&e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::check_login;

    #[test]
    fn logins_must_look_like_email_addresses() {
        assert!(check_login("anna.berg@example.se").is_ok());
        assert!(check_login("Anna.Berg+fax@sub.example.se").is_ok());
        assert!(check_login("o'brien@example.ie").is_ok());
        assert!(
            check_login("åsa@exempel.se").is_ok(),
            "UTF-8 local parts (RFC 6531)"
        );
        for bad in [
            "anna",
            "anna@",
            "@example.se",
            "an na@example.se",
            "a@b@c.se",
            "a@localhost",
            "a@example.se.",
            "a\u{7}@x.se",
            "<script>alert(2)</script>@x.se",
            "\"quoted\"@x.se",
            "{\"a\":1}@x.se",
            "a@[10.0.0.1]",
            "a..b@x.se",
            "a@x..se",
            "a@-x.se",
        ] {
            assert!(check_login(bad).is_err(), "{bad:?}");
        }
    }
}
