//! Admin-locked versus user-editable fields, identity and the state store, against the
//! real slapd and scim2-server. Each `dirsync` run is a new process: everything a later
//! cycle knows about an earlier one came through the state database.

use serde_json::{json, Value as Json};

use crate::harness::Fault;

use crate::support::{
    count, kill_mid_create, mappings_with_owner, person, portal_shape, KillPoint, World,
};

const ANNA: &str = "uid=anna,ou=people,dc=example,dc=com";

fn anna_world(owners: &[(&str, &str)]) -> World {
    let mut ldif = person("anna", "Anna", "Berg", Some("anna@example.se"));
    ldif.push_str(&person("bo", "Bo", "Ek", Some("bo@example.se")));
    let mut w = World::start(&ldif);
    w.mappings = mappings_with_owner(owners);
    w.ldap.modify(&format!(
        "dn: {ANNA}\nchangetype: modify\nadd: telephoneNumber\ntelephoneNumber: +46 8 100\n"
    ));
    let report = w.sync();
    assert_eq!(count(&report, "create"), 2, "{report:#}");
    w
}

fn portal_edit(w: &World, login: &str, path: &str, value: Json) {
    let id = w.portal_user(login)["id"].as_str().unwrap().to_string();
    let status = w.portal.patch_user(
        &id,
        json!([{"op": "replace", "path": path, "value": value}]),
    );
    assert_eq!(status, 204, "portal edit of {path}");
}

fn directory_edit(w: &World, attr: &str, value: &str) {
    w.ldap.modify(&format!(
        "dn: {ANNA}\nchangetype: modify\nreplace: {attr}\n{attr}: {value}\n"
    ));
}

fn work_phone(u: &Json) -> Json {
    u["phoneNumbers"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["type"] == "work"))
        .map(|p| p["value"].clone())
        .unwrap_or(Json::Null)
}

#[test]
fn portal_owned_language_edited_by_the_user_survives_every_cycle() {
    let w = anna_world(&[("\"preferredLanguage\"", "portal")]);
    assert_eq!(
        w.portal_user("anna@example.se")["preferredLanguage"],
        "sv",
        "written at creation"
    );
    portal_edit(&w, "anna@example.se", "preferredLanguage", json!("en"));
    for round in 0..3 {
        if round == 1 {
            directory_edit(&w, "preferredLanguage", "fi");
        }
        let report = w.sync();
        assert!(
            report["changes"].as_array().unwrap().is_empty(),
            "round {round}: {report:#}"
        );
        assert_eq!(
            w.portal_user("anna@example.se")["preferredLanguage"],
            "en",
            "round {round}"
        );
    }
}

