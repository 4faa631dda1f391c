//! The human-readable report. It says everything the JSON says (a test checks it):
//! what was held back and why first, then what needs an administrator and what failed,
//! then the changes per action, each with its fields `old → new` and their reasons.

use std::fmt::Write;

use super::{outcome_text, Report};
use crate::apply::Outcome;
use crate::mapping::Value;
use crate::plan::groups::Member;
use crate::plan::guard::Held;
use crate::plan::links::adopt_hint;
use crate::plan::{Action, Change, GroupAction, GroupChange};

const ABSENT: &str = "(none)";

pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    header(&mut out, r);
    for h in &r.held {
        held(&mut out, h);
    }
    if let Some(a) = &r.aborted {
        let _ = writeln!(out, "\nSTOPPED EARLY: {a}");
    }
    if !r.needs_admin.is_empty() {
        let _ = writeln!(
            out,
            "\nNeeds an administrator ({} {}):",
            r.needs_admin.len(),
            plural(r.needs_admin.len(), "field", "fields")
        );
        for n in &r.needs_admin {
            let _ = writeln!(
                out,
                "  {}: {}: {} → {} — {}",
                n.user_name,
                n.path,
                show(&n.old),
                show(&n.new),
                n.reason
            );
            let _ = writeln!(out, "      anchor: {}", n.anchor);
        }
    }
    let failures = r.failures();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\nFailed or refused by the portal ({} {}; listed under their action too):",
            failures.len(),
            plural(failures.len(), "change", "changes")
        );
        for c in failures {
            let _ = writeln!(
                out,
                "  {}: {} — {}",
                c.change.user_name,
                c.change.action.label(),
                outcome_text(c.outcome.as_ref())
            );
        }
    }

    if let Some(none) = r.no_changes_text() {
        let _ = writeln!(out, "\n{none}");
    }
    for (action, changes) in r.by_action() {
        let _ = writeln!(out, "\n{} ({}):", heading(action), changes.len());
        for c in changes {
            change(&mut out, &c.change, c.outcome.as_ref(), false);
        }
    }
    if !r.group_changes.is_empty() {
        let _ = writeln!(out, "\nPortal groups ({}):", r.group_changes.len());
        for g in &r.group_changes {
            group_change(&mut out, &g.change, g.outcome.as_ref());
        }
    }
    if !r.conflicts.is_empty() {
        let _ = writeln!(out, "\nConflicts: changed in both the directory and the portal; the portal value was kept ({}):", r.conflicts.len());
        for c in &r.conflicts {
            let _ = writeln!(
                out,
                "  {}: {}: last synced {}, directory now {}, portal now {}",
                c.user_name,
                c.path,
                show(&c.last_synced),
                show(&c.directory),
                show(&c.portal)
            );
            let _ = writeln!(out, "      anchor: {}", c.anchor);
        }
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(out, "\nSkipped directory entries ({}):", r.skipped.len());
        for s in &r.skipped {
            let _ = writeln!(out, "  {}: {}", s.dn, s.problem);
        }
    }
    let (orphans, adopted) = r.orphans();
    if !orphans.is_empty() {
        let _ = writeln!(
            out,
            "\nPortal users with an externalId dirsync does not manage ({}):",
            orphans.len()
        );
        for o in &orphans {
            let _ = writeln!(
                out,
                "  {} (portal id {}, externalId {})",
                o.user_name, o.portal_id, o.external_id
            );
        }
        let _ = writeln!(
            out,
            "  No directory user has these anchors. {}.",
            adopt_hint(&r.dirsync())
        );
    }
    if !adopted.is_empty() {
        let _ = writeln!(
            out,
            "\nTaken over with --adopt-orphans, now managed by dirsync ({}):",
            adopted.len()
        );
        for o in &adopted {
            let _ = writeln!(
                out,
                "  {} (portal id {}, externalId {})",
                o.user_name, o.portal_id, o.external_id
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in &r.notes {
            let _ = writeln!(out, "  {n}");
        }
    }
    summary(&mut out, r);
    let _ = writeln!(
        out,
        "\nPhases (the directory and the portal are read at the same time):"
    );
    for (phase, took, counted) in r.phases.lines(r.dry_run) {
        let _ = writeln!(out, "  {phase:<15} {took:>10}  {counted}");
    }
    out
}

fn header(out: &mut String, r: &Report) {
    let _ = writeln!(out, "{} — {}", r.title(), r.finished_at);
    let _ = writeln!(
        out,
        "started {}, finished {}{}; report schema {}",
        r.started_at,
        r.finished_at,
        r.config
            .as_ref()
            .map(|c| format!("; config {c}"))
            .unwrap_or_default(),
        r.schema_version
    );
    let _ = writeln!(
        out,
        "directory {}: {} users in scope ({} disabled){}",
        r.directory.url,
        r.directory.users,
        r.directory.disabled,
        r.directory
            .groups
            .map(|g| format!(", {g} groups"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "          {}: {} entries read",
        r.directory.read_text(),
        r.directory.entries_read
    );
    if let Some(dc) = r.directory.domain_controller_text() {
        let _ = writeln!(out, "          {dc}");
    }
    let _ = writeln!(
        out,
        "portal    {}: {}",
        r.portal.url,
        r.portal.counts_text()
    );
    let _ = writeln!(out, "outcome   {}", outcome_words(r));
}

/// The run's outcome, as the JSON names it, with what it means.
pub(super) fn outcome_words(r: &Report) -> String {
    use super::RunOutcome;
    let what = match r.outcome {
        RunOutcome::Ok if r.dry_run => "everything planned is listed below",
        RunOutcome::Ok => "everything planned was applied",
        RunOutcome::Held => "some changes are held back until an administrator confirms them",
        RunOutcome::Partial => "some changes failed; they are planned again next cycle",
        RunOutcome::Failed => "the cycle needs a look (see below)",
        RunOutcome::Interrupted => "dirsync was asked to stop before it finished",
        RunOutcome::TimedOut => "the cycle ran out of time before it finished",
    };
    format!(
        "{} ({what}; exit code {})",
        r.outcome.label(),
        r.exit_code()
    )
}

fn held(out: &mut String, h: &Held) {
    let _ = writeln!(
        out,
        "\nHELD BACK ({}): {} (limit: {})",
        h.kind.label(),
        h.kind.counted(h.count),
        h.limit
    );
    for line in h.message.lines() {
        let _ = writeln!(out, "  {line}");
    }
    if let Some(confirm) = h
        .confirm
        .as_ref()
        .filter(|c| !h.message.contains(c.as_str()))
    {
        let _ = writeln!(out, "  To release exactly these, run: {confirm}");
    }
    for m in &h.moved {
        let _ = writeln!(out, "  - {m}");
    }
    for c in &h.changes {
        change(out, c, None, true);
    }
    for g in &h.group_changes {
        group_change(out, g, None);
    }
}

/// One user's change: the login, what happens and why, where it comes from, and each
/// field `old → new` with its reason. `with_action` names the action (in held-back lists).
fn change(out: &mut String, ch: &Change, outcome: Option<&Outcome>, with_action: bool) {
    let what = if with_action {
        let active = match ch.set_active {
            Some(false) => " (active: false)",
            _ => "",
        };
        format!(": would {}{active}", ch.action.label())
    } else {
        String::new()
    };
    let why = ch
        .reason
        .as_ref()
        .map(|r| format!(" — {r}"))
        .unwrap_or_default();
    let status = outcome
        .map(|o| format!("  [{}]", outcome_text(Some(o))))
        .unwrap_or_default();
    let _ = writeln!(out, "  {}{what}{why}{status}", ch.user_name);
    if let Some(dn) = &ch.dn {
        let _ = writeln!(out, "      dn: {dn}");
    }
    let _ = writeln!(
        out,
        "      anchor: {}{}{}",
        ch.anchor,
        ch.portal_id
            .as_ref()
            .map(|p| format!(", portal id: {p}"))
            .unwrap_or_default(),
        ch.version
            .as_ref()
            .map(|v| format!(", version: {v}"))
            .unwrap_or_default()
    );
    for f in &ch.fields {
        let why = f
            .why
            .map(|w| format!("  ({})", w.label()))
            .unwrap_or_default();
        let detail = f
            .detail
            .as_ref()
            .map(|d| format!(" [{d}]"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "      {}: {} → {}{why}{detail}",
            f.path,
            show(&f.old),
            show(&f.new)
        );
    }
}

fn group_change(out: &mut String, c: &GroupChange, outcome: Option<&Outcome>) {
    let status = outcome
        .map(|o| format!("  [{}]", outcome_text(Some(o))))
        .unwrap_or_default();
    let what = match c.action {
        GroupAction::Create => format!("create {}", c.name),
        GroupAction::Update if c.take_over => format!("take over {}", c.name),
        GroupAction::Update => format!("update {}", c.name),
        GroupAction::Delete => format!("delete {}", c.name),
    };
    let why = c
        .reason
        .as_ref()
        .map(|r| format!(" — {r}"))
        .unwrap_or_default();
    let _ = writeln!(out, "  {what}{why}{status}");
    let _ = writeln!(
        out,
        "      anchor: {}{}",
        c.anchor,
        c.portal_id
            .as_ref()
            .map(|p| format!(", portal id: {p}"))
            .unwrap_or_default()
    );
    if let Some((old, new)) = &c.rename {
        let _ = writeln!(out, "      rename: {old:?} → {new:?}");
    }
    for m in &c.add {
        let _ = writeln!(out, "      + {}", member(m));
    }
    for m in &c.remove {
        let _ = writeln!(out, "      - {}", member(m));
    }
}

/// `anna@example.se (anchor …, via group IT-Leads → Sales)`.
fn member(m: &Member) -> String {
    let mut about = Vec::new();
    if let Some(a) = &m.anchor {
        about.push(format!("anchor {a}"));
    }
    if let Some(p) = &m.portal_id {
        about.push(format!("portal id {p}"));
    }
    if let Some(v) = &m.via {
        about.push(format!("via group {v}"));
    }
    if about.is_empty() {
        m.user_name.clone()
    } else {
        format!("{} ({})", m.user_name, about.join(", "))
    }
}

fn summary(out: &mut String, r: &Report) {
    let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
    let verb = if r.dry_run { "planned" } else { "applied" };
    let _ = writeln!(
        out,
        "\nSummary ({verb}): {} create, {} adopt, {} update, {} reactivate, {} close",
        c("create"),
        c("adopt"),
        c("update"),
        c("reactivate"),
        c("close"),
    );
    let _ = writeln!(
        out,
        "  portal groups: {} create, {} update, {} delete",
        c("group_create"),
        c("group_update"),
        c("group_delete")
    );
    let _ = writeln!(
        out,
        "  {} held back by a guard, {} directory entries skipped, {} {} needing an administrator, \
         {} {} changed on both sides (portal value kept)",
        c("held"),
        c("skipped"),
        c("needs_admin"),
        plural(c("needs_admin"), "field", "fields"),
        c("conflicts"),
        plural(c("conflicts"), "field", "fields"),
    );
    let _ = writeln!(
        out,
        "  {} refused by the portal, {} failed (planned again next cycle); orphans: {} left alone, {} taken over",
        c("rejected"),
        c("failed"),
        c("orphans"),
        c("orphans_adopted"),
    );
}

fn heading(a: Action) -> &'static str {
    match a {
        Action::Create => "Create",
        Action::Adopt => "Adopt (existing portal users now managed)",
        Action::Update => "Update",
        Action::Reactivate => "Reactivate",
        Action::Close => "Close (active: false)",
    }
}

fn plural(n: usize, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn show(v: &Option<Value>) -> String {
    v.as_ref()
        .map_or_else(|| ABSENT.to_string(), Value::to_string)
}
