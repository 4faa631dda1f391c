use std::path::Path;

use super::*;

/// Writes the secret files an example refers to into `dir` and points the text at them.
fn with_secrets_in(dir: &Path, text: &str) -> String {
    for name in ["ldap-password", "portal-token"] {
        std::fs::write(dir.join(name), "not-a-real-secret\n").unwrap();
    }
    let ca = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/example-ca.pem");
    for name in ["ldap-ca.pem", "ad-ca.pem", "portal-ca.pem"] {
        std::fs::copy(&ca, dir.join(name)).unwrap();
    }
    text.replace("/etc/dirsync/", &format!("{}/", dir.display()))
}

const MINIMAL: &str = r#"
[source]
url = "ldap://127.0.0.1:3890"
starttls = false
bind_dn = "cn=dirsync,dc=example,dc=com"
bind_password_file = "pw"
[source.users]
base = "ou=people,dc=example,dc=com"
[portal]
url = "http://127.0.0.1:8080"
token_file = "token"
[[mapping]]
from = "mail"
to = "userName"
"#;

fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
    std::fs::write(dir.join("pw"), "bind-secret-123\n").unwrap();
    std::fs::write(dir.join("token"), "token-secret-456").unwrap();
    Config::parse(&dir.join("dirsync.toml"), text)
}

#[test]
fn every_shipped_example_config_parses() {
    let dir = tempfile::tempdir().unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = with_secrets_in(dir.path(), &std::fs::read_to_string(&path).unwrap());
            Config::parse(&path, &text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(
        seen >= 1,
        "no example configs found in {}",
        examples.display()
    );
}

#[test]
fn minimal_config_gets_safe_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.source.tls, Tls::None);
    assert_eq!(c.source.page_size, 500);
    assert_eq!(c.source.anchor_attribute, "entryUUID");
    assert_eq!(c.source.users.search.filter, "(objectClass=inetOrgPerson)");
    assert_eq!(
        c.source.bind.as_ref().unwrap().password.expose(),
        "bind-secret-123"
    );
    assert_eq!(c.portal.token.expose(), "token-secret-456");
    assert_eq!(c.portal.url.as_str(), "http://127.0.0.1:8080/");
    assert_eq!(c.state_path, PathBuf::from(DEFAULT_STATE_PATH));
    assert_eq!(c.health, None, "no listener unless [health] listen is set");
    assert!(
        !format!("{c:?}").contains("secret-"),
        "Debug must not show secrets"
    );
}

#[test]
fn ldap_urls_use_starttls_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), &MINIMAL.replace("starttls = false\n", "")).unwrap();
    assert_eq!(c.source.tls, Tls::StartTls);
    let c = parse_in(
        dir.path(),
        &MINIMAL.replace(
            "ldap://127.0.0.1:3890\"\nstarttls = false",
            "ldaps://127.0.0.1\"",
        ),
    )
    .unwrap();
    assert_eq!(c.source.tls, Tls::Ldaps);
}

