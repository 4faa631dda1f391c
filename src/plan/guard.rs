//! Safety guards on a computed plan. Pure.
//!
//! A plan that would close more users than the configured limits allow, or take away more
//! access (group memberships, role downgrades, service revocations), applies everything
//! else and holds those changes back until an admin confirms the exact number.

use serde::Serialize;

use super::{Action, Change, GroupAction, Plan, Why};
use crate::access;
use crate::mapping::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    pub max_closures: usize,
    pub max_closure_percent: f64,
    pub max_access_removals: usize,
    /// Roles whose loss counts as a downgrade.
    pub privileged_roles: Vec<String>,
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
}

/// A guard that held changes back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Held {
    pub kind: HeldKind,
    pub count: usize,
    pub limit: String,
    pub message: String,
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
                    "{}% of {managed} managed users = {share_limit}",
                    limits.max_closure_percent
                )
            } else {
                format!("{} closures", limits.max_closures)
            };
            // Orphans taken over in this plan are linked only by a sync with the flag.
            let adopting = if plan.orphans.iter().any(|o| o.adopted) {
                " --adopt-orphans"
            } else {
                ""
            };
            let mut message = format!(
                "this cycle would close {closures} users, more than the limit ({limit}): no one was closed. \
                 If that is right, run `dirsync sync{adopting} --confirm-closures {closures}`"
            );
            if let Some(n) = confirmed.closures {
                message.push_str(&format!(" (you confirmed {n}, the plan has {closures})"));
            }
            plan.changes.retain(|c| c.action != Action::Close);
            held.push(Held {
                kind: HeldKind::Closures,
                count: closures,
                limit,
                message,
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
            strip_access_removals(plan, limits);
            let mut message = format!(
                "this cycle would take away {removals} group memberships, roles or services, more than the limit \
                 ({}): none was taken away. If that is right, run `dirsync sync --confirm-removals {removals}`",
                limits.max_access_removals
            );
            if let Some(n) = confirmed.removals {
                message.push_str(&format!(" (you confirmed {n}, the plan has {removals})"));
            }
            held.push(Held {
                kind: HeldKind::AccessRemovals,
                count: removals,
                limit: format!("{} removals", limits.max_access_removals),
                message,
            });
        }
    }
    held
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

fn strip_access_removals(plan: &mut Plan, limits: &Limits) {
    for c in &mut plan.changes {
        // A held-back field keeps its last-synced value: it is still owed, and must count
        // as a removal again next cycle rather than pass as a reverted portal edit.
        let (held, kept): (Vec<_>, Vec<_>) =
            c.fields.drain(..).partition(|f| is_removal(f, limits));
        for f in held {
            c.baseline.insert(f.path, f.old);
        }
        c.fields = kept;
    }
    plan.changes.retain(|c: &Change| {
        c.action == Action::Create || !c.fields.is_empty() || c.set_active.is_some()
    });
    for g in &mut plan.group_changes {
        g.remove.clear();
    }
    plan.group_changes
        .retain(|g| g.action != GroupAction::Update || !g.add.is_empty() || g.rename.is_some());
}
