//! The report as one self-contained HTML page, to open in a browser or attach to a mail:
//! inline CSS, nothing fetched, and a few lines of script that only add a filter box and
//! sortable change tables (the page is whole without them). Built with `maud`, which
//! escapes every value it is given: directory data cannot inject markup.
//!
//! Order: summary cards, the facts of the run, then what needs a person first (held-back
//! changes, fields needing an administrator, failures), then the changes per action.

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::text::outcome_words;
use super::{outcome_text, Report, ReportedChange};
use crate::apply::{Outcome, Status};
use crate::mapping::Value;
use crate::plan::groups::Member;
use crate::plan::guard::Held;
use crate::plan::links::adopt_hint;
use crate::plan::{Action, Change, GroupAction, GroupChange};

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

const STYLE: &str = "\
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:90em}\
h1{font-size:1.45em;margin:0 0 .2em}h2{font-size:1.12em;margin-top:1.8em;border-bottom:1px solid #ccc}\
h3{font-size:1em;margin:1em 0 .3em}\
.meta,.muted{color:#666}.small{font-size:.88em}\
.cards{display:flex;flex-wrap:wrap;gap:.6em;margin:1em 0}\
.card{border:1px solid #ddd;border-radius:6px;padding:.45em .8em;min-width:7.5em;background:#fafafa}\
.card b{display:block;font-size:1.5em}.card.warn{background:#fff3cd;border-color:#e0c060}\
.card.bad{background:#fde8e8;border-color:#d99}.card.zero{color:#888}\
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.15em 1em;margin:0}\
dl.facts dt{font-weight:600}dl.facts dd{margin:0}\
table{border-collapse:collapse;width:100%;margin:.3em 0 .8em}\
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}\
td.user{width:16em;overflow-wrap:anywhere}td code{overflow-wrap:break-word}td.note{min-width:9em}\
th{background:#f4f4f4}th.sort{cursor:pointer}tbody.change{border-top:2px solid #ccc}\
section.held{background:#fff8e1;border:1px solid #e0c060;border-radius:6px;padding:.2em 1em .6em;margin-top:1.2em}\
section.held h2{border:0;margin-top:.6em}.message{white-space:pre-wrap}\
.bad{color:#a00}.ok{color:#070}code{font-size:.95em;background:#f4f4f4;padding:0 .2em}\
#filter{font:inherit;padding:.3em .5em;width:22em;margin:.6em 0}";

/// Shows the filter box and makes the `user` column headers sort their table; without
/// it every row is simply there, in login order.
const SCRIPT: &str = "\
const f=document.getElementById('filter');f.hidden=false;\
f.oninput=()=>{const q=f.value.toLowerCase();for(const b of document.querySelectorAll('tbody.change'))b.hidden=!!q&&!b.textContent.toLowerCase().includes(q)};\
for(const th of document.querySelectorAll('th.sort')){th.title='sort by login';th.onclick=()=>{const t=th.closest('table'),up=th.dataset.dir!=='up';th.dataset.dir=up?'up':'down';\
[...t.tBodies].sort((a,b)=>a.dataset.login.localeCompare(b.dataset.login)*(up?-1:1)).forEach(b=>t.appendChild(b))}}";

pub fn render_html(r: &Report) -> String {
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (r.title()) " — " (r.finished_at) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (r.title()) }
                p.meta {
                    "started " (r.started_at) ", finished " (r.finished_at)
                    @if let Some(c) = &r.config { " · config " code { (c) } }
                    " · report schema " (r.schema_version)
                }
                (cards(r))
                (facts(r))
                @for h in &r.held { (held(h)) }
                @if let Some(a) = &r.aborted {
                    section.held { h2.bad { "Stopped early" } p.message { (a) } }
                }
                (needs_admin(r))
                (failures(r))
                input #filter type="search" placeholder="Filter the changes: login, field, value…" hidden;
                @if let Some(none) = r.no_changes_text() { p { (none) } }
                @for (action, changes) in r.by_action() {
                    section id=(action.label()) {
                        h2 { (heading(action)) " (" (changes.len()) ")" }
                        @let cols = Columns::of(changes.iter().map(|c| &c.change), false, true);
                        table.changes {
                            (change_head(cols))
                            @for c in changes { (change_rows(&c.change, c.outcome.as_ref(), cols)) }
                        }
                    }
                }
                (groups(r))
                (conflicts(r))
                (skipped(r))
                (orphans(r))
                @if !r.notes.is_empty() {
                    section { h2 { "Notes" } ul { @for n in &r.notes { li { (words(n)) } } } }
                }
                (summary(r))
                script { (PreEscaped(SCRIPT)) }
            }
        }
    };
    let mut out = page.into_string();
    out.push('\n');
    out
}