/// Each malformed config names the key and the problem, and never echoes the file.
#[test]
fn malformed_configs_name_the_key_and_the_problem() {
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "unknown key",
            MINIMAL.replace("[portal]\n", "[portal]\ntokn_file = \"x\"\n"),
            "portal.tokn_file",
            "unknown field `tokn_file`",
        ),
        (
            "inline secret",
            MINIMAL.replace("[portal]\n", "[portal]\ntoken = \"inline-secret-789\"\n"),
            "portal.token",
            "unknown field `token`",
        ),
        (
            "bad source URL",
            MINIMAL.replace("ldap://127.0.0.1:3890", "not a url"),
            "source.url",
            "not a URL",
        ),
        (
            "bad portal URL scheme",
            MINIMAL.replace("http://127.0.0.1:8080", "ftp://x"),
            "portal.url",
            "not supported",
        ),
        (
            "missing base DN",
            MINIMAL.replace("base = \"ou=people,dc=example,dc=com\"\n", ""),
            "source.users.base",
            "missing field `base`",
        ),
        (
            "empty base DN",
            MINIMAL.replace("ou=people,dc=example,dc=com", ""),
            "source.users.base",
            "empty",
        ),
        (
            "malformed base DN",
            MINIMAL.replace("ou=people,dc=example,dc=com", "ou=people,,dc=example"),
            "source.users.base",
            "not a valid distinguished name (RFC 4514): expected an attribute type (a name or a numeric OID) at character 11",
        ),
        (
            "base DN with a bad escape",
            MINIMAL.replace("ou=people,dc=example,dc=com", r"ou=R&D\\zz,dc=example"),
            "source.users.base",
            "two hex digits or a special character",
        ),
        (
            "a group given as a malformed DN",
            format!("{MINIMAL}\n[source.groups]\nbase = \"ou=groups,dc=x\"\n[[service]]\ngroup = \"cn=Fax,,dc=x\"\nservice = \"fax\"\n"),
            "service[0].group",
            "not a valid distinguished name",
        ),
        (
            "unreadable secret file",
            MINIMAL.replace(
                "bind_password_file = \"pw\"",
                "bind_password_file = \"/nonexistent/pw\"",
            ),
            "source.bind_password_file",
            "the file named by source.bind_password_file cannot be read: No such file or directory",
        ),
        (
            "no secret at all",
            MINIMAL.replace("token_file = \"token\"\n", ""),
            "portal.token_file",
            "missing",
        ),
        (
            "two secret sources",
            MINIMAL.replace(
                "token_file = \"token\"\n",
                "token_file = \"token\"\ntoken_env = \"X\"\n",
            ),
            "portal.token_env",
            "only one",
        ),
        (
            "wrong type",
            MINIMAL.replace("[source.users]", "page_size = \"big\"\n[source.users]"),
            "source.page_size",
            "wrong type: a string where i64 was expected",
        ),
        (
            "page size out of range",
            MINIMAL.replace("[source.users]", "page_size = 0\n[source.users]"),
            "source.page_size",
            "out of range",
        ),
        (
            "bad filter",
            MINIMAL.replace("[portal]", "filter = \"objectClass=person\"\n[portal]"),
            "source.users.filter",
            "not an LDAP filter",
        ),
        (
            "bad mapping target",
            MINIMAL.replace("to = \"userName\"", "to = \"emails[type eq work].value\""),
            "mapping[0].to",
            "quoted",
        ),
        (
            "no userName mapping",
            MINIMAL.replace("to = \"userName\"", "to = \"displayName\""),
            "mapping",
            "userName",
        ),
        (
            "zero timeout",
            MINIMAL.replace("[portal]\n", "[portal]\ntimeout_secs = 0\n"),
            "portal.timeout_secs",
            "at least 1",
        ),
        (
            "TOML syntax",
            MINIMAL.replace("[portal]", "[portal"),
            "",
            "line 9",
        ),
        (
            "health listen not an address",
            format!("{MINIMAL}\n[health]\nlisten = \"localhost-9469\"\n"),
            "health.listen",
            "is not an IP address and port",
        ),
        (
            "health listen without a port",
            format!("{MINIMAL}\n[health]\nlisten = \"127.0.0.1\"\n"),
            "health.listen",
            "is not an IP address and port",
        ),
        (
            "zero health max age",
            format!("{MINIMAL}\n[health]\nlisten = \"127.0.0.1:9469\"\nmax_age_secs = 0\n"),
            "health.max_age_secs",
            "at least 1",
        ),
        (
            "unknown source kind",
            MINIMAL.replace("[source]\n", "[source]\nkind = \"novell\"\n"),
            "source.kind",
            "unknown kind",
        ),
    ];
    let with_groups = MINIMAL.replace(
        "[portal]",
        "[source.groups]\nbase = \"ou=groups,dc=example,dc=com\"\n[portal]",
    );
    let more: Vec<(&str, String, &str, &str)> = vec![
        ("roles without groups", format!("{MINIMAL}\n[roles]\n[[roles.rule]]\ngroup = \"A\"\nrole = \"administrator\"\n"), "source.groups", "missing"),
        ("empty role", format!("{with_groups}\n[roles]\n[[roles.rule]]\ngroup = \"A\"\nrole = \"\"\n"), "roles.rule[0].role", "empty"),
        ("service twice", format!("{with_groups}\n[[service]]\ngroup = \"A\"\nservice = \"fax\"\n[[service]]\ngroup = \"B\"\nservice = \"FAX\"\n"), "service[1].service", "two rules"),
        ("sub-unit attribute missing", format!("{MINIMAL}\n[sub_unit]\nfrom = \"attribute\"\n"), "sub_unit.attribute", "missing"),
        ("sub-unit source unknown", format!("{MINIMAL}\n[sub_unit]\nfrom = \"dn\"\n"), "sub_unit.from", "unknown source"),
        ("portal groups with nothing", format!("{with_groups}\n[portal_groups]\n"), "portal_groups", "name the groups"),
        ("owner unknown", MINIMAL.replace("to = \"userName\"", "to = \"userName\"\nowner = \"nobody\""), "mapping[0].owner", "unknown owner"),
        ("login not directory-owned", MINIMAL.replace("to = \"userName\"", "to = \"userName\"\nowner = \"merge\""), "mapping[0].owner", "owned by the directory"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, text, key, problem) in cases.iter().cloned().chain(more) {
        let err = parse_in(dir.path(), &text).expect_err(what);
        let msg = err.to_string();
        assert!(
            msg.contains("dirsync.toml"),
            "{what}: no file name in {msg:?}"
        );
        if !key.is_empty() {
            assert_eq!(err.key.as_deref(), Some(key), "{what}: {msg}");
            assert!(msg.contains(&format!("key `{key}`")), "{what}: {msg}");
        }
        assert!(msg.contains(problem), "{what}: {msg:?} lacks {problem:?}");
        assert!(
            !msg.contains("secret-"),
            "{what}: the error quotes a secret: {msg}"
        );
        assert!(
            !msg.contains("/nonexistent")
                && !msg.contains("\"big\"")
                && !msg.contains("novell")
                && !msg.contains("localhost-9469"),
            "{what}: the error quotes a value from the file: {msg}"
        );
        if !matches!(key, "" | "mapping") {
            let line = err
                .line
                .unwrap_or_else(|| panic!("{what}: no line in {msg}"));
            assert!(
                msg.contains(&format!("dirsync.toml line {line}: ")),
                "{what}: {msg}"
            );
        }
    }
}

