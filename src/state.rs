//! The daemon's own memory: which portal users it manages, and a record of each run.
//! An embedded SQLite database (inspect it with the `sqlite3` CLI). A row is written only
//! after the portal confirmed the change it records.
//!
//! One writer at a time: [`State::open`] takes an exclusive lock on `<path>.lock` and holds
//! it while the `State` lives, so a second `sync` or `apply` against the same state (an
//! admin's manual run while the timer's run is applying) refuses to start instead of
//! racing the first one into double creates. The kernel drops the lock when the process
//! ends, however it ends: a `kill -9` leaves no stale lock behind. Dry runs open the
//! database read-only and take no lock.

use std::collections::{HashMap, HashSet};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::mapping::{AttrPath, Value};
use crate::plan::{Baseline, KnownGroup};
use crate::report::{ApplyPhase, DirectoryRead, Phases, PlanPhase, PortalRead, RecordPhase};

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    // 1: managed users and runs.
    "CREATE TABLE managed_user (
         anchor     TEXT PRIMARY KEY COLLATE NOCASE, -- directory anchor = portal externalId
         portal_id  TEXT NOT NULL,
         user_name  TEXT NOT NULL,
         linked_at  TEXT NOT NULL
     );
     CREATE TABLE run (
         id          INTEGER PRIMARY KEY,
         started_at  TEXT NOT NULL,
         finished_at TEXT NOT NULL,
         command     TEXT NOT NULL,
         outcome     TEXT NOT NULL,
         created     INTEGER NOT NULL,
         updated     INTEGER NOT NULL,
         reactivated INTEGER NOT NULL,
         closed      INTEGER NOT NULL,
         skipped     INTEGER NOT NULL,
         failed      INTEGER NOT NULL
     );",
    // 2: the last-synced value of each directory- or merge-owned attribute, for the
    //    three-way rule. `value` is JSON (a string or a list of strings); NULL means the
    //    attribute was synced as absent. A missing row means never synced.
    "CREATE TABLE synced_value (
         anchor TEXT NOT NULL COLLATE NOCASE,
         path   TEXT NOT NULL,
         value  TEXT,
         PRIMARY KEY (anchor, path)
     );
     ALTER TABLE run ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;
          ALTER TABLE run ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;",
    // 3: portal groups mirrored from directory groups; `created` says dirsync made it
    //    (only those are ever deleted).
    "CREATE TABLE managed_group (
         anchor     TEXT PRIMARY KEY COLLATE NOCASE,
         portal_id  TEXT NOT NULL,
         name       TEXT NOT NULL,
                  created    INTEGER NOT NULL,
         linked_at  TEXT NOT NULL
     );",
    // 4: small facts about the last accepted sync, e.g. the directory scope it ran with.
    "CREATE TABLE meta (
         key   TEXT PRIMARY KEY,
         value TEXT NOT NULL
     );",
    // 5: what `dirsync status` and the metrics tell about each cycle: the read kind and
    //    why, changes held back, the error of a failed cycle, the duration; `command` is
    //    sync, apply or standby. Runs are pruned to [state] keep_runs.
    "ALTER TABLE run ADD COLUMN read TEXT;
     ALTER TABLE run ADD COLUMN read_reason TEXT;
     ALTER TABLE run ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE run ADD COLUMN error TEXT;
     ALTER TABLE run ADD COLUMN duration_ms INTEGER NOT NULL DEFAULT 0;
     ALTER TABLE run ADD COLUMN entries_read INTEGER NOT NULL DEFAULT 0;",
    // 6: how long each phase of the cycle took (ms) and what it counted; NULL for runs
    //    that failed before planning, runs from before this migration, and the phases a
    //    run did not have (apply in a held-back sync). The directory read counts
    //    `entries_read`.
    "ALTER TABLE run ADD COLUMN directory_read_ms INTEGER;
     ALTER TABLE run ADD COLUMN portal_read_ms INTEGER;
     ALTER TABLE run ADD COLUMN portal_users INTEGER;
     ALTER TABLE run ADD COLUMN portal_groups INTEGER;
     ALTER TABLE run ADD COLUMN portal_fetched INTEGER;
     ALTER TABLE run ADD COLUMN portal_requests INTEGER;
     ALTER TABLE run ADD COLUMN plan_ms INTEGER;
     ALTER TABLE run ADD COLUMN planned_changes INTEGER;
     ALTER TABLE run ADD COLUMN apply_ms INTEGER;
     ALTER TABLE run ADD COLUMN apply_requests INTEGER;
     ALTER TABLE run ADD COLUMN applied_changes INTEGER;
     ALTER TABLE run ADD COLUMN record_ms INTEGER;
     ALTER TABLE run ADD COLUMN record_users INTEGER;",
    // 7: every new link looks up the anchors already linked to its portal user (one
    //    portal user has one anchor); without an index that is a scan of the table per
    //    create, quadratic over an initial provisioning.
    "CREATE INDEX managed_user_portal_id ON managed_user (portal_id);",
    // 8: a user's last-synced values in the user's own row: `synced` is a JSON object,
    //    path → a string, a list of strings, or null (synced as absent); a path not in it
    //    was never synced. One row to read per user at every cycle instead of one per
    //    attribute (1.1 million rows, 188 MB of table and index, at 100,000 users). A
    //    `synced_value` row that is not JSON was unreadable, and is left out.
    "ALTER TABLE managed_user ADD COLUMN synced TEXT NOT NULL DEFAULT '{}';
     UPDATE managed_user SET synced = (
         SELECT json_group_object(s.path, json(s.value)) FROM synced_value s
         WHERE s.anchor = managed_user.anchor AND (s.value IS NULL OR json_valid(s.value)));
     DROP TABLE synced_value;",
];

/// The migration that moved the last-synced values into `managed_user`: a database that
/// had its rows is vacuumed once after it, to give their space back.
const PER_USER_SYNCED: usize = 8;

