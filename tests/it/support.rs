//! A throwaway world for one test: a slapd, a scim2-server, a config pointing dirsync at
//! them, and a way to run the real `dirsync` binary and read what it said.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value as Json;
use tempfile::TempDir;

use crate::harness::proxy::{Fault, Proxy};
use crate::harness::{ScimServer, Slapd};

pub const MAPPINGS: &str = r#"
[[mapping]]
from = "mail"
to = "userName"

[[mapping]]
from = "mail"
to = 'emails[type eq "work"].value'

[[mapping]]
from = "givenName"
to = "name.givenName"

[[mapping]]
from = "sn"
to = "name.familyName"

[[mapping]]
from = "displayName"
to = "displayName"

[[mapping]]
from = "preferredLanguage"
to = "preferredLanguage"

[[mapping]]
from = "telephoneNumber"
to = 'phoneNumbers[type eq "work"].value'

[[mapping]]
from = "labeledURI"
to = "profileUrl"
"#;

/// What one run of the binary did.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON report (for runs with `--format json`).
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not a JSON report ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    pub fn all_output(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

pub struct World {
    pub ldap: Slapd,
    pub portal: ScimServer,
    pub dir: TempDir,
    /// `[source.users] filter` (default `(objectClass=inetOrgPerson)`).
    pub users_filter: String,
    /// Extra lines for `[source.users]` (e.g. a disabled_filter).
    pub users_extra: String,
    pub source_extra: String,
    /// The `[[mapping]]` tables (default [`MAPPINGS`]).
    pub mappings: String,
    /// More config appended at the end (roles, services, portal groups, sub-unit).
    pub extra_config: String,
    /// The `[safety]` table. Tests of other behaviour run with wide limits (tiny test
    /// directories would trip the default share limit); the guard tests set their own.
    pub safety: String,
    /// `portal.timeout_secs` and `portal.page_size`.
    pub portal_timeout_secs: u64,
    pub portal_page_size: usize,
    /// The portal URL dirsync is given (default: the scim2-server's; a proxy's in tests
    /// that count or break requests).
    pub portal_url: Option<String>,
}

pub fn person(uid: &str, given: &str, sn: &str, mail: Option<&str>) -> String {
    let mail = mail.map(|m| format!("mail: {m}\n")).unwrap_or_default();
    format!(
        "dn: uid={uid},ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {given} {sn}\n\
         givenName: {given}\nsn: {sn}\ndisplayName: {given} {sn}\n{mail}preferredLanguage: sv\n\n"
    )
}

impl World {
    pub fn start(ldif: &str) -> World {
        World::with_ldap(Slapd::start(ldif))
    }

    /// A world around a slapd the test started itself (say one without syncprov).
    pub fn with_ldap(ldap: Slapd) -> World {
        World {
            ldap,
            portal: ScimServer::start(),
            dir: tempfile::tempdir().unwrap(),
            users_filter: "(objectClass=inetOrgPerson)".into(),
            users_extra: "disabled_filter = \"(employeeType=disabled)\"\n".into(),
            source_extra: String::new(),
            mappings: MAPPINGS.to_string(),
            extra_config: String::new(),
            safety: "[safety]\nmax_closure_percent = 100\n".into(),
            portal_url: None,
            portal_timeout_secs: 10,
            portal_page_size: 5,
        }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("dirsync.toml")
    }

    /// Writes the config (secrets in files beside it) and returns its path.
    pub fn write_config(&self) -> PathBuf {
        std::fs::write(
            self.dir.path().join("ldap-password"),
            format!("{}\n", self.ldap.bind_password),
        )
        .unwrap();
        std::fs::write(self.dir.path().join("portal-token"), &self.portal.token).unwrap();
        // Secret files as an admin should keep them (dirsync warns about others).
        for f in ["ldap-password", "portal-token"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(
                self.dir.path().join(f),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
        }
        let text = format!(
            r#"
[source]
url = "{url}"
starttls = false
bind_dn = "{bind_dn}"
bind_password_file = "ldap-password"
timeout_secs = 10
page_size = 7
{source_extra}
[source.users]
base = "ou=people,{suffix}"
filter = "{users_filter}"
{users_extra}
[source.groups]
base = "ou=groups,{suffix}"

[portal]
url = "{portal}"
token_file = "portal-token"
timeout_secs = {portal_timeout}
page_size = {portal_page_size}

[state]
path = "state.db"

{safety}
{mappings}
{extra}"#,
            url = self.ldap.url,
            bind_dn = self.ldap.bind_dn,
            suffix = self.ldap.suffix,
            portal = self.portal_url.as_deref().unwrap_or(&self.portal.url),
            users_filter = self.users_filter,
            users_extra = self.users_extra,
            source_extra = self.source_extra,
            mappings = self.mappings,
            extra = self.extra_config,
            safety = self.safety,
            portal_timeout = self.portal_timeout_secs,
            portal_page_size = self.portal_page_size,
        );
        let path = self.config_path();
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `dirsync --config <config> ARGS` (writing the config first).
    /// Puts a fault-injecting [`Proxy`] between dirsync and the portal: configs written from
    /// now on reach the portal through it.
    pub fn behind_proxy(&mut self) -> Proxy {
        let proxy = Proxy::start(&self.portal.url);
        self.portal_url = Some(proxy.url.clone());
        proxy
    }

    pub fn dirsync(&self, args: &[&str]) -> Run {
        let config = self.write_config();
        run_dirsync(&config, args)
    }

    pub fn sync(&self) -> Json {
        let run = self.dirsync(&["sync", "--format", "json"]);
        assert_eq!(run.code, 0, "sync failed:\n{}", run.all_output());
        run.json()
    }

    pub fn plan(&self) -> Json {
        let run = self.dirsync(&["plan", "--format", "json"]);
        assert_eq!(run.code, 0, "plan failed:\n{}", run.all_output());
        run.json()
    }

    /// The portal user whose userName is `login`.
    pub fn portal_user(&self, login: &str) -> Json {
        let users = self.portal.users();
        let found: Vec<&Json> = users
            .iter()
            .filter(|u| u["userName"].as_str() == Some(login))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "expected one portal user {login}, found {}: {users:#?}",
            found.len()
        );
        found[0].clone()
    }
}

/// `dirsync --config CONFIG ARGS...`, with the caller's `DIRSYNC_LOG` left out.
pub fn dirsync_command(config: &std::path::Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dirsync"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("DIRSYNC_LOG");
    command
}

pub fn run_dirsync(config: &std::path::Path, args: &[&str]) -> Run {
    let out = dirsync_command(config, args).output().expect("run dirsync");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Counts per action in a JSON report.
pub fn count(report: &Json, key: &str) -> u64 {
    report["counts"][key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key} in {report:#}"))
}

/// A report's changes as (action, login), sorted.
pub fn actions(report: &Json) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["action"].as_str().unwrap().to_string(),
                c["user_name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Whether a report says the last settled cycle's findings stand (its read reason).
pub fn stands(report: &Json) -> bool {
    report["directory"]["read_reason"]
        .as_str()
        .unwrap_or("")
        .contains("its findings stand")
}

/// A portal resource without its `meta` (which changes on every read of some servers).
pub fn without_meta(mut v: Json) -> Json {
    if let Some(o) = v.as_object_mut() {
        o.remove("meta");
    }
    v
}

/// [`MAPPINGS`] with `owner = OWNER` added to the mapping whose `to` is `to`.
pub fn mappings_with_owner(owners: &[(&str, &str)]) -> String {
    let mut out = MAPPINGS.to_string();
    for (to, owner) in owners {
        let line = format!("to = {to}\n");
        assert!(out.contains(&line), "no mapping to {to}");
        out = out.replace(&line, &format!("{line}owner = \"{owner}\"\n"));
    }
    out
}

/// A `groupOfNames` under ou=groups (slapd needs at least one member: an empty group gets
/// the service account, which is no user in scope).
pub fn group_ldif(cn: &str, member_dns: &[&str]) -> String {
    let mut s =
        format!("dn: cn={cn},ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: {cn}\n");
    if member_dns.is_empty() {
        s.push_str("member: cn=dirsync,ou=services,dc=example,dc=com\n");
    }
    for m in member_dns {
        s.push_str(&format!("member: {m}\n"));
    }
    s.push('\n');
    s
}

pub fn user_dn(uid: &str) -> String {
    format!("uid={uid},ou=people,dc=example,dc=com")
}

pub fn group_dn(cn: &str) -> String {
    format!("cn={cn},ou=groups,dc=example,dc=com")
}

/// Portal users with ids and metadata aside, sorted by login: what "the same portal
/// state" means when comparing two runs. Every user must be linked (have an externalId).
pub fn portal_shape(users: Vec<Json>) -> Vec<Json> {
    let mut v: Vec<Json> = users
        .into_iter()
        .map(|u| {
            let mut u = without_meta(u);
            let o = u.as_object_mut().unwrap();
            o.remove("id");
            assert!(o.remove("externalId").is_some(), "every user is linked");
            u
        })
        .collect();
    v.sort_by_key(|u| u["userName"].as_str().unwrap().to_string());
    v
}

/// A self-signed CA certificate that signed nothing the tests' servers use.
pub fn unrelated_ca(dir: &std::path::Path) -> PathBuf {
    let cert = dir.join("unrelated-ca.pem");
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Unrelated CA",
        ])
        .arg("-keyout")
        .arg(dir.join("unrelated-ca.key"))
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cert
}

/// Where [`kill_mid_create`] stops the process.
#[derive(Clone, Copy, Debug)]
pub enum KillPoint {
    /// While a create is on its way: the portal never sees it.
    BeforeThePortal,
    /// After the portal made the user, before dirsync heard back: only the portal knows.
    AfterThePortal,
}

/// Starts `dirsync --config CONFIG sync` against a portal reached through `proxy`, lets
/// `creates` user creates through and holds the next ones at `point`; returns the running
/// process once it waits on a held create. Deterministic: the process stops exactly there,
/// at any speed of the machine.
#[track_caller]
pub fn hold_mid_create(
    config: &std::path::Path,
    proxy: &Proxy,
    creates: usize,
    point: KillPoint,
) -> std::process::Child {
    let held = || {
        let forever = Fault::Delay(std::time::Duration::from_secs(600));
        match point {
            KillPoint::BeforeThePortal => forever,
            KillPoint::AfterThePortal => Fault::after_forward(forever),
        }
    };
    // Every create that may be in flight at once (portal.concurrency) is held.
    let mut schedule = vec![Fault::Pass; creates];
    schedule.extend((0..16).map(|_| held()));
    proxy.heal();
    proxy.fail_matching("POST", "/Users", schedule);
    let sent_before = proxy.count("POST", "/Users");
    let mut child = dirsync_command(config, &["sync"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start dirsync");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        if proxy.count("POST", "/Users") > sent_before + creates {
            return child;
        }
        if child.try_wait().expect("poll dirsync").is_some() || std::time::Instant::now() > deadline
        {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "dirsync did not reach create {} of this run ({point:?}); requests:\n{}",
                creates + 1,
                proxy.summary()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

/// [`hold_mid_create`], then SIGKILL while the process waits. Returns once every request
/// the process sent has either reached the portal or been dropped, so the portal is what a
/// restart will find.
#[track_caller]
pub fn kill_mid_create(config: &std::path::Path, proxy: &Proxy, creates: usize, point: KillPoint) {
    let mut child = hold_mid_create(config, proxy, creates, point);
    kill_and_settle(&mut child, proxy);
}

/// SIGKILL, then wait until held requests saw the hang-up and were dropped (or, held after
/// the portal, were made already) and requests being relayed at the kill have landed.
pub fn kill_and_settle(child: &mut std::process::Child, proxy: &Proxy) {
    child.kill().expect("kill -9 dirsync");
    child.wait().expect("reap dirsync");
    proxy.wait_idle(std::time::Duration::from_secs(10));
    proxy.heal();
}