#[test]
fn health_listener_is_on_only_when_listen_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[health]\nlisten = \"127.0.0.1:9469\"\n"),
    )
    .unwrap();
    assert_eq!(
        c.health,
        Some(HealthConfig {
            listen: "127.0.0.1:9469".parse().unwrap(),
            max_age: DEFAULT_HEALTH_MAX_AGE,
        })
    );
    let c = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[health]\nlisten = \"[::1]:9000\"\nmax_age_secs = 900\n"),
    )
    .unwrap();
    let h = c.health.unwrap();
    assert_eq!(h.listen, "[::1]:9000".parse().unwrap());
    assert_eq!(h.max_age, Duration::from_secs(900));
    // The table without `listen`: off, but its other keys are still checked.
    let c = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[health]\nmax_age_secs = 60\n"),
    )
    .unwrap();
    assert_eq!(c.health, None);
}

#[test]
fn relative_paths_are_relative_to_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(
        dir.path(),
        &format!("{MINIMAL}\n[state]\npath = \"state/dirsync.db\"\n"),
    )
    .unwrap();
    assert_eq!(c.state_path, dir.path().join("state/dirsync.db"));
}

/// The line of `needle` in `text`, 1-based.
fn line_with(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).unwrap() + 1
}

#[test]
fn secrets_put_in_the_wrong_place_are_never_echoed() {
    const PW: &str = "Pa55-in-the-wrong-place";
    const TOKEN: &str = "tok-in-the-wrong-place-3f9a";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "the password as its own file name",
            MINIMAL.replace(
                "bind_password_file = \"pw\"",
                &format!("bind_password_file = \"{PW}\""),
            ),
            "the file named by source.bind_password_file cannot be read: No such file or directory",
        ),
        (
            "the password as an environment variable name",
            MINIMAL.replace(
                "bind_password_file = \"pw\"",
                &format!("bind_password_env = \"{PW}\""),
            ),
            "the environment variable named by source.bind_password_env is not set",
        ),
        (
            "the token as a credential name",
            MINIMAL.replace(
                "token_file = \"token\"",
                &format!("token_credential = \"{TOKEN}\""),
            ),
            "names a systemd credential, but CREDENTIALS_DIRECTORY is not set",
        ),
        (
            "the token as a page size",
            MINIMAL.replace(
                "[portal]\n",
                &format!("[portal]\npage_size = \"{TOKEN}\"\n"),
            ),
            "wrong type: a string where i64 was expected",
        ),
        (
            "the token inline under an unknown key",
            MINIMAL.replace("[portal]\n", &format!("[portal]\ntoken = \"{TOKEN}\"\n")),
            "unknown field `token`",
        ),
        (
            "the token as a URL",
            MINIMAL.replace("http://127.0.0.1:8080", TOKEN),
            "not a URL",
        ),
        (
            "the password as a mapping target",
            MINIMAL.replace(
                "to = \"userName\"",
                &format!("to = \"userName\"\nowner = \"{PW}\""),
            ),
            "unknown owner",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (what, text, says) in cases {
        let err = parse_in(dir.path(), &text).expect_err(what);
        let msg = err.to_string();
        assert!(!msg.contains(PW) && !msg.contains(TOKEN), "{what}: {msg}");
        assert!(msg.contains(says), "{what}: {msg}");
        let line = err.line.unwrap_or_else(|| panic!("{what}: no line: {msg}"));
        let wrong = text.lines().nth(line - 1).unwrap_or_default();
        assert!(
            wrong.contains(PW) || wrong.contains(TOKEN) || wrong.contains("owner"),
            "{what}: line {line} is {wrong:?}"
        );
    }
}

