//! [`Host`]: runs the services and the shutdown sequence.

use std::fmt;

use crate::builder::HostBuilder;
use crate::config::{Config, ServiceSpec};
use crate::lifetime::Lifetime;
use crate::report::ShutdownReport;
use crate::signals::EarlySignals;
use crate::supervisor;

/// Runs background services and tracked tasks, and shuts them down in three phases when a
/// signal arrives, [`Lifetime::stop`] is called, or a service fails; then returns a
/// [`ShutdownReport`].
///
/// ```
/// use std::time::Duration;
/// use gracefully::Reason;
/// use gracefully_host::{Host, Outcome, Phase, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let host = Host::builder()
///     .handle_signals(false) // this example stops itself
///     .service("worker", service_fn(|stopping, _cx| async move {
///         stopping.cancelled().await; // honours its token
///     }))
///     .build()
///     .expect("valid configuration");
///
/// let lifetime = host.lifetime();
/// tokio::spawn(async move {
///     lifetime.started().cancelled().await;
///     lifetime.stop(Reason::shutdown().with_message("done"));
/// });
///
/// let report = host.run().await;
/// let worker = report.entry("worker").unwrap();
/// assert_eq!(worker.phase(), Phase::Drain);
/// assert_eq!(worker.outcome(), &Outcome::Completed);
/// assert_eq!(report.exit_code(), 0);
/// # }
/// ```
///
/// In `main`, use [`run_and_exit`](Self::run_and_exit) so the process exits with the
/// report's code.
///
/// # The shutdown sequence
///
/// ```text
/// trigger (signal | lifetime.stop | failed service)        readiness fails at once
///  └ 0. pre-stop delay (default 0)                          for load balancers to notice
///  └ 1. drain:  `stopping` fires; each service's own token fires in reverse start order.
///               In-flight work continues.       budget: shutdown_timeout − cancel_grace − pre_stop_delay
///  └ 2. cancel: `hard_stop` fires with ReasonKind::Shutdown; everything below it is cancelled.
///                                               budget: cancel_grace (default 5 s)
///  └ 3. abort:  what still runs is dropped and named in the report; exit code non-zero.
/// ```
///
/// A phase ends early once every service and tracked task has ended. A second signal
/// skips straight to the abort. However the sequence is cut short, `stopping`,
/// `hard_stop` and `stopped` all fire, in that order. The abort phase drops aborted work on
/// a thread of its own and waits for it at most 200 ms, so a destructor that blocks (or
/// never returns) cannot hold up `run`; the report names that work as still dropping.
///
/// *Anchors:* .NET's Generic Host (`IHost.RunAsync`), which has one stop signal, a single
/// timeout after which it simply returns, no report, and exits 0 after a failed
/// BackgroundService. tokio-graceful-shutdown's `Toplevel::handle_shutdown_requests`
/// (one phase, no report). Go's `http.Server.Shutdown(ctx)` covers only the drain.
pub struct Host {
    pub(crate) config: Config,
    pub(crate) services: Vec<ServiceSpec>,
    /// `dependencies[i]`: the services service `i` depends on (indexes into `services`).
    pub(crate) dependencies: Vec<Vec<usize>>,
    pub(crate) lifetime: Lifetime,
    /// Signals taken before the host was built ([`HostBuilder::signals`]).
    pub(crate) early_signals: Option<EarlySignals>,
}

impl Host {
    /// A builder with the defaults: shutdown timeout 30 s, cancel grace 5 s, no pre-stop
    /// delay, startup timeout 30 s, signals handled.
    pub fn builder() -> HostBuilder {
        HostBuilder::new()
    }

    /// The host's lifetime: take it before [`run`](Self::run) to stop the host from
    /// elsewhere, watch its state, or spawn tracked tasks.
    pub fn lifetime(&self) -> Lifetime {
        self.lifetime.clone()
    }

    /// Starts every service, waits for a trigger, runs the shutdown sequence, and returns
    /// the report (also logged through `tracing`: at `INFO` when clean, `ERROR`
    /// otherwise). While it runs, [`Lifetime::current`] returns this host's lifetime.
    ///
    /// Needs a tokio runtime with the time driver: `#[tokio::main]` has it. (Signal
    /// handling runs on a thread of its own and needs nothing from this runtime.) Use the
    /// multi-thread runtime so a service that blocks cannot stall the others.
    ///
    /// # Cancel safety
    ///
    /// Dropping this future before it completes skips the shutdown sequence: services and
    /// tracked tasks keep running detached, and no report is made. Let it complete.
    pub async fn run(self) -> ShutdownReport {
        let Host {
            config,
            services,
            dependencies,
            lifetime,
            early_signals,
        } = self;
        supervisor::run(config, services, dependencies, lifetime, early_signals).await
    }

    /// [`run`](Self::run), then exits the process with the report's
    /// [`exit_code`](ShutdownReport::exit_code) — without waiting for tasks that were
    /// aborted but still block a thread. For `main`:
    ///
    /// ```no_run
    /// # use gracefully_host::Host;
    /// #[tokio::main]
    /// async fn main() {
    ///     let host = Host::builder().build().expect("valid configuration");
    ///     host.run_and_exit().await
    /// }
    /// ```
    pub async fn run_and_exit(self) -> ! {
        let report = self.run().await;
        std::process::exit(report.exit_code())
    }
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.services.iter().map(|s| s.name.as_ref()).collect();
        f.debug_struct("Host")
            .field("config", &self.config)
            .field("services", &names)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}
