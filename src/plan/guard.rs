//! Safety guards on a computed plan. Pure.
//!
//! A plan that would close more users than the configured limits allow, or take away more
//! access (group memberships, role downgrades, service revocations), applies everything
//! else and holds those changes back until an admin confirms the exact number.

use serde::Serialize;

use super::{Action, Change, GroupAction, GroupChange, Plan, Why};
use crate::access;
use crate::mapping::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_closures: usize,
    pub max_closure_percent: f64,
    pub max_access_removals: usize,
    /// Roles whose loss counts as a downgrade.
    pub privileged_roles: Vec<String>,
    /// How the admin runs dirsync, for the commands a report suggests: `dirsync`, or
    /// `dirsync --config /srv/dirsync.toml` when the config is not the default one.
    pub dirsync: String,
}

/// `dirsync`, with `--config PATH` when `config` is not the default path (quoted for a
/// POSIX shell when it needs to be).
pub fn invocation(config: &std::path::Path) -> String {
    if config == std::path::Path::new(crate::config::DEFAULT_PATH) {
        return "dirsync".into();
    }
    let path = config.display().to_string();
    let plain = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@%".contains(c));
    if plain {
        format!("dirsync --config {path}")
    } else {
        format!("dirsync --config '{}'", path.replace('\'', "'\\''"))
    }
}

/// What an admin confirmed on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confirmed {
    pub closures: Option<usize>,
    pub removals: Option<usize>,
}

/// Which guard held changes back. It decides the exit code and what an admin must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldKind {
    /// More closures than `[safety]` allows: `--confirm-closures N`.
    Closures,
    /// More access taken away than `[safety]` allows: `--confirm-removals N`.
    AccessRemovals,
    /// The directory scope changed since the last sync: `--accept-scope-change`.
    ScopeChange,
    /// A saved plan no longer matches the directory or the portal: plan again.
    StalePlan,
    /// The directory returned no users: nobody is closed (exit 1).
    EmptySource,
}

impl HeldKind {
    pub fn label(self) -> &'static str {
        match self {
            HeldKind::Closures => "closures",
            HeldKind::AccessRemovals => "access removals",
            HeldKind::ScopeChange => "scope change",
            HeldKind::StalePlan => "stale plan",
            HeldKind::EmptySource => "empty source",
        }
    }

    /// What a hold's `count` counts, in words: `3 closures`, `1 access removal`.
    pub fn counted(self, n: usize) -> String {
        let (one, many) = match self {
            HeldKind::Closures => ("closure", "closures"),
            HeldKind::AccessRemovals => ("access removal", "access removals"),
            HeldKind::ScopeChange => ("change not applied", "changes not applied"),
            HeldKind::StalePlan => ("saved change that moved", "saved changes that moved"),
            HeldKind::EmptySource => ("closure not made", "closures not made"),
        };
        format!("{n} {}", if n == 1 { one } else { many })
    }
}

/// A guard that held changes back: which, how many, and each change it held, user by user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Held {
    pub kind: HeldKind,
    /// What the guard counted: closures, access removals (fields and group members), or
    /// the changes a scope change or a stale saved plan kept from being applied.
    pub count: usize,
    pub limit: String,
    pub message: String,
    /// The exact command that releases them, when one does (with `--config` when the
    /// config is not the default one).
    pub confirm: Option<String>,
    /// The user changes held back, sorted by login: for closures the whole change, for
    /// access removals only the fields taken away.
    pub changes: Vec<Change>,
    /// The portal group changes held back (for access removals: the members removed).
    pub group_changes: Vec<GroupChange>,
    /// What no longer matches, for a stale saved plan: one line per user or group.
    pub moved: Vec<String>,
}

impl Held {
    /// A hold with no changes listed yet.
    pub fn new(kind: HeldKind, count: usize, limit: String, message: String) -> Held {
        Held {
            kind,
            count,
            limit,
            message,
            confirm: None,
            changes: Vec::new(),
            group_changes: Vec::new(),
            moved: Vec::new(),
        }
    }
}

