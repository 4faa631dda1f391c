//! The report of a sync holding every kind of change, hold, conflict, skip and failure,
//! built from plain values: golden text, JSON and HTML (`DIRSYNC_BLESS=1 cargo test --lib
//! report::` writes them again), every value of the JSON in the text and in the HTML, and
//! the JSON valid against `docs/report.schema.json`.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::*;
use crate::apply::{Applied, Outcome, Status};
use crate::mapping::{AttrPath, Value};
use crate::plan::groups::{GroupAction, GroupChange, Member};
use crate::plan::guard::{self, Confirmed, Limits};
use crate::plan::links::Orphan;
use crate::plan::{Action, Change, Conflict, FieldChange, NeedsAdmin, Plan, Skipped, Why};
use crate::source::DcIdentity;

#[path = "../../tests/it/schema_check.rs"]
mod schema_check;

const CONFIG: &str = "/srv/dirsync/dirsync.toml";

fn path(p: &str) -> AttrPath {
    match AttrPath::parse(p) {
        Ok(p) => p,
        Err(e) => panic!("{p}: {e}"),
    }
}

fn one(s: &str) -> Option<Value> {
    Some(Value::One(s.into()))
}

fn many(s: &[&str]) -> Option<Value> {
    Some(Value::Many(s.iter().map(|s| s.to_string()).collect()))
}

fn field(p: &str, old: Option<Value>, new: Option<Value>) -> FieldChange {
    FieldChange {
        path: path(p),
        old,
        new,
        why: None,
        detail: None,
    }
}

fn change(action: Action, login: &str, reason: Option<&str>, fields: Vec<FieldChange>) -> Change {
    let uid = login.split('@').next().unwrap_or(login);
    Change {
        action,
        anchor: format!("{uid}-0000-4000-8000-{:012}", login.len()),
        user_name: login.into(),
        dn: Some(format!("uid={uid},ou=Stockholm,ou=people,dc=example,dc=se")),
        portal_id: (action != Action::Create).then(|| format!("p-{uid}")),
        version: (action != Action::Create).then(|| format!("W/\"{}\"", login.len())),
        reason: reason.map(str::to_string),
        fields,
        set_active: match action {
            Action::Close => Some(false),
            Action::Reactivate => Some(true),
            _ => None,
        },
        baseline: Default::default(),
        from: None,
    }
}

fn member(login: &str, via: Option<&str>) -> Member {
    let uid = login.split('@').next().unwrap_or(login);
    Member {
        user_name: login.into(),
        anchor: via.map(|_| format!("{uid}-0000-4000-8000-{:012}", login.len())),
        portal_id: via.is_none().then(|| format!("p-{uid}")),
        via: via.map(str::to_string),
    }
}

