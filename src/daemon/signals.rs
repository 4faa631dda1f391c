//! Unix signals, registered once (signal-hook, tokio integration) and turned into one
//! small enum on a channel that the daemon's loop selects on.

use futures_util::stream::StreamExt;
use signal_hook::consts::signal::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
use signal_hook_tokio::{Handle, Signals};
use tokio::sync::mpsc;

use super::DaemonError;

/// What a signal asks of the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// SIGHUP: re-read and validate the config; it applies from the next cycle.
    Reload,
    /// SIGTERM or SIGINT: stop starting requests, let those in flight finish (within the
    /// stop grace), record and report, exit 0.
    Shutdown,
    /// SIGUSR1: start a cycle now.
    RunNow,
}

impl Control {
    fn of(signal: i32) -> Option<Control> {
        match signal {
            SIGHUP => Some(Control::Reload),
            SIGTERM | SIGINT => Some(Control::Shutdown),
            SIGUSR1 => Some(Control::RunNow),
            _ => None,
        }
    }
}

/// The registered signals; `close` unregisters them.
pub struct Listening(Handle);

impl Listening {
    pub fn close(&self) {
        self.0.close();
    }
}

/// Registers the signals and forwards them to `tx` from a task of their own.
pub fn listen(tx: mpsc::Sender<Control>) -> Result<Listening, DaemonError> {
    let signals = Signals::new([SIGHUP, SIGTERM, SIGINT, SIGUSR1])
        .map_err(|e| DaemonError::Signals(e.to_string()))?;
    let handle = signals.handle();
    tokio::spawn(async move {
        let mut signals = signals;
        while let Some(signal) = signals.next().await {
            if let Some(control) = Control::of(signal) {
                if tx.send(control).await.is_err() {
                    break;
                }
            }
        }
    });
    Ok(Listening(handle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_signal_means_one_thing() {
        assert_eq!(Control::of(SIGHUP), Some(Control::Reload));
        assert_eq!(Control::of(SIGTERM), Some(Control::Shutdown));
        assert_eq!(Control::of(SIGINT), Some(Control::Shutdown));
        assert_eq!(Control::of(SIGUSR1), Some(Control::RunNow));
        assert_eq!(Control::of(signal_hook::consts::signal::SIGUSR2), None);
    }
}
