//! Configuration: the TOML file is parsed into private versioned structs ([`file`]) and then
//! validated into [`Config`], the only form the rest of the crate uses. Every error names the
//! file, the key and the problem, and never quotes the file's text (it may hold a secret).

mod file;
mod filter;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;

use crate::access::{
    AccessRules, GroupRef, PortalGroupRule, RoleRule, ServiceRule, SubUnitRule, SubUnitSource,
};
use crate::mapping::{AttrPath, Owner, Rule};
use crate::secret::{io_reason, Secret, SecretSource};

pub const DEFAULT_LDAP_PAGE_SIZE: i32 = 500;
pub const DEFAULT_PORTAL_PAGE_SIZE: usize = 100;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_CYCLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long `/healthz` stays healthy without a successful cycle, by default.
pub const DEFAULT_HEALTH_MAX_AGE: Duration = Duration::from_secs(3600);
pub const DEFAULT_STATE_PATH: &str = "/var/lib/dirsync/state.db";
pub const DEFAULT_KEEP_RUNS: usize = 10_000;
pub const DEFAULT_CRON: &str = "0 */15 * * * *";
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(30);
/// The reports directory's name beside the state (`/var/lib/dirsync/reports` by default).
pub const REPORTS_DIR_NAME: &str = "reports";
/// Cycles whose reports are kept, by default.
pub const DEFAULT_REPORTS_KEEP: usize = 1000;
/// Reports older than this many days are removed, by default.
pub const DEFAULT_REPORTS_MAX_AGE_DAYS: u64 = 30;
pub const DEFAULT_SUB_UNIT_TARGET: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department";

/// When the daemon (`dirsync run`) starts a cycle.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Seconds-first cron expression (the `cron` crate's syntax), as written.
    pub cron_text: String,
    pub cron: cron::Schedule,
    /// One cycle right after start.
    pub run_at_start: bool,
    /// Plan and report every cycle, never apply (a warm spare host).
    pub standby: bool,
    /// How long in-flight requests may take to finish once a stop was asked for.
    pub stop_grace: Duration,
}

/// A config that cannot be used. Fatal: the caller reports it and exits with code 2.
/// It names the file, the line and the key, and never quotes a value from the file: an
/// admin may have put a secret where it does not belong.
#[derive(Debug, thiserror::Error)]
#[error(
    "config error in {file}{}: {}{problem}",
    line.map(|l| format!(" line {l}")).unwrap_or_default(),
    key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default()
)]
pub struct ConfigError {
    pub file: String,
    /// The line the problem is on (1-based), when it can be told.
    pub line: Option<usize>,
    /// The dotted key, e.g. `source.users.base`, when the problem is tied to one.
    pub key: Option<String>,
    pub problem: String,
}

/// Limits that stop a cycle from doing too much damage at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Safety {
    /// Hold back closures when a cycle would close more than this many users...
    pub max_closures: usize,
    /// ...or more than this share (percent) of the managed users.
    pub max_closure_percent: f64,
    /// Hold back group-membership removals, role downgrades and service revocations
    /// beyond this many.
    pub max_access_removals: usize,
    /// Stop a cycle after this many portal failures in a row.
    pub max_consecutive_failures: usize,
}

/// Where dirsync reads its config unless told otherwise (`--config`, `DIRSYNC_CONFIG`).
pub const DEFAULT_PATH: &str = "/etc/dirsync/dirsync.toml";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub source: SourceConfig,
    pub portal: PortalConfig,
    pub state_path: PathBuf,
    /// Runs kept in the state's history (`[state] keep_runs`).
    pub keep_runs: usize,
    /// When `dirsync run` starts cycles.
    pub schedule: Schedule,
    pub cycle_timeout: Duration,
    pub safety: Safety,
    pub mapping: Vec<Rule>,
    /// Roles, services, sub-units and portal groups from the directory.
    pub access: AccessRules,
    /// Problems that do not stop dirsync but that an admin should fix; logged at start.
    pub warnings: Vec<String>,
    /// The `/healthz` and `/metrics` listener of `dirsync run`; `None`: no listener.
    pub health: Option<HealthConfig>,
    /// Where each cycle's report is written, and for how long it is kept (`[reports]`).
    pub reports: ReportsConfig,
    /// Where reports that need an administrator are mailed (`[mail]`); `None`: no mail.
    pub mail: Option<MailConfig>,
}

/// `[reports]`: every cycle that records a run writes its report here, as JSON and HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportsConfig {
    /// `reports.dir`; by default `reports` beside the state database.
    pub dir: PathBuf,
    /// The reports of this many cycles are kept (`reports.keep`)...
    pub keep: usize,
    /// ...and none older than this (`reports.max_age_days`).
    pub max_age: Duration,
}

/// How the SMTP connection is protected (`mail.tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailTls {
    /// Plain connection upgraded with STARTTLS, which is required (port 587).
    StartTls,
    /// TLS from the first byte ("SMTPS", port 465).
    Tls,
    /// No TLS at all: only to a mail server on this host (a loopback address).
    None,
}

impl MailTls {
    pub fn default_port(self) -> u16 {
        match self {
            MailTls::StartTls => 587,
            MailTls::Tls => 465,
            MailTls::None => 25,
        }
    }
}

