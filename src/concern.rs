//! What an incremental cycle reads from the portal. Pure.
//!
//! A full reconcile lists both sides and plans every user. Between full reconciles a cycle
//! reads only what changed in the directory, and reads from the portal (by id, or looked
//! up by login) only the users and groups those changes *concern*:
//!
//! - users whose entry changed or left (deleted, out of scope) since the last read, and
//!   those whose account expired since then;
//! - users whose desired attributes differ from what was last synced with the portal
//!   (a group membership change alters role, services and sub-unit without touching the
//!   user's entry);
//! - directory users dirsync does not manage yet, who may log in (to create or adopt);
//! - changes planned before and not applied yet ([`Pending`]);
//! - mirrored groups whose name or members differ from the last read's, that appear or
//!   leave, that dirsync has not made yet or still knows without mirroring them, that hold
//!   or held a concerned user, and pending ones.
//!
//! Nothing else is read or planned: a portal-side edit of a user nothing concerns (an
//! admin-locked field changed in the portal, a user deleted there) is seen at the next
//! full reconcile. A mirrored group the last cycle left in step is not read either: it is
//! planned from the members the last cycle left ([`Concerned::left`]), so a membership
//! edited in the portal is also seen at the next full reconcile.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::access::AccessRules;
use crate::mapping::Rule;
use crate::plan::{self, Baseline, KnownGroup};
use crate::source::delta::Pending;
use crate::source::{DirectoryGroup, DirectoryUser, Timestamp};

/// What an incremental read changed, and what the state remembers.
pub struct Input<'a> {
    /// The directory's users now.
    pub users: &'a [DirectoryUser],
    /// The directory's groups now, with primary-group members.
    pub groups: &'a [DirectoryGroup],
    /// The users and groups as the last read found them, with primary-group members;
    /// `None` when the read brought no entry and found none gone: they are `users` and
    /// `groups`.
    pub previous: Option<(&'a [DirectoryUser], &'a [DirectoryGroup])>,
    pub now: Timestamp,
    /// When the last read ran.
    pub before: Timestamp,
    /// Lowercased anchors of the users and groups read as changed.
    pub changed: &'a HashSet<String>,
    /// Lowercased anchors of the users and groups that left.
    pub gone: &'a HashSet<String>,
    pub pending: &'a Pending,
    /// The managed users (lowercased anchors) and their last-synced values.
    pub known: &'a HashMap<String, Baseline>,
    pub known_groups: &'a HashMap<String, KnownGroup>,
    pub rules: &'a [Rule],
    pub access: &'a AccessRules,
}

/// The users and groups an incremental cycle reads from the portal and plans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Concerned {
    /// Lowercased anchors of the users.
    pub users: BTreeSet<String>,
    /// The login of each of them still in the directory (to look up a user dirsync does
    /// not manage, or one deleted in the portal).
    pub logins: BTreeMap<String, String>,
    /// Lowercased anchors of the mirrored groups, with the name to look one up by.
    pub groups: BTreeMap<String, String>,
    /// Of those groups, the ones whose portal group the last cycle left as the directory
    /// then asked: its name then and the lowercased anchors of its members then. Such a
    /// group is planned from this and the state's links, without reading its members
    /// (a membership edited in the portal is seen at the next full reconcile, as an
    /// admin-locked user field is). A group is left out when the state does not know
    /// it, when it or one of its members has a change pending, or when it is new or
    /// leaves.
    pub left: plan::MirroredGroups,
}

