//! OS signals: the first starts a graceful shutdown, the second forces the abort.
//!
//! The handlers live on a thread of their own, with a small current-thread runtime of its
//! own, not on the host's runtime: tokio's signal handling needs the runtime's IO driver,
//! which the host's runtime may not have (a runtime built with `enable_time` only), and a
//! second signal must get through even when every worker of the host's runtime is busy.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use gracefully::{CancellationSource, CancellationToken, Reason};

use crate::lifetime::Lifetime;

/// The shutdown signals (SIGINT, SIGTERM, SIGQUIT, SIGHUP; Ctrl-C elsewhere), taken from
/// the moment [`install`](Self::install) returns — before the host exists. For the work a
/// program does before it can build its host (connect to a database, run migrations):
/// without it, a signal in that window takes the default action (the process dies at once,
/// exit 143 for SIGTERM, no report), and a slow start cannot be stopped cleanly.
///
/// * Race the start-up against [`received`](Self::received): it fires at the first signal,
///   with reason kind `Shutdown` and the signal's name as message, so the program can stop
///   before serving anything.
/// * Hand them to the host with [`HostBuilder::signals`](crate::HostBuilder::signals): it
///   takes them over (no window in which a signal is missed), and a signal that arrived
///   before it ran stops it as soon as it has started.
/// * A second signal before the host runs exits the process at once, with the shell's code
///   for the signal (128 + its number: 130 for SIGINT, 143 for SIGTERM), as the default
///   action would — "abort now", as a second signal means once the host runs.
///
/// Hand them to the host, or drop them before it runs: while they are held, they still act
/// on their own (a second signal would exit the process), also beside a host that installed
/// handlers of its own — such a host logs a warning saying so. Once dropped, nothing watches
/// any more but the handlers stay installed (as any tokio signal handler): SIGINT and
/// SIGTERM are then ignored unless a host installs its own, so a program that drops them to
/// stop should end soon after.
///
/// ```no_run
/// use gracefully_host::{EarlySignals, Host};
///
/// # async fn connect() -> Result<(), std::io::Error> { Ok(()) }
/// # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
/// let signals = EarlySignals::install()?;
/// let stop = signals.received();
/// let database = tokio::select! {
///     database = connect() => database?,
///     reason = stop.cancelled() => {
///         eprintln!("{reason} while starting: stopped before serving");
///         return Ok(());
///     }
/// };
/// let host = Host::builder().signals(signals).build()?;
/// host.run_and_exit().await
/// # }
/// ```
///
/// *Anchors:* .NET's Generic Host registers its console lifetime when it is built, so a
/// Ctrl-C during the host's own start-up is seen, but not one during the program's code
/// before `Build()`; Go's `signal.NotifyContext`, made first thing in `main`, is this.
pub struct EarlySignals {
    target: Arc<Target>,
    /// Stops the signal thread's watching when dropped.
    done: CancellationSource,
    /// Handed to a host (counted out of [`UNATTACHED`]).
    attached: AtomicBool,
}

/// `EarlySignals` installed and not (yet) handed to a host: a host that installs handlers
/// of its own while some are held warns, since those would still act on their own.
static UNATTACHED: AtomicUsize = AtomicUsize::new(0);

/// How many `EarlySignals` are held without a host.
pub(crate) fn unattached() -> usize {
    UNATTACHED.load(Ordering::Acquire)
}

/// Where the signal thread delivers: a host's lifetime once one is attached, else the
/// `first` token (and, for a second signal, the process's exit).
struct Target {
    first: CancellationSource,
    state: Mutex<TargetState>,
}

#[derive(Default)]
struct TargetState {
    lifetime: Option<Lifetime>,
    /// How many signals arrived, and the first one's name.
    received: u32,
    first: Option<&'static str>,
}

impl EarlySignals {
    /// Installs the handlers, on a thread of their own with a small runtime of its own
    /// (tokio's signal handling needs an IO driver, which the program's runtime may lack,
    /// and a second signal must get through even when every worker is busy). Returns once
    /// they are installed: a signal that arrives from then on is not lost. Logs go to the
    /// caller's `tracing` dispatcher.
    ///
    /// # Errors
    ///
    /// The OS refused a thread or a handler.
    pub fn install() -> io::Result<EarlySignals> {
        let signals = EarlySignals::start()?;
        UNATTACHED.fetch_add(1, Ordering::AcqRel);
        Ok(signals)
    }

