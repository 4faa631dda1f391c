//! A portal listing that does not add up never becomes creates (issue 9, part 5). The
//! test proxy rewrites the real scim2-server's listing pages; each lie fails the cycle
//! before planning: exit 1 with the problem named, no create, no closure, and the next
//! normal cycle plans nothing. The portal is listed by full reconciles (`--full`); an
//! incremental cycle lists nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value as Json};

use crate::harness::proxy::Proxy;
use crate::support::{count, person, World};

/// 23 users: with the world's portal page size of 5, a listing is five pages and the
/// empty page that confirms the end.
const USERS: usize = 23;

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

/// The `startIndex` and `count` of a listing request's path.
fn paging(path: &str) -> (usize, usize) {
    let query: HashMap<&str, &str> = path
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let number = |key: &str, default: usize| {
        query
            .get(key)
            .map_or(default, |v| v.parse().expect("a number"))
    };
    (number("startIndex", 1), number("count", 100))
}

/// A full reconcile's plan: the portal listed whole.
fn full_plan(w: &World) -> Json {
    let run = w.dirsync(&["plan", "--full", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    run.json()
}

/// A world of [`USERS`] users, synced, with the proxy in front of the portal.
fn synced_world() -> (World, Proxy) {
    let mut w = World::start(&staff(USERS));
    let proxy = w.behind_proxy();
    let report = w.sync();
    assert_eq!(count(&report, "create"), USERS as u64);
    proxy.clear();
    (w, proxy)
}

/// Runs a sync while the portal's listing lies (as `rewrite` makes it) and checks that
/// it failed before planning with `problem` in its message, changed nothing, and that
/// the next normal cycle plans nothing.
#[track_caller]
fn refused_before_planning(
    rewrite: impl Fn(&str, Json) -> Json + Send + Sync + 'static,
    problem: &str,
) {
    let (w, proxy) = synced_world();
    let before = w.portal.users();
    proxy.rewrite_matching("GET", "/Users?startIndex=", rewrite);
    let run = w.dirsync(&["sync", "--full"]);
    assert_eq!(run.code, 1, "{}\n{}", run.all_output(), proxy.summary());
    assert!(
        run.stderr.contains("listing /Users is incomplete (")
            && run.stderr.contains(problem)
            && run.stderr.contains("nothing was planned from it"),
        "the problem is named: {}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "no report, no plan: {}", run.stdout);
    assert_eq!(
        (
            proxy.count("POST", "/Users"),
            proxy.count("PATCH", "/Users")
        ),
        (0, 0),
        "no create, no closure, no change: {}",
        proxy.summary()
    );
    assert_eq!(w.portal.users(), before, "the portal is as it was");

    proxy.heal();
    let plan = full_plan(&w);
    assert!(
        plan["changes"].as_array().unwrap().is_empty(),
        "the next normal cycle plans nothing: {plan:#}"
    );
    assert_eq!(count(&plan, "orphans"), 0);
}

#[test]
fn a_listing_whose_total_results_is_too_small_fails_the_cycle_and_creates_no_one() {
    refused_before_planning(
        |_, mut page| {
            page["totalResults"] = json!(USERS - 10);
            page
        },
        "totalResults is 13, but 15 users came back by the page at startIndex 11",
    );
}

#[test]
fn a_listing_whose_total_results_is_too_large_fails_the_cycle_and_creates_no_one() {
    refused_before_planning(
        |_, mut page| {
            page["totalResults"] = json!(USERS + 5);
            page
        },
        "totalResults is 28, but the page at startIndex 24 was empty after 23 users",
    );
}

#[test]
fn a_listing_without_total_results_fails_the_cycle_and_creates_no_one() {
    refused_before_planning(
        |_, mut page| {
            page.as_object_mut().unwrap().remove("totalResults");
            page
        },
        "the page at startIndex 1 has no totalResults, so there is no telling whether every one of the users was read",
    );
}

#[test]
fn a_listing_with_a_page_dropped_fails_the_cycle_and_creates_no_one() {
    refused_before_planning(
        |path, mut page| {
            if paging(path).0 == 6 {
                page["Resources"] = json!([]);
            }
            page
        },
        "totalResults is 23, but the page at startIndex 6 was empty after 5 users",
    );
}

#[test]
fn a_portal_that_ignores_start_index_and_repeats_page_one_fails_the_cycle_and_creates_no_one() {
    let first: Arc<Mutex<Option<Json>>> = Arc::default();
    refused_before_planning(
        move |_, mut page| {
            let mut first = first.lock().unwrap();
            let resources = first.get_or_insert_with(|| page["Resources"].clone());
            page["Resources"] = resources.clone();
            page
        },
        "came twice, again at startIndex 6: the portal repeated a page (does it ignore startIndex?)",
    );
}

#[test]
fn a_portal_that_sends_fewer_per_page_than_asked_is_still_listed_completely() {
    let (w, proxy) = synced_world();
    proxy.rewrite_matching("GET", "/Users?startIndex=", |_, mut page| {
        page["Resources"].as_array_mut().unwrap().truncate(3);
        page
    });
    let plan = full_plan(&w);
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan:#}");
    // startIndex advanced by the 3 received each time: 1, 4, ..., 22, then the empty 24.
    let starts: Vec<usize> = proxy
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/Users?startIndex="))
        .map(|s| paging(&s.path).0)
        .collect();
    assert_eq!(starts, [1, 4, 7, 10, 13, 16, 19, 22, 24]);
}

#[test]
fn a_portal_that_changed_while_it_was_listed_is_listed_again_once() {
    let (w, proxy) = synced_world();
    // The first pass sees totalResults change on its second page; the second pass is
    // clean: the cycle goes on and plans nothing. (Pages after the first are read
    // several at a time, so a pass is counted by its first page.)
    let passes = Arc::new(Mutex::new(0usize));
    let seen = Arc::clone(&passes);
    proxy.rewrite_matching("GET", "/Users?startIndex=", move |path, mut page| {
        let mut n = seen.lock().unwrap();
        if paging(path).0 == 1 {
            *n += 1;
        }
        if *n == 1 && paging(path).0 == 6 {
            page["totalResults"] = json!(USERS + 1);
        }
        page
    });
    let plan = full_plan(&w);
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan:#}");
    assert_eq!(
        *passes.lock().unwrap(),
        2,
        "one broken pass, one whole pass"
    );

    // A portal whose totalResults changes on every pass fails the cycle.
    proxy.heal();
    proxy.rewrite_matching("GET", "/Users?startIndex=", move |path, mut page| {
        if paging(path).0 > 1 {
            page["totalResults"] = json!(USERS + 1);
        }
        page
    });
    let run = w.dirsync(&["sync", "--full"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains(
            "totalResults kept changing while the portal was listed: totalResults went from 23 to 24 \
             at startIndex 6; on the second try totalResults went from 23 to 24 at startIndex 6"
        ),
        "{}",
        run.stderr
    );
    assert_eq!(proxy.count("POST", "/Users"), 0);
}

#[test]
fn a_listing_asks_only_for_the_attributes_the_plan_reads_and_reads_each_page_once() {
    let (w, proxy) = synced_world();
    // A full reconcile lists the portal (an incremental plan would read nobody).
    let run = w.dirsync(&["plan", "--full", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let plan = run.json();
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan:#}");
    let listed: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|s| s.path.starts_with("/Users?startIndex="))
        .map(|s| s.path.clone())
        .collect();
    // Five pages of 5 and the empty page that confirms the end, each read once.
    let mut starts: Vec<usize> = listed.iter().map(|p| paging(p).0).collect();
    starts.sort();
    assert_eq!(starts, [1, 6, 11, 16, 21, 24], "{listed:?}");
    let attributes = url::form_urlencoded::parse(listed[0].split_once('?').unwrap().1.as_bytes())
        .find(|(k, _)| k == "attributes")
        .map(|(_, v)| v.into_owned())
        .expect("an attributes parameter");
    for name in [
        "id",
        "externalId",
        "userName",
        "active",
        "meta.version",
        "emails",
    ] {
        assert!(
            attributes.split(',').any(|a| a == name),
            "{name} in {attributes}"
        );
    }
}

/// Makes the listing a consistent view of the portal without the user `hidden`: pages
/// are served from `users` (the portal as it is) minus that one.
fn hide(proxy: &Proxy, users: Vec<Json>, hidden: &str) {
    let visible: Vec<Json> = users.into_iter().filter(|u| u["id"] != hidden).collect();
    proxy.rewrite_matching("GET", "/Users?startIndex=", move |path, mut page| {
        let (start, count) = paging(path);
        let from = (start - 1).min(visible.len());
        let to = (from + count).min(visible.len());
        page["totalResults"] = json!(visible.len());
        page["Resources"] = json!(visible[from..to]);
        page["startIndex"] = json!(start);
        page["itemsPerPage"] = json!(to - from);
        page
    });
}

#[test]
fn a_managed_user_missing_from_a_listing_that_adds_up_fails_the_cycle_if_it_still_exists() {
    let (w, proxy) = synced_world();
    let hidden = w.portal_user("s007@example.se");
    let id = hidden["id"].as_str().unwrap().to_string();
    hide(&proxy, w.portal.users(), &id);

    let run = w.dirsync(&["sync", "--full"]);
    assert_eq!(run.code, 1, "{}\n{}", run.all_output(), proxy.summary());
    let anchor = hidden["externalId"].as_str().unwrap().to_ascii_lowercase();
    let expected = format!(
        "listing /Users is incomplete (portal user s007@example.se (id {id}), which dirsync manages \
         for directory anchor {anchor}, exists but was not in the listing); nothing was planned from it"
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert_eq!(
        proxy.count("GET", &format!("/Users/{id}")),
        1,
        "looked up by id: {}",
        proxy.summary()
    );
    assert_eq!(
        (
            proxy.count("POST", "/Users"),
            proxy.count("PATCH", "/Users")
        ),
        (0, 0)
    );
    assert_eq!(w.portal.users().len(), USERS);

    proxy.heal();
    assert!(full_plan(&w)["changes"].as_array().unwrap().is_empty());
}

#[test]
fn a_managed_user_deleted_in_the_portal_is_created_again_and_the_report_says_so() {
    let (w, proxy) = synced_world();
    let gone = w.portal_user("s007@example.se");
    let old_id = gone["id"].as_str().unwrap().to_string();
    assert_eq!(w.portal.delete_user(&old_id), 204);

    // Found by the full reconcile, which lists the portal (an incremental cycle reads only
    // the users the directory's changes concern).
    let run = w.dirsync(&["sync", "--full", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let report = run.json();
    assert_eq!(
        proxy.count("GET", &format!("/Users/{old_id}")),
        1,
        "{}",
        proxy.summary()
    );
    let creates: Vec<(&str, &str)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] == "create")
        .map(|c| {
            (
                c["user_name"].as_str().unwrap(),
                c["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        creates,
        [("s007@example.se", "deleted in the portal; created again")]
    );
    assert_eq!(count(&report, "close"), 0);
    let again = w.portal_user("s007@example.se");
    assert_ne!(again["id"], gone["id"]);
    assert_eq!(again["externalId"], gone["externalId"]);
    assert_eq!(w.portal.users().len(), USERS);

    // The state links the new user: nothing is looked up by id any more.
    proxy.clear();
    let plan = full_plan(&w);
    assert!(plan["changes"].as_array().unwrap().is_empty(), "{plan:#}");
    assert_eq!(
        proxy.count("GET", "/Users/"),
        0,
        "nothing is missing any more: {}",
        proxy.summary()
    );
}
