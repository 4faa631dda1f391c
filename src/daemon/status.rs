//! `dirsync status`: what the daemon is doing and what the last cycles did. The daemon
//! publishes its state in `<state>.daemon.json` (pid, schedule, cycle in progress, last
//! outcome); the cycles come from the state database, opened read-only. Nothing here
//! takes a lock, so `status` never gets in the way of a running cycle.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::state::{RunRecord, State, StateError};

/// `<state>.daemon.json`.
pub fn status_path(state: &Path) -> PathBuf {
    let mut name = state.as_os_str().to_owned();
    name.push(".daemon.json");
    PathBuf::from(name)
}

/// What a running daemon publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub started_at: String,
    pub cron: String,
    pub standby: bool,
    /// RFC 3339.
    pub next_run: Option<String>,
    pub cycle_running_since: Option<String>,
    pub last_cycle: Option<LastCycle>,
    /// Set when the daemon stopped cleanly.
    pub stopped_at: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastCycle {
    pub finished_at: String,
    pub outcome: String,
    pub summary: String,
}

impl DaemonStatus {
    pub fn starting(config: &Config) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            started_at: crate::report::now(),
            cron: config.schedule.cron_text.clone(),
            standby: config.schedule.standby,
            next_run: None,
            cycle_running_since: None,
            last_cycle: None,
            stopped_at: None,
        }
    }

    /// systemd's STATUS= line: the last outcome and the next run.
    pub fn line(&self) -> String {
        let last = match (&self.cycle_running_since, &self.last_cycle) {
            (Some(since), _) => format!("cycle running since {since}"),
            (None, Some(l)) => format!("last cycle {}", l.summary),
            (None, None) => "no cycle yet".to_string(),
        };
        let mode = if self.standby { " (standby)" } else { "" };
        match &self.next_run {
            Some(next) => format!("{last}; next {next}{mode}"),
            None => format!("{last}{mode}"),
        }
    }

    /// Writes the file (0600) through a temporary one, so a reader never sees half.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = {
            let mut name = path.as_os_str().to_owned();
            name.push(".tmp");
            PathBuf::from(name)
        };
        let text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        let mut file = crate::state::create_private(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    pub fn read(path: &Path) -> Option<DaemonStatus> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    }

    /// Whether the process that wrote this is alive and did not stop.
    pub fn alive(&self) -> bool {
        self.stopped_at.is_none() && Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

/// What `dirsync status` shows.
#[derive(Debug, Serialize)]
pub struct Status {
    pub state: String,
    /// The running daemon, if one runs.
    pub daemon: Option<DaemonStatus>,
    /// A cycle in progress (the daemon's or a manual sync's), with who runs it.
    pub cycle_in_progress: Option<String>,
    /// When the schedule next fires (the daemon's view, else the config's).
    pub next_run: Option<String>,
    pub standby: bool,
    /// The newest runs, newest first.
    pub runs: Vec<RunRecord>,
    pub runs_recorded: usize,
}

/// Gathers the status for the config's state.
pub fn gather(config: &Config, runs: usize) -> Result<Status, StateError> {
    let daemon = DaemonStatus::read(&status_path(&config.state_path)).filter(DaemonStatus::alive);
    let writer = State::writer_pid(&config.state_path);
    let cycle_in_progress = match (&daemon, writer) {
        (Some(d), _) if d.cycle_running_since.is_some() => Some(format!(
            "the daemon's cycle (pid {}), since {}",
            d.pid,
            d.cycle_running_since.clone().unwrap_or_default()
        )),
        (_, Some(holder)) => Some(format!("a dirsync run ({holder})")),
        _ => None,
    };
    let next_run = match &daemon {
        Some(d) => d.next_run.clone(),
        None => config
            .schedule
            .cron
            .upcoming(chrono::Utc)
            .next()
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
    };
    let (runs, runs_recorded) = match State::open_read_only(&config.state_path)? {
        Some(s) => (s.recent_runs(runs)?, s.run_count()?),
        None => (Vec::new(), 0),
    };
    Ok(Status {
        state: config.state_path.display().to_string(),
        standby: daemon
            .as_ref()
            .map_or(config.schedule.standby, |d| d.standby),
        daemon,
        cycle_in_progress,
        next_run,
        runs,
        runs_recorded,
    })
}

impl Status {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        match &self.daemon {
            Some(d) => out.push_str(&format!(
                "daemon: running (pid {}, since {}), schedule \"{}\"{}\n",
                d.pid,
                d.started_at,
                d.cron,
                if d.standby {
                    ", standby: plans only, never applies"
                } else {
                    ""
                }
            )),
            None => out.push_str("daemon: not running\n"),
        }
        out.push_str(&format!(
            "cycle in progress: {}\n",
            self.cycle_in_progress.as_deref().unwrap_or("none")
        ));
        out.push_str(&format!(
            "next scheduled run: {}\n",
            self.next_run.as_deref().unwrap_or("none")
        ));
        out.push_str(&format!("state: {}\n", self.state));
        if self.runs.is_empty() {
            out.push_str("\nNo cycle recorded yet.\n");
            return out;
        }
        out.push_str(&format!(
            "\nLast {} of {} recorded cycles (newest first):\n",
            self.runs.len(),
            self.runs_recorded
        ));
        for r in &self.runs {
            let read = match (&r.read, &r.read_reason) {
                (Some(k), Some(why)) => format!("{k} read ({why})"),
                (Some(k), None) => format!("{k} read"),
                (None, _) => "no read".to_string(),
            };
            out.push_str(&format!(
                "  {} {} {}: {}; {} ms; {} created, {} adopted, {} updated, {} reactivated, {} closed, {} skipped, {} failed, {} conflicts",
                r.finished_at,
                r.command,
                r.outcome,
                read,
                r.duration_ms,
                r.created,
                r.adopted,
                r.updated,
                r.reactivated,
                r.closed,
                r.skipped,
                r.failed,
                r.conflicts,
            ));
            if r.held > 0 {
                out.push_str(&format!(", {} held back", r.held));
            }
            out.push('\n');
            if let Some(e) = &r.error {
                out.push_str(&format!("      {e}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_file_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = status_path(&dir.path().join("state.db"));
        let s = DaemonStatus {
            pid: std::process::id(),
            started_at: "2026-01-01T00:00:00Z".into(),
            cron: "0 */15 * * * *".into(),
            standby: true,
            next_run: Some("2026-01-01T00:15:00Z".into()),
            cycle_running_since: None,
            last_cycle: Some(LastCycle {
                finished_at: "2026-01-01T00:00:05Z".into(),
                outcome: "ok".into(),
                summary: "ok (full read): 1 created".into(),
            }),
            stopped_at: None,
        };
        s.write(&path).unwrap();
        assert_eq!(DaemonStatus::read(&path), Some(s.clone()));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(s.alive(), "this process");
        assert_eq!(
            s.line(),
            "last cycle ok (full read): 1 created; next 2026-01-01T00:15:00Z (standby)"
        );
        let stopped = DaemonStatus {
            stopped_at: Some("x".into()),
            ..s
        };
        assert!(!stopped.alive());
    }
}
