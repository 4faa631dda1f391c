//! A synthetic organisation to measure the planner with (`benches/plan.rs`, the memory
//! tests): no servers, plain values only.
//!
//! `n` directory users under four cities and three departments, mapped by
//! `config/example.toml`'s mappings; twenty directory groups (some nested) that grant the
//! roles and services and two mirrored portal groups; the portal and the state as the
//! last sync left them. Then about 1% changes, one kind per 500 users each:
//!
//! * `i % 500 == 1`: the directory changed the family name;
//! * `i % 500 == 2`: someone edited the display name in the portal (reverted);
//! * `i % 500 == 3`: the user joined `SMS-Users` (a service, not a mirrored group; a
//!   change for those whose department did not already grant it);
//! * `i % 500 == 4`: a new user (neither in the portal nor in the state);
//! * `n / 500` managed users left the directory (closed).
#![doc(hidden)]

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Map, Value as Json};

use super::{effective_rules, portal_fields, user, Baseline, Input, KnownGroup, Links, PlanScope};
use crate::access::{self, AccessRules, GroupRef, Membership, PortalGroupRule, RoleRule};
use crate::access::{ServiceRule, SubUnitRule, SubUnitSource};
use crate::mapping::{self, AttrPath, Owner, Rule};
use crate::portal::{PortalGroup, PortalSchema, PortalUser, USER_SCHEMA};
use crate::source::{DirectoryGroup, DirectoryUser, Timestamp};

const PEOPLE: &str = "ou=people,dc=example,dc=com";
const GROUPS: &str = "ou=groups,dc=example,dc=com";
const FAX: &str = "urn:ietf:params:scim:schemas:extension:faxportal:2.0:User";
const CITIES: [&str; 4] = ["Stockholm", "Oslo", "Helsinki", "Copenhagen"];
const DEPARTMENTS: [&str; 3] = ["Sales", "Support", "Ops"];
const GIVEN: [&str; 10] = [
    "Anna", "Erik", "Maja", "Lars", "Sara", "Johan", "Elin", "Karl", "Ida", "Nils",
];
const FAMILY: [&str; 8] = [
    "Andersson",
    "Berg",
    "Carlsson",
    "Dahl",
    "Ek",
    "Falk",
    "Holm",
    "Lund",
];
const LANGUAGES: [&str; 5] = ["sv", "en", "nb", "fi", "da"];
/// Departments (`Dept-00` …) that users are direct members of, by index modulo this.
const DEPT_GROUPS: usize = 14;

/// Everything [`super::compute`] takes, owned.
pub struct Synthetic {
    pub directory: Vec<DirectoryUser>,
    pub groups: Vec<DirectoryGroup>,
    pub portal: Vec<PortalUser>,
    pub portal_groups: Vec<PortalGroup>,
    pub state: HashMap<String, Baseline>,
    pub known_groups: HashMap<String, KnownGroup>,
    /// The effective rules (mappings, role, services, sub-unit).
    pub rules: Vec<Rule>,
    pub access: AccessRules,
    pub schema: PortalSchema,
    pub links: Links,
    pub deleted: HashSet<String>,
    pub now: Timestamp,
}

