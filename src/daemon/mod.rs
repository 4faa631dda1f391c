//! `dirsync run`: the long-running service. Cycles start on a cron schedule (and at start,
//! and on SIGUSR1), one at a time, each through [`cycle::run`]; signals arrive as one
//! [`Control`] the loop selects on: SIGHUP reloads the config for the next cycle,
//! SIGTERM/SIGINT stop (in-flight requests finish within `[schedule] stop_grace_secs`,
//! the run is recorded and reported, exit 0). systemd hears READY, STATUS, WATCHDOG and
//! STOPPING (`Type=notify`); `/healthz` and `/metrics` serve when `[health] listen` is set.
//!
//! After each cycle its report is written to `[reports] dir` and, with `[mail]`, mailed
//! when its condition is new, changed or resolved ([`publish`]), in the background.
//!
//! One daemon per state: `<state>.daemon.lock` is held for the daemon's life, so a second
//! `run` refuses with the first one's pid. Between cycles the state's writer lock is free,
//! so an admin's `dirsync sync` works; during a cycle it is refused as always.

mod signals;
pub mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::config::{Config, ConfigError};
use crate::cycle::{self, Context, CycleError, Request, Stop};
use crate::publish;
use crate::report::Report;
use crate::telemetry::{self, CycleFacts, Telemetry};

pub use self::signals::Control;
pub use self::status::DaemonStatus;

/// Why the daemon could not run. Each is fatal at start; nothing was done.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(
        "another dirsync daemon runs with the state {state} ({holder}); this one does not start. \
         `dirsync status` shows it; stop it first (`systemctl stop dirsync`)"
    )]
    AlreadyRunning { state: PathBuf, holder: String },
    #[error("cannot take the daemon lock {path}: {message}")]
    Lock { path: PathBuf, message: String },
    #[error("cannot listen for signals: {0}")]
    Signals(String),
    #[error(transparent)]
    Telemetry(#[from] telemetry::TelemetryError),
}

/// `<state>.daemon.lock`: held by the running daemon.
pub fn daemon_lock_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".daemon.lock");
    PathBuf::from(name)
}

/// Takes the daemon lock, writing the holder (pid, start time) into it.
fn lock_daemon(state: &Path) -> Result<std::fs::File, DaemonError> {
    let path = daemon_lock_path(state);
    let err = |e: std::io::Error| DaemonError::Lock {
        path: path.clone(),
        message: e.to_string(),
    };
    if let Some(dir) = state.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    crate::state::take_lock(&path).map_err(|e| match e {
        crate::state::LockError::Held(holder) => DaemonError::AlreadyRunning {
            state: state.to_path_buf(),
            holder,
        },
        crate::state::LockError::Io(e) => err(e),
    })
}

/// What the loop is doing, published for `dirsync status` and systemd's STATUS line.
struct Published {
    path: PathBuf,
    status: DaemonStatus,
}

impl Published {
    fn write(&self) {
        if let Err(e) = self.status.write(&self.path) {
            warn!(error = %e, "cannot write the daemon status file");
        }
        notify(&[sd_notify::NotifyState::Status(&self.status.line())]);
    }
}

/// A cycle running in its own task.
struct Running {
    handle: JoinHandle<Result<Report, CycleError>>,
    stop: Stop,
    started: Instant,
    /// What the cycle is and when it started, for its report if it fails.
    kind: cycle::Kind,
    started_at: String,
}

