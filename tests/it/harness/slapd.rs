//! A throwaway OpenLDAP `slapd` per test.
//!
//! Each instance renders `tests/fixtures/slapd.conf.in` into its own temporary directory,
//! checks it with `slapd -Ttest`, loads `base.ldif` and the test's LDIF offline with
//! `slapadd`, then runs `slapd -d stats` (`-d` keeps it in the foreground, so the `Child`
//! is slapd itself) on free loopback ports, logging to `slapd.log` in that directory.

use super::{
    fixture, fixtures_dir, free_port, ldap_tool, log_stdio, log_tail, openssl, output,
    port_was_taken, random_hex, run_ok, Proc, POLL_INTERVAL, PORT_ATTEMPTS, STARTUP_TIMEOUT,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use tempfile::TempDir;

const SUFFIX: &str = "dc=example,dc=com";
const BIND_DN: &str = "cn=dirsync,ou=services,dc=example,dc=com";
const LIMITED_BIND_DN: &str = "cn=dirsync-limited,ou=services,dc=example,dc=com";
/// The service account's password, as set in `tests/fixtures/base.ldif`.
const BIND_PASSWORD: &str = "dirsync-bind-secret-42";
/// ldapsearch's exit code for noSuchObject.
const NO_SUCH_OBJECT: i32 = 32;

/// A running `slapd` holding `base.ldif` plus a test's entries. Killed on `Drop`, and its
/// directory removed.
pub struct Slapd {
    /// `ldap://127.0.0.1:PORT` (StartTLS is offered there when started with `start_tls`).
    pub url: String,
    /// `ldaps://127.0.0.1:PORT`, only with `start_tls`.
    pub ldaps_url: Option<String>,
    /// The throwaway CA that signed the server certificate, only with `start_tls`.
    pub ca_file: Option<PathBuf>,
    /// `dc=example,dc=com`.
    pub suffix: String,
    /// The rootdn, `cn=admin,dc=example,dc=com` (no limits, no ACLs).
    pub admin_dn: String,
    pub admin_password: String,
    /// The dirsync service account, `cn=dirsync,ou=services,dc=example,dc=com`: reads
    /// everything; 500 entries at most per plain search, unlimited with paged results.
    pub bind_dn: String,
    pub bind_password: String,
    /// `cn=dirsync-limited,ou=services,dc=example,dc=com`: like `bind_dn`, same password,
    /// but slapd returns it at most 5 entries per search, paged or not
    /// (sizeLimitExceeded beyond).
    pub limited_bind_dn: String,
    proc: Proc,
    log: PathBuf,
    ops: AtomicUsize,
    // Last: dropped after `Drop::drop` has killed the server.
    dir: TempDir,
}

impl Slapd {
    /// Starts slapd holding `base.ldif` and then `ldif` (entries in slapadd's LDIF form,
    /// no changetype; may be empty), on `ldap://127.0.0.1:<free port>`.
    #[track_caller]
    pub fn start(ldif: &str) -> Slapd {
        Self::launch(ldif, None, true)
    }

    /// Like [`Slapd::start`], without the content synchronisation overlay (`syncprov`):
    /// a server that refuses the RFC 4533 Sync Request control.
    #[track_caller]
    pub fn start_without_syncprov(ldif: &str) -> Slapd {
        Self::launch(ldif, None, false)
    }

    /// Like [`Slapd::start`], plus TLS from a throwaway CA (`ca_file`): a server
    /// certificate for 127.0.0.1 and localhost, StartTLS on `url` and `ldaps_url`.
    #[track_caller]
    pub fn start_tls(ldif: &str) -> Slapd {
        Self::launch(ldif, Some(Some(DEFAULT_SAN)), true)
    }

    /// Like [`Slapd::start_tls`], with a server certificate (CN=localhost) whose
    /// subjectAltName is `san` (OpenSSL's form, e.g. `DNS:dc1.dirsync.test`), or that has
    /// no subjectAltName at all (`None`), as Samba's self-generated DC certificate.
    #[track_caller]
    pub fn start_tls_with_san(ldif: &str, san: Option<&str>) -> Slapd {
        Self::launch(ldif, Some(san), true)
    }

    /// `tls`: `None` for no TLS, else the server certificate's subjectAltName; `syncprov`:
    /// load the content synchronisation overlay.
    #[track_caller]
    fn launch(ldif: &str, tls_san: Option<Option<&str>>, syncprov: bool) -> Slapd {
        let tls = tls_san.is_some();
        let slapd = ldap_tool("slapd");
        let slapadd = ldap_tool("slapadd");
        let ldapsearch = ldap_tool("ldapsearch");

        let dir = tempfile::Builder::new()
            .prefix("dirsync-slapd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let root = dir.path();
        std::fs::create_dir(root.join("db")).unwrap();
        let admin_password = format!("admin-{}", random_hex(8));

        let ca_file = tls_san.map(|san| make_server_tls_with_san(&root.join("tls"), san));
        let conf = root.join("slapd.conf");
        std::fs::write(
            &conf,
            render_conf(root, SUFFIX, &admin_password, tls, syncprov),
        )
        .unwrap();

        // -u: check the configuration without opening the (still empty) database.
        let check = output(
            Command::new(&slapd)
                .arg("-Ttest")
                .arg("-u")
                .arg("-f")
                .arg(&conf),
        );
        if !check.status.success() {
            panic!(
                "slapd -Ttest rejected {}:\n{}{}",
                conf.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr),
            );
        }

        let base = fixtures_dir().join("base.ldif");
        run_ok(
            Command::new(&slapadd)
                .arg("-f")
                .arg(&conf)
                .arg("-l")
                .arg(&base),
        );
        if !ldif.trim().is_empty() {
            let extra = root.join("test.ldif");
            std::fs::write(&extra, ldif).unwrap();
            run_ok(
                Command::new(&slapadd)
                    .arg("-f")
                    .arg(&conf)
                    .arg("-l")
                    .arg(&extra),
            );
        }

        let log = root.join("slapd.log");
        let admin_dn = format!("cn=admin,{SUFFIX}");
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let url = format!("ldap://127.0.0.1:{port}");
            let ldaps_url = tls.then(|| format!("ldaps://127.0.0.1:{}", free_port()));
            let listen = match &ldaps_url {
                Some(ldaps) => format!("{url}/ {ldaps}/"),
                None => format!("{url}/"),
            };
            // Each attempt starts a fresh log so a port race is not mistaken for the next one.
            let _ = std::fs::remove_file(&log);
            let (out, err) = log_stdio(&log);
            let child = Command::new(&slapd)
                .arg("-d")
                .arg("stats")
                .arg("-h")
                .arg(&listen)
                .arg("-f")
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", slapd.display()));
            let mut proc = Proc::new(child);

            let started = Instant::now();
            loop {
                if let Some(status) = proc.exited() {
                    let tail = log_tail(&log, 4000);
                    if port_was_taken(&tail) && attempt < PORT_ATTEMPTS {
                        break; // another process took the port: try new ones
                    }
                    panic!("slapd exited during startup ({status}) listening on {listen}:\n{tail}");
                }
                let probe = output(
                    Command::new(&ldapsearch)
                        .env("LDAPNOINIT", "1")
                        .args(["-x", "-o", "nettimeout=2", "-LLL", "-H", &url, "-D"])
                        .arg(&admin_dn)
                        .arg("-w")
                        .arg(&admin_password)
                        .args(["-b", SUFFIX, "-s", "base", "1.1"]),
                );
                if probe.status.success() {
                    return Slapd {
                        url,
                        ldaps_url,
                        ca_file,
                        suffix: SUFFIX.to_owned(),
                        admin_dn,
                        admin_password,
                        bind_dn: BIND_DN.to_owned(),
                        bind_password: BIND_PASSWORD.to_owned(),
                        limited_bind_dn: LIMITED_BIND_DN.to_owned(),
                        proc,
                        log,
                        ops: AtomicUsize::new(0),
                        dir,
                    };
                }
                if started.elapsed() > STARTUP_TIMEOUT {
                    proc.kill();
                    panic!(
                        "slapd on {listen} did not answer a search within {STARTUP_TIMEOUT:?} \
                         (last ldapsearch: {}, {}); slapd log:\n{}",
                        probe.status,
                        String::from_utf8_lossy(&probe.stderr).trim(),
                        log_tail(&log, 4000),
                    );
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// The instance directory (slapd.conf, slapd.log, db/, tls/).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of slapd's log (`-d stats`: one line per connection and operation).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 8000)
    }

    /// An OpenLDAP client command bound as the rootdn to `url`, ignoring ldap.conf/.ldaprc.
    fn admin_command(&self, tool: &str) -> Command {
        let mut cmd = Command::new(ldap_tool(tool));
        cmd.env("LDAPNOINIT", "1")
            .args(["-x", "-o", "nettimeout=5", "-H", &self.url, "-D"])
            .arg(&self.admin_dn)
            .arg("-w")
            .arg(&self.admin_password);
        cmd
    }

    /// Writes `ldif` to a new file in the instance directory, for `-f`.
    fn ldif_file(&self, ldif: &str) -> PathBuf {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("op-{n}.ldif"));
        std::fs::write(&path, ldif).unwrap();
        path
    }

    #[track_caller]
    fn run_admin(&self, tool: &str, configure: impl FnOnce(&mut Command)) -> Output {
        let mut cmd = self.admin_command(tool);
        configure(&mut cmd);
        let out = output(&mut cmd);
        if !out.status.success() {
            panic!(
                "{tool} against {} failed ({}):\n{}{}",
                self.url,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
            );
        }
        out
    }

    /// Applies change-type LDIF (`changetype: modify/add/delete/modrdn`) with ldapmodify,
    /// as the rootdn. Panics with ldapmodify's output on failure.
    #[track_caller]
    pub fn modify(&self, ldif: &str) {
        let file = self.ldif_file(ldif);
        self.run_admin("ldapmodify", |cmd| {
            cmd.arg("-f").arg(&file);
        });
    }

    /// Adds entries (plain LDIF, no changetype) with ldapadd, as the rootdn.
    #[track_caller]
    pub fn add(&self, ldif: &str) {
        let file = self.ldif_file(ldif);
        self.run_admin("ldapadd", |cmd| {
            cmd.arg("-f").arg(&file);
        });
    }

    /// Deletes one entry (it must have no children) with ldapdelete, as the rootdn.
    #[track_caller]
    pub fn delete(&self, dn: &str) {
        self.run_admin("ldapdelete", |cmd| {
            cmd.arg(dn);
        });
    }

    /// How many entries a paged subtree search (`-E pr=500/noprompt`) under `base` for
    /// `filter` finds, as the rootdn. 0 when `base` does not exist.
    #[track_caller]
    pub fn search_count(&self, base: &str, filter: &str) -> usize {
        let mut cmd = self.admin_command("ldapsearch");
        cmd.args(["-LLL", "-o", "ldif-wrap=no", "-E", "pr=500/noprompt", "-b"])
            .arg(base)
            .args(["-s", "sub", filter, "1.1"]);
        let out = output(&mut cmd);
        if out.status.code() == Some(NO_SUCH_OBJECT) {
            return 0;
        }
        if !out.status.success() {
            panic!(
                "ldapsearch -b {base:?} {filter:?} against {} failed ({}):\n{}",
                self.url,
                out.status,
                String::from_utf8_lossy(&out.stderr),
            );
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.starts_with("dn:"))
            .count()
    }

    /// The entryUUID of `dn` (OpenLDAP's stable anchor), e.g.
    /// `0b6f3c2e-5d1a-103f-8c4e-4b1f9a6d2e77`.
    #[track_caller]
    pub fn entry_uuid(&self, dn: &str) -> String {
        let out = self.run_admin("ldapsearch", |cmd| {
            cmd.args(["-LLL", "-o", "ldif-wrap=no", "-b"])
                .arg(dn)
                .args(["-s", "base", "(objectClass=*)", "entryUUID"]);
        });
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|line| line.strip_prefix("entryUUID: "))
            .map(|uuid| uuid.trim().to_owned())
            .unwrap_or_else(|| panic!("no entryUUID for {dn:?} in:\n{text}"))
    }

    /// Kills slapd (SIGKILL) and reaps it. Idempotent; `Drop` calls it too.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// slapd's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.id()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `slapd.conf.in` with its placeholders filled; `@TLS@` becomes `slapd-tls.conf.in`
/// (certificates in `<dir>/tls/`) or nothing. Without `syncprov`, every directive that
/// names the overlay is left out.
pub fn render_conf(dir: &Path, suffix: &str, rootpw: &str, tls: bool, syncprov: bool) -> String {
    let dir = dir
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", dir.display()));
    let tls_lines = if tls {
        fixture("slapd-tls.conf.in")
    } else {
        String::new()
    };
    fixture("slapd.conf.in")
        .lines()
        .filter(|line| syncprov || line.starts_with('#') || !line.contains("syncprov"))
        .map(|line| {
            if line.trim() == "@TLS@" {
                tls_lines.as_str()
            } else {
                line
            }
        })
        .map(|line| format!("{line}\n"))
        .collect::<String>()
        .replace("@DIR@", dir)
        .replace("@SUFFIX@", suffix)
        .replace("@ROOTPW@", rootpw)
}

/// Makes a self-signed CA (EC P-256) in `dir` as `ca.crt` + `ca.key`; returns `ca.crt`.
pub fn make_ca(dir: &Path, common_name: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let ca_crt = dir.join("ca.crt");
    run_ok(
        Command::new(openssl())
            .current_dir(dir)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "7"])
            .args(["-keyout", "ca.key", "-out", "ca.crt", "-subj"])
            .arg(format!("/CN={common_name}"))
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    );
    ca_crt
}