/// A sync whose closures and access removals were held back, with every other kind of
/// change applied, failed or refused.
fn plan() -> Plan {
    let with = |mut f: FieldChange, why: Option<Why>, detail: Option<&str>| {
        f.why = why;
        f.detail = detail.map(str::to_string);
        f
    };
    let changes = vec![
        change(
            Action::Create,
            "anna.berg@example.se",
            None,
            vec![
                field("userName", None, one("anna.berg@example.se")),
                field("name.givenName", None, one("Anna")),
                field("name.familyName", None, one("Berg")),
                with(
                    field("roles.value", None, many(&["account_manager"])),
                    None,
                    Some("via group IT-Leads → Portal-Admins"),
                ),
                with(
                    field("entitlements[value eq \"fax\"].value", None, one("fax")),
                    None,
                    Some("granted via group Fax-Users"),
                ),
            ],
        ),
        change(
            Action::Create,
            "bo.ek@example.se",
            None,
            vec![
                field("userName", None, one("bo.ek@example.se")),
                field(
                    "phoneNumbers[type eq \"work\"].value",
                    None,
                    one("+46 8 12 34"),
                ),
            ],
        ),
        change(
            Action::Adopt,
            "carl@example.se",
            Some("existing portal user matched by userName; now managed by dirsync"),
            vec![
                field("externalId", None, one("carl-0000-4000-8000-000000000015")),
                with(
                    field("preferredLanguage", one("en"), one("sv")),
                    Some(Why::Initial),
                    None,
                ),
            ],
        ),
        change(
            Action::Update,
            "dana@example.se",
            None,
            vec![
                with(
                    field("displayName", one("Dana Ek"), one("Dana Lind")),
                    Some(Why::DirectoryChange),
                    None,
                ),
                with(
                    field(
                        "urn:example:params:scim:schemas:portal:2.0:User:subUnit",
                        one("Stockholm"),
                        one("Stockholm/Sales"),
                    ),
                    Some(Why::RevertedPortalEdit),
                    None,
                ),
                with(
                    field("roles.value", many(&["regular"]), many(&["administrator"])),
                    Some(Why::DirectoryChange),
                    Some("via group Portal-Admins"),
                ),
            ],
        ),
        change(
            Action::Update,
            "jonas@example.se",
            None,
            vec![
                with(
                    field("roles.value", many(&["administrator"]), many(&["regular"])),
                    Some(Why::DirectoryChange),
                    Some("default role: no role group applies"),
                ),
                with(
                    field("entitlements[value eq \"sms\"].value", one("sms"), None),
                    Some(Why::DirectoryChange),
                    Some("not a member of SMS-Users"),
                ),
                with(
                    field("title", one("Lead"), one("Engineer")),
                    Some(Why::DirectoryChange),
                    None,
                ),
            ],
        ),
        change(
            Action::Reactivate,
            "erik@example.se",
            Some("active in the directory again"),
            vec![],
        ),
        change(
            Action::Close,
            "gus@example.se",
            Some("deleted from the directory"),
            vec![],
        ),
        change(
            Action::Close,
            "Hanna@example.se",
            Some("disabled in the directory"),
            vec![],
        ),
        change(
            Action::Close,
            "ivar@example.se",
            Some("no longer in the directory scope"),
            vec![],
        ),
    ];
    Plan {
        changes,
        skipped: vec![
            Skipped {
                dn: "uid=nomail,ou=people,dc=example,dc=se".into(),
                problem: "no mail (mapped to userName, the portal login)".into(),
            },
            Skipped {
                dn: "uid=evil,ou=people,dc=example,dc=se".into(),
                problem: "login \"<script>alert(1)</script>@example.se\" is not a usable email address: it contains quotes, backslashes, brackets or braces".into(),
            },
        ],
        needs_admin: vec![NeedsAdmin {
            anchor: "dana-0000-4000-8000-000000000015".into(),
            user_name: "dana@example.se".into(),
            path: path("userName"),
            old: one("dana@example.se"),
            new: one("dana.lind@example.se"),
            reason: "`userName` is immutable in the portal: change it there by hand".into(),
        }],
        conflicts: vec![Conflict {
            anchor: "erik-0000-4000-8000-000000000015".into(),
            user_name: "erik@example.se".into(),
            path: path("phoneNumbers[type eq \"work\"].value"),
            last_synced: one("+46 8 200"),
            directory: one("+46 8 400"),
            portal: one("+46 70 300"),
        }],
        group_changes: vec![
            GroupChange {
                action: GroupAction::Create,
                name: "Sales".into(),
                anchor: "g-sales".into(),
                portal_id: None,
                rename: None,
                add: vec![member("anna.berg@example.se", Some("IT-Leads → Sales"))],
                remove: vec![],
                reason: None,
                take_over: false,
            },
            GroupChange {
                action: GroupAction::Update,
                name: "Support".into(),
                anchor: "g-support".into(),
                portal_id: Some("pg-support".into()),
                rename: Some(("Helpdesk".into(), "Support".into())),
                add: vec![member("bo.ek@example.se", Some("Support"))],
                remove: vec![member("kim@example.se", None)],
                reason: None,
                take_over: false,
            },
            GroupChange {
                action: GroupAction::Delete,
                name: "Old-Project".into(),
                anchor: "g-old".into(),
                portal_id: Some("pg-old".into()),
                rename: None,
                add: vec![],
                remove: vec![],
                reason: Some("no longer a mirrored directory group".into()),
                take_over: false,
            },
        ],
        in_sync: vec![],
        notes: vec!["group cycle in the directory: A ⊃ B ⊃ A (membership counted once)".into()],
        orphans: vec![
            Orphan {
                user_name: "olle@example.se".into(),
                portal_id: "p-olle".into(),
                external_id: "x-olle".into(),
                adopted: false,
            },
            Orphan {
                user_name: "nora@example.se".into(),
                portal_id: "p-nora".into(),
                external_id: "x-nora".into(),
                adopted: true,
            },
        ],
        held: vec![],
    }
}