/// A state store problem. Fatal for the cycle: without its memory the daemon could not
/// tell its users from hand-made ones.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error(
        "state database {path} has schema version {found}, but this dirsync knows only up to {supported}: \
         it was written by a newer dirsync; upgrade dirsync or restore a backup"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "state database {path} is in use by another dirsync ({holder}); this run changed \
         nothing. Let that run finish (or stop it) and try again; `systemctl status dirsync` \
         shows whether the service is running"
    )]
    Busy { path: PathBuf, holder: String },
    #[error(
        "state database {path} is damaged ({detail}). Two ways out: restore it from a backup \
         (stop dirsync first), or move it away so that the next sync starts a new one and \
         re-adopts the portal users by their externalId (nothing in the portal is lost)"
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "state database {path} has schema version {found}, older than this dirsync's \
         {supported}: run `dirsync sync` once to upgrade it (a dry run never writes)"
    )]
    OlderSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("state database: {}", sql_message(.0))]
    Sql(#[from] rusqlite::Error),
    /// The thread that records confirmed changes during apply could not start or
    /// stopped; fatal for the cycle like any other state failure.
    #[error("state database: the thread that writes it {0}")]
    Writer(String),
    /// A document streamed into the database could not be written whole.
    #[error("state database: {0}")]
    Io(String),
}

/// An SQLite error in words; a damaged file says what to do about it.
fn sql_message(e: &rusqlite::Error) -> String {
    if is_corrupt(e) {
        format!(
            "{e}: the file is damaged; restore it from a backup, or move it away so that the \
             next sync re-adopts the portal users by their externalId"
        )
    } else {
        e.to_string()
    }
}

fn is_corrupt(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
    )
}

/// Files dirsync writes hold personal data: readable and writable by dirsync alone,
/// whatever the umask says.
pub const PRIVATE_MODE: u32 = 0o600;

/// Creates `path` for writing with mode 0600 (or truncates it and makes it 0600).
pub fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(PRIVATE_MODE)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_MODE))?;
    Ok(file)
}

/// Makes an existing file 0600; a missing one is fine.
fn make_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::set_permissions(path, std::fs::Permissions::from_mode(PRIVATE_MODE)) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// `<path><suffix>`, e.g. the WAL file `state.db-wal`.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// One finished run, as recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunRecord {
    pub started_at: String,
    pub finished_at: String,
    /// `sync`, `apply` or `standby`.
    pub command: String,
    /// `ok`, `held`, `partial`, `failed`, `interrupted` or `timed_out`.
    pub outcome: String,
    /// `full` or `delta`, when the directory was read.
    pub read: Option<String>,
    pub read_reason: Option<String>,
    pub entries_read: usize,
    pub created: usize,
    pub adopted: usize,
    pub updated: usize,
    pub reactivated: usize,
    pub closed: usize,
    pub skipped: usize,
    pub failed: usize,
    pub conflicts: usize,
    /// Changes a guard held back.
    pub held: usize,
    /// Why the cycle failed or stopped early.
    pub error: Option<String>,
    pub duration_ms: u64,
    /// How long each phase took and what it counted; `None` for a run that failed
    /// before planning (or was recorded by a dirsync without phase timings).
    pub phases: Option<Phases>,
}

pub struct State {
    conn: Connection,
    /// The writer's lock (`<path>.lock`), held while this lives; `None` when read-only.
    _lock: Option<File>,
}

/// `<path>.lock`, beside the database.
pub fn lock_path(path: &Path) -> PathBuf {
    with_suffix(path, ".lock")
}

/// Takes the single-writer lock for the database at `path`, and writes who holds it (pid
/// and start time) into the lock file for the next one to read.
fn lock_writer(path: &Path) -> Result<File, StateError> {
    let lock_path = lock_path(path);
    take_lock(&lock_path).map_err(|e| match e {
        LockError::Held(holder) => StateError::Busy {
            path: path.to_path_buf(),
            holder,
        },
        LockError::Io(e) => StateError::Open {
            path: path.to_path_buf(),
            message: format!("cannot open the lock file {}: {e}", lock_path.display()),
        },
    })
}

/// Why an exclusive lock file could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it: who (as it wrote into the file), or "holder unknown".
    Held(String),
    Io(std::io::Error),
}

/// Takes an exclusive lock on `lock_path` (created 0600) for as long as the returned file
/// lives, and writes who holds it (pid and start time) into it for the next one to read.
/// The kernel drops the lock when the process ends, however it ends. One lock of this
/// kind guards the state's writer, another the daemon.
pub fn take_lock(lock_path: &Path) -> Result<File, LockError> {
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(PRIVATE_MODE)
            .open(lock_path)
            .map_err(LockError::Io)?
    };
    make_private(lock_path).map_err(LockError::Io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LockError::Held(if holder.is_empty() {
                "holder unknown".to_owned()
            } else {
                holder.to_owned()
            }));
        }
        Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
    }
    let holder = format!("pid {}, since {}", std::process::id(), crate::report::now());
    file.set_len(0)
        .and_then(|()| file.rewind())
        .and_then(|()| file.write_all(holder.as_bytes()))
        .and_then(|()| file.flush())
        .map_err(LockError::Io)?;
    Ok(file)
}

impl State {
    /// Opens (creating if needed) and migrates the database, as its one writer (see the
    /// module docs); [`StateError::Busy`] when another process is writing. A new database
    /// is built beside the path and renamed into place once migrated, so a reader never
    /// sees one half made. The database and its WAL, SHM and lock files are made 0600.
    pub fn open(path: &Path) -> Result<State, StateError> {
        let open_err = |message: String| StateError::Open {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lock = lock_writer(path)?;
        if !path.exists() {
            Self::create(path)?;
        }
        let conn = Connection::open(path).map_err(|e| corrupt_or(path, e))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| corrupt_or(path, e))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        for suffix in ["", "-wal", "-shm"] {
            make_private(&with_suffix(path, suffix))
                .map_err(|e| open_err(format!("cannot make it private (chmod 600): {e}")))?;
        }
        let mut state = State {
            conn,
            _lock: Some(lock),
        };
        state.check_intact(path)?;
        state.migrate(path)?;
        Ok(state)
    }

