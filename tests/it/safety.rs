//! Safety under faults: deletion guards, reviewed plans, retries, crash safety. Against
//! the real slapd and scim2-server, with the fault-injecting proxy in between where the
//! portal must misbehave.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use crate::harness::proxy::Fault;
use crate::support::{
    count, hold_mid_create, kill_and_settle, kill_mid_create, person, portal_shape, run_dirsync,
    KillPoint, World,
};

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

fn active(w: &World) -> usize {
    w.portal
        .users()
        .iter()
        .filter(|u| u["active"] == json!(true))
        .count()
}

#[test]
fn a_base_dn_moved_to_an_empty_ou_or_a_filter_that_matches_nothing_closes_nobody() {
    let mut w = World::start(&staff(5));
    w.ldap
        .add("dn: ou=empty,dc=example,dc=com\nobjectClass: organizationalUnit\nou: empty\n\n");
    w.safety = String::new(); // the shipped defaults
    w.sync();

    for (what, edit) in [
        (
            "base DN on an empty OU",
            ("base = \"ou=people,", "base = \"ou=empty,"),
        ),
        (
            "filter matching nothing",
            (
                "filter = \"(objectClass=inetOrgPerson)\"",
                "filter = \"(uid=nobody-at-all)\"",
            ),
        ),
    ] {
        let cfg = w.write_config();
        let text = std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen(edit.0, edit.1, 1);
        std::fs::write(&cfg, &text).unwrap();
        // The scope changed: nothing is applied (exit 1 rather than 3: the directory also
        // returned no one, which is the graver of the two).
        let run = run_dirsync(&cfg, &["sync"]);
        assert_eq!(run.code, 1, "{what}: {}", run.all_output());
        assert!(
            run.stdout
                .starts_with("dirsync sync (held back: nothing was applied"),
            "{}",
            run.stdout
        );
        assert!(
            run.stdout
                .contains("the directory scope changed since the last sync"),
            "{what}: {}",
            run.stdout
        );
        assert!(
            run.stdout.contains("--accept-scope-change"),
            "{}",
            run.stdout
        );
        // Accepted: the directory returns no one, and no one is closed.
        let run = run_dirsync(&cfg, &["sync", "--accept-scope-change"]);
        assert_eq!(run.code, 1, "{what}: {}", run.all_output());
        assert!(
            run.stdout
                .contains("the directory returned no users in scope"),
            "{what}: {}",
            run.stdout
        );
        assert!(run.stdout.contains("NOT closed"), "{}", run.stdout);
        assert_eq!(active(&w), 5, "{what}: nobody closed");
    }
}

/// A TCP forwarder to slapd that cuts the connection once `limit` bytes came back from it.
struct Cutter {
    port: u16,
    stop: Arc<AtomicBool>,
}

impl Cutter {
    fn start(upstream_port: u16, limit: usize) -> Cutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut client) = client else { continue };
                let Ok(mut server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut s2);
                });
                std::thread::spawn(move || {
                    let mut sent = 0;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 || sent >= limit {
                            break;
                        }
                        let n = n.min(limit - sent);
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        sent += n;
                    }
                    let _ = client.shutdown(Shutdown::Both);
                    let _ = server.shutdown(Shutdown::Both);
                });
            }
        });
        Cutter { port, stop }
    }
}

impl Drop for Cutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

