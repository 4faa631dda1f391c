//! The directory side: reads the users (and groups) in scope.
//!
//! A read is all or nothing. A search that ends in an error, a size or time limit, a
//! timeout or a dropped connection fails the whole read: a partial list returned as if it
//! were complete would look like "everyone else left" and close people.

pub mod account;
pub mod ad;
pub mod delta;
pub mod ldap;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use self::account::{Closure, Timestamp};
pub use self::ldap::{DcIdentity, LdapSource};

/// A user entry as read from the directory, before mapping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryUser {
    pub dn: String,
    /// The stable identity (e.g. `entryUUID`), sent to the portal as `externalId`.
    pub anchor: String,
    /// Attribute values by lowercased attribute name.
    pub attrs: BTreeMap<String, Vec<String>>,
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
        use std::collections::{HashMap, HashSet};
        let by_sid: HashMap<String, usize> = self
            .groups
            .iter()
            .enumerate()
            .filter_map(|(i, g)| Some((g.sid.as_ref()?.to_ascii_uppercase(), i)))
            .collect();
        // Each primary group's members as DN keys, built when first needed.
        let mut listed: HashMap<usize, HashSet<String>> = HashMap::new();
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
            let group = &mut self.groups[i];
            let members = listed
                .entry(i)
                .or_insert_with(|| group.members.iter().map(|m| crate::dn::key(m)).collect());
            if members.insert(crate::dn::key(&user.dn)) {
                group.members.push(user.dn.clone());
            }
        }
    }

    /// Applies a delta (changed entries, deleted anchors) to a cached full snapshot.
    pub fn merge(mut self, changed: Snapshot, deleted: &[String]) -> Snapshot {
        use std::collections::HashSet;
        let gone: HashSet<String> = deleted.iter().map(|a| a.to_ascii_lowercase()).collect();
        let users: HashSet<String> = changed
            .users
            .iter()
            .map(|u| u.anchor.to_ascii_lowercase())
            .collect();
        let groups: HashSet<String> = changed
            .groups
            .iter()
            .map(|g| g.anchor.to_ascii_lowercase())
            .collect();
        self.users.retain(|u| {
            let a = u.anchor.to_ascii_lowercase();
            !gone.contains(&a) && !users.contains(&a)
        });
        self.groups.retain(|g| {
            let a = g.anchor.to_ascii_lowercase();
            !gone.contains(&a) && !groups.contains(&a)
        });
        self.users.extend(changed.users);
        self.groups.extend(changed.groups);
        self.bad_entries = changed.bad_entries;
        self.entries_read = changed.entries_read;
        self
    }
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
