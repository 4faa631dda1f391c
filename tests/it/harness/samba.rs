//! A throwaway Samba Active Directory domain controller per test.
//!
//! Provisioning a domain (`samba-tool domain provision`) costs several seconds of CPU, so it
//! happens once, into a template directory under `target/tmp/samba-template/`, keyed by
//! [`TEMPLATE_VERSION`] and Samba's version. Every [`SambaDc`] of this and later test runs
//! copies the template's databases (`private/`, `state/`) into its own temporary directory
//! and writes its own `smb.conf` there (every path in it points into that directory:
//! nothing under /var, /run or /etc is used). So all instances are copies of one domain,
//! `dirsync.test`: same domain SID, same GUIDs for the built-in objects.
//!
//! Each instance runs `samba --foreground` with only the `ldap` service (LDAP on 389, LDAPS
//! on 636, global catalog on 3268/3269: no DNS, KDC, NetBIOS, SMB or RPC). Those ports are
//! fixed, so each instance gets a loopback address of its own, `127.0.X.Y` (Linux routes
//! all of 127.0.0.0/8 to `lo`, no setup needed), and binds only that. LDAPS uses a
//! certificate from a throwaway CA ([`SambaDc::ca_file`]) for that address and
//! [`DC_HOST_NAME`]. The harness's own operations (`ldif`, `add_user`, ...) go over LDAPS,
//! as Samba only sets passwords over an encrypted connection.
//!
//! Needs root: ports 389 and 636 are privileged. `scripts/install-test-deps` installs
//! Samba.

use super::slapd::make_ca;
use super::{
    find_tool, ldap_tool, log_stdio, log_tail, openssl, output, random_hex, run_ok, Proc,
    POLL_INTERVAL,
};
use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Kerberos realm of the test domain.
pub const REALM: &str = "DIRSYNC.TEST";
/// DNS name of the test domain; also the `userPrincipalName` suffix of [`SambaDc::add_user`].
pub const DNS_DOMAIN: &str = "dirsync.test";
/// NetBIOS name of the test domain.
pub const DOMAIN: &str = "DIRSYNC";
/// The domain's naming context.
pub const BASE_DN: &str = "DC=dirsync,DC=test";
/// The DC's DNS name (`dnsHostName` in the rootDSE); in the LDAPS certificate's SAN.
pub const DC_HOST_NAME: &str = "dc1.dirsync.test";
/// The DC's NetBIOS name, as provisioned.
const NETBIOS_NAME: &str = "DC1";
/// Administrator's password, fixed when the template is provisioned.
const ADMIN_PASSWORD: &str = "Dirsync-Adm1n-Passw0rd!";
/// The password [`SambaDc::add_user`] gives every user.
pub const USER_PASSWORD: &str = "Dirsync-User-Passw0rd!";
/// Bump when the provisioning arguments change, so cached templates are not reused.
pub const TEMPLATE_VERSION: u32 = 1;

/// How long `samba` may take to answer an LDAPS bind after it was started.
const SAMBA_STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How many loopback addresses are tried when another process took the one we picked.
const ADDRESS_ATTEMPTS: usize = 8;
/// How long `stop` waits for Samba's worker processes to let go of the ports.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// ldapsearch/ldapmodify exit codes (the LDAP result code).
const NO_SUCH_OBJECT: i32 = 32;
const ALREADY_EXISTS: i32 = 68;
/// groupType of a global security group (ADS_GROUP_TYPE_GLOBAL_GROUP | SECURITY_ENABLED).
const GLOBAL_SECURITY_GROUP: i32 = -2_147_483_646;

const INSTALL_HINT: &str = "apt-get install --no-install-recommends samba samba-common-bin \
                            samba-ad-provision samba-dsdb-modules samba-vfs-modules \
                            (scripts/install-test-deps does it)";

/// The `samba` daemon (AD DC), `/usr/sbin/samba` on Debian.
pub fn samba_binary() -> PathBuf {
    find_tool("samba", &[PathBuf::from("/usr/sbin/samba")], INSTALL_HINT)
}

/// `samba-tool`, `/usr/bin/samba-tool` on Debian.
pub fn samba_tool_binary() -> PathBuf {
    find_tool(
        "samba-tool",
        &[PathBuf::from("/usr/bin/samba-tool")],
        INSTALL_HINT,
    )
}