#[test]
fn a_directory_connection_lost_in_the_middle_of_the_search_closes_nobody() {
    let w = World::start(&staff(300));
    w.sync();
    assert_eq!(active(&w), 300);
    let ldap_port: u16 = w
        .ldap
        .url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap();
    // Enough for the bind and a few pages of 7 entries, then the connection drops.
    let cutter = Cutter::start(ldap_port, 12_000);
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.ldap.url, &format!("ldap://127.0.0.1:{}", cutter.port));
    std::fs::write(&cfg, text).unwrap();
    let run = run_dirsync(&cfg, &["sync"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(run.stderr.contains("directory:"), "{}", run.stderr);
    assert!(run.stdout.is_empty(), "no report, no plan: {}", run.stdout);
    assert_eq!(active(&w), 300, "nobody closed on a broken read");
}

#[test]
fn sixty_of_a_hundred_leaving_is_held_until_exactly_sixty_are_confirmed() {
    let mut w = World::start(&staff(100));
    w.sync();
    w.safety = "[safety]\nmax_closure_percent = 20\n".into();
    for i in 0..60 {
        w.ldap
            .delete(&format!("uid=s{i:03},ou=people,dc=example,dc=com"));
    }
    w.ldap.modify(
        "dn: uid=s099,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: Renamed\n",
    );

    let run = w.dirsync(&["plan"]);
    assert_eq!(
        run.code,
        3,
        "the dry run shows the guard: {}",
        run.all_output()
    );
    let run = w.dirsync(&["sync", "--format", "json"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    let report = run.json();
    assert_eq!(count(&report, "close"), 0);
    assert_eq!(
        count(&report, "update"),
        1,
        "the non-destructive change was applied"
    );
    assert_eq!(report["held"][0]["kind"], "closures");
    let confirm = format!(
        "dirsync --config {} sync --confirm-closures 60",
        w.config_path().display()
    );
    assert_eq!(report["held"][0]["confirm"], confirm.as_str());
    assert!(
        report["held"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&confirm),
        "{report:#}"
    );
    assert_eq!(
        report["held"][0]["changes"].as_array().unwrap().len(),
        60,
        "each held closure is listed"
    );
    assert_eq!(active(&w), 100);
    assert_eq!(
        w.portal_user("s099@example.se")["name"]["familyName"],
        "Renamed"
    );

    // A wrong number releases nothing.
    let run = w.dirsync(&["sync", "--confirm-closures", "59"]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(
        run.stdout.contains("you confirmed 59, the plan has 60"),
        "{}",
        run.stdout
    );
    assert_eq!(active(&w), 100);

    let run = w.dirsync(&["sync", "--confirm-closures", "60", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert_eq!(count(&run.json(), "close"), 60);
    let closed: Vec<String> = w
        .portal
        .users()
        .into_iter()
        .filter(|u| u["active"] == json!(false))
        .map(|u| u["userName"].as_str().unwrap().to_string())
        .collect();
    let expected: Vec<String> = (0..60).map(|i| format!("s{i:03}@example.se")).collect();
    let mut closed_sorted = closed.clone();
    closed_sorted.sort();
    assert_eq!(closed_sorted, expected, "exactly those 60");
}

#[test]
fn a_saved_plan_is_refused_after_a_portal_edit_and_applied_exactly_when_unchanged() {
    let w = World::start(&staff(6));
    w.sync();
    for i in 0..3 {
        w.ldap.modify(&format!("dn: uid=s{i:03},ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: New{i}\n"));
    }
    let saved = w.dir.path().join("reviewed.json");
    let run = w.dirsync(&["plan", "--save", saved.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    assert!(run.stderr.contains("plan saved to"), "{}", run.stderr);

    // Someone edits an affected user in the portal: the saved plan is refused, nothing applied.
    let id = w.portal_user("s001@example.se")["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        w.portal.patch_user(
            &id,
            json!([{"op": "replace", "path": "nickName", "value": "Bo"}])
        ),
        204
    );
    let before = w.portal.users();
    let run = w.dirsync(&["apply", saved.to_str().unwrap()]);
    assert_eq!(run.code, 3, "{}", run.all_output());
    assert!(run.stdout.contains("the saved plan"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("s001@example.se: the portal user changed since the plan was saved"),
        "{}",
        run.stdout
    );
    assert_eq!(w.portal.users(), before, "nothing applied");

    // A fresh plan, unchanged until applied, is applied exactly; a later directory change
    // to another user is not smuggled in.
    let run = w.dirsync(&[
        "plan",
        "--save",
        saved.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let planned = run.json();
    w.ldap.modify(
        "dn: uid=s005,ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: Later\n",
    );
    let run = w.dirsync(&["apply", saved.to_str().unwrap(), "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    let applied = run.json();
    let strip = |r: &Json| -> Vec<Json> {
        r["changes"]
            .as_array()
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
        strip(&applied),
        strip(&planned),
        "exactly the planned changes"
    );
    assert_eq!(count(&applied, "update"), 3);
    assert!(
        applied["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .contains("1 changes appeared since the plan was saved")),
        "{applied:#}"
    );
    assert_eq!(
        w.portal_user("s005@example.se")["name"]["familyName"],
        "F5",
        "not in the reviewed plan"
    );
    for i in 0..3 {
        assert_eq!(
            w.portal_user(&format!("s{i:03}@example.se"))["name"]["familyName"],
            format!("New{i}")
        );
    }
}

/// 200 users synced; then 200 more hired and the first 200 renamed: a cycle of 200
/// creates and 200 updates.
fn busy_world() -> World {
    let mut w = World::start(&staff(200));
    w.portal_page_size = 100;
    w.sync();
    let renames: String = (0..200)
        .map(|i| format!("dn: uid=s{i:03},ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: R{i}\n\n"))
        .collect();
    w.ldap.modify(&renames);
    let hires: String = (200..400)
        .map(|i| {
            person(
                &format!("s{i:03}"),
                &format!("G{i}"),
                &format!("F{i}"),
                Some(&format!("s{i:03}@example.se")),
            )
        })
        .collect();
    w.ldap.add(&hires);
    w
}

#[test]
fn with_30_percent_of_requests_failing_a_busy_cycle_converges_without_duplicates() {
    // The fault-free run, through a counting proxy.
    let mut clean = busy_world();
    let clean_proxy = clean.behind_proxy();
    let report = clean.sync();
    assert_eq!(
        (count(&report, "create"), count(&report, "update")),
        (200, 200)
    );
    let clean_requests = clean_proxy.requests().len();

    let mut w = busy_world();
    let proxy = w.behind_proxy();
    w.portal_timeout_secs = 2;
    proxy.random_faults(
        0.3,
        7,
        vec![
            Fault::retry_after(429, 1),
            Fault::status(500),
            Fault::status(503),
            Fault::Delay(Duration::from_secs(3)),
            Fault::Reset,
            Fault::after_forward(Fault::status(500)),
        ],
    );
    let started = Instant::now();
    let mut cycles = 0;
    loop {
        cycles += 1;
        let run = w.dirsync(&["sync", "--format", "json"]);
        assert!(
            run.code == 0 || run.code == 1,
            "cycle {cycles}: {}",
            run.all_output()
        );
        if run.code == 0 && run.json()["changes"].as_array().unwrap().is_empty() {
            break;
        }
        if run.code == 0 {
            // Applied without failures; one more cycle must then find nothing to do.
            continue;
        }
        assert!(
            cycles < 3,
            "did not converge in three cycles: {}",
            run.stdout
        );
    }
    assert!(cycles <= 3, "converged in {cycles} cycles");
    proxy.heal();
    let users = w.portal.users();
    assert_eq!(users.len(), 400, "no duplicate users");
    assert_eq!(
        portal_shape(users),
        portal_shape(clean.portal.users()),
        "the same portal state as the fault-free run"
    );
    let faulty_requests = proxy.requests().len();
    assert!(
        faulty_requests <= 2 * clean_requests,
        "{faulty_requests} requests with faults vs {clean_requests} without ({:?})",
        started.elapsed()
    );
    eprintln!("fault test: {clean_requests} requests fault-free, {faulty_requests} with 30% faults, {cycles} cycles, {:?}", started.elapsed());
}

#[test]
fn kill_9_at_ten_points_of_a_500_user_apply_ends_in_the_uninterrupted_state() {
    let ldif = staff(500);
    let mut w = World::start(&ldif);
    let proxy = w.behind_proxy();
    let cfg = w.write_config();
    // Ten kill points from a fixed xorshift sequence: each run lets 5 to 44 more creates
    // through, then is killed while its next create is held, either before the portal sees
    // it or after the portal made it but before dirsync heard back.
    let mut seed: u64 = 0x5eed;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut points = Vec::new();
    for _ in 0..10 {
        let creates = 5 + (next() % 40) as usize;
        let point = if next() % 2 == 0 {
            KillPoint::BeforeThePortal
        } else {
            KillPoint::AfterThePortal
        };
        kill_mid_create(&cfg, &proxy, creates, point);
        points.push((creates, point, w.portal.users().len()));
    }
    let at_last_kill = points.last().unwrap().2;
    assert!(at_last_kill < 500, "ten kills, all mid-apply: {points:?}");
    assert!(
        points
            .iter()
            .any(|p| matches!(p.1, KillPoint::AfterThePortal))
            && points
                .iter()
                .any(|p| matches!(p.1, KillPoint::BeforeThePortal)),
        "both kill points are exercised: {points:?}"
    );
    eprintln!("kill points (creates let through, where, portal users after): {points:?}");
    proxy.clear();
    let report = w.sync();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_eq!(
        proxy.count("POST", "/Users") as u64,
        500 - at_last_kill as u64,
        "only the missing users are created: {points:?}"
    );
    assert!(
        w.plan()["changes"].as_array().unwrap().is_empty(),
        "converged"
    );
    let clean = World::start(&ldif);
    clean.sync();
    let after = portal_shape(w.portal.users());
    assert_eq!(after.len(), 500, "no duplicates");
    assert_eq!(after, portal_shape(clean.portal.users()));
}

#[test]
fn a_second_sync_while_one_is_applying_refuses_and_changes_nothing() {
    let mut w = World::start(&staff(30));
    let proxy = w.behind_proxy();
    let cfg = w.write_config();
    let mut first = hold_mid_create(&cfg, &proxy, 5, KillPoint::BeforeThePortal);
    // The first run's other creates may still arrive (and be held); anything the second
    // one sent would start with the portal's discovery.
    let discoveries = proxy.count("GET", "/ServiceProviderConfig");

    let second = run_dirsync(&cfg, &["sync"]);
    assert_eq!(second.code, 1, "{}", second.all_output());
    assert!(
        second
            .stderr
            .contains(&format!("in use by another dirsync (pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("changed nothing"),
        "{}",
        second.stderr
    );
    assert_eq!(
        proxy.count("GET", "/ServiceProviderConfig"),
        discoveries,
        "the refused run sent nothing to the portal:\n{}",
        proxy.summary()
    );
    // A saved plan cannot be applied meanwhile either; a dry run still can run.
    let saved = w.dir.path().join("reviewed.json");
    let plan = run_dirsync(&cfg, &["plan", "--save", saved.to_str().unwrap()]);
    assert_eq!(plan.code, 0, "{}", plan.all_output());
    let apply = run_dirsync(&cfg, &["apply", saved.to_str().unwrap()]);
    assert_eq!(apply.code, 1, "{}", apply.all_output());
    assert!(
        apply.stderr.contains("in use by another dirsync"),
        "{}",
        apply.stderr
    );

    // kill -9 leaves no stale lock: the next run goes ahead and converges.
    kill_and_settle(&mut first, &proxy);
    let report = w.sync();
    assert_eq!(count(&report, "failed"), 0, "{report:#}");
    assert_eq!(active(&w), 30);
}

#[test]
fn a_create_done_by_the_portal_but_reported_failed_is_taken_over_on_409_not_duplicated() {
    let mut w = World::start(&staff(3));
    let proxy = w.behind_proxy();
    // The first create reaches the portal, but dirsync is told it failed: its retry then
    // meets 409 uniqueness.
    proxy.fail_matching(
        "POST",
        "/Users",
        vec![Fault::after_forward(Fault::status(500))],
    );
    let report = w.sync();
    assert_eq!(count(&report, "create"), 3, "{report:#}");
    let notes: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["outcome"]["message"].as_str())
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("HTTP 409") && n.contains("taken over")),
        "{report:#}"
    );
    assert_eq!(w.portal.users().len(), 3, "no duplicate");
    assert!(w.plan()["changes"].as_array().unwrap().is_empty());
}

#[test]
fn a_run_of_failures_stops_the_cycle_early_and_says_why() {
    let mut w = World::start(&staff(12));
    w.sync();
    let proxy = w.behind_proxy();
    w.safety = "[safety]\nmax_closure_percent = 100\nmax_consecutive_failures = 3\n".into();
    let renames: String = (0..12)
        .map(|i| format!("dn: uid=s{i:03},ou=people,dc=example,dc=com\nchangetype: modify\nreplace: sn\nsn: R{i}\n\n"))
        .collect();
    w.ldap.modify(&renames);
    proxy.fail_matching(
        "PATCH",
        "/Users/",
        (0..200).map(|_| Fault::status(503)).collect(),
    );
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "page_size = 5",
        "page_size = 5\nmax_retries = 0\nconcurrency = 1",
    );
    std::fs::write(&cfg, text).unwrap();
    let run = run_dirsync(&cfg, &["sync", "--format", "json"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    let report = run.json();
    assert!(
        report["aborted"]
            .as_str()
            .unwrap()
            .contains("stopped after 3 portal failures in a row"),
        "{report:#}"
    );
    let statuses: Vec<&str> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["outcome"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == "failed").count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == "not_attempted").count(),
        9,
        "{statuses:?}"
    );
    // Healed, the next cycle plans and applies the failed changes again.
    proxy.heal();
    let report = w.sync();
    assert_eq!(count(&report, "update"), 12, "{report:#}");
}
