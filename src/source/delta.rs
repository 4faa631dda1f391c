//! Incremental reads of the directory: between full reads, a cycle reads only what
//! changed since the last one and applies it to the directory the last read remembered
//! (the *basis*, kept in the state).
//!
//! - **Active Directory**: the entries whose `uSNChanged` is higher than the DC's
//!   `highestCommittedUSN` read *before* the last read's searches (with their `memberOf`,
//!   which keeps the remembered groups' member lists true when members are renamed, moved
//!   or deleted), the tombstones under `CN=Deleted Objects` (Show Deleted control), and the
//!   users and groups changed anywhere in the domain that are no longer in scope.
//! - **OpenLDAP with content synchronisation** (the `syncprov` overlay): one RFC 4533
//!   `refreshOnly` search per base with the cookie the last read stored. The server names
//!   the entries that changed (read again, by anchor) and those that are gone (deleted,
//!   moved out of the base, no longer matching the filter), by a delete phase or a
//!   present phase.
//! - **Other LDAP servers**: the entries whose `modifyTimestamp` is at or after the last
//!   read's start less [`TIMESTAMP_MARGIN`] (for clocks that disagree; an entry read twice
//!   is harmless), and the anchors of every entry in scope (the anchor attribute alone):
//!   an anchor the basis has and the scope no longer has is gone.
//!
//! A full read runs instead when there is nothing to build on, when the basis is from
//! another dirsync version, when the scope changed, at least every
//! `source.full_reconcile_hours`, when asked (`--full`), when an OU or container in scope
//! was renamed or moved (the DNs below it change without their entries changing), on AD
//! when another DC answers or the DC's invocationId changed or its USN went backwards, and
//! on OpenLDAP when the server refuses the cookie (e-syncRefreshRequired, or a cookie newer
//! than its database: restored from a backup) or no longer offers content synchronisation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::info;

use super::ad::Guid;
use super::ldap::SyncAnswer;
use super::{DcIdentity, LdapSource, Snapshot, SourceError};
use crate::config::{Config, Search, SourceKind};
use crate::dn::{self, Dn};
use crate::state::{State, StateError};

/// The `meta` key the basis for the next incremental read is kept under (its snapshot
/// apart, under [`SNAPSHOT_KEY`]).
pub const KEY: &str = "directory.basis";
/// The `meta` key of the directory as the last read found it: read only when a cycle
/// builds on it, written only when it changed.
pub const SNAPSHOT_KEY: &str = "directory.snapshot";
/// Where dirsync kept the Active Directory basis before OpenLDAP reads were incremental;
/// such a basis is not built on, and its row is emptied.
pub const LEGACY_KEY: &str = "ad.delta";

/// The version of [`Basis`] this dirsync writes; a basis of another version is not built on.
/// 2: the invocationId as a GUID, the account expiry kept apart from the disabled bit.
/// 3: one basis for both dialects (the cursor names its method), the time of the read,
///    and the changes not applied yet.
/// 4: the snapshot kept apart ([`SNAPSHOT_KEY`]).
const FORMAT: u32 = 4;

/// How far before the last read's start a `modifyTimestamp` read goes back: the directory
/// server's clock and this host's may disagree by this much.
pub const TIMESTAMP_MARGIN: u64 = 300;

/// Where the next incremental read starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Cursor {
    /// Active Directory: one DC's USN.
    Usn {
        host: String,
        /// The DC's invocationId at the last read; `None` when it could not be read then.
        invocation_id: Option<Guid>,
        usn: u64,
    },
    /// RFC 4533 content synchronisation: the cookies of the users' and the groups' searches.
    ContentSync {
        users: Vec<u8>,
        groups: Option<Vec<u8>>,
    },
    /// `modifyTimestamp` since the last read's start (the basis's `read_at`).
    ModifyTimestamp,
}

/// Changes planned and not applied yet (a guard held them back, they failed, the cycle
/// only planned, or it was stopped): the next incremental cycle looks at them again.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Lowercased anchors of directory users.
    pub users: BTreeSet<String>,
    /// Lowercased anchors of mirrored directory groups.
    pub groups: BTreeSet<String>,
}

/// What an incremental read builds on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Basis {
    /// [`FORMAT`] when written by this dirsync; absent (0) before versions were kept.
    #[serde(default)]
    pub format: u32,
    #[serde(flatten)]
    pub cursor: Cursor,
    /// When the last full read ran (Unix seconds).
    pub full_at: u64,
    /// When the last read started (Unix seconds).
    pub read_at: u64,
    pub scope: String,
    /// The directory attributes read and the mapping and access rules at the last read
    /// ([`rules_text`]): when they change, every user may want other values.
    #[serde(default)]
    pub rules: String,
    /// The directory as the last read found it (kept under [`SNAPSHOT_KEY`]); loaded
    /// only when the next read may build on it, else empty.
    #[serde(skip)]
    pub snapshot: Snapshot,
    /// The OUs and containers under the users' and groups' bases at the last read
    /// (lowercased anchor → DN): when one is renamed or moved, the DNs below it change
    /// without the entries themselves changing, so a full read must follow.
    #[serde(default)]
    pub containers: BTreeMap<String, String>,
    #[serde(default)]
    pub pending: Pending,
    /// What the cycle that read it remembers when it left nothing to do (the cycle's
    /// own document, [`crate::plan::settled::Settled`]): while nothing changes, it stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<serde_json::Value>,
}