#[test]
fn ldap_filters_are_parsed_at_load_naming_the_key_and_where_they_break() {
    let dir = tempfile::tempdir().unwrap();
    let with_groups = MINIMAL.replace(
        "[portal]",
        "[source.groups]\nbase = \"ou=groups,dc=example,dc=com\"\n[portal]",
    );
    for (filter, at) in [
        ("(objectClass=inetOrgPerson)(uid=*)", 28),
        ("(objectClass)", 13),
        ("(cn=a\\\\zz)", 6),
    ] {
        let shown = filter.replace("\\\\", "\\");
        for (key, text) in [
            (
                "source.users.filter",
                MINIMAL.replace("[portal]", &format!("filter = \"{filter}\"\n[portal]")),
            ),
            (
                "source.users.disabled_filter",
                MINIMAL.replace(
                    "[portal]",
                    &format!("disabled_filter = \"{filter}\"\n[portal]"),
                ),
            ),
            (
                "portal_groups.filter",
                format!("{with_groups}\n[portal_groups]\nfilter = \"{filter}\"\n"),
            ),
        ] {
            let err = parse_in(dir.path(), &text).expect_err(filter);
            let msg = err.to_string();
            assert_eq!(err.key.as_deref(), Some(key), "{msg}");
            assert!(msg.contains(&format!("at character {at}:")), "{msg}");
            assert!(
                msg.contains(&format!("    {shown}\n")),
                "the filter is shown: {msg}"
            );
            assert_eq!(err.line, Some(line_with(&text, "filter = ")), "{msg}");
        }
    }
    parse_in(
        dir.path(),
        &MINIMAL.replace(
            "[portal]",
            "filter = \"(&(objectClass=user)(!(cn=x\\\\2a)))\"\n[portal]",
        ),
    )
    .expect("a good filter passes");
}

