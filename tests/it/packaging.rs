//! Packaging: `dirsync --version` names the release and the commit it was built from.

use std::path::Path;
use std::process::Command;

const DIRSYNC: &str = env!("CARGO_BIN_EXE_dirsync");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
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