/// [`Basis`] as written, borrowing what the cycle holds.
#[derive(Serialize)]
struct BasisOut<'a> {
    format: u32,
    #[serde(flatten)]
    cursor: &'a Cursor,
    full_at: u64,
    read_at: u64,
    scope: &'a str,
    rules: &'a str,
    containers: &'a BTreeMap<String, String>,
    pending: &'a Pending,
    #[serde(skip_serializing_if = "Option::is_none")]
    settled: Option<&'a serde_json::Value>,
}

/// What the state remembers to build an incremental read on.
#[derive(Clone, Debug)]
pub enum Cached {
    /// Nothing: no cycle has recorded a read of this directory yet.
    Nothing,
    /// A basis written by another version of dirsync, or one that cannot be read.
    Unusable,
    Basis(Box<Basis>),
}

impl Basis {
    /// The remembered basis. One that cannot be used makes the next read a full read,
    /// which is always safe. Its snapshot is read only when the next read may build on
    /// it (`config`, and no `forced` full read, allow it): a full read never holds the
    /// last read's directory besides its own.
    pub fn load(
        state: &State,
        config: &Config,
        forced: Option<&FullReason>,
    ) -> Result<Cached, StateError> {
        let mut basis = match state.meta(KEY)? {
            None if legacy(state)? => return Ok(Cached::Unusable),
            None => return Ok(Cached::Nothing),
            Some(text) => match serde_json::from_str::<Basis>(&text) {
                Ok(b) if b.format == FORMAT => Cached::Basis(Box::new(b)),
                _ => return Ok(Cached::Unusable),
            },
        };
        if forced.is_none() && unusable(&basis, config, now_secs()).is_none() {
            if let Cached::Basis(b) = &mut basis {
                match state
                    .meta_with(SNAPSHOT_KEY, |bytes| {
                        serde_json::from_slice::<Snapshot>(bytes).ok()
                    })?
                    .flatten()
                {
                    Some(snapshot) => b.snapshot = snapshot,
                    None => return Ok(Cached::Unusable),
                }
            }
        }
        Ok(basis)
    }
}

/// Whether the state holds a basis where dirsync kept it before [`FORMAT`] 3.
pub fn legacy(state: &State) -> Result<bool, StateError> {
    Ok(state
        .meta(LEGACY_KEY)?
        .is_some_and(|t| !t.trim().is_empty()))
}

/// Why a cycle reads the whole directory instead of what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FullReason {
    /// Nothing to build an incremental read on.
    FirstRead,
    /// The remembered basis is from another dirsync version or unreadable.
    UnusableBasis,
    /// The admin asked for a full reconcile (`--full`).
    Requested,
    /// A saved plan is applied: both sides are read whole to check it.
    SavedPlan,
    /// Orphans are taken over (`--adopt-orphans`): the whole portal must be seen.
    AdoptOrphans,
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
    /// The server refused the stored content synchronisation cookie (its answer).
    CookieRefused(String),
    /// The server no longer offers content synchronisation (its answer).
    SyncUnavailable(String),
    /// More entries changed than one content synchronisation search may return (its answer).
    TooManyChanges(String),
    /// What changed left no user in scope: everything is read again, and the portal
    /// listed, before anyone could be taken for gone.
    NoUsersLeft,
    /// The configured scope (bases, filters, group rules) changed.
    ScopeChanged,
    /// The attributes read, the mapping or the access rules changed: every user may want
    /// other values.
    RulesChanged,
    /// `source.full_reconcile_hours` passed since the last full read.
    Periodic,
    /// An OU or container in scope was renamed or moved (`before` is its DN at the last
    /// read), or one appeared in scope (`before` is `None`): the DNs of everything below
    /// it changed without those entries changing.
    ContainerMoved { before: Option<String>, now: String },
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FullReason::FirstRead => f.write_str("first read: nothing to build an incremental read on"),
            FullReason::UnusableBasis => f.write_str(
                "the directory remembered from the last read was written by another dirsync version",
            ),
            FullReason::Requested => f.write_str("a full reconcile was asked for (--full)"),
            FullReason::SavedPlan => {
                f.write_str("a saved plan is applied: both sides are read in full to check it")
            }
            FullReason::AdoptOrphans => {
                f.write_str("orphans are taken over (--adopt-orphans): the whole portal is read")
            }
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
            FullReason::CookieRefused(answer) => write!(
                f,
                "the directory refused the content synchronisation cookie of the last read ({answer})"
            ),
            FullReason::SyncUnavailable(answer) => write!(
                f,
                "the directory no longer offers content synchronisation ({answer})"
            ),
            FullReason::TooManyChanges(answer) => write!(
                f,
                "more entries changed than one content synchronisation search may return ({answer})"
            ),
            FullReason::NoUsersLeft => f.write_str(
                "what changed since the last cycle left no user in scope, so everything is read again",
            ),
            FullReason::ScopeChanged => f.write_str("the directory scope changed"),
            FullReason::RulesChanged => f.write_str(
                "the attributes read, the mapping or the access rules changed since the last read",
            ),
            FullReason::Periodic => f.write_str("periodic full reconcile (source.full_reconcile_hours)"),
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

