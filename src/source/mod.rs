//! The directory side: reads the users (and groups) in scope.
//!
//! A read is all or nothing. A search that ends in an error, a size or time limit, a
//! timeout or a dropped connection fails the whole read: a partial list returned as if it
//! were complete would look like "everyone else left" and close people.

pub mod account;
pub mod ad;
pub mod attrs;
pub mod delta;
pub mod ldap;
pub mod sync;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

pub use self::account::{Closure, Timestamp};
pub use self::attrs::EntryAttrs;
pub use self::ldap::{DcIdentity, LdapSource};
use crate::dn;

/// A user entry as read from the directory, before mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryUser {
    pub dn: String,
    /// The stable identity (e.g. `entryUUID`), sent to the portal as `externalId`.
    pub anchor: String,
    /// Attribute values by lowercased attribute name.
    pub attrs: EntryAttrs,
    /// Disabled in the directory: AD's `userAccountControl` bit, or the configured
    /// `disabled_filter` matched.
    pub disabled: bool,
    /// When the account expires (AD `accountExpires`), if it does. Whether it has expired
    /// is decided at each cycle ([`DirectoryUser::closure`]): time passes without the
    /// directory changing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Timestamp>,
}

/// A group entry as read from the directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryGroup {
    pub dn: String,
    pub anchor: String,
    pub name: String,
    /// Member DNs as stored (`member` / `uniqueMember`).
    pub members: Vec<String>,
    /// Matched the configured `portal_groups.filter`.
    pub selected: bool,
    /// The group's `objectSid` (AD), for primary-group membership.
    #[serde(default)]
    pub sid: Option<String>,
}

/// An entry the source could not use; it is reported, never synced.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadEntry {
    pub dn: String,
    pub problem: String,
}

/// Everything read from the directory in one cycle.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub users: Vec<DirectoryUser>,
    pub groups: Vec<DirectoryGroup>,
    pub bad_entries: Vec<BadEntry>,
    /// Entries the searches returned (users and groups), for the report.
    #[serde(default)]
    pub entries_read: usize,
}

impl Snapshot {
    /// AD leaves a user's primary group (usually Domain Users) out of the group's
    /// `member`: the user names it by `primaryGroupID`, the RID of the group's `objectSid`
    /// in the user's own domain. Adds those members, so rules on such groups work.
    pub fn add_primary_group_members(&mut self) {
        if let Cow::Owned(groups) = self.with_primary_group_members() {
            self.groups = groups;
        }
    }

