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

#[test]
fn a_refused_token_names_the_key_it_was_read_from() {
    let w = World::start(&people(1));
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "token_file = \"portal-token\"",
        "token_env = \"DIRSYNC_TEST_TOKEN\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let out = crate::support::dirsync_command(&cfg, &["plan"])
        .env("DIRSYNC_TEST_TOKEN", "not-the-token-77")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("portal: portal refused the credentials (HTTP 401): check the token read from portal.token_env"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-token-77"), "{stderr}");
}

/// An HTTPS server (`openssl s_server`) with a certificate from a throwaway CA.
struct TlsServer {
    child: std::process::Child,
    url: String,
    ca: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsServer {
    fn start() -> TlsServer {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::harness::slapd::make_server_tls(dir.path());
        for _ in 0..5 {
            let port = crate::harness::free_port();
            let mut child = std::process::Command::new(crate::harness::openssl())
                .current_dir(dir.path())
                .args([
                    "s_server",
                    "-quiet",
                    "-www",
                    "-cert",
                    "server.crt",
                    "-key",
                    "server.key",
                ])
                .args(["-accept", &format!("127.0.0.1:{port}")])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..100 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return TlsServer {
                        child,
                        url: format!("https://127.0.0.1:{port}/scim/v2/"),
                        ca,
                        _dir: dir,
                    };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        panic!("openssl s_server did not start");
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn an_untrusted_portal_certificate_names_portal_ca_file_and_is_not_retried() {
    let tls = TlsServer::start();
    let mut w = World::start(&people(1));
    w.portal_url = Some(tls.url.clone());
    let run = w.dirsync(&["--log-level", "debug", "plan"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("portal: TLS with the portal failed")
            && run.stderr.contains("not trusted")
            && run.stderr.contains("portal.ca_file"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("retrying"),
        "a TLS failure is not retried: {}",
        run.stderr
    );
    // With the CA that signed it, TLS passes (the server is no portal, so what fails next
    // is the SCIM answer, not TLS).
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "token_file = \"portal-token\"",
        &format!(
            "token_file = \"portal-token\"\nca_file = \"{}\"",
            tls.ca.display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let run = run_dirsync(&cfg, &["plan"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        !run.stderr.contains("TLS with the portal failed"),
        "{}",
        run.stderr
    );
}

#[test]
fn both_secrets_appear_nowhere_dirsync_writes_whatever_goes_wrong() {
    let w = World::start(&people(4));
    let pw = w.ldap.bind_password.clone();
    let token = w.portal.token.clone();
    let mut written: Vec<u8> = Vec::new();
    fn keep(written: &mut Vec<u8>, run: &crate::support::Run) {
        written.extend_from_slice(run.stdout.as_bytes());
        written.extend_from_slice(run.stderr.as_bytes());
        assert!(
            !run.stderr.contains('\u{1b}'),
            "no ANSI codes in logs to a pipe: {}",
            run.stderr
        );
    }
    let saved = w.dir.path().join("reviewed.json");
    let saved_arg = saved.display().to_string();
    // In each log format: a plan saved and applied, and every command and report format.
    for format in ["text", "json"] {
        for args in [
            vec!["check"],
            vec!["plan", "--format", "json"],
            vec!["plan", "--save", &saved_arg],
            vec!["apply", &saved_arg],
            vec!["sync", "--format", "html"],
            vec!["plan", "--format", "html"],
        ] {
            let mut full = vec!["--log-level", "trace", "--log-format", format];
            full.extend(&args);
            let run = w.dirsync(&full);
            assert_eq!(run.code, 0, "{full:?}: {}", run.all_output());
            keep(&mut written, &run);
        }
    }
    written.extend(std::fs::read(&saved).unwrap());

    // A failing bind, then a refused token.
    let cfg = w.write_config();
    std::fs::write(w.dir.path().join("ldap-password"), "wrong-pw-zz9\n").unwrap();
    let run = run_dirsync(&cfg, &["--log-level", "trace", "sync"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(run.stderr.contains("invalidCredentials"), "{}", run.stderr);
    keep(&mut written, &run);
    std::fs::write(w.dir.path().join("ldap-password"), format!("{pw}\n")).unwrap();
    std::fs::write(w.dir.path().join("portal-token"), "wrong-token-zz9").unwrap();
    for format in ["text", "json"] {
        let run = run_dirsync(
            &cfg,
            &["--log-level", "trace", "--log-format", format, "sync"],
        );
        assert_eq!(run.code, 1, "{}", run.all_output());
        assert!(run.stderr.contains("HTTP 401"), "{}", run.stderr);
        keep(&mut written, &run);
    }
    std::fs::write(w.dir.path().join("portal-token"), &token).unwrap();

    // Each secret where it does not belong.
    let good = std::fs::read_to_string(&cfg).unwrap();
    let misplaced = [
        good.replace(
            "bind_password_file = \"ldap-password\"",
            &format!("bind_password_file = \"{pw}\""),
        ),
        good.replace(
            "bind_password_file = \"ldap-password\"",
            &format!("bind_password_env = \"{pw}\""),
        ),
        good.replace(
            "token_file = \"portal-token\"",
            &format!("token_credential = \"{token}\""),
        ),
        good.replace(
            "token_file = \"portal-token\"",
            &format!("token_env = \"{token}\""),
        ),
        good.replace("page_size = 5", &format!("page_size = \"{token}\"")),
        good.replace("page_size = 7", &format!("page_size = \"{pw}\"")),
        good.replace("[portal]\n", &format!("[portal]\ntoken = \"{token}\"\n")),
        good.replace(
            "timeout_secs = 10\npage_size = 7",
            &format!("timeout_secs = \"{pw}\"\npage_size = 7"),
        ),
    ];
    for text in &misplaced {
        assert_ne!(text, &good, "the case changed the config");
        let bad = w.dir.path().join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        for format in ["text", "json"] {
            let run = run_dirsync(
                &bad,
                &["--log-level", "trace", "--log-format", format, "sync"],
            );
            assert_eq!(run.code, 2, "{text}\n{}", run.all_output());
            assert!(run.stderr.contains("line "), "{}", run.stderr);
            keep(&mut written, &run);
        }
    }

    // The state database and everything beside it.
    for entry in std::fs::read_dir(w.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("state.db")
        {
            written.extend(std::fs::read(&path).unwrap());
        }
    }
    // Every report file the cycles left.
    let reports = w.dir.path().join("reports");
    assert!(reports.is_dir(), "the syncs wrote their reports");
    for entry in std::fs::read_dir(&reports).unwrap() {
        written.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let text = String::from_utf8_lossy(&written);
    assert!(
        text.contains("TRACE") || text.contains("\"level\":\"TRACE\""),
        "trace logs were read"
    );
    for secret in [
        pw.as_str(),
        token.as_str(),
        "wrong-pw-zz9",
        "wrong-token-zz9",
    ] {
        let hits = text.matches(secret).count();
        assert_eq!(hits, 0, "{secret:?} appears {hits} times");
    }
}
