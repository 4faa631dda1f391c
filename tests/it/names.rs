//! Distinguished names with hard characters, against the real slapd and scim2-server.
//!
//! The directory is described as a plain model below (OU paths, users, groups, who is in
//! what) and written out as LDIF twice over: each entry's own `dn:` with RFC 4514's
//! backslash escapes (`\,`), the group `member` values mostly with hex escapes (`\2C`,
//! UTF-8 as `\C3\85`), upper-case attribute types and spaces after the commas, as other
//! tools write them. slapd returns entry DNs in yet another form (`\2C` for a comma, raw
//! UTF-8). What each user should get is computed from the model alone, never from DNs, so
//! the expectation does not share dirsync's DN code.

use std::collections::{BTreeMap, BTreeSet};

use crate::harness::samba::base64_encode;
use crate::support::World;

const SUB: &str = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User";

/// An OU path under `ou=people`, outermost first, as the OU values read.
type OuPath = &'static [&'static str];

const OUS: &[OuPath] = &[
    &["R&D, Lab"],
    &["Åsgård Øst, Plus+"],
    &["Sales \"North\""],
    &["Back\\slash"],
    &["#1 Team"],
    &["Köln"],
    &["Köln", "Straße+Co; <Süd>"],
];

struct Person {
    uid: &'static str,
    /// A second RDN value (`uid=x+cn=y`): a multi-valued RDN.
    cn_in_rdn: Option<&'static str>,
    ou: OuPath,
    /// Groups the user is a direct member of.
    groups: &'static [&'static str],
}

const PEOPLE: &[Person] = &[
    Person {
        uid: "anna",
        cn_in_rdn: None,
        ou: &["R&D, Lab"],
        groups: &["Portal Admins, \"HQ\""],
    },
    Person {
        uid: "bo",
        cn_in_rdn: None,
        ou: &["R&D, Lab"],
        groups: &["Night, Shift+1"],
    },
    Person {
        uid: "cia",
        cn_in_rdn: None,
        ou: &["Åsgård Øst, Plus+"],
        groups: &["Fax-Admins+", "SMS #1"],
    },
    Person {
        uid: "dan",
        cn_in_rdn: None,
        ou: &["Sales \"North\""],
        groups: &["Åsgård-Team"],
    },
    Person {
        uid: "eva",
        cn_in_rdn: Some("Eva Ek"),
        ou: &["Back\\slash"],
        groups: &["Night, Shift+1", "SMS #1"],
    },
    Person {
        uid: "fia",
        cn_in_rdn: None,
        ou: &["#1 Team"],
        groups: &["Fax Users"],
    },
    Person {
        uid: "gus",
        cn_in_rdn: None,
        ou: &["Köln", "Straße+Co; <Süd>"],
        groups: &["Åsgård-Team", "Fax-Admins+"],
    },
    Person {
        uid: "hal",
        cn_in_rdn: None,
        ou: &["Köln"],
        groups: &[],
    },
];

/// Groups under `ou=groups`, with the groups each is a direct member of.
const GROUPS: &[(&str, &[&str])] = &[
    ("Portal Admins, \"HQ\"", &[]),
    ("Fax-Admins+", &[]),
    ("Fax Users", &[]),
    ("SMS #1", &[]),
    // Night, Shift+1 is a member of Åsgård-Team, which is a member of Fax Users and SMS #1.
    ("Night, Shift+1", &["Åsgård-Team"]),
    ("Åsgård-Team", &["Fax Users", "SMS #1"]),
];

/// Role rules in order (first match wins), services, mirrored portal groups.
const ROLE_RULES: &[(&str, &str)] = &[
    ("Portal Admins, \"HQ\"", "administrator"),
    ("Fax-Admins+", "account_manager"),
];
const SERVICES: &[(&str, &str)] = &[("Fax Users", "fax"), ("SMS #1", "sms")];
const MIRRORED: &[&str] = &["Night, Shift+1", "Åsgård-Team"];