/// How an incremental read found what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Usn,
    ContentSync,
    ModifyTimestamp,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Usn => "what changed since the last cycle: uSNChanged and tombstones",
            Method::ContentSync => {
                "what changed since the last cycle: content synchronisation (RFC 4533) from its cookie"
            }
            Method::ModifyTimestamp => {
                "what changed since the last cycle: modifyTimestamp, and the anchors in scope for \
                 deletions (the directory offers no content synchronisation)"
            }
        })
    }
}

/// Which read a cycle made, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// Every user and group in scope; both sides are listed (a full reconcile).
    Full(FullReason),
    /// Only what changed; only the portal users and groups it concerns are read.
    Incremental(Method),
}

impl ReadKind {
    /// `full` or `incremental`, as the reports, the run history and the metrics say it.
    pub fn label(&self) -> &'static str {
        match self {
            ReadKind::Full(_) => "full",
            ReadKind::Incremental(_) => "incremental",
        }
    }

    /// Why a full read ran, or how an incremental read found the changes.
    pub fn reason(&self) -> String {
        match self {
            ReadKind::Full(why) => why.to_string(),
            ReadKind::Incremental(how) => how.to_string(),
        }
    }
}

/// What an incremental read changed, for the cycle to find the portal users it concerns.
#[derive(Clone, Debug)]
pub struct Changes {
    /// The basis the changes were applied to (without primary-group members); `None`
    /// when the read found nothing changed or gone, so that it is the read's snapshot.
    pub previous: Option<Snapshot>,
    /// When the basis was read (Unix seconds).
    pub previous_at: u64,
    /// Lowercased anchors of the users and groups read as changed.
    pub changed: HashSet<String>,
    /// Lowercased anchors of the users and groups that left: deleted or out of scope.
    pub gone: HashSet<String>,
    /// Those of them known deleted (AD tombstones), not merely out of scope.
    pub deleted: HashSet<String>,
    /// The changes the basis says are not applied yet.
    pub pending: Pending,
    /// What the last cycle remembered as settled ([`Basis::settled`]), when this read
    /// found no entry changed and none gone.
    pub settled: Option<serde_json::Value>,
}

/// What a cycle read from the directory.
#[derive(Clone, Debug)]
pub struct Read {
    /// The whole directory in scope (merged, for an incremental read), without
    /// primary-group members.
    pub snapshot: Snapshot,
    pub kind: ReadKind,
    pub identity: Option<DcIdentity>,
    /// Where the next incremental read starts.
    pub cursor: Cursor,
    pub full_at: u64,
    /// When this read started (Unix seconds).
    pub read_at: u64,
    /// The OUs and containers in scope, as the last full read found them.
    pub containers: BTreeMap<String, String>,
    /// `Some` for an incremental read.
    pub changes: Option<Changes>,
}

impl Read {
    /// Whether the snapshot is the last read's, as the state keeps it: an incremental
    /// read that found nothing changed or gone.
    pub fn snapshot_unchanged(&self) -> bool {
        self.changes
            .as_ref()
            .is_some_and(|c| c.changed.is_empty() && c.gone.is_empty())
    }

    /// Anchors (lowercased) of users this read showed deleted, not merely out of scope.
    pub fn deleted(&self) -> HashSet<String> {
        self.changes
            .as_ref()
            .map(|c| c.deleted.clone())
            .unwrap_or_default()
    }
}

/// Reads the directory: incrementally on `cached` when that is sound, else in full.
/// `forced` makes it a full read for that reason.
pub async fn read(
    source: &mut LdapSource,
    config: &Config,
    cached: Cached,
    forced: Option<FullReason>,
) -> Result<Read, SourceError> {
    let now = now_secs();
    let read = match config.source.kind {
        SourceKind::ActiveDirectory => read_ad(source, config, cached, forced, now).await?,
        SourceKind::Ldap => read_ldap(source, config, cached, forced, now).await?,
    };
    info!(
        read = read.kind.label(),
        why = %read.kind.reason(),
        entries = read.snapshot.entries_read,
        "read the directory"
    );
    Ok(read)
}

/// Whether a basis may be built on at all (the dialect's own checks come after):
/// the reason for a full read if not.
fn usable(
    cached: Cached,
    forced: Option<FullReason>,
    config: &Config,
    now: u64,
) -> Result<Box<Basis>, FullReason> {
    if let Some(why) = forced {
        return Err(why);
    }
    if let Some(why) = unusable(&cached, config, now) {
        return Err(why);
    }
    match cached {
        Cached::Basis(b) => Ok(b),
        Cached::Nothing => Err(FullReason::FirstRead),
        Cached::Unusable => Err(FullReason::UnusableBasis),
    }
}

