use super::*;
use crate::apply::{Applied, Outcome as ApplyOutcome};
use crate::plan::guard::{Held, HeldKind};
use crate::plan::{Change, GroupChange, Plan};
use crate::report::{DirectorySummary, PortalSummary};

/// 2024-05-01T12:00:00Z plus `secs`.
fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_714_564_800 + secs)
}

/// Asserts that the exposition has each of `lines`, exactly.
#[track_caller]
fn assert_lines(render: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            render.lines().any(|l| l == *line),
            "no line {line:?} in:\n{render}"
        );
    }
}

fn held_incremental_cycle() -> CycleFacts {
    CycleFacts {
        read: ReadKind::Incremental,
        outcome: Outcome::Held,
        duration: Duration::from_millis(12_500),
        finished_at: at(0),
        entries_read_directory: 120,
        entries_read_portal: 340,
        applied: vec![(ChangeKind::Create, 3), (ChangeKind::GroupUpdate, 2)],
        failures: vec![(FailureKind::Rejected, 1)],
        held_back: 60,
    }
}

#[test]
fn a_cycle_renders_as_exact_prometheus_samples() {
    let t = Telemetry::new();
    t.observe_cycle(&held_incremental_cycle());
    let out = t.render();
    assert_lines(
        &out,
        &[
            "# TYPE dirsync_cycle_duration_seconds histogram",
            r#"dirsync_cycle_duration_seconds_bucket{read="incremental",outcome="held",le="10"} 0"#,
            r#"dirsync_cycle_duration_seconds_bucket{read="incremental",outcome="held",le="30"} 1"#,
            r#"dirsync_cycle_duration_seconds_bucket{read="incremental",outcome="held",le="+Inf"} 1"#,
            r#"dirsync_cycle_duration_seconds_sum{read="incremental",outcome="held"} 12.5"#,
            r#"dirsync_cycle_duration_seconds_count{read="incremental",outcome="held"} 1"#,
            "# TYPE dirsync_last_success_timestamp_seconds gauge",
            "dirsync_last_success_timestamp_seconds 1714564800.0",
            "# TYPE dirsync_entries_read_total counter",
            r#"dirsync_entries_read_total{side="directory"} 120"#,
            r#"dirsync_entries_read_total{side="portal"} 340"#,
            "# TYPE dirsync_changes_applied_total counter",
            r#"dirsync_changes_applied_total{kind="create"} 3"#,
            r#"dirsync_changes_applied_total{kind="group_update"} 2"#,
            r#"dirsync_changes_applied_total{kind="close"} 0"#,
            "# TYPE dirsync_change_failures_total counter",
            r#"dirsync_change_failures_total{kind="rejected"} 1"#,
            r#"dirsync_change_failures_total{kind="failed"} 0"#,
            "# TYPE dirsync_held_back_changes gauge",
            "dirsync_held_back_changes 60",
        ],
    );
    // The Prometheus text format 0.0.4, not OpenMetrics: no `# EOF`, and the content
    // type says so.
    assert!(!out.contains("# EOF"), "{out}");
    assert_eq!(
        METRICS_CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8"
    );
}

#[test]
fn every_known_series_starts_at_zero() {
    let out = Telemetry::new().render();
    let mut expected = vec![
        r#"dirsync_entries_read_total{side="directory"} 0"#.to_string(),
        r#"dirsync_entries_read_total{side="portal"} 0"#.to_string(),
        "dirsync_last_success_timestamp_seconds 0.0".to_string(),
        "dirsync_held_back_changes 0".to_string(),
    ];
    for kind in ChangeKind::ALL {
        expected.push(format!(
            "dirsync_changes_applied_total{{kind=\"{}\"}} 0",
            kind.label()
        ));
    }
    for kind in FailureKind::ALL {
        expected.push(format!(
            "dirsync_change_failures_total{{kind=\"{}\"}} 0",
            kind.label()
        ));
    }
    assert_lines(
        &out,
        &expected.iter().map(String::as_str).collect::<Vec<_>>(),
    );
}

