//! The test host: [`test_host`] budgets, and a [`RunningHost`] to start, stop and read the
//! report of, with a limit so a hang fails the test instead of stalling it.
//!
//! Uses only the host's stable surface — `Host::builder()` and its budget setters,
//! `Host::lifetime`, `Host::run`, `Lifetime::{started, stopped, stop}` and
//! `ShutdownReport` — so changes inside the host crate stay out of here.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use gracefully::{CancellationSource, Reason};
use gracefully_host::{Host, HostBuilder, Lifetime, ShutdownReport, panic_message};
use tokio::task::JoinHandle;

/// `Host::builder()` with budgets for tests: `shutdown_timeout` 5 s of which
/// `cancel_grace` 1 s (so the drain has 4 s), `startup_timeout` 5 s, and no signal
/// handlers (a test stops its host with [`RunningHost::stop`]; handlers would also outlive
/// the test in the test process).
///
/// Short enough that a test of a stubborn service finishes in seconds — or instantly under
/// `#[tokio::test(start_paused = true)]` — and long enough for real I/O on a loaded CI
/// machine. Every setter of [`HostBuilder`] still applies on top.
///
/// ```
/// use gracefully::Reason;
/// use gracefully_host::{Outcome, Phase, service_fn};
/// use gracefully_test::{RunningHost, test_host};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let host = test_host()
///     .service("worker", service_fn(|stopping, _cx| async move {
///         stopping.cancelled().await; // honours its token
///     }))
///     .build()
///     .unwrap();
/// let running = RunningHost::start(host).await.unwrap();
/// assert!(running.lifetime().is_ready());
///
/// let report = running.stop(Reason::shutdown().with_message("test over")).await.unwrap();
/// assert_eq!(report.exit_code(), 0, "{report}");
/// assert_eq!(report.entry("worker").unwrap().phase(), Phase::Drain);
/// assert_eq!(report.entry("worker").unwrap().outcome(), &Outcome::Completed);
/// # }
/// ```
pub fn test_host() -> HostBuilder {
    Host::builder()
        .shutdown_timeout(Duration::from_secs(5))
        .cancel_grace(Duration::from_secs(1))
        .startup_timeout(Duration::from_secs(5))
        .handle_signals(false)
}

/// A [`Host`] running in a background task: wait for it to be ready, stop it, get its
/// [`ShutdownReport`] — each wait bounded by [`RunningHost::LIMIT`], so a host that hangs
/// fails the test with a [`HostError`] rather than stalling it.
///
/// Dropping it (say, when an assertion fails first) requests a stop, without waiting, so a
/// host does not outlive its test's logic; the runtime's end drops what still runs.
///
/// *Anchors:* .NET's `WebApplicationFactory` / `IHost.StartAsync` + `StopAsync` in tests;
/// the `tokio::spawn(host.run())` + `lifetime.stop(…)` every host test writes by hand.
pub struct RunningHost {
    lifetime: Lifetime,
    run: JoinHandle<ShutdownReport>,
}

impl RunningHost {
    /// How long each wait may take: 60 s, twice the host's default `shutdown_timeout`, so it
    /// never cuts short a shutdown the host itself would end. (It is a guard against a
    /// hang, not a budget: with [`test_host`] a healthy stop takes at most 5 s.)
    pub const LIMIT: Duration = Duration::from_secs(60);

    /// Spawns `host.run()` and waits until the host is ready (every start step finished) —
    /// or has already stopped, because a start step failed or a service ended it: then
    /// [`finished`](Self::finished) returns its report. Check
    /// [`Lifetime::is_ready`] if it matters.
    ///
    /// Must be called within a tokio runtime with the time driver.
    ///
    /// # Errors
    ///
    /// [`HostError::StartTimedOut`] if neither happened within [`LIMIT`](Self::LIMIT).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it returns asks the already spawned host to stop, as
    /// dropping a `RunningHost` does.
    pub async fn start(host: Host) -> Result<RunningHost, HostError> {
        let lifetime = host.lifetime();
        let running = RunningHost {
            run: tokio::spawn(host.run()),
            lifetime: lifetime.clone(),
        };
        // Ready, or ended: `started` never fires if the host stops before it is ready.
        let settled = CancellationSource::linked([lifetime.started(), lifetime.stopped()]);
        match tokio::time::timeout(Self::LIMIT, settled.token().cancelled()).await {
            Ok(_) => Ok(running),
            Err(_elapsed) => Err(HostError::StartTimedOut { limit: Self::LIMIT }),
        }
    }

    /// The host's lifetime: its state, readiness, tokens, and tracked tasks.
    pub fn lifetime(&self) -> &Lifetime {
        &self.lifetime
    }

    /// Requests a graceful shutdown with `reason` (a no-op if one was already requested:
    /// the first reason wins and is the report's trigger), then waits for the report.
    ///
    /// # Errors
    ///
    /// [`HostError::StopTimedOut`] if the host did not return its report within
    /// [`LIMIT`](Self::LIMIT); [`HostError::RunPanicked`] if `Host::run` itself panicked.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the host stopping in the background (the request is
    /// made at the first poll); its report is lost.
    pub async fn stop(self, reason: Reason) -> Result<ShutdownReport, HostError> {
        self.lifetime.stop(reason);
        self.finished().await
    }

    /// Waits for the host to stop by itself (a service failed, or something called
    /// [`Lifetime::stop`]) and returns its report.
    ///
    /// # Errors
    ///
    /// As [`stop`](Self::stop).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the handle, which asks the host to stop; its report is
    /// lost.
    pub async fn finished(mut self) -> Result<ShutdownReport, HostError> {
        match tokio::time::timeout(Self::LIMIT, &mut self.run).await {
            Ok(Ok(report)) => Ok(report),
            Ok(Err(join)) => Err(HostError::RunPanicked {
                message: match join.try_into_panic() {
                    Ok(panic) => panic_message(&*panic).to_owned(),
                    Err(join) => join.to_string(),
                },
            }),
            Err(_elapsed) => Err(HostError::StopTimedOut { limit: Self::LIMIT }),
        }
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        // A no-op after `stop` or once the host has stopped.
        self.lifetime
            .stop(Reason::shutdown().with_message("RunningHost dropped"));
    }
}

impl fmt::Debug for RunningHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunningHost")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

/// Why a [`RunningHost`] wait failed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HostError {
    /// The host was neither ready nor stopped within the limit.
    StartTimedOut {
        /// The limit ([`RunningHost::LIMIT`]).
        limit: Duration,
    },
    /// The host did not return its report within the limit.
    StopTimedOut {
        /// The limit ([`RunningHost::LIMIT`]).
        limit: Duration,
    },
    /// `Host::run` panicked (a bug in the host: it catches its services' panics).
    RunPanicked {
        /// The panic's message.
        message: String,
    },
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostError::StartTimedOut { limit } => write!(
                f,
                "the host was neither ready nor stopped {limit:?} after it started: a start \
                 step hangs past its startup_timeout?"
            ),
            HostError::StopTimedOut { limit } => write!(
                f,
                "the host returned no shutdown report within {limit:?}: its shutdown_timeout \
                 should have ended it (is it longer than that, or does a service block a \
                 runtime thread?)"
            ),
            HostError::RunPanicked { message } => write!(f, "Host::run panicked: {message}"),
        }
    }
}

impl Error for HostError {}