/// Why `cached` cannot be built on, as far as can be told before reading.
fn unusable(cached: &Cached, config: &Config, now: u64) -> Option<FullReason> {
    match cached {
        Cached::Nothing => Some(FullReason::FirstRead),
        Cached::Unusable => Some(FullReason::UnusableBasis),
        Cached::Basis(b) => {
            let fits = matches!(
                (config.source.kind, &b.cursor),
                (SourceKind::ActiveDirectory, Cursor::Usn { .. })
                    | (
                        SourceKind::Ldap,
                        Cursor::ContentSync { .. } | Cursor::ModifyTimestamp
                    )
            );
            if !fits {
                Some(FullReason::UnusableBasis)
            } else if b.scope != config.scope_text() {
                Some(FullReason::ScopeChanged)
            } else if b.rules != rules_text(config) {
                Some(FullReason::RulesChanged)
            } else if now.saturating_sub(b.full_at) >= config.source.full_reconcile.as_secs() {
                Some(FullReason::Periodic)
            } else {
                None
            }
        }
    }
}

/// Whether this cycle's read will be full whatever the directory answers: then the
/// portal is listed while the directory is read.
pub fn full_ahead(cached: &Cached, config: &Config, forced: Option<&FullReason>) -> bool {
    forced.is_some() || unusable(cached, config, now_secs()).is_some()
}

/// The users' and groups' bases, for [`moved_container`].
fn bases(config: &Config) -> Vec<&str> {
    std::iter::once(config.source.users.search.base.as_str())
        .chain(config.source.groups.as_ref().map(|g| g.base.as_str()))
        .collect()
}

async fn read_ad(
    source: &mut LdapSource,
    config: &Config,
    cached: Cached,
    forced: Option<FullReason>,
    now: u64,
) -> Result<Read, SourceError> {
    let identity = source.dc_identity().await?;
    let basis = usable(cached, forced, config, now).and_then(|b| {
        match full_reason(
            &b,
            &identity,
            &config.scope_text(),
            config.source.full_reconcile,
            now,
        ) {
            None => Ok(b),
            Some(reason) => Err(reason),
        }
    });
    let basis = match basis {
        Ok(b) => {
            let changed = source
                .containers(&identity.naming_context, Some(basis_usn(&b)))
                .await?;
            match moved_container(&b.containers, &changed, &bases(config)) {
                Some(reason) => Err(reason),
                None => Ok((b, changed.len())),
            }
        }
        Err(reason) => Err(reason),
    };
    let cursor = Cursor::Usn {
        host: identity.host.clone(),
        invocation_id: identity.invocation_id,
        usn: identity.usn,
    };
    let reason = match basis {
        Ok((b, containers_read)) => {
            let usn = basis_usn(&b);
            let changed = source.read_changed(usn).await?;
            let tombstones = source.read_deleted(&identity.naming_context, usn).await?;
            // Users and groups changed elsewhere in the domain and not among the in-scope
            // changes moved out of their base: they left the scope.
            let mut anywhere = source
                .changed_anywhere(
                    &identity.naming_context,
                    &config.source.users.search.filter,
                    usn,
                )
                .await?;
            let mut entries =
                changed.snapshot.entries_read + tombstones.len() + anywhere.len() + containers_read;
            if let Some(groups) = &config.source.groups {
                let groups_anywhere = source
                    .changed_anywhere(&identity.naming_context, &groups.filter, usn)
                    .await?;
                entries += groups_anywhere.len();
                anywhere.extend(groups_anywhere);
            }
            let in_scope: HashSet<String> = changed.snapshot.anchors().collect();
            let differ = differing(&b.snapshot, &changed.snapshot);
            let deleted: HashSet<String> =
                tombstones.iter().map(|a| a.to_ascii_lowercase()).collect();
            let mut gone: HashSet<String> = anywhere
                .into_iter()
                .filter(|a| !in_scope.contains(a))
                .collect();
            gone.extend(deleted.iter().cloned());
            let Basis {
                snapshot: previous,
                full_at,
                read_at: previous_at,
                containers,
                pending,
                settled,
                ..
            } = *b;
            // Entries read again as they were change nothing: what was settled stands.
            let settled = settled.filter(|_| differ.is_empty() && gone.is_empty());
            let (mut snapshot, previous) = if nothing_read(&changed.snapshot, &gone) {
                (previous, None)
            } else {
                (previous.clone().merge(changed, &gone), Some(previous))
            };
            snapshot.entries_read = entries;
            if snapshot.users.is_empty() {
                FullReason::NoUsersLeft
            } else {
                return Ok(Read {
                    snapshot,
                    kind: ReadKind::Incremental(Method::Usn),
                    identity: Some(identity),
                    cursor,
                    full_at,
                    read_at: now,
                    containers,
                    changes: Some(Changes {
                        previous,
                        previous_at,
                        changed: differ,
                        gone,
                        deleted,
                        pending,
                        settled,
                    }),
                });
            }
        }
        Err(reason) => reason,
    };
    // Before the entries: a container moved during the read is seen next time.
    let containers = source.containers_in_scope().await?;
    let mut snapshot = source.read().await?;
    snapshot.entries_read += containers.len();
    Ok(Read {
        snapshot,
        kind: ReadKind::Full(reason),
        identity: Some(identity),
        cursor,
        full_at: now,
        read_at: now,
        containers,
        changes: None,
    })
}