fn cards(r: &Report) -> Markup {
    let c = |k: &str| r.counts.get(k).copied().unwrap_or(0);
    let verb = if r.dry_run { "to " } else { "" };
    let done = |planned: &'static str, applied: &'static str| {
        if r.dry_run {
            planned
        } else {
            applied
        }
    };
    let cards: Vec<(usize, String, &str)> = vec![
        (c("held"), "held back".into(), "warn"),
        (c("needs_admin"), "need an administrator".into(), "warn"),
        (
            c("failed") + c("rejected"),
            "failed or refused".into(),
            "bad",
        ),
        (
            c("create"),
            format!("{verb}{}", done("create", "created")),
            "",
        ),
        (
            c("adopt"),
            format!("{verb}{}", done("adopt", "adopted")),
            "",
        ),
        (
            c("update"),
            format!("{verb}{}", done("update", "updated")),
            "",
        ),
        (
            c("reactivate"),
            format!("{verb}{}", done("reactivate", "reactivated")),
            "",
        ),
        (c("close"), format!("{verb}{}", done("close", "closed")), ""),
        (
            c("group_create") + c("group_update") + c("group_delete"),
            "portal group changes".into(),
            "",
        ),
        (c("conflicts"), "conflicts (portal kept)".into(), ""),
        (c("skipped"), "entries skipped".into(), ""),
    ];
    html! {
        div.cards {
            @for (n, label, class) in cards {
                @let class = if n == 0 { "zero" } else { class };
                div.card.(class) { b { (n) } (label) }
            }
        }
    }
}

fn facts(r: &Report) -> Markup {
    let d = &r.directory;
    html! {
        dl.facts {
            dt { "directory" }
            dd {
                code { (d.url) } ": " (d.users) " users in scope (" (d.disabled) " disabled)"
                @if let Some(g) = d.groups { ", " (g) " groups" }
            }
            dt { "read" }
            dd { (d.read_text()) ": " (d.entries_read) " entries read" }
            @if let Some(dc) = d.domain_controller_text() { dt { "answered by" } dd { (dc) } }
            dt { "portal" }
            dd { code { (r.portal.url) } ": " (r.portal.counts_text()) }
            dt { "outcome" }
            dd { (outcome_words(r)) }
        }
    }
}

fn held(h: &Held) -> Markup {
    html! {
        section.held {
            h2 { "Held back: " (h.kind.counted(h.count)) " (limit: " (h.limit) ")" }
            p.message { (words(&h.message)) }
            @if let Some(confirm) = h.confirm.as_ref().filter(|c| !h.message.contains(c.as_str())) {
                p { "To release exactly these, run: " code { (confirm) } }
            }
            @if !h.moved.is_empty() {
                ul { @for m in &h.moved { li.message { (words(m)) } } }
            }
            @if !h.changes.is_empty() {
                @let cols = Columns::of(h.changes.iter(), true, false);
                table.changes {
                    (change_head(cols))
                    @for c in &h.changes { (change_rows(c, None, cols)) }
                }
            }
            @if !h.group_changes.is_empty() {
                (group_table(h.group_changes.iter().map(|g| (g, None)), false))
            }
        }
    }
}

/// Which columns a change table has: a column none of its changes fills is left out.
#[derive(Clone, Copy)]
struct Columns {
    /// `would`: the action (held-back changes, which are of several actions).
    action: bool,
    /// `why`: the change's reason.
    reason: bool,
    /// `field`, `old`, `new`, `why this value`.
    fields: bool,
    outcome: bool,
}

impl Columns {
    fn of<'a>(
        changes: impl Iterator<Item = &'a Change> + Clone,
        action: bool,
        outcome: bool,
    ) -> Columns {
        Columns {
            action,
            reason: changes.clone().any(|c| c.reason.is_some()),
            fields: changes.clone().any(|c| !c.fields.is_empty()),
            outcome,
        }
    }
}

fn change_head(cols: Columns) -> Markup {
    html! {
        thead {
            tr {
                th.sort { "user" }
                @if cols.action { th { "would" } }
                @if cols.reason { th { "why" } }
                @if cols.fields {
                    th { "field" }
                    th { "old" }
                    th { "new" }
                    th { "why this value" }
                }
                @if cols.outcome { th { "outcome" } }
            }
        }
    }
}

