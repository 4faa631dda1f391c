//! Delta cycles against Active Directory.
//!
//! A full read remembers, in the state, the directory as read (without derived primary
//! group members), the OUs and containers in scope, the DC that answered (`dnsHostName`),
//! its `invocationId`, and its `highestCommittedUSN` read *before* the searches. The next
//! cycle then asks only for entries whose `uSNChanged` is higher (with their `memberOf`,
//! which keeps the remembered groups' member lists true when members are renamed, moved or
//! deleted), plus tombstones under `CN=Deleted Objects` (Show Deleted control), and merges
//! them into the remembered directory. A full read runs instead when there is nothing to
//! build on, when another DC answers or the DC's invocationId changed (a restore: its USNs
//! no longer mean the same), when the USN went backwards, when an OU or container in scope
//! was renamed or moved (the DNs below it change without their entries changing), when
//! the scope changed, and at least every `source.full_reconcile_hours`.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::ad::Guid;
use super::{DcIdentity, LdapSource, Snapshot, SourceError};
use crate::config::{Config, SourceKind};
use crate::dn::{self, Dn};
use crate::state::{State, StateError};

/// The `meta` key the basis for the next delta is kept under.
const KEY: &str = "ad.delta";

/// The version of [`Basis`] this dirsync writes; a basis of another version is not built on.
/// 2: the invocationId as a GUID, the account expiry kept apart from the disabled bit.
const FORMAT: u32 = 2;

/// What a delta builds on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Basis {
    /// [`FORMAT`] when written by this dirsync; absent (0) before versions were kept.
    #[serde(default)]
    pub format: u32,
    pub host: String,
    /// The DC's invocationId at the last read; `None` when it could not be read then.
    pub invocation_id: Option<Guid>,
    pub usn: u64,
    /// When the last full read ran (Unix seconds).
    pub full_at: u64,
    pub scope: String,
    pub snapshot: Snapshot,
    /// The OUs and containers under the users' and groups' bases at the last full read
    /// (lowercased anchor → DN): when one is renamed or moved, the DNs below it change
    /// without the entries' own `uSNChanged` changing, so a full read must follow.
    #[serde(default)]
    pub containers: BTreeMap<String, String>,
}

/// What the state remembers to build a delta on.
#[derive(Clone, Debug)]
pub enum Cached {
    /// Nothing: no sync has read Active Directory yet.
    Nothing,
    /// A basis written by another version of dirsync, or one that cannot be read.
    Unusable,
    Basis(Box<Basis>),
}

impl Basis {
    /// The remembered basis. One that cannot be used makes the next read a full read,
    /// which is always safe.
    pub fn load(state: &State) -> Result<Cached, StateError> {
        Ok(match state.meta(KEY)? {
            None => Cached::Nothing,
            Some(text) => match serde_json::from_str::<Basis>(&text) {
                Ok(b) if b.format == FORMAT => Cached::Basis(Box::new(b)),
                _ => Cached::Unusable,
            },
        })
    }
}

/// Why a cycle reads the whole directory instead of what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// Nothing to build a delta on.
    FirstRead,
    /// The remembered basis is from another dirsync version or unreadable.
    UnusableBasis,
    /// Another DC answered: its USNs are its own.
    OtherDc { before: String, now: String },
    /// The DC's invocationId changed: it was restored from a backup (or reinstalled), so
    /// its USNs no longer mean what they meant.
    Restored { before: Guid, now: Guid },
    /// The DC's invocationId could not be read, now or at the last read: a restore could
    /// not be ruled out.
    InvocationIdUnknown,
    /// The DC's highest committed USN is lower than at the last read.
    UsnBackwards { before: u64, now: u64 },
    /// The configured scope (bases, filters, attributes) changed.
    ScopeChanged,
    /// `source.full_reconcile_hours` passed since the last full read.
    Periodic,
    /// An OU or container in scope was renamed or moved (`before` is its DN at the last
    /// full read), or one appeared in scope (`before` is `None`): the DNs of everything
    /// below it changed without those entries changing.
    ContainerMoved { before: Option<String>, now: String },
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullReason::FirstRead => f.write_str("first read: nothing to build a delta on"),
            FullReason::UnusableBasis => f.write_str(
                "the directory remembered from the last read was written by another dirsync version",
            ),
            FullReason::OtherDc { before, now } => write!(
                f,
                "another domain controller answered ({before} before, {now} now)"
            ),
            FullReason::Restored { before, now } => write!(
                f,
                "the domain controller's invocationId changed ({before} → {now}): it was restored from a backup or reinstalled"
            ),
            FullReason::InvocationIdUnknown => f.write_str(
                "the domain controller's invocationId could not be read, so a restore from a backup cannot be ruled out",
            ),
            FullReason::UsnBackwards { before, now } => write!(
                f,
                "the domain controller's USN went backwards ({before} → {now})"
            ),
            FullReason::ScopeChanged => f.write_str("the directory scope changed"),
            FullReason::Periodic => f.write_str("periodic full reconcile"),
            FullReason::ContainerMoved {
                before: Some(before),
                now,
            } => write!(
                f,
                "{before} was renamed or moved to {now}: the DNs of the users and groups below it changed"
            ),
            FullReason::ContainerMoved { before: None, now } => write!(
                f,
                "{now} appeared in the directory scope: the users and groups below it may be new to it"
            ),
        }
    }
}