/// Applies the guards: removes held-back changes from `plan` and says why in the result.
pub fn apply_limits(
    plan: &mut Plan,
    managed: usize,
    limits: &Limits,
    confirmed: Confirmed,
) -> Vec<Held> {
    let mut held = Vec::new();

    let closures = plan.count(Action::Close);
    let share_limit = ((managed as f64) * limits.max_closure_percent / 100.0).floor() as usize;
    let over_share = closures > share_limit;
    if closures > 0 && (closures > limits.max_closures || over_share) {
        if confirmed.closures == Some(closures) {
            plan.notes
                .push(format!("{closures} closures confirmed on the command line"));
        } else {
            let limit = if over_share && closures <= limits.max_closures {
                format!(
                    "{}% of the {managed} active users dirsync manages = {share_limit}",
                    limits.max_closure_percent
                )
            } else {
                plural(limits.max_closures, "closure", "closures")
            };
            // Orphans taken over in this plan are linked only by a sync with the flag.
            let adopting = if plan.orphans.iter().any(|o| o.adopted) {
                " --adopt-orphans"
            } else {
                ""
            };
            let confirm = format!(
                "{} sync{adopting} --confirm-closures {closures}",
                limits.dirsync
            );
            let mut message = format!(
                "this cycle would close {closures} users, more than the limit ({limit}): no one was closed. \
                 If that is right, run `{confirm}`"
            );
            if let Some(n) = confirmed.closures {
                message.push_str(&format!(" (you confirmed {n}, the plan has {closures})"));
            }
            let (mut held_changes, kept): (Vec<Change>, Vec<Change>) =
                std::mem::take(&mut plan.changes)
                    .into_iter()
                    .partition(|c| c.action == Action::Close);
            plan.changes = kept;
            held_changes.sort_by_key(|c| c.user_name.to_lowercase());
            held.push(Held {
                confirm: Some(confirm),
                changes: held_changes,
                ..Held::new(HeldKind::Closures, closures, limit, message)
            });
        }
    }

    let removals = access_removals(plan, limits);
    if removals > limits.max_access_removals {
        if confirmed.removals == Some(removals) {
            plan.notes.push(format!(
                "{removals} access removals confirmed on the command line"
            ));
        } else {
            let (mut changes, group_changes) = strip_access_removals(plan, limits);
            changes.sort_by_key(|c| c.user_name.to_lowercase());
            let confirm = format!("{} sync --confirm-removals {removals}", limits.dirsync);
            let mut message = format!(
                "this cycle would take away {removals} group memberships, roles or services, more than the limit \
                 ({}): none was taken away. If that is right, run `{confirm}`",
                limits.max_access_removals
            );
            if let Some(n) = confirmed.removals {
                message.push_str(&format!(" (you confirmed {n}, the plan has {removals})"));
            }
            held.push(Held {
                confirm: Some(confirm),
                changes,
                group_changes,
                ..Held::new(
                    HeldKind::AccessRemovals,
                    removals,
                    plural(limits.max_access_removals, "removal", "removals"),
                    message,
                )
            });
        }
    }
    held
}

/// `1 closure`, `2 closures`.
fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Group-membership removals, role downgrades and service revocations in the plan.
pub fn access_removals(plan: &Plan, limits: &Limits) -> usize {
    let fields: usize = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::Close)
        .map(|c| c.fields.iter().filter(|f| is_removal(f, limits)).count())
        .sum();
    let members: usize = plan
        .group_changes
        .iter()
        .filter(|g| g.action == GroupAction::Update)
        .map(|g| g.remove.len())
        .sum();
    fields + members
}

fn is_removal(f: &super::FieldChange, limits: &Limits) -> bool {
    if f.why == Some(Why::RevertedPortalEdit) {
        return false; // putting back what the directory says is not taking access away
    }
    if f.path == access::role_path() {
        let privileged = |v: &Option<Value>| match v {
            Some(Value::Many(r)) => r.iter().any(|r| {
                limits
                    .privileged_roles
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(r))
            }),
            _ => false,
        };
        return privileged(&f.old) && f.old != f.new;
    }
    f.path.attr.eq_ignore_ascii_case("entitlements") && f.old.is_some() && f.new.is_none()
}

/// Takes the access removals out of `plan`; returns them: per user, a change with only
/// the fields taken away, and per group, the members removed.
fn strip_access_removals(plan: &mut Plan, limits: &Limits) -> (Vec<Change>, Vec<GroupChange>) {
    let mut held_changes = Vec::new();
    for c in &mut plan.changes {
        // A held-back field keeps its last-synced value: it is still owed, and must count
        // as a removal again next cycle rather than pass as a reverted portal edit.
        let (held, kept): (Vec<_>, Vec<_>) =
            c.fields.drain(..).partition(|f| is_removal(f, limits));
        for f in &held {
            c.baseline.insert(f.path.clone(), f.old.clone());
        }
        c.fields = kept;
        if !held.is_empty() {
            held_changes.push(Change {
                fields: held,
                set_active: None,
                baseline: Default::default(),
                from: None,
                ..c.clone()
            });
        }
    }
    plan.changes.retain(|c: &Change| {
        c.action == Action::Create || !c.fields.is_empty() || c.set_active.is_some()
    });
    let mut held_groups = Vec::new();
    for g in &mut plan.group_changes {
        if g.action == GroupAction::Update && !g.remove.is_empty() {
            held_groups.push(GroupChange {
                add: Vec::new(),
                rename: None,
                reason: None,
                take_over: false,
                remove: std::mem::take(&mut g.remove),
                ..g.clone()
            });
        }
        g.remove.clear();
    }
    plan.group_changes
        .retain(|g| g.action != GroupAction::Update || !g.add.is_empty() || g.rename.is_some());
    (held_changes, held_groups)
}
