//! The report as one self-contained HTML page (inline CSS, no scripts, no external
//! resources), to open in a browser or attach to a mail.

use std::fmt::Write;

use super::Report;
use crate::apply::Status;
use crate::mapping::Value;
use crate::plan::links::ADOPT_HINT;
use crate::plan::GroupAction;

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn show(v: &Option<Value>) -> String {
    escape(
        &v.as_ref()
            .map_or_else(|| "(none)".to_string(), Value::to_string),
    )
}

const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#222}\
h1{font-size:1.4em}h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ccc}\
table{border-collapse:collapse;width:100%}td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}\
th{background:#f4f4f4}.held{background:#fff3cd;border:1px solid #e0c060;padding:8px;white-space:pre-wrap}\
.bad{color:#a00}.ok{color:#070}.muted{color:#666}code{font-size:.95em}";

pub fn render_html(r: &Report) -> String {
    let mut o = String::new();
    let title = if r.dry_run {
        "dirsync plan (dry run)"
    } else {
        "dirsync sync"
    };
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} {}</title><style>{STYLE}</style></head><body>\n",
        escape(&r.finished_at)
    );
    let _ = writeln!(o, "<h1>{title}</h1>");
    let _ = writeln!(
        o,
        "<p class=\"muted\">{} · directory <code>{}</code>: {} users in scope ({} disabled), {} read, {} entries · portal <code>{}</code>: {} users, {} managed</p>",
        escape(&r.finished_at),
        escape(&r.directory.url),
        r.directory.users,
        r.directory.disabled,
        escape(&r.directory.read),
        r.directory.entries_read,
        escape(&r.portal.url),
        r.portal.users,
        r.portal.managed
    );
    if let Some(why) = &r.directory.read_reason {
        let _ = writeln!(
            o,
            "<p class=\"muted\">{} read: {}</p>",
            escape(&r.directory.read),
            escape(why)
        );
    }
    if let Some(dc) = r.directory.domain_controller_text() {
        let _ = writeln!(o, "<p class=\"muted\">{}</p>", escape(&dc));
    }
    for h in &r.held {
        let _ = writeln!(
            o,
            "<div class=\"held\"><b>Held back ({}):</b> {}</div>",
            escape(h.kind.label()),
            escape(&h.message)
        );
    }
    if let Some(a) = &r.aborted {
        let _ = writeln!(
            o,
            "<div class=\"held bad\"><b>Stopped early:</b> {}</div>",
            escape(a)
        );
    }

    let _ = writeln!(o, "<h2>Summary</h2><table><tr>");
    let keys = [
        "create",
        "adopt",
        "update",
        "reactivate",
        "close",
        "skipped",
        "needs_admin",
        "conflicts",
        "rejected",
        "failed",
    ];
    for k in keys {
        let _ = write!(o, "<th>{}</th>", k.replace('_', " "));
    }
    let _ = writeln!(o, "</tr><tr>");
    for k in keys {
        let _ = write!(o, "<td>{}</td>", r.counts.get(k).copied().unwrap_or(0));
    }
    let _ = writeln!(o, "</tr></table>");

    for (action, changes) in r.by_action() {
        let _ = writeln!(o, "<h2>{} ({})</h2><table><tr><th>user</th><th>why</th><th>field</th><th>old</th><th>new</th><th>outcome</th></tr>", action.label(), changes.len());
        for c in changes {
            let ch = &c.change;
            let outcome = match &c.outcome {
                None => String::from("<span class=\"muted\">planned</span>"),
                Some(out) => {
                    let class = if out.status == Status::Applied {
                        "ok"
                    } else {
                        "bad"
                    };
                    format!(
                        "<span class=\"{class}\">{:?}</span> {}",
                        out.status,
                        escape(out.message.as_deref().unwrap_or(""))
                    )
                }
            };
            let rows = ch.fields.len().max(1);
            let _ = write!(
                o,
                "<tr><td rowspan=\"{rows}\">{}<br><span class=\"muted\">{}</span></td><td rowspan=\"{rows}\">{}</td>",
                escape(&ch.user_name),
                escape(ch.dn.as_deref().unwrap_or("")),
                escape(ch.reason.as_deref().unwrap_or(""))
            );
            if ch.fields.is_empty() {
                let _ = writeln!(o, "<td></td><td></td><td></td><td>{outcome}</td></tr>");
            }
            for (i, f) in ch.fields.iter().enumerate() {
                if i > 0 {
                    let _ = write!(o, "<tr>");
                }
                let note = f
                    .why
                    .map(|w| format!(" <span class=\"muted\">({})</span>", w.label()))
                    .unwrap_or_default();
                let _ = write!(
                    o,
                    "<td><code>{}</code>{note}</td><td>{}</td><td>{}</td>",
                    escape(&f.path.to_string()),
                    show(&f.old),
                    show(&f.new)
                );
                if i == 0 {
                    let _ = write!(o, "<td rowspan=\"{rows}\">{outcome}</td>");
                }
                let _ = writeln!(o, "</tr>");
            }
        }
        let _ = writeln!(o, "</table>");
    }

    if !r.group_changes.is_empty() {
        let _ = writeln!(o, "<h2>Portal groups</h2><table><tr><th>group</th><th>change</th><th>members added</th><th>members removed</th></tr>");
        for g in &r.group_changes {
            let c = &g.change;
            let what = match c.action {
                GroupAction::Create => "create",
                GroupAction::Update => "update",
                GroupAction::Delete => "delete",
            };
            let names = |ms: &[crate::plan::groups::Member]| {
                escape(
                    &ms.iter()
                        .map(|m| m.user_name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                )
            };
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{what}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.name),
                names(&c.add),
                names(&c.remove)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    if !r.conflicts.is_empty() {
        let _ = writeln!(o, "<h2>Conflicts (portal value kept)</h2><table><tr><th>user</th><th>field</th><th>last synced</th><th>directory</th><th>portal</th></tr>");
        for c in &r.conflicts {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&c.user_name),
                escape(&c.path.to_string()),
                show(&c.last_synced),
                show(&c.directory),
                show(&c.portal)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    if !r.needs_admin.is_empty() {
        let _ = writeln!(o, "<h2>Needs an administrator</h2><table><tr><th>user</th><th>field</th><th>portal</th><th>directory</th><th>why</th></tr>");
        for n in &r.needs_admin {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&n.user_name),
                escape(&n.path.to_string()),
                show(&n.old),
                show(&n.new),
                escape(&n.reason)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    if !r.skipped.is_empty() {
        let _ = writeln!(
            o,
            "<h2>Skipped directory entries</h2><table><tr><th>entry</th><th>problem</th></tr>"
        );
        for s in &r.skipped {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(&s.dn),
                escape(&s.problem)
            );
        }
        let _ = writeln!(o, "</table>");
    }
    let (orphans, adopted) = r.orphans();
    for (list, title, hint) in [
        (
            &orphans,
            "Portal users with an externalId dirsync does not manage",
            Some(ADOPT_HINT),
        ),
        (
            &adopted,
            "Taken over with --adopt-orphans, now managed by dirsync",
            None,
        ),
    ] {
        if list.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "<h2>{} ({})</h2><table><tr><th>user</th><th>portal id</th><th>externalId</th></tr>",
            escape(title),
            list.len()
        );
        for u in list {
            let _ = writeln!(
                o,
                "<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>",
                escape(&u.user_name),
                escape(&u.portal_id),
                escape(&u.external_id)
            );
        }
        let _ = writeln!(o, "</table>");
        if let Some(hint) = hint {
            let _ = writeln!(
                o,
                "<p>No directory user has these anchors. {}.</p>",
                escape(hint)
            );
        }
    }
    if !r.notes.is_empty() {
        let _ = writeln!(o, "<h2>Notes</h2><ul>");
        for n in &r.notes {
            let _ = writeln!(o, "<li>{}</li>", escape(n));
        }
        let _ = writeln!(o, "</ul>");
    }
    let _ = writeln!(
        o,
        "<h2>Phases</h2><p class=\"muted\">The directory and the portal are read at the same time.</p>\
         <table><tr><th>phase</th><th>took</th><th>counted</th></tr>"
    );
    for (phase, took, counted) in r.phases.lines(r.dry_run) {
        let _ = writeln!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(phase),
            escape(&took),
            escape(&counted)
        );
    }
    let _ = writeln!(o, "</table>");
    let _ = writeln!(o, "</body></html>");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn everything_from_the_directory_is_escaped() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }
}