/// What a cycle read from the directory.
#[derive(Clone, Debug)]
pub struct Read {
    /// The whole directory in scope (merged, for a delta), without primary-group members.
    pub snapshot: Snapshot,
    pub delta: bool,
    /// Why a full read ran although a delta was possible in principle.
    pub reason: Option<FullReason>,
    pub identity: Option<DcIdentity>,
    pub full_at: u64,
    /// Anchors (lowercased) of users whose tombstones this delta read: deleted, not merely
    /// out of scope.
    pub deleted: HashSet<String>,
    /// The OUs and containers in scope, as the last full read found them.
    pub containers: BTreeMap<String, String>,
}

pub async fn read(
    source: &mut LdapSource,
    config: &Config,
    cached: Cached,
) -> Result<Read, SourceError> {
    let now = now_secs();
    if config.source.kind != SourceKind::ActiveDirectory {
        return Ok(Read {
            snapshot: source.read().await?,
            delta: false,
            reason: None,
            identity: None,
            full_at: now,
            deleted: HashSet::new(),
            containers: BTreeMap::new(),
        });
    }
    let identity = source.dc_identity().await?;
    let basis = match cached {
        Cached::Basis(b) => match full_reason(
            &b,
            &identity,
            &config.scope_text(),
            config.source.full_reconcile,
            now,
        ) {
            None => Ok(b),
            Some(reason) => Err(reason),
        },
        Cached::Nothing => Err(FullReason::FirstRead),
        Cached::Unusable => Err(FullReason::UnusableBasis),
    };
    let basis = match basis {
        Ok(b) => {
            let changed = source
                .containers(&identity.naming_context, Some(b.usn))
                .await?;
            let bases: Vec<&str> = std::iter::once(config.source.users.search.base.as_str())
                .chain(config.source.groups.as_ref().map(|g| g.base.as_str()))
                .collect();
            match moved_container(&b.containers, &changed, &bases) {
                Some(reason) => Err(reason),
                None => Ok((b, changed.len())),
            }
        }
        Err(reason) => Err(reason),
    };
    match basis {
        Ok((b, containers_read)) => {
            let changed = source.read_changed(b.usn).await?;
            let tombstones = source.read_deleted(&identity.naming_context, b.usn).await?;
            // Users and groups changed elsewhere in the domain and not among the in-scope
            // changes moved out of their base: they left the scope.
            let mut anywhere = source
                .changed_anywhere(
                    &identity.naming_context,
                    &config.source.users.search.filter,
                    b.usn,
                )
                .await?;
            let mut entries =
                changed.snapshot.entries_read + tombstones.len() + anywhere.len() + containers_read;
            if let Some(groups) = &config.source.groups {
                let groups_anywhere = source
                    .changed_anywhere(&identity.naming_context, &groups.filter, b.usn)
                    .await?;
                entries += groups_anywhere.len();
                anywhere.extend(groups_anywhere);
            }
            let in_scope: HashSet<String> = changed
                .snapshot
                .users
                .iter()
                .map(|u| u.anchor.to_ascii_lowercase())
                .chain(
                    changed
                        .snapshot
                        .groups
                        .iter()
                        .map(|g| g.anchor.to_ascii_lowercase()),
                )
                .collect();
            let deleted: HashSet<String> =
                tombstones.iter().map(|a| a.to_ascii_lowercase()).collect();
            let mut gone: HashSet<String> = anywhere
                .into_iter()
                .filter(|a| !in_scope.contains(a))
                .collect();
            gone.extend(deleted.iter().cloned());
            let mut snapshot = b.snapshot.merge(changed, &gone);
            snapshot.entries_read = entries;
            Ok(Read {
                snapshot,
                delta: true,
                reason: None,
                identity: Some(identity),
                full_at: b.full_at,
                deleted,
                containers: b.containers,
            })
        }
        Err(reason) => {
            // Before the entries: a container moved during the read is seen next time.
            let containers = source.containers_in_scope().await?;
            let mut snapshot = source.read().await?;
            snapshot.entries_read += containers.len();
            Ok(Read {
                snapshot,
                delta: false,
                reason: Some(reason),
                identity: Some(identity),
                full_at: now,
                deleted: HashSet::new(),
                containers,
            })
        }
    }
}