impl Synthetic {
    /// The organisation of `n` directory users (before the changes), changed by about 1%.
    pub fn new(n: usize) -> Result<Synthetic, String> {
        let mapping = mappings()?;
        let access = access_rules()?;
        let rules = effective_rules(&mapping, &access);
        let fields = portal_fields(&rules);

        // Before: every user i in 0..n + n/500 (the last n/500 leave the directory).
        let leaving = n / 500;
        let before: Vec<DirectoryUser> = (0..n + leaving).map(|i| person(i, false)).collect();
        let before_groups = groups(&before, false);
        let membership = Membership::new(&before_groups);
        let resolved = access::resolve(&access, &membership);

        let mut portal = Vec::new();
        let mut state = HashMap::new();
        let mut template: Option<Baseline> = None;
        let mut portal_ids = HashMap::new();
        let mut id_of: HashMap<String, String> = HashMap::new();
        for (i, u) in before.iter().enumerate() {
            if i < n && i % 500 == 4 {
                continue; // new this cycle: not in the portal yet
            }
            let mut desired = mapping::map_entry(&rules, &u.attrs);
            desired.extend(access::derive(&access, &membership, &resolved, u).0);
            let id = format!("{i:08x}-7f3c-4e1a-9b2d-5c6e8f0a1b2c");
            let mut resource = Map::new();
            for r in &rules {
                if let Some(v) = desired.get(&r.to) {
                    r.to.set(&mut resource, v);
                }
            }
            if i % 500 == 2 {
                resource.insert("displayName".into(), json!("Edited in the portal"));
            }
            resource.insert("schemas".into(), json!([USER_SCHEMA, FAX]));
            resource.insert("id".into(), json!(id));
            resource.insert("externalId".into(), json!(u.anchor));
            resource.insert("active".into(), json!(true));
            resource.insert(
                "meta".into(),
                json!({
                    "resourceType": "User",
                    "created": "2024-03-01T08:00:00Z",
                    "lastModified": "2025-01-15T09:30:00Z",
                    "location": format!("https://portal.example.com/scim/v2/Users/{id}"),
                    "version": format!("W/\"{i}\""),
                }),
            );
            let resource = Json::Object(resource);
            portal.push(PortalUser::from_json(&resource, &fields).map_err(|e| e.to_string())?);
            let anchor = u.anchor.to_ascii_lowercase();
            // As the state reads them back: users synced alike share their paths.
            let baseline = user::created_baseline(&desired, &rules);
            let baseline = match &template {
                Some(t) => baseline.with_paths_of(t),
                None => {
                    template = Some(baseline.clone());
                    baseline
                }
            };
            state.insert(anchor.clone(), baseline);
            portal_ids.insert(anchor, id.clone());
            id_of.insert(crate::dn::key(&u.dn), id);
        }

        // The portal groups as mirrored last time.
        let rule = access.portal_groups.clone().unwrap_or_default();
        let mut portal_groups = Vec::new();
        let mut known_groups = HashMap::new();
        for r in &rule.groups {
            let g = membership.resolve(r)?;
            let members: Vec<String> = membership
                .members_of(g, rule.flatten)
                .iter()
                .filter_map(|dn| id_of.get(dn).cloned())
                .collect();
            let id = format!("group-{}", g.name.to_ascii_lowercase());
            portal_groups.push(PortalGroup {
                id: id.clone(),
                display_name: g.name.clone(),
                external_id: Some(g.anchor.clone()),
                members,
            });
            known_groups.insert(
                g.anchor.to_ascii_lowercase(),
                KnownGroup {
                    portal_id: id,
                    created: true,
                },
            );
        }

        // After: the directory as it is now.
        let directory: Vec<DirectoryUser> = (0..n).map(|i| person(i, true)).collect();
        let groups = groups(&directory, true);
        Ok(Synthetic {
            directory,
            groups,
            portal,
            portal_groups,
            state,
            known_groups,
            rules,
            access,
            schema: schema(),
            links: Links {
                portal_ids,
                ..Links::default()
            },
            deleted: HashSet::new(),
            now: Timestamp::from_unix(1_800_000_000),
        })
    }

    pub fn input(&self) -> Input<'_> {
        Input {
            directory: &self.directory,
            bad_entries: &[],
            portal: &self.portal,
            state: &self.state,
            rules: &self.rules,
            schema: &self.schema,
            groups: &self.groups,
            access: &self.access,
            portal_groups: &self.portal_groups,
            known_groups: &self.known_groups,
            now: self.now,
            scope: &PlanScope::Full,
            deleted: &self.deleted,
            links: &self.links,
        }
    }
}

/// `config/example.toml`'s mappings.
fn mappings() -> Result<Vec<Rule>, String> {
    [
        ("mail", "userName", false, Owner::Directory),
        (
            "mail",
            r#"emails[type eq "work"].value"#,
            false,
            Owner::Directory,
        ),
        ("givenName", "name.givenName", false, Owner::Directory),
        ("sn", "name.familyName", false, Owner::Directory),
        ("displayName", "displayName", false, Owner::Directory),
        (
            "preferredLanguage",
            "preferredLanguage",
            false,
            Owner::Portal,
        ),
        (
            "telephoneNumber",
            r#"phoneNumbers[type eq "work"].value"#,
            false,
            Owner::Merge,
        ),
        (
            "facsimileTelephoneNumber",
            &format!("{FAX}:faxNumbers"),
            true,
            Owner::Directory,
        ),
    ]
    .into_iter()
    .map(|(from, to, multi, owner)| {
        Ok(Rule {
            from: from.to_string(),
            to: AttrPath::parse(to)?,
            multi,
            owner,
        })
    })
    .collect()
}

