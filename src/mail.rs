//! Mail to the administrators (`[mail]`): when a cycle fails, holds changes back, or has
//! changes that need an administrator, its HTML report is mailed. The same condition is
//! mailed once, not every cycle: again only when it changes, and once more, as
//! "resolved", when it clears.
//!
//! A condition is a [`Condition`]: the facts that say what needs doing, and nothing that
//! differs from one cycle to the next while the problem stays the same (no times, no
//! counts of untouched users). The last one mailed is kept in `<state>.mail.json`, so a
//! restart does not mail it again. Deciding is pure ([`Condition::of`], [`decide`]);
//! sending ([`send`]) is SMTP through `lettre`, TLS verified by rustls (STARTTLS by
//! default). A mail that cannot be sent is logged and tried again at the next cycle; it
//! never fails the cycle.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use lettre::message::{header::ContentType, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::{Deserialize, Serialize};

use crate::apply::Status;
use crate::config::{MailConfig, MailTls};
use crate::plan::guard::HeldKind;
use crate::report::{render_html, render_text, Report, RunOutcome};
use crate::secret::io_reason;

/// What went wrong when a cycle failed, by where: the kind, never the message (which
/// may name a request id or a time that differs every cycle).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The directory could not be read.
    Directory,
    /// The portal could not be read.
    Portal,
    /// The state database could not be opened, read or written.
    State,
    /// A saved plan could not be read.
    SavedPlan,
    /// The cycle did not finish within `sync.cycle_timeout_secs`.
    Timeout,
    /// Some changes failed (they are planned again next cycle).
    Changes,
}

impl Failure {
    pub fn label(self) -> &'static str {
        match self {
            Failure::Directory => "the directory could not be read",
            Failure::Portal => "the portal could not be read",
            Failure::State => "the state database failed",
            Failure::SavedPlan => "the saved plan could not be read",
            Failure::Timeout => "the cycle timed out",
            Failure::Changes => "changes failed",
        }
    }
}

/// What an administrator is told about: a stable fingerprint of a cycle's trouble.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    /// How the cycle ended.
    pub outcome: RunOutcome,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    /// The users whose changes failed (logins, sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_users: Vec<String>,
    /// Each guard that held changes back, with how many (sorted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<(HeldKind, usize)>,
    /// The users and attributes that need an administrator: (login, attribute), sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub needs_admin: Vec<(String, String)>,
}

impl Condition {
    /// The condition of a cycle's report, `failure` saying why it failed when the cycle
    /// ended in an error. `None`: nothing for an administrator, or a cycle that was
    /// asked to stop (which says nothing about the trouble either way).
    pub fn of(report: &Report, failure: Option<Failure>) -> Option<Condition> {
        if report.outcome == RunOutcome::Interrupted {
            return None;
        }
        let failure = failure.or(match report.outcome {
            RunOutcome::TimedOut => Some(Failure::Timeout),
            RunOutcome::Partial => Some(Failure::Changes),
            _ => None,
        });
        let mut failed_users: Vec<String> = report
            .changes
            .iter()
            .filter(|c| {
                c.outcome
                    .as_ref()
                    .is_some_and(|o| matches!(o.status, Status::Failed | Status::NotAttempted))
            })
            .map(|c| c.change.user_name.to_ascii_lowercase())
            .collect();
        failed_users.sort();
        failed_users.dedup();
        let mut held: Vec<(HeldKind, usize)> =
            report.held.iter().map(|h| (h.kind, h.count)).collect();
        held.sort_by_key(|&(kind, count)| (kind.label(), count));
        let mut needs_admin: Vec<(String, String)> = report
            .needs_admin
            .iter()
            .map(|n| (n.user_name.to_ascii_lowercase(), n.path.to_string()))
            .collect();
        needs_admin.sort();
        needs_admin.dedup();
        let condition = Condition {
            outcome: report.outcome,
            failure,
            failed_users,
            held,
            needs_admin,
        };
        condition.needs_mail().then_some(condition)
    }