/// Why this cycle must read everything although there is a basis; `None` when a delta
/// on it is sound. `scope` is the configured scope now, `full_every` the longest time
/// between full reads, `now` in Unix seconds.
pub fn full_reason(
    b: &Basis,
    dc: &DcIdentity,
    scope: &str,
    full_every: Duration,
    now: u64,
) -> Option<FullReason> {
    if !b.host.eq_ignore_ascii_case(&dc.host) {
        return Some(FullReason::OtherDc {
            before: b.host.clone(),
            now: dc.host.clone(),
        });
    }
    match (b.invocation_id, dc.invocation_id) {
        (Some(before), Some(now)) if before != now => {
            return Some(FullReason::Restored { before, now })
        }
        (Some(_), Some(_)) => {}
        _ => return Some(FullReason::InvocationIdUnknown),
    }
    if dc.usn < b.usn {
        return Some(FullReason::UsnBackwards {
            before: b.usn,
            now: dc.usn,
        });
    }
    if b.scope != scope {
        return Some(FullReason::ScopeChanged);
    }
    if now.saturating_sub(b.full_at) >= full_every.as_secs() {
        return Some(FullReason::Periodic);
    }
    None
}

/// Whether a container changed since the basis (`changed`: lowercased anchor → DN now;
/// `known`: the containers under `bases` at the last full read) was renamed or moved, or
/// came into one of the `bases`; why a full read must follow if so.
pub fn moved_container(
    known: &BTreeMap<String, String>,
    changed: &BTreeMap<String, String>,
    bases: &[&str],
) -> Option<FullReason> {
    let bases: Vec<Dn> = bases.iter().filter_map(|b| Dn::parse(b).ok()).collect();
    for (anchor, now) in changed {
        match known.get(anchor) {
            Some(before) if !dn::same(before, now) => {
                return Some(FullReason::ContainerMoved {
                    before: Some(before.clone()),
                    now: now.clone(),
                })
            }
            Some(_) => {}
            None => {
                // A DN that does not parse counts as inside: a full read is always safe.
                let inside =
                    Dn::parse(now).map_or(true, |dn| bases.iter().any(|b| dn.is_within(b)));
                if inside {
                    return Some(FullReason::ContainerMoved {
                        before: None,
                        now: now.clone(),
                    });
                }
            }
        }
    }
    None
}

/// Remembers this read for the next delta (sync runs only).
pub fn remember(state: &mut State, read: &Read, config: &Config) -> Result<(), StateError> {
    match basis_meta(read, config) {
        Some((key, text)) => state.set_meta(key, &text),
        None => Ok(()),
    }
}