fn basis_usn(b: &Basis) -> u64 {
    match b.cursor {
        Cursor::Usn { usn, .. } => usn,
        _ => 0,
    }
}

async fn read_ldap(
    source: &mut LdapSource,
    config: &Config,
    cached: Cached,
    forced: Option<FullReason>,
    now: u64,
) -> Result<Read, SourceError> {
    let reason = match usable(cached, forced, config, now) {
        Ok(b) => {
            // Every container each time: OpenLDAP renames a subtree without touching the
            // entries below it, so neither their entryCSN nor their modifyTimestamp moves.
            let containers = source.containers_in_scope().await?;
            match moved_container(&b.containers, &containers, &bases(config)) {
                Some(reason) => reason,
                None => match read_ldap_changes(source, b, containers, now).await? {
                    Ok(read) if read.snapshot.users.is_empty() => FullReason::NoUsersLeft,
                    Ok(read) => return Ok(read),
                    Err(reason) => reason,
                },
            }
        }
        Err(reason) => reason,
    };
    // The cursor before the entries: what changes during the read is read again next time.
    let cursor = start_cursor(source, config).await?;
    let containers = source.containers_in_scope().await?;
    let mut snapshot = source.read().await?;
    snapshot.entries_read += containers.len();
    Ok(Read {
        snapshot,
        kind: ReadKind::Full(reason),
        identity: None,
        cursor,
        full_at: now,
        read_at: now,
        containers,
        changes: None,
    })
}

/// A filter that matches nothing: a refresh with it returns only a cookie.
fn nothing(filter: &str) -> String {
    format!("(&{filter}(!(objectClass=*)))")
}

/// Where the next incremental read of an OpenLDAP directory will start: content
/// synchronisation cookies when the server offers it for both searches (and the anchor
/// is `entryUUID`, which is what it names entries by), else `modifyTimestamp`.
async fn start_cursor(source: &mut LdapSource, config: &Config) -> Result<Cursor, SourceError> {
    if !config
        .source
        .anchor_attribute
        .eq_ignore_ascii_case("entryUUID")
    {
        return Ok(Cursor::ModifyTimestamp);
    }
    let (users, groups) = source.searches();
    let Some(users) = first_cookie(source, &users).await? else {
        return Ok(Cursor::ModifyTimestamp);
    };
    let groups = match groups {
        Some(g) => match first_cookie(source, &g).await? {
            Some(c) => Some(c),
            None => return Ok(Cursor::ModifyTimestamp),
        },
        None => None,
    };
    Ok(Cursor::ContentSync { users, groups })
}

async fn first_cookie(
    source: &mut LdapSource,
    search: &Search,
) -> Result<Option<Vec<u8>>, SourceError> {
    Ok(
        match source
            .sync_refresh(search, &nothing(&search.filter), None)
            .await?
        {
            SyncAnswer::Done(r) => r.cookie,
            SyncAnswer::Unsupported(why) | SyncAnswer::Refused(why) | SyncAnswer::TooMany(why) => {
                info!(base = %search.base, why, "no content synchronisation: incremental reads will use modifyTimestamp");
                None
            }
        },
    )
}

/// What happened to one search's content since its cookie, or why a full read must run.
fn refreshed(answer: SyncAnswer) -> Result<super::sync::Refresh, FullReason> {
    match answer {
        SyncAnswer::Done(r) => Ok(r),
        SyncAnswer::Unsupported(why) => Err(FullReason::SyncUnavailable(why)),
        SyncAnswer::Refused(why) => Err(FullReason::CookieRefused(why)),
        SyncAnswer::TooMany(why) => Err(FullReason::TooManyChanges(why)),
    }
}