    fn needs_mail(&self) -> bool {
        self.failure.is_some()
            || !self.held.is_empty()
            || !self.needs_admin.is_empty()
            || !self.failed_users.is_empty()
            || !self.outcome.is_success()
    }

    /// The condition in a few words, for a subject line.
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(f) = self.failure {
            parts.push(f.label().to_string());
        } else if !self.outcome.is_success() {
            parts.push(format!("the cycle ended {}", self.outcome.label()));
        }
        for (kind, count) in &self.held {
            parts.push(match kind {
                HeldKind::EmptySource => "the directory returned no users".to_string(),
                HeldKind::ScopeChange => "held back: the directory scope changed".to_string(),
                HeldKind::StalePlan => "held back: the saved plan is stale".to_string(),
                other if *count == 1 => {
                    let label = other.label();
                    format!("held back: 1 {}", label.strip_suffix('s').unwrap_or(label))
                }
                other => format!("held back: {count} {}", other.label()),
            });
        }
        match self.needs_admin.len() {
            0 => {}
            1 => parts.push("1 change needs an administrator".to_string()),
            n => parts.push(format!("{n} changes need an administrator")),
        }
        parts.join("; ")
    }
}

/// What to mail after a cycle, given the condition mailed last and the one now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Nothing new: no mail.
    Nothing,
    /// A new or changed condition: mail the report.
    Alert(Condition),
    /// The condition mailed last has cleared: one "resolved" mail.
    Resolved(Condition),
}

pub fn decide(last: Option<&Condition>, now: Option<&Condition>) -> Decision {
    match (last, now) {
        (_, Some(now)) if last != Some(now) => Decision::Alert(now.clone()),
        (Some(last), None) => Decision::Resolved(last.clone()),
        _ => Decision::Nothing,
    }
}

/// The mail's subject: the host, the cycle's kind and the condition in a few words.
pub fn subject(decision: &Decision, kind: &str, host: &str) -> Option<String> {
    match decision {
        Decision::Nothing => None,
        Decision::Alert(c) => Some(format!("dirsync on {host}: {kind}: {}", c.summary())),
        Decision::Resolved(c) => Some(format!("dirsync on {host}: resolved: {}", c.summary())),
    }
}

/// The mail: the report as HTML, with the text report as the alternative for clients
/// that show no HTML.
pub fn message(
    config: &MailConfig,
    subject: &str,
    intro: &str,
    report: &Report,
) -> Result<Message, MailError> {
    let mut builder = Message::builder()
        .from(config.from.clone())
        .subject(subject);
    for to in &config.to {
        builder = builder.to(to.clone());
    }
    let text = format!("{intro}\n\n{}", render_text(report));
    builder
        .multipart(
            MultiPart::alternative()
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_PLAIN)
                        .body(text),
                )
                .singlepart(
                    SinglePart::builder()
                        .header(ContentType::TEXT_HTML)
                        .body(render_html(report)),
                ),
        )
        .map_err(|e| MailError::Build(e.to_string()))
}

/// Why a mail was not sent. Logged; the mail is tried again at the next cycle.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    #[error("cannot build the mail: {0}")]
    Build(String),
    #[error("mail.ca_file {path}: {reason}")]
    CaFile { path: PathBuf, reason: String },
    #[error("cannot send the mail through {server}: {reason}")]
    Send { server: String, reason: String },
    #[error("cannot read or write {path}: {reason}")]
    Remembered { path: PathBuf, reason: String },
}

