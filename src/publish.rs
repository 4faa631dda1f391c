//! What follows every cycle that records a run (`sync`, `apply`, the daemon's cycles):
//! its report is written to `[reports] dir` ([`archive`]) and, with `[mail]`, mailed
//! when it needs an administrator ([`mail`]). A cycle that failed before it could report
//! gets a report too, saying what failed. Neither step fails the cycle: problems are
//! logged.

use std::borrow::Cow;
use std::time::SystemTime;

use crate::archive;
use crate::config::Config;
use crate::cycle::{CycleError, Kind};
use crate::mail::{self, Failure};
use crate::plan::Plan;
use crate::report::{DirectorySummary, PortalSummary, Report, RunOutcome};

/// Where a failed cycle failed, for the mail condition.
pub fn failure_of(e: &CycleError) -> Option<Failure> {
    match e {
        CycleError::Source(_) => Some(Failure::Directory),
        CycleError::Portal(_) => Some(Failure::Portal),
        CycleError::State(_) => Some(Failure::State),
        CycleError::Saved(_) => Some(Failure::SavedPlan),
        CycleError::Timeout(_) => Some(Failure::Timeout),
        CycleError::Interrupted => None,
    }
}

/// The report of a cycle that ended in an error before it could report: nothing was
/// planned or changed; `aborted` says why.
pub fn failed_report(config: &Config, kind: Kind, started_at: &str, e: &CycleError) -> Report {
    let mut report = Report::new(
        kind.label(),
        started_at.to_string(),
        DirectorySummary {
            url: config.source.url.to_string(),
            users: 0,
            disabled: 0,
            groups: None,
            read: "none".into(),
            read_reason: None,
            entries_read: 0,
            domain_controller: None,
        },
        PortalSummary {
            url: config.portal.url.to_string(),
            users: 0,
            managed: 0,
            managed_active: 0,
            listed: false,
        },
        Plan::default(),
        None,
        None,
    );
    report.dry_run = !matches!(kind, Kind::Sync | Kind::Apply);
    report.outcome = match e {
        CycleError::Timeout(_) => RunOutcome::TimedOut,
        CycleError::Interrupted => RunOutcome::Interrupted,
        _ => RunOutcome::Failed,
    };
    report.aborted = Some(e.to_string());
    report.notes.push(format!(
        "the cycle ended before it could plan, so nothing was changed: {e}"
    ));
    report
}

/// The report a cycle leaves, and why it failed if it did.
pub fn report_of<'a>(
    config: &Config,
    kind: Kind,
    started_at: &str,
    result: &'a Result<Report, CycleError>,
) -> (Cow<'a, Report>, Option<Failure>) {
    match result {
        Ok(r) => (Cow::Borrowed(r), None),
        Err(e) => (
            Cow::Owned(failed_report(config, kind, started_at, e)),
            failure_of(e),
        ),
    }
}

/// Writes the report to `[reports] dir`, logging what happened.
pub fn archive(config: &Config, report: &Report) {
    match crate::apply::blocking(|| archive::write(&config.reports, report, SystemTime::now())) {
        Ok(w) => tracing::info!(
            json = %w.json.display(),
            html = %w.html.display(),
            removed = w.removed.len(),
            "report written"
        ),
        Err(e) => tracing::warn!(error = %e, "the cycle's report was not written"),
    }
}

/// Mails the report if `[mail]` is set and its condition is new, changed or resolved.
pub async fn mail(config: &Config, report: &Report, failure: Option<Failure>) {
    if let Some(m) = &config.mail {
        mail::after_cycle(m, &config.state_path, report, failure).await;
    }
}

/// Both, for the one-shot commands.
pub async fn publish(
    config: &Config,
    kind: Kind,
    started_at: &str,
    result: &Result<Report, CycleError>,
) {
    let (report, failure) = report_of(config, kind, started_at, result);
    archive(config, &report);
    mail(config, &report, failure).await;
}
