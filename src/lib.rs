//! dirsync: makes Active Directory or LDAP the source of truth for a SCIM 2.0 portal's users.
//!
//! Data flows one way: [`source`] and [`portal`] are read → [`plan`] computes the changes
//! (pure) → [`apply`] carries them out → [`state`] records them → [`report`] tells the admin.
//! [`cycle`] is that path; [`cli`] and [`run`] put it behind the command line.

pub mod access;
pub mod apply;
pub mod archive;
pub mod check;
pub mod cli;
pub mod concern;
pub mod config;
pub mod cycle;
pub mod daemon;
pub mod dn;
pub mod explain;
pub mod mail;
pub mod mapping;
pub mod plan;
pub mod portal;
pub mod publish;
pub mod record;
pub mod report;
pub mod saved;
pub mod secret;
pub mod source;
pub mod state;
pub mod telemetry;

use cli::{Cli, Command, Confirm, Format};
use config::{Config, ConfigError};
use cycle::CycleError;

/// Process exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// The directory or portal could not be read, or changes failed.
    pub const FAILURE: u8 = 1;
    /// The config (or the command line) is wrong.
    pub const CONFIG: u8 = 2;
    /// A safety guard held changes back (too many closures or removals, or a changed
    /// scope) until an admin confirms; everything else was applied.
    pub const HELD: u8 = 3;
}

/// A failure of a whole command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Cycle(#[from] CycleError),
    #[error(transparent)]
    Saved(#[from] saved::SavedError),
    #[error(transparent)]
    Daemon(#[from] daemon::DaemonError),
    #[error(transparent)]
    Explain(#[from] explain::ExplainError),
    #[error(transparent)]
    Report(#[from] archive::ReadError),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Cycle(_)
            | Error::Saved(_)
            | Error::Daemon(_)
            | Error::Explain(_)
            | Error::Report(_) => exit::FAILURE,
        }
    }
}

/// Runs a command; prints its report on stdout and returns the exit code.
pub async fn run(cli: Cli) -> Result<u8, Error> {
    // A saved report is printed without the config: it may be read on another machine.
    if let Command::Report { file, format } = &cli.command {
        let report = archive::read(file)?;
        print_report(&report, *format);
        return Ok(exit::OK);
    }
    let config = Config::load(&cli.config)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Check { format } => {
            let found = check::check(&config).await?;
            match format {
                Format::Text => print!("{}", found.to_text()),
                                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&found).unwrap_or_default()
                ),
                Format::Html => print!(
                    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dirsync check</title></head><body><pre>{}</pre></body></html>\n",
                    report::html_escape(&found.to_text())
                ),
            }
            Ok(exit::OK)
        }
        Command::Plan {
            format,
            confirm,
            adopt_orphans,
            full,
            save,
        } => {
            let request = cycle::Request::Plan {
                save: save.as_deref(),
            };
            let options = options(confirm, adopt_orphans, full);
            let report = cycle::run(&config, request, &options, &cycle::Context::default()).await?;
            if let Some(path) = save {
                eprintln!(
                    "dirsync: plan saved to {}; apply it as reviewed with `dirsync apply {}`",
                    path.display(),
                    path.display()
                );
            }
            Ok(print_report(&report, format))
        }
        Command::Sync {
            format,
            confirm,
            adopt_orphans,
            full,
        } => {
            let options = options(confirm, adopt_orphans, full);
            recorded(&config, cycle::Request::Sync, &options, format).await
        }
        Command::Run => {
            daemon::run(config, cli.config.clone()).await?;
            Ok(exit::OK)
        }
        Command::Status { format, last } => {
            let status = daemon::status::gather(&config, last).map_err(CycleError::State)?;
            match format {
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                ),
                Format::Text | Format::Html => print!("{}", status.to_text()),
            }
            Ok(exit::OK)
        }
        Command::Apply { file, format } => {
            let saved = saved::SavedPlan::read(&file)?;
            let request = cycle::Request::Apply(&saved);
            recorded(&config, request, &cycle::Options::default(), format).await
        }
        Command::Explain { user, format } => {
            let explanation = explain::explain(&config, &user).await?;
            match format {
                Format::Text => print!("{}", explain::render_text(&explanation)),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&explanation).unwrap_or_default()
                ),
                Format::Html => print!(
                    "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dirsync explain</title></head><body><pre>{}</pre></body></html>\n",
                    report::html_escape(&explain::render_text(&explanation))
                ),
            }
            Ok(exit::OK)
        }
        // Printed above, before the config is loaded.
        Command::Report { .. } => Ok(exit::OK),
    }
}

/// A cycle that records its run: prints its report, then writes it to `[reports] dir`
/// and mails it when `[mail]` says so (a failed cycle's report too).
async fn recorded(
    config: &Config,
    request: cycle::Request<'_>,
    options: &cycle::Options,
    format: Format,
) -> Result<u8, Error> {
    let kind = request.kind();
    let started_at = report::now();
    let result = cycle::run(config, request, options, &cycle::Context::default()).await;
    let code = result.as_ref().ok().map(|r| print_report(r, format));
    publish::publish(config, kind, &started_at, &result).await;
    match (code, result) {
        (Some(code), _) => Ok(code),
        (None, Err(e)) => Err(e.into()),
        (None, Ok(r)) => Ok(r.exit_code()),
    }
}

fn options(confirm: Confirm, adopt_orphans: bool, full: bool) -> cycle::Options {
    cycle::Options {
        confirmed: plan::guard::Confirmed {
            closures: confirm.confirm_closures,
            removals: confirm.confirm_removals,
        },
        accept_scope_change: confirm.accept_scope_change,
        reviewed: false,
        adopt_orphans,
        full,
    }
}

/// Prints a report on stdout; returns the exit code it calls for.
fn print_report(report: &report::Report, format: Format) -> u8 {
    match format {
        Format::Text => print!("{}", report::render_text(report)),
        Format::Json => {
            // Written as it is made (a first sync's report is large). A stdout that is
            // gone (a pipe closed early) loses the report, not the cycle's exit code.
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let _ = report
                .write_json(&mut out)
                .and_then(|()| writeln!(out))
                .and_then(|()| out.flush());
        }
        Format::Html => print!("{}", report::render_html(report)),
    }
    report.exit_code()
}