/// `[mail]`: the SMTP server reports are mailed through, and to whom.
#[derive(Debug, Clone)]
pub struct MailConfig {
    pub host: String,
    pub port: u16,
    pub tls: MailTls,
    pub from: lettre::message::Mailbox,
    pub to: Vec<lettre::message::Mailbox>,
    /// SMTP AUTH: the user name and the password (from a file, env or credential).
    pub credentials: Option<(String, Secret)>,
    /// A CA file trusted besides the system roots, for the server's certificate.
    pub ca_file: Option<PathBuf>,
    /// Connecting and each SMTP exchange time out after this long.
    pub timeout: Duration,
}

/// The daemon's HTTP listener for `/healthz` and `/metrics` (`[health]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthConfig {
    /// The address to listen on (`health.listen`).
    pub listen: std::net::SocketAddr,
    /// `/healthz` answers 503 when no cycle succeeded for this long (`health.max_age_secs`).
    pub max_age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    /// OpenLDAP and other RFC 4511 servers; the anchor is `entryUUID`.
    Ldap,
    /// Active Directory (or Samba AD): the anchor is `objectGUID`; disabled and expired
    /// accounts are read from `userAccountControl` and `accountExpires`.
    ActiveDirectory,
}

/// AD's MaxPageSize: a page may not be larger.
pub const AD_MAX_PAGE_SIZE: i32 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The base entry only (used internally, e.g. for ranged values).
    Base,
    One,
    Subtree,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tls {
    /// `ldaps://`: TLS from the first byte.
    Ldaps,
    /// `ldap://` upgraded with StartTLS before the bind.
    StartTls,
    /// `ldap://` in clear text: only when `starttls = false` is set explicitly.
    None,
}

impl Tls {
    pub fn label(&self) -> &'static str {
        match self {
            Tls::Ldaps => "LDAPS",
            Tls::StartTls => "StartTLS",
            Tls::None => "plain LDAP, no TLS",
        }
    }
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub kind: SourceKind,
    pub url: Url,
    pub tls: Tls,
    pub ca_file: Option<PathBuf>,
    /// The name to check the server's certificate against instead of the URL's host.
    pub tls_server_name: Option<String>,
    /// `None` for an anonymous bind.
    pub bind: Option<Bind>,
    pub timeout: Duration,
    pub page_size: i32,
    pub anchor_attribute: String,
    /// Active Directory: read only what changed (uSNChanged) between full reads, and read
    /// everything at least this often.
    pub full_reconcile: Duration,
    pub users: UserSearch,
    pub groups: Option<Search>,
    /// Groups in scope that also match this filter are mirrored as portal groups.
    pub portal_groups_filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Bind {
    pub dn: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct Search {
    pub base: String,
    pub scope: Scope,
    pub filter: String,
}

#[derive(Debug, Clone)]
pub struct UserSearch {
    pub search: Search,
    /// Users in scope that also match this filter are closed in the portal.
    pub disabled_filter: Option<String>,
}

#[derive(Debug, Clone)]
pub struct PortalConfig {
    /// The SCIM base URL, always ending in `/`.
    pub url: Url,
    pub token: Secret,
    /// The config key the token was read from (`portal.token_env`, ...), for messages.
    pub token_key: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    pub page_size: usize,
    /// Portal requests in flight at once.
    pub concurrency: usize,
    /// Retries of a transient failure (5xx, 429, timeouts, connection errors).
    pub max_retries: u32,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            line: None,
            key: None,
            problem: format!("cannot read the file: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let raw = parse_toml(path, text)?;
        let validator = Validator {
            file: path.display().to_string(),
            text: text.to_string(),
            warnings: Default::default(),
        };
        let mut config = validator.validate(path, raw)?;
        config.warnings = validator.warnings.into_inner();
        Ok(config)
    }

    /// The directory scope in words, one fact a line: what decides who is in scope and
    /// what they get. A change here makes the next sync a plan only, until an admin
    /// accepts it (`--accept-scope-change`).
    pub fn scope_text(&self) -> String {
        let s = &self.source;
        let mut lines = vec![
            format!("directory: {}", s.url),
            format!(
                "users: base {} scope {:?} filter {}",
                s.users.search.base, s.users.search.scope, s.users.search.filter
            ),
            format!(
                "disabled: {}",
                s.users.disabled_filter.as_deref().unwrap_or("(none)")
            ),
            format!("anchor: {}", s.anchor_attribute),
        ];
        if let Some(g) = &s.groups {
            lines.push(format!(
                "groups: base {} scope {:?} filter {}",
                g.base, g.scope, g.filter
            ));
        }
        if let Some((rules, default)) = &self.access.roles {
            let r: Vec<String> = rules
                .iter()
                .map(|r| format!("{}→{}", r.group.0, r.role))
                .collect();
            lines.push(format!("roles: {} default {default}", r.join(", ")));
        }
        if !self.access.services.is_empty() {
            let r: Vec<String> = self
                .access
                .services
                .iter()
                .map(|r| format!("{}→{}", r.group.0, r.service))
                .collect();
            lines.push(format!("services: {}", r.join(", ")));
        }
        if let Some(pg) = &self.access.portal_groups {
            let g: Vec<&str> = pg.groups.iter().map(|g| g.0.as_str()).collect();
            lines.push(format!(
                "portal groups: {} filter {}",
                g.join(", "),
                s.portal_groups_filter.as_deref().unwrap_or("(none)")
            ));
        }
        lines.join("\n")
    }
}

fn parse_toml(path: &Path, text: &str) -> Result<file::FileV1, ConfigError> {
    let error =
        |key: Option<String>, message: &str, span: Option<std::ops::Range<usize>>| ConfigError {
            file: path.display().to_string(),
            line: span
                .map(|s| line_of(text, s.start))
                .or_else(|| key.as_deref().and_then(|k| line_of_key(text, k))),
            key,
            problem: without_values(message.trim()),
        };
    let de = toml::Deserializer::parse(text).map_err(|e| error(None, e.message(), e.span()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let mut key = e.path().to_string();
        if key == "." {
            key.clear();
        }
        // serde names a missing key only in its message; put it in the key path too.
        if let Some(missing) = e
            .inner()
            .message()
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            key = if key.is_empty() {
                missing.to_string()
            } else {
                format!("{key}.{missing}")
            };
        }
        let key = (!key.is_empty()).then_some(key);
        error(key, e.inner().message(), e.inner().span())
    })
}

