//! Creates whose answer was lost, and 409s: dirsync takes over what it made, and only that
//! (issue 9, part 6). Against the real slapd and scim2-server, with the test proxy losing
//! answers, refusing creates and ignoring filters.

use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::harness::proxy::{Fault, Proxy};
use crate::support::{
    count, dirsync_command, group_dn, group_ldif, kill_and_settle, person, user_dn, World,
};

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

fn people(uids: &[&str]) -> String {
    uids.iter()
        .map(|u| person(u, u, "X", Some(&format!("{u}@example.se"))))
        .collect()
}

/// Anna and Bo, both in Sales-Share and Support-Share; `[portal_groups]` mirrors `group`.
fn world_with_groups(group: &str) -> World {
    let mut ldif = people(&["anna", "bo"]);
    ldif.push_str(&group_ldif(
        "Sales-Share",
        &[&user_dn("anna"), &user_dn("bo")],
    ));
    ldif.push_str(&group_ldif("Support-Share", &[&user_dn("bo")]));
    let mut w = World::start(&ldif);
    w.extra_config = format!("[portal_groups]\ngroups = [\"{group}\"]\n");
    w
}

fn groups_named(w: &World, name: &str) -> Vec<Json> {
    w.portal
        .groups()
        .into_iter()
        .filter(|g| g["displayName"] == name)
        .collect()
}

