//! Puts the git commit the binary is built from into `DIRSYNC_COMMIT`, for
//! `dirsync --version` ("dirsync 0.1.0 (abc1234)"): the short commit id, with `-dirty` when
//! the sources (`src/`, `build.rs`, `Cargo.toml`, `Cargo.lock`) differ from it, or
//! "unknown" when this is not a git checkout of dirsync (a crate tarball, no `git`). Never
//! fails the build.

use std::path::{Path, PathBuf};
use std::process::Command;

/// What the commit depends on besides git's own files.
const SOURCES: [&str; 4] = ["src", "build.rs", "Cargo.toml", "Cargo.lock"];

fn main() {
    let dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let commit = commit(&dir).unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=DIRSYNC_COMMIT={commit}");
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
}

/// The short commit id (plus `-dirty`), and tells cargo to run this again when HEAD moves.
fn commit(dir: &Path) -> Option<String> {
    // Only a checkout of this crate itself: a tarball unpacked inside some other repository
    // must not take that repository's commit.
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same(Path::new(&top), dir) {
        return None;
    }
    // HEAD names the branch; the branch's ref file (or packed-refs) moves with each commit.
    // `--git-path` also finds them in a `git worktree`, where `.git` is a file.
    let mut watch = vec![git(dir, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(dir, &["symbolic-ref", "--quiet", "HEAD"]) {
        let loose = git(dir, &["rev-parse", "--git-path", &branch])?;
        let packed = git(dir, &["rev-parse", "--git-path", "packed-refs"])?;
        // A path that does not exist would make cargo run this script on every build.
        watch.extend([loose, packed].into_iter().filter(|p| dir.join(p).exists()));
    }
    for path in watch {
        println!("cargo:rerun-if-changed={}", dir.join(path).display());
    }

    let id = git(dir, &["rev-parse", "--short", "HEAD"])?;
    let mut status = vec!["status", "--porcelain", "--"];
    status.extend(SOURCES);
    let dirty = !git(dir, &status)?.is_empty();
    Some(if dirty { format!("{id}-dirty") } else { id })
}

/// `git ARGS` in `dir`: its trimmed stdout, or `None` if git is missing or fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8(out.stdout)
        .ok()
        .map(|s| s.trim().to_string())
}
