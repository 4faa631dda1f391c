//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Keeps a SCIM 2.0 fax/SMS portal's users in step with Active Directory or LDAP.
///
/// Exit codes: 0 success; 1 runtime failure (directory or portal unreachable, changes that
/// failed, a directory that returned no users); 2 config or usage error; 3 a safety guard
/// held changes back until an admin confirms them.
#[derive(Debug, Parser)]
#[command(name = "dirsync", version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("DIRSYNC_COMMIT"), ")"), about, long_about = None, after_help = "Exit codes: 0 success; 1 runtime failure; 2 config or usage error; 3 changes held back by a safety guard (see the report).")]
pub struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = crate::config::DEFAULT_PATH,
        env = "DIRSYNC_CONFIG"
    )]
    pub config: PathBuf,

    /// Log level: error, warn, info, debug or trace (or a tracing filter such as
    /// `dirsync=debug`). Logs go to stderr; reports to stdout.
    #[arg(long, global = true, default_value = "warn", env = "DIRSYNC_LOG")]
    pub log_level: String,

    /// Log line format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config, bind to the directory, reach the portal, and say what was found.
    Check {
        /// Report format: text for people, json for tools, html for a page to open or mail.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dry run: compute and print the plan. Never writes to the portal or the state, nor
    /// a report file ([reports] keeps those of sync, apply and the daemon's cycles).
    Plan {
        /// Report format: text for people, json for tools, html for a page to open or mail.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        confirm: Confirm,
        /// Show the plan as if orphans were taken over (see `sync --adopt-orphans`).
        #[arg(long)]
        adopt_orphans: bool,
        /// A full reconcile: read the whole directory and list the whole portal, so that
        /// portal-side edits of admin-locked fields are reverted. Without it, a cycle reads
        /// only what changed since the last one, when it can.
        #[arg(long)]
        full: bool,
        /// Also save the plan to FILE, to apply it later exactly as reviewed (`dirsync apply FILE`).
        #[arg(long, value_name = "FILE")]
        save: Option<PathBuf>,
    },
    /// Apply a plan saved with `plan --save`, exactly as reviewed. Refused (exit 3, nothing
    /// applied) if the directory or the portal changed for a user it affects. The report
    /// is written and mailed as a sync's.
    Apply {
        /// The saved plan.
        file: PathBuf,
        /// Report format: text for people, json for tools, html for a page to open or mail.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run as a service: cycles on the `[schedule]` cron (and at start), until SIGTERM.
    /// SIGHUP reloads the config for the next cycle, SIGUSR1 starts a cycle now. Logs go to
    /// stderr (JSON lines under systemd); `dirsync status` shows what it does. Each
    /// cycle's report goes to [reports] dir and, with [mail], to the administrators when
    /// it fails, holds changes back or needs an administrator (once per condition).
    Run,
    /// Show the daemon (running or not, next run, cycle in progress) and the last cycles.
    /// Read-only: safe while the daemon runs.
    Status {
        /// text for people, json for tools.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        /// How many of the last cycles to show.
        #[arg(long, default_value_t = 10)]
        last: usize,
    },
    /// Explain one user: the directory entry, the groups and the paths through nesting,
    /// each role, service and portal-group rule and whether it matched, the portal user
    /// and its link, and per mapped field the owner, the last-synced, directory and portal
    /// values and what the next cycle will do and why. Read-only: takes no lock, writes
    /// nothing (it runs the next cycle as a dry run to tell what it would do).
    Explain {
        /// The user: a login, a DN or a directory anchor (entryUUID, objectGUID).
        user: String,
        /// text for people, json for tools (html: the text in a page).
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Print a saved JSON report again: a cycle's file from the reports directory
    /// ([reports] dir, e.g. latest.json) or the output of `--format json`. Needs no config.
    Report {
        /// The JSON report.
        file: PathBuf,
        /// text for people, html for a page to open or mail, json as saved.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run one cycle: plan, apply, record, and print what was done. The report is also
    /// written to [reports] dir and, with [mail], mailed when it needs an administrator.
    Sync {
        /// Report format: text for people, json for tools, html for a page to open or mail.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
        #[command(flatten)]
        confirm: Confirm,
        /// Take over the portal users that carry an externalId dirsync does not manage and
        /// that no directory user has (the report lists them; say the state database was
        /// lost): they are linked as managed, so those that left the directory are closed,
        /// subject to the closure guard.
        #[arg(long)]
        adopt_orphans: bool,
        /// A full reconcile: read the whole directory and list the whole portal, so that
        /// portal-side edits of admin-locked fields are reverted. Without it, a cycle reads
        /// only what changed since the last one, when it can.
        #[arg(long)]
        full: bool,
    },
}

/// Releases changes a safety guard held back (exit code 3). Each takes the exact number the
/// report gave, so a confirmation never covers more than what was reviewed.
#[derive(Debug, Clone, Copy, Default, clap::Args)]
pub struct Confirm {
    /// Close these many users even though that is more than [safety] allows.
    #[arg(long, value_name = "N")]
    pub confirm_closures: Option<usize>,
    /// Take away these many group memberships, roles and services even though that is
    /// more than [safety] allows.
    #[arg(long, value_name = "N")]
    pub confirm_removals: Option<usize>,
    /// Apply although the directory scope (bases, filters, rules) changed since the last sync.
    #[arg(long)]
    pub accept_scope_change: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    /// A self-contained HTML page (plan, sync, apply, report).
    Html,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
