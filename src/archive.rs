//! Report files: every cycle that records a run (`sync`, `apply`, the daemon's cycles,
//! standby included) leaves its report in `[reports] dir`, as JSON (for tools and for
//! `dirsync report FILE.json`) and as a self-contained HTML page, named by the cycle's
//! start time and kind: `20261130T231502.123Z-sync.json` and `.html`. `latest.json` and
//! `latest.html` are copies of the newest pair. A dry-run `plan` writes none: it prints.
//!
//! Every file is written to a temporary name in the same directory (mode 0600) and
//! renamed into place, so a reader never sees half a report, and `latest.*` are replaced
//! the same way. They are copies rather than symlinks: a copy opens, attaches to a mail
//! or copies elsewhere like any file, and never dangles once retention removes its
//! original. The directory is created 0700. After each write the oldest reports beyond
//! `keep` cycles, and those older than `max_age_days`, are removed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use time::OffsetDateTime;

use crate::config::ReportsConfig;
use crate::report::{render_html, Report};
use crate::secret::io_reason;

/// The copies of the newest report.
pub const LATEST_JSON: &str = "latest.json";
pub const LATEST_HTML: &str = "latest.html";

/// Temporary files of an interrupted write older than this are removed by the next prune.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// A report could not be written or old ones removed. Logged; it never fails the cycle,
/// whose work is done and recorded in the state already.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("cannot create the reports directory {path} (reports.dir): {reason}")]
    Dir { path: PathBuf, reason: String },
    #[error("cannot write the report {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot list the reports directory {path} to remove old reports: {reason}")]
    List { path: PathBuf, reason: String },
}

/// A saved report could not be read back (`dirsync report FILE`).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {path}: {reason}")]
    Io { path: PathBuf, reason: String },
    #[error("{path} is not a dirsync JSON report: {reason}")]
    NotAReport { path: PathBuf, reason: String },
}

