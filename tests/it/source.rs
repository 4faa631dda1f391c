//! The LDAP source against a real slapd: TLS verification, timeouts, limits.

use std::net::TcpListener;

use crate::harness::Slapd;
use crate::support::{person, World};

#[test]
fn starttls_and_ldaps_verify_the_server_against_the_ca_file() {
    let mut w = World::start("");
    // Replace the plain slapd with a TLS one.
    w.ldap = Slapd::start_tls(&person("anna", "Anna", "Berg", Some("anna@example.se")));
    let ca = w.ldap.ca_file.clone().unwrap();
    let ldaps = w.ldap.ldaps_url.clone().unwrap();

    for (url, starttls) in [(w.ldap.url.clone(), "true"), (ldaps.clone(), "")] {
        let cfg = w.write_config();
        let text = std::fs::read_to_string(&cfg).unwrap();
        let mut text = text.replace(&w.ldap.url, &url).replace(
            "starttls = false",
            &if starttls.is_empty() {
                String::new()
            } else {
                format!("starttls = {starttls}")
            },
        );
        text = text.replace(
            "[source.users]",
            &format!("ca_file = \"{}\"\n[source.users]", ca.display()),
        );
        std::fs::write(&cfg, &text).unwrap();
        let run = crate::support::run_dirsync(&cfg, &["check"]);
        assert_eq!(run.code, 0, "{url}: {}", run.all_output());
        assert!(run.stdout.contains("1 users in scope"), "{}", run.stdout);

        // A CA that did not sign the server's certificate: refused, with a hint.
        let other = tempfile::tempdir().unwrap();
        let wrong_ca = crate::support::unrelated_ca(other.path());
        std::fs::write(
            &cfg,
            text.replace(&ca.display().to_string(), &wrong_ca.display().to_string()),
        )
        .unwrap();
        let run = crate::support::run_dirsync(&cfg, &["check"]);
        assert_eq!(
            run.code,
            1,
            "{url}: a wrong CA must fail: {}",
            run.all_output()
        );
        assert!(run.stderr.contains("TLS with"), "{url}: {}", run.stderr);
        assert!(
            run.stderr.contains("ca_file"),
            "{url}: the message points at ca_file: {}",
            run.stderr
        );
    }
}

#[test]
fn a_server_that_never_answers_times_out_and_closes_nobody() {
    let w = World::start(&person("anna", "Anna", "Berg", Some("anna@example.se")));
    w.sync();
    // A TCP server that accepts and then says nothing.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.ldap.url, &format!("ldap://127.0.0.1:{port}"))
        .replace(
            "timeout_secs = 10\npage_size = 7",
            "timeout_secs = 2\npage_size = 7",
        );
    std::fs::write(&cfg, text).unwrap();
    let started = std::time::Instant::now();
    let run = crate::support::run_dirsync(&cfg, &["sync"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(
        started.elapsed().as_secs() < 60,
        "the timeout bounded the run"
    );
    assert_eq!(
        w.portal_user("anna@example.se")["active"],
        serde_json::json!(true)
    );
    drop(silent);
}

#[test]
fn a_size_limited_search_fails_the_whole_read_instead_of_returning_part_of_it() {
    let ldif: String = (0..12)
        .map(|i| {
            person(
                &format!("u{i}"),
                "G",
                "F",
                Some(&format!("u{i}@example.se")),
            )
        })
        .collect();
    let w = World::start(&ldif);
    w.sync();
    assert_eq!(w.portal.users().len(), 12);
    // The `limited` account may read at most 5 entries per search (slapd limits size.prtotal).
    let cfg = w.write_config();
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&w.ldap.bind_dn, &w.ldap.limited_bind_dn);
    std::fs::write(&cfg, text).unwrap();
    // A full read (nothing changed, so an incremental one would read next to nothing).
    let run = crate::support::run_dirsync(&cfg, &["sync", "--full"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(run.stderr.contains("sizeLimitExceeded"), "{}", run.stderr);
    let active = w
        .portal
        .users()
        .iter()
        .filter(|u| u["active"] == serde_json::json!(true))
        .count();
    assert_eq!(active, 12, "nobody was closed on a partial read");
}