    /// Builds a new, migrated database at `<path>.new` (0600) and renames it to `path`.
    fn create(path: &Path) -> Result<(), StateError> {
        let open_err = |message: String| StateError::Open {
            path: path.to_path_buf(),
            message,
        };
        let fresh = with_suffix(path, ".new");
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let _ = std::fs::remove_file(with_suffix(&fresh, suffix));
        }
        create_private(&fresh).map_err(|e| open_err(format!("cannot create it: {e}")))?;
        {
            let conn = Connection::open(&fresh)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            let mut state = State { conn, _lock: None };
            state.migrate(path)?;
            // Closing checkpoints the WAL into the file and removes it.
        }
        std::fs::rename(&fresh, path)
            .map_err(|e| open_err(format!("cannot move the new database into place: {e}")))?;
        Ok(())
    }

    /// Opens an existing database without writing to it (for dry runs); `None` when there
    /// is none yet (the first sync has not finished creating it).
    pub fn open_read_only(path: &Path) -> Result<Option<State>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| corrupt_or(path, e))?;
        let state = State { conn, _lock: None };
        state.check_intact(path)?;
        let found = state.check_version(path)?;
        let supported = MIGRATIONS.len() as i64;
        if found < supported {
            return Err(StateError::OlderSchema {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        Ok(Some(state))
    }

    /// Fails with [`StateError::Corrupt`] when SQLite's quick check finds the file damaged.
    fn check_intact(&self, path: &Path) -> Result<(), StateError> {
        let verdict: Result<String, _> = self
            .conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0));
        match verdict {
            Ok(v) if v == "ok" => Ok(()),
            Ok(v) => Err(StateError::Corrupt {
                path: path.to_path_buf(),
                detail: v,
            }),
            Err(e) => Err(corrupt_or(path, e)),
        }
    }

    fn check_version(&self, path: &Path) -> Result<i64, StateError> {
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?;
        let supported = MIGRATIONS.len() as i64;
        if found > supported {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found,
                supported,
            });
        }
        Ok(found)
    }

    fn migrate(&mut self, path: &Path) -> Result<(), StateError> {
        let found = self.check_version(path)?;
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as i64)?;
            tx.commit()?;
        }
        // The per-attribute rows' pages are free now; the file keeps them until vacuumed.
        if (2..PER_USER_SYNCED as i64).contains(&found) {
            self.conn.execute_batch("VACUUM")?;
        }
        Ok(())
    }

    /// Anchors (lowercased) of the users the daemon manages.
    pub fn managed(&self) -> Result<HashSet<String>, StateError> {
        let mut stmt = self.conn.prepare("SELECT anchor FROM managed_user")?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = HashSet::new();
        for r in rows {
            out.insert(r?.to_ascii_lowercase());
        }
        Ok(out)
    }

    /// Every managed user (anchor lowercased) with its last-synced values.
    pub fn baselines(&self) -> Result<HashMap<String, Baseline>, StateError> {
        Ok(self.managed_users()?.0)
    }

    /// Every managed user (anchor lowercased) with its last-synced values, and with its
    /// portal id: [`State::baselines`] and [`State::portal_ids`] in one read of the table.
    pub fn managed_users(&self) -> Result<ManagedUsers, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT anchor, portal_id, synced FROM managed_user")?;
        let mut rows = stmt.query([])?;
        // Each path parsed once, and users with the same paths share one list of them.
        let mut paths: HashMap<String, AttrPath> = HashMap::new();
        let mut template: Option<Baseline> = None;
        let (mut out, mut ids) = (HashMap::new(), HashMap::new());
        // The rows' text is read where SQLite holds it: only what is kept is copied.
        fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StateError> {
            let value = r.get_ref(i)?;
            Ok(value.as_str().map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(i, value.data_type(), Box::new(e))
            })?)
        }
        while let Some(row) = rows.next()? {
            let anchor = text(row, 0)?.to_ascii_lowercase();
            ids.insert(anchor.clone(), text(row, 1)?.to_string());
            let b: Baseline = synced_entries(text(row, 2)?, &mut paths)
                .into_iter()
                .collect();
            let b = match &template {
                Some(t) => b.with_paths_of(t),
                None => b,
            };
            if template.as_ref().is_none_or(|t| !b.shares_paths(t)) {
                template = Some(b.clone());
            }
            out.insert(anchor, b);
        }
        Ok((out, ids))
    }

    /// Records, in one transaction, that `anchor` is the portal user `portal_id` and that
    /// its attributes were last synced as `baseline`. Call only after the portal confirmed.
    pub fn record(
        &mut self,
        anchor: &str,
        portal_id: &str,
        user_name: &str,
        baseline: &Baseline,
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        record_in(&tx, anchor, portal_id, user_name, baseline)?;
        tx.commit()?;
        Ok(())
    }

    /// Records several confirmed links (anchor, portal id, user name, baseline) in one
    /// transaction: one commit, and one fsync, for all of them.
    pub fn record_links<'a>(
        &mut self,
        links: impl IntoIterator<Item = (&'a str, &'a str, &'a str, &'a Baseline)>,
    ) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        for (anchor, portal_id, user_name, baseline) in links {
            record_in(&tx, anchor, portal_id, user_name, baseline)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Drops the link of `anchor` and its last-synced values (its portal user is gone).
    pub fn forget_user(&mut self, anchor: &str) -> Result<(), StateError> {
        self.conn.execute(
            "DELETE FROM managed_user WHERE anchor = ?1",
            params![anchor],
        )?;
        Ok(())
    }

    pub fn meta(&self, key: &str) -> Result<Option<String>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// A `meta` row as bytes, whether it was written as text or streamed as a blob
    /// ([`Document`]).
    pub fn meta_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.meta_with(key, <[u8]>::to_vec)
    }

    /// What `read` makes of the bytes of `meta` row `key` (text or blob), read in place:
    /// a document as large as the directory snapshot is not copied before it is parsed.
    pub fn meta_with<T>(
        &self,
        key: &str,
        read: impl FnOnce(&[u8]) -> T,
    ) -> Result<Option<T>, StateError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", params![key], |r| {
                Ok(read(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => t,
                    _ => &[],
                }))
            })
            .optional()?)
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )?;
        Ok(())
    }

    /// Portal ids of the managed users, by lowercased anchor.
    pub fn portal_ids(&self) -> Result<HashMap<String, String>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT anchor, portal_id FROM managed_user")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = HashMap::new();
        for row in rows {
            let (a, id) = row?;
            out.insert(a.to_ascii_lowercase(), id);
        }
        Ok(out)
    }

    /// The mirrored portal groups, by lowercased directory anchor.
    pub fn groups(&self) -> Result<HashMap<String, KnownGroup>, StateError> {
        let mut stmt = self
            .conn
            .prepare("SELECT anchor, portal_id, created FROM managed_group")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })?;
        let mut out = HashMap::new();
        for row in rows {
            let (anchor, portal_id, created) = row?;
            out.insert(
                anchor.to_ascii_lowercase(),
                KnownGroup { portal_id, created },
            );
        }
        Ok(out)
    }

    /// Records a mirrored portal group (after the portal confirmed it).
    pub fn record_group(
        &mut self,
        anchor: &str,
        portal_id: &str,
        name: &str,
        created: bool,
    ) -> Result<(), StateError> {
        self.conn.execute(
            "INSERT INTO managed_group (anchor, portal_id, name, created, linked_at) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(anchor) DO UPDATE SET portal_id = excluded.portal_id, name = excluded.name",
            params![anchor, portal_id, name, created, crate::report::now()],
        )?;
        Ok(())
    }

    pub fn forget_group(&mut self, anchor: &str) -> Result<(), StateError> {
        self.conn.execute(
            "DELETE FROM managed_group WHERE anchor = ?1",
            params![anchor],
        )?;
        Ok(())
    }

    /// Records a finished run and prunes the table to the newest `keep` runs.
    pub fn record_run(&mut self, run: &RunRecord, keep: usize) -> Result<(), StateError> {
        let tx = self.conn.transaction()?;
        insert_run(&tx, run, keep)?;
        tx.commit()?;
        Ok(())
    }

    /// Adds the record phase to the run `id` (from [`State::record_cycle`]), which could
    /// not hold its own duration when it was written.
    pub fn set_record_phase(&mut self, id: i64, record: &RecordPhase) -> Result<(), StateError> {
        self.conn.execute(
            "UPDATE run SET record_ms = ?2, record_users = ?3 WHERE id = ?1",
            params![id, clamp(record.ms), record.users as i64],
        )?;
        Ok(())
    }

    /// The newest `limit` runs, newest first.
    pub fn recent_runs(&self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let mut stmt = self.conn.prepare(
            "SELECT started_at, finished_at, command, outcome, read, read_reason, entries_read,
                    created, adopted, updated, reactivated, closed, skipped, failed, conflicts,
                    held, error, duration_ms,
                    directory_read_ms, portal_read_ms, portal_users, portal_groups,
                    portal_fetched, portal_requests, plan_ms, planned_changes,
                    apply_ms, apply_requests, applied_changes, record_ms, record_users
             FROM run ORDER BY id DESC LIMIT ?1",
        )?;
        let n = |v: i64| usize::try_from(v).unwrap_or(0);
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let rows = stmt.query_map(params![limit as i64], |r| {
            // Columns 18.. as (value or 0): a phase is there when its duration is.
            let at = |i: usize| -> rusqlite::Result<i64> {
                Ok(r.get::<_, Option<i64>>(i)?.unwrap_or(0))
            };
            let phases = match r.get::<_, Option<i64>>(18)? {
                None => None,
                Some(directory_ms) => Some(Phases {
                    directory_read: DirectoryRead {
                        ms: u(directory_ms),
                        entries: n(r.get(6)?),
                    },
                    portal_read: PortalRead {
                        ms: u(at(19)?),
                        users: n(at(20)?),
                        groups: n(at(21)?),
                        fetched: n(at(22)?),
                        requests: u(at(23)?),
                    },
                    plan: PlanPhase {
                        ms: u(at(24)?),
                        changes: n(at(25)?),
                    },
                    apply: match r.get::<_, Option<i64>>(26)? {
                        None => None,
                        Some(ms) => Some(ApplyPhase {
                            ms: u(ms),
                            requests: u(at(27)?),
                            applied: n(at(28)?),
                        }),
                    },
                    record: match r.get::<_, Option<i64>>(29)? {
                        None => None,
                        Some(ms) => Some(RecordPhase {
                            ms: u(ms),
                            users: n(at(30)?),
                        }),
                    },
                }),
            };
            Ok(RunRecord {
                started_at: r.get(0)?,
                finished_at: r.get(1)?,
                command: r.get(2)?,
                outcome: r.get(3)?,
                read: r.get(4)?,
                read_reason: r.get(5)?,
                entries_read: n(r.get(6)?),
                created: n(r.get(7)?),
                adopted: n(r.get(8)?),
                updated: n(r.get(9)?),
                reactivated: n(r.get(10)?),
                closed: n(r.get(11)?),
                skipped: n(r.get(12)?),
                failed: n(r.get(13)?),
                conflicts: n(r.get(14)?),
                held: n(r.get(15)?),
                error: r.get(16)?,
                duration_ms: u64::try_from(r.get::<_, i64>(17)?).unwrap_or(0),
                phases,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The number of recorded runs.
    pub fn run_count(&self) -> Result<usize, StateError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM run", [], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    /// Writes, in one transaction, the end of a cycle: the baselines of in-step users that
    /// changed, meta facts (scope, delta basis), the documents (the directory snapshot)
    /// and the run (pruned to `keep`). Returns the run's id.
    pub fn record_cycle(
        &mut self,
        baselines: &[(&str, &str, &str, &Baseline)],
        meta: &[(&str, &str)],
        documents: &[Document<'_>],
        run: &RunRecord,
        keep: usize,
    ) -> Result<i64, StateError> {
        let tx = self.conn.transaction()?;
        for (anchor, portal_id, user_name, baseline) in baselines {
            record_in(&tx, anchor, portal_id, user_name, baseline)?;
        }
        for (key, value) in meta {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )?;
        }
        for doc in documents {
            write_document(&tx, doc)?;
        }
        let id = insert_run(&tx, run, keep)?;
        tx.commit()?;
        Ok(id)
    }

    /// Who is writing the database at `path` (pid and since when), if a live process is.
    /// Takes no lock: reads what the writer wrote into the lock file (cleared when it ends;
    /// one killed leaves its pid, which no longer runs).
    pub fn writer_pid(path: &Path) -> Option<String> {
        let holder = std::fs::read_to_string(lock_path(path)).ok()?;
        let holder = holder.trim();
        let pid: u32 = holder
            .strip_prefix("pid ")?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()?;
        (pid != std::process::id() && Path::new(&format!("/proc/{pid}")).exists())
            .then(|| holder.to_string())
    }
}

impl Drop for State {
    /// The writer clears its name from the lock file as it lets go of the lock.
    fn drop(&mut self) {
        if let Some(lock) = &self._lock {
            let _ = lock.set_len(0);
        }
    }
}

/// A last-synced value as an entry of `managed_user.synced` holds it (JSON: a string, or
/// a list of strings); `None` when it is neither.
fn synced_value(json: &str) -> Option<Value> {
    // The two shapes dirsync writes, read straight into their types; anything else
    // (an older or hand-edited row) as the JSON it is.
    let direct = match json.as_bytes().first() {
        Some(b'"') => serde_json::from_str::<String>(json).ok().map(Value::One),
        Some(b'[') => serde_json::from_str::<Vec<String>>(json)
            .ok()
            .map(Value::many),
        _ => None,
    };
    direct.or_else(|| {
        serde_json::from_str(json)
            .ok()
            .and_then(|j| Value::from_json(&j))
    })
}

/// The managed users' last-synced values and portal ids, by lowercased anchor.
pub type ManagedUsers = (HashMap<String, Baseline>, HashMap<String, String>);

/// One user's last-synced values as the state's rows give them.
type Entries = Vec<(AttrPath, Option<Value>)>;

/// A `meta` row written as a stream: a document too big to hold twice in memory (the
/// directory snapshot of a large directory). `write` is called twice: once to count its
/// bytes, once into the row, as a blob.
pub struct Document<'a> {
    pub key: &'a str,
    pub write: &'a dyn Fn(&mut dyn std::io::Write) -> std::io::Result<()>,
}

/// Counts the bytes written to it.
struct Counter(u64);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams `doc` into its `meta` row, inside a transaction.
fn write_document(conn: &Connection, doc: &Document<'_>) -> Result<(), StateError> {
    let io = |e: std::io::Error| StateError::Io(format!("writing {}: {e}", doc.key));
    let mut size = Counter(0);
    (doc.write)(&mut size).map_err(io)?;
    let size =
        i64::try_from(size.0).map_err(|_| StateError::Io(format!("{} is too big", doc.key)))?;
    // Delete, then insert: an upsert (`ON CONFLICT … DO UPDATE`) makes SQLite build the
    // zero blob in memory, twice, where a plain insert writes its pages directly (at
    // 30,000 users that was a 42 MB spike, the cycle's peak).
    conn.execute("DELETE FROM meta WHERE key = ?1", params![doc.key])?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, zeroblob(?2))",
        params![doc.key, size],
    )?;
    let row = conn.last_insert_rowid();
    let blob = conn.blob_open(rusqlite::MAIN_DB, "meta", "value", row, false)?;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, blob);
    (doc.write)(&mut out).map_err(io)?;
    std::io::Write::flush(&mut out).map_err(io)?;
    Ok(())
}

