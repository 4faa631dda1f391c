use std::process::ExitCode;

use clap::Parser;
use dirsync::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log_level).unwrap_or_else(|_| EnvFilter::new("warn"));
    // Colour only for a person at a terminal: never in files or the journal, and never
    // when NO_COLOR is set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    // Under systemd without a terminal (the journal), one JSON object per line.
    let journal = std::env::var_os("JOURNAL_STREAM").is_some()
        && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    match (cli.log_format, journal) {
        (LogFormat::Json, _) | (LogFormat::Text, true) => logs.json().init(),
        (LogFormat::Text, false) => logs.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dirsync: cannot start the async runtime: {e}");
            return ExitCode::from(dirsync::exit::FAILURE);
        }
    };
    match runtime.block_on(dirsync::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dirsync: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