/// RFC 4514 escaping with backslash and the character itself; UTF-8 left as it is.
fn escape_plain(value: &str) -> String {
    let mut out = String::new();
    let n = value.chars().count();
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i == n - 1 => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

/// RFC 4514 escaping with hex pairs, for the specials and every non-ASCII byte.
fn escape_hex(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if !c.is_ascii()
            || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (c == '#' && i == 0)
        {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

const SUFFIX: &str = "dc=example,dc=com";

fn ou_rdns(path: OuPath, esc: fn(&str) -> String, upper: bool) -> String {
    let ou = if upper { "OU" } else { "ou" };
    let sep = if upper { ", " } else { "," };
    let mut out = String::new();
    for v in path.iter().rev() {
        out.push_str(&format!("{ou}={}{sep}", esc(v)));
    }
    out.push_str(&format!("{ou}=people{sep}{SUFFIX}"));
    out
}

/// A person's DN in one of two spellings.
fn person_dn(p: &Person, hex: bool) -> String {
    let esc: fn(&str) -> String = if hex { escape_hex } else { escape_plain };
    let rdn = match p.cn_in_rdn {
        // The member value lists the RDN's values in the other order.
        Some(cn) if hex => format!("CN={}+UID={}", esc(cn), p.uid),
        Some(cn) => format!("uid={}+cn={}", p.uid, esc(cn)),
        None if hex => format!("UID={}", p.uid),
        None => format!("uid={}", p.uid),
    };
    let sep = if hex { " , " } else { "," };
    format!("{rdn}{sep}{}", ou_rdns(p.ou, esc, hex))
}

fn group_dn(name: &str, hex: bool) -> String {
    if hex {
        format!("CN={}, OU=groups, {SUFFIX}", escape_hex(name))
    } else {
        format!("cn={},ou=groups,{SUFFIX}", escape_plain(name))
    }
}

/// `attr: value`, base64 when LDIF requires it.
fn line(attr: &str, value: &str) -> String {
    let safe = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        format!("{attr}: {value}\n")
    } else {
        format!("{attr}:: {}\n", base64_encode(value.as_bytes()))
    }
}

fn ldif() -> String {
    let mut out = String::new();
    for path in OUS {
        out.push_str(&line("dn", &ou_rdns(path, escape_plain, false)));
        out.push_str("objectClass: organizationalUnit\n");
        out.push_str(&line("ou", path[path.len() - 1]));
        out.push('\n');
    }
    for p in PEOPLE {
        out.push_str(&line("dn", &person_dn(p, false)));
        out.push_str("objectClass: inetOrgPerson\n");
        out.push_str(&line("uid", p.uid));
        out.push_str(&line("cn", p.cn_in_rdn.unwrap_or(p.uid)));
        out.push_str(&line("sn", "Test"));
        out.push_str(&line("mail", &format!("{}@example.se", p.uid)));
        out.push('\n');
    }
    for (name, _) in GROUPS {
        out.push_str(&line("dn", &group_dn(name, false)));
        out.push_str("objectClass: groupOfNames\n");
        out.push_str(&line("cn", name));
        // Members in the other spelling (hex escapes, upper-case types, spaces), except
        // every third one, written as the entry's own `dn:` is.
        let mut k = 0;
        for p in PEOPLE.iter().filter(|p| p.groups.contains(name)) {
            out.push_str(&line("member", &person_dn(p, k % 3 != 2)));
            k += 1;
        }
        for (child, parents) in GROUPS {
            if parents.contains(name) {
                out.push_str(&line("member", &group_dn(child, k % 3 != 2)));
                k += 1;
            }
        }
        if k == 0 {
            out.push_str(&line("member", &format!("cn=dirsync,ou=services,{SUFFIX}")));
        }
        out.push('\n');
    }
    out
}

/// Every group a person is in, directly or through nesting: from the model alone.
fn groups_of(p: &Person) -> BTreeSet<&'static str> {
    let mut seen = BTreeSet::new();
    let mut todo: Vec<&str> = p.groups.to_vec();
    while let Some(g) = todo.pop() {
        let Some((name, parents)) = GROUPS.iter().find(|(n, _)| *n == g) else {
            continue;
        };
        if seen.insert(*name) {
            todo.extend(parents.iter().copied());
        }
    }
    seen
}

#[derive(Debug, PartialEq, Eq)]
struct Access {
    role: String,
    services: Vec<String>,
    sub_unit: String,
    portal_groups: Vec<String>,
}

fn expected() -> BTreeMap<String, Access> {
    PEOPLE
        .iter()
        .map(|p| {
            let groups = groups_of(p);
            let role = ROLE_RULES
                .iter()
                .find(|(g, _)| groups.contains(g))
                .map_or("regular", |(_, r)| r)
                .to_string();
            let services = SERVICES
                .iter()
                .filter(|(g, _)| groups.contains(g))
                .map(|(_, s)| s.to_string())
                .collect();
            let portal_groups = MIRRORED
                .iter()
                .filter(|g| groups.contains(*g))
                .map(|g| g.to_string())
                .collect();
            (
                format!("{}@example.se", p.uid),
                Access {
                    role,
                    services,
                    sub_unit: p.ou.join("/"),
                    portal_groups,
                },
            )
        })
        .collect()
}

/// The config: rules by `cn`, except one role rule and one mirrored group named by DN in
/// a third spelling.
fn rules_config() -> String {
    let toml = |s: &str| serde_json::to_string(s).unwrap(); // a JSON string is a TOML basic string
    let mut out = String::from("[roles]\ndefault = \"regular\"\n");
    for (i, (group, role)) in ROLE_RULES.iter().enumerate() {
        let named = if i == 1 {
            format!(
                "cn={},OU=Groups,{SUFFIX}",
                escape_hex(group).replace("\\2B", "\\+")
            )
        } else {
            group.to_string()
        };
        out.push_str(&format!(
            "[[roles.rule]]\ngroup = {}\nrole = \"{role}\"\n",
            toml(&named)
        ));
    }
    for (group, service) in SERVICES {
        out.push_str(&format!(
            "[[service]]\ngroup = {}\nservice = \"{service}\"\n",
            toml(group)
        ));
    }
    let mirrored: Vec<String> = MIRRORED
        .iter()
        .enumerate()
        .map(|(i, g)| {
            if i == 0 {
                toml(&group_dn(g, true))
            } else {
                toml(g)
            }
        })
        .collect();
    out.push_str(&format!(
        "[portal_groups]\ngroups = [{}]\n",
        mirrored.join(", ")
    ));
    out.push_str(&format!(
        "[sub_unit]\nfrom = \"ou\"\nto = \"{SUB}:subUnit\"\n"
    ));
    out
}

fn portal_access(w: &World) -> BTreeMap<String, Access> {
    let users = w.portal.users();
    let groups = w.portal.groups();
    let login_of: BTreeMap<String, String> = users
        .iter()
        .map(|u| {
            (
                u["id"].as_str().unwrap().to_string(),
                u["userName"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut in_groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &groups {
        for m in g["members"].as_array().cloned().unwrap_or_default() {
            let login = login_of[m["value"].as_str().unwrap()].clone();
            in_groups
                .entry(login)
                .or_default()
                .push(g["displayName"].as_str().unwrap().to_string());
        }
    }
    users
        .iter()
        .map(|u| {
            let login = u["userName"].as_str().unwrap().to_string();
            let mut services: Vec<String> = u["entitlements"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|e| e["value"].as_str().unwrap().to_string())
                        .collect()
                })
                .unwrap_or_default();
            services.sort();
            let mut portal_groups = in_groups.remove(&login).unwrap_or_default();
            portal_groups.sort_by_key(|g| MIRRORED.iter().position(|m| m == g));
            let roles: Vec<&str> = u["roles"]
                .as_array()
                .map(|a| a.iter().map(|r| r["value"].as_str().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(roles.len(), 1, "one role each: {u}");
            (
                login,
                Access {
                    role: roles[0].to_string(),
                    services,
                    sub_unit: u[SUB]["subUnit"].as_str().unwrap_or_default().to_string(),
                    portal_groups,
                },
            )
        })
        .collect()
}

fn check(w: &mut World) {
    w.extra_config = rules_config();
    let report = w.sync();
    assert_eq!(
        report["skipped"].as_array().map_or(0, Vec::len),
        0,
        "nobody is skipped: {report:#}"
    );
    let notes = report["notes"].to_string();
    assert!(
        !notes.contains("not among the groups"),
        "every configured group resolves: {notes}"
    );
    let want = expected();
    let got = portal_access(w);
    for (login, access) in &want {
        assert_eq!(got.get(login), Some(access), "{login}");
    }
    assert_eq!(got.len(), want.len(), "no extra portal users: {got:#?}");
    // The sanity of the model: it exercises every rule.
    assert!(want.values().any(|a| a.role == "administrator"));
    assert!(want.values().any(|a| a.role == "account_manager"));
    assert!(want.values().any(|a| a.services.len() == 2));
    assert!(want.values().any(|a| a.portal_groups.len() == 2));
    // A second cycle finds nothing to do: the escaping differences are no changes.
    let again = w.plan();
    let changes = again["changes"].as_array().map_or(0, Vec::len);
    let group_changes = again["group_changes"].as_array().map_or(0, Vec::len);
    assert_eq!((changes, group_changes), (0, 0), "{again:#}");
}

#[test]
fn escaped_ou_and_group_names_loaded_with_slapadd_give_the_access_the_model_says() {
    let mut w = World::start(&ldif());
    check(&mut w);
}

#[test]
fn escaped_ou_and_group_names_loaded_with_ldapadd_give_the_access_the_model_says() {
    let mut w = World::start("");
    w.ldap.add(&ldif());
    check(&mut w);
}