    /// Installs handlers for a host that attaches them at once (not counted as held without
    /// a host: two hosts starting at the same time must not take each other's for
    /// forgotten ones).
    pub(crate) fn install_for_host(lifetime: &Lifetime) -> io::Result<EarlySignals> {
        let signals = EarlySignals::start()?;
        signals.attached.store(true, Ordering::Release);
        signals.attach(lifetime);
        Ok(signals)
    }

    fn start() -> io::Result<EarlySignals> {
        let target = Arc::new(Target {
            first: CancellationSource::new(),
            state: Mutex::new(TargetState::default()),
        });
        let done = CancellationSource::new();
        let stop_watching = done.token();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let (installed_tx, installed) = mpsc::sync_channel(1);
        let delivering = Arc::clone(&target);
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
                    let mut signals = match Signals::install() {
                        Ok(signals) => {
                            let _ = installed_tx.send(Ok(()));
                            signals
                        }
                        Err(error) => {
                            let _ = installed_tx.send(Err(error));
                            return;
                        }
                    };
                    let watching = async {
                        while let Some(name) = signals.next().await {
                            delivering.deliver(name);
                        }
                    };
                    let _ = stop_watching.run_until_cancelled(watching).await;
                });
            })?;
        // A short blocking wait (a thread start and four `sigaction`s).
        installed.recv().unwrap_or_else(|_| {
            Err(io::Error::other(
                "the signal thread ended before installing the handlers",
            ))
        })?;
        Ok(EarlySignals {
            target,
            done,
            attached: AtomicBool::new(false),
        })
    }

    /// Fires at the first signal (reason kind `Shutdown`, the signal's name as message),
    /// whether or not a host runs yet.
    pub fn received(&self) -> CancellationToken {
        self.target.first.token()
    }

    /// Hands the signals to `lifetime`'s host: the next ones stop it (the first) and abort
    /// it (the second); one that arrived before stops it now.
    pub(crate) fn attach(&self, lifetime: &Lifetime) {
        if !self.attached.swap(true, Ordering::AcqRel) {
            UNATTACHED.fetch_sub(1, Ordering::AcqRel);
        }
        let mut state = self
            .target
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.lifetime = Some(lifetime.clone());
        // `first` is set exactly when a signal arrived.
        let early = state.first;
        drop(state);
        if let Some(name) = early {
            lifetime.stop(Reason::shutdown().with_message(name));
            tracing::info!(
                "{name} received before the host ran: shutting down as soon as it has started \
                 (send another signal to abort at once)"
            );
        }
    }
}

impl Drop for EarlySignals {
    fn drop(&mut self) {
        if !*self.attached.get_mut() {
            UNATTACHED.fetch_sub(1, Ordering::AcqRel);
        }
        self.done.cancel();
    }
}

impl std::fmt::Debug for EarlySignals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EarlySignals")
            .field("received", &self.target.first.token().is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Target {
    /// One signal, `name`: to the host if one is attached, else to `first` (the first) or
    /// the process's exit (the second).
    fn deliver(&self, name: &'static str) {
        let (received, lifetime) = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.received += 1;
            state.first.get_or_insert(name);
            (state.received, state.lifetime.clone())
        };
        if received == 1 {
            self.first
                .cancel_with(Reason::shutdown().with_message(name));
        }
        match lifetime {
            Some(lifetime) => to_host(&lifetime, received, name),
            None if received == 1 => tracing::info!(
                "{name} received before the host started: stopping (send another signal to \
                 exit at once)"
            ),
            None => {
                tracing::warn!("{name} received again before the host started: exiting at once");
                std::process::exit(exit_code_of(name));
            }
        }
    }
}

/// The shell's exit status for a process ended by `name`: 128 + the signal's number.
fn exit_code_of(name: &str) -> i32 {
    128 + match name {
        "SIGHUP" => 1,
        "SIGINT" | "Ctrl-C" => 2,
        "SIGQUIT" => 3,
        _ => 15,
    }
}

/// Turns signals into [`Lifetime::stop`] (the first) and a forced abort (the second).
///
/// A signal that arrives while a shutdown triggered otherwise (a failed service,
/// `Lifetime::stop`) is under way counts as the first: it does not abort. Only a second
/// *signal* does, so a SIGTERM from the orchestrator cannot cut short a shutdown the
/// process began by itself.
fn to_host(lifetime: &Lifetime, received: u32, name: &'static str) {
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
        // The force token may fire before the trigger is seen; the supervisor checks it in
        // every phase.
        lifetime.stop(Reason::shutdown().with_message(name));
        lifetime
            .timeline()
            .force
            .cancel_with(Reason::shutdown().with_message(format!("second signal ({name})")));
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
}