#[test]
fn a_ca_file_without_a_certificate_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), "this is not a certificate\n").unwrap();
    for key in ["source.ca_file", "portal.ca_file"] {
        let table = key.split('.').next().unwrap();
        let text = MINIMAL
            .replace("http://127.0.0.1:8080", "https://portal.example.com/scim/")
            .replace("ldap://127.0.0.1:3890", "ldaps://dc.example.com")
            .replace("starttls = false\n", "")
            .replace(
                &format!("[{table}]\n"),
                &format!("[{table}]\nca_file = \"ca.pem\"\n"),
            );
        let err = parse_in(dir.path(), &text).expect_err(key);
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
        assert!(
            err.to_string().contains("holds no PEM certificate"),
            "{err}"
        );
    }
}

#[test]
fn a_plain_http_portal_is_refused_unless_on_this_host_or_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let remote = MINIMAL.replace("http://127.0.0.1:8080", "http://portal.example.com/scim/");
    let err = parse_in(dir.path(), &remote).expect_err("token in clear");
    assert_eq!(err.key.as_deref(), Some("portal.url"));
    assert!(err.to_string().contains("in clear"), "{err}");
    parse_in(
        dir.path(),
        &remote.replace("[portal]\n", "[portal]\ninsecure_http = true\n"),
    )
    .expect("a TLS-terminating proxy on this host");
    for local in [
        "http://localhost:8080/",
        "http://[::1]:8080/",
        "http://127.0.0.2/",
    ] {
        parse_in(dir.path(), &MINIMAL.replace("http://127.0.0.1:8080", local)).expect(local);
    }
}

#[test]
fn a_secret_file_others_can_read_gives_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mode = |name: &str, mode: u32| {
        std::fs::set_permissions(dir.path().join(name), std::fs::Permissions::from_mode(mode))
            .unwrap()
    };
    std::fs::write(dir.path().join("pw"), "bind-secret-123\n").unwrap();
    std::fs::write(dir.path().join("token"), "token-secret-456").unwrap();
    mode("pw", 0o600);
    mode("token", 0o644);
    let config = Config::parse(&dir.path().join("dirsync.toml"), MINIMAL).unwrap();
    assert_eq!(
        config.warnings,
        [
            "the secret file named by portal.token_file can be read by other users (mode 644); \
          make it readable by dirsync alone (chmod 600)"
        ]
    );
    mode("token", 0o400);
    let config = Config::parse(&dir.path().join("dirsync.toml"), MINIMAL).unwrap();
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn loading_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let text = String::from_utf8_lossy(&bytes);
            let _ = Config::parse(Path::new("/nonexistent/dirsync.toml"), &text);
        }

        #[test]
        fn a_valid_config_with_one_line_changed_never_panics_nor_quotes_it(
            line in 0usize..14,
            junk in "[^\n]{0,40}",
        ) {
            let mut lines: Vec<&str> = MINIMAL.lines().collect();
            let at = line.min(lines.len() - 1);
            let replaced = format!("{junk}-XQZ");
            lines[at] = &replaced;
            let text = lines.join("\n");
            if let Err(e) = Config::parse(Path::new("/nonexistent/dirsync.toml"), &text) {
                // A value from the file is never quoted back (the marker ends the junk).
                let message = e.to_string();
                prop_assert!(message.contains("dirsync.toml"));
                if junk.contains('=') && junk.len() > 12 {
                    let value = replaced.split_once('=').map(|(_, v)| v.trim()).unwrap_or_default();
                    if value.len() > 8 {
                        prop_assert!(!message.contains(value), "{}", message);
                    }
                }
            }
        }
    }
}

