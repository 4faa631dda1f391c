//! What the daemon tells its monitoring: Prometheus metrics of the cycles and of the portal
//! requests ([`Telemetry`]), whether it is healthy ([`health`]), and the HTTP listener that
//! serves both on `health.listen` ([`server`]).
//!
//! The daemon turns each cycle into [`CycleFacts`] ([`CycleFacts::from_report`], or
//! [`CycleFacts::failed`] when the cycle ended in an error) and hands them to
//! [`Shared::record_cycle`]; the portal client counts its own requests
//! ([`crate::portal::PortalClient::with_telemetry`]).

pub mod health;
pub mod server;

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::apply::Status;
use crate::plan::{Action, GroupAction};
use crate::report::Report;

pub use self::health::{healthz, HealthState, LastCycle};
pub use self::server::{bind, serve, Shared, TelemetryError};

/// The `Content-Type` of [`Telemetry::render`]: the Prometheus text format 0.0.4.
pub const METRICS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the cycle duration buckets, in seconds: from a quick incremental read to
/// the default cycle timeout (30 minutes) and beyond.
const CYCLE_BUCKETS: [f64; 12] = [
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Which read of the directory a cycle made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReadKind {
    /// Every user and group in scope.
    Full,
    /// Only what changed since the last read, and the portal users it concerns.
    Incremental,
    /// The cycle ended before the directory read said which (it failed early).
    Unknown,
}

impl ReadKind {
    pub fn label(self) -> &'static str {
        match self {
            ReadKind::Full => "full",
            ReadKind::Incremental => "incremental",
            ReadKind::Unknown => "unknown",
        }
    }
}

/// How a cycle ended: the report's own judgement ([`Report::outcome`]), one enum for the
/// run history, the reports and the metrics.
pub use crate::report::RunOutcome as Outcome;

/// A kind of change applied to the portal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    Create,
    Adopt,
    Update,
    Reactivate,
    Close,
    GroupCreate,
    GroupUpdate,
    GroupDelete,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 8] = [
        ChangeKind::Create,
        ChangeKind::Adopt,
        ChangeKind::Update,
        ChangeKind::Reactivate,
        ChangeKind::Close,
        ChangeKind::GroupCreate,
        ChangeKind::GroupUpdate,
        ChangeKind::GroupDelete,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ChangeKind::Create => "create",
            ChangeKind::Adopt => "adopt",
            ChangeKind::Update => "update",
            ChangeKind::Reactivate => "reactivate",
            ChangeKind::Close => "close",
            ChangeKind::GroupCreate => "group_create",
            ChangeKind::GroupUpdate => "group_update",
            ChangeKind::GroupDelete => "group_delete",
        }
    }
}

impl From<Action> for ChangeKind {
    fn from(a: Action) -> ChangeKind {
        match a {
            Action::Create => ChangeKind::Create,
            Action::Adopt => ChangeKind::Adopt,
            Action::Update => ChangeKind::Update,
            Action::Reactivate => ChangeKind::Reactivate,
            Action::Close => ChangeKind::Close,
        }
    }
}

impl From<GroupAction> for ChangeKind {
    fn from(a: GroupAction) -> ChangeKind {
        match a {
            GroupAction::Create => ChangeKind::GroupCreate,
            GroupAction::Update => ChangeKind::GroupUpdate,
            GroupAction::Delete => ChangeKind::GroupDelete,
        }
    }
}

/// Why a planned change was not applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A transient failure: planned again next cycle.
    Failed,
    /// The portal refused the data: the entry needs fixing.
    Rejected,
    /// The run stopped before it.
    NotAttempted,
}

impl FailureKind {
    pub const ALL: [FailureKind; 3] = [
        FailureKind::Failed,
        FailureKind::Rejected,
        FailureKind::NotAttempted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Failed => "failed",
            FailureKind::Rejected => "rejected",
            FailureKind::NotAttempted => "not_attempted",
        }
    }

    /// The failure an apply status stands for; `None` for an applied change.
    pub fn of(status: Status) -> Option<FailureKind> {
        match status {
            Status::Applied => None,
            Status::Failed => Some(FailureKind::Failed),
            Status::Rejected => Some(FailureKind::Rejected),
            Status::NotAttempted => Some(FailureKind::NotAttempted),
        }
    }
}

/// Which side of the sync entries were read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Side {
    Directory,
    Portal,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Directory => "directory",
            Side::Portal => "portal",
        }
    }
}