/// A serde or TOML message with the values it quotes taken out: `invalid type: string
/// "…", expected i64` becomes `wrong type: a string where i64 was expected`. Key names
/// (in backquotes, as in `unknown field `x``) stay.
fn without_values(message: &str) -> String {
    for (prefix, what) in [
        ("invalid type: ", "wrong type"),
        ("invalid value: ", "invalid value"),
    ] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let (found, expected) = rest.rsplit_once(", expected ").unwrap_or((rest, ""));
            let kind: String = found
                .split([' ', '"', '`'])
                .next()
                .unwrap_or_default()
                .to_string();
            let kind = match kind.as_str() {
                "string" | "integer" | "floating" | "boolean" | "character" | "sequence"
                | "map" | "unit" | "option" | "bytes" => match kind.as_str() {
                    "integer" => "an integer".to_string(),
                    "floating" => "a number".to_string(),
                    other => format!("a {other}"),
                },
                _ => "a value".to_string(),
            };
            return if expected.is_empty() {
                format!("{what}: {kind}")
            } else {
                format!("{what}: {kind} where {expected} was expected")
            };
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ") {
        let expected = rest.split_once(", expected ").map_or("", |(_, e)| e);
        return format!("unknown value; expected {expected}");
    }
    message.to_string()
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

/// The line of a dotted key (`source.users.base`, `mapping[2].to`) in the file: the
/// `key = ...` line when the key is there, else the line of the nearest table that is
/// (for a missing key). A light scan of the TOML, enough for the files admins write.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let unquote = |k: &str| k.trim().trim_matches('"').trim_matches('\'').to_string();
    let dotted = |k: &str| k.split('.').map(unquote).collect::<Vec<_>>().join(".");
    let mut table = String::new();
    let mut arrays: std::collections::HashMap<String, usize> = Default::default();
    let mut best: Option<(usize, usize)> = None; // (matched length, line)
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix("[[").and_then(|l| l.split("]]").next()) {
            let name = dotted(name);
            let n = arrays.entry(name.clone()).or_insert(0);
            table = format!("{name}[{n}]");
            *n += 1;
        } else if let Some(name) = line.strip_prefix('[').and_then(|l| l.split(']').next()) {
            table = dotted(name);
        } else if let Some((k, _)) = line.split_once('=') {
            if line.starts_with('#') {
                continue;
            }
            let full = if table.is_empty() {
                dotted(k)
            } else {
                format!("{table}.{}", dotted(k))
            };
            if full == key {
                return Some(i + 1);
            }
            continue;
        } else {
            continue;
        }
        if (key == table || key.starts_with(&format!("{table}.")))
            && best.is_none_or(|(len, _)| table.len() > len)
        {
            best = Some((table.len(), i + 1));
        }
    }
    best.map(|(_, line)| line)
}

struct Validator {
    file: String,
    text: String,
    /// Things an admin should fix that do not stop dirsync (a secret file others can read).
    warnings: std::cell::RefCell<Vec<String>>,
}

