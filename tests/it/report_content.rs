//! The reports of real cycles, against the real slapd and scim2-server: held-back changes
//! named user by user with the exact command that releases them, group paths in the
//! reasons, one plan reporting what the sync then does, and the JSON valid against
//! docs/report.schema.json.

use std::path::Path;

use serde_json::{json, Value as Json};

use crate::schema_check;
use crate::support::{count, group_dn, group_ldif, person, run_dirsync, user_dn, World};

fn staff(n: usize) -> String {
    (0..n)
        .map(|i| {
            person(
                &format!("s{i:02}"),
                &format!("G{i}"),
                &format!("F{i}"),
                Some(&format!("s{i:02}@example.se")),
            )
        })
        .collect()
}

fn schema() -> Json {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/report.schema.json");
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}

#[track_caller]
fn assert_valid(report: &Json) {
    let errors = schema_check::validate(&schema(), report);
    assert!(errors.is_empty(), "{}\n{report:#}", errors.join("\n"));
}

fn closed(w: &World) -> Vec<String> {
    let mut v: Vec<String> = w
        .portal
        .users()
        .into_iter()
        .filter(|u| u["active"] == json!(false))
        .map(|u| u["userName"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn a_guard_trip_names_each_held_user_and_its_command_closes_exactly_those() {
    let mut w = World::start(&staff(12));
    w.sync();
    w.safety = "[safety]\nmax_closures = 3\nmax_closure_percent = 100\n".into();
    // Five leave, in an order the report must not keep; one more only changes its name.
    let leaving = ["s09", "s02", "s07", "s04", "s11"];
    for uid in leaving {
        w.ldap.delete(&user_dn(uid));
    }
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: Renamed\n",
        user_dn("s00")
    ));
    let mut expected: Vec<String> = leaving.iter().map(|u| format!("{u}@example.se")).collect();
    expected.sort();

    let run = w.dirsync(&["plan", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    let report = run.json();
    assert_valid(&report);
    let held = &report["held"][0];
    assert_eq!(held["kind"], "closures");
    let named: Vec<&str> = held["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["user_name"].as_str().unwrap())
        .collect();
    assert_eq!(named, expected, "each held user, by login");
    for c in held["changes"].as_array().unwrap() {
        assert_eq!(c["action"], "close");
        assert_eq!(c["reason"], "no longer in the directory scope");
    }
    let config = w.config_path();
    let confirm = held["confirm"].as_str().unwrap();
    assert_eq!(
        confirm,
        format!(
            "dirsync --config {} sync --confirm-closures 5",
            config.display()
        ),
        "the exact command, naming this config"
    );

    // The text and the page name them too, before anything else.
    let text = w.dirsync(&["plan"]).stdout;
    let held_text = &text[..text.find("\nUpdate (1):").expect("the update")];
    for login in &expected {
        assert!(
            held_text.contains(&format!("  {login}: would close")),
            "{login}:\n{text}"
        );
    }
    assert!(text.contains(confirm), "{text}");
    assert!(!text.contains("the portal matches the directory"), "{text}");
    let page = w.dirsync(&["plan", "--format", "html"]).stdout;
    for login in &expected {
        assert!(page.contains(&format!("<b>{login}</b>")), "{login}");
    }

    // The sync applies the rest and closes nobody.
    let run = w.dirsync(&["sync", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert_eq!(count(&run.json(), "update"), 1);
    assert!(closed(&w).is_empty());

    // Running the command exactly as the report gave it closes exactly those five.
    let args: Vec<&str> = confirm.split(' ').skip(1).collect();
    assert_eq!(args[..2], ["--config", config.to_str().unwrap()]);
    let run = run_dirsync(&config, &[&args[2..], &["--format", "json"]].concat());
    assert_eq!(run.code, 0, "{}", run.all_output());
    let report = run.json();
    assert_valid(&report);
    assert_eq!(count(&report, "close"), 5);
    assert!(report["held"].as_array().unwrap().is_empty());
    assert_eq!(closed(&w), expected);
}

#[test]
fn the_plan_reports_what_the_sync_then_does_with_the_same_reasons() {
    let mut ldif = staff(4);
    ldif.push_str(&person("lead", "Lea", "Lead", Some("lead@example.se")));
    // lead is in IT-Leads, which is in Portal-Admins; s00 is in Portal-Admins itself.
    ldif.push_str(&group_ldif("IT-Leads", &[&user_dn("lead")]));
    ldif.push_str(&group_ldif(
        "Portal-Admins",
        &[&group_dn("IT-Leads"), &user_dn("s00")],
    ));
    ldif.push_str(&group_ldif("Fax-Users", &[&group_dn("Portal-Admins")]));
    ldif.push_str(&group_ldif(
        "Sales-Share",
        &[&group_dn("IT-Leads"), &user_dn("s01")],
    ));
    let mut w = World::start(&ldif);
    w.extra_config = r#"
[roles]
default = "regular"
[[roles.rule]]
group = "Portal-Admins"
role = "account_manager"

[[service]]
group = "Fax-Users"
service = "fax"

[portal_groups]
groups = ["Sales-Share"]
"#
    .into();
    w.sync();
    // What the next cycle has to do: a create, an update, a close, group paths.
    w.ldap
        .add(&person("new", "Nils", "Ny", Some("new@example.se")));
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n",
        group_dn("IT-Leads"),
        user_dn("new")
    ));
    w.ldap.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: displayName\ndisplayName: Changed\n",
        user_dn("s02")
    ));
    w.ldap.delete(&user_dn("s03"));

    let plan = w.plan();
    assert_valid(&plan);
    let sync = w.sync();
    assert_valid(&sync);
    let without_outcome = |list: &Json| -> Vec<Json> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.as_object_mut().unwrap().remove("outcome");
                c
            })
            .collect()
    };
    assert_eq!(
        without_outcome(&plan["changes"]),
        without_outcome(&sync["changes"]),
        "the same changes, fields and reasons"
    );
    assert_eq!(
        without_outcome(&plan["group_changes"]),
        without_outcome(&sync["group_changes"])
    );
    for key in [
        "skipped",
        "needs_admin",
        "conflicts",
        "held",
        "notes",
        "orphans",
    ] {
        assert_eq!(plan[key], sync[key], "{key}");
    }
    for action in ["create", "update", "close", "group_update"] {
        assert_eq!(count(&plan, action), count(&sync, action), "{action}");
    }
    assert_eq!(
        (
            count(&plan, "create"),
            count(&plan, "update"),
            count(&plan, "close")
        ),
        (1, 1, 1)
    );
    assert!(sync["changes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["outcome"]["status"] == "applied"));

    // The new user's role, service and portal group, each with the path that gives it.
    let created = &sync["changes"][0];
    assert_eq!(created["user_name"], "new@example.se");
    let detail = |path: &str| {
        created["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["path"] == path)
            .unwrap_or_else(|| panic!("no {path} in {created:#}"))["detail"]
            .clone()
    };
    assert_eq!(detail("roles.value"), "via group IT-Leads → Portal-Admins");
    assert_eq!(
        detail("entitlements[value eq \"fax\"].value"),
        "granted via group IT-Leads → Portal-Admins → Fax-Users"
    );
    let added = &sync["group_changes"][0]["add"][0];
    assert_eq!(added["user_name"], "new@example.se");
    assert_eq!(added["via"], "IT-Leads → Sales-Share");
    let text = w.dirsync(&["plan"]).stdout;
    assert!(
        text.contains("No changes: the portal matches the directory."),
        "{text}"
    );
}