fn outcome(status: Status, message: Option<&str>) -> Outcome {
    Outcome {
        status,
        message: message.map(str::to_string),
    }
}

/// The sample: [`plan`] through the real guards, then applied with one failure and one
/// refusal among the users and one failure among the groups.
pub(crate) fn all_kinds() -> Report {
    let mut plan = plan();
    let limits = Limits {
        max_closures: 2,
        max_closure_percent: 50.0,
        max_access_removals: 1,
        privileged_roles: vec!["administrator".into()],
        dirsync: guard::invocation(Path::new(CONFIG)),
    };
    let held = guard::apply_limits(&mut plan, 40, &limits, Confirmed::default());
    plan.held = held;
    let outcomes = plan
        .changes
        .iter()
        .map(|c| match c.user_name.as_str() {
            "bo.ek@example.se" => outcome(
                Status::Rejected,
                Some("the portal refused it: 400 Bad Request: invalidValue: phoneNumbers[0].value is not a phone number"),
            ),
            "dana@example.se" => outcome(
                Status::Failed,
                Some("portal: 503 Service Unavailable (after 3 tries)"),
            ),
            _ => outcome(Status::Applied, None),
        })
        .collect();
    let group_outcomes = plan
        .group_changes
        .iter()
        .map(|g| match g.action {
            GroupAction::Update => outcome(
                Status::Failed,
                Some("portal: 412 Precondition Failed: the group changed meanwhile"),
            ),
            _ => outcome(Status::Applied, None),
        })
        .collect();
    let mut r = Report::new(
        "sync",
        "2024-05-01T12:00:00Z".into(),
        DirectorySummary {
            url: "ldaps://dc1.corp.example.se".into(),
            users: 41,
            disabled: 2,
            groups: Some(12),
            read: "full".into(),
            read_reason: Some(
                "the domain controller's invocationId changed: it was restored from a backup"
                    .into(),
            ),
            entries_read: 58,
            domain_controller: Some(DcIdentity {
                host: "dc1.corp.example.se".into(),
                invocation_id: "0f8c7a9e-2b7d-4c1e-9a51-6de1f0b2c3d4".parse().ok(),
                usn: 123_457,
                naming_context: "DC=corp,DC=example,DC=se".into(),
            }),
        },
        PortalSummary {
            url: "https://portal.example.se/scim/v2/".into(),
            users: 47,
            managed: 42,
            managed_active: 40,
            listed: true,
        },
        plan,
        Some(Applied {
            outcomes,
            group_outcomes,
            aborted: None,
        }),
        None,
    );
    r.finished_at = "2024-05-01T12:00:07Z".into();
    r.config = Some(CONFIG.into());
    r
}

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("src/report/golden")
        .join(name)
}

/// Compares `actual` with the golden file, or writes it when `DIRSYNC_BLESS` is set.
fn check_golden(name: &str, actual: &str) {
    let file = golden(name);
    if std::env::var_os("DIRSYNC_BLESS").is_some() {
        std::fs::create_dir_all(file.parent().unwrap_or(Path::new("."))).unwrap();
        std::fs::write(&file, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (DIRSYNC_BLESS=1 cargo test --lib report:: writes it)",
            file.display()
        )
    });
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the rendering, first at line {}:\n  golden: {:?}\n  now:    {:?}\n\
             (DIRSYNC_BLESS=1 cargo test --lib report:: to accept the new rendering)",
            file.display(),
            line + 1,
            expected.lines().nth(line),
            actual.lines().nth(line)
        );
    }
}

#[test]
fn text_of_a_report_with_every_kind_of_change_matches_the_golden_file() {
    check_golden("all-kinds.txt", &render_text(&all_kinds()));
}

#[test]
fn json_of_a_report_with_every_kind_of_change_matches_the_golden_file() {
    check_golden("all-kinds.json", &format!("{}\n", all_kinds().to_json()));
}