/// `config/example.toml`'s roles, services, portal groups and sub-unit.
fn access_rules() -> Result<AccessRules, String> {
    let group = |name: &str| GroupRef(name.to_string());
    Ok(AccessRules {
        roles: Some((
            vec![
                RoleRule {
                    group: group("Portal-Admins"),
                    role: "administrator".into(),
                },
                RoleRule {
                    group: group("Fax-Admins"),
                    role: "account_manager".into(),
                },
            ],
            "regular".into(),
        )),
        services: vec![
            ServiceRule {
                group: group("Fax-Users"),
                service: "fax".into(),
            },
            ServiceRule {
                group: group("SMS-Users"),
                service: "sms".into(),
            },
        ],
        sub_unit: Some(SubUnitRule {
            from: SubUnitSource::OuPath {
                base: PEOPLE.into(),
            },
            to: AttrPath::parse(&format!("{FAX}:subUnit"))?,
        }),
        portal_groups: Some(PortalGroupRule {
            groups: vec![group("Fax-Users"), group("Support-Oslo")],
            by_filter: false,
            flatten: true,
        }),
        keep_one_of: vec!["administrator".into(), "account_manager".into()],
    })
}

/// User `i`; `now` applies the directory-side changes.
fn person(i: usize, now: bool) -> DirectoryUser {
    let uid = format!("u{i:06}");
    let given = GIVEN[i % GIVEN.len()];
    let usual = FAMILY[(i / GIVEN.len()) % FAMILY.len()];
    let family = match now && i % 500 == 1 {
        true => format!("{usual}-Lind"),
        false => usual.to_string(),
    };
    let city = CITIES[i % CITIES.len()];
    let department = DEPARTMENTS[(i / CITIES.len()) % DEPARTMENTS.len()];
    let mail = format!("{}.{uid}@example.com", given.to_ascii_lowercase());
    let mut attrs: BTreeMap<String, Vec<String>> = BTreeMap::new();
    attrs.insert("mail".into(), vec![mail]);
    attrs.insert("givenname".into(), vec![given.into()]);
    attrs.insert("sn".into(), vec![family]);
    attrs.insert(
        "displayname".into(),
        vec![format!("{given} {usual} ({uid})")],
    );
    attrs.insert(
        "preferredlanguage".into(),
        vec![LANGUAGES[i % LANGUAGES.len()].into()],
    );
    attrs.insert(
        "telephonenumber".into(),
        vec![format!("+46 8 {:03} {:04}", 100 + i / 10_000, i % 10_000)],
    );
    if i.is_multiple_of(3) {
        let mut fax = vec![format!("+46 8 {:03} {:04}", 500 + i / 10_000, i % 10_000)];
        if i.is_multiple_of(9) {
            fax.push(format!("+46 8 {:03} {:04}", 600 + i / 10_000, i % 10_000));
        }
        attrs.insert("facsimiletelephonenumber".into(), fax);
    }
    DirectoryUser {
        dn: format!("uid={uid},ou={department},ou={city},{PEOPLE}"),
        anchor: format!("{i:08x}-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
        attrs: attrs.into(),
        disabled: false,
        expires: None,
    }
}

/// The twenty groups: fourteen departments users are direct members of, and six that
/// grant access, some through nested departments. `now` applies the membership changes.
fn groups(users: &[DirectoryUser], now: bool) -> Vec<DirectoryGroup> {
    let dept = |d: usize| format!("Dept-{d:02}");
    let gdn = |name: &str| format!("cn={name},{GROUPS}");
    let mut direct: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, u) in users.iter().enumerate() {
        direct
            .entry(dept(i % DEPT_GROUPS))
            .or_default()
            .push(u.dn.clone());
        let mut also = |name: &str| {
            direct
                .entry(name.to_string())
                .or_default()
                .push(u.dn.clone())
        };
        if i % 50 == 7 {
            also("Support-Oslo");
        }
        if i % 1000 == 5 {
            also("Fax-Leads");
        }
        if i % 5000 == 9 {
            also("Portal-Admins");
        }
        if now && i % 500 == 3 && !(4..12).contains(&(i % DEPT_GROUPS)) {
            also("SMS-Users");
        }
    }
    let mut nested: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    nested.insert(
        "Fax-Users",
        (0..8)
            .map(|d| gdn(&dept(d)))
            .chain([gdn("Support-Oslo")])
            .collect(),
    );
    nested.insert("SMS-Users", (4..12).map(|d| gdn(&dept(d))).collect());
    nested.insert("Fax-Admins", vec![gdn("Fax-Leads")]);
    let names = (0..DEPT_GROUPS).map(dept).chain(
        [
            "Fax-Users",
            "SMS-Users",
            "Support-Oslo",
            "Fax-Leads",
            "Fax-Admins",
            "Portal-Admins",
        ]
        .map(str::to_string),
    );
    names
        .enumerate()
        .map(|(k, name)| {
            let mut members = direct.remove(&name).unwrap_or_default();
            members.extend(nested.remove(name.as_str()).unwrap_or_default());
            DirectoryGroup {
                dn: gdn(&name),
                anchor: format!("{k:08x}-9999-4000-8000-000000000000"),
                selected: false,
                sid: None,
                members,
                name,
            }
        })
        .collect()
}