#[test]
fn counters_add_up_over_cycles_and_a_failed_cycle_keeps_the_last_success_and_holds() {
    let t = Telemetry::new();
    t.observe_cycle(&held_incremental_cycle());
    t.observe_cycle(&CycleFacts {
        read: ReadKind::Full,
        outcome: Outcome::Ok,
        duration: Duration::from_secs(200),
        finished_at: at(600),
        entries_read_directory: 1000,
        entries_read_portal: 340,
        applied: vec![(ChangeKind::Create, 1), (ChangeKind::Close, 4)],
        failures: vec![(FailureKind::Failed, 2)],
        held_back: 7,
    });
    t.observe_cycle(&CycleFacts::failed(Duration::from_secs(30), at(1200)));
    t.observe_cycle(&CycleFacts::interrupted(Duration::from_secs(3), at(1300)));
    let out = t.render();
    assert_lines(
        &out,
        &[
            r#"dirsync_entries_read_total{side="directory"} 1120"#,
            r#"dirsync_entries_read_total{side="portal"} 680"#,
            r#"dirsync_changes_applied_total{kind="create"} 4"#,
            r#"dirsync_changes_applied_total{kind="close"} 4"#,
            r#"dirsync_change_failures_total{kind="failed"} 2"#,
            r#"dirsync_change_failures_total{kind="rejected"} 1"#,
            r#"dirsync_cycle_duration_seconds_count{read="full",outcome="ok"} 1"#,
            r#"dirsync_cycle_duration_seconds_sum{read="full",outcome="ok"} 200.0"#,
            r#"dirsync_cycle_duration_seconds_count{read="unknown",outcome="failed"} 1"#,
            r#"dirsync_cycle_duration_seconds_count{read="unknown",outcome="interrupted"} 1"#,
            // The last success is the ok cycle's end, not the failed one's.
            "dirsync_last_success_timestamp_seconds 1714565400.0",
            // What the last plan held back is still held back.
            "dirsync_held_back_changes 7",
        ],
    );
}

#[test]
fn portal_requests_and_retries_are_counted_by_status() {
    let t = Telemetry::new();
    t.portal_request("GET", Some(200));
    t.portal_request("GET", Some(200));
    t.portal_request("PATCH", Some(503));
    t.portal_request("PATCH", None);
    t.portal_retry(Some(503));
    t.portal_retry(None);
    t.portal_retry(Some(429));
    t.portal_retry(Some(429));
    assert_lines(
        &t.render(),
        &[
            "# TYPE dirsync_portal_requests_total counter",
            r#"dirsync_portal_requests_total{method="GET",status="200"} 2"#,
            r#"dirsync_portal_requests_total{method="PATCH",status="503"} 1"#,
            r#"dirsync_portal_requests_total{method="PATCH",status="error"} 1"#,
            "# TYPE dirsync_portal_retries_total counter",
            r#"dirsync_portal_retries_total{reason="503"} 1"#,
            r#"dirsync_portal_retries_total{reason="error"} 1"#,
            r#"dirsync_portal_retries_total{reason="429"} 2"#,
        ],
    );
}

fn change(action: Action) -> Change {
    Change {
        action,
        anchor: "a1".into(),
        user_name: "ada@example.com".into(),
        dn: Some("uid=ada,ou=people,dc=example,dc=com".into()),
        portal_id: None,
        version: None,
        reason: None,
        fields: Vec::new(),
        set_active: None,
        baseline: crate::plan::Baseline::new(),
        from: None,
    }
}

fn group_change(action: GroupAction) -> GroupChange {
    GroupChange {
        action,
        name: "Fax-Users".into(),
        anchor: "g1".into(),
        portal_id: None,
        rename: None,
        add: Vec::new(),
        remove: Vec::new(),
        reason: None,
        take_over: false,
    }
}

fn held(kind: HeldKind, count: usize) -> Held {
    Held::new(
        kind,
        count,
        "50".into(),
        format!("{count} {} held back", kind.label()),
    )
}

fn status(status: Status) -> ApplyOutcome {
    ApplyOutcome {
        status,
        message: None,
    }
}

fn report(plan: Plan, applied: Option<Applied>, read: &str) -> Report {
    Report::new(
        "sync",
        "2024-05-01T12:00:00Z".into(),
        DirectorySummary {
            url: "ldaps://ldap.example.com".into(),
            users: 40,
            disabled: 2,
            groups: Some(5),
            read: read.into(),
            read_reason: None,
            entries_read: 42,
            domain_controller: None,
        },
        PortalSummary {
            url: "https://portal.example.com/scim/v2/".into(),
            users: 17,
            managed: 15,
            listed: true,
            managed_active: 15,
        },
        plan,
        applied,
        None,
    )
}

