//! `dirsync run`, the daemon, as a child process against the real slapd and scim2-server
//! (through the test proxy where answers must be held or broken): the schedule, signals,
//! one daemon per state, `status`, `/healthz`, `/metrics`, standby.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::harness::{free_port, Fault};
use crate::support::{count, person, run_dirsync, World};

/// A running `dirsync run`, its log in a file. Killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(config: &Path) -> Daemon {
        let log = config.with_file_name(format!("daemon-{}.log", crate::harness::random_hex(4)));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_dirsync"))
            .arg("--config")
            .arg(config)
            .args(["--log-level", "info", "run"])
            .env_remove("DIRSYNC_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `needle` is in the log `n` times; panics with the log after `within`.
    #[track_caller]
    fn wait_for(&self, needle: &str, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} not seen {n} times within {within:?}; log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -s {signal}");
    }

    /// Waits for the process to exit; its exit code and how long that took.
    #[track_caller]
    fn wait_exit(&mut self, within: Duration) -> (i32, Duration) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "the daemon did not exit within {within:?}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn people(n: usize) -> String {
    (0..n)
        .map(|i| {
            let uid = format!("u{i:04}");
            person(&uid, "Test", &uid, Some(&format!("{uid}@example.se")))
        })
        .collect()
}

/// A cron that never fires during a test: cycles start only at start or on SIGUSR1.
const NEVER: &str = "0 0 0 1 1 * 2099";

fn schedule(cron: &str, run_at_start: bool, extra: &str) -> String {
    format!("[schedule]\ncron = \"{cron}\"\nrun_at_start = {run_at_start}\n{extra}\n")
}

fn status_json(config: &Path) -> Json {
    let run = run_dirsync(config, &["status", "--format", "json"]);
    assert_eq!(run.code, 0, "{}", run.all_output());
    run.json()
}

fn get(url: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call().unwrap();
    let status = resp.status().as_u16();
    (status, resp.body_mut().read_to_string().unwrap())
}

