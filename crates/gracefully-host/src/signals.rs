//! OS signals: the first starts a graceful shutdown, the second forces the abort.

use std::io;

use gracefully::Reason;

use crate::lifetime::Lifetime;

/// The installed handlers. Installing them replaces the default action (terminate) for
/// the life of the process, as with any tokio signal handler.
pub(crate) struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers now, so a signal that arrives before the watcher first runs
    /// is not lost.
    #[cfg(unix)]
    pub(crate) fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    #[cfg(not(unix))]
    pub(crate) fn install() -> io::Result<Signals> {
        Ok(Signals {})
    }

    /// The next signal's name; `None` if no more can arrive.
    #[cfg(unix)]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Some("SIGINT"),
            Some(()) = self.terminate.recv() => Some("SIGTERM"),
            Some(()) = self.quit.recv() => Some("SIGQUIT"),
            else => None,
        }
    }

    #[cfg(not(unix))]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C")
    }

    /// Turns signals into [`Lifetime::stop`] (the first) and a forced abort (the second).
    ///
    /// A signal that arrives while a shutdown triggered otherwise (a failed service,
    /// `Lifetime::stop`) is under way counts as the first: it does not abort. Only a second
    /// *signal* does, so a SIGTERM from the orchestrator cannot cut short a shutdown the
    /// process began by itself.
    pub(crate) async fn watch(mut self, lifetime: Lifetime) {
        let mut received = 0u32;
        while let Some(name) = self.next().await {
            received += 1;
            if received == 1 {
                if lifetime.stop(Reason::shutdown().with_message(name)) {
                    tracing::info!(
                        "{name} received: shutting down gracefully (send another signal to abort at once)"
                    );
                } else {
                    tracing::info!(
                        "{name} received while already shutting down (send another signal to abort at once)"
                    );
                }
            } else {
                tracing::warn!("{name} received again: skipping to the abort");
                // The force token may fire before the trigger is seen; the supervisor
                // checks it in every phase.
                lifetime.stop(Reason::shutdown().with_message(name));
                lifetime.shared.force.cancel_with(
                    Reason::shutdown().with_message(format!("second signal ({name})")),
                );
            }
        }
    }
}
