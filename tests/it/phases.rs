//! Phase timings: every report has the directory read, the portal read, the plan, the
//! apply and the record, with what each counted, and the run history keeps them. Only
//! the counts are checked: durations are the benchmark's business (scripts/bench).

use serde_json::{json, Value as Json};

use crate::support::{count, group_ldif, person, run_dirsync, user_dn, World};

/// Checks the requests a portal read sent: /ServiceProviderConfig, /Schemas, then the
/// pages of users and of groups (the World's page size is 5), each listing perhaps with
/// one more, empty page that confirms its end; `extra` more (fetches).
#[track_caller]
fn assert_read_requests(portal: &Json, users: u64, groups: u64, extra: u64) {
    let least = 2 + users.div_ceil(5).max(1) + groups.div_ceil(5).max(1) + extra;
    let sent = portal["requests"].as_u64().unwrap();
    assert!(
        (least..=least + 2).contains(&sent),
        "{sent} requests for {users} users and {groups} groups, {extra} more: {portal}"
    );
}

fn phase<'a>(report: &'a Json, name: &str) -> &'a Json {
    let p = &report["phases"][name];
    assert!(p.is_object(), "no phase {name} in {:#}", report["phases"]);
    assert!(p["ms"].is_u64(), "phase {name} has no duration: {p}");
    p
}

#[test]
fn a_sync_reports_every_phase_with_what_it_read_sent_and_wrote() {
    let logins: Vec<String> = (0..12).map(|i| format!("user{i:02}")).collect();
    let mut ldif: String = logins
        .iter()
        .map(|u| person(u, "Given", u, Some(&format!("{u}@example.se"))))
        .collect();
    ldif.push_str(&group_ldif(
        "Sales-Share",
        &[&user_dn("user01"), &user_dn("user02")],
    ));
    ldif.push_str(&group_ldif("Team-A", &[&user_dn("user03")]));
    ldif.push_str(&group_ldif("Team-B", &[&user_dn("user04")]));
    let mut w = World::start(&ldif);
    w.extra_config = "[portal_groups]\nfilter = \"(cn=*-Share)\"\n".into();
    // What the portal holds already: one user and one group made by hand.
    w.portal.create_user(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "reception@example.se"
    }));
    w.portal.create_group(json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Reception", "members": []
    }));

    // A dry run reads and plans; it applies and records nothing.
    let plan = w.plan();
    assert_eq!(plan["phases"]["apply"], Json::Null, "{plan:#}");
    assert_eq!(plan["phases"]["record"], Json::Null, "{plan:#}");

    let first = w.sync();
    assert_eq!(count(&first, "create"), 12, "{first:#}");
    assert_eq!(count(&first, "group_create"), 1, "{first:#}");
    // The full read: every user and group in scope, once.
    let read = phase(&first, "directory_read");
    assert_eq!(first["directory"]["users"], 12);
    assert_eq!(first["directory"]["groups"], 3);
    // Users and groups, and the OUs under the bases (a full read lists them to notice
    // renamed or moved containers).
    assert!(read["entries"].as_u64().unwrap() >= 12 + 3, "{read}");
    assert_eq!(read["entries"], first["directory"]["entries_read"]);
    let portal = phase(&first, "portal_read");
    assert_eq!(portal["users"], 1, "the hand-made user: {portal}");
    assert_eq!(portal["users"], first["portal"]["users"]);
    assert_eq!(portal["groups"], 1, "the hand-made group: {portal}");
    assert_eq!(portal["fetched"], 0);
    assert_read_requests(portal, 1, 1, 0);
    assert_eq!(phase(&first, "plan")["changes"], 12 + 1);
    let apply = phase(&first, "apply");
    assert_eq!(apply["applied"], 12 + 1, "{apply}");
    assert!(
        apply["requests"].as_u64().unwrap() >= 13,
        "a POST per user and group at least: {apply}"
    );
    assert!(phase(&first, "record")["users"].is_u64());

    // The portal now holds 13 users and 2 groups; nothing to change. A full reconcile
    // lists it (an incremental cycle would read no one).
    let full = |w: &World| {
        let run = w.dirsync(&["sync", "--full", "--format", "json"]);
        assert_eq!(run.code, 0, "{}", run.all_output());
        run.json()
    };
    let again = full(&w);
    let portal = phase(&again, "portal_read");
    assert_eq!(portal["users"], 13, "{portal}");
    assert_eq!(portal["users"], w.portal.users().len());
    assert_eq!(portal["groups"], 2, "{portal}");
    assert_read_requests(portal, 13, 2, 0);
    assert_eq!(phase(&again, "plan")["changes"], 0);
    let apply = phase(&again, "apply");
    assert_eq!(
        (&apply["requests"], &apply["applied"]),
        (&json!(0), &json!(0))
    );

    // A managed user deleted in the portal is fetched once (404) and counted.
    let gone = w.portal_user("user05@example.se");
    w.portal.delete_user(gone["id"].as_str().unwrap());
    let third = full(&w);
    let portal = phase(&third, "portal_read");
    assert_eq!(portal["users"], 12, "{portal}");
    assert_eq!(portal["fetched"], 1, "{portal}");
    assert_read_requests(portal, 12, 2, 1);

    // The run history holds the same phases as the report, record phase included.
    let status = run_dirsync(&w.config_path(), &["status", "--format", "json"]);
    assert_eq!(status.code, 0, "{}", status.all_output());
    let status: Json = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["runs"][0]["phases"], third["phases"], "{status:#}");
    assert_eq!(status["runs"][2]["phases"], first["phases"], "{status:#}");
}
