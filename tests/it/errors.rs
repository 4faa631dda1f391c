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
        // The sync is creating users meanwhile, so a plan may rightly refuse a portal
        // listing that changed under it; the state must never be the problem.
        let listing_moved =
            run.code == 1 && run.stderr.contains("portal: listing /Users is incomplete");
        assert!(
            run.code == 0 || listing_moved,
            "plan {plans}: {}",
            run.all_output()
        );
        assert!(
            !run.stderr.contains("no such table") && !run.stderr.contains("state database"),
            "{}",
            run.stderr
        );
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

/// `w`'s config pointed at `url`, with extra `[source]` lines.
fn source_config(w: &World, url: &str, source_lines: &str) -> std::path::PathBuf {
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!("url = \"{}\"\nstarttls = false\n", w.ldap.url),
        &format!("url = \"{url}\"\n{source_lines}"),
    );
    assert!(text.contains(url), "the URL was replaced");
    std::fs::write(&cfg, text).unwrap();
    cfg
}

fn tls_world(san: Option<&str>) -> World {
    let mut w = World::start("");
    w.ldap = crate::harness::Slapd::start_tls_with_san(
        &person("anna", "Anna", "Berg", Some("anna@example.se")),
        san,
    );
    w
}

#[test]
fn a_directory_certificate_without_subject_alt_name_is_explained_with_the_fix() {
    let w = tls_world(None);
    let ca = w.ldap.ca_file.clone().unwrap();
    let ldaps = w
        .ldap
        .ldaps_url
        .clone()
        .unwrap()
        .replace("127.0.0.1", "localhost");
    let cfg = source_config(&w, &ldaps, &format!("ca_file = \"{}\"\n", ca.display()));
    let run = run_dirsync(&cfg, &["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    for says in [
        "directory: TLS with",
        "subjectAltName, never its common name",
        "no subjectAltName at all",
        "source.tls_server_name",
    ] {
        assert!(run.stderr.contains(says), "{says:?} not in {}", run.stderr);
    }
}

#[test]
fn tls_server_name_checks_the_directory_certificate_against_the_name_it_holds() {
    let w = tls_world(Some("DNS:dc1.dirsync.test"));
    let ca = w.ldap.ca_file.clone().unwrap();
    let ldaps = w.ldap.ldaps_url.clone().unwrap();
    let ca_line = format!("ca_file = \"{}\"\n", ca.display());
    // By address: the certificate does not name 127.0.0.1.
    let run = run_dirsync(&source_config(&w, &ldaps, &ca_line), &["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("not valid for name") && run.stderr.contains("tls_server_name"),
        "{}",
        run.stderr
    );
    // With the name the certificate holds, over LDAPS and over StartTLS.
    for (url, extra) in [
        (ldaps.clone(), ""),
        (w.ldap.url.clone(), "starttls = true\n"),
    ] {
        let lines = format!("{ca_line}{extra}tls_server_name = \"dc1.dirsync.test\"\n");
        let run = run_dirsync(&source_config(&w, &url, &lines), &["check"]);
        assert_eq!(run.code, 0, "{url}: {}", run.all_output());
        assert!(run.stdout.contains("1 users in scope"), "{}", run.stdout);
    }
    // Another name, or another CA: still refused; only the name is replaced.
    let lines = format!("{ca_line}tls_server_name = \"dc2.dirsync.test\"\n");
    let run = run_dirsync(&source_config(&w, &ldaps, &lines), &["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    let other = tempfile::tempdir().unwrap();
    let wrong_ca = crate::support::unrelated_ca(other.path());
    let lines = format!(
        "ca_file = \"{}\"\ntls_server_name = \"dc1.dirsync.test\"\n",
        wrong_ca.display()
    );
    let run = run_dirsync(&source_config(&w, &ldaps, &lines), &["check"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(run.stderr.contains("TLS with"), "{}", run.stderr);
}

#[test]
fn plain_ldap_to_an_ldaps_port_suggests_ldaps() {
    let w = tls_world(Some("IP:127.0.0.1"));
    let ca = w.ldap.ca_file.clone().unwrap();
    let port = w
        .ldap
        .ldaps_url
        .clone()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    let plain = format!("ldap://127.0.0.1:{port}");
    for lines in [
        "starttls = false\n".to_string(),
        format!("ca_file = \"{}\"\n", ca.display()),
    ] {
        let run = run_dirsync(&source_config(&w, &plain, &lines), &["check"]);
        assert_eq!(run.code, 1, "{lines}: {}", run.all_output());
        assert!(
            run.stderr.contains("directory:") && run.stderr.contains("use an ldaps:// URL"),
            "{lines}: {}",
            run.stderr
        );
    }
}
