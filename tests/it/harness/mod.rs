//! Test harness: real servers on free loopback ports, cleaned up on `Drop`.
//!
//! - [`Slapd`]: a throwaway OpenLDAP server loaded with `tests/fixtures/base.ldif` plus the
//!   test's own LDIF (see `tests/fixtures/demo.ldif` for a ready-made directory), optionally
//!   with TLS (ldaps:// and StartTLS) from a throwaway CA.
//! - [`ScimServer`]: `scim2-server` (PyPI) serving the portal's published schema from
//!   `tests/fixtures/portal`, with a random bearer token.
//! - [`Proxy`]: an HTTP/1.1 reverse proxy to put in front of it, which counts requests and
//!   injects [`Fault`]s (error statuses, delays, resets) on the test's schedule.
//! - [`SmtpSink`]: `aiosmtpd` (PyPI) receiving mail on a loopback port into a maildir.
//! - [`SambaDc`]: a throwaway Samba Active Directory domain controller (`dirsync.test`) on
//!   a loopback address of its own, `127.0.X.Y`, with LDAP, LDAPS (throwaway CA) and helpers
//!   to add OUs, users and groups (see [`samba`]). Needs root (ports 389/636).
//!
//! Everything is synchronous, for plain `#[test]` functions. Each instance has its own
//! temporary directory and ports, so tests may run in parallel threads. The servers' output
//! goes to a log file in that directory; its tail is quoted when a server fails to start.
//!
//! Missing tools are never skipped silently: the harness panics and says how to install
//! them (`scripts/test` installs everything).

// Test-only code: failing loudly is the point.
#![allow(
    clippy::panic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::unreachable
)]
// Not every test binary uses every helper.
#![allow(dead_code)]

pub mod proxy;
mod proxy_selftest;
pub mod samba;
mod samba_selftest;
mod scim;
mod selftest;
pub mod slapd;
pub mod smtp;

pub use proxy::{Fault, Proxy, Seen};
pub use samba::SambaDc;
pub use scim::ScimServer;
pub use slapd::Slapd;
pub use smtp::SmtpSink;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How long a server may take to answer after it was started.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a starting server is polled.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many times a server is restarted on a fresh port when another process took the port
/// between our probe and the server's bind.
pub(crate) const PORT_ATTEMPTS: usize = 5;

/// `<crate>/tests/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

/// The text of a file under `tests/fixtures`, e.g. `fixture("demo.ldif")`.
pub fn fixture(name: &str) -> String {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// A loopback port that was free a moment ago: bind port 0, read the port, let it go.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", 0))
        .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("cannot read the bound port: {e}"))
        .port()
}

/// Random lowercase hex, `2 * bytes` characters (std only: `RandomState` keys are random
/// per process and distinct per call).
pub fn random_hex(bytes: usize) -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut out = String::with_capacity(bytes * 2 + 16);
    while out.len() < bytes * 2 {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
        hasher.write_u32(std::process::id());
        if let Ok(elapsed) = std::time::UNIX_EPOCH.elapsed() {
            hasher.write_u128(elapsed.as_nanos());
        }
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out.truncate(bytes * 2);
    out
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The first executable `name` in `$PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Finds a tool: the first executable of `candidates`, else `name` in `$PATH`; panics with
/// `install_hint` when there is none.
pub fn find_tool(name: &str, candidates: &[PathBuf], install_hint: &str) -> PathBuf {
    candidates
        .iter()
        .find(|candidate| is_executable(candidate))
        .cloned()
        .or_else(|| which(name))
        .unwrap_or_else(|| {
            let looked: Vec<String> = candidates.iter().map(|c| c.display().to_string()).collect();
            panic!(
                "`{name}` not found (looked at {} and in $PATH). Run scripts/test, which \
                 installs it, or install it by hand: {install_hint}",
                if looked.is_empty() {
                    "nothing".to_owned()
                } else {
                    looked.join(", ")
                },
            )
        })
}

const APT_HINT: &str =
    "apt-get install slapd ldap-utils openssl (scripts/install-test-deps does it)";

/// An OpenLDAP tool: `/usr/sbin/NAME` (slapd, slapadd), `/usr/bin/NAME` (ldapsearch, ...),
/// else `$PATH`.
pub fn ldap_tool(name: &str) -> PathBuf {
    find_tool(
        name,
        &[
            Path::new("/usr/sbin").join(name),
            Path::new("/usr/bin").join(name),
        ],
        APT_HINT,
    )
}

/// The `openssl` command-line tool.
pub fn openssl() -> PathBuf {
    find_tool("openssl", &[], "apt-get install openssl")
}

/// Runs a command to completion and returns its output; panics only if it cannot be started.
pub fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command and panics, quoting its output, unless it exits with 0.
#[track_caller]
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = output(cmd);
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
    }
    out
}

/// The last `max_bytes` of a log file (lossy UTF-8), for panic messages.
pub fn log_tail(path: &Path, max_bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max_bytes);
    let _ = file.seek(SeekFrom::Start(start));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if start > 0 {
        format!("[... {start} bytes cut ...]\n{text}")
    } else {
        text
    }
}

/// Stdout and stderr of a child, both appended to one log file.
pub(crate) fn log_stdio(log: &Path) -> (Stdio, Stdio) {
    let file = File::options()
        .create(true)
        .append(true)
        .open(log)
        .unwrap_or_else(|e| panic!("cannot open log {}: {e}", log.display()));
    let clone = file
        .try_clone()
        .unwrap_or_else(|e| panic!("cannot clone log handle {}: {e}", log.display()));
    (Stdio::from(file), Stdio::from(clone))
}

/// A child process that is killed (SIGKILL) and reaped on `kill` or `Drop`.
pub(crate) struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub(crate) fn new(child: Child) -> Self {
        Proc { child: Some(child) }
    }

    pub(crate) fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status if the process has ended, without waiting.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Kills and reaps the process; does nothing the second time.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a server's log says its port was taken (a race with another test).
pub(crate) fn port_was_taken(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("errno=98")
}