/// One change as a `tbody` of one row per field.
fn change_rows(ch: &Change, outcome: Option<&Outcome>, cols: Columns) -> Markup {
    let rows = if cols.fields {
        ch.fields.len().max(1)
    } else {
        1
    };
    let first = ch.fields.first();
    let rest = ch.fields.iter().skip(1);
    html! {
        tbody.change data-login=(ch.user_name.to_lowercase()) {
            tr {
                td.user rowspan=(rows) {
                    b { (ch.user_name) }
                    br;
                    span.muted.small {
                        @if let Some(dn) = &ch.dn { (dn) br; }
                        "anchor " (ch.anchor)
                        @if let Some(p) = &ch.portal_id { " · portal id " (p) }
                        @if let Some(v) = &ch.version { " · version " (v) }
                    }
                }
                @if cols.action {
                    td rowspan=(rows) {
                        (ch.action.label())
                        @if ch.set_active == Some(false) { " (active: false)" }
                    }
                }
                @if cols.reason { td rowspan=(rows) { (ch.reason.as_deref().unwrap_or("")) } }
                @if cols.fields { (field_cells(first)) }
                @if cols.outcome { td rowspan=(rows) { (outcome_cell(outcome)) } }
            }
            @if cols.fields {
                @for f in rest { tr { (field_cells(Some(f))) } }
            }
        }
    }
}

fn field_cells(f: Option<&crate::plan::FieldChange>) -> Markup {
    html! {
        @match f {
            None => { td {} td {} td {} td {} }
            Some(f) => {
                td { code { (f.path) } }
                td { (show(&f.old)) }
                td { (show(&f.new)) }
                td.note {
                    @if let Some(w) = f.why {
                        span.muted { (w.label()) }
                        @if f.detail.is_some() { br; }
                    }
                    @if let Some(d) = &f.detail { (d) }
                }
            }
        }
    }
}

fn outcome_cell(o: Option<&Outcome>) -> Markup {
    let class = match o.map(|o| o.status) {
        None => "muted",
        Some(Status::Applied) => "ok",
        Some(_) => "bad",
    };
    html! { span.(class) { (outcome_text(o)) } }
}

fn needs_admin(r: &Report) -> Markup {
    if r.needs_admin.is_empty() {
        return html! {};
    }
    html! {
        section #needs-admin {
            h2 { "Needs an administrator (" (r.needs_admin.len()) ")" }
            p.muted { "The portal will not take these directory changes (the attribute is immutable or read-only there): change them in the portal." }
            table {
                tr { th { "user" } th { "field" } th { "portal" } th { "directory" } th { "why" } }
                @for n in &r.needs_admin {
                    tr {
                        td { (n.user_name) br; span.muted.small { "anchor " (n.anchor) } }
                        td { code { (n.path) } }
                        td { (show(&n.old)) }
                        td { (show(&n.new)) }
                        td { (words(&n.reason)) }
                    }
                }
            }
        }
    }
}

fn failures(r: &Report) -> Markup {
    let failed: Vec<&ReportedChange> = r.failures();
    if failed.is_empty() {
        return html! {};
    }
    html! {
        section #failed {
            h2.bad { "Failed or refused by the portal (" (failed.len()) ")" }
            p.muted { "Each is also listed under its action below. Failed changes are planned again next cycle; refused ones need their data fixed." }
            table {
                tr { th { "user" } th { "change" } th { "the portal's answer" } }
                @for c in failed {
                    tr {
                        td { (c.change.user_name) }
                        td { (c.change.action.label()) }
                        td { (outcome_cell(c.outcome.as_ref())) }
                    }
                }
            }
        }
    }
}

fn groups(r: &Report) -> Markup {
    if r.group_changes.is_empty() {
        return html! {};
    }
    html! {
        section #groups {
            h2 { "Portal groups (" (r.group_changes.len()) ")" }
            (group_table(r.group_changes.iter().map(|g| (&g.change, Some(g.outcome.as_ref()))), true))
        }
    }
}

