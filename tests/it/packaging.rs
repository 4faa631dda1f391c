//! What the .deb installs: the systemd unit (checked by `systemd-analyze verify` against the
//! binary just built), its agreement with the package's layout in `Cargo.toml`, and
//! `dirsync --version`. `scripts/package` builds the .deb itself and checks its contents.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::find_tool;

const DIRSYNC: &str = env!("CARGO_BIN_EXE_dirsync");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn unit_text() -> String {
    let path = repo().join("systemd/dirsync.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `KEY=VALUE` settings of one section of a unit file, each key with all its values in
/// order (comments and blank lines skipped).
fn section(text: &str, name: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            current = line.to_string();
            continue;
        }
        if current == format!("[{name}]") {
            let (key, value) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("not KEY=VALUE in [{name}]: {line}"));
            out.entry(key.trim().to_string())
                .or_default()
                .push(value.trim().to_string());
        }
    }
    out
}

/// The one value of `key`, which must be set exactly once.
fn one<'a>(settings: &'a BTreeMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([value]) => value,
        other => panic!("{key}= must be set exactly once in the unit, found {other:?}"),
    }
}

/// Seconds of a systemd time span such as `45s`, `5min` or `90`.
fn seconds(span: &str) -> u64 {
    let digits: String = span.chars().take_while(char::is_ascii_digit).collect();
    let n: u64 = digits
        .parse()
        .unwrap_or_else(|_| panic!("not a time span: {span}"));
    match &span[digits.len()..] {
        "" | "s" | "sec" => n,
        "min" | "m" => n * 60,
        unit => panic!("unexpected time unit {unit:?} in {span}"),
    }
}

fn systemd_analyze() -> PathBuf {
    find_tool(
        "systemd-analyze",
        &[PathBuf::from("/usr/bin/systemd-analyze")],
        "apt-get install systemd (scripts/install-test-deps does it)",
    )
}

/// `systemd-analyze verify` of `unit_text` saved as `dirsync.service` in a fresh
/// directory: (exit success, everything it printed, the directory's path).
fn verify(unit_text: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("dirsync.service");
    std::fs::write(&unit, unit_text).unwrap();
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(&unit)
        // Offline: no running systemd is needed, and no pager or colours.
        .env("SYSTEMD_PAGER", "")
        .env("SYSTEMD_COLORS", "0")
        .output()
        .unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.success(),
        printed,
        dir.path().display().to_string(),
    )
}

/// The shipped unit with ExecStart= pointing at the binary this test run built, since
/// `systemd-analyze verify` checks that the program exists.
fn unit_with_built_binary() -> String {
    let text = unit_text();
    let from = "ExecStart=/usr/bin/dirsync ";
    assert_eq!(
        text.matches(from).count(),
        1,
        "the unit should have one `{from}` line"
    );
    text.replace(from, &format!("ExecStart={DIRSYNC} "))
}

/// Lines of `systemd-analyze verify` output that are about our unit (rather than about
/// units of the host it loads as dependencies).
fn about_our_unit<'a>(printed: &'a str, dir: &str) -> Vec<&'a str> {
    printed
        .lines()
        .filter(|l| l.contains(dir) || l.contains("dirsync"))
        .collect()
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify_without_warnings() {
    let (ok, printed, dir) = verify(&unit_with_built_binary());
    assert!(ok, "systemd-analyze verify failed:\n{printed}");
    let complaints = about_our_unit(&printed, &dir);
    assert!(
        complaints.is_empty(),
        "systemd-analyze verify warns about the unit:\n{}",
        complaints.join("\n")
    );

    // The check above must be able to fail: a misspelt key and a bad value are only
    // warnings (exit 0), which the filter has to catch.
    let broken = unit_with_built_binary()
        .replace("UMask=0077", "UMaks=0077")
        .replace("Type=notify", "Type=notfy");
    let (_, printed, dir) = verify(&broken);
    let complaints = about_our_unit(&printed, &dir).join("\n");
    assert!(
        complaints.contains("UMaks") && complaints.contains("notfy"),
        "a broken unit went unnoticed by the check:\n{printed}"
    );
}