/// The portal's schema, as far as the plan cares: the login is immutable.
fn schema() -> PortalSchema {
    PortalSchema::from_json(&json!([{
        "id": USER_SCHEMA,
        "attributes": [
            {"name": "userName", "mutability": "immutable"},
            {"name": "displayName", "mutability": "readWrite"},
        ],
    }]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{compute, compute_on, Action};

    #[test]
    fn the_plan_is_the_same_on_one_thread_and_on_several() {
        // 9000 users: the users are mapped in three parts of 4096 at most.
        let s = Synthetic::new(9000).unwrap();
        let one = compute_on(&s.input(), 1);
        // One user in 500 is new and one in 500 has left: the plan is not empty.
        assert_eq!(one.count(Action::Create), 18);
        assert_eq!(one.count(Action::Close), 18);
        assert!(one.count(Action::Update) >= 36, "{:?}", one.changes.len());
        assert_eq!(compute_on(&s.input(), 3), one);
    }

    #[test]
    fn the_users_are_mapped_alike_on_one_thread_and_on_several() {
        // What an incremental cycle's concern does: keep the users whose values differ
        // from their baseline, in order, with the mirrored groups.
        let s = Synthetic::new(9000).unwrap();
        let on = |threads| {
            crate::plan::desired_each_on(
                &s.directory,
                &s.groups,
                &s.rules,
                &s.access,
                s.now,
                |u, login, attrs| {
                    let key = u.anchor.to_ascii_lowercase();
                    let owed = s.state.get(&key).is_none_or(|base| {
                        crate::plan::differs_from_baseline(&attrs, base, &s.rules)
                    });
                    owed.then(|| (key, login.to_string()))
                },
                threads,
            )
        };
        let (kept, groups) = on(1);
        // The 18 new users (no baseline) and the changed ones, not the others.
        let new = kept
            .iter()
            .filter(|(key, _)| !s.state.contains_key(key))
            .count();
        assert_eq!(new, 18);
        assert!(kept.len() > new, "{}", kept.len());
        assert!(kept.len() < 1000, "{}", kept.len());
        assert!(!groups.is_empty());
        assert_eq!(on(3), (kept, groups));
    }

    #[test]
    fn about_one_percent_of_the_synthetic_organisation_changes() {
        let s = Synthetic::new(5000).unwrap();
        let plan = compute(&s.input());
        assert!(plan.skipped.is_empty(), "{:?}", plan.skipped);
        // Ten of each kind per 5000 users.
        assert_eq!(plan.count(Action::Create), 10);
        assert_eq!(plan.count(Action::Close), 10);
        let updates: Vec<_> = plan
            .changes
            .iter()
            .filter(|c| c.action == Action::Update)
            .collect();
        // Those that joined SMS-Users through a department already had the service.
        let sms = (0..5000)
            .filter(|i| i % 500 == 3 && !(4..12).contains(&(i % DEPT_GROUPS)))
            .count();
        assert!(sms > 0);
        assert_eq!(updates.len(), 20 + sms, "{:#?}", plan.changes);
        let fields = |path: &str| {
            updates
                .iter()
                .filter(|c| c.fields.iter().any(|f| f.path.to_string() == path))
                .count()
        };
        assert_eq!(fields("name.familyName"), 10);
        assert_eq!(fields("displayName"), 10);
        assert_eq!(fields(r#"entitlements[value eq "sms"].value"#), sms);
        // The others are in step, linked and recorded as they are: nothing to record.
        assert!(plan.in_sync.is_empty(), "{:?}", plan.in_sync.first());
        assert!(plan.conflicts.is_empty());
        // The new users join the mirrored Fax-Users group when their department is in it.
        assert!(plan
            .group_changes
            .iter()
            .any(|g| g.name == "Fax-Users" && !g.add.is_empty() && !g.remove.is_empty()));
    }
}