/// Polls `/healthz` until it answers `want` (the daemon records a cycle for health just
/// after the cycle logs its end); the last body.
#[track_caller]
fn wait_health(base: &str, want: u16) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = get(&format!("{base}/healthz"));
        if code == want {
            return body;
        }
        assert!(Instant::now() < deadline, "/healthz stayed {code}: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of one sample line of a Prometheus exposition, e.g.
/// `dirsync_changes_applied_total{kind="create"}`.
fn metric(exposition: &str, sample: &str) -> f64 {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in:\n{exposition}"))
}

#[test]
fn on_a_two_second_schedule_a_directory_change_lands_within_two_ticks_and_ticks_during_a_long_cycle_are_skipped(
) {
    let mut w = World::start(&people(3));
    let proxy = w.behind_proxy();
    w.extra_config = schedule("*/2 * * * * *", true, "");
    let config = w.write_config();
    let daemon = Daemon::start(&config);
    daemon.wait_for("cycle finished", 1, Duration::from_secs(60));
    assert_eq!(w.portal.users().len(), 3);

    // A new user in the directory is in the portal within two ticks (4 s) plus a cycle.
    w.ldap
        .add(&person("late", "Late", "Comer", Some("late@example.se")));
    let added = Instant::now();
    while !w
        .portal
        .users()
        .iter()
        .any(|u| u["userName"] == "late@example.se")
    {
        assert!(
            added.elapsed() < Duration::from_secs(20),
            "not applied; log:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = added.elapsed();
    eprintln!("a directory change reached the portal {took:?} after it was made");
    assert!(took < Duration::from_secs(12), "{took:?}");

    // A cycle held for 7 s at its first request spans three ticks: they are skipped, not
    // queued, so only one cycle runs meanwhile.
    let finished_before = daemon.log().matches("cycle finished").count();
    let skipped_before = daemon
        .log()
        .matches("skipped (cycles never overlap)")
        .count();
    proxy.fail_matching(
        "GET",
        "/ServiceProviderConfig",
        vec![Fault::Delay(Duration::from_secs(7))],
    );
    daemon.wait_for(
        "skipped (cycles never overlap)",
        skipped_before + 2,
        Duration::from_secs(30),
    );
    daemon.wait_for(
        "cycle finished",
        finished_before + 1,
        Duration::from_secs(30),
    );
    let after_long = Instant::now();
    let discovered = proxy.count("GET", "/ServiceProviderConfig");
    std::thread::sleep(Duration::from_millis(2500));
    // Within one more tick at most one new cycle starts: nothing was queued.
    let new_cycles = proxy.count("GET", "/ServiceProviderConfig") - discovered;
    assert!(
        new_cycles <= 2,
        "{new_cycles} cycles started in {:?}",
        after_long.elapsed()
    );
    let log = daemon.log();
    assert!(!log.contains(&w.portal.token) && !log.contains(&w.ldap.bind_password));
}

#[test]
fn sighup_reloads_a_valid_config_for_the_next_cycle_keeps_the_old_one_if_invalid_and_sigusr1_starts_a_cycle(
) {
    let mut w = World::start(&people(2));
    w.extra_config = schedule(NEVER, false, "");
    let config = w.write_config();
    let daemon = Daemon::start(&config);
    daemon.wait_for("dirsync daemon started", 1, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        w.portal.users().is_empty(),
        "no cycle at start with run_at_start = false"
    );

    daemon.signal("USR1");
    daemon.wait_for("cycle finished", 1, Duration::from_secs(60));
    assert_eq!(w.portal.users().len(), 2);
    assert_eq!(
        w.portal_user("u0000@example.se")["name"]["familyName"],
        "u0000"
    );

    // A valid change: familyName now comes from cn ("Test u0000").
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replacen("from = \"sn\"", "from = \"cn\"", 1);
    assert_ne!(changed, text);
    std::fs::write(&config, &changed).unwrap();
    daemon.signal("HUP");
    daemon.wait_for("config reloaded", 1, Duration::from_secs(30));
    assert!(daemon.log().contains("changed=mapping"), "{}", daemon.log());
    daemon.signal("USR1");
    daemon.wait_for("cycle finished", 2, Duration::from_secs(60));
    assert_eq!(
        w.portal_user("u0000@example.se")["name"]["familyName"],
        "Test u0000",
        "the reloaded mapping applied"
    );

    // An invalid change: logged with the message `check` gives; the old config runs on.
    let broken = changed.replace("page_size = 7", "page_size = \"seven\"");
    std::fs::write(&config, &broken).unwrap();
    let check = run_dirsync(&config, &["check"]);
    assert_eq!(check.code, 2);
    let check_message = check
        .stderr
        .lines()
        .find(|l| l.contains("config error"))
        .unwrap()
        .trim_start_matches("dirsync: ")
        .to_string();
    daemon.signal("HUP");
    daemon.wait_for("the config was not reloaded", 1, Duration::from_secs(30));
    assert!(
        daemon.log().contains(&check_message),
        "{check_message}\n{}",
        daemon.log()
    );
    w.ldap
        .add(&person("new", "New", "Person", Some("new@example.se")));
    daemon.signal("USR1");
    daemon.wait_for("cycle finished", 3, Duration::from_secs(60));
    assert_eq!(
        w.portal_user("new@example.se")["name"]["familyName"],
        "New Person",
        "the running (reloaded, valid) config still syncs"
    );
}

#[test]
fn sigterm_during_held_creates_lets_those_in_flight_finish_records_an_interrupted_run_and_the_next_start_creates_the_rest(
) {
    let mut w = World::start(&people(40));
    let proxy = w.behind_proxy();
    w.extra_config = schedule(NEVER, true, "stop_grace_secs = 10");
    let config = w.write_config();
    // Five creates pass; the next ones (up to the concurrency, 4) are held 2 s each.
    let mut faults = vec![Fault::Pass; 5];
    faults.extend((0..4).map(|_| Fault::Delay(Duration::from_secs(2))));
    proxy.fail_matching("POST", "/Users", faults);
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.count("POST", "/Users") < 9 {
        assert!(Instant::now() < deadline, "{}", proxy.summary());
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal("TERM");
    let (code, drain) = daemon.wait_exit(Duration::from_secs(30));
    eprintln!("SIGTERM drain: {drain:?}");
    assert_eq!(code, 0, "{}", daemon.log());
    assert!(
        drain < Duration::from_secs(10),
        "within the grace period: {drain:?}"
    );
    let made = w.portal.users().len();
    assert_eq!(
        made,
        9,
        "the held creates finished, no new one started: {}",
        proxy.summary()
    );

    let status = status_json(&config);
    let last = &status["runs"][0];
    assert_eq!(last["outcome"], "interrupted", "{status:#}");
    assert_eq!(
        last["created"], 9,
        "every create the portal confirmed is recorded"
    );
    assert!(status["daemon"].is_null(), "stopped: {status:#}");

    // The next start creates exactly the rest.
    proxy.heal();
    let before = proxy.count("POST", "/Users");
    let report = w.sync();
    assert_eq!(count(&report, "create"), 40 - 9, "{report:#}");
    assert_eq!(proxy.count("POST", "/Users") - before, 31);
    assert_eq!(w.portal.users().len(), 40, "no duplicates");
}

#[test]
fn a_second_daemon_is_refused_status_shows_the_cycles_and_health_and_metrics_follow_the_portal() {
    let mut w = World::start(&people(5));
    let proxy = w.behind_proxy();
    let port = free_port();
    w.extra_config = format!(
        "{}[health]\nlisten = \"127.0.0.1:{port}\"\nmax_age_secs = 600\n",
        schedule(NEVER, true, "")
    );
    let config = w.write_config();
    let daemon = Daemon::start(&config);
    daemon.wait_for("cycle finished", 1, Duration::from_secs(60));
    let base = format!("http://127.0.0.1:{port}");
    wait_health(&base, 200);

    // A second daemon on the same state refuses, naming the first one's pid.
    let second = run_dirsync(&config, &["run"]);
    assert_eq!(second.code, 1, "{}", second.all_output());
    assert!(
        second.stderr.contains("another dirsync daemon runs")
            && second
                .stderr
                .contains(&format!("pid {}", daemon.child.id())),
        "{}",
        second.stderr
    );
    // A manual sync while the daemon is idle works.
    let manual = run_dirsync(&config, &["sync", "--format", "json"]);
    assert_eq!(manual.code, 0, "{}", manual.all_output());

    // The portal fails: the next cycle fails and /healthz says so.
    proxy.random_faults(1.0, 7, vec![Fault::status(503)]);
    daemon.signal("USR1");
    daemon.wait_for("cycle failed", 1, Duration::from_secs(120));
    let body = wait_health(&base, 503);
    assert!(body.contains("last cycle failed"), "{body}");
    // Back: 200 again after the next cycle.
    proxy.heal();
    daemon.signal("USR1");
    daemon.wait_for("cycle finished", 2, Duration::from_secs(60));
    wait_health(&base, 200);

    // status, in text and JSON, while the daemon runs.
    let status = status_json(&config);
    assert_eq!(status["daemon"]["pid"], daemon.child.id());
    let runs = status["runs"].as_array().unwrap();
    let outcomes: Vec<&str> = runs
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    let commands: Vec<&str> = runs
        .iter()
        .map(|r| r["command"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "failed", "ok", "ok"], "{status:#}");
    assert_eq!(commands, ["sync"; 4]);
    assert!(
        runs[1]["error"].as_str().unwrap().contains("portal"),
        "{status:#}"
    );
    let text = run_dirsync(&config, &["status"]);
    assert_eq!(text.code, 0);
    for says in [
        "daemon: running (pid",
        "Last 4 of 4 recorded cycles",
        "sync failed",
        "portal",
    ] {
        assert!(text.stdout.contains(says), "{says:?} in {}", text.stdout);
    }

    // /metrics agrees with the recorded runs and the proxy.
    let (code, metrics) = get(&format!("{base}/metrics"));
    assert_eq!(code, 200);
    assert_eq!(
        metric(&metrics, "dirsync_changes_applied_total{kind=\"create\"}"),
        5.0
    );
    let posts = proxy
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.status == 201)
        .count();
    assert_eq!(posts, 5);
    assert_eq!(
        metric(
            &metrics,
            "dirsync_portal_requests_total{method=\"POST\",status=\"201\"}"
        ),
        5.0
    );
    for read in ["full", "incremental"] {
        assert_eq!(
            metric(
                &metrics,
                &format!("dirsync_cycle_duration_seconds_count{{read=\"{read}\",outcome=\"ok\"}}")
            ),
            1.0,
            "the daemon's two good cycles, the first a full read, the second an incremental \
             one (the manual sync is not the daemon's)"
        );
    }
    let log = daemon.log();
    assert!(!log.contains(&w.portal.token) && !log.contains(&w.ldap.bind_password));
}

#[test]
fn standby_plans_every_cycle_writes_nothing_and_its_plan_is_what_an_active_instance_applies() {
    let mut w = World::start(&people(6));
    w.extra_config = schedule(NEVER, true, "standby = true");
    let config = w.write_config();
    let mut daemon = Daemon::start(&config);
    daemon.wait_for("cycle finished", 1, Duration::from_secs(60));
    daemon.signal("USR1");
    daemon.wait_for("cycle finished", 2, Duration::from_secs(60));
    assert!(
        w.portal.users().is_empty(),
        "standby never writes to the portal"
    );
    let status = status_json(&config);
    assert_eq!(status["standby"], true);
    let standby = &status["runs"][0];
    assert_eq!(standby["command"], "standby", "{status:#}");
    assert_eq!(standby["created"], 6, "the plan it would apply");
    // Standby cycles leave their reports too.
    daemon.wait_for("report written", 2, Duration::from_secs(30));
    let reports = w.dir.path().join("reports");
    let standby_reports = std::fs::read_dir(&reports)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with("-standby.json")
        })
        .count();
    assert_eq!(standby_reports, 2);
    let latest: Json =
        serde_json::from_str(&std::fs::read_to_string(reports.join("latest.json")).unwrap())
            .unwrap();
    assert_eq!(latest["command"], "standby");
    assert_eq!(latest["counts"]["create"], 6);
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(Duration::from_secs(30)).0, 0);

    // No links in the state: a plan still sees six users to create, none to adopt.
    let plan = w.plan();
    assert_eq!(count(&plan, "create"), 6, "{plan:#}");
    assert_eq!(plan["portal"]["managed"], 0);
    // The active instance applies exactly what standby planned.
    let report = w.sync();
    let planned: Vec<&Json> = plan["changes"].as_array().unwrap().iter().collect();
    let applied: Vec<&Json> = report["changes"].as_array().unwrap().iter().collect();
    assert_eq!(planned.len(), applied.len());
    for (p, a) in planned.iter().zip(&applied) {
        assert_eq!(
            (&p["action"], &p["user_name"], &p["fields"]),
            (&a["action"], &a["user_name"], &a["fields"])
        );
        assert_eq!(a["outcome"]["status"], "applied");
    }
    assert_eq!(
        count(&report, "create"),
        standby["created"].as_u64().unwrap()
    );
}