/// Waits until the proxy saw `n` requests `method path_prefix`, or the process ended.
#[track_caller]
fn wait_for(proxy: &Proxy, child: &mut std::process::Child, method: &str, prefix: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.count(method, prefix) < n {
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "dirsync never sent {method} {prefix} #{n}; requests:\n{}",
                proxy.summary()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_group_made_by_a_run_killed_before_it_heard_back_is_linked_next_cycle_and_deleted_when_it_leaves_the_config(
) {
    let mut w = world_with_groups("Sales-Share");
    let proxy = w.behind_proxy();
    // The portal makes the group; its answer never reaches dirsync, which is killed.
    proxy.fail_matching(
        "POST",
        "/Groups",
        vec![Fault::after_forward(Fault::Delay(Duration::from_secs(600)))],
    );
    let config = w.write_config();
    let mut child = dirsync_command(&config, &["sync"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&proxy, &mut child, "POST", "/Groups", 1);
    kill_and_settle(&mut child, &proxy);
    let made = groups_named(&w, "Sales-Share");
    assert_eq!(made.len(), 1, "the portal made the group before the kill");
    let anchor = w.ldap.entry_uuid(&group_dn("Sales-Share"));
    assert_eq!(made[0]["externalId"], json!(anchor));

    // The next cycle creates no second group: it links this one as dirsync's.
    proxy.clear();
    let report = w.sync();
    assert_eq!(proxy.count("POST", "/Groups"), 0, "{}", proxy.summary());
    assert_eq!(
        (
            count(&report, "group_create"),
            count(&report, "group_update")
        ),
        (0, 1),
        "{report:#}"
    );
    let linked = &report["group_changes"][0];
    assert_eq!(linked["take_over"], true);
    assert!(
        linked["reason"]
            .as_str()
            .unwrap()
            .contains("linked as a group dirsync made"),
        "{linked:#}"
    );
    assert_eq!(groups_named(&w, "Sales-Share"), made);
    assert!(w.plan()["group_changes"].as_array().unwrap().is_empty());

    // It leaves [portal_groups]: dirsync deletes it, as any group it made.
    w.extra_config = "[portal_groups]\ngroups = [\"Support-Share\"]\n".into();
    let run = w.dirsync(&["sync", "--accept-scope-change", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let report = run.json();
    assert_eq!(
        (
            count(&report, "group_create"),
            count(&report, "group_delete")
        ),
        (1, 1),
        "{report:#}"
    );
    let id = made[0]["id"].as_str().unwrap();
    assert_eq!(proxy.count("DELETE", &format!("/Groups/{id}")), 1);
    assert!(groups_named(&w, "Sales-Share").is_empty());
    assert_eq!(groups_named(&w, "Support-Share").len(), 1);
}

#[test]
fn a_group_create_whose_answer_is_lost_is_found_by_its_external_id_not_sent_twice() {
    let mut w = world_with_groups("Sales-Share");
    let proxy = w.behind_proxy();
    proxy.fail_matching("POST", "/Groups", vec![Fault::after_forward(Fault::Reset)]);
    let report = w.sync();
    assert_eq!(proxy.count("POST", "/Groups"), 1, "{}", proxy.summary());
    assert_eq!(count(&report, "group_create"), 1, "{report:#}");
    assert_eq!(
        report["group_changes"][0]["outcome"]["message"],
        "the answer to the create was lost; the group it made was found by its externalId and taken over"
    );
    assert_eq!(groups_named(&w, "Sales-Share").len(), 1);
    // Recorded as dirsync's: nothing left to link or create.
    assert!(w.plan()["group_changes"].as_array().unwrap().is_empty());
}

#[test]
fn a_portal_that_ignores_the_filter_in_a_409_lookup_gets_no_wrong_adoption() {
    let mut w = World::start(&people(&["alice"]));
    let zed = w.portal.create_user(json!({
        "schemas": [USER], "userName": "zed@example.se", "active": true
    }));
    let proxy = w.behind_proxy();
    // The create is refused with 409, and the lookup by userName answers with everything
    // the portal has, as a portal that ignores `filter` does: zed, who is not alice.
    proxy.fail_matching("POST", "/Users", vec![Fault::status(409)]);
    let everything = w.portal.users();
    proxy.rewrite_matching("GET", "/Users?filter=", move |_, _| {
        json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
            "totalResults": everything.len(),
            "startIndex": 1,
            "itemsPerPage": everything.len(),
            "Resources": everything,
        })
    });
    let run = w.dirsync(&["sync", "--format", "json"]);
    let report = run.json();
    assert_eq!(
        proxy.count("GET", "/Users?filter="),
        1,
        "{}",
        proxy.summary()
    );
    assert_eq!(
        proxy.count("PATCH", "/Users/"),
        0,
        "no one was adopted: {}",
        proxy.summary()
    );
    assert_eq!(w.portal_user("zed@example.se"), zed, "zed is untouched");
    let outcome = &report["changes"][0]["outcome"];
    assert_eq!(outcome["status"], "rejected", "{report:#}");
    assert!(
        outcome["message"]
            .as_str()
            .unwrap()
            .contains("but the portal has no user alice@example.se to take over; not created"),
        "{outcome:#}"
    );
    assert_eq!(run.code, 0, "a refused entry is reported, not a failure");
}

#[test]
fn a_409_takes_over_a_user_with_the_same_login_and_no_external_id_never_one_with_another() {
    let mut w = World::start(&people(&["carol", "erin"]));
    let proxy = w.behind_proxy();
    // Both creates are held at the proxy; meanwhile someone makes both users in the
    // portal by hand, carol with another system's externalId. Released, both meet 409.
    proxy.fail_matching(
        "POST",
        "/Users",
        vec![
            Fault::Delay(Duration::from_secs(3)),
            Fault::Delay(Duration::from_secs(3)),
        ],
    );
    let config = w.write_config();
    let child = dirsync_command(&config, &["sync", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = child;
    wait_for(&proxy, &mut child, "POST", "/Users", 2);
    let carol = w.portal.create_user(json!({
        "schemas": [USER], "userName": "carol@example.se", "externalId": "hr-system-7", "active": true
    }));
    let erin = w.portal.create_user(json!({
        "schemas": [USER], "userName": "erin@example.se", "active": true
    }));
    let out = child.wait_with_output().unwrap();
    let report: Json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let outcome = |login: &str| {
        report["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["user_name"] == login)
            .unwrap()["outcome"]
            .clone()
    };
    assert_eq!(
        outcome("carol@example.se"),
        json!({
            "status": "rejected",
            "message": format!(
                "HTTP 409: the portal user carol@example.se (id {}) carries externalId hr-system-7, not this \
                 user's {}; it is not taken over",
                carol["id"].as_str().unwrap(),
                w.ldap.entry_uuid(&user_dn("carol"))
            )
        })
    );
    assert_eq!(
        w.portal_user("carol@example.se"),
        carol,
        "carol is untouched"
    );
    assert_eq!(outcome("erin@example.se")["status"], "applied");
    let erin_now = w.portal_user("erin@example.se");
    assert_eq!(erin_now["id"], erin["id"]);
    assert_eq!(
        erin_now["externalId"],
        json!(w.ldap.entry_uuid(&user_dn("erin"))),
        "erin, made by hand with the same login, is adopted"
    );
    assert_eq!(w.portal.users().len(), 2, "no duplicate");
}