fn group_table<'a>(
    changes: impl Iterator<Item = (&'a GroupChange, Option<Option<&'a Outcome>>)>,
    with_outcome: bool,
) -> Markup {
    html! {
        table {
            tr {
                th { "group" } th { "change" } th { "members added" } th { "members removed" }
                @if with_outcome { th { "outcome" } }
            }
            @for (c, outcome) in changes {
                tr {
                    td {
                        b { (c.name) } br;
                        span.muted.small {
                            "anchor " (c.anchor)
                            @if let Some(p) = &c.portal_id { " · portal id " (p) }
                        }
                    }
                    td {
                        (group_action(c))
                        @if let Some((old, new)) = &c.rename { br; "rename " (old) " → " (new) }
                        @if let Some(why) = &c.reason { br; span.muted { (why) } }
                    }
                    td { @for m in &c.add { (member(m)) br; } }
                    td { @for m in &c.remove { (member(m)) br; } }
                    @if let Some(o) = outcome { td { (outcome_cell(o)) } }
                }
            }
        }
    }
}

fn group_action(c: &GroupChange) -> &'static str {
    match c.action {
        GroupAction::Create => "create",
        GroupAction::Update if c.take_over => "take over",
        GroupAction::Update => "update",
        GroupAction::Delete => "delete",
    }
}

fn member(m: &Member) -> Markup {
    html! {
        (m.user_name)
        @if let Some(v) = &m.via { " " span.muted { "via group " (v) } }
        @if let Some(a) = &m.anchor { " " span.muted.small { "anchor " (a) } }
        @if let Some(p) = &m.portal_id { " " span.muted.small { "portal id " (p) } }
    }
}

fn conflicts(r: &Report) -> Markup {
    if r.conflicts.is_empty() {
        return html! {};
    }
    html! {
        section #conflicts {
            h2 { "Conflicts: changed in both the directory and the portal; the portal value was kept (" (r.conflicts.len()) ")" }
            table {
                tr { th { "user" } th { "field" } th { "last synced" } th { "directory now" } th { "portal now" } }
                @for c in &r.conflicts {
                    tr {
                        td { (c.user_name) br; span.muted.small { "anchor " (c.anchor) } }
                        td { code { (c.path) } }
                        td { (show(&c.last_synced)) }
                        td { (show(&c.directory)) }
                        td { (show(&c.portal)) }
                    }
                }
            }
        }
    }
}

fn skipped(r: &Report) -> Markup {
    if r.skipped.is_empty() {
        return html! {};
    }
    html! {
        section #skipped {
            h2 { "Skipped directory entries (" (r.skipped.len()) ")" }
            table {
                tr { th { "entry" } th { "problem" } }
                @for s in &r.skipped { tr { td { (s.dn) } td { (words(&s.problem)) } } }
            }
        }
    }
}

fn orphans(r: &Report) -> Markup {
    let (left, adopted) = r.orphans();
    let hint = adopt_hint(&r.dirsync());
    html! {
        @for (list, title, hint) in [
            (&left, "Portal users with an externalId dirsync does not manage", Some(hint.as_str())),
            (&adopted, "Taken over with --adopt-orphans, now managed by dirsync", None),
        ] {
            @if !list.is_empty() {
                section {
                    h2 { (title) " (" (list.len()) ")" }
                    table {
                        tr { th { "user" } th { "portal id" } th { "externalId" } }
                        @for u in list.iter() {
                            tr { td { (u.user_name) } td { code { (u.portal_id) } } td { code { (u.external_id) } } }
                        }
                    }
                    @if let Some(hint) = hint { p { "No directory user has these anchors. " (words(hint)) "." } }
                }
            }
        }
    }
}

fn summary(r: &Report) -> Markup {
    let verb = if r.dry_run { "planned" } else { "applied" };
    html! {
        section #summary {
            h2 { "Counts (" (verb) ")" }
            table {
                tr { th { "count" } th { "what it counts" } }
                @for (key, n) in r.counts_in_order() {
                    tr { td { (n) } td { (Report::counted(key).unwrap_or(key)) span.muted { " (" (key) ")" } } }
                }
            }
        }
        section #phases {
            h2 { "Phases" }
            p.muted { "The directory and the portal are read at the same time." }
            table {
                tr { th { "phase" } th { "took" } th { "counted" } }
                @for (phase, took, counted) in r.phases.lines(r.dry_run) {
                    tr { td { (phase) } td { (took) } td { (counted) } }
                }
            }
        }
    }
}

/// Text in which `backticked` parts (commands, attribute names) are shown as code.
fn words(text: &str) -> Markup {
    html! {
        @for (i, part) in text.split('`').enumerate() {
            @if i % 2 == 1 { code { (part) } } @else { (part) }
        }
    }
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
        .map_or_else(|| "(none)".to_string(), Value::to_string)
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