#[test]
fn html_of_a_report_with_every_kind_of_change_matches_the_golden_file() {
    // Kept for the page test in tests/it/report_page.rs, which opens it in Chromium.
    check_golden("all-kinds.html", &render_html(&all_kinds()));
}

/// Every string and number of `v`, with where it is.
fn leaves(v: &Json, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Json::String(s) => out.push((at.to_string(), s.clone())),
        Json::Number(n) => out.push((at.to_string(), n.to_string())),
        Json::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                leaves(item, &format!("{at}[{i}]"), out);
            }
        }
        Json::Object(map) => {
            for (k, item) in map {
                leaves(item, &format!("{at}.{k}"), out);
            }
        }
        Json::Bool(_) | Json::Null => {}
    }
}

/// Text compared as words: case, `_` (JSON names like `access_removals`) and the
/// backticks that mark code (the HTML shows it as code instead) aside.
fn normal(s: &str) -> String {
    s.to_lowercase().replace('_', " ").replace('`', "")
}

/// The text content of an HTML page: tags dropped (inline ones such as `<code>` split no
/// words), entities decoded.
fn html_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

fn missing_from(rendered: &str, json: &Json) -> Vec<String> {
    let rendered = normal(rendered);
    let mut all = Vec::new();
    leaves(json, "", &mut all);
    all.into_iter()
        .filter(|(_, value)| !rendered.contains(&normal(value)))
        .map(|(at, value)| format!("{at} = {value:?}"))
        .collect()
}

#[test]
fn every_value_of_the_json_is_in_the_text_and_in_the_html() {
    let r = all_kinds();
    let json: Json = serde_json::from_str(&r.to_json()).unwrap();
    let mut all = Vec::new();
    leaves(&json, "", &mut all);
    assert!(all.len() > 150, "the sample has {} values", all.len());
    let text = render_text(&r);
    let missing = missing_from(&text, &json);
    assert!(
        missing.is_empty(),
        "not in the text:\n{}\n\n{text}",
        missing.join("\n")
    );
    let html = render_html(&r);
    let missing = missing_from(&html_text(&html), &json);
    assert!(
        missing.is_empty(),
        "not in the HTML:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_json_report_is_valid_against_the_documented_schema() {
    let schema_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    let schema: Json =
        serde_json::from_str(&std::fs::read_to_string(&schema_file).unwrap()).unwrap();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "JSON Schema draft 2020-12"
    );
    let r = all_kinds();
    let json: Json = serde_json::from_str(&r.to_json()).unwrap();
    assert_eq!(json["schemaVersion"], SCHEMA_VERSION);
    let errors = schema_check::validate(&schema, &json);
    assert!(errors.is_empty(), "{}", errors.join("\n"));

    // A dry run with nothing to do is valid too, and the checker does catch a wrong shape.
    let empty = Report::new(
        "plan",
        "2024-05-01T12:00:00Z".into(),
        r.directory.clone(),
        r.portal.clone(),
        Plan::default(),
        None,
        None,
    );
    let empty: Json = serde_json::from_str(&empty.to_json()).unwrap();
    let errors = schema_check::validate(&schema, &empty);
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    let mut wrong = json.clone();
    wrong["held"][0]["changes"][0]["user_name"] = Json::from(7);
    wrong["surprise"] = Json::from(true);
    wrong["counts"]["create"] = Json::from(-1);
    let errors = schema_check::validate(&schema, &wrong);
    assert_eq!(errors.len(), 3, "{errors:#?}");
}