#[test]
fn directory_owned_display_name_edited_in_the_portal_is_reverted_at_the_next_full_reconcile() {
    let w = anna_world(&[]);
    portal_edit(&w, "anna@example.se", "displayName", json!("Queen Anna"));
    // An incremental cycle touches only what changed in the directory: not Anna.
    let report = w.sync();
    assert_eq!(report["directory"]["read"], "incremental");
    assert!(
        report["changes"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    assert_eq!(
        w.portal_user("anna@example.se")["displayName"],
        "Queen Anna"
    );
    let run = w.dirsync(&["sync", "--full"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(
        run.stdout
            .contains("displayName: \"Queen Anna\" → \"Anna Berg\"  (reverted portal edit)"),
        "{}",
        run.stdout
    );
    assert_eq!(w.portal_user("anna@example.se")["displayName"], "Anna Berg");
    let report = w.sync();
    assert!(
        report["changes"].as_array().unwrap().is_empty(),
        "reverted once: {report:#}"
    );
}

#[test]
fn merge_attribute_follows_whichever_side_changed_and_reports_conflicts() {
    let phone = "'phoneNumbers[type eq \"work\"].value'";
    let w = anna_world(&[(phone, "merge")]);

    // Directory-only change flows.
    directory_edit(&w, "telephoneNumber", "+46 8 200");
    let report = w.sync();
    assert_eq!(
        report["changes"][0]["fields"][0]["why"], "directory_change",
        "{report:#}"
    );
    assert_eq!(work_phone(&w.portal_user("anna@example.se")), "+46 8 200");

    // Portal-only change stays, cycle after cycle.
    portal_edit(
        &w,
        "anna@example.se",
        "phoneNumbers[type eq \"work\"].value",
        json!("+46 70 300"),
    );
    for _ in 0..2 {
        let report = w.sync();
        assert!(
            report["changes"].as_array().unwrap().is_empty(),
            "{report:#}"
        );
        assert_eq!(count(&report, "conflicts"), 0);
    }
    assert_eq!(work_phone(&w.portal_user("anna@example.se")), "+46 70 300");

    // Both change: the portal value stays and the conflict names all three values.
    directory_edit(&w, "telephoneNumber", "+46 8 400");
    for _ in 0..2 {
        let report = w.sync();
        assert!(
            report["changes"].as_array().unwrap().is_empty(),
            "{report:#}"
        );
        assert_eq!(
            report["conflicts"],
            json!([{
                "anchor": w.ldap.entry_uuid(ANNA),
                "user_name": "anna@example.se",
                "path": "phoneNumbers[type eq \"work\"].value",
                "last_synced": "+46 8 200",
                "directory": "+46 8 400",
                "portal": "+46 70 300"
            }]),
            "reported every cycle until resolved"
        );
    }
    let text = w.dirsync(&["plan"]).stdout;
    assert!(
        text.contains(
            "last synced \"+46 8 200\", directory now \"+46 8 400\", portal now \"+46 70 300\""
        ),
        "{text}"
    );
    assert_eq!(work_phone(&w.portal_user("anna@example.se")), "+46 70 300");

    // The user gives way: portal set to the directory value. No more conflict.
    portal_edit(
        &w,
        "anna@example.se",
        "phoneNumbers[type eq \"work\"].value",
        json!("+46 8 400"),
    );
    let report = w.sync();
    assert_eq!(count(&report, "conflicts"), 0, "{report:#}");
    // And from then on the directory flows again.
    directory_edit(&w, "telephoneNumber", "+46 8 500");
    w.sync();
    assert_eq!(work_phone(&w.portal_user("anna@example.se")), "+46 8 500");
}

#[test]
fn changed_mail_cannot_change_the_immutable_login_but_everything_else_applies() {
    let w = anna_world(&[]);
    let before = w.portal_user("anna@example.se");
    w.ldap.modify(&format!(
        "dn: {ANNA}\nchangetype: modify\nreplace: mail\nmail: anna.berg@example.se\n-\nreplace: sn\nsn: Lind\n"
    ));
    let run = w.dirsync(&["sync", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let report = run.json();
    assert_eq!(count(&report, "needs_admin"), 1, "{report:#}");
    let admin = &report["needs_admin"][0];
    assert_eq!(admin["path"], "userName");
    assert_eq!(
        (admin["old"].as_str(), admin["new"].as_str()),
        (Some("anna@example.se"), Some("anna.berg@example.se"))
    );
    let fields: Vec<&str> = report["changes"][0]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert!(
        !fields.contains(&"userName"),
        "no PATCH of userName: {fields:?}"
    );
    assert_eq!(report["changes"][0]["outcome"]["status"], "applied");
    let after = w.portal_user("anna@example.se");
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["name"]["familyName"], "Lind");
    assert_eq!(
        after["emails"],
        json!([{"type": "work", "value": "anna.berg@example.se"}])
    );
    let text = w.dirsync(&["plan"]).stdout;
    assert!(text.contains("Needs an administrator (1 field):"), "{text}");
    assert!(
        text.contains(
            "userName: \"anna@example.se\" → \"anna.berg@example.se\" — `userName` is immutable"
        ),
        "{text}"
    );
}

#[test]
fn a_user_edited_between_plan_and_apply_gets_412_and_no_edit_is_lost() {
    let phone = "'phoneNumbers[type eq \"work\"].value'";
    let mut w = anna_world(&[(phone, "merge")]);
    let proxy = w.behind_proxy();
    let config = w.write_config();

    directory_edit(&w, "sn", "Lind");
    directory_edit(&w, "telephoneNumber", "+46 8 200");
    // The sync plans from what it read, then its PATCH is held at the proxy while the
    // user edits the merge-owned phone and an admin-locked name in the portal.
    proxy.fail_matching(
        "PATCH",
        "/Users/",
        vec![Fault::Delay(std::time::Duration::from_secs(5))],
    );
    let sync = crate::support::dirsync_command(&config, &["sync", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while proxy.count("PATCH", "/Users/") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no PATCH: {}",
            proxy.summary()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    portal_edit(
        &w,
        "anna@example.se",
        "phoneNumbers[type eq \"work\"].value",
        json!("+46 70 999"),
    );
    portal_edit(
        &w,
        "anna@example.se",
        "displayName",
        json!("Edited meanwhile"),
    );
    let out = sync.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(report["changes"].as_array().unwrap().len(), 1, "{report:#}");
    assert_eq!(
        report["changes"][0]["fields"].as_array().unwrap().len(),
        2,
        "sn and the phone were planned"
    );
    let outcome = &report["changes"][0]["outcome"];
    assert_eq!(outcome["status"], "applied", "{outcome}");
    assert!(
        outcome["message"].as_str().unwrap().contains("412"),
        "{outcome}"
    );
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "PATCH" && r.status == 412),
        "the held PATCH met the concurrent edit: {}",
        proxy.summary()
    );

    let anna = w.portal_user("anna@example.se");
    assert_eq!(
        anna["name"]["familyName"], "Lind",
        "the directory change went through"
    );
    assert_eq!(
        work_phone(&anna),
        "+46 70 999",
        "the user's concurrent merge edit was not overwritten"
    );
    assert_eq!(
        anna["displayName"], "Anna Berg",
        "the admin-locked field was put back"
    );
    // The next cycle sees a conflict on the phone (both sides moved since the last sync).
    let report = w.sync();
    assert_eq!(count(&report, "conflicts"), 1, "{report:#}");
    assert!(report["changes"].as_array().unwrap().is_empty());
}

#[test]
fn first_cycle_adopts_hand_made_users_and_leaves_an_ambiguous_one_alone() {
    let mut ldif = String::new();
    for (uid, mail) in [
        ("anna", "anna@example.se"),
        ("bo", "bo@example.se"),
        ("cia", "cia@example.se"),
        ("dan", "dan@example.se"),
    ] {
        ldif.push_str(&person(uid, uid, "Test", Some(mail)));
    }
    let w = World::start(&ldif);
    let schemas = json!(["urn:ietf:params:scim:schemas:core:2.0:User"]);
    // By login (case differs), by primary email, and an ambiguous pair for cia.
    let anna = w.portal.create_user(
        json!({"schemas": schemas, "userName": "ANNA@example.se", "displayName": "Anna by hand"}),
    );
    let bo = w.portal.create_user(json!({"schemas": schemas, "userName": "bo.ek", "emails": [{"value": "bo@example.se", "primary": true}]}));
    w.portal
        .create_user(json!({"schemas": schemas, "userName": "cia@example.se"}));
    w.portal.create_user(json!({"schemas": schemas, "userName": "cia.x", "emails": [{"value": "cia@example.se", "primary": true}]}));

    let report = w.sync();
    assert_eq!(count(&report, "adopt"), 2, "{report:#}");
    assert_eq!(count(&report, "create"), 1, "only dan is new");
    let skipped = report["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1);
    assert!(
        skipped[0]["problem"]
            .as_str()
            .unwrap()
            .starts_with("ambiguous: 2 portal users match login cia@example.se"),
        "{skipped:?}"
    );
    let users = w.portal.users();
    assert_eq!(users.len(), 5, "no duplicates: {users:#?}");

    let anna_now = users.iter().find(|u| u["id"] == anna["id"]).unwrap();
    assert_eq!(
        anna_now["externalId"],
        json!(w.ldap.entry_uuid("uid=anna,ou=people,dc=example,dc=com"))
    );
    assert_eq!(
        anna_now["displayName"], "anna Test",
        "adopted users take the directory's values"
    );
    let bo_now = users.iter().find(|u| u["id"] == bo["id"]).unwrap();
    assert_eq!(
        bo_now["externalId"],
        json!(w.ldap.entry_uuid("uid=bo,ou=people,dc=example,dc=com"))
    );
    assert_eq!(
        count(&report, "needs_admin"),
        1,
        "bo's login differs and is immutable"
    );
    for u in users
        .iter()
        .filter(|u| u["userName"].as_str().unwrap().starts_with("cia"))
    {
        assert!(
            u.get("externalId").is_none(),
            "ambiguous cia candidates untouched: {u}"
        );
    }
    // Adopted users are managed from now on: leaving the directory closes them.
    w.ldap.delete("uid=anna,ou=people,dc=example,dc=com");
    let report = w.sync();
    assert_eq!(count(&report, "close"), 1, "{report:#}");
}

#[test]
fn renamed_and_moved_entry_updates_the_same_portal_user() {
    let w = anna_world(&[]);
    let before = w.portal_user("anna@example.se");
    w.ldap.add(
        "dn: ou=Sales,ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: Sales\n\n",
    );
    w.ldap.modify(&format!(
        "dn: {ANNA}\nchangetype: modrdn\nnewrdn: uid=anna.berg\ndeleteoldrdn: 1\nnewsuperior: ou=Sales,ou=people,dc=example,dc=com\n"
    ));
    w.ldap.modify("dn: uid=anna.berg,ou=Sales,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: Lind\n");
    let report = w.sync();
    assert_eq!(
        (
            count(&report, "create"),
            count(&report, "close"),
            count(&report, "update")
        ),
        (0, 0, 1),
        "{report:#}"
    );
    assert_eq!(
        report["changes"][0]["dn"],
        "uid=anna.berg,ou=Sales,ou=people,dc=example,dc=com"
    );
    let after = w.portal_user("anna@example.se");
    assert_eq!(after["id"], before["id"]);
    assert_eq!(after["name"]["familyName"], "Lind");
    assert_eq!(w.portal.users().len(), 2);
}

#[test]
fn state_from_a_newer_dirsync_is_refused_with_a_clear_message() {
    let w = anna_world(&[]);
    let db = w.dir.path().join("state.db");
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", 42)
        .unwrap();
    let before = w.portal.users();
    for cmd in ["plan", "sync"] {
        let run = w.dirsync(&[cmd]);
        assert_eq!(run.code, 1, "{}", run.all_output());
        assert!(run.stderr.contains("schema version 42"), "{}", run.stderr);
        assert!(
            run.stderr.contains("written by a newer dirsync"),
            "{}",
            run.stderr
        );
    }
    assert_eq!(w.portal.users(), before);
}

#[test]
fn kill_9_in_the_middle_of_an_apply_then_restart_converges_without_duplicates() {
    let ldif: String = (0..300)
        .map(|i| {
            person(
                &format!("p{i:03}"),
                &format!("G{i}"),
                &format!("F{i}"),
                Some(&format!("p{i:03}@example.se")),
            )
        })
        .collect();
    let mut w = World::start(&ldif);
    let proxy = w.behind_proxy();
    let config = w.write_config();
    // Killed after 40 creates, while the portal has made the 41st (and whatever else was in
    // flight) but dirsync has not heard back: the state store knows nothing of those.
    kill_mid_create(&config, &proxy, 40, KillPoint::AfterThePortal);
    let at_kill = w.portal.users().len();
    assert!(
        (41..300).contains(&at_kill),
        "killed mid-apply: {at_kill} of 300 created"
    );

    let report = w.sync();
    assert_eq!(
        count(&report, "create") as usize,
        300 - at_kill,
        "{report:#}"
    );
    assert_eq!(count(&report, "failed"), 0);
    assert!(
        w.plan()["changes"].as_array().unwrap().is_empty(),
        "converged"
    );

    // The same portal state as an uninterrupted run (ids, metadata and anchors aside).
    let clean = World::start(&ldif);
    clean.sync();
    let after_crash = portal_shape(w.portal.users());
    assert_eq!(after_crash.len(), 300, "no duplicates");
    assert_eq!(after_crash, portal_shape(clean.portal.users()));
}