/// The incremental read of an OpenLDAP directory on `b`; `Err` when a full read must run.
async fn read_ldap_changes(
    source: &mut LdapSource,
    b: Box<Basis>,
    containers: BTreeMap<String, String>,
    now: u64,
) -> Result<Result<Read, FullReason>, SourceError> {
    let user_anchors: Vec<String> = b
        .snapshot
        .users
        .iter()
        .map(|u| u.anchor.to_ascii_lowercase())
        .collect();
    let group_anchors: Vec<String> = b
        .snapshot
        .groups
        .iter()
        .map(|g| g.anchor.to_ascii_lowercase())
        .collect();
    let (users_search, groups_search) = source.searches();
    let (changed, gone, cursor, method, mut entries) = match &b.cursor {
        Cursor::ContentSync { users, groups } => {
            let users_refresh = match refreshed(
                source
                    .sync_refresh(&users_search, &users_search.filter, Some(users.clone()))
                    .await?,
            ) {
                Ok(r) => r,
                Err(why) => return Ok(Err(why)),
            };
            let groups_refresh = match (&groups_search, groups) {
                (Some(search), Some(cookie)) => match refreshed(
                    source
                        .sync_refresh(search, &search.filter, Some(cookie.clone()))
                        .await?,
                ) {
                    Ok(r) => Some(r),
                    Err(why) => return Ok(Err(why)),
                },
                (None, None) => None,
                _ => return Ok(Err(FullReason::UnusableBasis)),
            };
            let mut gone: BTreeSet<String> =
                users_refresh.gone(user_anchors.iter().map(String::as_str));
            let mut wanted: BTreeSet<String> = users_refresh.changed.clone();
            let mut entries = users_refresh.changed.len();
            if let Some(r) = &groups_refresh {
                gone.extend(r.gone(group_anchors.iter().map(String::as_str)));
                wanted.extend(r.changed.iter().cloned());
                entries += r.changed.len();
            }
            let wanted: Vec<String> = wanted.into_iter().collect();
            let changed = source.read_anchors(&wanted).await?;
            // Changed, then gone before they could be read: out of scope now.
            let found: HashSet<String> = changed.snapshot.anchors().collect();
            gone.extend(wanted.into_iter().filter(|a| !found.contains(a)));
            let cursor = Cursor::ContentSync {
                users: users_refresh.cookie.unwrap_or_else(|| users.clone()),
                groups: match (groups_refresh, groups) {
                    (Some(r), Some(old)) => Some(r.cookie.unwrap_or_else(|| old.clone())),
                    _ => None,
                },
            };
            (changed, gone, cursor, Method::ContentSync, entries)
        }
        Cursor::ModifyTimestamp => {
            let since = b.read_at.saturating_sub(TIMESTAMP_MARGIN);
            let changed = source.read_modified_since(since).await?;
            let (users_now, groups_now) = source.anchors_in_scope().await?;
            let entries = users_now.len() + groups_now.len();
            let gone: BTreeSet<String> = user_anchors
                .iter()
                .filter(|a| !users_now.contains(*a))
                .chain(group_anchors.iter().filter(|a| !groups_now.contains(*a)))
                .cloned()
                .collect();
            (
                changed,
                gone,
                Cursor::ModifyTimestamp,
                Method::ModifyTimestamp,
                entries,
            )
        }
        Cursor::Usn { .. } => return Ok(Err(FullReason::UnusableBasis)),
    };
    entries += changed.snapshot.entries_read + containers.len();
    let changed_anchors = differing(&b.snapshot, &changed.snapshot);
    let gone: HashSet<String> = gone.into_iter().collect();
    let Basis {
        snapshot: previous,
        full_at,
        read_at: previous_at,
        pending,
        settled,
        ..
    } = *b;
    // Entries read again as they were (a `modifyTimestamp` read goes back a margin)
    // change nothing: what was settled stands.
    let settled = settled.filter(|_| changed_anchors.is_empty() && gone.is_empty());
    let (mut snapshot, previous) = if nothing_read(&changed.snapshot, &gone) {
        (previous, None)
    } else {
        (
            previous.clone().replace(changed.snapshot, &gone),
            Some(previous),
        )
    };
    snapshot.entries_read = entries;
    Ok(Ok(Read {
        snapshot,
        kind: ReadKind::Incremental(method),
        identity: None,
        cursor,
        full_at,
        read_at: now,
        containers,
        changes: Some(Changes {
            previous,
            previous_at,
            changed: changed_anchors,
            gone,
            deleted: HashSet::new(),
            pending,
            settled,
        }),
    }))
}

/// Whether an incremental read brought no entry and found none gone: the next snapshot
/// is the last one, not a copy of it.
fn nothing_read(changed: &Snapshot, gone: &HashSet<String>) -> bool {
    changed.users.is_empty() && changed.groups.is_empty() && gone.is_empty()
}