    /// The groups with their primary-group members added (see
    /// [`Snapshot::add_primary_group_members`]), leaving the snapshot as read: borrowed
    /// when there is nothing to add (OpenLDAP), a copy of the groups only otherwise.
    pub fn with_primary_group_members(&self) -> Cow<'_, [DirectoryGroup]> {
        let by_sid: HashMap<String, usize> = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((g.sid.as_ref()?.to_ascii_uppercase(), i)))
            .collect();
        if by_sid.is_empty() {
            return Cow::Borrowed(&self.groups);
        }
        // Each primary group's members as DN keys, built when first needed.
        let mut listed: HashMap<usize, HashSet<String>> = HashMap::new();
        let mut added: Vec<(usize, &str)> = Vec::new();
        for user in &self.users {
            let Some(sid) = user.attrs.get("objectsid").and_then(|v| v.first()) else {
                continue;
            };
            let Some(rid) = user
                .attrs
                .get("primarygroupid")
                .and_then(|v| v.first())
                .and_then(|r| r.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let Some((domain, _)) = ad::sid_domain_and_rid(sid) else {
                continue;
            };
            let wanted = format!("{domain}-{rid}").to_ascii_uppercase();
            let Some(&i) = by_sid.get(&wanted) else {
                continue;
            };
            let group = &self.groups[i];
            let members = listed
                .entry(i)
                .or_insert_with(|| group.members.iter().map(|m| crate::dn::key(m)).collect());
            if members.insert(crate::dn::key(&user.dn)) {
                added.push((i, &user.dn));
            }
        }
        if added.is_empty() {
            return Cow::Borrowed(&self.groups);
        }
        let mut groups = self.groups.clone();
        for (i, dn) in added {
            groups[i].members.push(dn.to_string());
        }
        Cow::Owned(groups)
    }

    /// Applies a delta to a cached full snapshot: the entries that `changed` replace
    /// their cached selves, the anchors in `gone` (lowercased: deleted, or moved out of
    /// scope) leave.
    ///
    /// The cached groups' member lists are kept true: AD renames, moves and deletes of
    /// members rewrite the `member` values without changing the groups' `uSNChanged`, so
    /// a delta never re-reads those groups. Every DN a changed or departed entry had, and
    /// every DN a changed entry has now, is taken out of the cached lists; each changed
    /// entry is then put back, under its DN now, into the groups its `memberOf` names.
    /// Groups that changed themselves come with their member lists as read.
    pub fn merge(mut self, changed: Changed, gone: &HashSet<String>) -> Snapshot {
        let Changed {
            snapshot: changed,
            member_of,
        } = changed;
        let changed_anchors: HashSet<String> = changed
            .users
            .iter()
            .map(|u| u.anchor.to_ascii_lowercase())
            .chain(changed.groups.iter().map(|g| g.anchor.to_ascii_lowercase()))
            .collect();
        let leaves = |anchor: &str| {
            let a = anchor.to_ascii_lowercase();
            gone.contains(&a) || changed_anchors.contains(&a)
        };
        let stale: HashSet<String> = self
            .users
            .iter()
            .map(|u| (&u.anchor, &u.dn))
            .chain(self.groups.iter().map(|g| (&g.anchor, &g.dn)))
            .filter(|(anchor, _)| leaves(anchor))
            .map(|(_, dn)| dn::key(dn))
            .chain(changed.users.iter().map(|u| dn::key(&u.dn)))
            .chain(changed.groups.iter().map(|g| dn::key(&g.dn)))
            .collect();
        self.users.retain(|u| !leaves(&u.anchor));
        self.groups.retain(|g| !leaves(&g.anchor));

        // Group DN key → the changed entries (DNs now) that are direct members of it.
        let mut joins: HashMap<String, Vec<&str>> = HashMap::new();
        let now_dns = changed
            .users
            .iter()
            .map(|u| (&u.anchor, &u.dn))
            .chain(changed.groups.iter().map(|g| (&g.anchor, &g.dn)));
        for (anchor, dn) in now_dns {
            for group in member_of
                .get(&anchor.to_ascii_lowercase())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                joins.entry(dn::key(group)).or_default().push(dn);
            }
        }
        for g in &mut self.groups {
            g.members.retain(|m| !stale.contains(&dn::key(m)));
            if let Some(members) = joins.get(&dn::key(&g.dn)) {
                g.members.extend(members.iter().map(|m| m.to_string()));
            }
        }

        self.users.extend(changed.users);
        self.groups.extend(changed.groups);
        self.bad_entries = changed.bad_entries;
        self.entries_read = changed.entries_read;
        self
    }
}

impl Snapshot {
    /// Applies what changed to a cached full snapshot of a directory where nothing
    /// rewrites member values behind the groups' backs (OpenLDAP): a group's `member`
    /// values change only when the group entry is modified (by a client, or by an overlay
    /// such as refint), and then the group comes with the changes. The entries in
    /// `changed` replace their cached selves by anchor (a rename or a move is the same
    /// entry under a new DN), those in `gone` (lowercased anchors) leave, and the cached
    /// groups' member lists stay as stored: exactly what a full read would find.
    pub fn replace(mut self, changed: Snapshot, gone: &HashSet<String>) -> Snapshot {
        let leaves: HashSet<String> = changed
            .users
            .iter()
            .map(|u| u.anchor.to_ascii_lowercase())
            .chain(changed.groups.iter().map(|g| g.anchor.to_ascii_lowercase()))
            .chain(gone.iter().cloned())
            .collect();
        self.users
            .retain(|u| !leaves.contains(&u.anchor.to_ascii_lowercase()));
        self.groups
            .retain(|g| !leaves.contains(&g.anchor.to_ascii_lowercase()));
        self.users.extend(changed.users);
        self.groups.extend(changed.groups);
        self.bad_entries = changed.bad_entries;
        self.entries_read = changed.entries_read;
        self
    }