/// Reads a report saved as JSON (a cycle's file, `latest.json`, or `--format json`).
pub fn read(path: &Path) -> Result<Report, ReadError> {
    let text = std::fs::read_to_string(path).map_err(|e| ReadError::Io {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    })?;
    serde_json::from_str(&text).map_err(|e| ReadError::NotAReport {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The files one cycle's report was written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub json: PathBuf,
    pub html: PathBuf,
    /// Older report files retention removed.
    pub removed: Vec<PathBuf>,
}

/// `20261130T231502.123Z`: the file-name form of a cycle's start time (UTC, sortable, no
/// colons). `started_at` is the report's RFC 3339 time; `now` stands in if it is not one.
pub fn stamp(started_at: &str, now: SystemTime) -> String {
    let t = OffsetDateTime::parse(started_at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| OffsetDateTime::from(now))
        .to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The name (without extension) of a cycle's report files: its stamp and kind.
pub fn base_name(report: &Report, now: SystemTime) -> String {
    let kind: String = report
        .command
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    format!("{}-{kind}", stamp(&report.started_at, now))
}

/// The time a report file's name says, when it is one of ours: `<stamp>-<kind>.json|html`.
pub fn parse_name(name: &str) -> Option<(OffsetDateTime, &str)> {
    let stem = name
        .strip_suffix(".json")
        .or_else(|| name.strip_suffix(".html"))?;
    let (stamp, kind) = stem.split_once('-')?;
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let b = stamp.as_bytes();
    if b.len() != 20 || b[8] != b'T' || b[15] != b'.' || b[19] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let s = stamp.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let clock = time::Time::from_hms_milli(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
        u16::try_from(num(16..19)?).ok()?,
    )
    .ok()?;
    Some((date.with_time(clock).assume_utc(), stem))
}

/// Which report files retention removes, from the names in the directory: a cycle's
/// files go together; the newest `keep` cycles stay unless older than `max_age`; files
/// that are not reports (`latest.*`, anything an admin put there) are never touched.
pub fn to_prune(names: &[String], now: SystemTime, keep: usize, max_age: Duration) -> Vec<String> {
    // Cycle (its name without extension) → its time and files; sorted newest first.
    let mut cycles: BTreeMap<&str, (OffsetDateTime, Vec<&String>)> = BTreeMap::new();
    for name in names {
        if let Some((time, stem)) = parse_name(name) {
            cycles
                .entry(stem)
                .or_insert((time, Vec::new()))
                .1
                .push(name);
        }
    }
    let mut by_age: Vec<(OffsetDateTime, &str, Vec<&String>)> = cycles
        .into_iter()
        .map(|(stem, (time, files))| (time, stem, files))
        .collect();
    by_age.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| b.1.cmp(a.1)));
    let oldest_kept = OffsetDateTime::from(now) - max_age;
    let mut out: Vec<String> = by_age
        .into_iter()
        .enumerate()
        .filter(|(i, (time, _, _))| *i >= keep || *time < oldest_kept)
        .flat_map(|(_, (_, _, files))| files.into_iter().cloned())
        .collect();
    out.sort();
    out
}

/// Writes `report` into the reports directory, replaces `latest.*`, then removes what
/// retention says. `now` dates the removal of old reports.
pub fn write(
    config: &ReportsConfig,
    report: &Report,
    now: SystemTime,
) -> Result<Written, ArchiveError> {
    create_dir(&config.dir)?;
    let base = base_name(report, now);
    let json_path = config.dir.join(format!("{base}.json"));
    let html_path = config.dir.join(format!("{base}.html"));
    // The JSON is written as it is made and copied to `latest`, never held whole.
    write_atomic_with(&json_path, |f| {
        let mut out = std::io::BufWriter::new(f);
        report.write_json(&mut out)?;
        out.flush()
    })?;
    write_atomic_with(&config.dir.join(LATEST_JSON), |f| {
        std::io::copy(&mut std::fs::File::open(&json_path)?, f).map(drop)
    })?;
    let html = render_html(report);
    write_atomic(&html_path, html.as_bytes())?;
    write_atomic(&config.dir.join(LATEST_HTML), html.as_bytes())?;
    sync_dir(&config.dir);
    let removed = prune(config, now)?;
    Ok(Written {
        json: json_path,
        html: html_path,
        removed,
    })
}

/// Removes old reports (see [`to_prune`]) and temporary files left by an interrupted
/// write; returns what was removed.
pub fn prune(config: &ReportsConfig, now: SystemTime) -> Result<Vec<PathBuf>, ArchiveError> {
    let list_err = |e: std::io::Error| ArchiveError::List {
        path: config.dir.clone(),
        reason: io_reason(&e),
    };
    let mut names = Vec::new();
    let mut stale = Vec::new();
    for entry in std::fs::read_dir(&config.dir).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if name.starts_with(".tmp-") {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age > STALE_TEMP);
            if old {
                stale.push(name);
            }
        } else {
            names.push(name);
        }
    }
    let mut removed = Vec::new();
    for name in to_prune(&names, now, config.keep, config.max_age)
        .into_iter()
        .chain(stale)
    {
        let path = config.dir.join(&name);
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %io_reason(&e), "cannot remove an old report");
            }
        }
    }
    Ok(removed)
}

/// Creates the directory (and its parents) with mode 0700.
fn create_dir(dir: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| ArchiveError::Dir {
            path: dir.to_path_buf(),
            reason: io_reason(&e),
        })
}

/// Writes `bytes` to a 0600 temporary file beside `path`, flushes it to disk and renames
/// it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// [`write_atomic`], the content written by `write` into the temporary file.
pub fn write_atomic_with(
    path: &Path,
    write: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>,
) -> Result<(), ArchiveError> {
    let err = |e: std::io::Error| ArchiveError::Write {
        path: path.to_path_buf(),
        reason: io_reason(&e),
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".tmp-{name}.{}", std::process::id()));
    let written = crate::state::create_private(&temp)
        .and_then(|mut f| write(&mut f).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&temp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temp);
        return Err(err(e));
    }
    Ok(())
}