/// Sends one mail through the configured server.
pub async fn send(config: &MailConfig, message: Message) -> Result<(), MailError> {
    let server = format!("{}:{}", config.host, config.port);
    let send_err = |reason: String| MailError::Send {
        server: server.clone(),
        reason,
    };
    let tls = match config.tls {
        MailTls::None => Tls::None,
        MailTls::StartTls => Tls::Required(tls_parameters(config)?),
        MailTls::Tls => Tls::Wrapper(tls_parameters(config)?),
    };
    // lettre's "dangerous" builder is the one that takes the TLS mode as given: it is
    // set just below, verified (STARTTLS required, or TLS from the start) unless the
    // config says "none", which it allows only for a server on this host.
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port)
        .tls(tls)
        .timeout(Some(config.timeout))
        .hello_name(ClientId::Domain(hostname()));
    if let Some((user, password)) = &config.credentials {
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    let transport = builder.build();
    // lettre times out each exchange; this bounds the whole conversation.
    let whole = config.timeout.saturating_mul(4);
    match tokio::time::timeout(whole, transport.send(message)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(send_err(e.to_string())),
        Err(_) => Err(send_err(format!(
            "no answer within {} s (mail.timeout_secs × 4)",
            whole.as_secs()
        ))),
    }
}

/// TLS parameters: the server's certificate is verified against the system roots and
/// `mail.ca_file`, and its name against `mail.host`.
fn tls_parameters(config: &MailConfig) -> Result<TlsParameters, MailError> {
    let mut builder = TlsParameters::builder(config.host.clone());
    if let Some(path) = &config.ca_file {
        let ca_err = |reason: String| MailError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(io_reason(&e)))?;
        builder = builder
            .add_root_certificate(Certificate::from_pem(&pem).map_err(|e| ca_err(e.to_string()))?);
    }
    builder.build_rustls().map_err(|e| MailError::Send {
        server: format!("{}:{}", config.host, config.port),
        reason: format!("TLS setup: {e}"),
    })
}

/// This host's name, for the SMTP greeting and the subject.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        })
        .unwrap_or_else(|| "localhost".to_string())
}

/// `<state>.mail.json`: the condition mailed last.
pub fn remembered_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".mail.json");
    PathBuf::from(name)
}

/// What `<state>.mail.json` holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub condition: Condition,
    pub mailed_at: String,
}

/// The file of the condition mailed last, locked while a cycle decides and mails, so
/// a `dirsync sync` and the daemon finishing at once mail a condition once.
pub struct ConditionFile {
    path: PathBuf,
    file: std::fs::File,
}

impl ConditionFile {
    /// Opens (creating, 0600) and locks the file; `None` when another dirsync holds it
    /// (that one mails; this cycle's condition is compared again next cycle).
    pub fn lock(path: &Path) -> Result<Option<ConditionFile>, MailError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |e: std::io::Error| MailError::Remembered {
            path: path.to_path_buf(),
            reason: io_reason(&e),
        };
        let file = std::fs::File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(crate::state::PRIVATE_MODE)
            .open(path)
            .map_err(err)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(ConditionFile {
                path: path.to_path_buf(),
                file,
            })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(err(e)),
        }
    }

    /// The condition mailed last; none when the file is empty or unreadable (then a
    /// condition is mailed again rather than never).
    pub fn read(&mut self) -> Option<Remembered> {
        let mut text = String::new();
        self.file.rewind().ok()?;
        self.file.read_to_string(&mut text).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Remembers `remembered` (or that nothing is pending, with `None`).
    pub fn write(&mut self, remembered: Option<&Remembered>) -> Result<(), MailError> {
        let text = match remembered {
            Some(r) => serde_json::to_string_pretty(r).map_err(|e| MailError::Remembered {
                path: self.path.clone(),
                reason: e.to_string(),
            })?,
            None => String::new(),
        };
        self.file
            .set_len(0)
            .and_then(|()| self.file.rewind())
            .and_then(|()| self.file.write_all(text.as_bytes()))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| MailError::Remembered {
                path: self.path.clone(),
                reason: io_reason(&e),
            })
    }
}

