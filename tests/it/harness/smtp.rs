//! `aiosmtpd` (PyPI) as the mail server reports are sent to: SMTP on a free loopback
//! port (plain, or requiring STARTTLS with a certificate from a throwaway CA), every
//! message it receives written to a maildir the test reads.

use super::{
    find_tool, free_port, log_stdio, log_tail, port_was_taken, Proc, POLL_INTERVAL, PORT_ATTEMPTS,
    STARTUP_TIMEOUT,
};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const INSTALL_HINT: &str =
    "target/venv/bin/pip install aiosmtpd (scripts/install-test-deps does it)";

/// One mail as received: the raw message.
#[derive(Clone, Debug)]
pub struct Mail {
    pub raw: String,
}

impl Mail {
    /// A header's value (the first), unfolded.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let head = head.split("\n\n").next().unwrap_or_default();
        let mut value: Option<String> = None;
        for line in head.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(v) = value.as_mut() {
                if line.starts_with([' ', '\t']) {
                    v.push_str(line);
                    continue;
                }
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case(name) {
                    value = Some(v.trim().to_string());
                }
            }
        }
        value
    }

    pub fn subject(&self) -> String {
        self.header("Subject").unwrap_or_default()
    }
}

/// A running aiosmtpd. Killed on `Drop`.
pub struct SmtpSink {
    pub host: String,
    pub port: u16,
    /// The CA that signed the server's certificate, when it speaks STARTTLS.
    pub ca: Option<PathBuf>,
    maildir: PathBuf,
    proc: Proc,
    // Last: dropped after the server is killed.
    dir: TempDir,
}

fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/venv/bin/python");
    find_tool("python3", &[venv], INSTALL_HINT)
}

impl SmtpSink {
    /// Starts aiosmtpd with its Mailbox handler on a free loopback port and waits until it
    /// greets (220).
    #[track_caller]
    pub fn start() -> SmtpSink {
        SmtpSink::start_with(false)
    }

    /// [`SmtpSink::start`], requiring STARTTLS before any mail, with a certificate for
    /// 127.0.0.1 and localhost signed by a throwaway CA ([`SmtpSink::ca`]).
    #[track_caller]
    pub fn start_starttls() -> SmtpSink {
        SmtpSink::start_with(true)
    }

    #[track_caller]
    fn start_with(starttls: bool) -> SmtpSink {
        let python = python();
        for attempt in 1..=PORT_ATTEMPTS {
            let port = free_port();
            let dir = tempfile::Builder::new()
                .prefix("dirsync-smtp-")
                .tempdir()
                .unwrap_or_else(|e| panic!("cannot create a temporary directory: {e}"));
            let maildir = dir.path().join("maildir");
            let log = dir.path().join("aiosmtpd.log");
            let (out, err) = log_stdio(&log);
            let mut command = Command::new(&python);
            command.args(["-m", "aiosmtpd"]);
            let ca = starttls.then(|| {
                let tls = dir.path().join("tls");
                let ca = super::slapd::make_server_tls(&tls);
                command
                    .arg("--tlscert")
                    .arg(tls.join("server.crt"))
                    .arg("--tlskey")
                    .arg(tls.join("server.key"));
                ca
            });
            let child = command
                .args(["-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&maildir)
                .env("PYTHONUNBUFFERED", "1")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start aiosmtpd ({}): {e}", python.display()));
            let mut sink = SmtpSink {
                host: "127.0.0.1".into(),
                port,
                ca,
                maildir,
                proc: Proc::new(child),
                dir,
            };
            let started = Instant::now();
            loop {
                if let Some(status) = sink.proc.exited() {
                    let tail = log_tail(&log, 4000);
                    if port_was_taken(&tail) && attempt < PORT_ATTEMPTS {
                        break;
                    }
                    panic!("aiosmtpd exited during startup ({status}); is it installed? {INSTALL_HINT}\n{tail}");
                }
                if sink.greets() {
                    return sink;
                }
                if started.elapsed() > STARTUP_TIMEOUT {
                    panic!(
                        "aiosmtpd on port {port} did not greet within {STARTUP_TIMEOUT:?}:\n{}",
                        log_tail(&log, 4000)
                    );
                }
                std::thread::sleep(POLL_INTERVAL);
            }
        }
        panic!("aiosmtpd: no free port after {PORT_ATTEMPTS} attempts");
    }

    fn greets(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.host.as_str(), self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut buf = [0u8; 3];
        s.read_exact(&mut buf).is_ok() && &buf == b"220"
    }

    /// The mails received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let mut files: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for e in entries.flatten() {
                let modified = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .unwrap_or(std::time::UNIX_EPOCH);
                files.push((modified, e.path()));
            }
        }
        files.sort();
        files
            .into_iter()
            .map(|(_, p)| Mail {
                raw: String::from_utf8_lossy(&std::fs::read(&p).unwrap_or_default()).into_owned(),
            })
            .collect()
    }

    /// The `[mail]` table that sends to this sink: plain SMTP, or STARTTLS trusting
    /// its CA.
    pub fn config(&self) -> String {
        let tls = match &self.ca {
            None => "tls = \"none\"\n".to_string(),
            Some(ca) => format!("tls = \"starttls\"\nca_file = \"{}\"\n", ca.display()),
        };
        format!(
            "[mail]\nhost = \"{}\"\nport = {}\n{tls}from = \"dirsync <dirsync@example.com>\"\nto = [\"admins@example.com\"]\ntimeout_secs = 10\n",
            self.host, self.port
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
