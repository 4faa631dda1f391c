//! The command line.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Keeps a SCIM 2.0 fax/SMS portal's users in step with Active Directory or LDAP.
///
/// Exit codes: 0 success; 1 runtime failure (directory or portal unreachable, changes that
/// failed); 2 config or usage error.
#[derive(Debug, Parser)]
#[command(name = "dirsync", version, about, long_about = None)]
pub struct Cli {
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "/etc/dirsync/dirsync.toml",
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
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Dry run: compute and print the plan. Never writes to the portal or the state.
    Plan {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
    /// Run one cycle: plan, apply, record, and print what was done.
    Sync {
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
