//! After the state database is lost, leavers are still found (issue 9, part 7): portal
//! users that carry an externalId no directory user has are reported, never closed,
//! until the admin takes them over with `--adopt-orphans`; then the closure guard holds.

use std::collections::BTreeSet;

use serde_json::{json, Value as Json};

use crate::support::{count, person, World};

fn staff(n: usize) -> String {
    (0..n)
        .map(|i| {
            person(
                &format!("s{i:03}"),
                &format!("G{i}"),
                &format!("F{i}"),
                Some(&format!("s{i:03}@example.se")),
            )
        })
        .collect()
}

fn active_logins(w: &World) -> BTreeSet<String> {
    w.portal
        .users()
        .into_iter()
        .filter(|u| u["active"] == json!(true))
        .map(|u| u["userName"].as_str().unwrap().to_string())
        .collect()
}

fn logins(list: &Json) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|o| o["user_name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn after_the_state_is_lost_leavers_are_listed_not_closed_until_adopted_and_confirmed() {
    let mut w = World::start(&staff(30));
    w.safety = "[safety]\nmax_closures = 10\nmax_closure_percent = 100\n".into();
    let proxy = w.behind_proxy();
    assert_eq!(count(&w.sync(), "create"), 30);
    let everyone = active_logins(&w);

    // 20 leave the directory, and the state database is lost.
    let leavers: BTreeSet<String> = (0..20).map(|i| format!("s{i:03}@example.se")).collect();
    for i in 0..20 {
        w.ldap
            .delete(&format!("uid=s{i:03},ou=people,dc=example,dc=com"));
    }
    std::fs::remove_file(w.dir.path().join("state.db")).unwrap();

    // Nobody is closed; the 20 are listed, with the count and how to take them over.
    proxy.clear();
    let report = w.sync();
    assert_eq!(count(&report, "close"), 0, "{report:#}");
    assert_eq!(count(&report, "orphans"), 20);
    assert_eq!(logins(&report["orphans"]), leavers);
    assert!(report["orphans"]
        .as_array()
        .unwrap()
        .iter()
        .all(|o| o["adopted"] == false
            && o["external_id"].is_string()
            && o["portal_id"].is_string()));
    assert_eq!(active_logins(&w), everyone, "nobody closed");
    assert_eq!(proxy.count("PATCH", "/Users/"), 0, "{}", proxy.summary());
    // Orphans are found by listing the portal: a full reconcile.
    let text = w.dirsync(&["plan", "--full"]);
    assert_eq!(text.code, 0, "{}", text.all_output());
    assert!(
        text.stdout
            .contains(": 30 users; 10 linked to a directory user, 10 of them active"),
        "the other 10 were linked again by their externalId: {}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("Portal users with an externalId dirsync does not manage (20):"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("s007@example.se (portal id "));
    assert!(text.stdout.contains(&format!(
        "`dirsync --config {} sync --adopt-orphans`",
        w.config_path().display()
    )));
    let html = w.dirsync(&["plan", "--full", "--format", "html"]);
    assert!(
        html.stdout
            .contains("<h2>Portal users with an externalId dirsync does not manage (20)</h2>"),
        "{}",
        html.stdout
    );
    assert!(html.stdout.contains("s019@example.se"));

    // Taken over: 20 closures are more than max_closures = 10, so they are held (exit 3).
    let run = w.dirsync(&["sync", "--adopt-orphans", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    let report = run.json();
    assert_eq!(count(&report, "orphans_adopted"), 20);
    let held = &report["held"][0];
    assert_eq!(held["kind"], "closures");
    assert!(
        held["message"].as_str().unwrap().contains(&format!(
            "this cycle would close 20 users, more than the limit (10 closures): no one was closed. \
             If that is right, run `dirsync --config {} sync --adopt-orphans --confirm-closures 20`",
            w.config_path().display()
        )),
        "{held:#}"
    );
    assert_eq!(active_logins(&w), everyone, "nobody closed while held");

    // Confirmed: exactly those 20 are closed.
    proxy.clear();
    let run = w.dirsync(&[
        "sync",
        "--adopt-orphans",
        "--confirm-closures",
        "20",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let report = run.json();
    assert_eq!(count(&report, "close"), 20, "{report:#}");
    let closed: BTreeSet<String> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["action"], "close");
            assert_eq!(c["reason"], "no longer in the directory scope");
            c["user_name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(closed, leavers);
    assert_eq!(
        proxy.count("PATCH", "/Users/"),
        20,
        "one closure each: {}",
        proxy.summary()
    );
    assert_eq!(
        active_logins(&w),
        everyone.difference(&leavers).cloned().collect(),
        "exactly the leavers were closed"
    );

    // Managed now: the next full reconcile has nothing to do and no orphans to report.
    let run = w.dirsync(&["plan", "--full", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let plan = run.json();
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan:#}");
    assert_eq!(count(&plan, "orphans"), 0);
}
