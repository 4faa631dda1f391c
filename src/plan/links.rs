//! What the state's links between directory anchors and portal ids say about the portal
//! users, for the planner. Pure.
//!
//! - A directory user the state links to a portal id is never created again while that
//!   portal user exists: only when the portal answered 404 for it (deleted in the portal).
//! - A portal user that carries an externalId which neither the state nor the directory
//!   knows (say the state database was lost while the user left the directory) is an
//!   *orphan*: reported, never closed, until the admin takes orphans over with
//!   `--adopt-orphans`; then they are managed like any other user.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::folded::Folded;
use super::Baseline;
use crate::portal::PortalUser;

/// The reason given to a create of a user whose portal user was deleted in the portal.
pub const DELETED_IN_PORTAL: &str = "deleted in the portal; created again";

/// The state's links and what the portal said about them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Links {
    /// Lowercased anchor → the portal id the state links it to.
    pub portal_ids: HashMap<String, String>,
    /// Linked portal ids missing from the listing that the portal answered 404 for
    /// (`GET /Users/{id}`): deleted in the portal.
    pub deleted_in_portal: HashSet<String>,
    /// `--adopt-orphans`: orphans become managed users this cycle.
    pub adopt_orphans: bool,
}

/// A portal user with an externalId that dirsync does not manage and that no directory
/// user has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Orphan {
    pub user_name: String,
    pub portal_id: String,
    pub external_id: String,
    /// Taken over this cycle (`--adopt-orphans`): linked as managed, then planned as any
    /// managed user (closed if it left the directory, subject to the closure guard).
    pub adopted: bool,
}

/// How to take orphans over, for the reports; `dirsync` is how the admin runs it
/// ([`crate::plan::guard::invocation`]).
pub fn adopt_hint(dirsync: &str) -> String {
    format!(
        "dirsync leaves them alone. If they are users dirsync made before its state was lost, \
         run `{dirsync} sync --adopt-orphans` (preview it with `{dirsync} plan --adopt-orphans`): they are then linked \
         as managed, and those no longer in the directory are closed, subject to the closure guard"
    )
}

impl Links {
    /// Whether a directory user that no portal user carries the anchor of may be created:
    /// `Ok(reason)` if so, `Err(problem)` when the state links it to a portal user that is
    /// still there (created again, it would be a duplicate).
    /// `portal` finds a portal user by id.
    pub fn may_create<'p>(
        &self,
        anchor: &str,
        portal: impl Fn(&str) -> Option<&'p PortalUser>,
    ) -> Result<Option<String>, String> {
        let Some(id) = self.portal_ids.get(&anchor.to_ascii_lowercase()) else {
            return Ok(None);
        };
        if self.deleted_in_portal.contains(id) {
            return Ok(Some(DELETED_IN_PORTAL.to_string()));
        }
        Err(match portal(id) {
            Some(p) => format!(
                "dirsync manages this user as portal user {} (id {id}), which no longer carries its anchor as \
                 externalId ({}); it is not created again. Put the externalId back in the portal",
                p.user_name,
                p.external_id.as_deref().unwrap_or("not set"),
            ),
            None => format!(
                "dirsync manages this user as portal user {id}, which the portal neither listed nor reported \
                 deleted; it is not created again"
            ),
        })
    }
}

/// The active portal users whose externalId neither the state (`managed`, lowercased
/// anchors) nor the directory (`in_directory`, lowercased anchors) knows, by login.
/// Closed ones have no access and are left out.
pub fn orphans(
    portal: &[PortalUser],
    managed: &HashMap<String, Baseline>,
    in_directory: &HashSet<Folded<'_>>,
    adopted: bool,
) -> Vec<Orphan> {
    let mut found: Vec<Orphan> = portal
        .iter()
        .filter(|p| p.active)
        .filter_map(|p| {
            let x = p.external_id.as_ref()?;
            let key = x.to_ascii_lowercase();
            (!managed.contains_key(&key) && !in_directory.contains(&Folded(x))).then(|| Orphan {
                user_name: p.user_name.clone(),
                portal_id: p.id.clone(),
                external_id: x.clone(),
                adopted,
            })
        })
        .collect();
    found.sort_by_key(|o| o.user_name.to_ascii_lowercase());
    found
}

/// `managed` with the orphans added as managed users that were never synced.
pub fn with_orphans(
    managed: &HashMap<String, Baseline>,
    orphans: &[Orphan],
) -> HashMap<String, Baseline> {
    let mut all = managed.clone();
    for o in orphans {
        all.entry(o.external_id.to_ascii_lowercase()).or_default();
    }
    all
}