/// A running Samba AD DC holding the `dirsync.test` domain. Killed on `Drop`, and its
/// directory removed.
pub struct SambaDc {
    /// `ldap://127.0.X.Y:389`.
    pub ldap_url: String,
    /// `ldaps://127.0.X.Y:636`, with a certificate from `ca_file` for `127.0.X.Y` and
    /// [`DC_HOST_NAME`].
    pub ldaps_url: String,
    /// The throwaway CA that signed the LDAPS certificate (StartTLS on `ldap_url` uses the
    /// same certificate).
    pub ca_file: PathBuf,
    /// `DC=dirsync,DC=test`.
    pub base_dn: String,
    /// `DIRSYNC.TEST`.
    pub realm: String,
    /// `DIRSYNC` (NetBIOS).
    pub domain: String,
    /// `CN=Administrator,CN=Users,DC=dirsync,DC=test`.
    pub admin_dn: String,
    pub admin_password: String,
    /// The domain's objectSid, `S-1-5-21-...` (the same for every instance: they are
    /// copies of one provision).
    pub domain_sid: String,
    address: Ipv4Addr,
    proc: Proc,
    stopped: bool,
    log: PathBuf,
    ops: AtomicUsize,
    // Last: dropped after `Drop::drop` has stopped the server.
    dir: TempDir,
}

impl SambaDc {
    /// Starts a DC that also accepts simple binds over plain `ldap://`
    /// (`ldap server require strong auth = no`).
    #[track_caller]
    pub fn start() -> SambaDc {
        Self::launch(false)
    }

    /// Starts a DC with Samba's default `ldap server require strong auth = yes`: a simple
    /// bind over plain `ldap://` is refused with strongerAuthRequired (8, "BindSimple:
    /// Transport encryption required."); LDAPS and StartTLS work.
    #[track_caller]
    pub fn start_strict() -> SambaDc {
        Self::launch(true)
    }