/// Runs the daemon until SIGTERM or SIGINT. `config_path` is re-read on SIGHUP.
pub async fn run(config: Config, config_path: PathBuf) -> Result<(), DaemonError> {
    let _daemon_lock = lock_daemon(&config.state_path)?;
    let (tx, mut controls) = mpsc::channel::<Control>(16);
    let signal_task = signals::listen(tx)?;

    let telemetry = Arc::new(Telemetry::new());
    let shared = Arc::new(telemetry::Shared::new(
        Arc::clone(&telemetry),
        config
            .health
            .as_ref()
            .map_or(crate::config::DEFAULT_HEALTH_MAX_AGE, |h| h.max_age),
    ));
    let server_stop = tokio_util::sync::CancellationToken::new();
    let server = match &config.health {
        Some(h) => {
            let listener = telemetry::bind(h.listen).await?;
            info!(listen = %h.listen, "serving /healthz and /metrics");
            let stop = server_stop.clone();
            Some(tokio::spawn(telemetry::serve(
                listener,
                Arc::clone(&shared),
                async move { stop.cancelled().await },
            )))
        }
        None => None,
    };

    let mut config = config;
    let mut raw = read_table(&config_path);
    let mut published = Published {
        path: status::status_path(&config.state_path),
        status: DaemonStatus::starting(&config),
    };
    let watchdog = watchdog_interval();
    notify(&[sd_notify::NotifyState::Ready]);
    info!(
        cron = %config.schedule.cron_text,
        standby = config.schedule.standby,
        watchdog = ?watchdog,
        "dirsync daemon started"
    );

    let mut running: Option<Running> = None;
    // The report mail of the last cycle, while it is being sent (one at a time, in order).
    let mut mailing: Option<JoinHandle<()>> = None;
    let mut start_now = config.schedule.run_at_start;
    let mut next = next_tick(&config);
    published.status.next_run = next.map(format_time);
    published.write();
    let mut watchdog_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let mut stopping = false;

    loop {
        if start_now && running.is_none() && !stopping {
            running = Some(start_cycle(&config, &shared));
            published.status.cycle_running_since = Some(crate::report::now());
            published.write();
        }
        start_now = false;
        let until_tick = until(next, SystemTime::now());
        tokio::select! {
            // A cycle ended.
            ended = async { (&mut running.as_mut()?.handle).await.ok() }, if running.is_some() => {
                let done = running.take();
                let took = done.as_ref().map_or(Duration::ZERO, |r| r.started.elapsed());
                if let (Some(done), Some(result)) = (&done, &ended) {
                    mailing = publish_cycle(&config, done, result, mailing.take());
                }
                finished(ended, took, &shared, &mut published);
                if stopping {
                    break;
                }
            }
            _ = tokio::time::sleep(until_tick), if next.is_some() && !stopping => {
                if running.is_some() {
                    warn!("a scheduled cycle is due while the last one still runs: skipped (cycles never overlap)");
                } else {
                    start_now = true;
                }
                next = next_tick(&config);
                published.status.next_run = next.map(format_time);
                published.write();
            }
            control = controls.recv() => match control {
                Some(Control::RunNow) if !stopping => {
                    if running.is_some() {
                        info!("SIGUSR1: a cycle already runs; no second one is started");
                    } else {
                        info!("SIGUSR1: starting a cycle now");
                        start_now = true;
                    }
                }
                Some(Control::Reload) if !stopping => {
                    reload(&mut config, &mut raw, &config_path, &shared, &mut published);
                    next = next_tick(&config);
                    published.status.next_run = next.map(format_time);
                    published.write();
                }
                Some(Control::Shutdown) | None => {
                    if stopping {
                        continue;
                    }
                    stopping = true;
                    notify(&[sd_notify::NotifyState::Stopping]);
                    match &running {
                        None => break,
                        Some(r) => {
                            info!(
                                grace_secs = config.schedule.stop_grace.as_secs(),
                                "stopping: no new requests; those in flight may finish"
                            );
                            r.stop.soft.cancel();
                            let hard = r.stop.hard.clone();
                            let grace = config.schedule.stop_grace;
                            tokio::spawn(async move {
                                tokio::time::sleep(grace).await;
                                if !hard.is_cancelled() {
                                    warn!("the stop grace period is over: requests still in flight are abandoned");
                                    hard.cancel();
                                }
                            });
                        }
                    }
                }
                Some(_) => {}
            },
            _ = watchdog_tick.tick(), if watchdog.is_some() => {
                notify(&[sd_notify::NotifyState::Watchdog]);
            }
        }
    }
    published.status.cycle_running_since = None;
    published.status.stopped_at = Some(crate::report::now());
    if let Some(mail) = mailing {
        let grace = config.schedule.stop_grace;
        if tokio::time::timeout(grace, mail).await.is_err() {
            warn!("stopping: the report mail was not sent within the stop grace period; it is tried again at the next start");
        }
    }
    published.write();
    server_stop.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    signal_task.close();
    info!("dirsync daemon stopped");
    Ok(())
}

/// Starts one cycle in its own task, with the config as it is now.
fn start_cycle(config: &Config, shared: &Arc<telemetry::Shared>) -> Running {
    let kind = if config.schedule.standby {
        cycle::Kind::Standby
    } else {
        cycle::Kind::Sync
    };
    let stop = Stop::default();
    let context = Context {
        stop: stop.clone(),
        telemetry: Some(Arc::clone(shared.telemetry())),
    };
    let config = config.clone();
    let handle = tokio::spawn(async move {
        let request = if config.schedule.standby {
            Request::Standby
        } else {
            Request::Sync
        };
        cycle::run(&config, request, &cycle::Options::default(), &context).await
    });
    Running {
        handle,
        stop,
        started: Instant::now(),
        kind,
        started_at: crate::report::now(),
    }
}

/// After a cycle: its report to `[reports] dir`, now, and with `[mail]` its mail, in a
/// task of its own after the previous cycle's (so the loop keeps answering signals and
/// the watchdog while a mail server is slow). Returns that task.
fn publish_cycle(
    config: &Config,
    done: &Running,
    result: &Result<Report, CycleError>,
    previous: Option<JoinHandle<()>>,
) -> Option<JoinHandle<()>> {
    let (report, failure) = publish::report_of(config, done.kind, &done.started_at, result);
    publish::archive(config, &report);
    if config.mail.is_none() {
        return previous;
    }
    let report = report.into_owned();
    let config = config.clone();
    Some(tokio::spawn(async move {
        if let Some(p) = previous {
            let _ = p.await;
        }
        publish::mail(&config, &report, failure).await;
    }))
}