#[test]
fn facts_of_a_sync_count_what_the_portal_confirmed_and_what_failed() {
    let plan = Plan {
        changes: vec![
            change(Action::Create),
            change(Action::Update),
            change(Action::Update),
            change(Action::Close),
            change(Action::Reactivate),
        ],
        group_changes: vec![
            group_change(GroupAction::Create),
            group_change(GroupAction::Delete),
        ],
        held: vec![
            held(HeldKind::Closures, 5),
            held(HeldKind::AccessRemovals, 2),
        ],
        ..Plan::default()
    };
    let applied = Applied {
        outcomes: vec![
            status(Status::Applied),
            status(Status::Applied),
            status(Status::Failed),
            status(Status::Rejected),
            status(Status::NotAttempted),
        ],
        group_outcomes: vec![status(Status::Applied), status(Status::Failed)],
        aborted: None,
    };
    let r = report(plan, Some(applied), "incremental");
    let facts = CycleFacts::from_report(&r, Duration::from_secs(9), at(0));
    let count = |k: ChangeKind| {
        facts
            .applied
            .iter()
            .find(|(kind, _)| *kind == k)
            .map(|(_, n)| *n)
    };
    assert_eq!(
        facts,
        CycleFacts {
            read: ReadKind::Incremental,
            outcome: Outcome::Partial,
            duration: Duration::from_secs(9),
            finished_at: at(0),
            entries_read_directory: 42,
            entries_read_portal: 17,
            applied: ChangeKind::ALL
                .iter()
                .map(|&k| (
                    k,
                    match k {
                        ChangeKind::Create | ChangeKind::Update | ChangeKind::GroupCreate => 1,
                        _ => 0,
                    }
                ))
                .collect(),
            failures: vec![
                (FailureKind::Failed, 2),
                (FailureKind::Rejected, 1),
                (FailureKind::NotAttempted, 1),
            ],
            held_back: 7,
        }
    );
    assert_eq!(
        count(ChangeKind::Close),
        Some(0),
        "a rejected close is no close"
    );
    assert_eq!(
        report_reason(&r),
        "changes not applied: 3 failed, 1 rejected by the portal"
    );
}

#[test]
fn a_dry_run_applies_nothing_and_holds_are_not_failures() {
    let plan = Plan {
        changes: vec![change(Action::Create), change(Action::Close)],
        held: vec![held(HeldKind::Closures, 60)],
        ..Plan::default()
    };
    let r = report(plan, None, "full");
    let facts = CycleFacts::from_report(&r, Duration::from_secs(1), at(0));
    assert_eq!(facts.read, ReadKind::Full);
    assert_eq!(facts.outcome, Outcome::Held);
    assert!(facts.applied.iter().all(|(_, n)| *n == 0), "{facts:?}");
    assert!(facts.failures.iter().all(|(_, n)| *n == 0), "{facts:?}");
    assert_eq!(facts.held_back, 60);
    assert_eq!(
        report_reason(&r),
        "changes waiting for an admin's confirmation: 60"
    );
}

#[test]
fn an_empty_directory_is_a_failed_cycle_and_a_clean_one_is_ok() {
    let plan = Plan {
        held: vec![held(HeldKind::EmptySource, 12)],
        ..Plan::default()
    };
    let r = report(plan, Some(Applied::default()), "full");
    assert_eq!(r.outcome, Outcome::Failed);
    assert_eq!(report_reason(&r), "12 empty source held back");

    let r = report(Plan::default(), Some(Applied::default()), "full");
    assert_eq!(r.outcome, Outcome::Ok);
    assert_eq!(report_reason(&r), "");
}

#[test]
fn a_failed_cycle_knows_only_its_duration_and_end() {
    let facts = CycleFacts::failed(Duration::from_secs(4), at(0));
    assert_eq!(facts.outcome, Outcome::Failed);
    assert_eq!(facts.read, ReadKind::Unknown);
    assert_eq!(facts.duration, Duration::from_secs(4));
    assert_eq!(facts.finished_at, at(0));
    assert_eq!(facts.entries_read_directory + facts.entries_read_portal, 0);
    assert!(facts.applied.is_empty() && facts.failures.is_empty());
}