/// Makes a CA and a server certificate for 127.0.0.1 and localhost (SAN IP and DNS) in
/// `dir`: `ca.crt`, `server.crt`, `server.key` (the names `slapd-tls.conf.in` expects).
/// Returns the CA certificate's path.
pub fn make_server_tls(dir: &Path) -> PathBuf {
    make_server_tls_with_san(dir, Some(DEFAULT_SAN))
}

/// The subjectAltName of the test servers' certificates.
const DEFAULT_SAN: &str = "IP:127.0.0.1,DNS:localhost";

/// [`make_server_tls`] with the given subjectAltName, or none.
pub fn make_server_tls_with_san(dir: &Path, san: Option<&str>) -> PathBuf {
    let ca_crt = make_ca(dir, "dirsync test CA");
    run_ok(
        Command::new(openssl())
            .current_dir(dir)
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args([
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=localhost",
            ]),
    );
    let san = san
        .map(|s| format!("subjectAltName={s}\n"))
        .unwrap_or_default();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             {san}\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid,issuer\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new(openssl())
            .current_dir(dir)
            .args([
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
            ])
            .arg("-set_serial")
            .arg(format!("0x{}", random_hex(8)))
            .args(["-days", "7", "-out", "server.crt", "-extfile", "server.ext"]),
    );
    ca_crt
}
