//! Record: the end of every cycle that may write (sync, apply, standby), in one
//! transaction: the run itself (pruned to `[state] keep_runs`), the baselines of users
//! already in step *that changed* (an unchanged one is not rewritten), the scope the sync
//! applied under and the directory basis for the next delta. Changes the portal confirmed
//! during apply were recorded as they happened, in batches (`apply::Writer`); this step
//! never waits for them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::plan::{Baseline, InSync};
use crate::report::{millis, RecordPhase, Report, RunOutcome};
use crate::state::{RunRecord, State, StateError};

/// What the cycle leaves for the record step.
pub struct Facts<'a> {
    /// `sync`, `apply` or `standby`.
    pub command: &'a str,
    pub started_at: &'a str,
    pub duration: Duration,
    /// Users in step whose link and baseline the state should hold; empty unless the
    /// cycle applied.
    pub in_sync: &'a [InSync],
    /// What the state held when the cycle started: baselines and portal ids by
    /// lowercased anchor.
    pub known: &'a HashMap<String, Baseline>,
    pub linked: &'a HashMap<String, String>,
    /// `meta` rows to write (the scope applied under, the delta basis).
    pub meta: Vec<(&'static str, String)>,
    /// Big `meta` rows, streamed (the directory snapshot).
    pub documents: Vec<crate::state::Document<'a>>,
    pub keep_runs: usize,
}

/// Records a cycle that produced a report, with the phases the report holds, and then
/// the record phase itself (how long this took, what it wrote) into the same run row.
pub fn cycle(
    state: &mut State,
    facts: &Facts<'_>,
    report: &Report,
) -> Result<RecordPhase, StateError> {
    let started = Instant::now();
    let changed: Vec<(&str, &str, &str, &Baseline)> = facts
        .in_sync
        .iter()
        .filter(|s| needs_writing(s, facts.known, facts.linked))
        .map(|s| {
            (
                s.anchor.as_str(),
                s.portal_id.as_str(),
                s.user_name.as_str(),
                &s.baseline,
            )
        })
        .collect();
    let meta: Vec<(&str, &str)> = facts.meta.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let id = state.record_cycle(
        &changed,
        &meta,
        &facts.documents,
        &run_of(facts, report),
        facts.keep_runs,
    )?;
    let phase = RecordPhase {
        ms: millis(started.elapsed()),
        users: changed.len(),
    };
    state.set_record_phase(id, &phase)?;
    Ok(phase)
}

/// Records a cycle that failed before it could report (a side unreachable, an incomplete
/// listing, a timeout while reading): the run row, with the error.
pub fn failed(
    state: &mut State,
    command: &str,
    started_at: &str,
    duration: Duration,
    outcome: RunOutcome,
    error: &str,
    keep_runs: usize,
) -> Result<(), StateError> {
    let run = RunRecord {
        started_at: started_at.to_string(),
        finished_at: crate::report::now(),
        command: command.to_string(),
        outcome: outcome.label().to_string(),
        error: Some(error.to_string()),
        duration_ms: millis(duration),
        ..RunRecord::default()
    };
    state.record_run(&run, keep_runs)
}

/// Whether an in-step user's link or baseline differs from what the state holds.
fn needs_writing(
    s: &InSync,
    known: &HashMap<String, Baseline>,
    linked: &HashMap<String, String>,
) -> bool {
    let key = s.anchor.to_ascii_lowercase();
    linked.get(&key) != Some(&s.portal_id) || known.get(&key) != Some(&s.baseline)
}

fn run_of(facts: &Facts<'_>, report: &Report) -> RunRecord {
    let c = |k: &str| report.counts.get(k).copied().unwrap_or(0);
    RunRecord {
        started_at: facts.started_at.to_string(),
        finished_at: report.finished_at.clone(),
        command: facts.command.to_string(),
        outcome: report.outcome.label().to_string(),
        read: Some(report.directory.read.clone()),
        read_reason: report.directory.read_reason.clone(),
        entries_read: report.directory.entries_read,
        created: c("create"),
        adopted: c("adopt"),
        updated: c("update"),
        reactivated: c("reactivate"),
        closed: c("close"),
        skipped: c("skipped"),
        failed: c("failed") + c("rejected"),
        conflicts: c("conflicts"),
        held: report.held.iter().map(|h| h.count).sum(),
        error: report.aborted.clone(),
        duration_ms: millis(facts.duration),
        phases: Some(report.phases.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::{AttrPath, Value};

    fn in_sync(anchor: &str, id: &str, family: &str) -> InSync {
        let mut baseline = Baseline::new();
        baseline.insert(
            AttrPath::parse("name.familyName").unwrap(),
            Some(Value::One(family.into())),
        );
        InSync {
            anchor: anchor.into(),
            portal_id: id.into(),
            user_name: format!("{anchor}@x.se"),
            baseline,
        }
    }

    #[test]
    fn only_in_step_users_whose_link_or_baseline_changed_are_written() {
        let same = in_sync("A-1", "p1", "Berg");
        let new_value = in_sync("a-2", "p2", "Ek");
        let relinked = in_sync("a-3", "p9", "Lund");
        let unknown = in_sync("a-4", "p4", "Ny");
        let known: HashMap<String, Baseline> = [
            ("a-1".to_string(), same.baseline.clone()),
            ("a-2".to_string(), in_sync("a-2", "p2", "Berg").baseline),
            ("a-3".to_string(), relinked.baseline.clone()),
        ]
        .into();
        let linked: HashMap<String, String> = [
            ("a-1".to_string(), "p1".to_string()),
            ("a-2".to_string(), "p2".to_string()),
            ("a-3".to_string(), "p3".to_string()),
        ]
        .into();
        let written: Vec<&str> = [&same, &new_value, &relinked, &unknown]
            .into_iter()
            .filter(|s| needs_writing(s, &known, &linked))
            .map(|s| s.anchor.as_str())
            .collect();
        assert_eq!(written, ["a-2", "a-3", "a-4"]);
    }
}
