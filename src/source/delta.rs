//! Delta cycles against Active Directory.
//!
//! A full read remembers, in the state, the directory as read (without derived primary
//! group members), the DC that answered (`dnsHostName`), its `invocationId`, and its
//! `highestCommittedUSN` read *before* the searches. The next cycle then asks only for
//! entries whose `uSNChanged` is higher, plus tombstones under `CN=Deleted Objects` (Show
//! Deleted control), and merges them into the remembered directory. A full read runs
//! instead when there is nothing to build on, when another DC answers or the DC's
//! invocationId changed (a restore: its USNs no longer mean the same), when the USN went
//! backwards, when the scope changed, and at least every `source.full_reconcile_hours`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{DcIdentity, LdapSource, Snapshot, SourceError};
use crate::config::{Config, SourceKind};
use crate::state::{State, StateError};

/// The `meta` key the basis for the next delta is kept under.
const KEY: &str = "ad.delta";

/// What a delta builds on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Basis {
    pub host: String,
    pub invocation_id: String,
    pub usn: u64,
    /// When the last full read ran (Unix seconds).
    pub full_at: u64,
    pub scope: String,
    pub snapshot: Snapshot,
}

impl Basis {
    /// The remembered basis; `None` when there is none or it cannot be read (a full read
    /// follows, which is always safe).
    pub fn load(state: &State) -> Result<Option<Basis>, StateError> {
        Ok(state
            .meta(KEY)?
            .and_then(|text| serde_json::from_str(&text).ok()))
    }
}

/// What a cycle read from the directory.
#[derive(Clone, Debug)]
pub struct Read {
    /// The whole directory in scope (merged, for a delta), without primary-group members.
    pub snapshot: Snapshot,
    pub delta: bool,
    /// Why a full read ran although a delta was possible in principle.
    pub reason: Option<String>,
    pub identity: Option<DcIdentity>,
    pub full_at: u64,
}

pub async fn read(
    source: &mut LdapSource,
    config: &Config,
    basis: Option<Basis>,
) -> Result<Read, SourceError> {
    let now = now_secs();
    if config.source.kind != SourceKind::ActiveDirectory {
        return Ok(Read {
            snapshot: source.read().await?,
            delta: false,
            reason: None,
            identity: None,
            full_at: now,
        });
    }
    let identity = source.dc_identity().await?;
    match (full_reason(basis.as_ref(), &identity, config, now), basis) {
        (None, Some(b)) => {
            let changed = source.read_changed(b.usn).await?;
            let mut deleted = source.read_deleted(&identity.naming_context, b.usn).await?;
            // Users changed elsewhere in the domain and not among the in-scope changes
            // moved out of the users base: they left the scope.
            let anywhere = source
                .changed_anywhere(&identity.naming_context, b.usn)
                .await?;
            let in_scope: std::collections::HashSet<String> = changed
                .users
                .iter()
                .map(|u| u.anchor.to_ascii_lowercase())
                .collect();
            let entries = changed.entries_read + deleted.len() + anywhere.len();
            let moved_out: Vec<String> = anywhere
                .into_iter()
                .filter(|a| !in_scope.contains(a))
                .collect();
            deleted.extend(moved_out);
            let mut snapshot = b.snapshot.merge(changed, &deleted);
            snapshot.entries_read = entries;
            Ok(Read {
                snapshot,
                delta: true,
                reason: None,
                identity: Some(identity),
                full_at: b.full_at,
            })
        }
        (reason, _) => Ok(Read {
            snapshot: source.read().await?,
            delta: false,
            reason,
            identity: Some(identity),
            full_at: now,
        }),
    }
}

/// Why this cycle must read everything; `None` when a delta is sound.
pub fn full_reason(
    basis: Option<&Basis>,
    dc: &DcIdentity,
    config: &Config,
    now: u64,
) -> Option<String> {
    let Some(b) = basis else {
        return Some("first read: nothing to build a delta on".into());
    };
    if !b.host.eq_ignore_ascii_case(&dc.host) {
        return Some(format!(
            "another domain controller answered ({} before, {} now)",
            b.host, dc.host
        ));
    }
    if !b.invocation_id.eq_ignore_ascii_case(&dc.invocation_id) {
        return Some(format!(
            "the domain controller's invocationId changed ({} → {}): it was restored or reinstalled",
            b.invocation_id, dc.invocation_id
        ));
    }
    if dc.usn < b.usn {
        return Some(format!(
            "the domain controller's USN went backwards ({} → {})",
            b.usn, dc.usn
        ));
    }
    if b.scope != config.scope_text() {
        return Some("the directory scope changed".into());
    }
    if now.saturating_sub(b.full_at) >= config.source.full_reconcile.as_secs() {
        return Some("periodic full reconcile".into());
    }
    None
}

/// Remembers this read for the next delta (sync runs only).
pub fn remember(state: &mut State, read: &Read, config: &Config) -> Result<(), StateError> {
    let Some(dc) = &read.identity else {
        return Ok(());
    };
    let basis = Basis {
        host: dc.host.clone(),
        invocation_id: dc.invocation_id.clone(),
        usn: dc.usn,
        full_at: read.full_at,
        scope: config.scope_text(),
        snapshot: read.snapshot.clone(),
    };
    match serde_json::to_string(&basis) {
        Ok(text) => state.set_meta(KEY, &text),
        Err(_) => Ok(()), // never happens for these types; a full read next time is safe
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