/// The link of `anchor` to `portal_id` and its last-synced values, inside a transaction.
fn record_in(
    conn: &Connection,
    anchor: &str,
    portal_id: &str,
    user_name: &str,
    baseline: &Baseline,
) -> Result<(), StateError> {
    link_in(conn, anchor, portal_id, user_name)?;
    conn.prepare_cached(SET_SYNCED)?
        .execute(params![anchor, synced_json(baseline)])?;
    Ok(())
}

const SET_SYNCED: &str = "UPDATE managed_user SET synced = ?2 WHERE anchor = ?1";

/// A user's last-synced values as `managed_user.synced` holds them: a JSON object, path
/// → a string, a list of strings, or null (synced as absent).
fn synced_json(baseline: &Baseline) -> String {
    let mut out = String::from("{");
    for (i, (path, value)) in baseline.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(path.to_string()).to_string());
        out.push(':');
        match value {
            Some(v) => out.push_str(&v.to_value().to_json().to_string()),
            None => out.push_str("null"),
        }
    }
    out.push('}');
    out
}

/// The entries of a `managed_user.synced` object, in its order, each path parsed once
/// (`paths`). An entry this dirsync cannot read (a path it does not know, a value that is
/// neither JSON null, a string nor a list) counts as never synced, as does a column that
/// is not a JSON object: the directory value then flows, which is the safe reading.
fn synced_entries(json: &str, paths: &mut HashMap<String, AttrPath>) -> Entries {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
    use serde_json::value::RawValue;
    use std::borrow::Cow;

    /// A key, borrowed from the text unless it has escapes.
    struct Key;
    impl<'de> DeserializeSeed<'de> for Key {
        type Value = Cow<'de, str>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    impl<'de> Visitor<'de> for Key {
        type Value = Cow<'de, str>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an attribute path")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Cow::Borrowed(v))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Cow::Owned(v.to_owned()))
        }
    }
    struct Row<'p>(&'p mut HashMap<String, AttrPath>);
    impl<'de> Visitor<'de> for Row<'_> {
        type Value = Entries;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of last-synced values")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
            let mut entries = Entries::new();
            while let Some(name) = map.next_key_seed(Key)? {
                let raw: &RawValue = map.next_value()?;
                let path = match self.0.get(name.as_ref()) {
                    Some(p) => p.clone(),
                    None => match AttrPath::parse(&name) {
                        Ok(p) => self.0.entry(name.into_owned()).or_insert(p).clone(),
                        Err(_) => continue,
                    },
                };
                match raw.get() {
                    "null" => entries.push((path, None)),
                    json => {
                        if let Some(v) = synced_value(json) {
                            entries.push((path, Some(v)));
                        }
                    }
                }
            }
            Ok(entries)
        }
    }
    let mut de = serde_json::Deserializer::from_str(json);
    de.deserialize_map(Row(paths)).unwrap_or_default()
}

