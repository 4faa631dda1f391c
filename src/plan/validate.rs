//! Which directory users can be synced: each needs a login and clean values; two entries
//! claiming one login are both held back, since either could be the right one.

use std::collections::HashMap;

use super::{Skipped, Wanted};
use crate::mapping::{self, Rule, Value};
use crate::source::DirectoryUser;

pub(super) fn validate<'a>(
    users: &'a [DirectoryUser],
    rules: &[Rule],
    skipped: &mut Vec<Skipped>,
) -> Vec<Wanted<'a>> {
    let login_rule = rules.iter().find(|r| r.to.is_user_name());
    let mut ok: Vec<Wanted<'a>> = Vec::new();
    for user in users {
        let attrs = mapping::map_entry(rules, &user.attrs);
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
        if let Some(problem) = attrs.iter().find_map(|(path, v)| {
            let values: Vec<&String> = match v {
                Value::One(s) => vec![s],
                Value::Many(vs) => vs.iter().collect(),
            };
            values
                .into_iter()
                .find(|s| s.chars().any(char::is_control))
                .map(|s| format!("the value for `{path}` holds control characters ({s:?})"))
        }) {
            skipped.push(Skipped {
                dn: user.dn.clone(),
                problem,
            });
            continue;
        }
        ok.push(Wanted {
            user,
            attrs,
            user_name,
            why: Default::default(),
        });
    }

    // Logins must be unique (the portal compares them without case).
    let mut by_login: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, w) in ok.iter().enumerate() {
        by_login
            .entry(w.user_name.to_ascii_lowercase())
            .or_default()
            .push(i);
    }
    let mut dropped = vec![false; ok.len()];
    let mut clashes: Vec<&Vec<usize>> = by_login.values().filter(|v| v.len() > 1).collect();
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

/// The portal's login is an email address.
fn check_login(login: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "login {login:?} is not a usable email address: {why}"
        ))
    };
    if login.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains spaces or control characters");
    }
    let Some((local, domain)) = login.split_once('@') else {
        return bad("no @");
    };
    if local.is_empty()
        || domain.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
    {
        return bad("it is not of the form name@domain.tld");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_login;

    #[test]
    fn logins_must_look_like_email_addresses() {
        assert!(check_login("anna.berg@example.se").is_ok());
        assert!(check_login("Anna.Berg+fax@sub.example.se").is_ok());
        for bad in [
            "anna",
            "anna@",
            "@example.se",
            "an na@example.se",
            "a@b@c.se",
            "a@localhost",
            "a@example.se.",
            "a\u{7}@x.se",
        ] {
            assert!(check_login(bad).is_err(), "{bad:?}");
        }
    }
}
