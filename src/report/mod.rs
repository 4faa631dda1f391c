//! Reports: what a plan would do or a sync did, as text for people, JSON for tools and a
//! self-contained HTML page. The same [`Report`] value feeds all three, and a test checks
//! that every value of the JSON is in the other two. The JSON's shape is documented in
//! `docs/report.schema.json`; [`SCHEMA_VERSION`] changes when it does.

mod html;
#[cfg(test)]
mod tests;
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

/// The version of the JSON report's shape (`schemaVersion`, `docs/report.schema.json`):
/// raised when a field is removed or changes meaning; new fields may appear without it.
pub const SCHEMA_VERSION: u32 = 1;

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
                "domain controller {} of {}, invocationId {}, highest committed USN {}",
                dc.host,
                dc.naming_context,
                dc.invocation_id
                    .map_or_else(|| "unreadable".to_string(), |g| g.to_string()),
                dc.usn
            )
        })
    }

    /// The read kind and why, in words: `full read (the last delta basis is gone)`.
    pub fn read_text(&self) -> String {
        match &self.read_reason {
            Some(why) => format!("{} read ({why})", self.read),
            None => format!("{} read", self.read),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortalSummary {
    pub url: String,
    /// Portal users read: all of them when `listed`, else those read by id or looked up.
    pub users: usize,
    /// Portal users linked to a directory user (their externalId is an anchor dirsync
    /// manages), active or closed: those of the listing, or (not listed) those the state
    /// links.
    pub managed: usize,
    /// Of those, the active ones: what the closure guard's share is taken of (an
    /// incremental cycle, which lists no portal, counts them all).
    pub managed_active: usize,
    /// The portal was listed whole (a full reconcile). An incremental cycle reads only the
    /// users and groups the directory's changes concern.
    pub listed: bool,
}

impl PortalSummary {
    /// The counts in words: `60 users; 57 linked to a directory user, 55 of them active`.
    pub fn counts_text(&self) -> String {
        if self.listed {
            format!(
                "{} users; {} linked to a directory user, {} of them active",
                self.users, self.managed, self.managed_active
            )
        } else {
            format!(
                "not listed (incremental cycle): {} users read by id or looked up; {} linked to a directory user",
                self.users, self.managed
            )
        }
    }
}

impl PortalSummary {
    /// How the portal was read, in words, for the text and HTML reports.
    pub fn read_text(&self) -> String {
        self.counts_text()
    }
}

/// How long each step of a cycle took and what it counted, in milliseconds. The directory
/// and the portal are read at the same time, so each side is timed on its own and the
/// two reads together take about the longer of them, not their sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phases {
    pub directory_read: DirectoryRead,
    pub portal_read: PortalRead,
    pub plan: PlanPhase,
    /// `None` when nothing was applied: a dry run, or a sync a guard turned into a plan.
    pub apply: Option<ApplyPhase>,
    /// `None` when the cycle records nothing (a dry run). Takes in the run row, the
    /// baselines of users in step and the delta basis, in one transaction.
    pub record: Option<RecordPhase>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryRead {
    pub ms: u64,
    /// Entries the directory returned (users, groups and containers; a delta's changes).
    pub entries: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalRead {
    pub ms: u64,
    /// Users and groups listed.
    pub users: usize,
    pub groups: usize,
    /// Managed users missing from the listing, fetched one by one (deleted in the portal).
    pub fetched: usize,
    /// HTTP requests sent: discovery, schemas, the listings' pages, the fetches, retries.
    pub requests: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanPhase {
    pub ms: u64,
    /// User and group changes planned.
    pub changes: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyPhase {
    pub ms: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// User and group changes the portal confirmed.
    pub applied: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordPhase {
    pub ms: u64,
    /// Users in step whose link or last-synced values were written.
    pub users: usize,
}

impl Phases {
    /// One line per phase for the text and HTML reports: its name, how long it took
    /// (`-` when it did not run) and what it counted, in words.
    pub fn lines(&self, dry_run: bool) -> Vec<(&'static str, String, String)> {
        let ms = |ms: u64| format!("{} ms", thousands(ms));
        let d = &self.directory_read;
        let p = &self.portal_read;
        let mut lines = vec![
            (
                "directory read",
                ms(d.ms),
                format!("{} entries read", thousands(d.entries as u64)),
            ),
            (
                "portal read",
                ms(p.ms),
                format!(
                    "{} users and {} groups listed, {} fetched, {} requests",
                    thousands(p.users as u64),
                    thousands(p.groups as u64),
                    thousands(p.fetched as u64),
                    thousands(p.requests)
                ),
            ),
            (
                "plan",
                ms(self.plan.ms),
                format!("{} changes planned", thousands(self.plan.changes as u64)),
            ),
        ];
        lines.push(match &self.apply {
            Some(a) => (
                "apply",
                ms(a.ms),
                format!(
                    "{} requests, {} changes applied",
                    thousands(a.requests),
                    thousands(a.applied as u64)
                ),
            ),
            None if dry_run => ("apply", "-".into(), "nothing applied (dry run)".into()),
            None => ("apply", "-".into(), "nothing applied".into()),
        });
        lines.push(match &self.record {
            Some(r) => (
                "record",
                ms(r.ms),
                format!("{} users in step written", thousands(r.users as u64)),
            ),
            None => ("record", "-".into(), "nothing recorded (dry run)".into()),
        });
        lines
    }
}

/// `1234567` as `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration in whole milliseconds, as reports and the run history keep it.
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
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
    /// [`SCHEMA_VERSION`].
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    /// `plan` (dry run), `sync`, `apply` (a saved plan) or `standby` (the daemon's plan
    /// on a spare host).
    pub command: String,
    /// The config file the cycle ran with; the commands the report suggests name it
    /// (`--config`) when it is not the default one.
    pub config: Option<String>,
    pub dry_run: bool,
    pub started_at: String,
    pub finished_at: String,
    pub directory: DirectorySummary,
    pub portal: PortalSummary,
    /// By action, then by login.
    pub changes: Vec<ReportedChange>,
    /// By action, then by name.
    pub group_changes: Vec<ReportedGroupChange>,
    /// Directory entries not synced, by DN.
    pub skipped: Vec<Skipped>,
    /// By login, then attribute.
    pub needs_admin: Vec<NeedsAdmin>,
    /// `merge` attributes changed on both sides: the portal value was kept. By login.
    pub conflicts: Vec<Conflict>,
    /// Changes a safety guard held back, user by user, and how to release them.
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
    /// `conflicts`, `rejected`, `failed` and `held`: see [`Report::counted`].
    pub counts: BTreeMap<String, usize>,
    /// How long each step took and what it counted (zero in a report from before
    /// phases were recorded).
    #[serde(default)]
    pub phases: Phases,
}

impl Report {
    pub fn new(
        command: &str,
        started_at: String,
        directory: DirectorySummary,
        portal: PortalSummary,
        mut plan: Plan,
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
        let mut changes: Vec<ReportedChange> = plan
            .changes
            .into_iter()
            .zip(outcomes)
            .map(|(change, outcome)| ReportedChange { change, outcome })
            .collect();
        changes.sort_by_cached_key(|c| (c.change.action, c.change.user_name.to_lowercase()));
        let mut group_changes = group_changes;
        group_changes.sort_by_cached_key(|g| (g.change.action, g.change.name.to_lowercase()));
        for g in &mut group_changes {
            sort_members(&mut g.change);
        }
        plan.skipped.sort_by_cached_key(|s| s.dn.to_lowercase());
        plan.needs_admin
            .sort_by_cached_key(|n| (n.user_name.to_lowercase(), n.path.to_string()));
        plan.conflicts
            .sort_by_cached_key(|c| (c.user_name.to_lowercase(), c.path.to_string()));
        plan.orphans
            .sort_by_cached_key(|o| o.user_name.to_lowercase());
        for h in &mut plan.held {
            h.changes.sort_by_cached_key(|c| c.user_name.to_lowercase());
            h.group_changes
                .sort_by_cached_key(|g| g.name.to_lowercase());
            for g in &mut h.group_changes {
                sort_members(g);
            }
        }
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
        counts.insert("held".into(), plan.held.iter().map(|h| h.count).sum());
        let mut report = Report {
            schema_version: SCHEMA_VERSION,
            command: command.to_string(),
            config: None,
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
            phases: Phases::default(),
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

    /// What a key of `counts` counts, in words, for the reports (`None`: not a count key).
    pub fn counted(key: &str) -> Option<&'static str> {
        Some(match key {
            "create" => "portal users created",
            "adopt" => "existing portal users taken over",
            "update" => "portal users updated",
            "reactivate" => "portal users reactivated",
            "close" => "portal users closed",
            "group_create" => "portal groups created",
            "group_update" => "portal groups updated",
            "group_delete" => "portal groups deleted",
            "skipped" => "directory entries skipped",
            "needs_admin" => "fields needing an administrator",
            "conflicts" => "fields changed on both sides (portal value kept)",
            "rejected" => "changes the portal refused",
            "failed" => "changes that failed (retried next cycle)",
            "held" => "changes held back by a guard",
            "orphans" => "portal users with an externalId dirsync does not manage",
            "orphans_adopted" => "orphans taken over",
            _ => return None,
        })
    }

    /// The counts, in the order the reports show them: user changes, group changes, what
    /// needs a look, orphans; any other key last.
    pub fn counts_in_order(&self) -> Vec<(&str, usize)> {
        const ORDER: [&str; 16] = [
            "create",
            "adopt",
            "update",
            "reactivate",
            "close",
            "group_create",
            "group_update",
            "group_delete",
            "held",
            "needs_admin",
            "failed",
            "rejected",
            "conflicts",
            "skipped",
            "orphans",
            "orphans_adopted",
        ];
        let mut out: Vec<(&str, usize)> = ORDER
            .iter()
            .filter_map(|k| self.counts.get(*k).map(|&n| (*k, n)))
            .collect();
        out.extend(
            self.counts
                .iter()
                .filter(|(k, _)| !ORDER.contains(&k.as_str()))
                .map(|(k, &n)| (k.as_str(), n)),
        );
        out
    }

    /// The headline: the command and what it did to the portal.
    pub fn title(&self) -> String {
        match (self.command.as_str(), self.dry_run) {
            ("plan", _) => "dirsync plan (dry run: nothing was changed)".into(),
            ("standby", _) => "dirsync standby (this host only plans: nothing was changed)".into(),
            ("apply", false) => "dirsync apply (a saved plan, as reviewed)".into(),
            ("apply", true) => "dirsync apply (refused: nothing was applied, see below)".into(),
            (c, true) => format!("dirsync {c} (held back: nothing was applied, see below)"),
            (c, false) => format!("dirsync {c}"),
        }
    }

    /// How the admin runs dirsync, for the commands the report suggests.
    pub fn dirsync(&self) -> String {
        self.config.as_deref().map_or_else(
            || "dirsync".to_string(),
            |c| crate::plan::guard::invocation(std::path::Path::new(c)),
        )
    }

    /// The line that stands where the change lists would, when there are none.
    pub fn no_changes_text(&self) -> Option<&'static str> {
        if !self.changes.is_empty() || !self.group_changes.is_empty() {
            return None;
        }
        Some(if self.held.is_empty() {
            "No changes: the portal matches the directory."
        } else {
            "No changes besides those held back: see above."
        })
    }

    /// The changes that failed or that the portal refused, with its answer.
    pub fn failures(&self) -> Vec<&ReportedChange> {
        self.changes
            .iter()
            .filter(|c| {
                c.outcome
                    .as_ref()
                    .is_some_and(|o| o.status != Status::Applied)
            })
            .collect()
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

    /// The JSON report, as documented in `docs/report.schema.json`.
    pub fn to_json(&self) -> String {
        let mut out = Vec::new();
        match self.write_json(&mut out).map(|()| String::from_utf8(out)) {
            Ok(Ok(json)) => json,
            Ok(Err(e)) => format!("{{\"error\": \"{e}\"}}"),
            Err(e) => format!("{{\"error\": \"{e}\"}}"),
        }
    }

    /// Writes [`Report::to_json`] to `out` as it is made: the report of a first sync of
    /// 100,000 users is some 180 MB of JSON, not to be held as a string.
    pub fn write_json(&self, out: impl std::io::Write) -> std::io::Result<()> {
        serde_json::to_writer_pretty(out, self).map_err(std::io::Error::from)
    }
}

/// Members added and removed, by login.
fn sort_members(g: &mut GroupChange) {
    g.add.sort_by_cached_key(|m| m.user_name.to_lowercase());
    g.remove.sort_by_cached_key(|m| m.user_name.to_lowercase());
}

/// A change's status in words: `planned`, `done`, `FAILED: <the portal's answer>`.
pub fn outcome_text(outcome: Option<&Outcome>) -> String {
    match outcome {
        None => "planned".into(),
        Some(o) => {
            let answer = o.message.as_deref().unwrap_or("no answer");
            match o.status {
                Status::Applied => "done".into(),
                Status::Rejected => format!("REJECTED by the portal: {answer}"),
                Status::Failed => format!("FAILED: {answer}"),
                Status::NotAttempted => "not attempted".into(),
            }
        }
    }
}

#[cfg(test)]
mod phase_tests {
    use super::*;

    fn report(dry_run: bool) -> Report {
        let mut r = Report::new(
            if dry_run { "plan" } else { "sync" },
            "2024-05-01T12:00:00Z".into(),
            DirectorySummary {
                url: "ldap://ldap.example.com".into(),
                users: 12000,
                disabled: 0,
                groups: Some(300),
                read: "full".into(),
                read_reason: None,
                entries_read: 12345,
                domain_controller: None,
            },
            PortalSummary {
                url: "https://portal.example.com/scim/v2/".into(),
                users: 11990,
                managed: 11990,
                managed_active: 11990,
                listed: true,
            },
            Plan::default(),
            (!dry_run).then(Applied::default),
            None,
        );
        r.phases = Phases {
            directory_read: DirectoryRead {
                ms: 1234,
                entries: 12345,
            },
            portal_read: PortalRead {
                ms: 8601,
                users: 11990,
                groups: 202,
                fetched: 3,
                requests: 128,
            },
            plan: PlanPhase {
                ms: 63,
                changes: 17,
            },
            apply: (!dry_run).then_some(ApplyPhase {
                ms: 2500,
                requests: 21,
                applied: 16,
            }),
            record: (!dry_run).then_some(RecordPhase { ms: 12, users: 4 }),
        };
        r
    }

    #[test]
    fn every_phase_is_in_the_json_with_its_duration_and_counts() {
        let json: serde_json::Value = serde_json::from_str(&report(false).to_json()).unwrap();
        assert_eq!(
            json["phases"],
            serde_json::json!({
                "directory_read": {"ms": 1234, "entries": 12345},
                "portal_read": {"ms": 8601, "users": 11990, "groups": 202, "fetched": 3, "requests": 128},
                "plan": {"ms": 63, "changes": 17},
                "apply": {"ms": 2500, "requests": 21, "applied": 16},
                "record": {"ms": 12, "users": 4},
            })
        );
        let dry: serde_json::Value = serde_json::from_str(&report(true).to_json()).unwrap();
        assert_eq!(dry["phases"]["apply"], serde_json::Value::Null);
        assert_eq!(dry["phases"]["record"], serde_json::Value::Null);
    }

    #[test]
    fn the_text_report_has_one_line_per_phase_with_what_it_counted() {
        let text = render_text(&report(false));
        let phases: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("Phases"))
            .skip(1)
            .collect();
        assert_eq!(
            phases,
            [
                "  directory read    1,234 ms  12,345 entries read",
                "  portal read       8,601 ms  11,990 users and 202 groups listed, 3 fetched, 128 requests",
                "  plan                 63 ms  17 changes planned",
                "  apply             2,500 ms  21 requests, 16 changes applied",
                "  record               12 ms  4 users in step written",
            ],
            "{text}"
        );
        let dry = render_text(&report(true));
        assert!(
            dry.contains("  apply                    -  nothing applied (dry run)\n")
                && dry.contains("  record                   -  nothing recorded (dry run)\n"),
            "{dry}"
        );
    }

    #[test]
    fn the_html_report_has_every_phase_the_json_has() {
        let html = render_html(&report(false));
        for cell in [
            "<tr><td>directory read</td><td>1,234 ms</td><td>12,345 entries read</td></tr>",
            "<tr><td>portal read</td><td>8,601 ms</td><td>11,990 users and 202 groups listed, 3 fetched, 128 requests</td></tr>",
            "<tr><td>plan</td><td>63 ms</td><td>17 changes planned</td></tr>",
            "<tr><td>apply</td><td>2,500 ms</td><td>21 requests, 16 changes applied</td></tr>",
            "<tr><td>record</td><td>12 ms</td><td>4 users in step written</td></tr>",
        ] {
            assert!(html.contains(cell), "no {cell} in:\n{html}");
        }
    }

    #[test]
    fn thousands_are_grouped_by_three() {
        for (n, text) in [
            (0, "0"),
            (999, "999"),
            (1000, "1,000"),
            (123456, "123,456"),
            (1234567, "1,234,567"),
        ] {
            assert_eq!(thousands(n), text);
        }
    }
}
