//! The human-readable report.

use std::fmt::Write;

use super::Report;
use crate::apply::Status;
use crate::mapping::Value;
use crate::plan::links::ADOPT_HINT;
use crate::plan::{Action, GroupAction, Why};

const ABSENT: &str = "(none)";

pub fn render_text(r: &Report) -> String {
    let mut out = String::new();
    let title = match (r.dry_run, r.command.as_str()) {
        (true, "sync") => "dirsync sync (held back: nothing was applied, see below)",
        (true, _) => "dirsync plan (dry run: nothing was changed)",
        (false, _) => "dirsync sync",
    };
    let _ = writeln!(out, "{title} — {}", r.finished_at);
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
    let why = r
        .directory
        .read_reason
        .as_ref()
        .map(|w| format!(" ({w})"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "          {} read{why}: {} entries read",
        r.directory.read, r.directory.entries_read
    );
    if let Some(dc) = r.directory.domain_controller_text() {
        let _ = writeln!(out, "          {dc}");
    }
    let _ = writeln!(
        out,
        "portal    {}: {} users, {} managed by dirsync",
        r.portal.url, r.portal.users, r.portal.managed
    );

    if r.changes.is_empty() && r.group_changes.is_empty() {
        let _ = writeln!(out, "\nNo changes: the portal matches the directory.");
    }
    for (action, changes) in r.by_action() {
        let _ = writeln!(out, "\n{} ({}):", heading(action), changes.len());
        for c in changes {
            let ch = &c.change;
            let status = match &c.outcome {
                None => String::new(),
                Some(o) => match o.status {
                    Status::Applied => "  [done]".into(),
                    Status::Rejected => {
                        format!("  [REJECTED: {}]", o.message.as_deref().unwrap_or(""))
                    }
                    Status::Failed => format!("  [FAILED: {}]", o.message.as_deref().unwrap_or("")),
                    Status::NotAttempted => "  [not attempted]".into(),
                },
            };
            let why = ch
                .reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {}{why}{status}", ch.user_name);
            if let Some(dn) = &ch.dn {
                let _ = writeln!(out, "      dn: {dn}");
            }
            for f in &ch.fields {
                let why = match f.why {
                    Some(w @ (Why::RevertedPortalEdit | Why::DirectoryChange)) => {
                        format!("  ({})", w.label())
                    }
                    _ => String::new(),
                };
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
    }

    if !r.group_changes.is_empty() {
        let _ = writeln!(out, "\nPortal groups ({}):", r.group_changes.len());
        for g in &r.group_changes {
            let c = &g.change;
            let status = match &g.outcome {
                None => String::new(),
                Some(o) => match o.status {
                    Status::Applied => match &o.message {
                        Some(m) => format!("  [done; {m}]"),
                        None => "  [done]".into(),
                    },
                    _ => format!("  [{:?}: {}]", o.status, o.message.as_deref().unwrap_or(""))
                        .to_uppercase(),
                },
            };
            let what = match c.action {
                GroupAction::Create => format!("create {} with {} members", c.name, c.add.len()),
                GroupAction::Update => format!("update {}", c.name),
                GroupAction::Delete => format!("delete {}", c.name),
            };
            let why = c
                .reason
                .as_ref()
                .map(|r| format!(" — {r}"))
                .unwrap_or_default();
            let _ = writeln!(out, "  {what}{why}{status}");
            if let Some((old, new)) = &c.rename {
                let _ = writeln!(out, "      rename: {old:?} → {new:?}");
            }
            if c.action == GroupAction::Update {
                for m in &c.add {
                    let _ = writeln!(out, "      + {}", m.user_name);
                }
                for m in &c.remove {
                    let _ = writeln!(out, "      - {}", m.user_name);
                }
            }
        }
    }
    if !r.needs_admin.is_empty() {
        let _ = writeln!(out, "\nNeeds an administrator ({}):", r.needs_admin.len());
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
        let _ = writeln!(out, "  No directory user has these anchors. {ADOPT_HINT}.");
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
    for h in &r.held {
        let _ = writeln!(out, "\nHELD BACK ({}): {}", h.kind.label(), h.message);
    }
    if let Some(a) = &r.aborted {
        let _ = writeln!(out, "\nSTOPPED EARLY: {a}");
    }
    let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
    let verb = if r.dry_run { "planned" } else { "applied" };
    let _ = writeln!(
        out,
        "\nSummary ({verb}): {} create, {} adopt, {} update, {} reactivate, {} close; {} skipped, {} needs admin, {} conflicts, {} rejected, {} failed",
        c("create"),
        c("adopt"),
        c("update"),
        c("reactivate"),
        c("close"),
        c("skipped"),
        c("needs_admin"),
        c("conflicts"),
        c("rejected"),
        c("failed"),
    );
    if c("orphans") > 0 {
        let _ = writeln!(
            out,
            "Orphans: {} portal users with an externalId dirsync does not manage (see above)",
            c("orphans")
        );
    }
    if !r.group_changes.is_empty() {
        let _ = writeln!(
            out,
            "Portal groups ({verb}): {} create, {} update, {} delete",
            c("group_create"),
            c("group_update"),
            c("group_delete")
        );
    }
    let _ = writeln!(
        out,
        "\nPhases (the directory and the portal are read at the same time):"
    );
    for (phase, took, counted) in r.phases.lines(r.dry_run) {
        let _ = writeln!(out, "  {phase:<15} {took:>10}  {counted}");
    }
    out
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

fn show(v: &Option<Value>) -> String {
    v.as_ref()
        .map_or_else(|| ABSENT.to_string(), Value::to_string)
}