/// The anchors (lowercased) of the entries in `changed` that differ from their selves in
/// `previous`, or that it lacks: an entry read again as it was (a `modifyTimestamp` read
/// goes back a margin; an attribute the mapping does not read changed) changed nothing.
fn differing(previous: &Snapshot, changed: &Snapshot) -> HashSet<String> {
    let users: std::collections::HashMap<String, &super::DirectoryUser> = previous
        .users
        .iter()
        .map(|u| (u.anchor.to_ascii_lowercase(), u))
        .collect();
    let groups: std::collections::HashMap<String, &super::DirectoryGroup> = previous
        .groups
        .iter()
        .map(|g| (g.anchor.to_ascii_lowercase(), g))
        .collect();
    changed
        .users
        .iter()
        .filter(|u| users.get(&u.anchor.to_ascii_lowercase()) != Some(u))
        .map(|u| u.anchor.to_ascii_lowercase())
        .chain(
            changed
                .groups
                .iter()
                .filter(|g| groups.get(&g.anchor.to_ascii_lowercase()) != Some(g))
                .map(|g| g.anchor.to_ascii_lowercase()),
        )
        .collect()
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
    let Cursor::Usn {
        host,
        invocation_id,
        usn,
    } = &b.cursor
    else {
        return Some(FullReason::UnusableBasis);
    };
    if !host.eq_ignore_ascii_case(&dc.host) {
        return Some(FullReason::OtherDc {
            before: host.clone(),
            now: dc.host.clone(),
        });
    }
    match (*invocation_id, dc.invocation_id) {
        (Some(before), Some(now)) if before != now => {
            return Some(FullReason::Restored { before, now })
        }
        (Some(_), Some(_)) => {}
        _ => return Some(FullReason::InvocationIdUnknown),
    }
    if dc.usn < *usn {
        return Some(FullReason::UsnBackwards {
            before: *usn,
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

/// The `meta` rows that remember this read for the next incremental one, with the
/// changes not applied yet (`pending`); `legacy`: the state still has a basis where an
/// older dirsync kept it, whose row is emptied.
pub fn basis_meta(
    read: &Read,
    config: &Config,
    pending: &Pending,
    settled: Option<&serde_json::Value>,
    legacy: bool,
) -> Vec<(&'static str, String)> {
    let scope = config.scope_text();
    let rules = rules_text(config);
    let basis = BasisOut {
        format: FORMAT,
        cursor: &read.cursor,
        full_at: read.full_at,
        read_at: read.read_at,
        scope: &scope,
        rules: &rules,
        containers: &read.containers,
        pending,
        settled,
    };
    let mut rows = Vec::new();
    // Serialising these types cannot fail; if it did, a full read next time is safe. The
    // snapshot goes with it, streamed ([`write_snapshot`]), unless the one kept is still
    // true ([`Read::snapshot_unchanged`]).
    if let Ok(text) = serde_json::to_string(&basis) {
        rows.push((KEY, text));
    }
    if legacy {
        rows.push((LEGACY_KEY, String::new()));
    }
    rows
}

/// Writes `read`'s snapshot as the JSON [`Basis::load`] reads back (a [`Document`] under
/// [`SNAPSHOT_KEY`], streamed: a large directory's snapshot is not held as text).
///
/// [`Document`]: crate::state::Document
pub fn write_snapshot(read: &Read, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer(out, &read.snapshot).map_err(std::io::Error::from)
}

/// What, besides the scope, decides what a read holds and what each user should have:
/// the attributes read, the mapping and the access rules.
pub fn rules_text(config: &Config) -> String {
    let mut attributes: Vec<String> = crate::cycle::source_attributes(config)
        .iter()
        .map(|a| a.to_ascii_lowercase())
        .collect();
    attributes.sort();
    attributes.dedup();
    format!(
        "read: {}\nmapping: {:?}\naccess: {:?}",
        attributes.join(", "),
        config.mapping,
        config.access
    )
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
            cursor: Cursor::Usn {
                host: "DC1.dirsync.test".into(),
                invocation_id,
                usn: 100,
            },
            full_at: 1_000,
            read_at: 1_000,
            scope: "users: OU=Staff".into(),
            rules: String::new(),
            snapshot: Snapshot::default(),
            containers: BTreeMap::new(),
            pending: Pending::default(),
            settled: None,
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

    /// A configuration for an OpenLDAP directory, its secrets in `dir`.
    fn config(dir: &std::path::Path) -> crate::config::Config {
        std::fs::write(dir.join("pw"), "x\n").unwrap();
        std::fs::write(dir.join("token"), "y").unwrap();
        crate::config::Config::parse(
            &dir.join("dirsync.toml"),
            "[source]\nurl = \"ldap://127.0.0.1:3890\"\nstarttls = false\nbind_dn = \"cn=x\"\n\
             bind_password_file = \"pw\"\n[source.users]\nbase = \"ou=people,dc=x\"\n\
             [portal]\nurl = \"http://127.0.0.1:8080\"\ntoken_file = \"token\"\n\
             [[mapping]]\nfrom = \"mail\"\nto = \"userName\"\n",
        )
        .unwrap()
    }

    #[test]
    fn a_basis_from_an_older_dirsync_is_not_built_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.db")).unwrap();
        assert!(matches!(
            Basis::load(&state, &config(dir.path()), None).unwrap(),
            Cached::Nothing
        ));
        // As dirsync wrote it before invocationIds were read: an empty one, no format.
        let old = r#"{"host":"dc1.dirsync.test","invocation_id":"","usn":100,"full_at":1000,
            "scope":"users: OU=Staff","snapshot":{"users":[],"groups":[],"bad_entries":[]}}"#;
        state.set_meta(KEY, old).unwrap();
        assert!(matches!(
            Basis::load(&state, &config(dir.path()), None).unwrap(),
            Cached::Unusable
        ));
        let current = serde_json::to_string(&basis(Some(guid(1)))).unwrap();
        state.set_meta(KEY, &current).unwrap();
        assert!(matches!(
            Basis::load(&state, &config(dir.path()), None).unwrap(),
            Cached::Basis(_)
        ));
    }

    #[test]
    fn an_active_directory_basis_where_version_2_kept_it_is_not_built_on_and_is_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.db")).unwrap();
        let v2 = r#"{"format":2,"host":"dc1.dirsync.test","invocation_id":null,"usn":100,
            "full_at":1000,"scope":"s","snapshot":{"users":[],"groups":[],"bad_entries":[]}}"#;
        state.set_meta(LEGACY_KEY, v2).unwrap();
        assert!(legacy(&state).unwrap());
        assert!(matches!(
            Basis::load(&state, &config(dir.path()), None).unwrap(),
            Cached::Unusable
        ));
        let read = Read {
            snapshot: Snapshot::default(),
            kind: ReadKind::Full(FullReason::UnusableBasis),
            identity: None,
            cursor: Cursor::ModifyTimestamp,
            full_at: 1,
            read_at: 1,
            containers: BTreeMap::new(),
            changes: None,
        };
        let config = config(dir.path());
        for (k, v) in basis_meta(&read, &config, &Pending::default(), None, true) {
            state.set_meta(k, &v).unwrap();
        }
        assert!(!legacy(&state).unwrap());
        assert!(matches!(
            Basis::load(&state, &config, None).unwrap(),
            Cached::Basis(_)
        ));
    }

    #[test]
    fn the_snapshot_is_read_only_when_built_on_and_written_only_when_it_changed() {
        // (The cycle streams the snapshot with `write_snapshot` as a state `Document`;
        // here it is written as text, which `Basis::load` reads too.)
        let dir = tempfile::tempdir().unwrap();
        let mut state = State::open(&dir.path().join("state.db")).unwrap();
        let config = config(dir.path());
        let snapshot = Snapshot {
            users: vec![super::super::DirectoryUser {
                dn: "uid=anna,ou=people,dc=x".into(),
                anchor: "A-1".into(),
                attrs: [("mail", vec!["anna@x.se"])].into(),
                disabled: false,
                expires: None,
            }],
            ..Snapshot::default()
        };
        let full = Read {
            snapshot: snapshot.clone(),
            kind: ReadKind::Full(FullReason::FirstRead),
            identity: None,
            cursor: Cursor::ModifyTimestamp,
            full_at: now_secs(),
            read_at: now_secs(),
            containers: BTreeMap::new(),
            changes: None,
        };
        let rows = basis_meta(&full, &config, &Pending::default(), None, false);
        let keys: Vec<&str> = rows.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys, [KEY], "the snapshot is streamed apart");
        for (k, v) in &rows {
            state.set_meta(k, v).unwrap();
        }
        assert!(!full.snapshot_unchanged());
        let mut text = Vec::new();
        write_snapshot(&full, &mut text).unwrap();
        state
            .set_meta(SNAPSHOT_KEY, std::str::from_utf8(&text).unwrap())
            .unwrap();
        let Cached::Basis(b) = Basis::load(&state, &config, None).unwrap() else {
            panic!("a usable basis");
        };
        assert_eq!(b.snapshot.users, snapshot.users, "built on: read");
        let Cached::Basis(b) = Basis::load(&state, &config, Some(&FullReason::Requested)).unwrap()
        else {
            panic!("a basis");
        };
        assert!(b.snapshot.users.is_empty(), "a full read follows: not read");

        // An incremental read that found nothing writes the basis alone.
        let quiet = Read {
            kind: ReadKind::Incremental(Method::ModifyTimestamp),
            changes: Some(Changes {
                previous: Some(snapshot.clone()),
                previous_at: 0,
                changed: HashSet::new(),
                gone: HashSet::new(),
                deleted: HashSet::new(),
                pending: Pending::default(),
                settled: None,
            }),
            ..full.clone()
        };
        assert!(quiet.snapshot_unchanged(), "nothing to write");
        let mut moved = quiet.clone();
        if let Some(c) = moved.changes.as_mut() {
            c.gone.insert("a-1".into());
        }
        assert!(!moved.snapshot_unchanged(), "a change writes the snapshot");

        // A basis whose snapshot is lost is not built on.
        state.set_meta(SNAPSHOT_KEY, "not json").unwrap();
        assert!(matches!(
            Basis::load(&state, &config, None).unwrap(),
            Cached::Unusable
        ));
    }

    #[test]
    fn a_basis_is_stored_with_its_method_and_the_invocation_id_as_a_guid() {
        let text = serde_json::to_value(basis(Some(guid(0xab)))).unwrap();
        assert_eq!(text["method"], "usn");
        assert_eq!(
            text["invocation_id"],
            "5a5a5a5a-5a5a-5a5a-5a5a-5a5a5a5a5aab"
        );
        assert_eq!(text["format"], FORMAT);
        let sync = Basis {
            cursor: Cursor::ContentSync {
                users: b"rid=000,csn=1".to_vec(),
                groups: None,
            },
            ..basis(None)
        };
        let back: Basis = serde_json::from_str(&serde_json::to_string(&sync).unwrap()).unwrap();
        assert_eq!(back.cursor, sync.cursor);
    }
}