#[test]
fn held_back_closures_name_each_user_and_the_exact_command_with_the_config() {
    let r = all_kinds();
    let closures = &r.held[0];
    assert_eq!(closures.kind, guard::HeldKind::Closures);
    let who: Vec<&str> = closures
        .changes
        .iter()
        .map(|c| c.user_name.as_str())
        .collect();
    assert_eq!(
        who,
        ["gus@example.se", "Hanna@example.se", "ivar@example.se"]
    );
    assert_eq!(
        closures.confirm.as_deref(),
        Some(
            "dirsync --config /srv/dirsync/dirsync.toml sync --adopt-orphans --confirm-closures 3"
        )
    );
    assert!(r.changes.iter().all(|c| c.change.action != Action::Close));
    let removals = &r.held[1];
    assert_eq!(removals.kind, guard::HeldKind::AccessRemovals);
    assert_eq!(
        removals.count, 3,
        "a downgrade, a revocation, a group member"
    );
    assert_eq!(removals.changes.len(), 1);
    assert_eq!(
        removals.changes[0]
            .fields
            .iter()
            .map(|f| f.path.to_string())
            .collect::<Vec<_>>(),
        ["roles.value", "entitlements[value eq \"sms\"].value"],
        "only what is taken away is held; the title change went ahead"
    );
    assert_eq!(
        removals.group_changes[0].remove[0].user_name,
        "kim@example.se"
    );

    let text = render_text(&r);
    let held_at = text.find("HELD BACK (closures)").unwrap();
    let changes_at = text.find("\nCreate (").unwrap();
    assert!(held_at < changes_at, "held back first:\n{text}");
    for login in who {
        assert!(
            text[held_at..changes_at].contains(&format!("  {login}: would close")),
            "{login}:\n{text}"
        );
    }
    assert!(text.contains(
        "If that is right, run `dirsync --config /srv/dirsync/dirsync.toml sync --adopt-orphans --confirm-closures 3`"
    ));
}

#[test]
fn the_default_config_is_not_named_in_commands_and_odd_paths_are_quoted() {
    assert_eq!(
        guard::invocation(Path::new(crate::config::DEFAULT_PATH)),
        "dirsync"
    );
    assert_eq!(
        guard::invocation(Path::new("/srv/dirsync.toml")),
        "dirsync --config /srv/dirsync.toml"
    );
    assert_eq!(
        guard::invocation(Path::new("/srv/my dir/it's.toml")),
        "dirsync --config '/srv/my dir/it'\\''s.toml'"
    );
}

#[test]
fn lists_are_sorted_by_login_whatever_order_the_plan_had() {
    let r = all_kinds();
    let logins: Vec<&str> = r
        .changes
        .iter()
        .filter(|c| c.change.action == Action::Create)
        .map(|c| c.change.user_name.as_str())
        .collect();
    assert_eq!(logins, ["anna.berg@example.se", "bo.ek@example.se"]);
    let skipped: Vec<&str> = r.skipped.iter().map(|s| s.dn.as_str()).collect();
    assert_eq!(
        skipped,
        [
            "uid=evil,ou=people,dc=example,dc=se",
            "uid=nomail,ou=people,dc=example,dc=se"
        ]
    );
    let orphans: Vec<&str> = r.orphans.iter().map(|o| o.user_name.as_str()).collect();
    assert_eq!(orphans, ["nora@example.se", "olle@example.se"]);
}

#[test]
fn a_plan_with_only_held_back_changes_does_not_say_the_portal_matches() {
    let mut r = all_kinds();
    r.changes.clear();
    r.group_changes.clear();
    let text = render_text(&r);
    assert!(!text.contains("the portal matches the directory"), "{text}");
    assert!(
        text.contains("No changes besides those held back"),
        "{text}"
    );
    r.held.clear();
    assert!(render_text(&r).contains("No changes: the portal matches the directory."));
}

#[test]
fn each_command_is_named_in_the_text_and_html_headings() {
    for (command, dry_run, says) in [
        ("plan", true, "dirsync plan (dry run: nothing was changed)"),
        ("sync", false, "dirsync sync"),
        (
            "sync",
            true,
            "dirsync sync (held back: nothing was applied, see below)",
        ),
        ("apply", false, "dirsync apply (a saved plan, as reviewed)"),
        (
            "apply",
            true,
            "dirsync apply (refused: nothing was applied, see below)",
        ),
        (
            "standby",
            true,
            "dirsync standby (this host only plans: nothing was changed)",
        ),
    ] {
        let mut r = all_kinds();
        r.command = command.into();
        r.dry_run = dry_run;
        assert!(
            render_text(&r).starts_with(&format!("{says} — ")),
            "{command}"
        );
        assert!(
            render_html(&r).contains(&format!("<h1>{}</h1>", escape(says))),
            "{command}"
        );
    }
}

fn escape(s: &str) -> String {
    super::html_escape(s)
}