pub fn concerned(input: &Input<'_>) -> Concerned {
    let previous = input.previous.unwrap_or((input.users, input.groups));
    // Every user is mapped and compared with its baseline: a group change alters role,
    // services and sub-unit without touching the user's entry, and a difference left on
    // purpose (a privileged role kept, a field only an administrator may change, a
    // conflict) is reported again at every cycle, as a full reconcile would.
    let mut users: BTreeSet<String> = BTreeSet::new();
    if !input.changed.is_empty() || !input.gone.is_empty() {
        let lower = |users: &[DirectoryUser]| -> HashSet<String> {
            users
                .iter()
                .map(|u| u.anchor.to_ascii_lowercase())
                .collect()
        };
        let users_now = lower(input.users);
        let users_before = match input.previous {
            Some((before, _)) => lower(before),
            None => HashSet::new(),
        };
        users.extend(
            input
                .changed
                .iter()
                .chain(input.gone)
                .filter(|a| {
                    users_now.contains(*a)
                        || users_before.contains(*a)
                        || input.known.contains_key(*a)
                })
                .cloned(),
        );
    }
    users.extend(input.pending.users.iter().cloned());
    // Expired since the last read, though the entry did not change.
    let mut expired_since = false;
    for u in input.users {
        if u.expires.is_some()
            && u.closure(input.now).is_none() != u.closure(input.before).is_none()
        {
            users.insert(u.anchor.to_ascii_lowercase());
            expired_since = true;
        }
    }
    // Each user mapped and compared as it comes (on every core), none held: the login of
    // each user concerned is kept.
    let (kept, mirrored_now) = plan::desired_each(
        input.users,
        input.groups,
        input.rules,
        input.access,
        input.now,
        |u, login, attrs| {
            let key = plan::folded::lowered(&u.anchor);
            let owed = match input.known.get(key.as_ref()) {
                Some(base) => plan::differs_from_baseline(&attrs, base, input.rules),
                None => u.closure(input.now).is_none(),
            };
            (owed || users.contains(key.as_ref())).then(|| (key.into_owned(), login.to_string()))
        },
    );
    let mut logins: BTreeMap<String, String> = BTreeMap::new();
    for (key, login) in kept {
        users.insert(key.clone());
        logins.insert(key, login);
    }

    let mut groups: BTreeMap<String, String> = BTreeMap::new();
    let mut left = BTreeMap::new();
    if input.access.portal_groups.is_some() {
        let now = mirrored_now;
        // The mirrored groups depend on the time only through who may log in: with the
        // directory as it was and nobody expired since, they were as they are.
        let before = if input.previous.is_none() && !expired_since {
            now.clone()
        } else {
            plan::mirrored_groups(
                previous.0,
                previous.1,
                input.rules,
                input.access,
                input.before,
            )
        };
        let holds_concerned =
            |members: &BTreeSet<String>| members.iter().any(|m| users.contains(m));
        for (anchor, (name, members)) in &now {
            let moved = before.get(anchor) != Some(&(name.clone(), members.clone()));
            if moved || !input.known_groups.contains_key(anchor) || holds_concerned(members) {
                groups.insert(anchor.clone(), name.clone());
            }
        }
        for (anchor, (name, members)) in &before {
            if !now.contains_key(anchor) || holds_concerned(members) {
                groups.entry(anchor.clone()).or_insert_with(|| name.clone());
            }
        }
        let name_of = |a: &str| {
            now.get(a)
                .or_else(|| before.get(a))
                .map(|(n, _)| n.clone())
                .unwrap_or_default()
        };
        for anchor in input.known_groups.keys() {
            if !now.contains_key(anchor) {
                groups
                    .entry(anchor.clone())
                    .or_insert_with(|| name_of(anchor));
            }
        }
        for anchor in &input.pending.groups {
            groups
                .entry(anchor.clone())
                .or_insert_with(|| name_of(anchor));
        }
        let pending_member =
            |members: &BTreeSet<String>| members.iter().any(|m| input.pending.users.contains(m));
        for anchor in groups.keys() {
            let (Some(then), Some((_, members_now))) = (before.get(anchor), now.get(anchor)) else {
                continue;
            };
            if input.known_groups.contains_key(anchor)
                && !input.pending.groups.contains(anchor)
                && !pending_member(&then.1)
                && !pending_member(members_now)
            {
                left.insert(anchor.clone(), then.clone());
            }
        }
    }
    Concerned {
        users,
        logins,
        groups,
        left,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{GroupRef, PortalGroupRule, RoleRule};
    use crate::mapping::{AttrPath, Owner};
    use crate::source::{DirectoryGroup, DirectoryUser, Snapshot};

    const NOW: i64 = 1_800_000_000;

    fn rules() -> Vec<Rule> {
        let r = vec![
            Rule {
                from: "mail".into(),
                to: AttrPath::parse("userName").unwrap(),
                multi: false,
                owner: Owner::Directory,
            },
            Rule {
                from: "sn".into(),
                to: AttrPath::parse("name.familyName").unwrap(),
                multi: false,
                owner: Owner::Directory,
            },
        ];
        plan::effective_rules(&r, &access())
    }

    fn access() -> AccessRules {
        AccessRules {
            roles: Some((
                vec![RoleRule {
                    group: GroupRef("cn=admins,ou=groups,dc=x".into()),
                    role: "administrator".into(),
                }],
                "regular".into(),
            )),
            portal_groups: Some(PortalGroupRule {
                groups: vec![GroupRef("cn=sales,ou=groups,dc=x".into())],
                by_filter: false,
                flatten: true,
            }),
            ..AccessRules::default()
        }
    }

    fn user(id: &str, sn: &str) -> DirectoryUser {
        DirectoryUser {
            dn: format!("uid={id},ou=people,dc=x"),
            anchor: format!("A-{id}"),
            attrs: [
                ("mail".to_string(), vec![format!("{id}@x.se")]),
                ("sn".to_string(), vec![sn.to_string()]),
            ]
            .into(),
            disabled: false,
            expires: None,
        }
    }

    fn group(cn: &str, members: &[&str]) -> DirectoryGroup {
        DirectoryGroup {
            dn: format!("cn={cn},ou=groups,dc=x"),
            anchor: format!("G-{cn}"),
            name: cn.into(),
            members: members
                .iter()
                .map(|m| format!("uid={m},ou=people,dc=x"))
                .collect(),
            selected: false,
            sid: None,
        }
    }

    /// Anna an administrator, Bo and Cid in Sales; all synced as they are.
    fn world() -> Snapshot {
        Snapshot {
            users: vec![user("anna", "Berg"), user("bo", "Ek"), user("cid", "Al")],
            groups: vec![group("admins", &["anna"]), group("sales", &["bo", "cid"])],
            ..Snapshot::default()
        }
    }

    fn synced(s: &Snapshot) -> HashMap<String, Baseline> {
        let rules = rules();
        plan::desired(
            &s.users,
            &s.groups,
            &rules,
            &access(),
            Timestamp::from_unix(NOW),
        )
        .users
        .into_iter()
        .map(|(a, (_, attrs))| (a, plan::user::created_baseline(&attrs, &rules)))
        .collect()
    }

    fn known_groups() -> HashMap<String, KnownGroup> {
        HashMap::from([(
            "g-sales".to_string(),
            KnownGroup {
                portal_id: "p-sales".into(),
                created: true,
            },
        )])
    }

    /// `previous`: `None` for a read that brought nothing (the directory is `now`).
    fn concern(
        now: &Snapshot,
        previous: Option<&Snapshot>,
        changed: &[&str],
        gone: &[&str],
    ) -> Concerned {
        concern_with(
            now,
            previous,
            (changed, gone),
            &Pending::default(),
            &known_groups(),
        )
    }

    fn concern_with(
        now: &Snapshot,
        previous: Option<&Snapshot>,
        (changed, gone): (&[&str], &[&str]),
        pending: &Pending,
        known_groups: &HashMap<String, KnownGroup>,
    ) -> Concerned {
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
        let rules = rules();
        let access = access();
        concerned(&Input {
            users: &now.users,
            groups: &now.groups,
            previous: previous.map(|p| (&p.users[..], &p.groups[..])),
            now: Timestamp::from_unix(NOW),
            before: Timestamp::from_unix(NOW - 900),
            changed: &set(changed),
            gone: &set(gone),
            pending,
            known: &synced(previous.unwrap_or(now)),
            known_groups,
            rules: &rules,
            access: &access,
        })
    }

    fn names(s: &BTreeSet<String>) -> Vec<&str> {
        s.iter().map(String::as_str).collect()
    }

    #[test]
    fn nothing_changed_concerns_nobody() {
        let c = concern(&world(), Some(&world()), &[], &[]);
        assert_eq!(c, Concerned::default());
    }

    #[test]
    fn a_changed_entry_and_a_deleted_one_concern_their_users_and_the_groups_they_are_in() {
        let mut now = world();
        now.users[0] = user("anna", "Lind");
        now.users.retain(|u| u.anchor != "A-cid");
        let c = concern(&now, Some(&world()), &["a-anna"], &["a-cid"]);
        assert_eq!(names(&c.users), ["a-anna", "a-cid"]);
        assert_eq!(
            c.logins.get("a-anna").map(String::as_str),
            Some("anna@x.se")
        );
        assert_eq!(c.logins.get("a-cid"), None, "gone from the directory");
        assert_eq!(
            c.groups.keys().map(String::as_str).collect::<Vec<_>>(),
            ["g-sales"],
            "Cid left Sales"
        );
    }

    #[test]
    fn a_membership_change_concerns_the_users_whose_role_it_changes_and_the_mirrored_group() {
        let mut now = world();
        // Bo joins the admins; Sales itself is untouched, Bo's entry too.
        now.groups[0] = group("admins", &["anna", "bo"]);
        let c = concern(&now, Some(&world()), &["g-admins"], &[]);
        assert_eq!(names(&c.users), ["a-bo"], "the role Bo should have changed");
        assert_eq!(
            c.groups.keys().map(String::as_str).collect::<Vec<_>>(),
            ["g-sales"],
            "Sales holds a concerned user"
        );
    }

    #[test]
    fn an_unmanaged_directory_user_is_concerned_until_linked_unless_it_may_not_log_in() {
        let mut now = world();
        now.users.push(user("dag", "Ny"));
        let mut eve = user("eve", "Ek");
        eve.disabled = true;
        now.users.push(eve);
        let c = concern(&now, Some(&world()), &[], &[]);
        assert_eq!(names(&c.users), ["a-dag"]);
        assert_eq!(c.logins["a-dag"], "dag@x.se");
    }

    #[test]
    fn an_account_expiring_between_reads_is_concerned_though_its_entry_did_not_change() {
        let mut now = world();
        now.users[1].expires = Some(Timestamp::from_unix(NOW - 60));
        now.users[2].expires = Some(Timestamp::from_unix(NOW - 7200));
        let mut previous = now.clone();
        previous.users[1].expires = Some(Timestamp::from_unix(NOW - 60));
        let c = concern(&now, Some(&previous), &[], &[]);
        assert_eq!(
            names(&c.users),
            ["a-bo"],
            "Cid expired before the last read"
        );
    }

    #[test]
    fn with_nothing_read_an_account_expiring_between_reads_still_concerns_its_mirrored_group() {
        // A read that brought nothing: the directory as it was is the one now.
        let mut now = world();
        now.users[1].expires = Some(Timestamp::from_unix(NOW - 60));
        let c = concern(&now, None, &[], &[]);
        assert_eq!(names(&c.users), ["a-bo"]);
        assert_eq!(
            c.groups.keys().map(String::as_str).collect::<Vec<_>>(),
            ["g-sales"],
            "Bo left the mirrored Sales group when his account expired"
        );
        // Nobody expired since: nothing is concerned, the groups as they were.
        now.users[1].expires = Some(Timestamp::from_unix(NOW - 7200));
        assert_eq!(concern(&now, None, &[], &[]), Concerned::default());
    }

    #[test]
    fn pending_changes_and_a_group_no_longer_mirrored_are_concerned() {
        let mut now = world();
        now.groups.retain(|g| g.name != "sales");
        let mut previous = world();
        previous.groups.retain(|g| g.name != "sales");
        let rules = rules();
        let access = access();
        let c = concerned(&Input {
            users: &now.users,
            groups: &now.groups,
            previous: Some((&previous.users, &previous.groups)),
            now: Timestamp::from_unix(NOW),
            before: Timestamp::from_unix(NOW - 900),
            changed: &HashSet::new(),
            gone: &HashSet::new(),
            pending: &Pending {
                users: BTreeSet::from(["a-anna".to_string()]),
                groups: BTreeSet::new(),
            },
            known: &synced(&world()),
            known_groups: &known_groups(),
            rules: &rules,
            access: &access,
        });
        assert_eq!(names(&c.users), ["a-anna"]);
        assert_eq!(
            c.groups.keys().map(String::as_str).collect::<Vec<_>>(),
            ["g-sales"],
            "known, no longer mirrored: to delete"
        );
    }

    #[test]
    fn a_known_group_is_planned_from_what_was_left_unless_it_or_a_member_has_a_change_pending() {
        let mut now = world();
        now.users.retain(|u| u.anchor != "A-cid");
        let gone: &[&str] = &["a-cid"];
        let c = concern(&now, Some(&world()), &[], gone);
        assert_eq!(c.groups.keys().collect::<Vec<_>>(), ["g-sales"]);
        // Sales as the last cycle left it: Cid still in it.
        let (name, members) = &c.left["g-sales"];
        assert_eq!(name, "sales");
        assert_eq!(names(members), ["a-bo", "a-cid"]);

        let read = |pending: Pending, known: HashMap<String, KnownGroup>| {
            let c = concern_with(&now, Some(&world()), (&[], gone), &pending, &known);
            assert_eq!(c.groups.keys().collect::<Vec<_>>(), ["g-sales"]);
            c.left.is_empty()
        };
        let pending = |users: &[&str], groups: &[&str]| Pending {
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
        };
        assert!(!read(Pending::default(), known_groups()));
        assert!(
            read(pending(&["a-bo"], &[]), known_groups()),
            "a member pending"
        );
        assert!(
            read(pending(&[], &["g-sales"]), known_groups()),
            "the group pending"
        );
        assert!(
            read(Pending::default(), HashMap::new()),
            "unknown to the state"
        );
        assert!(
            !read(pending(&["a-anna"], &[]), known_groups()),
            "a user pending elsewhere"
        );
    }
}