impl Validator {
    fn err(&self, key: &str, problem: impl fmt::Display) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: line_of_key(&self.text, key),
            key: Some(key.to_string()),
            problem: problem.to_string(),
        }
    }

    fn validate(&self, path: &Path, raw: file::FileV1) -> Result<Config, ConfigError> {
        let base_dir = path.parent().unwrap_or(Path::new("."));
        let source = self.source(base_dir, raw.source)?;
        let portal = self.portal(base_dir, raw.portal)?;
        let (state_path, keep_runs) = match raw.state {
            Some(s) => (s.path, s.keep_runs),
            None => (None, None),
        };
        let state_path = state_path
            .map(|p| resolve(base_dir, &p))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_PATH));
        let keep_runs = match keep_runs {
            None => DEFAULT_KEEP_RUNS,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => return Err(self.err("state.keep_runs", "must be at least 1")),
        };
        let schedule = self.schedule(raw.schedule)?;
        let cycle_timeout = self.duration(
            "sync.cycle_timeout_secs",
            raw.sync.and_then(|s| s.cycle_timeout_secs),
            DEFAULT_CYCLE_TIMEOUT,
        )?;
        let mapping = self.mapping(raw.mappings)?;
        let safety = self.safety(raw.safety)?;
        let mut source = source;
        let access = self.access(
            &source,
            raw.roles,
            raw.services,
            raw.portal_groups,
            raw.sub_unit,
            &mapping,
        )?;
        if let Some(f) = access.1 {
            source.portal_groups_filter = Some(f);
        }
        let access = access.0;
        let health = self.health(raw.health)?;
        let reports = self.reports(base_dir, raw.reports, &state_path)?;
        let mail = match raw.mail {
            Some(m) => Some(self.mail(base_dir, m)?),
            None => None,
        };
        Ok(Config {
            path: path.to_path_buf(),
            source,
            portal,
            state_path,
            keep_runs,
            schedule,
            cycle_timeout,
            safety,
            mapping,
            access,
            warnings: Vec::new(),
            health,
            reports,
            mail,
        })
    }

    /// `[reports]`: by default `reports` beside the state database.
    fn reports(
        &self,
        base_dir: &Path,
        r: Option<file::ReportsV1>,
        state_path: &Path,
    ) -> Result<ReportsConfig, ConfigError> {
        let r = r.unwrap_or(file::ReportsV1 {
            dir: None,
            keep: None,
            max_age_days: None,
        });
        let dir = match r.dir {
            Some(d) if d.trim().is_empty() => {
                return Err(self.err("reports.dir", "is empty; leave it out for the default"))
            }
            Some(d) => resolve(base_dir, &d),
            None => state_path
                .parent()
                .unwrap_or(Path::new("."))
                .join(REPORTS_DIR_NAME),
        };
        let keep = match r.keep {
            None => DEFAULT_REPORTS_KEEP,
            Some(n) if n >= 1 => usize::try_from(n).unwrap_or(usize::MAX),
            Some(_) => return Err(self.err("reports.keep", "must be at least 1")),
        };
        let days = match r.max_age_days {
            None => DEFAULT_REPORTS_MAX_AGE_DAYS,
            Some(n) if (1..=36_500).contains(&n) => n.unsigned_abs(),
            Some(_) => return Err(self.err("reports.max_age_days", "is out of range 1..=36500")),
        };
        Ok(ReportsConfig {
            dir,
            keep,
            max_age: Duration::from_secs(days * 24 * 3600),
        })
    }

    /// `[mail]`: STARTTLS unless told otherwise; no TLS only to this host.
    fn mail(&self, base_dir: &Path, m: file::MailV1) -> Result<MailConfig, ConfigError> {
        let host = m.host.trim().to_string();
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(self.err("mail.host", "is not a host name or IP address"));
        }
        let tls = match m.tls.as_deref() {
            None | Some("starttls") => MailTls::StartTls,
            Some("tls") => MailTls::Tls,
            Some("none") => MailTls::None,
            Some(_) => {
                return Err(self.err(
                    "mail.tls",
                    "unknown value; expected \"starttls\", \"tls\" or \"none\"",
                ))
            }
        };
        if tls == MailTls::None && !is_loopback_host(&host) {
            return Err(self.err(
                "mail.tls",
                "\"none\" would send the reports (and the SMTP password) in clear over the \
                 network; it is allowed only for a mail server on this host (127.0.0.1, ::1, \
                 localhost). Use \"starttls\" or \"tls\"",
            ));
        }
        let port = match m.port {
            None => tls.default_port(),
            Some(p) => match u16::try_from(p) {
                Ok(p) if p > 0 => p,
                _ => return Err(self.err("mail.port", "is out of range 1..=65535")),
            },
        };
        let mailbox = |key: &str, text: &str| {
            text.trim()
                .parse::<lettre::message::Mailbox>()
                .map_err(|_| {
                    self.err(
                        key,
                        "is not a mail address (expected e.g. \"dirsync@example.com\" or \
                     \"dirsync <dirsync@example.com>\")",
                    )
                })
        };
        let from = mailbox("mail.from", &m.from)?;
        if m.to.is_empty() {
            return Err(self.err("mail.to", "names no one; give at least one address"));
        }
        let mut to = Vec::with_capacity(m.to.len());
        for (i, t) in m.to.iter().enumerate() {
            to.push(mailbox(&format!("mail.to[{i}]"), t)?);
        }
        let has_password = m.password_file.is_some()
            || m.password_env.is_some()
            || m.password_credential.is_some();
        let credentials = match m.username {
            Some(u) if u.trim().is_empty() => {
                return Err(self.err(
                    "mail.username",
                    "is empty; leave it out when the server needs no login",
                ))
            }
            Some(u) => {
                let (password, _) = self.secret(
                    "mail.password",
                    base_dir,
                    m.password_file,
                    m.password_env,
                    m.password_credential,
                )?;
                Some((u.trim().to_string(), password))
            }
            None if has_password => {
                return Err(self.err("mail.username", "a password is set but no username"))
            }
            None => None,
        };
        let ca_file = self.ca_file("mail.ca_file", base_dir, m.ca_file)?;
        if ca_file.is_some() && tls == MailTls::None {
            return Err(self.err(
                "mail.ca_file",
                "is for TLS connections; this one has none (tls = \"none\")",
            ));
        }
        let timeout = self.duration("mail.timeout_secs", m.timeout_secs, DEFAULT_TIMEOUT)?;
        Ok(MailConfig {
            host,
            port,
            tls,
            from,
            to,
            credentials,
            ca_file,
            timeout,
        })
    }

    fn schedule(&self, s: Option<file::ScheduleV1>) -> Result<Schedule, ConfigError> {
        use std::str::FromStr;
        let s = s.unwrap_or(file::ScheduleV1 {
            cron: None,
            run_at_start: None,
            standby: None,
            stop_grace_secs: None,
        });
        let (cron_text, cron) = match s.cron {
            None => (
                DEFAULT_CRON.to_string(),
                cron::Schedule::from_str(DEFAULT_CRON)
                    .map_err(|e| self.err("schedule.cron", format!("the default: {e}")))?,
            ),
            Some(text) => {
                let fields = text.split_whitespace().count();
                if !(6..=7).contains(&fields) {
                    return Err(self.err(
                        "schedule.cron",
                        format!(
                            "has {fields} fields; dirsync's cron takes 6 or 7, seconds first: \
                             \"sec min hour day-of-month month day-of-week [year]\", e.g. \
                             \"0 */15 * * * *\" for every quarter hour"
                        ),
                    ));
                }
                let cron = cron::Schedule::from_str(&text).map_err(|e| {
                    self.err("schedule.cron", format!("is not a cron expression: {e}"))
                })?;
                if cron.upcoming(chrono::Utc).next().is_none() {
                    return Err(self.err("schedule.cron", "never fires again"));
                }
                (text, cron)
            }
        };
        Ok(Schedule {
            cron_text,
            cron,
            run_at_start: s.run_at_start.unwrap_or(true),
            standby: s.standby.unwrap_or(false),
            stop_grace: self.duration(
                "schedule.stop_grace_secs",
                s.stop_grace_secs,
                DEFAULT_STOP_GRACE,
            )?,
        })
    }

    /// `[health]`: no listener unless `listen` is set.
    fn health(&self, h: Option<file::HealthV1>) -> Result<Option<HealthConfig>, ConfigError> {
        let Some(h) = h else { return Ok(None) };
        let max_age = match h.max_age_secs {
            None => DEFAULT_HEALTH_MAX_AGE,
            Some(0) => return Err(self.err("health.max_age_secs", "must be at least 1 second")),
            Some(s) => Duration::from_secs(s),
        };
        let Some(listen) = h.listen else {
            return Ok(None);
        };
        let listen = listen.trim().parse().map_err(|_| {
            self.err(
                "health.listen",
                "is not an IP address and port (expected e.g. \"127.0.0.1:9469\" or \"[::1]:9469\")",
            )
        })?;
        Ok(Some(HealthConfig { listen, max_age }))
    }

    fn safety(&self, s: Option<file::SafetyV1>) -> Result<Safety, ConfigError> {
        let s = s.unwrap_or(file::SafetyV1 {
            max_closures: None,
            max_closure_percent: None,
            max_access_removals: None,
            max_consecutive_failures: None,
        });
        let count = |key: &str, v: Option<i64>, default: usize| match v {
            None => Ok(default),
            Some(n) if n >= 0 => Ok(n as usize),
            Some(_) => Err(self.err(key, "is negative")),
        };
        let percent = match s.max_closure_percent {
            None => 20.0,
            Some(p) if (0.0..=100.0).contains(&p) => p,
            Some(_) => {
                return Err(self.err(
                    "safety.max_closure_percent",
                    "is not a percentage (0 to 100)",
                ))
            }
        };
        let failures = count(
            "safety.max_consecutive_failures",
            s.max_consecutive_failures,
            20,
        )?;
        if failures == 0 {
            return Err(self.err("safety.max_consecutive_failures", "must be at least 1"));
        }
        Ok(Safety {
            max_closures: count("safety.max_closures", s.max_closures, 50)?,
            max_closure_percent: percent,
            max_access_removals: count("safety.max_access_removals", s.max_access_removals, 200)?,
            max_consecutive_failures: failures,
        })
    }

    /// The access rules, and the extra group filter the source must apply for them.
    fn access(
        &self,
        source: &SourceConfig,
        roles: Option<file::RolesV1>,
        services: Vec<file::ServiceV1>,
        portal_groups: Option<file::PortalGroupsV1>,
        sub_unit: Option<file::SubUnitV1>,
        mapping: &[Rule],
    ) -> Result<(AccessRules, Option<String>), ConfigError> {
        let group_ref = |key: &str, g: String| {
            let g = GroupRef(g.trim().to_string());
            if g.0.is_empty() {
                Err(self.err(key, "the group is empty; give its cn or DN"))
            } else if g.is_dn() {
                self.dn(key, &g.0).map(|()| g)
            } else {
                Ok(g)
            }
        };
        let mut rules = AccessRules::default();
        if let Some(r) = roles {
            let default = r.default.unwrap_or_else(|| "regular".to_string());
            if default.trim().is_empty() {
                return Err(self.err("roles.default", "is empty"));
            }
            let mut list = Vec::new();
            for (i, rule) in r.rules.into_iter().enumerate() {
                let key = format!("roles.rule[{i}]");
                if rule.role.trim().is_empty() {
                    return Err(self.err(&format!("{key}.role"), "is empty"));
                }
                list.push(RoleRule {
                    group: group_ref(&format!("{key}.group"), rule.group)?,
                    role: rule.role.trim().to_string(),
                });
            }
            rules.keep_one_of = r
                .keep_one_of
                .unwrap_or_else(|| vec!["administrator".into(), "account_manager".into()]);
            rules.roles = Some((list, default.trim().to_string()));
        }
        for (i, s) in services.into_iter().enumerate() {
            let key = format!("service[{i}]");
            let name = s.service.trim().to_string();
            if name.is_empty() || name.contains('"') {
                return Err(self.err(
                    &format!("{key}.service"),
                    "is not a service name (letters, digits, - and _)",
                ));
            }
            if rules
                .services
                .iter()
                .any(|r| r.service.eq_ignore_ascii_case(&name))
            {
                return Err(self.err(
                    &format!("{key}.service"),
                    "this service has two rules; list one group per service",
                ));
            }
            rules.services.push(ServiceRule {
                group: group_ref(&format!("{key}.group"), s.group)?,
                service: name,
            });
        }
        let mut filter = None;
        if let Some(pg) = portal_groups {
            let mut groups = Vec::new();
            for (i, g) in pg.groups.into_iter().enumerate() {
                groups.push(group_ref(&format!("portal_groups.groups[{i}]"), g)?);
            }
            if let Some(f) = pg.filter {
                filter = Some(self.filter("portal_groups.filter", f)?);
            }
            if groups.is_empty() && filter.is_none() {
                return Err(self.err(
                    "portal_groups",
                    "name the groups to mirror (groups = [...]) or give a filter",
                ));
            }
            rules.portal_groups = Some(PortalGroupRule {
                groups,
                by_filter: filter.is_some(),
                flatten: pg.flatten.unwrap_or(true),
            });
        }
        if let Some(su) = sub_unit {
            let from = match su.from.as_str() {
                "ou" => {
                    let base = su.base.unwrap_or_else(|| source.users.search.base.clone());
                    self.dn("sub_unit.base", &base)?;
                    SubUnitSource::OuPath { base }
                }
                "attribute" => match su.attribute {
                    Some(a) if !a.trim().is_empty() => {
                        SubUnitSource::Attribute(a.trim().to_ascii_lowercase())
                    }
                    _ => {
                        return Err(self.err(
                            "sub_unit.attribute",
                            "missing: from = \"attribute\" needs the attribute's name",
                        ))
                    }
                },
                _ => {
                    return Err(self.err(
                        "sub_unit.from",
                        "unknown source; expected \"ou\" or \"attribute\"",
                    ))
                }
            };
            let to = AttrPath::parse(su.to.as_deref().unwrap_or(DEFAULT_SUB_UNIT_TARGET))
                .map_err(|e| self.err("sub_unit.to", e))?;
            if mapping.iter().any(|r| r.to == to) {
                return Err(self.err(
                    "sub_unit.to",
                    format!("`{to}` is also the target of a [[mapping]]"),
                ));
            }
            rules.sub_unit = Some(SubUnitRule { from, to });
        }
        if rules.needs_groups() && source.groups.is_none() {
            return Err(self.err(
                "source.groups",
                "missing: roles, services and portal groups come from group membership; say where the groups are",
            ));
        }
        Ok((rules, filter))
    }

    fn source(&self, base_dir: &Path, s: file::SourceV1) -> Result<SourceConfig, ConfigError> {
        let kind = match s.kind.as_deref() {
            None | Some("ldap") | Some("openldap") => SourceKind::Ldap,
            Some("active-directory") | Some("ad") => SourceKind::ActiveDirectory,
            Some(_) => {
                return Err(self.err(
                    "source.kind",
                    "unknown kind; expected \"ldap\" or \"active-directory\"",
                ))
            }
        };
        let url =
            Url::parse(&s.url).map_err(|e| self.err("source.url", format!("not a URL ({e})")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.err("source.url", "the URL has no host"));
        }
        let tls = match (url.scheme(), s.starttls) {
            ("ldaps", Some(true)) => {
                return Err(self.err(
                    "source.starttls",
                    "StartTLS makes no sense on an ldaps:// URL, which is already TLS",
                ))
            }
            ("ldaps", _) => Tls::Ldaps,
            ("ldap", None | Some(true)) => Tls::StartTls,
            ("ldap", Some(false)) => Tls::None,
            (_, _) => {
                return Err(self.err(
                    "source.url",
                    "this scheme is not supported; use ldaps:// or ldap://",
                ))
            }
        };
        let ca_file = self.ca_file("source.ca_file", base_dir, s.ca_file)?;
        let tls_server_name = match s.tls_server_name {
            Some(_) if tls == Tls::None => {
                return Err(self.err(
                    "source.tls_server_name",
                    "is for TLS connections; this one is plain LDAP (starttls = false)",
                ))
            }
            Some(n) => match rustls::pki_types::ServerName::try_from(n.trim().to_string()) {
                Ok(_) => Some(n.trim().to_string()),
                Err(_) => {
                    return Err(
                        self.err("source.tls_server_name", "is not a DNS name or IP address")
                    )
                }
            },
            None => None,
        };
        let bind = match s.bind_dn {
            Some(dn) if dn.trim().is_empty() => {
                return Err(self.err(
                    "source.bind_dn",
                    "is empty; leave it out for an anonymous bind",
                ))
            }
            Some(dn) => {
                let (password, _) = self.secret(
                    "source.bind_password",
                    base_dir,
                    s.bind_password_file,
                    s.bind_password_env,
                    s.bind_password_credential,
                )?;
                Some(Bind { dn, password })
            }
            None => {
                if s.bind_password_file.is_some()
                    || s.bind_password_env.is_some()
                    || s.bind_password_credential.is_some()
                {
                    return Err(self.err("source.bind_dn", "a bind password is set but no bind_dn"));
                }
                None
            }
        };
        let timeout = self.duration("source.timeout_secs", s.timeout_secs, DEFAULT_TIMEOUT)?;
        let page_size = match s.page_size {
            None => DEFAULT_LDAP_PAGE_SIZE,
            Some(n) if kind == SourceKind::ActiveDirectory && n > i64::from(AD_MAX_PAGE_SIZE) => {
                return Err(self.err(
                    "source.page_size",
                    format!("is more than Active Directory's MaxPageSize ({AD_MAX_PAGE_SIZE})"),
                ))
            }
            Some(n) if (1..=100_000).contains(&n) => n as i32,
            Some(_) => return Err(self.err("source.page_size", "is out of range 1..=100000")),
        };
        let ad = kind == SourceKind::ActiveDirectory;
        let anchor_attribute = s
            .anchor_attribute
            .unwrap_or_else(|| if ad { "objectGUID" } else { "entryUUID" }.into());
        if anchor_attribute.trim().is_empty() {
            return Err(self.err("source.anchor_attribute", "is empty"));
        }
        let users = UserSearch {
            search: self.search(
                "source.users",
                s.users.base,
                s.users.scope,
                s.users.filter,
                if ad {
                    "(&(objectCategory=person)(objectClass=user))"
                } else {
                    "(objectClass=inetOrgPerson)"
                },
            )?,
            disabled_filter: match s.users.disabled_filter {
                Some(f) => Some(self.filter("source.users.disabled_filter", f)?),
                None => None,
            },
        };
        let groups = match s.groups {
            Some(g) => Some(self.search(
                "source.groups",
                g.base,
                g.scope,
                g.filter,
                if ad {
                    "(objectClass=group)"
                } else {
                    "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
                },
            )?),
            None => None,
        };
        Ok(SourceConfig {
            kind,
            url,
            tls,
            ca_file,
            tls_server_name,
            bind,
            timeout,
            page_size,
            anchor_attribute,
            full_reconcile: match s.full_reconcile_hours {
                None => Duration::from_secs(24 * 3600),
                Some(0) => {
                    return Err(self.err("source.full_reconcile_hours", "must be at least 1"))
                }
                Some(h) => Duration::from_secs(h.saturating_mul(3600)),
            },
            users,
            groups,
            portal_groups_filter: None,
        })
    }

    fn search(
        &self,
        key: &str,
        base: String,
        scope: Option<String>,
        filter: Option<String>,
        default_filter: &str,
    ) -> Result<Search, ConfigError> {
        if base.trim().is_empty() {
            return Err(self.err(&format!("{key}.base"), "the base DN is empty"));
        }
        self.dn(&format!("{key}.base"), &base)?;
        let scope = match scope.as_deref() {
            None | Some("subtree") | Some("sub") => Scope::Subtree,
            Some("one") | Some("onelevel") => Scope::One,
            Some(_) => {
                return Err(self.err(
                    &format!("{key}.scope"),
                    "unknown scope; expected \"subtree\" or \"one\"",
                ))
            }
        };
        let filter = self.filter(
            &format!("{key}.filter"),
            filter.unwrap_or_else(|| default_filter.to_string()),
        )?;
        Ok(Search {
            base,
            scope,
            filter,
        })
    }

    /// Checks that `text` is a DN (RFC 4514); the error says where it breaks, without
    /// quoting the value.
    fn dn(&self, key: &str, text: &str) -> Result<(), ConfigError> {
        if !text.contains('=') {
            return Err(self.err(
                key,
                "is not a DN (expected e.g. \"ou=people,dc=example,dc=com\")",
            ));
        }
        crate::dn::Dn::parse(text)
            .map(|_| ())
            .map_err(|e| self.err(key, e))
    }

    /// An LDAP filter, parsed as the LDAP library will parse it when it is sent.
    fn filter(&self, key: &str, filter: String) -> Result<String, ConfigError> {
        let f = filter.trim();
        match filter::problem(f) {
            None => Ok(f.to_string()),
            Some((at, what)) => Err(self.err(
                key,
                format!(
                    "not an LDAP filter (RFC 4515): {what}, at character {at}:\n{}",
                    filter::pointed(f, at)
                ),
            )),
        }
    }

    /// A CA file: it must exist and hold at least one PEM certificate.
    fn ca_file(
        &self,
        key: &str,
        base_dir: &Path,
        p: Option<String>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::CertificateDer;
        let Some(path) = self.existing_file(key, base_dir, p)? else {
            return Ok(None);
        };
        let certs: Result<Vec<CertificateDer<'_>>, _> =
            CertificateDer::pem_file_iter(&path).and_then(|certs| certs.collect());
        match certs {
            Ok(certs) if !certs.is_empty() => Ok(Some(path)),
            Ok(_) => Err(self.err(
                key,
                "the file it names holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            )),
            Err(e) => Err(self.err(
                key,
                format!("the file it names is not a PEM certificate file ({e})"),
            )),
        }
    }

    fn portal(&self, base_dir: &Path, p: file::PortalV1) -> Result<PortalConfig, ConfigError> {
        let mut url =
            Url::parse(&p.url).map_err(|e| self.err("portal.url", format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "https" | "http") {
            return Err(self.err("portal.url", "this scheme is not supported; use https://"));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.err("portal.url", "the URL has no host"));
        }
        if url.scheme() == "http" && !is_loopback(&url) && p.insecure_http != Some(true) {
            return Err(self.err(
                "portal.url",
                "plain http:// would send the API token in clear over the network; use https://, \
                 or set portal.insecure_http = true if a TLS-terminating proxy on this host \
                 forwards it",
            ));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.err(
                "portal.url",
                "credentials in the URL are not allowed; use token_file",
            ));
        }
        if !url.path().ends_with('/') {
            url.set_path(&format!("{}/", url.path()));
        }
        let (token, token_key) = self.secret(
            "portal.token",
            base_dir,
            p.token_file,
            p.token_env,
            p.token_credential,
        )?;
        let ca_file = self.ca_file("portal.ca_file", base_dir, p.ca_file)?;
        let timeout = self.duration("portal.timeout_secs", p.timeout_secs, DEFAULT_TIMEOUT)?;
        let page_size = match p.page_size {
            None => DEFAULT_PORTAL_PAGE_SIZE,
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            Some(_) => return Err(self.err("portal.page_size", "is out of range 1..=10000")),
        };
        let concurrency = match p.concurrency {
            None => 4,
            Some(n) if (1..=64).contains(&n) => n as usize,
            Some(_) => return Err(self.err("portal.concurrency", "is out of range 1..=64")),
        };
        let max_retries = match p.max_retries {
            None => 4,
            Some(n) if (0..=20).contains(&n) => n as u32,
            Some(_) => return Err(self.err("portal.max_retries", "is out of range 0..=20")),
        };
        Ok(PortalConfig {
            url,
            token,
            token_key,
            ca_file,
            timeout,
            page_size,
            concurrency,
            max_retries,
        })
    }

    fn mapping(&self, raw: Vec<file::MappingV1>) -> Result<Vec<Rule>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                "mapping",
                "no [[mapping]] entries; at least one must map to userName",
            ));
        }
        let mut rules: Vec<Rule> = Vec::with_capacity(raw.len());
        for (i, m) in raw.into_iter().enumerate() {
            let key = format!("mapping[{i}]");
            if m.from.trim().is_empty() || m.from.contains(|c: char| c.is_whitespace()) {
                return Err(self.err(&format!("{key}.from"), "is not an LDAP attribute name"));
            }
            let to = AttrPath::parse(&m.to).map_err(|e| self.err(&format!("{key}.to"), e))?;
            if rules.iter().any(|r| r.to == to) {
                return Err(self.err(&format!("{key}.to"), format!("`{to}` is mapped twice")));
            }
            if to.schema.is_none()
                && ["id", "externalid", "meta", "active", "schemas"]
                    .contains(&to.attr.to_ascii_lowercase().as_str())
            {
                return Err(self.err(
                    &format!("{key}.to"),
                    format!("`{to}` is managed by dirsync itself and cannot be mapped"),
                ));
            }
            let multi = m.multi_valued.unwrap_or(false);
            if multi && (to.filter.is_some() || to.sub.is_some()) {
                return Err(self.err(
                    &format!("{key}.multi_valued"),
                    "only a multi-valued attribute of simple values (e.g. faxNumbers) can take several values",
                ));
            }
            let owner = match m.owner.as_deref() {
                None | Some("directory") => Owner::Directory,
                Some("portal") => Owner::Portal,
                Some("merge") => Owner::Merge,
                Some(_) => {
                    return Err(self.err(
                        &format!("{key}.owner"),
                        "unknown owner; expected \"directory\", \"portal\" or \"merge\"",
                    ))
                }
            };
            if to.is_user_name() && owner != Owner::Directory {
                return Err(self.err(
                    &format!("{key}.owner"),
                    "userName is the login: it must be owned by the directory",
                ));
            }
            rules.push(Rule {
                from: m.from,
                to,
                multi,
                owner,
            });
        }
        if !rules.iter().any(|r| r.to.is_user_name()) {
            return Err(self.err(
                "mapping",
                "no mapping has `to = \"userName\"`: the portal login must come from the directory",
            ));
        }
        Ok(rules)
    }

    fn secret(
        &self,
        key: &str,
        base_dir: &Path,
        file: Option<String>,
        env: Option<String>,
        credential: Option<String>,
    ) -> Result<(Secret, String), ConfigError> {
        let mut sources = Vec::new();
        if let Some(f) = file {
            sources.push((
                format!("{key}_file"),
                SecretSource::File(resolve(base_dir, &f)),
            ));
        }
        if let Some(e) = env {
            sources.push((format!("{key}_env"), SecretSource::Env(e)));
        }
        if let Some(c) = credential {
            sources.push((format!("{key}_credential"), SecretSource::Credential(c)));
        }
        match sources.len() {
            0 => Err(self.err(
                &format!("{key}_file"),
                format!("missing: set one of {key}_file, {key}_env or {key}_credential (inline secrets are not accepted)"),
            )),
            1 => {
                let (k, src) = &sources[0];
                let secret = src.read(k).map_err(|e| self.err(k, e))?;
                if let Some(mode) = src.readable_by_others() {
                    self.warnings.borrow_mut().push(format!(
                        "the secret file named by {k} can be read by other users (mode {mode:03o}); \
                         make it readable by dirsync alone (chmod 600)"
                    ));
                }
                Ok((secret, k.clone()))
            }
            _ => Err(self.err(
                &sources[1].0,
                format!("set only one of {key}_file, {key}_env, {key}_credential"),
            )),
        }
    }

    fn existing_file(
        &self,
        key: &str,
        base_dir: &Path,
        p: Option<String>,
    ) -> Result<Option<PathBuf>, ConfigError> {
        match p {
            None => Ok(None),
            Some(p) => {
                let path = resolve(base_dir, &p);
                std::fs::metadata(&path).map_err(|e| {
                    self.err(
                        key,
                        format!("the file it names cannot be read: {}", io_reason(&e)),
                    )
                })?;
                Ok(Some(path))
            }
        }
    }

    fn duration(
        &self,
        key: &str,
        secs: Option<u64>,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match secs {
            None => Ok(default),
            Some(0) => Err(self.err(key, "must be at least 1 second")),
            Some(s) if s > 24 * 3600 => Err(self.err(key, "is more than a day (86400 s)")),
            Some(s) => Ok(Duration::from_secs(s)),
        }
    }
}

/// Relative paths in the config are relative to the config file's directory.
/// Whether the URL's host is this machine (a loopback address or `localhost`).
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => {
            d.eq_ignore_ascii_case("localhost") || d.to_ascii_lowercase().ends_with(".localhost")
        }
        None => false,
    }
}

/// Whether a host name is this machine: a loopback address or `localhost`.
fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            bare.eq_ignore_ascii_case("localhost")
                || bare.to_ascii_lowercase().ends_with(".localhost")
        }
    }
}

fn resolve(base_dir: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        path
    } else {
        base_dir.join(path)
    }
}

#[cfg(test)]
mod tests;