/// After a cycle that records a run: decides and, when there is something new, mails
/// the report and remembers what was mailed. Errors are logged, never returned: mail
/// never fails a cycle.
pub async fn after_cycle(
    config: &MailConfig,
    state_path: &Path,
    report: &Report,
    failure: Option<Failure>,
) {
    if report.outcome == RunOutcome::Interrupted {
        return;
    }
    let path = remembered_path(state_path);
    let mut file = match ConditionFile::lock(&path) {
        Ok(Some(f)) => f,
        Ok(None) => {
            tracing::info!("another dirsync is mailing now; this cycle's condition is compared again next cycle");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "no report mail");
            return;
        }
    };
    let last = file.read();
    let now = Condition::of(report, failure);
    let decision = decide(last.as_ref().map(|r| &r.condition), now.as_ref());
    let Some(subject) = subject(&decision, &report.command, &hostname()) else {
        return;
    };
    let intro = match &decision {
        Decision::Resolved(_) => "Resolved: the condition dirsync mailed before has cleared. This cycle's report follows.",
        _ => "dirsync needs an administrator's attention. This cycle's report follows; the same condition is not mailed again until it changes or clears.",
    };
    let sent = match message(config, &subject, intro, report) {
        Ok(m) => send(config, m).await,
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        tracing::warn!(error = %e, subject = %subject, "the report mail was not sent; it is tried again next cycle");
        return;
    }
    tracing::info!(subject = %subject, to = config.to.len(), "report mailed");
    let remembered = match decision {
        Decision::Alert(condition) => Some(Remembered {
            condition,
            mailed_at: crate::report::now(),
        }),
        _ => None,
    };
    if let Err(e) = file.write(remembered.as_ref()) {
        tracing::warn!(error = %e, "the mailed condition could not be remembered; it may be mailed again");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{Applied, Outcome};
    use crate::mapping::{AttrPath, Value};
    use crate::plan::guard::Held;
    use crate::plan::{Action, Change, NeedsAdmin, Plan};
    use crate::report::{DirectorySummary, PortalSummary};

    fn change(user: &str) -> Change {
        Change {
            action: Action::Update,
            anchor: format!("anchor-{user}"),
            user_name: user.into(),
            dn: None,
            portal_id: Some(format!("id-{user}")),
            version: None,
            reason: None,
            fields: Vec::new(),
            set_active: None,
            baseline: Default::default(),
            from: None,
        }
    }

    fn needs_admin(user: &str, value: &str) -> NeedsAdmin {
        NeedsAdmin {
            anchor: format!("anchor-{user}"),
            user_name: user.into(),
            path: AttrPath::parse("userName").unwrap(),
            old: Some(Value::One(user.into())),
            new: Some(Value::One(value.into())),
            reason: "`userName` is immutable in the portal".into(),
        }
    }

    fn held(kind: HeldKind, count: usize) -> Held {
        Held::new(kind, count, "5 closures".into(), format!("{count} held"))
    }

    fn report(started_at: &str, plan: Plan, applied: Option<Applied>, users: usize) -> Report {
        Report::new(
            "sync",
            started_at.into(),
            DirectorySummary {
                url: "ldaps://ldap.example.com".into(),
                users,
                disabled: 0,
                groups: None,
                read: "full".into(),
                read_reason: None,
                entries_read: users,
                domain_controller: None,
            },
            PortalSummary {
                url: "https://portal.example.com/scim/v2/".into(),
                users,
                managed: users,
                managed_active: users,
                listed: true,
            },
            plan,
            applied,
            None,
        )
    }

    fn tripped(started_at: &str, users: usize, closures: usize) -> Report {
        report(
            started_at,
            Plan {
                changes: vec![change("a@example.com")],
                held: vec![held(HeldKind::Closures, closures)],
                needs_admin: vec![needs_admin("b@example.com", "b2@example.com")],
                ..Plan::default()
            },
            Some(Applied {
                outcomes: vec![Outcome {
                    status: Status::Applied,
                    message: None,
                }],
                ..Applied::default()
            }),
            users,
        )
    }

    #[test]
    fn a_condition_is_the_same_from_cycle_to_cycle_while_the_trouble_is() {
        let first = Condition::of(&tripped("2026-11-30T10:00:00Z", 40, 12), None).unwrap();
        // Another time, other users in scope, another change applied: the same condition.
        let second = Condition::of(&tripped("2026-11-30T10:15:00Z", 41, 12), None).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.outcome, RunOutcome::Held);
        assert_eq!(first.held, vec![(HeldKind::Closures, 12)]);
        assert_eq!(
            first.needs_admin,
            vec![("b@example.com".to_string(), "userName".to_string())]
        );
        assert_eq!(
            first.summary(),
            "held back: 12 closures; 1 change needs an administrator"
        );
        // More closures held back: a changed condition.
        let third = Condition::of(&tripped("2026-11-30T10:30:00Z", 41, 13), None).unwrap();
        assert_ne!(first, third);
    }

    #[test]
    fn failures_count_by_kind_and_failed_users_never_by_message() {
        let mut plan = Plan {
            changes: vec![change("a@example.com"), change("b@example.com")],
            ..Plan::default()
        };
        plan.changes.push(change("c@example.com"));
        let failed = |message: &str| {
            report(
                "2026-11-30T10:00:00Z",
                plan.clone(),
                Some(Applied {
                    outcomes: vec![
                        Outcome {
                            status: Status::Applied,
                            message: None,
                        },
                        Outcome {
                            status: Status::Failed,
                            message: Some(message.into()),
                        },
                        Outcome {
                            status: Status::Rejected,
                            message: None,
                        },
                    ],
                    ..Applied::default()
                }),
                3,
            )
        };
        let one = Condition::of(&failed("503, request id 1"), None).unwrap();
        let two = Condition::of(&failed("503, request id 2"), None).unwrap();
        assert_eq!(one, two);
        assert_eq!(one.outcome, RunOutcome::Partial);
        assert_eq!(one.failure, Some(Failure::Changes));
        assert_eq!(one.failed_users, vec!["b@example.com".to_string()]);

        let ok = report("2026-11-30T10:00:00Z", Plan::default(), None, 3);
        assert_eq!(Condition::of(&ok, None), None, "nothing to mail");
        let down = Condition::of(&ok, Some(Failure::Directory)).unwrap();
        assert_eq!(down.summary(), "the directory could not be read");
    }

    #[test]
    fn a_condition_is_mailed_once_again_when_it_changes_and_once_when_it_clears() {
        let a = Condition::of(&tripped("2026-11-30T10:00:00Z", 40, 12), None);
        let b = Condition::of(&tripped("2026-11-30T10:00:00Z", 40, 13), None);
        assert!(matches!(decide(None, a.as_ref()), Decision::Alert(_)));
        assert_eq!(decide(a.as_ref(), a.as_ref()), Decision::Nothing);
        assert_eq!(
            decide(a.as_ref(), b.as_ref()),
            Decision::Alert(b.clone().unwrap())
        );
        assert_eq!(
            decide(b.as_ref(), None),
            Decision::Resolved(b.clone().unwrap())
        );
        assert_eq!(decide(None, None), Decision::Nothing);
        let subject = subject(&decide(b.as_ref(), None), "sync", "host1").unwrap();
        assert_eq!(
            subject,
            "dirsync on host1: resolved: held back: 13 closures; 1 change needs an administrator"
        );
    }

    #[test]
    fn the_remembered_condition_survives_a_reopen_and_an_empty_file_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = remembered_path(&dir.path().join("state.db"));
        assert!(path.ends_with("state.db.mail.json"));
        let condition = Condition::of(&tripped("2026-11-30T10:00:00Z", 40, 12), None).unwrap();
        {
            let mut f = ConditionFile::lock(&path).unwrap().unwrap();
            assert_eq!(f.read(), None);
            // A second holder (another dirsync) is told to leave it.
            assert!(ConditionFile::lock(&path).unwrap().is_none());
            let r = Remembered {
                condition: condition.clone(),
                mailed_at: "2026-11-30T10:00:01Z".into(),
            };
            f.write(Some(&r)).unwrap();
        }
        let mut f = ConditionFile::lock(&path).unwrap().unwrap();
        assert_eq!(f.read().map(|r| r.condition), Some(condition));
        f.write(None).unwrap();
        assert_eq!(f.read(), None);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}
