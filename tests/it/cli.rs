//! The command line as an admin meets it: exit codes and messages for broken configs.

use crate::support::run_dirsync;

const GOOD: &str = r#"
[source]
url = "ldap://127.0.0.1:1"
starttls = false
bind_dn = "cn=dirsync,dc=example,dc=com"
bind_password_file = "pw"
[source.users]
base = "ou=people,dc=example,dc=com"
[portal]
url = "http://127.0.0.1:1/scim/v2"
token_file = "token"
[[mapping]]
from = "mail"
to = "userName"
"#;

#[test]
fn malformed_configs_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "pw-secret-31337\n").unwrap();
    std::fs::write(dir.path().join("token"), "token-secret-31337\n").unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            GOOD.replace("[portal]\n", "[portal]\nurll = \"x\"\n"),
            "key `portal.urll`",
        ),
        (
            "inline password",
            GOOD.replace(
                "bind_password_file = \"pw\"",
                "bind_password = \"inline-pw-secret\"",
            ),
            "key `source.bind_password`",
        ),
        (
            "bad URL",
            GOOD.replace("http://127.0.0.1:1/scim/v2", "http//portal"),
            "key `portal.url`",
        ),
        (
            "missing base DN",
            GOOD.replace("base = \"ou=people,dc=example,dc=com\"\n", ""),
            "key `source.users.base`",
        ),
        (
            "unreadable secret file",
            GOOD.replace("token_file = \"token\"", "token_file = \"missing-token\""),
            "key `portal.token_file`",
        ),
        (
            "bad scope",
            GOOD.replace("[portal]", "scope = \"deep\"\n[portal]"),
            "key `source.users.scope`",
        ),
        (
            "bad mapping",
            GOOD.replace("to = \"userName\"", "to = \"emails[type eq \\\"work\\\"]\""),
            "key `mapping[0].to`",
        ),
        (
            "missing portal section",
            GOOD.replace("[portal]", "[portl]"),
            "key `portl`",
        ),
        (
            "LDAP URL scheme",
            GOOD.replace("ldap://127.0.0.1:1", "http://127.0.0.1:1"),
            "key `source.url`",
        ),
        (
            "negative timeout",
            GOOD.replace("[portal]\n", "[portal]\ntimeout_secs = -5\n"),
            "key `portal.timeout_secs`",
        ),
    ];
    for (what, text, expected) in cases {
        let path = dir.path().join("dirsync.toml");
        std::fs::write(&path, text).unwrap();
        for cmd in ["check", "plan", "sync"] {
            let run = run_dirsync(&path, &[cmd]);
            assert_eq!(
                run.code,
                2,
                "{what} / {cmd}: expected exit 2\n{}",
                run.all_output()
            );
            assert!(
                run.stderr.contains(expected),
                "{what} / {cmd}: {expected:?} not in {:?}",
                run.stderr
            );
            assert!(
                run.stderr.contains("dirsync.toml"),
                "{what}: the file is named"
            );
            for secret in ["pw-secret-31337", "token-secret-31337", "inline-pw-secret"] {
                assert!(
                    !run.all_output().contains(secret),
                    "{what}: a secret leaked: {}",
                    run.all_output()
                );
            }
            assert!(run.stdout.is_empty(), "{what}: no report on a config error");
        }
    }
}

#[test]
fn missing_config_file_and_usage_errors_exit_2() {
    let run = run_dirsync(std::path::Path::new("/nonexistent/dirsync.toml"), &["plan"]);
    assert_eq!(run.code, 2, "{}", run.all_output());
    assert!(
        run.stderr.contains("/nonexistent/dirsync.toml") && run.stderr.contains("cannot read"),
        "{}",
        run.stderr
    );
    let run = run_dirsync(
        std::path::Path::new("/nonexistent/dirsync.toml"),
        &["frobnicate"],
    );
    assert_eq!(run.code, 2, "{}", run.all_output());
    let run = run_dirsync(
        std::path::Path::new("x.toml"),
        &["plan", "--format", "yaml"],
    );
    assert_eq!(run.code, 2, "{}", run.all_output());
}

#[test]
fn unreachable_servers_exit_1_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "pw\n").unwrap();
    std::fs::write(dir.path().join("token"), "token\n").unwrap();
    let path = dir.path().join("dirsync.toml");
    std::fs::write(&path, GOOD).unwrap();
    let run = run_dirsync(&path, &["plan"]);
    assert_eq!(run.code, 1, "{}", run.all_output());
    assert!(
        run.stderr.contains("cannot connect to ldap://127.0.0.1:1"),
        "{}",
        run.stderr
    );
}
