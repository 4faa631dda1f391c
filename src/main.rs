use std::process::ExitCode;

use clap::Parser;
use dirsync::cli::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    one_malloc_arena();
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
    // The command runs as a task on the runtime's threads, where the I/O driver is, not
    // on this thread inside block_on: each answer from the portal or the directory then
    // wakes a worker that was polling anyway instead of this thread through a futex. At
    // four requests in flight this took 13% of dirsync's CPU off a provisioning.
    let result = match runtime.block_on(runtime.spawn(dirsync::run(cli))) {
        Ok(result) => result,
        Err(e) => {
            // The task panicked (the panic was printed) or was cancelled.
            eprintln!("dirsync: the command stopped unexpectedly: {e}");
            return ExitCode::from(dirsync::exit::FAILURE);
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("dirsync: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// One glibc malloc arena for the whole process, unless `MALLOC_ARENA_MAX` says
/// otherwise. glibc gives each thread that allocates under contention an arena of its
/// own, which keeps what is freed in it for that thread: a cycle reads on the runtime's
/// threads and plans on another, so each kept its own high-water mark. One arena costs
/// nothing measurable here (the cycle's work is sequential) and lowers a full cycle's
/// peak RSS (at 100,000 users: 256 → 247 MiB; BENCHMARKS.md).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes an allocator setting; no other thread runs yet.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}