#[test]
fn reports_go_beside_the_state_by_default_and_keep_a_bounded_history() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), MINIMAL).unwrap();
    assert_eq!(c.reports.dir, PathBuf::from("/var/lib/dirsync/reports"));
    assert_eq!(c.reports.keep, DEFAULT_REPORTS_KEEP);
    assert_eq!(c.reports.max_age, Duration::from_secs(30 * 86400));
    assert!(c.mail.is_none(), "no mail unless [mail] is set");

    let text = format!("{MINIMAL}\n[state]\npath = \"var/state.db\"\n");
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.reports.dir, dir.path().join("var/reports"));

    let text = format!("{MINIMAL}\n[reports]\ndir = \"out\"\nkeep = 5\nmax_age_days = 2\n");
    let c = parse_in(dir.path(), &text).unwrap();
    assert_eq!(c.reports.dir, dir.path().join("out"));
    assert_eq!(
        (c.reports.keep, c.reports.max_age),
        (5, Duration::from_secs(2 * 86400))
    );

    for (table, key) in [
        ("keep = 0", "reports.keep"),
        ("max_age_days = 0", "reports.max_age_days"),
        ("dir = \" \"", "reports.dir"),
    ] {
        let err = parse_in(dir.path(), &format!("{MINIMAL}\n[reports]\n{table}\n")).unwrap_err();
        assert_eq!(err.key.as_deref(), Some(key), "{err}");
    }
}

const MAIL: &str = "\n[mail]\nhost = \"smtp.example.com\"\nfrom = \"dirsync <dirsync@example.com>\"\nto = [\"admins@example.com\"]\n";

#[test]
fn mail_uses_starttls_by_default_and_plain_smtp_only_on_this_host() {
    let dir = tempfile::tempdir().unwrap();
    let c = parse_in(dir.path(), &format!("{MINIMAL}{MAIL}")).unwrap();
    let m = c.mail.unwrap();
    assert_eq!((m.tls, m.port), (MailTls::StartTls, 587));
    assert_eq!(m.to.len(), 1);
    assert!(m.credentials.is_none());

    let c = parse_in(dir.path(), &format!("{MINIMAL}{MAIL}tls = \"tls\"\n")).unwrap();
    assert_eq!(c.mail.map(|m| (m.tls, m.port)), Some((MailTls::Tls, 465)));

    let err = parse_in(dir.path(), &format!("{MINIMAL}{MAIL}tls = \"none\"\n")).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("mail.tls"));
    assert!(err.problem.contains("in clear"), "{err}");

    for host in ["127.0.0.1", "localhost", "::1"] {
        let text = format!("{MINIMAL}{}", MAIL.replace("smtp.example.com", host))
            + "tls = \"none\"\nport = 2525\n";
        let m = parse_in(dir.path(), &text).unwrap().mail.unwrap();
        assert_eq!((m.tls, m.port), (MailTls::None, 2525), "{host}");
    }
}

#[test]
fn mail_credentials_come_from_a_secret_source_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("smtp-pw"), "smtp-secret-789\n").unwrap();
    let text = format!("{MINIMAL}{MAIL}username = \"dirsync\"\npassword_file = \"smtp-pw\"\n");
    let c = parse_in(dir.path(), &text).unwrap();
    let (user, password) = c.mail.as_ref().unwrap().credentials.clone().unwrap();
    assert_eq!(
        (user.as_str(), password.expose()),
        ("dirsync", "smtp-secret-789")
    );
    assert!(!format!("{c:?}").contains("smtp-secret"));

    let err = parse_in(
        dir.path(),
        &format!("{MINIMAL}{MAIL}password_file = \"smtp-pw\"\n"),
    )
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("mail.username"), "{err}");
    let err = parse_in(
        dir.path(),
        &format!("{MINIMAL}{MAIL}username = \"dirsync\"\n"),
    )
    .unwrap_err();
    assert_eq!(err.key.as_deref(), Some("mail.password_file"), "{err}");
}

#[test]
fn mail_addresses_are_checked_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{MINIMAL}{}",
        MAIL.replace("admins@example.com", "hunter2 not an address")
    );
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("mail.to[0]"));
    assert!(!err.to_string().contains("hunter2"), "{err}");
    let text = format!(
        "{MINIMAL}{}",
        MAIL.replace("to = [\"admins@example.com\"]", "to = []")
    );
    let err = parse_in(dir.path(), &text).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("mail.to"), "{err}");
}