/// After a cycle: metrics, health, the status file and systemd's STATUS line.
fn finished(
    ended: Option<Result<Report, CycleError>>,
    took: Duration,
    shared: &telemetry::Shared,
    published: &mut Published,
) {
    let now = SystemTime::now();
    let (facts, reason, line) = match ended {
        Some(Ok(report)) => {
            let reason = telemetry::report_reason(&report);
            (
                CycleFacts::from_report(&report, took, now),
                reason,
                summary(&report),
            )
        }
        Some(Err(e)) => {
            let facts = match e {
                CycleError::Interrupted => CycleFacts::interrupted(took, now),
                _ => CycleFacts::failed(took, now),
            };
            (facts, e.to_string(), format!("failed: {e}"))
        }
        None => {
            error!("the cycle task ended abnormally");
            (
                CycleFacts::failed(took, now),
                "the cycle task ended abnormally".to_string(),
                "failed: the cycle task ended abnormally".to_string(),
            )
        }
    };
    shared.record_cycle(&facts, &reason);
    if facts.outcome == telemetry::Outcome::Failed {
        error!(error = %reason, "cycle failed");
    }
    published.status.cycle_running_since = None;
    published.status.last_cycle = Some(status::LastCycle {
        finished_at: crate::report::now(),
        outcome: facts.outcome.label().to_string(),
        summary: line,
    });
    published.write();
}

/// One line for the status file and systemd: outcome and counts.
fn summary(report: &Report) -> String {
    let c = |k: &str| report.counts.get(k).copied().unwrap_or(0);
    let mut line = format!(
        "{} ({} read): {} created, {} updated, {} closed, {} reactivated, {} failed",
        report.outcome.label(),
        report.directory.read,
        c("create"),
        c("update"),
        c("close"),
        c("reactivate"),
        c("failed") + c("rejected"),
    );
    let held: usize = report.held.iter().map(|h| h.count).sum();
    if held > 0 {
        line.push_str(&format!(", {held} held back"));
    }
    line
}

/// SIGHUP: a valid config applies from the next cycle; an invalid one is logged with the
/// message `check` gives and the running one stays.
fn reload(
    config: &mut Config,
    raw: &mut toml::Table,
    path: &Path,
    shared: &telemetry::Shared,
    published: &mut Published,
) {
    match Config::load(path) {
        Ok(new) => {
            let now = read_table(path);
            let mut changed = Vec::new();
            diff_tables("", raw, &now, &mut changed);
            *raw = now;
            for w in &new.warnings {
                warn!("{w}");
            }
            if new.state_path != config.state_path {
                warn!("SIGHUP: state.path changed; a running daemon keeps its state, restart it to move");
            }
            let state_path = config.state_path.clone();
            *config = new;
            config.state_path = state_path;
            if let Some(h) = &config.health {
                shared.set_max_age(h.max_age);
            }
            published.status.cron = config.schedule.cron_text.clone();
            published.status.standby = config.schedule.standby;
            info!(
                changed = %if changed.is_empty() { "nothing".to_string() } else { changed.join(", ") },
                "SIGHUP: config reloaded; it applies from the next cycle"
            );
        }
        Err(e) => log_config_error(&e),
    }
}

fn log_config_error(e: &ConfigError) {
    error!("SIGHUP: the config was not reloaded, the running one stays: {e}");
}

/// The config file as a TOML table, to tell which keys a reload changed (names only,
/// never values: some are secrets' sources).
fn read_table(path: &Path) -> toml::Table {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_default()
}

fn diff_tables(prefix: &str, a: &toml::Table, b: &toml::Table, out: &mut Vec<String>) {
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    for name in names {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        match (a.get(name), b.get(name)) {
            (Some(toml::Value::Table(x)), Some(toml::Value::Table(y))) => {
                diff_tables(&key, x, y, out)
            }
            (x, y) if x != y => out.push(key),
            _ => {}
        }
    }
}

/// The next time the schedule fires, from now.
fn next_tick(config: &Config) -> Option<SystemTime> {
    let next = config.schedule.cron.upcoming(chrono::Utc).next()?;
    let secs = u64::try_from(next.timestamp()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// How long the loop sleeps before the tick `next`. A tick that fell due while the loop
/// handled something else (a cycle that ended just after it, a signal) fires at once, not
/// never: a time already past is no wait at all.
fn until(next: Option<SystemTime>, now: SystemTime) -> Duration {
    match next {
        Some(next) => next.duration_since(now).unwrap_or(Duration::ZERO),
        // No tick to wait for: the branch is off; the value is never slept.
        None => Duration::from_secs(3600),
    }
}

fn format_time(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Half of systemd's `WatchdogSec=`, when the service has one.
fn watchdog_interval() -> Option<Duration> {
    let mut usec = 0;
    sd_notify::watchdog_enabled(false, &mut usec).then(|| Duration::from_micros(usec / 2))
}

/// Tells systemd, when started by it (`NOTIFY_SOCKET`); a no-op otherwise.
fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_that_fell_due_while_the_loop_was_busy_fires_at_once() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            until(Some(now - Duration::from_millis(300)), now),
            Duration::ZERO
        );
        assert_eq!(until(Some(now), now), Duration::ZERO);
        assert_eq!(
            until(Some(now + Duration::from_secs(2)), now),
            Duration::from_secs(2)
        );
    }
}