/// A count or duration as SQLite's INTEGER.
fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Inserts the run and prunes the table; returns the run's id.
fn insert_run(conn: &Connection, run: &RunRecord, keep: usize) -> Result<i64, StateError> {
    let p = run.phases.as_ref();
    let apply = p.and_then(|p| p.apply.as_ref());
    let record = p.and_then(|p| p.record.as_ref());
    conn.execute(
        "INSERT INTO run (started_at, finished_at, command, outcome, read, read_reason, entries_read,
                          created, adopted, updated, reactivated, closed, skipped, failed, conflicts,
                          held, error, duration_ms,
                          directory_read_ms, portal_read_ms, portal_users, portal_groups,
                          portal_fetched, portal_requests, plan_ms, planned_changes,
                          apply_ms, apply_requests, applied_changes, record_ms, record_users)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                 ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31)",
        params![
            run.started_at,
            run.finished_at,
            run.command,
            run.outcome,
            run.read,
            run.read_reason,
            run.entries_read as i64,
            run.created as i64,
            run.adopted as i64,
            run.updated as i64,
            run.reactivated as i64,
            run.closed as i64,
            run.skipped as i64,
            run.failed as i64,
            run.conflicts as i64,
            run.held as i64,
            run.error,
            clamp(run.duration_ms),
            p.map(|p| clamp(p.directory_read.ms)),
            p.map(|p| clamp(p.portal_read.ms)),
            p.map(|p| p.portal_read.users as i64),
            p.map(|p| p.portal_read.groups as i64),
            p.map(|p| p.portal_read.fetched as i64),
            p.map(|p| clamp(p.portal_read.requests)),
            p.map(|p| clamp(p.plan.ms)),
            p.map(|p| p.plan.changes as i64),
            apply.map(|a| clamp(a.ms)),
            apply.map(|a| clamp(a.requests)),
            apply.map(|a| a.applied as i64),
            record.map(|r| clamp(r.ms)),
            record.map(|r| r.users as i64),
        ],
    )?;
    let id = conn.last_insert_rowid();
    conn.execute(
        "DELETE FROM run WHERE id <= (SELECT max(id) FROM run) - ?1",
        params![keep.max(1) as i64],
    )?;
    Ok(id)
}