#[test]
fn sigterm_past_the_grace_period_abandons_requests_in_flight_and_still_records_the_run() {
    let mut w = World::start(&people(20));
    let proxy = w.behind_proxy();
    w.extra_config = schedule(NEVER, true, "stop_grace_secs = 2");
    let config = w.write_config();
    let mut faults = vec![Fault::Pass; 3];
    faults.extend((0..4).map(|_| Fault::Delay(Duration::from_secs(600))));
    proxy.fail_matching("POST", "/Users", faults);
    let mut daemon = Daemon::start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while proxy.count("POST", "/Users") < 7 {
        assert!(Instant::now() < deadline, "{}", proxy.summary());
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal("TERM");
    let (code, drain) = daemon.wait_exit(Duration::from_secs(30));
    eprintln!("SIGTERM past the grace: exit after {drain:?}");
    assert_eq!(code, 0, "{}", daemon.log());
    assert!(
        drain >= Duration::from_secs(2) && drain < Duration::from_secs(10),
        "the grace, then out: {drain:?}"
    );
    assert!(daemon.log().contains("the stop grace period is over"));
    proxy.wait_idle(Duration::from_secs(10));
    assert_eq!(
        w.portal.users().len(),
        3,
        "the held creates never reached the portal"
    );
    let status = status_json(&config);
    assert_eq!(status["runs"][0]["outcome"], "interrupted", "{status:#}");
    assert_eq!(status["runs"][0]["created"], 3);
    proxy.heal();
    let report = w.sync();
    assert_eq!(count(&report, "create"), 17);
    assert_eq!(w.portal.users().len(), 20);
}

#[test]
fn a_failing_cycle_leaves_a_report_and_is_mailed_once_until_it_recovers() {
    let smtp = crate::harness::SmtpSink::start();
    let mut w = World::start(&people(2));
    // The portal is down: nothing listens where the config points.
    w.portal_url = Some(format!("http://127.0.0.1:{}", free_port()));
    w.extra_config = format!("{}{}", schedule(NEVER, true, ""), smtp.config());
    let config = w.write_config();
    let daemon = Daemon::start(&config);
    daemon.wait_for("report mailed", 1, Duration::from_secs(60));
    let latest: Json = serde_json::from_str(
        &std::fs::read_to_string(w.dir.path().join("reports/latest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(latest["outcome"], "failed", "{latest:#}");
    assert!(
        latest["aborted"].as_str().unwrap().starts_with("portal: "),
        "{latest:#}"
    );
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1);
    assert!(
        mails[0]
            .subject()
            .ends_with(": sync: the portal could not be read"),
        "{}",
        mails[0].subject()
    );

    // Still down next cycle: the same condition, no second mail.
    daemon.signal("USR1");
    daemon.wait_for("report written", 2, Duration::from_secs(60));
    // The portal is back (a reload): the cycle succeeds and one mail says it is resolved.
    w.portal_url = None;
    w.write_config();
    daemon.signal("HUP");
    daemon.wait_for("SIGHUP: config reloaded", 1, Duration::from_secs(10));
    daemon.signal("USR1");
    daemon.wait_for("report mailed", 2, Duration::from_secs(60));
    let mails = smtp.mails();
    assert_eq!(
        mails.len(),
        2,
        "{:?}",
        mails.iter().map(|m| m.subject()).collect::<Vec<_>>()
    );
    assert!(
        mails[1]
            .subject()
            .ends_with(": resolved: the portal could not be read"),
        "{}",
        mails[1].subject()
    );
    assert_eq!(w.portal.users().len(), 2);
}