    #[track_caller]
    fn launch(strict: bool) -> SambaDc {
        let launched = Instant::now();
        let samba = samba_binary();
        ldap_tool("ldapsearch"); // fail early, with the hint, when the client tools are missing
        let template = template();

        let dir = tempfile::Builder::new()
            .prefix("dirsync-samba-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
        let root = dir.path();
        for sub in ["private", "state"] {
            copy_dir(&template.join(sub), &root.join(sub));
        }
        for sub in ["etc", "cache", "lock", "run", "bind-dns"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let tls_dir = root.join("tls");
        let ca_file = make_ca(&tls_dir, "dirsync Samba test CA");
        let conf = root.join("etc").join("smb.conf");
        let log = root.join("samba.log");
        let admin_dn = format!("CN=Administrator,CN=Users,{BASE_DN}");

        for attempt in 1..=ADDRESS_ATTEMPTS {
            let address = reserve_address();
            make_server_cert(&tls_dir, address);
            std::fs::write(&conf, render_smb_conf(root, address, strict)).unwrap();
            let ldaps_url = format!("ldaps://{address}:636");
            // Each attempt starts a fresh log so a port race is not mistaken for the next one.
            let _ = std::fs::remove_file(&log);
            let (out, err) = log_stdio(&log);
            let started = Instant::now();
            let child = Command::new(&samba)
                .args(["--foreground", "--no-process-group", "--debug-stdout", "-s"])
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", samba.display()));
            let mut proc = Proc::new(child);

            loop {
                let exited = proc.exited();
                let tail = log_tail(&log, 6000);
                if address_was_taken(&tail) && attempt < ADDRESS_ATTEMPTS {
                    proc.kill();
                    break; // another process took the address: try another one
                }
                if let Some(status) = exited {
                    panic!(
                        "samba exited during startup ({status}) on {address} (config {}):\n{tail}",
                        conf.display()
                    );
                }
                let mut probe = Command::new(ldap_tool("ldapsearch"));
                ldap_client_env(&mut probe, &ca_file);
                probe
                    .args(["-x", "-LLL", "-o", "nettimeout=2", "-H", &ldaps_url, "-D"])
                    .arg(&admin_dn)
                    .args(["-w", ADMIN_PASSWORD, "-b", "", "-s", "base", "1.1"]);
                let probe = output(&mut probe);
                if probe.status.success() {
                    let mut dc = SambaDc {
                        ldap_url: format!("ldap://{address}:389"),
                        ldaps_url,
                        ca_file,
                        base_dn: BASE_DN.to_owned(),
                        realm: REALM.to_owned(),
                        domain: DOMAIN.to_owned(),
                        admin_dn,
                        admin_password: ADMIN_PASSWORD.to_owned(),
                        domain_sid: String::new(),
                        address,
                        proc,
                        stopped: false,
                        log,
                        ops: AtomicUsize::new(0),
                        dir,
                    };
                    dc.ready(strict, launched, started);
                    return dc;
                }
                if started.elapsed() > SAMBA_STARTUP_TIMEOUT {
                    proc.kill();
                    panic!(
                        "samba on {address} did not answer an LDAPS bind within \
                         {SAMBA_STARTUP_TIMEOUT:?} (last ldapsearch: {}, {}); samba log:\n{}",
                        probe.status,
                        String::from_utf8_lossy(&probe.stderr).trim(),
                        log_tail(&log, 6000),
                    );
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        unreachable!("the last attempt either returns or panics")
    }

    /// After the first successful LDAPS bind: checks plain LDAP (when allowed) and reads the
    /// domain SID.
    #[track_caller]
    fn ready(&mut self, strict: bool, launched: Instant, started: Instant) {
        if !strict {
            let mut cmd = self.admin_command("ldapsearch", &self.ldap_url);
            cmd.args(["-LLL", "-b", "", "-s", "base", "1.1"]);
            let out = output(&mut cmd);
            if !out.status.success() {
                panic!(
                    "samba answers LDAPS on {} but refuses a simple bind over {} ({}): {}\n\
                     samba log:\n{}",
                    self.ldaps_url,
                    self.ldap_url,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim(),
                    self.log_tail(),
                );
            }
        }
        let sid = self.binary_attribute(BASE_DN, "objectSid");
        self.domain_sid = sid_to_string(&sid);
        let mode = if strict {
            "strict"
        } else {
            "plain LDAP allowed"
        };
        eprintln!(
            "samba DC on {} ready: {:.2?} after start(), {:.2?} after spawning samba ({})",
            self.address,
            launched.elapsed(),
            started.elapsed(),
            mode,
        );
    }

    /// The loopback address this instance listens on, `127.0.X.Y`.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The instance directory (etc/smb.conf, private/, tls/, samba.log, op-N.ldif).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of Samba's log (`log level = 1`, on stdout).
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 8000)
    }

    /// An OpenLDAP client command (`ldapsearch`, `ldapmodify`, ...) bound as Administrator
    /// (`-x -D -w`) to `url`, verifying the server with [`SambaDc::ca_file`] and ignoring
    /// ldap.conf/.ldaprc. Add `-b`, filters, `-ZZ` etc. as needed.
    pub fn admin_command(&self, tool: &str, url: &str) -> Command {
        let mut cmd = self.client_command(tool, url);
        cmd.arg("-D")
            .arg(&self.admin_dn)
            .arg("-w")
            .arg(&self.admin_password);
        cmd
    }

    /// An OpenLDAP client command against `url` (`-x -H url -o nettimeout=10`, no bind DN),
    /// trusting only [`SambaDc::ca_file`] and ignoring ldap.conf/.ldaprc.
    ///
    /// `LDAPNOINIT` is not used: it would also ignore `LDAPTLS_CACERT`.
    pub fn client_command(&self, tool: &str, url: &str) -> Command {
        let mut cmd = Command::new(ldap_tool(tool));
        ldap_client_env(&mut cmd, &self.ca_file);
        cmd.args(["-x", "-o", "nettimeout=10", "-H", url]);
        cmd
    }

    /// Writes `text` to a new file in the instance directory, for `-f`.
    fn ldif_file(&self, text: &str) -> PathBuf {
        let n = self.ops.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.path().join(format!("op-{n}.ldif"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs ldapmodify over LDAPS as Administrator on `text`; returns its output.
    fn ldapmodify(&self, text: &str) -> Output {
        let file = self.ldif_file(text);
        let mut cmd = self.admin_command("ldapmodify", &self.ldaps_url);
        cmd.arg("-f").arg(&file);
        output(&mut cmd)
    }

    #[track_caller]
    fn fail(&self, what: &str, out: &Output) -> ! {
        panic!(
            "{what} against {} failed ({}):\n{}{}",
            self.ldaps_url,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        )
    }

    /// Applies change-type LDIF (`changetype: add/modify/delete/modrdn`) with ldapmodify
    /// over LDAPS, as Administrator. Panics with ldapmodify's output on failure.
    #[track_caller]
    pub fn ldif(&self, ldif: &str) {
        let out = self.ldapmodify(ldif);
        if !out.status.success() {
            self.fail("ldapmodify", &out);
        }
    }

    /// Creates the OUs of `ou_path` that do not exist yet, outermost first:
    /// `"Sales,Stockholm"` makes `OU=Stockholm,<base>` and then
    /// `OU=Sales,OU=Stockholm,<base>`. Returns the innermost OU's DN.
    #[track_caller]
    pub fn add_ou(&self, ou_path: &str) -> String {
        let mut dn = self.base_dn.clone();
        for name in ou_path.split(',').rev().map(str::trim) {
            assert!(!name.is_empty(), "empty OU name in {ou_path:?}");
            dn = format!("OU={},{dn}", escape_rdn_value(name));
            let mut text = ldif_line("dn", &dn);
            text.push_str("changetype: add\nobjectClass: organizationalUnit\n");
            text.push_str(&ldif_line("ou", name));
            let out = self.ldapmodify(&text);
            if !out.status.success() && out.status.code() != Some(ALREADY_EXISTS) {
                self.fail(&format!("adding {dn:?}"), &out);
            }
        }
        dn
    }

    /// Adds an enabled user (`userAccountControl: 512`) under `parent_dn` as
    /// `CN=<given> <sn>`, with `sAMAccountName`, `givenName`, `sn`,
    /// `displayName: <given> <sn>`, `userPrincipalName: <sam>@dirsync.test`, `mail` if
    /// given, and the password [`USER_PASSWORD`]. Returns its DN.
    #[track_caller]
    pub fn add_user(
        &self,
        parent_dn: &str,
        sam: &str,
        given: &str,
        sn: &str,
        mail: Option<&str>,
    ) -> String {
        let display = format!("{given} {sn}");
        let dn = format!("CN={},{parent_dn}", escape_rdn_value(&display));
        let mut text = ldif_line("dn", &dn);
        text.push_str("changetype: add\nobjectClass: user\n");
        text.push_str(&ldif_line("sAMAccountName", sam));
        text.push_str(&ldif_line("givenName", given));
        text.push_str(&ldif_line("sn", sn));
        text.push_str(&ldif_line("displayName", &display));
        text.push_str(&ldif_line(
            "userPrincipalName",
            &format!("{sam}@{DNS_DOMAIN}"),
        ));
        if let Some(mail) = mail {
            text.push_str(&ldif_line("mail", mail));
        }
        text.push_str("userAccountControl: 512\n");
        let _ = writeln!(text, "unicodePwd:: {}", unicode_pwd(USER_PASSWORD));
        let out = self.ldapmodify(&text);
        if !out.status.success() {
            self.fail(&format!("adding user {dn:?}"), &out);
        }
        dn
    }

    /// Adds a global security group `CN=<name>` (`sAMAccountName: <name>`) under
    /// `parent_dn` with `members` (DNs of users or groups). Returns its DN.
    #[track_caller]
    pub fn add_group(&self, parent_dn: &str, name: &str, members: &[&str]) -> String {
        let dn = format!("CN={},{parent_dn}", escape_rdn_value(name));
        let mut text = ldif_line("dn", &dn);
        text.push_str("changetype: add\nobjectClass: group\n");
        text.push_str(&ldif_line("sAMAccountName", name));
        let _ = writeln!(text, "groupType: {GLOBAL_SECURITY_GROUP}");
        for member in members {
            text.push_str(&ldif_line("member", member));
        }
        let out = self.ldapmodify(&text);
        if !out.status.success() {
            self.fail(&format!("adding group {dn:?}"), &out);
        }
        dn
    }

    /// The values of one attribute of `dn` as bytes (base64 decoded where ldapsearch
    /// encoded them). Panics when the entry does not exist.
    #[track_caller]
    pub fn attribute_values(&self, dn: &str, attribute: &str) -> Vec<Vec<u8>> {
        let mut cmd = self.admin_command("ldapsearch", &self.ldaps_url);
        cmd.args(["-LLL", "-o", "ldif-wrap=no", "-b"])
            .arg(dn)
            .args(["-s", "base", "(objectClass=*)", attribute]);
        let out = output(&mut cmd);
        if !out.status.success() {
            self.fail(&format!("reading {attribute} of {dn:?}"), &out);
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let lower = attribute.to_ascii_lowercase();
        text.lines()
            .filter_map(|line| {
                let (name, rest) = line.split_once(':')?;
                if name.to_ascii_lowercase() != lower {
                    return None;
                }
                Some(match rest.strip_prefix(':') {
                    Some(b64) => base64_decode(b64.trim()),
                    None => rest.strip_prefix(' ').unwrap_or(rest).as_bytes().to_vec(),
                })
            })
            .collect()
    }

    /// The single value of a binary attribute of `dn`; panics unless there is exactly one.
    #[track_caller]
    fn binary_attribute(&self, dn: &str, attribute: &str) -> Vec<u8> {
        let mut values = self.attribute_values(dn, attribute);
        if values.len() != 1 {
            panic!("expected one {attribute} on {dn:?}, found {}", values.len());
        }
        values.remove(0)
    }

    /// The objectGUID of `dn` in the standard string form, lowercase
    /// (`33221100-5544-7766-8899-aabbccddeeff` for the bytes `00 11 .. ff`: the first three
    /// fields little-endian), as AD tools show it and as `<GUID=...>` DNs take it.
    #[track_caller]
    pub fn object_guid(&self, dn: &str) -> String {
        guid_to_string(&self.binary_attribute(dn, "objectGUID"))
    }

    /// The objectSid of `dn` as `S-1-5-21-...-RID`.
    #[track_caller]
    pub fn object_sid(&self, dn: &str) -> String {
        sid_to_string(&self.binary_attribute(dn, "objectSid"))
    }

    /// How many entries a paged subtree search (`-E pr=500/noprompt`) under `base` for
    /// `filter` finds, as Administrator (search references are not counted). 0 when `base`
    /// does not exist.
    #[track_caller]
    pub fn search_count(&self, base: &str, filter: &str) -> usize {
        let mut cmd = self.admin_command("ldapsearch", &self.ldaps_url);
        cmd.args(["-LLL", "-o", "ldif-wrap=no", "-E", "pr=500/noprompt", "-b"])
            .arg(base)
            .args(["-s", "sub", filter, "1.1"]);
        let out = output(&mut cmd);
        if out.status.code() == Some(NO_SUCH_OBJECT) {
            return 0;
        }
        if !out.status.success() {
            self.fail(&format!("ldapsearch -b {base:?} {filter:?}"), &out);
        }
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|line| line.starts_with("dn:"))
            .count()
    }

    /// Kills samba (SIGKILL; its prefork workers exit when they see it gone) and waits
    /// until the ports are free again. Idempotent; `Drop` calls it too.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.proc.kill();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if port_is_free(self.address, 389) && port_is_free(self.address, 636) {
                release_address(self.address);
                return;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        // Still bound: keep the address reserved so no later instance of this process
        // picks it.
    }

    /// samba's (the master process's) id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.proc.id()
    }
}

impl Drop for SambaDc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sets the environment of an OpenLDAP client so that it reads no ldap.conf or .ldaprc and
/// verifies TLS servers with `ca_file` only.
pub fn ldap_client_env(cmd: &mut Command, ca_file: &Path) {
    for var in [
        "LDAPNOINIT",
        "LDAPURI",
        "LDAPBASE",
        "LDAPBINDDN",
        "LDAPTLS_CACERTDIR",
        "LDAPTLS_CERT",
        "LDAPTLS_KEY",
        "LDAPTLS_CRLCHECK",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LDAPCONF", "/dev/null")
        .env("LDAPRC", "dirsync-tests-no-ldaprc")
        .env("LDAPTLS_CACERT", ca_file)
        .env("LDAPTLS_REQCERT", "demand");
}

// ---------------------------------------------------------------------------------------
// The provisioned template.

/// The template directory, provisioned on first use (once per process; reused across
/// processes through `target/tmp`).
fn template() -> &'static Path {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE.get_or_init(find_or_provision_template)
}

/// Marks a complete template (written before the template is renamed into place).
const TEMPLATE_MARK: &str = "provisioned";

/// `target/tmp/samba-template/v<TEMPLATE_VERSION>-<samba version>`, provisioning it first
/// unless it is there. Provisioning goes to a staging directory that is renamed into place
/// when complete, so concurrent test processes never see half a template.
fn find_or_provision_template() -> PathBuf {
    let samba = samba_binary();
    let samba_tool = samba_tool_binary();
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("samba-template");
    let done = cache.join(format!("v{TEMPLATE_VERSION}-{}", samba_version(&samba)));
    if done.join(TEMPLATE_MARK).is_file() {
        return done;
    }
    std::fs::create_dir_all(&cache)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", cache.display()));
    remove_stale_staging(&cache);

    let staging = cache.join(format!("staging-{}-{}", std::process::id(), random_hex(4)));
    std::fs::create_dir(&staging).unwrap();
    let empty_conf = staging.join("empty.conf");
    std::fs::write(&empty_conf, "").unwrap();
    let started = Instant::now();
    let out = output(
        Command::new(&samba_tool)
            .args(["domain", "provision", "--quiet", "-s"])
            .arg(&empty_conf) // not /etc/samba/smb.conf
            .arg(format!("--targetdir={}", staging.display()))
            .args([
                "--server-role=dc",
                "--dns-backend=NONE",
                "--use-rfc2307",
                "--function-level=2008_R2",
            ])
            .arg(format!("--realm={REALM}"))
            .arg(format!("--domain={DOMAIN}"))
            .arg(format!("--host-name={}", NETBIOS_NAME.to_ascii_lowercase()))
            .arg(format!("--adminpass={ADMIN_PASSWORD}"))
            .arg("--option=ldb:nosync = true"),
    );
    let elapsed = started.elapsed();
    let mut log = out.stdout.clone();
    log.extend_from_slice(&out.stderr);
    std::fs::write(staging.join("provision.log"), &log).unwrap();
    if !out.status.success() {
        panic!(
            "samba-tool domain provision into {} failed ({}):\n{}",
            staging.display(),
            out.status,
            log_tail(&staging.join("provision.log"), 6000),
        );
    }
    std::fs::write(
        staging.join(TEMPLATE_MARK),
        format!("provisioned in {elapsed:.2?}\n"),
    )
    .unwrap();
    eprintln!(
        "samba: provisioned the template {} in {elapsed:.2?}",
        done.display()
    );
    match std::fs::rename(&staging, &done) {
        Ok(()) => done,
        // Another test process finished first: use its template.
        Err(_) if done.join(TEMPLATE_MARK).is_file() => {
            let _ = std::fs::remove_dir_all(&staging);
            done
        }
        Err(e) => panic!(
            "cannot rename {} to {}: {e}",
            staging.display(),
            done.display()
        ),
    }
}

/// `4.17.12-Debian` from `samba -V` ("Version 4.17.12-Debian"), made safe for a file name.
fn samba_version(samba: &Path) -> String {
    let out = run_ok(Command::new(samba).arg("-V"));
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().trim_start_matches("Version").trim();
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Removes staging directories that test processes which died while provisioning left
/// behind (older than 30 minutes).
fn remove_stale_staging(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry.file_name().to_string_lossy().starts_with("staging-")
            && entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > Duration::from_secs(30 * 60));
        if stale {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies a directory tree (regular files and directories, with their permissions).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let mode = std::fs::metadata(from)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", from.display()))
        .permissions()
        .mode();
    let entries =
        std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        let target = to.join(entry.file_name());
        if kind.is_dir() {
            copy_dir(&entry.path(), &target);
        } else if kind.is_file() {
            std::fs::copy(entry.path(), &target).unwrap_or_else(|e| {
                panic!(
                    "cannot copy {} to {}: {e}",
                    entry.path().display(),
                    target.display()
                )
            });
        } else {
            panic!(
                "unexpected non-file {} in the Samba template",
                entry.path().display()
            );
        }
    }
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode)).unwrap();
}

// ---------------------------------------------------------------------------------------
// Per-instance configuration.

/// The instance's smb.conf: only the LDAP service, on `address` only, every path inside
/// `dir`.
fn render_smb_conf(dir: &Path, address: Ipv4Addr, strict: bool) -> String {
    let d = dir
        .to_str()
        .unwrap_or_else(|| panic!("non-UTF-8 path {}", dir.display()));
    let strong_auth = if strict { "yes" } else { "no" };
    format!(
        "# Written by tests/it/harness/samba.rs for one test's Samba AD DC.\n\
         [global]\n\
         \tnetbios name = {NETBIOS_NAME}\n\
         \trealm = {REALM}\n\
         \tworkgroup = {DOMAIN}\n\
         \tserver role = active directory domain controller\n\
         \tidmap_ldb:use rfc2307 = yes\n\
         \t# LDAP (389, 636, 3268, 3269) and nothing else: no DNS, KDC, NetBIOS, SMB, RPC.\n\
         \tserver services = ldap\n\
         \t# The /8 makes Samba accept an address that is not configured on lo itself.\n\
         \tinterfaces = {address}/8\n\
         \tbind interfaces only = yes\n\
         \tldap server require strong auth = {strong_auth}\n\
         \ttls enabled = yes\n\
         \ttls keyfile = {d}/tls/server.key\n\
         \ttls certfile = {d}/tls/server.crt\n\
         \ttls cafile = {d}/tls/ca.crt\n\
         \tprivate dir = {d}/private\n\
         \tbinddns dir = {d}/bind-dns\n\
         \tstate directory = {d}/state\n\
         \tcache directory = {d}/cache\n\
         \tlock directory = {d}/lock\n\
         \tpid directory = {d}/run\n\
         \tncalrpc dir = {d}/run/ncalrpc\n\
         \twinbindd socket directory = {d}/run/winbindd\n\
         \tntp signd socket directory = {d}/run/ntp_signd\n\
         \tlog file = {d}/samba-file.log\n\
         \tlog level = 1\n\
         \tprefork children = 2\n\
         \t# No fsync: throwaway data, and adding entries is ~6x faster.\n\
         \tldb:nosync = true\n\
         \n\
         [sysvol]\n\
         \tpath = {d}/state/sysvol\n\
         \tread only = No\n\
         \n\
         [netlogon]\n\
         \tpath = {d}/state/sysvol/{DNS_DOMAIN}/scripts\n\
         \tread only = No\n",
    )
}

/// A server certificate signed by the CA in `dir` (`ca.crt`, `ca.key` from `make_ca`) for
/// `address` and [`DC_HOST_NAME`]: `server.crt`, `server.key` (mode 0600: Samba refuses a
/// key others can read).
fn make_server_cert(dir: &Path, address: Ipv4Addr) {
    run_ok(
        Command::new(openssl())
            .current_dir(dir)
            .args(["req", "-new", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes"])
            .args(["-keyout", "server.key", "-out", "server.csr", "-subj"])
            .arg(format!("/CN={DC_HOST_NAME}")),
    );
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(
        dir.join("server.ext"),
        format!(
            "basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:{address},DNS:{DC_HOST_NAME},DNS:{DNS_DOMAIN}\n\
             subjectKeyIdentifier=hash\n\
             authorityKeyIdentifier=keyid,issuer\n"
        ),
    )
    .unwrap();
    run_ok(
        Command::new(openssl())
            .current_dir(dir)
            .args(["x509", "-req", "-in", "server.csr", "-CA", "ca.crt"])
            .args(["-CAkey", "ca.key", "-set_serial"])
            .arg(format!("0x{}", random_hex(8)))
            .args(["-days", "7", "-out", "server.crt", "-extfile", "server.ext"]),
    );
}

// ---------------------------------------------------------------------------------------
// Loopback addresses.

/// Addresses handed to running instances of this process.
static ADDRESSES: Mutex<Option<HashSet<Ipv4Addr>>> = Mutex::new(None);

/// Whether `address:port` can be bound now (std sets SO_REUSEADDR, so TIME_WAIT
/// connections do not count). Panics on anything but "in use", e.g. when not root.
fn port_is_free(address: Ipv4Addr, port: u16) -> bool {
    match TcpListener::bind((address, port)) {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => false,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => panic!(
            "cannot bind {address}:{port} ({e}): Samba's LDAP ports are fixed (389, 636), \
             so the Samba tests must run as root"
        ),
        Err(e) => panic!("cannot probe {address}:{port}: {e}"),
    }
}

/// Picks a random loopback address `127.0.X.Y` (X, Y in 2..=254) that no instance of this
/// process uses and whose ports 389 and 636 are free, and reserves it.
fn reserve_address() -> Ipv4Addr {
    for _ in 0..200 {
        let bytes = random_hex(2);
        let x = u8::from_str_radix(&bytes[..2], 16).unwrap() % 253 + 2;
        let y = u8::from_str_radix(&bytes[2..], 16).unwrap() % 253 + 2;
        let address = Ipv4Addr::new(127, 0, x, y);
        {
            let mut guard = ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner);
            let used = guard.get_or_insert_with(HashSet::new);
            if !used.insert(address) {
                continue;
            }
        }
        if port_is_free(address, 389) && port_is_free(address, 636) {
            return address;
        }
        release_address(address);
    }
    panic!(
        "found no loopback address 127.0.X.Y with ports 389 and 636 free: is a system LDAP \
         server (slapd, samba) listening on *:389? Stop it (e.g. `service slapd stop`)"
    )
}

fn release_address(address: Ipv4Addr) {
    let mut guard = ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(used) = guard.as_mut() {
        used.remove(&address);
    }
}

/// Whether Samba's log says its address was taken (a race with another process).
fn address_was_taken(log: &str) -> bool {
    log.contains("NT_STATUS_ADDRESS_ALREADY_ASSOCIATED") || log.contains("Address already in use")
}

// ---------------------------------------------------------------------------------------
// Encodings.

/// The standard string form of a GUID from its 16 wire bytes (as objectGUID holds them):
/// the first three fields are little-endian, the rest in order; lowercase.
pub fn guid_to_string(bytes: &[u8]) -> String {
    assert_eq!(bytes.len(), 16, "a GUID has 16 bytes, got {bytes:02x?}");
    const ORDER: [usize; 16] = [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15];
    let mut out = String::with_capacity(36);
    for (i, &from) in ORDER.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        let _ = write!(out, "{:02x}", bytes[from]);
    }
    out
}

/// `S-<revision>-<authority>-<sub>-...` from a binary SID (as objectSid holds it).
pub fn sid_to_string(bytes: &[u8]) -> String {
    assert!(
        bytes.len() >= 8 && bytes.len() == 8 + 4 * usize::from(bytes[1]),
        "not a binary SID: {bytes:02x?}"
    );
    let authority = bytes[2..8]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    let mut out = format!("S-{}-{authority}", bytes[0]);
    for sub in bytes[8..].chunks_exact(4) {
        let value = u32::from_le_bytes([sub[0], sub[1], sub[2], sub[3]]);
        let _ = write!(out, "-{value}");
    }
    out
}

/// The value of `unicodePwd` for `password`: `"password"` (with the quotes) in UTF-16LE,
/// base64-encoded for LDIF's `::`.
fn unicode_pwd(password: &str) -> String {
    let quoted = format!("\"{password}\"");
    let bytes: Vec<u8> = quoted.encode_utf16().flat_map(u16::to_le_bytes).collect();
    base64_encode(&bytes)
}

/// `attr: value\n`, or `attr:: <base64>\n` when LDIF needs it (non-ASCII, control
/// characters, leading space/colon/`<`, trailing space).
fn ldif_line(attr: &str, value: &str) -> String {
    let safe = value.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !value.starts_with([' ', ':', '<'])
        && !value.ends_with(' ');
    if safe {
        format!("{attr}: {value}\n")
    } else {
        format!("{attr}:: {}\n", base64_encode(value.as_bytes()))
    }
}

/// Escapes an RDN value (RFC 4514): `, + " \ < > ; =`, a leading `#` or space, a trailing
/// space.
pub fn escape_rdn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 (padding optional, whitespace ignored); panics on other bytes.
pub fn base64_decode(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => panic!("not base64: {text:?}"),
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