/// Flushes the directory's entries (the renames) to disk; best effort.
fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> SystemTime {
        OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
            .unwrap()
            .into()
    }

    #[test]
    fn names_carry_the_start_time_and_kind_and_sort_by_time() {
        let now = at("2030-01-01T00:00:00Z");
        assert_eq!(
            stamp("2026-11-30T23:15:02.123456789Z", now),
            "20261130T231502.123Z"
        );
        assert_eq!(
            stamp("2026-11-30T23:15:02+01:00", now),
            "20261130T221502.000Z"
        );
        assert_eq!(stamp("not a time", now), "20300101T000000.000Z");
        let (t, stem) = parse_name("20261130T231502.123Z-standby.html").unwrap();
        assert_eq!(stem, "20261130T231502.123Z-standby");
        assert_eq!(SystemTime::from(t), at("2026-11-30T23:15:02.123Z"));
        for other in [
            "latest.json",
            "latest.html",
            "20261130T231502.123Z-sync.txt",
            "20261130T231502Z-sync.json",
            "20261330T231502.123Z-sync.json",
            "notes-sync.json",
            "20261130T231502.123Z-.json",
        ] {
            assert_eq!(parse_name(other), None, "{other}");
        }
    }

    fn names(stamps: &[&str]) -> Vec<String> {
        let mut v = vec!["latest.json".to_string(), "latest.html".to_string()];
        for s in stamps {
            v.push(format!("{s}-sync.json"));
            v.push(format!("{s}-sync.html"));
        }
        v.push("README".into());
        v
    }

    #[test]
    fn retention_removes_the_oldest_cycles_beyond_keep_with_both_their_files() {
        let stamps = [
            "20261130T100000.000Z",
            "20261130T090000.000Z",
            "20261130T110000.000Z",
            "20261130T080000.000Z",
        ];
        let now = at("2026-11-30T12:00:00Z");
        let gone = to_prune(&names(&stamps), now, 2, Duration::from_secs(86400));
        assert_eq!(
            gone,
            vec![
                "20261130T080000.000Z-sync.html",
                "20261130T080000.000Z-sync.json",
                "20261130T090000.000Z-sync.html",
                "20261130T090000.000Z-sync.json",
            ]
        );
        // Nothing beyond keep, nothing too old: nothing goes; latest.* and others never.
        assert!(to_prune(&names(&stamps), now, 10, Duration::from_secs(86400)).is_empty());
    }

    #[test]
    fn retention_removes_reports_older_than_max_age_whatever_keep_says() {
        let stamps = ["20261101T000000.000Z", "20261129T000000.000Z"];
        let now = at("2026-11-30T12:00:00Z");
        let gone = to_prune(&names(&stamps), now, 100, Duration::from_secs(7 * 86400));
        assert_eq!(
            gone,
            vec![
                "20261101T000000.000Z-sync.html",
                "20261101T000000.000Z-sync.json"
            ]
        );
    }

    /// A report with something in every part, as a sync that applied some of it.
    fn rich_report(started_at: &str) -> Report {
        use crate::apply::{Applied, Outcome, Status};
        use crate::mapping::{AttrPath, Value};
        use crate::plan::groups::Member;
        use crate::plan::guard::{Held, HeldKind};
        use crate::plan::{
            Action, Change, Conflict, FieldChange, GroupAction, GroupChange, NeedsAdmin, Orphan,
            Plan, Skipped, Why,
        };
        use crate::report::{DirectorySummary, PortalSummary};
        let path = |p: &str| AttrPath::parse(p).unwrap();
        let one = |v: &str| Some(Value::One(v.into()));
        let plan = Plan {
            changes: vec![
                Change {
                    action: Action::Update,
                    anchor: "a-1".into(),
                    user_name: "anna@example.com".into(),
                    dn: Some("uid=anna,ou=people,dc=example,dc=com".into()),
                    portal_id: Some("p1".into()),
                    version: Some("W/\"3\"".into()),
                    reason: None,
                    fields: vec![
                        FieldChange {
                            path: path("emails[type eq \"work\"].value"),
                            old: one("a@old"),
                            new: one("anna@example.com"),
                            why: Some(Why::RevertedPortalEdit),
                            detail: None,
                        },
                        FieldChange {
                            path: path("urn:ietf:params:scim:schemas:extension:faxportal:2.0:User:faxNumbers"),
                            old: None,
                            new: Some(Value::Many(vec!["+461".into(), "+462".into()].into())),
                            why: Some(Why::Initial),
                            detail: Some("via group Fax".into()),
                        },
                    ],
                    set_active: None,
                    baseline: Default::default(),
                    from: None,
                },
                Change {
                    action: Action::Close,
                    anchor: "a-2".into(),
                    user_name: "bo@example.com".into(),
                    dn: None,
                    portal_id: Some("p2".into()),
                    version: None,
                    reason: Some("no longer in the directory scope".into()),
                    fields: Vec::new(),
                    set_active: Some(false),
                    baseline: Default::default(),
                    from: None,
                },
            ],
            skipped: vec![Skipped {
                dn: "uid=x,ou=people,dc=example,dc=com".into(),
                problem: "no mail".into(),
            }],
            needs_admin: vec![NeedsAdmin {
                anchor: "a-3".into(),
                user_name: "cy@example.com".into(),
                path: path("userName"),
                old: one("cy@example.com"),
                new: one("cyd@example.com"),
                reason: "immutable".into(),
            }],
            conflicts: vec![Conflict {
                anchor: "a-4".into(),
                user_name: "di@example.com".into(),
                path: path("phoneNumbers[type eq \"work\"].value"),
                last_synced: one("1"),
                directory: one("2"),
                portal: None,
            }],
            group_changes: vec![GroupChange {
                action: GroupAction::Update,
                name: "Fax".into(),
                anchor: "g-1".into(),
                portal_id: Some("pg1".into()),
                rename: Some(("Fax old".into(), "Fax".into())),
                add: vec![Member {
                    user_name: "anna@example.com".into(),
                    anchor: Some("a-1".into()),
                    portal_id: None,
                    via: None,
                }],
                remove: Vec::new(),
                reason: None,
                take_over: false,
            }],
            in_sync: Vec::new(),
            notes: vec!["a note".into()],
            orphans: vec![Orphan {
                user_name: "old@example.com".into(),
                portal_id: "p9".into(),
                external_id: "x-9".into(),
                adopted: false,
            }],
            held: vec![Held::new(
                HeldKind::AccessRemovals,
                3,
                "2".into(),
                "held".into(),
            )],
        };
        let applied = Applied {
            outcomes: vec![
                Outcome {
                    status: Status::Applied,
                    message: None,
                },
                Outcome {
                    status: Status::Failed,
                    message: Some("503".into()),
                },
            ],
            group_outcomes: vec![Outcome {
                status: Status::Applied,
                message: None,
            }],
            aborted: None,
        };
        Report::new(
            "sync",
            started_at.into(),
            DirectorySummary {
                url: "ldaps://ldap.example.com/".into(),
                users: 4,
                disabled: 1,
                groups: Some(1),
                read: "full".into(),
                read_reason: Some("first read".into()),
                entries_read: 5,
                domain_controller: None,
            },
            PortalSummary {
                url: "https://portal.example.com/scim/v2/".into(),
                users: 5,
                managed: 4,
                managed_active: 4,
                listed: false,
            },
            plan,
            Some(applied),
            None,
        )
    }

    #[test]
    fn a_saved_report_reads_back_as_written() {
        let report = rich_report("2026-11-30T23:15:02.5Z");
        let json = report.to_json();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        std::fs::write(&path, &json).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.to_json(), json);
        assert_eq!(render_html(&back), render_html(&report));
        assert_eq!(
            crate::report::render_text(&back),
            crate::report::render_text(&report)
        );
        std::fs::write(&path, "{\"command\": 1}").unwrap();
        assert!(matches!(read(&path), Err(ReadError::NotAReport { .. })));
    }

    #[test]
    fn writing_keeps_private_files_a_private_directory_and_latest_copies() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().unwrap();
        let config = ReportsConfig {
            dir: root.path().join("var/reports"),
            keep: 2,
            max_age: Duration::from_secs(365 * 86400),
        };
        let now = at("2026-12-01T00:00:00Z");
        let mut written = Vec::new();
        for minute in 0..3 {
            let r = rich_report(&format!("2026-11-30T23:0{minute}:00Z"));
            written.push(write(&config, &r, now).unwrap());
        }
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&config.dir), 0o700);
        let mut names: Vec<String> = std::fs::read_dir(&config.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        // The oldest cycle went (keep = 2), with both its files; no temporary file stays.
        assert_eq!(
            names,
            [
                "20261130T230100.000Z-sync.html",
                "20261130T230100.000Z-sync.json",
                "20261130T230200.000Z-sync.html",
                "20261130T230200.000Z-sync.json",
                "latest.html",
                "latest.json",
            ]
        );
        assert_eq!(
            written[2].removed,
            vec![
                config.dir.join("20261130T230000.000Z-sync.html"),
                config.dir.join("20261130T230000.000Z-sync.json"),
            ]
        );
        for n in &names {
            let p = config.dir.join(n);
            assert_eq!(mode(&p), 0o600, "{n}");
            assert!(std::fs::symlink_metadata(&p).unwrap().file_type().is_file());
        }
        assert_eq!(
            std::fs::read(config.dir.join(LATEST_JSON)).unwrap(),
            std::fs::read(&written[2].json).unwrap()
        );
        assert_eq!(
            std::fs::read(config.dir.join(LATEST_HTML)).unwrap(),
            std::fs::read(&written[2].html).unwrap()
        );
    }
}
