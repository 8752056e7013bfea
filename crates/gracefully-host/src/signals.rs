//! OS signals: the first starts a graceful shutdown, the second forces the abort.
//!
//! The handlers live on a thread of their own, with a small current-thread runtime of its
//! own, not on the host's runtime: tokio's signal handling needs the runtime's IO driver,
//! which the host's runtime may not have (a runtime built with `enable_time` only), and a
//! second signal must get through even when every worker of the host's runtime is busy.

use std::io;
use std::sync::mpsc;

use gracefully::{CancellationSource, Reason};

use crate::lifetime::Lifetime;

/// The signal thread, watching. Dropping it stops the watching (the thread ends soon after;
/// nobody waits for it). The handlers stay installed: installing them replaced the default
/// action (terminate) for the life of the process, as with any tokio signal handler.
pub(crate) struct SignalWatcher {
    done: CancellationSource,
}

impl SignalWatcher {
    /// Starts the thread and returns once the handlers are installed, so a signal that
    /// arrives from then on is not lost. Logs go to the caller's `tracing` dispatcher.
    pub(crate) fn start(lifetime: Lifetime) -> io::Result<SignalWatcher> {
        let done = CancellationSource::new();
        let stop_watching = done.token();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let (installed_tx, installed) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("gracefully-host-signals".into())
            .spawn(move || {
                let _dispatch = tracing::dispatcher::set_default(&dispatch);
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = installed_tx.send(Err(error));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let signals = match Signals::install() {
                        Ok(signals) => {
                            let _ = installed_tx.send(Ok(()));
                            signals
                        }
                        Err(error) => {
                            let _ = installed_tx.send(Err(error));
                            return;
                        }
                    };
                    let _ = stop_watching
                        .run_until_cancelled(signals.watch(lifetime))
                        .await;
                });
            })?;
        // A short blocking wait (a thread start and four `sigaction`s), once per `run`,
        // before any service starts.
        installed.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the signal thread ended before installing the handlers",
            ))
        })?;
        Ok(SignalWatcher { done })
    }
}

impl Drop for SignalWatcher {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// The installed handlers.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    #[cfg(unix)]
    quit: tokio::signal::unix::Signal,
    /// A closed terminal or SSH session: its default action kills the process with no
    /// drain, losing the work in flight; here it stops gracefully like the others.
    #[cfg(unix)]
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Installs the handlers now, so a signal that arrives before the watcher first runs
    /// is not lost. Needs a runtime with the IO driver.
    #[cfg(unix)]
    fn install() -> io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            hangup: signal(SignalKind::hangup())?,
        })
    }

    #[cfg(not(unix))]
    fn install() -> io::Result<Signals> {
        Ok(Signals {})
    }

    /// The next signal's name; `None` if no more can arrive.
    #[cfg(unix)]
    async fn next(&mut self) -> Option<&'static str> {
        tokio::select! {
            Some(()) = self.interrupt.recv() => Some("SIGINT"),
            Some(()) = self.terminate.recv() => Some("SIGTERM"),
            Some(()) = self.quit.recv() => Some("SIGQUIT"),
            Some(()) = self.hangup.recv() => Some("SIGHUP"),
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
    async fn watch(mut self, lifetime: Lifetime) {
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
                lifetime.timeline().force.cancel_with(
                    Reason::shutdown().with_message(format!("second signal ({name})")),
                );
            }
        }
    }
}