    /// The anchors (lowercased) of its users and groups.
    pub fn anchors(&self) -> impl Iterator<Item = String> + '_ {
        self.users
            .iter()
            .map(|u| u.anchor.to_ascii_lowercase())
            .chain(self.groups.iter().map(|g| g.anchor.to_ascii_lowercase()))
    }
}

/// What a delta read found in scope.
#[derive(Clone, Debug, Default)]
pub struct Changed {
    /// The users and groups that changed.
    pub snapshot: Snapshot,
    /// Lowercased anchor of each of them → the DNs of the groups it is a direct member of
    /// now (AD `memberOf`: always current, whatever was renamed, moved or deleted).
    pub member_of: HashMap<String, Vec<String>>,
}

/// Why a directory read failed. Every variant fails the whole read; no closures follow.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Could not reach the server. Transient: the next cycle tries again.
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    /// TLS failed, usually a CA that does not match the server's certificate. Needs an admin.
    #[error("TLS with {url} failed: {message}")]
    Tls { url: String, message: String },
    /// The bind was refused. Needs an admin (wrong DN or password, locked account).
    #[error("bind as {dn:?} refused: {message}")]
    Bind { dn: String, message: String },
    /// A search failed or did not complete. Transient or a config problem; the read is void.
    #[error("search under {base:?} failed: {message}")]
    Search { base: String, message: String },
    /// An operation took longer than the configured timeout.
    #[error("{operation} timed out after {seconds} s")]
    Timeout { operation: String, seconds: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAFF: &str = "OU=Staff,DC=dirsync,DC=test";
    const GROUPS: &str = "OU=Groups,DC=dirsync,DC=test";

    fn user(anchor: &str, dn: &str) -> DirectoryUser {
        DirectoryUser {
            dn: dn.into(),
            anchor: anchor.into(),
            attrs: EntryAttrs::default(),
            disabled: false,
            expires: None,
        }
    }

    fn group(anchor: &str, cn: &str, members: &[&str]) -> DirectoryGroup {
        DirectoryGroup {
            dn: format!("CN={cn},{GROUPS}"),
            anchor: anchor.into(),
            name: cn.into(),
            members: members.iter().map(|m| m.to_string()).collect(),
            selected: false,
            sid: None,
        }
    }

    fn gdn(cn: &str) -> String {
        format!("CN={cn},{GROUPS}")
    }

    /// Anna and Bo in Night-Shift, inside Ops-Team, inside Portal-Admins.
    fn cached() -> Snapshot {
        let anna = format!("CN=Anna Berg,{STAFF}");
        let bo = format!("CN=Bo Ek,{STAFF}");
        Snapshot {
            users: vec![user("u-anna", &anna), user("u-bo", &bo)],
            groups: vec![
                group("g-night", "Night-Shift", &[&anna, &bo]),
                group("g-ops", "Ops-Team", &[&gdn("Night-Shift")]),
                group("g-admins", "Portal-Admins", &[&gdn("Ops-Team")]),
            ],
            ..Snapshot::default()
        }
    }

    fn changed(
        users: Vec<DirectoryUser>,
        groups: Vec<DirectoryGroup>,
        of: &[(&str, &[String])],
    ) -> Changed {
        Changed {
            snapshot: Snapshot {
                users,
                groups,
                ..Snapshot::default()
            },
            member_of: of
                .iter()
                .map(|(a, g)| (a.to_string(), g.to_vec()))
                .collect(),
        }
    }

    fn members(s: &Snapshot, cn: &str) -> Vec<String> {
        let g = s.groups.iter().find(|g| g.name == cn).unwrap();
        let mut m = g.members.clone();
        m.sort();
        m
    }

    #[test]
    fn a_renamed_and_moved_member_keeps_its_groups_under_its_new_dn() {
        let moved = format!("CN=Anna Lind,OU=Oslo,{STAFF}");
        let merged = cached().merge(
            changed(
                vec![user("u-anna", &moved)],
                vec![],
                &[("u-anna", &[gdn("night-shift")])],
            ),
            &HashSet::new(),
        );
        assert_eq!(
            members(&merged, "Night-Shift"),
            [moved.clone(), format!("CN=Bo Ek,{STAFF}")]
        );
        assert_eq!(merged.users.len(), 2);
        assert_eq!(members(&merged, "Ops-Team"), [gdn("Night-Shift")]);
    }

    #[test]
    fn a_renamed_nested_group_stays_inside_its_parent() {
        let renamed = gdn("Late-Shift");
        let mut late = group("g-night", "Late-Shift", &[]);
        late.members = members(&cached(), "Night-Shift");
        let merged = cached().merge(
            changed(vec![], vec![late], &[("g-night", &[gdn("Ops-Team")])]),
            &HashSet::new(),
        );
        assert_eq!(members(&merged, "Ops-Team"), [renamed]);
        assert_eq!(members(&merged, "Late-Shift").len(), 2);
        assert!(!merged.groups.iter().any(|g| g.name == "Night-Shift"));
    }

    #[test]
    fn a_deleted_member_leaves_the_cached_groups() {
        let merged = cached().merge(
            changed(vec![], vec![], &[]),
            &HashSet::from(["u-bo".to_string()]),
        );
        assert_eq!(
            members(&merged, "Night-Shift"),
            [format!("CN=Anna Berg,{STAFF}")]
        );
        assert_eq!(merged.users.len(), 1);
    }

    #[test]
    fn a_new_entry_at_a_renamed_members_old_dn_does_not_inherit_its_groups() {
        let old = format!("CN=Anna Berg,{STAFF}");
        let merged = cached().merge(
            changed(
                vec![
                    user("u-anna", &format!("CN=Anna Lind,{STAFF}")),
                    user("u-new", &old.to_uppercase()),
                ],
                vec![],
                &[("u-anna", &[gdn("Night-Shift")]), ("u-new", &[])],
            ),
            &HashSet::new(),
        );
        assert_eq!(
            members(&merged, "Night-Shift"),
            [format!("CN=Anna Lind,{STAFF}"), format!("CN=Bo Ek,{STAFF}")]
        );
    }

    #[test]
    fn replacing_keeps_cached_member_values_as_stored_and_moves_entries_by_anchor() {
        let renamed = format!("CN=Anna Lind,OU=Oslo,{STAFF}");
        let merged = cached().replace(
            Snapshot {
                users: vec![user("u-anna", &renamed)],
                ..Snapshot::default()
            },
            &HashSet::from(["u-bo".to_string()]),
        );
        // No overlay rewrote Night-Shift: it still names Anna's old DN and Bo, as a full
        // read of the directory would find it.
        assert_eq!(
            members(&merged, "Night-Shift"),
            [format!("CN=Anna Berg,{STAFF}"), format!("CN=Bo Ek,{STAFF}")]
        );
        let dns: Vec<&str> = merged.users.iter().map(|u| u.dn.as_str()).collect();
        assert_eq!(dns, [renamed.as_str()]);
        assert_eq!(merged.groups.len(), 3);
    }

    #[test]
    fn a_member_added_to_a_changed_group_comes_with_the_group() {
        let cid = format!("CN=Cid Al,{STAFF}");
        let mut night = group("g-night", "Night-Shift", &[]);
        night.members = vec![
            format!("CN=Anna Berg,{STAFF}"),
            format!("CN=Bo Ek,{STAFF}"),
            cid.clone(),
        ];
        let merged = cached().merge(
            changed(
                vec![user("u-cid", &cid)],
                vec![night],
                &[
                    ("u-cid", &[gdn("Night-Shift")]),
                    ("g-night", &[gdn("Ops-Team")]),
                ],
            ),
            &HashSet::new(),
        );
        assert_eq!(
            members(&merged, "Night-Shift").len(),
            3,
            "as read, not doubled"
        );
        assert_eq!(members(&merged, "Ops-Team"), [gdn("Night-Shift")]);
    }
}
