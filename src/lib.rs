//! dirsync: makes Active Directory or LDAP the source of truth for a SCIM 2.0 portal's users.
//!
//! Data flows one way: [`source`] and [`portal`] are read → [`plan`] computes the changes
//! (pure) → [`apply`] carries them out → [`state`] records them → [`report`] tells the admin.
//! [`cycle`] is that path; [`cli`] and [`run`] put it behind the command line.

pub mod access;
pub mod apply;
pub mod check;
pub mod cli;
pub mod config;
pub mod cycle;
pub mod mapping;
pub mod plan;
pub mod portal;
pub mod report;
pub mod secret;
pub mod source;
pub mod state;

use cli::{Cli, Command, Format};
use config::{Config, ConfigError};
use cycle::{CycleError, Mode};

/// Process exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// The directory or portal could not be read, or changes failed.
    pub const FAILURE: u8 = 1;
    /// The config (or the command line) is wrong.
    pub const CONFIG: u8 = 2;
}

/// A failure of a whole command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Cycle(_) => exit::FAILURE,
        }
    }
}

/// Runs a command; prints its report on stdout and returns the exit code.
pub async fn run(cli: Cli) -> Result<u8, Error> {
    let config = Config::load(&cli.config)?;
    match cli.command {
        Command::Check { format } => {
            let found = check::check(&config).await?;
            match format {
                Format::Text => print!("{}", found.to_text()),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&found).unwrap_or_default()
                ),
            }
            Ok(exit::OK)
        }
        Command::Plan { format } => report_cycle(&config, Mode::Plan, format).await,
        Command::Sync { format } => report_cycle(&config, Mode::Sync, format).await,
    }
}

async fn report_cycle(config: &Config, mode: Mode, format: Format) -> Result<u8, Error> {
    let report = cycle::run(config, mode).await?;
    match format {
        Format::Text => print!("{}", report::render_text(&report)),
        Format::Json => println!("{}", report.to_json()),
    }
    Ok(if report.has_failures() {
        exit::FAILURE
    } else {
        exit::OK
    })
}