/// The `meta` row that remembers this read for the next delta: `None` when there is
/// nothing to remember (not Active Directory).
pub fn basis_meta(read: &Read, config: &Config) -> Option<(&'static str, String)> {
    let dc = read.identity.as_ref()?;
    let basis = Basis {
        format: FORMAT,
        host: dc.host.clone(),
        invocation_id: dc.invocation_id,
        usn: dc.usn,
        full_at: read.full_at,
        scope: config.scope_text(),
        snapshot: read.snapshot.clone(),
        containers: read.containers.clone(),
    };
    // Serialising these types cannot fail; if it did, a full read next time is safe.
    serde_json::to_string(&basis).ok().map(|text| (KEY, text))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn guid(last: u8) -> Guid {
        let mut bytes = [0x5au8; 16];
        bytes[15] = last;
        Guid::from_bytes(&bytes).unwrap()
    }

    fn dc(invocation_id: Option<Guid>, usn: u64) -> DcIdentity {
        DcIdentity {
            host: "dc1.dirsync.test".into(),
            invocation_id,
            usn,
            naming_context: "DC=dirsync,DC=test".into(),
        }
    }

    fn basis(invocation_id: Option<Guid>) -> Basis {
        Basis {
            format: FORMAT,
            host: "DC1.dirsync.test".into(),
            invocation_id,
            usn: 100,
            full_at: 1_000,
            scope: "users: OU=Staff".into(),
            snapshot: Snapshot::default(),
            containers: BTreeMap::new(),
        }
    }

    fn reason(b: &Basis, now: &DcIdentity) -> Option<FullReason> {
        full_reason(b, now, "users: OU=Staff", HOUR, 1_000 + 60)
    }

    #[test]
    fn the_same_dc_with_the_same_invocation_id_allows_a_delta() {
        assert_eq!(reason(&basis(Some(guid(1))), &dc(Some(guid(1)), 150)), None);
    }

    #[test]
    fn a_dc_restored_from_backup_forces_a_full_read_and_says_both_invocation_ids() {
        let why = reason(&basis(Some(guid(1))), &dc(Some(guid(2)), 150)).unwrap();
        assert_eq!(
            why,
            FullReason::Restored {
                before: guid(1),
                now: guid(2)
            }
        );
        assert_eq!(
            why.to_string(),
            "the domain controller's invocationId changed (5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a01 → \
             5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5a02): it was restored from a backup or reinstalled"
        );
    }

    #[test]
    fn an_unreadable_invocation_id_never_allows_a_delta() {
        for (before, now) in [(Some(guid(1)), None), (None, Some(guid(1))), (None, None)] {
            assert_eq!(
                reason(&basis(before), &dc(now, 150)),
                Some(FullReason::InvocationIdUnknown),
                "{before:?} → {now:?}"
            );
        }
    }

    #[test]
    fn another_dc_a_usn_going_back_a_new_scope_and_time_force_a_full_read() {
        let b = basis(Some(guid(1)));
        let mut other = dc(Some(guid(1)), 150);
        other.host = "dc2.dirsync.test".into();
        assert!(matches!(
            reason(&b, &other),
            Some(FullReason::OtherDc { .. })
        ));
        assert_eq!(
            reason(&b, &dc(Some(guid(1)), 99)),
            Some(FullReason::UsnBackwards {
                before: 100,
                now: 99
            })
        );
        let now = dc(Some(guid(1)), 150);
        assert_eq!(
            full_reason(&b, &now, "users: OU=Other", HOUR, 1_060),
            Some(FullReason::ScopeChanged)
        );
        assert_eq!(
            full_reason(&b, &now, "users: OU=Staff", HOUR, 1_000 + 3600),
            Some(FullReason::Periodic)
        );
    }

    #[test]
    fn a_renamed_moved_or_newly_arrived_container_forces_a_full_read() {
        let bases = [
            "OU=Staff,DC=dirsync,DC=test",
            "OU=Groups,DC=dirsync,DC=test",
        ];
        let known = BTreeMap::from([
            (
                "c-ops".to_string(),
                "OU=Ops,OU=Staff,DC=dirsync,DC=test".to_string(),
            ),
            (
                "c-staff".to_string(),
                "OU=Staff,DC=dirsync,DC=test".to_string(),
            ),
        ]);
        let changed = |a: &str, dn: &str| BTreeMap::from([(a.to_string(), dn.to_string())]);
        // Another spelling of the same DN, or a container elsewhere: nothing moved.
        for (a, dn) in [
            ("c-ops", "ou=ops, ou=staff, dc=dirsync, dc=test"),
            ("c-other", "OU=Contractors,DC=dirsync,DC=test"),
        ] {
            assert_eq!(
                moved_container(&known, &changed(a, dn), &bases),
                None,
                "{dn}"
            );
        }
        assert_eq!(
            moved_container(
                &known,
                &changed("c-ops", "OU=Operations,OU=Staff,DC=dirsync,DC=test"),
                &bases
            )
            .unwrap()
            .to_string(),
            "OU=Ops,OU=Staff,DC=dirsync,DC=test was renamed or moved to \
             OU=Operations,OU=Staff,DC=dirsync,DC=test: the DNs of the users and groups below it changed"
        );
        assert!(matches!(
            moved_container(
                &known,
                &changed("c-ops", "OU=Ops,DC=dirsync,DC=test"),
                &bases
            ),
            Some(FullReason::ContainerMoved {
                before: Some(_),
                ..
            })
        ));
        assert_eq!(
            moved_container(
                &known,
                &changed("c-new", "OU=Oslo,OU=Groups,DC=dirsync,DC=test"),
                &bases
            ),
            Some(FullReason::ContainerMoved {
                before: None,
                now: "OU=Oslo,OU=Groups,DC=dirsync,DC=test".into()
            })
        );
    }

    #[test]
    fn a_basis_from_an_older_dirsync_is_not_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.db")).unwrap();
        assert!(matches!(Basis::load(&state).unwrap(), Cached::Nothing));
        // As dirsync wrote it before invocationIds were read: an empty one, no format.
        let old = r#"{"host":"dc1.dirsync.test","invocation_id":"","usn":100,"full_at":1000,
            "scope":"users: OU=Staff","snapshot":{"users":[],"groups":[],"bad_entries":[]}}"#;
        state.set_meta(KEY, old).unwrap();
        assert!(matches!(Basis::load(&state).unwrap(), Cached::Unusable));
        let current = serde_json::to_string(&basis(Some(guid(1)))).unwrap();
        state.set_meta(KEY, &current).unwrap();
        assert!(matches!(Basis::load(&state).unwrap(), Cached::Basis(_)));
    }

    #[test]
    fn a_basis_is_stored_with_the_invocation_id_as_a_guid() {
        let text = serde_json::to_value(basis(Some(guid(0xab)))).unwrap();
        assert_eq!(
            text["invocation_id"],
            "5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5aab"
        );
        assert_eq!(text["format"], FORMAT);
    }
}
