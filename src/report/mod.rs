//! Reports: what a plan would do or a sync did, as text for people and JSON for tools.
//! The same [`Report`] value feeds both, so they always agree.

mod html;
mod text;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apply::{Applied, Outcome, Status};
use crate::plan::guard::{Held, HeldKind};
use crate::plan::{
    Action, Change, Conflict, GroupAction, GroupChange, NeedsAdmin, Orphan, Plan, Skipped,
};
use crate::source::DcIdentity;

pub use self::html::{escape as html_escape, render_html};
pub use self::text::render_text;

/// The current time, RFC 3339 in UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DirectorySummary {
    pub url: String,
    pub users: usize,
    pub disabled: usize,
    pub groups: Option<usize>,
    /// `full` (a full reconcile: both sides read whole), or `incremental` (only what
    /// changed since the last cycle, and only the portal users it concerns).
    pub read: String,
    /// Why a full read ran, or how an incremental one found what changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_reason: Option<String>,
    /// Entries the directory returned this cycle.
    pub entries_read: usize,
    /// The Active Directory domain controller that answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain_controller: Option<DcIdentity>,
}

impl DirectorySummary {
    /// The domain controller that answered, in words, for the text and HTML reports.
    pub fn domain_controller_text(&self) -> Option<String> {
        self.domain_controller.as_ref().map(|dc| {
            format!(
                "domain controller {}, invocationId {}, highest committed USN {}",
                dc.host,
                dc.invocation_id
                    .map_or_else(|| "unreadable".to_string(), |g| g.to_string()),
                dc.usn
            )
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortalSummary {
    pub url: String,
    /// Portal users read: all of them when `listed`, else those read by id or looked up.
    pub users: usize,
    /// Users dirsync manages: those of the listing, or (not listed) those the state links.
    pub managed: usize,
    /// The portal was listed whole (a full reconcile). An incremental cycle reads only the
    /// users and groups the directory's changes concern.
    pub listed: bool,
}

impl PortalSummary {
    /// How the portal was read, in words, for the text and HTML reports.
    pub fn read_text(&self) -> String {
        if self.listed {
            format!("{} users, {} managed by dirsync", self.users, self.managed)
        } else {
            format!(
                "not listed (incremental cycle): {} users read by id or looked up; {} managed by dirsync",
                self.users, self.managed
            )
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportedChange {
    #[serde(flatten)]
    pub change: Change,
    /// `None` in a dry run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReportedGroupChange {
    #[serde(flatten)]
    pub change: GroupChange,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
}

/// Why a cycle ended before its plan was carried out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stopped {
    /// Asked to stop (SIGTERM, SIGINT): in-flight requests finished, no new ones started.
    Interrupted,
    /// `sync.cycle_timeout_secs` passed.
    TimedOut,
}

/// How a cycle ended, as recorded and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Everything planned was applied (or, in a dry run, planned).
    Ok,
    /// A guard held changes back until an admin confirms.
    Held,
    /// Some changes failed; they are planned again next cycle.
    Partial,
    /// The cycle failed before it could plan (a side unreachable, an incomplete read),
    /// or the directory returned no users at all (nobody is closed; it needs a look).
    Failed,
    Interrupted,
    TimedOut,
}

impl RunOutcome {
    pub fn label(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::Held => "held",
            RunOutcome::Partial => "partial",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::TimedOut => "timed_out",
        }
    }

    /// Whether the cycle counts as a success for `/healthz` and the last-success metric:
    /// it did its work, perhaps waiting for an admin's confirmation of some of it.
    pub fn is_success(self) -> bool {
        matches!(self, RunOutcome::Ok | RunOutcome::Held)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// `plan` (dry run), `sync`, `apply` (a saved plan) or `standby` (the daemon's plan
    /// on a spare host).
    pub command: String,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: String,
    pub directory: DirectorySummary,
    pub portal: PortalSummary,
    pub changes: Vec<ReportedChange>,
    pub group_changes: Vec<ReportedGroupChange>,
    pub skipped: Vec<Skipped>,
    pub needs_admin: Vec<NeedsAdmin>,
    /// `merge` attributes changed on both sides: the portal value was kept.
    pub conflicts: Vec<Conflict>,
    /// Changes a safety guard held back, and how to release them.
    pub held: Vec<Held>,
    pub notes: Vec<String>,
    /// Portal users with an externalId dirsync does not manage and no directory user has;
    /// `adopted` when taken over this cycle (`--adopt-orphans`).
    pub orphans: Vec<Orphan>,
    /// Why the run stopped early, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// The cycle was stopped before its plan was carried out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<Stopped>,
    pub outcome: RunOutcome,
    /// Per action (planned, or applied in a sync), plus `skipped`, `needs_admin`,
    /// `conflicts`, `rejected` and `failed`.
    pub counts: BTreeMap<String, usize>,
}

impl Report {
    pub fn new(
        command: &str,
        started_at: String,
        directory: DirectorySummary,
        portal: PortalSummary,
        plan: Plan,
        applied: Option<Applied>,
        stopped: Option<Stopped>,
    ) -> Report {
        let dry_run = applied.is_none();
        let (outcomes, group_outcomes, aborted) = match applied {
            Some(a) => (
                a.outcomes.into_iter().map(Some).collect(),
                a.group_outcomes.into_iter().map(Some).collect(),
                a.aborted,
            ),
            None => (
                vec![None; plan.changes.len()],
                vec![None; plan.group_changes.len()],
                None,
            ),
        };
        let group_changes: Vec<ReportedGroupChange> = plan
            .group_changes
            .into_iter()
            .zip(group_outcomes.into_iter().chain(std::iter::repeat(None)))
            .map(|(change, outcome)| ReportedGroupChange { change, outcome })
            .collect();
        let changes: Vec<ReportedChange> = plan
            .changes
            .into_iter()
            .zip(outcomes)
            .map(|(change, outcome)| ReportedChange { change, outcome })
            .collect();
        let mut counts = BTreeMap::new();
        for action in Action::ALL {
            let n = changes
                .iter()
                .filter(|c| c.change.action == action)
                .filter(|c| {
                    c.outcome
                        .as_ref()
                        .is_none_or(|o| o.status == Status::Applied)
                })
                .count();
            counts.insert(action.label().to_string(), n);
        }
        let status_count = |s: Status| {
            changes
                .iter()
                .filter(|c| c.outcome.as_ref().is_some_and(|o| o.status == s))
                .count()
        };
        counts.insert("rejected".into(), status_count(Status::Rejected));
        counts.insert(
            "failed".into(),
            status_count(Status::Failed) + status_count(Status::NotAttempted),
        );
        counts.insert("skipped".into(), plan.skipped.len());
        counts.insert("needs_admin".into(), plan.needs_admin.len());
        counts.insert("conflicts".into(), plan.conflicts.len());
        counts.insert(
            "orphans".into(),
            plan.orphans.iter().filter(|o| !o.adopted).count(),
        );
        counts.insert(
            "orphans_adopted".into(),
            plan.orphans.iter().filter(|o| o.adopted).count(),
        );
        for (key, action) in [
            ("group_create", GroupAction::Create),
            ("group_update", GroupAction::Update),
            ("group_delete", GroupAction::Delete),
        ] {
            let n = group_changes
                .iter()
                .filter(|g| g.change.action == action)
                .filter(|g| {
                    g.outcome
                        .as_ref()
                        .is_none_or(|o| o.status == Status::Applied)
                })
                .count();
            counts.insert(key.into(), n);
        }
        let group_failed = group_changes
            .iter()
            .filter(|g| {
                g.outcome
                    .as_ref()
                    .is_some_and(|o| o.status != Status::Applied)
            })
            .count();
        if let Some(f) = counts.get_mut("failed") {
            *f += group_failed;
        }
        let mut report = Report {
            command: command.to_string(),
            dry_run,
            started_at,
            finished_at: now(),
            directory,
            portal,
            changes,
            group_changes,
            skipped: plan.skipped,
            needs_admin: plan.needs_admin,
            conflicts: plan.conflicts,
            held: plan.held,
            notes: plan.notes,
            orphans: plan.orphans,
            aborted,
            stopped,
            outcome: RunOutcome::Ok,
            counts,
        };
        report.outcome = report.derive_outcome();
        report
    }

    fn derive_outcome(&self) -> RunOutcome {
        match self.stopped {
            Some(Stopped::Interrupted) => RunOutcome::Interrupted,
            Some(Stopped::TimedOut) => RunOutcome::TimedOut,
            None if self.held.iter().any(|h| h.kind == HeldKind::EmptySource) => RunOutcome::Failed,
            None if self.has_failures() => RunOutcome::Partial,
            None if !self.held.is_empty() => RunOutcome::Held,
            None => RunOutcome::Ok,
        }
    }

    /// True when some change could not be applied for a reason other than its data.
    pub fn has_failures(&self) -> bool {
        self.aborted.is_some() || self.counts.get("failed").copied().unwrap_or(0) > 0
    }

    /// The changes grouped by action, in report order; actions with no change left out.
    pub fn by_action(&self) -> Vec<(Action, Vec<&ReportedChange>)> {
        Action::ALL
            .iter()
            .map(|&a| {
                (
                    a,
                    self.changes
                        .iter()
                        .filter(|c| c.change.action == a)
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, changes)| !changes.is_empty())
            .collect()
    }

    /// The process exit code this report calls for.
    pub fn exit_code(&self) -> u8 {
        if self.has_failures() || self.held.iter().any(|h| h.kind == HeldKind::EmptySource) {
            crate::exit::FAILURE
        } else if !self.held.is_empty() {
            crate::exit::HELD
        } else {
            crate::exit::OK
        }
    }

    /// The orphans left alone, and those taken over this cycle.
    pub fn orphans(&self) -> (Vec<&Orphan>, Vec<&Orphan>) {
        self.orphans.iter().partition(|o| !o.adopted)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}