/// [`StateError::Corrupt`] for a damaged file, else the SQLite error as it is.
fn corrupt_or(path: &Path, e: rusqlite::Error) -> StateError {
    if is_corrupt(&e) {
        StateError::Corrupt {
            path: path.to_path_buf(),
            detail: e.to_string(),
        }
    } else {
        StateError::Open {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    }
}

fn link_in(
    conn: &Connection,
    anchor: &str,
    portal_id: &str,
    user_name: &str,
) -> Result<(), StateError> {
    let existing: Option<String> = conn
        .prepare_cached("SELECT portal_id FROM managed_user WHERE anchor = ?1")?
        .query_row(params![anchor], |r| r.get(0))
        .optional()?;
    if existing.as_deref() == Some(portal_id) {
        return Ok(());
    }
    // One portal user has one anchor: a relinked user drops its old one.
    let old: Vec<String> = {
        let mut stmt = conn.prepare_cached(RELINKED)?;
        let rows = stmt.query_map(params![portal_id, anchor], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for a in old {
        conn.execute("DELETE FROM managed_user WHERE anchor = ?1", params![a])?;
    }
    conn.prepare_cached(
        "INSERT INTO managed_user (anchor, portal_id, user_name, linked_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT(anchor) DO UPDATE SET portal_id = excluded.portal_id, user_name = excluded.user_name,
                                          linked_at = excluded.linked_at",
    )?
    .execute(params![anchor, portal_id, user_name, crate::report::now()])?;
    Ok(())
}

/// The anchors linked to a portal user other than the one being linked (migration 7
/// indexes `portal_id` for it).
const RELINKED: &str = "SELECT anchor FROM managed_user WHERE portal_id = ?1 AND anchor <> ?2";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.db");
        {
            let mut s = State::open(&path).unwrap();
            s.record("AbC-1", "p1", "a@x.se", &Baseline::new()).unwrap();
            s.record("abc-1", "p2", "a@x.se", &Baseline::new()).unwrap(); // same anchor, any case: relinked
        }
        let s = State::open(&path).unwrap();
        assert_eq!(s.managed().unwrap(), HashSet::from(["abc-1".to_string()]));
        let ro = State::open_read_only(&path).unwrap().unwrap();
        assert_eq!(ro.managed().unwrap().len(), 1);
    }

    #[test]
    fn a_document_is_streamed_into_its_row_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(&dir.path().join("state.db")).unwrap();
        let text =
            |t: &'static str| move |out: &mut dyn std::io::Write| out.write_all(t.as_bytes());
        for body in [
            "{\"users\":[1,2,3]}",
            "{}",
            "{\"long\":\"Åsgård, ünïcödé\"}",
        ] {
            let write = text(body);
            let doc = Document {
                key: "directory.snapshot",
                write: &write,
            };
            s.record_cycle(&[], &[], &[doc], &RunRecord::default(), 10)
                .unwrap();
            assert_eq!(
                s.meta_bytes("directory.snapshot").unwrap().as_deref(),
                Some(body.as_bytes())
            );
        }
        // A writer that fails mid-way fails the record, which writes nothing.
        let failing = |out: &mut dyn std::io::Write| {
            out.write_all(b"{\"half")?;
            Err(std::io::Error::other("disk full"))
        };
        let doc = Document {
            key: "directory.snapshot",
            write: &failing,
        };
        let e = s
            .record_cycle(&[], &[], &[doc], &RunRecord::default(), 10)
            .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(
            s.meta_bytes("directory.snapshot").unwrap().as_deref(),
            Some("{\"long\":\"Åsgård, ünïcödé\"}".as_bytes())
        );
        // Text rows read as bytes too.
        s.set_meta("scope", "users: ou=people").unwrap();
        assert_eq!(
            s.meta_bytes("scope").unwrap().as_deref(),
            Some(&b"users: ou=people"[..])
        );
    }

    #[test]
    fn one_writer_at_a_time_readers_any_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let writer = State::open(&path).unwrap();
        let Err(busy) = State::open(&path) else {
            panic!("a second writer was let in");
        };
        assert!(matches!(busy, StateError::Busy { .. }), "{busy:?}");
        let message = busy.to_string();
        assert!(
            message.contains(&format!("pid {}, since ", std::process::id())),
            "{message}"
        );
        assert!(State::open_read_only(&path).unwrap().is_some());
        drop(writer);
        State::open(&path).expect("the lock goes with the writer");
        assert_eq!(lock_path(&path), dir.path().join("state.db.lock"));
    }

    #[test]
    fn a_synced_value_reads_as_the_json_it_is() {
        let one = |s: &str| Some(Value::One(s.into()));
        assert_eq!(synced_value(r#""Berg""#), one("Berg"));
        assert_eq!(synced_value(r#""a\"b \u00e9""#), one("a\"b é"));
        assert_eq!(
            synced_value(r#"["2","1","2"]"#),
            Some(Value::many(vec!["1".into(), "2".into()]))
        );
        // Shapes dirsync does not write, read as Value::from_json reads them.
        assert_eq!(synced_value("12"), one("12"));
        assert_eq!(synced_value("true"), one("true"));
        assert_eq!(
            synced_value(r#"["x", 3, {"a": 1}]"#),
            Some(Value::many(vec!["3".into(), "x".into()]))
        );
        assert_eq!(synced_value(r#"{"a": 1}"#), None);
        assert_eq!(synced_value(r#""unterminated"#), None);
        assert_eq!(synced_value(""), None);
    }

    #[test]
    fn last_synced_values_move_into_each_users_row_and_read_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A database as dirsync left it before migration 8: a row per synced attribute.
        {
            let c = database_at(&path, 7);
            c.execute_batch(
                r#"INSERT INTO managed_user VALUES ('A-1', 'p1', 'a@x.se', '2026-01-01');
                   INSERT INTO managed_user VALUES ('b-1', 'p2', 'b@x.se', '2026-01-01');
                   INSERT INTO synced_value VALUES ('a-1', 'name.familyName', '"Berg, Åsa"');
                   INSERT INTO synced_value VALUES ('a-1', 'phoneNumbers[type eq "work"].value', NULL);
                   INSERT INTO synced_value VALUES ('a-1', 'urn:x:y:faxNumbers', '["2","1"]');
                   INSERT INTO synced_value VALUES ('a-1', 'title', 'not json');
                   INSERT INTO synced_value VALUES ('a-1', 'displayName', '{"an": "object"}');"#,
            )
            .unwrap();
        }
        let s = State::open(&path).unwrap();
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        let tables: i64 = s
            .conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'synced_value'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the per-attribute table is gone");
        let mut a = Baseline::new();
        a.insert(
            AttrPath::parse("name.familyName").unwrap(),
            Some(Value::One("Berg, Åsa".into())),
        );
        a.insert(
            AttrPath::parse(r#"phoneNumbers[type eq "work"].value"#).unwrap(),
            None,
        );
        a.insert(
            AttrPath::parse("urn:x:y:faxNumbers").unwrap(),
            Some(Value::many(vec!["1".into(), "2".into()])),
        );
        // Unreadable values (not JSON, an object) were never synced, before and after.
        let baselines = s.baselines().unwrap();
        assert_eq!(baselines.get("a-1"), Some(&a));
        assert_eq!(baselines.get("b-1"), Some(&Baseline::new()));
        assert_eq!(baselines.len(), 2);
        assert_eq!(s.portal_ids().unwrap()["a-1"], "p1");
    }

    #[test]
    fn a_users_synced_object_reads_what_it_can() {
        let mut paths = HashMap::new();
        let entries = |json: &str, paths: &mut HashMap<String, AttrPath>| {
            synced_entries(json, paths)
                .into_iter()
                .map(|(p, v)| (p.to_string(), v))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            entries(
                r#"{"title":"a\"b","x[[":"bad path","emails[type eq \"work\"].value":null,"urn:x:y:n":["1"],"displayName":{"a":1}}"#,
                &mut paths
            ),
            vec![
                ("title".to_string(), Some(Value::One("a\"b".into()))),
                (r#"emails[type eq "work"].value"#.to_string(), None),
                ("urn:x:y:n".to_string(), Some(Value::many(vec!["1".into()]))),
            ]
        );
        // Each path is parsed once (that of a value left out too).
        assert_eq!(paths.len(), 4);
        for not_an_object in ["", "[]", "null", "\"x\"", r#"{"title":"#] {
            assert_eq!(
                entries(not_an_object, &mut paths),
                vec![],
                "{not_an_object}"
            );
        }
    }

    #[test]
    fn baselines_round_trip_including_absent_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = State::open(&path).unwrap();
        let mut b = Baseline::new();
        b.insert(
            AttrPath::parse("name.familyName").unwrap(),
            Some(Value::One("Berg".into())),
        );
        b.insert(
            AttrPath::parse(r#"phoneNumbers[type eq "work"].value"#).unwrap(),
            None,
        );
        b.insert(
            AttrPath::parse("urn:x:y:faxNumbers").unwrap(),
            Some(Value::many(vec!["2".into(), "1".into()])),
        );
        s.record("A-1", "p1", "a@x.se", &b).unwrap();
        drop(s);
        let mut s = State::open(&path).unwrap();
        assert_eq!(s.baselines().unwrap().get("a-1"), Some(&b));
        // Read with the links in one pass, the same links as on their own.
        let (baselines, ids) = s.managed_users().unwrap();
        assert_eq!(baselines.get("a-1"), Some(&b));
        assert_eq!(ids, s.portal_ids().unwrap());
        assert_eq!(ids["a-1"], "p1");
        // Users synced alike, read back, share one list of paths; others keep their own.
        s.record("B-1", "p2", "b@x.se", &b).unwrap();
        let mut fewer = b.clone();
        fewer.insert(AttrPath::parse("title").unwrap(), None);
        s.record("C-1", "p3", "c@x.se", &fewer).unwrap();
        let all = s.baselines().unwrap();
        assert_eq!((&all["a-1"], &all["b-1"], &all["c-1"]), (&b, &b, &fewer));
        assert!(all["a-1"].shares_paths(&all["b-1"]));
        assert!(!all["a-1"].shares_paths(&all["c-1"]));
        s.forget_user("b-1").unwrap();
        s.forget_user("c-1").unwrap();
        // Relinking another anchor to the same portal user forgets the old one.
        s.record("A-2", "p1", "a@x.se", &Baseline::new()).unwrap();
        let all = s.baselines().unwrap();
        assert_eq!(all.len(), 1);
        assert!(all["a-2"].is_empty());
    }

    #[test]
    fn read_only_open_of_missing_database_is_none_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        assert!(State::open_read_only(&path).unwrap().is_none());
        assert!(!path.exists());
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_database_and_its_files_are_private_and_made_whole_before_they_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let mut s = State::open(&path).unwrap();
        s.record("a-1", "p1", "a@x.se", &Baseline::new()).unwrap();
        for f in ["state.db", "state.db-wal", "state.db-shm", "state.db.lock"] {
            assert_eq!(mode(&dir.path().join(f)), 0o600, "{f}");
        }
        assert!(!dir.path().join("state.db.new").exists());
        drop(s);
        // A database made elsewhere with looser modes is tightened when opened.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        drop(State::open(&path).unwrap());
        assert_eq!(mode(&path), 0o600);
        // A file that exists but was never migrated (an older or interrupted dirsync) is
        // not read as if it were current.
        let empty = dir.path().join("empty.db");
        Connection::open(&empty)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = State::open_read_only(&empty).err().unwrap();
        assert!(
            matches!(err, StateError::OlderSchema { found: 0, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("run `dirsync sync` once"), "{err}");
    }

    #[test]
    fn a_damaged_database_names_the_file_and_the_ways_out() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.db");
        std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
        // A good database whose pages were overwritten in the middle.
        let damaged = dir.path().join("damaged.db");
        {
            let mut s = State::open(&damaged).unwrap();
            for i in 0..300 {
                let mut b = Baseline::new();
                b.insert(
                    AttrPath::parse("name.familyName").unwrap(),
                    Some(Value::One(format!("Berg-{i}-{}", "x".repeat(50)))),
                );
                s.record(&format!("anchor-{i}"), &format!("p{i}"), "a@x.se", &b)
                    .unwrap();
            }
        }
        {
            use std::io::{Seek, SeekFrom, Write};
            let mut f = File::options().write(true).open(&damaged).unwrap();
            let len = f.metadata().unwrap().len();
            assert!(len > 8 * 4096, "{len}");
            // The middle third of the file, past the header page.
            f.seek(SeekFrom::Start(len / 3)).unwrap();
            f.write_all(&vec![0xff; (len / 3) as usize]).unwrap();
        }
        for path in [&garbage, &damaged] {
            for err in [
                State::open(path)
                    .err()
                    .unwrap_or_else(|| panic!("{} opened", path.display())),
                State::open_read_only(path)
                    .err()
                    .unwrap_or_else(|| panic!("{} opened read-only", path.display())),
            ] {
                let message = err.to_string();
                assert!(matches!(err, StateError::Corrupt { .. }), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
                assert!(
                    message.contains("restore it from a backup")
                        && message.contains("move it away"),
                    "{message}"
                );
            }
        }
    }

    #[test]
    fn runs_keep_their_phases_and_the_record_phase_is_added_after() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(&dir.path().join("state.db")).unwrap();
        let phases = Phases {
            directory_read: DirectoryRead {
                ms: 1200,
                entries: 10025,
            },
            portal_read: PortalRead {
                ms: 8600,
                users: 10000,
                groups: 202,
                fetched: 1,
                requests: 107,
            },
            plan: PlanPhase {
                ms: 60,
                changes: 110,
            },
            apply: Some(ApplyPhase {
                ms: 900,
                requests: 112,
                applied: 110,
            }),
            record: None,
        };
        let run = RunRecord {
            command: "sync".into(),
            outcome: "ok".into(),
            entries_read: 10025,
            phases: Some(phases.clone()),
            ..RunRecord::default()
        };
        let id = s.record_cycle(&[], &[], &[], &run, 10).unwrap();
        assert_eq!(s.recent_runs(1).unwrap(), std::slice::from_ref(&run));
        let record = RecordPhase { ms: 7, users: 3 };
        s.set_record_phase(id, &record).unwrap();
        let mut want = run;
        want.phases = Some(Phases {
            record: Some(record),
            ..phases
        });
        assert_eq!(s.recent_runs(1).unwrap(), [want]);
        // A run that failed before planning has none.
        let failed = RunRecord {
            command: "sync".into(),
            outcome: "failed".into(),
            ..RunRecord::default()
        };
        s.record_run(&failed, 10).unwrap();
        assert_eq!(s.recent_runs(1).unwrap()[0].phases, None);
    }

    /// A database at `path` as a dirsync that knew the first `version` migrations left it.
    fn database_at(path: &Path, version: usize) -> Connection {
        let c = Connection::open(path).unwrap();
        for sql in &MIGRATIONS[..version] {
            c.execute_batch(sql).unwrap();
        }
        c.pragma_update(None, "user_version", version as i64)
            .unwrap();
        c
    }

    /// How SQLite would run `sql`: the detail column of `EXPLAIN QUERY PLAN`.
    fn query_plan(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> String {
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt.query_map(args, |r| r.get::<_, String>(3)).unwrap();
        rows.map(Result::unwrap).collect::<Vec<_>>().join("; ")
    }

    #[test]
    fn an_older_database_is_migrated_and_no_per_change_write_scans_a_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // A database as dirsync left it before migration 7, with a link in it.
        {
            let c = database_at(&path, 6);
            c.execute(
                "INSERT INTO managed_user VALUES ('a-1', 'p1', 'a@x.se', '2026-01-01')",
                [],
            )
            .unwrap();
        }
        let mut s = State::open(&path).unwrap();
        let version: i64 = s
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(s.portal_ids().unwrap()["a-1"], "p1");
        // Relinking p1 to another anchor still drops the old one.
        s.record("a-2", "p1", "a@x.se", &Baseline::new()).unwrap();
        assert_eq!(s.managed().unwrap(), HashSet::from(["a-2".to_string()]));

        // Each statement a confirmed change or a group change runs finds its rows
        // through an index, never by scanning the table.
        let by_anchor = [
            "SELECT portal_id FROM managed_user WHERE anchor = ?1",
            "DELETE FROM managed_user WHERE anchor = ?1",
            "DELETE FROM managed_group WHERE anchor = ?1",
        ];
        for sql in by_anchor {
            let plan = query_plan(&s.conn, sql, params!["a-2"]);
            assert!(!plan.contains("SCAN"), "{sql}: {plan}");
        }
        let plan = query_plan(&s.conn, SET_SYNCED, params!["a-2", "{}"]);
        assert!(!plan.contains("SCAN"), "{SET_SYNCED}: {plan}");
        let plan = query_plan(&s.conn, RELINKED, params!["p1", "a-2"]);
        assert!(
            plan.contains("USING INDEX managed_user_portal_id"),
            "{plan}"
        );
    }

    #[test]
    fn links_recorded_together_are_one_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = State::open(&dir.path().join("state.db")).unwrap();
        let b = Baseline::new();
        s.record_links([("a-1", "p1", "a@x.se", &b), ("a-2", "p2", "b@x.se", &b)])
            .unwrap();
        assert_eq!(s.managed().unwrap().len(), 2);
        // One link of a batch fails: nothing of the batch stays, not even the link
        // before it.
        s.conn
            .execute_batch(
                "CREATE TRIGGER no_a4 BEFORE INSERT ON managed_user WHEN new.anchor = 'a-4'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        let err = s
            .record_links([("a-3", "p3", "c@x.se", &b), ("a-4", "p4", "d@x.se", &b)])
            .unwrap_err();
        assert!(err.to_string().contains("refused"), "{err}");
        assert_eq!(s.managed().unwrap().len(), 2);
    }

    #[test]
    fn newer_schema_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let c = Connection::open(&path).unwrap();
            c.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = State::open(&path).err().unwrap().to_string();
        assert!(
            err.contains("schema version 99") && err.contains("newer dirsync"),
            "{err}"
        );
    }
}
