//! Runtime errors that say what to do: each names the side (directory, portal, state),
//! what failed and the way out. Against the real slapd and scim2-server.

use crate::support::{person, run_dirsync, World};

fn people(n: usize) -> String {
    (0..n)
        .map(|i| {
            let uid = format!("u{i:04}");
            person(&uid, "Test", &uid, Some(&format!("{uid}@example.se")))
        })
        .collect()
}

#[test]
fn a_plan_run_while_the_first_sync_creates_the_state_never_fails_on_a_half_made_database() {
    let w = World::start(&people(200));
    let config = w.write_config();
    let mut sync = std::process::Command::new(env!("CARGO_BIN_EXE_dirsync"))
        .arg("--config")
        .arg(&config)
        .arg("sync")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut plans = 0;
    let mut during = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let running = sync.try_wait().unwrap().is_none();
        let run = run_dirsync(&config, &["plan", "--format", "json"]);
        plans += 1;
        assert_eq!(run.code, 0, "plan {plans}: {}", run.all_output());
        assert!(!run.stderr.contains("no such table"), "{}", run.stderr);
        if !running {
            break;
        }
        during += 1;
        assert!(std::time::Instant::now() < deadline, "the sync did not end");
    }
    assert!(sync.wait().unwrap().success());
    assert!(during >= 1, "no plan ran while the sync did");
    eprintln!("{during} plans ran while the first sync created the state");
}

#[test]
fn a_damaged_state_database_names_the_file_and_the_two_ways_out() {
    let w = World::start(&people(3));
    w.sync();
    let db = w.dir.path().join("state.db");
    std::fs::write(&db, vec![0x42; 16384]).unwrap();
    for cmd in ["plan", "sync"] {
        let run = w.dirsync(&[cmd]);
        assert_eq!(run.code, 1, "{cmd}: {}", run.all_output());
        assert!(
            run.stderr.contains(&db.display().to_string())
                && run.stderr.contains("restore it from a backup")
                && run.stderr.contains("move it away"),
            "{cmd}: {}",
            run.stderr
        );
    }
    // The second way out works: moved away, the next sync re-adopts everyone.
    std::fs::rename(&db, w.dir.path().join("state.db.damaged")).unwrap();
    let report = w.sync();
    assert_eq!(crate::support::count(&report, "create"), 0, "{report:#}");
    assert_eq!(w.portal.users().len(), 3);
}