/// Label values are the enums' `label()`s.
macro_rules! label_value {
    ($($t:ty),*) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.label())
            }
        }
    )*};
}
label_value!(ReadKind, Outcome, ChangeKind, FailureKind, Side);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CycleLabels {
    read: ReadKind,
    outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SideLabels {
    side: Side,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    kind: ChangeKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FailureLabels {
    kind: FailureKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    /// The HTTP status, or `error` when no answer came.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RetryLabels {
    /// The HTTP status that was retried, or `error` when no answer came.
    reason: String,
}

/// An HTTP status as a label value; `error` for no answer.
fn status_label(status: Option<u16>) -> String {
    status.map_or_else(|| "error".to_string(), |s| s.to_string())
}

/// What one cycle did, filled by the daemon from its report ([`CycleFacts::from_report`])
/// or from the error ([`CycleFacts::failed`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CycleFacts {
    pub read: ReadKind,
    pub outcome: Outcome,
    pub duration: Duration,
    pub finished_at: SystemTime,
    /// Entries the directory returned.
    pub entries_read_directory: u64,
    /// Resources listed from the portal.
    pub entries_read_portal: u64,
    /// Changes the portal confirmed, per kind (every kind, zeros too).
    pub applied: Vec<(ChangeKind, u64)>,
    /// Changes not applied, per reason (every reason, zeros too).
    pub failures: Vec<(FailureKind, u64)>,
    /// Changes a safety guard held back.
    pub held_back: u64,
}

impl CycleFacts {
    /// The facts of a cycle that produced `report`. A dry run (or a sync a guard turned
    /// into a plan) applied nothing, so it counts no applied change. The portal entries
    /// are its users (the report does not count the groups listed).
    pub fn from_report(report: &Report, duration: Duration, finished_at: SystemTime) -> CycleFacts {
        let read = match report.directory.read.as_str() {
            "full" => ReadKind::Full,
            "incremental" => ReadKind::Incremental,
            _ => ReadKind::Unknown,
        };
        let statuses = report
            .changes
            .iter()
            .filter_map(|c| {
                c.outcome
                    .as_ref()
                    .map(|o| (ChangeKind::from(c.change.action), o))
            })
            .chain(report.group_changes.iter().filter_map(|g| {
                g.outcome
                    .as_ref()
                    .map(|o| (ChangeKind::from(g.change.action), o))
            }))
            .map(|(kind, o)| (kind, o.status))
            .collect::<Vec<_>>();
        let applied = ChangeKind::ALL
            .iter()
            .map(|&k| {
                let n = statuses
                    .iter()
                    .filter(|(kind, s)| *kind == k && *s == Status::Applied)
                    .count();
                (k, n as u64)
            })
            .collect();
        let failures = FailureKind::ALL
            .iter()
            .map(|&f| {
                let n = statuses
                    .iter()
                    .filter(|(_, s)| FailureKind::of(*s) == Some(f))
                    .count();
                (f, n as u64)
            })
            .collect();
        CycleFacts {
            read,
            outcome: report.outcome,
            duration,
            finished_at,
            entries_read_directory: report.directory.entries_read as u64,
            entries_read_portal: report.portal.users as u64,
            applied,
            failures,
            held_back: report.held.iter().map(|h| h.count as u64).sum(),
        }
    }

    /// The facts of a cycle that ended in an error, before a report.
    pub fn failed(duration: Duration, finished_at: SystemTime) -> CycleFacts {
        CycleFacts::ended(Outcome::Failed, duration, finished_at)
    }

    /// The facts of a cycle the daemon stopped (shutdown) before a report.
    pub fn interrupted(duration: Duration, finished_at: SystemTime) -> CycleFacts {
        CycleFacts::ended(Outcome::Interrupted, duration, finished_at)
    }

    fn ended(outcome: Outcome, duration: Duration, finished_at: SystemTime) -> CycleFacts {
        CycleFacts {
            read: ReadKind::Unknown,
            outcome,
            duration,
            finished_at,
            entries_read_directory: 0,
            entries_read_portal: 0,
            applied: Vec::new(),
            failures: Vec::new(),
            held_back: 0,
        }
    }

    /// Whether the cycle got as far as reading the directory and planning (and so knows
    /// what it held back): [`CycleFacts::failed`] and [`CycleFacts::interrupted`] did not.
    fn planned(&self) -> bool {
        self.read != ReadKind::Unknown
    }
}

/// A one-line reason for how a cycle that produced `report` ended, for `/healthz` and
/// [`Shared::record_cycle`]; empty when all went well.
pub fn report_reason(report: &Report) -> String {
    let count = |k: &str| report.counts.get(k).copied().unwrap_or(0);
    let held: usize = report.held.iter().map(|h| h.count).sum();
    match report.outcome {
        Outcome::Failed => report
            .held
            .iter()
            .find(|h| h.kind == crate::plan::guard::HeldKind::EmptySource)
            .map_or_else(String::new, |h| h.message.clone()),
        Outcome::Partial => match &report.aborted {
            Some(why) => format!("the run stopped early: {why}"),
            None => format!(
                "changes not applied: {} failed, {} rejected by the portal",
                count("failed"),
                count("rejected")
            ),
        },
        Outcome::Held => format!("changes waiting for an admin's confirmation: {held}"),
        Outcome::Interrupted | Outcome::TimedOut => report.aborted.clone().unwrap_or_default(),
        Outcome::Ok => String::new(),
    }
}

/// The daemon's Prometheus metrics.
pub struct Telemetry {
    registry: Registry,
    cycle_duration: Family<CycleLabels, Histogram>,
    last_success: Gauge<f64, AtomicU64>,
    entries_read: Family<SideLabels, Counter>,
    changes_applied: Family<ChangeLabels, Counter>,
    change_failures: Family<FailureLabels, Counter>,
    held_back: Gauge,
    portal_requests: Family<RequestLabels, Counter>,
    portal_retries: Family<RetryLabels, Counter>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").finish_non_exhaustive()
    }
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let mut registry = Registry::default();
        let cycle_duration =
            Family::<CycleLabels, Histogram>::new_with_constructor(cycle_histogram as fn() -> _);
        registry.register_with_unit(
            "dirsync_cycle_duration",
            "How long sync cycles took, by directory read and outcome",
            Unit::Seconds,
            cycle_duration.clone(),
        );
        let last_success = Gauge::<f64, AtomicU64>::default();
        registry.register_with_unit(
            "dirsync_last_success_timestamp",
            "When the last successful cycle (ok, or changes held back for confirmation) ended, \
             in seconds since the Unix epoch; 0 before the first",
            Unit::Seconds,
            last_success.clone(),
        );
        let entries_read = Family::<SideLabels, Counter>::default();
        registry.register(
            "dirsync_entries_read",
            "Entries read from the directory and resources listed from the portal",
            entries_read.clone(),
        );
        let changes_applied = Family::<ChangeLabels, Counter>::default();
        registry.register(
            "dirsync_changes_applied",
            "Changes the portal confirmed, by kind",
            changes_applied.clone(),
        );
        let change_failures = Family::<FailureLabels, Counter>::default();
        registry.register(
            "dirsync_change_failures",
            "Planned changes not applied: failed (retried next cycle), rejected by the \
             portal (fix the entry), not attempted (the run stopped early)",
            change_failures.clone(),
        );
        let held_back = Gauge::default();
        registry.register(
            "dirsync_held_back_changes",
            "Changes a safety guard held back in the last cycle that planned, until an \
             admin confirms them",
            held_back.clone(),
        );
        let portal_requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "dirsync_portal_requests",
            "SCIM requests sent to the portal, by method and HTTP status (error: no answer)",
            portal_requests.clone(),
        );
        let portal_retries = Family::<RetryLabels, Counter>::default();
        registry.register(
            "dirsync_portal_retries",
            "Portal requests sent again after a passing failure, by the HTTP status that \
             failed (error: no answer)",
            portal_retries.clone(),
        );
        // Known series start at 0, so that rate() and alerts see them before they move.
        for side in [Side::Directory, Side::Portal] {
            entries_read.get_or_create(&SideLabels { side }).inc_by(0);
        }
        for kind in ChangeKind::ALL {
            changes_applied
                .get_or_create(&ChangeLabels { kind })
                .inc_by(0);
        }
        for kind in FailureKind::ALL {
            change_failures
                .get_or_create(&FailureLabels { kind })
                .inc_by(0);
        }
        Telemetry {
            registry,
            cycle_duration,
            last_success,
            entries_read,
            changes_applied,
            change_failures,
            held_back,
            portal_requests,
            portal_retries,
        }
    }

    /// After each cycle (also failed or interrupted ones).
    pub fn observe_cycle(&self, facts: &CycleFacts) {
        self.cycle_duration
            .get_or_create(&CycleLabels {
                read: facts.read,
                outcome: facts.outcome,
            })
            .observe(facts.duration.as_secs_f64());
        if facts.outcome.is_success() {
            let at = facts
                .finished_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            self.last_success.set(at.as_secs_f64());
        }
        for (side, n) in [
            (Side::Directory, facts.entries_read_directory),
            (Side::Portal, facts.entries_read_portal),
        ] {
            self.entries_read
                .get_or_create(&SideLabels { side })
                .inc_by(n);
        }
        for &(kind, n) in &facts.applied {
            self.changes_applied
                .get_or_create(&ChangeLabels { kind })
                .inc_by(n);
        }
        for &(kind, n) in &facts.failures {
            self.change_failures
                .get_or_create(&FailureLabels { kind })
                .inc_by(n);
        }
        // A cycle that failed before planning knows nothing of what is held back: the
        // changes held by the last plan are still waiting.
        if facts.planned() {
            self.held_back
                .set(i64::try_from(facts.held_back).unwrap_or(i64::MAX));
        }
    }

    /// One request sent to the portal, and the HTTP status it got (`None`: no answer).
    pub fn portal_request(&self, method: &str, status: Option<u16>) {
        self.portal_requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                status: status_label(status),
            })
            .inc();
    }

    /// A portal request about to be sent again after the status `reason` (`None`: no answer).
    pub fn portal_retry(&self, reason: Option<u16>) {
        self.portal_retries
            .get_or_create(&RetryLabels {
                reason: status_label(reason),
            })
            .inc();
    }

    /// Prometheus text exposition format (0.0.4): serve it as [`METRICS_CONTENT_TYPE`].
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing to a String does not fail; a metric that cannot be encoded would.
            tracing::warn!(error = %e, "the metrics could not all be rendered");
        }
        out
    }
}

fn cycle_histogram() -> Histogram {
    Histogram::new(CYCLE_BUCKETS)
}

#[cfg(test)]
mod tests;