#[test]
fn systemd_unit_runs_the_daemon_as_a_notify_service_with_watchdog() {
    let service = section(&unit_text(), "Service");
    assert_eq!(one(&service, "Type"), "notify");
    assert_eq!(one(&service, "NotifyAccess"), "main");
    let exec: Vec<&str> = one(&service, "ExecStart").split_whitespace().collect();
    assert_eq!(
        exec,
        [
            "/usr/bin/dirsync",
            "--config",
            "/etc/dirsync/dirsync.toml",
            "run"
        ],
        "the unit runs the daemon with the packaged config"
    );
    assert_eq!(one(&service, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(seconds(one(&service, "WatchdogSec")) > 0);
    assert_eq!(one(&service, "Restart"), "on-failure");
    assert!(seconds(one(&service, "RestartSec")) >= 5);
    assert_eq!(
        one(&service, "RestartPreventExitStatus"),
        "2",
        "a config error (exit 2) is not restarted"
    );
    assert_eq!(one(&service, "KillSignal"), "SIGTERM");
    let stop = seconds(one(&service, "TimeoutStopSec"));
    assert!(
        (31..=120).contains(&stop),
        "TimeoutStopSec={stop}s should be a little above the daemon's 30 s stop grace"
    );
    assert_eq!(one(&service, "DynamicUser"), "yes");
    assert_eq!(one(&service, "UMask"), "0077");

    // The state lives where the config's default puts it, in a directory only the
    // service can read.
    assert_eq!(one(&service, "StateDirectory"), "dirsync");
    assert_eq!(one(&service, "StateDirectoryMode"), "0700");
    assert_eq!(
        dirsync::config::DEFAULT_STATE_PATH,
        "/var/lib/dirsync/state.db"
    );
    assert_eq!(one(&service, "ConfigurationDirectory"), "dirsync");

    // The two secrets, under the credential names the README and config/example.toml tell
    // admins to use.
    let credentials = &service["LoadCredential"];
    assert_eq!(
        credentials,
        &[
            "ldap-password:/etc/dirsync/ldap-password",
            "portal-token:/etc/dirsync/portal-token"
        ]
    );
    let example = std::fs::read_to_string(repo().join("config/example.toml")).unwrap();
    for key in [
        r#"bind_password_credential = "ldap-password""#,
        r#"token_credential = "portal-token""#,
    ] {
        assert!(
            example.contains(key),
            "config/example.toml should mention {key}"
        );
    }

    for hardening in [
        "ProtectSystem=strict",
        "ProtectProc=invisible",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
    ] {
        let (key, value) = hardening.split_once('=').unwrap();
        assert_eq!(one(&service, key), value, "hardening: {hardening}");
    }
    let install = section(&unit_text(), "Install");
    assert_eq!(one(&install, "WantedBy"), "multi-user.target");
}

/// cargo-deb installs every unit it finds in systemd/: only the service may be there.
#[test]
fn the_service_is_the_only_systemd_unit() {
    let mut units: Vec<String> = std::fs::read_dir(repo().join("systemd"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    units.sort();
    assert_eq!(units, ["dirsync.service"]);
}

/// The unit and the .deb agree: ExecStart's program and --config are where the package
/// installs the binary and the config.
#[test]
fn unit_paths_are_where_the_deb_installs_binary_and_config() {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(repo().join("Cargo.toml")).unwrap()).unwrap();
    let deb = &manifest["package"]["metadata"]["deb"];
    let assets: Vec<(String, String)> = deb["assets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let a = a.as_array().unwrap();
            (
                a[0].as_str().unwrap().to_string(),
                a[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let installed = |source: &str| -> String {
        let (_, dest) = assets
            .iter()
            .find(|(s, _)| s == source)
            .unwrap_or_else(|| panic!("no asset {source} in [package.metadata.deb]"));
        let name = Path::new(source).file_name().unwrap().to_string_lossy();
        match dest.strip_suffix('/') {
            Some(dir) => format!("/{dir}/{name}"),
            None => format!("/{dest}"),
        }
    };
    let service = section(&unit_text(), "Service");
    let exec: Vec<&str> = one(&service, "ExecStart").split_whitespace().collect();
    assert_eq!(installed("target/release/dirsync"), exec[0]);
    assert_eq!(installed("config/example.toml"), exec[2]);
    // Not enabled or started by installing the package: the config must be edited first.
    let units = &deb["systemd-units"];
    assert_eq!(units["enable"].as_bool(), Some(false));
    assert_eq!(units["start"].as_bool(), Some(false));
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(repo())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[test]
fn version_names_the_release_and_the_commit() {
    let out = Command::new(DIRSYNC).arg("--version").output().unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let line = printed.trim_end();
    assert_eq!(printed.lines().count(), 1, "{printed:?}");
    let (name_version, rest) = line
        .split_once(" (")
        .unwrap_or_else(|| panic!("want `dirsync VERSION (COMMIT)`, got {line:?}"));
    assert_eq!(
        name_version,
        format!("dirsync {}", env!("CARGO_PKG_VERSION"))
    );
    let commit = rest
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("want `dirsync VERSION (COMMIT)`, got {line:?}"));

    let in_checkout = git(&["rev-parse", "--show-toplevel"])
        .is_some_and(|top| Path::new(&top).canonicalize().ok() == repo().canonicalize().ok());
    if !in_checkout {
        assert_eq!(commit, "unknown");
        return;
    }
    let head = git(&["rev-parse", "HEAD"]).unwrap();
    let (id, dirty) = match commit.strip_suffix("-dirty") {
        Some(id) => (id, true),
        None => (commit, false),
    };
    assert!(
        id.len() >= 7 && id.chars().all(|c| c.is_ascii_hexdigit()) && head.starts_with(id),
        "--version says commit {id:?}, HEAD is {head}"
    );
    let changed = git(&[
        "status",
        "--porcelain",
        "--",
        "src",
        "build.rs",
        "Cargo.toml",
        "Cargo.lock",
    ])
    .unwrap();
    assert_eq!(
        dirty,
        !changed.is_empty(),
        "--version says {commit:?}; changed sources: {changed:?}"
    );

    let short = Command::new(DIRSYNC).arg("-V").output().unwrap();
    assert_eq!(String::from_utf8(short.stdout).unwrap(), printed);
}

#[test]
fn the_command_the_unit_runs_exists() {
    let unit = unit_text();
    let service = section(&unit, "Service");
    let exec = one(&service, "ExecStart");
    let subcommand = exec.split_whitespace().last().unwrap();
    assert_eq!(subcommand, "run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dirsync"))
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("SIGHUP"));
}
