//! [`Lifetime`]: the handle to a host's [`HostState`] — its phase, its tokens, its tracked
//! tasks — and the way to ask it to stop.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::{Arc, Mutex, PoisonError};

use gracefully::{CancellationToken, Reason};

use crate::dropper::Dropper;
use crate::operations::Operations;
use crate::outcome::TaskOutput;
use crate::phase::Phase;
use crate::timeline::Timeline;
use crate::tracker::{self, Shielded, TaskHost, TaskTracker};

/// Everything the [`Lifetime`] handles of one host share: the timeline (phase and tokens),
/// the tracked tasks, and the dropper the abort phase drops aborted work on.
pub(crate) struct HostState {
    pub(crate) timeline: Timeline,
    pub(crate) tracker: TaskTracker,
    /// In an `Arc` of its own: its thread holds a `Weak` to it (see `dropper.rs`).
    pub(crate) dropper: Arc<Dropper>,
    /// The operations registry, if one was installed.
    pub(crate) operations: Option<Operations>,
    /// The runtime the host runs on, set when it starts: tracked tasks are spawned there,
    /// wherever they are spawned from (see `tracker::track`).
    pub(crate) runtime: std::sync::OnceLock<tokio::runtime::Handle>,
}

impl AsRef<Dropper> for HostState {
    fn as_ref(&self) -> &Dropper {
        &self.dropper
    }
}

impl TaskHost for HostState {
    fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    fn operations(&self) -> Option<&Operations> {
        self.operations.as_ref()
    }

    fn runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.runtime.get()
    }

    fn end_of_task(&self) -> (Phase, bool) {
        let after_stop = self.timeline.stop_requested.is_cancelled();
        (self.timeline.end_phase(), after_stop)
    }
}

/// A handle to the host's lifetime: its phase, its tokens, readiness, `stop`, and tracked
/// tasks. Cheap to clone (one reference count); every clone sees the same host.
///
/// Get one from [`Host::lifetime`](crate::Host::lifetime) before running, from a
/// [`ServiceContext`](crate::ServiceContext) inside a service, or — from any code in the
/// process — with [`Lifetime::current`] while a host runs.
///
/// ```
/// use std::time::Duration;
/// use gracefully::Reason;
/// use gracefully_host::{Host, Phase};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let host = Host::builder().handle_signals(false).build().unwrap();
/// let lifetime = host.lifetime();
/// assert_eq!(lifetime.phase(), Phase::Starting);
///
/// let running = tokio::spawn(host.run());
/// lifetime.started().cancelled().await;          // every start step finished
/// assert!(lifetime.is_ready());
///
/// lifetime.stop(Reason::shutdown().with_message("deploy"));
/// assert!(!lifetime.is_ready());                  // readiness fails at once
/// let report = running.await.unwrap();
/// assert_eq!(lifetime.phase(), Phase::Stopped);
/// assert_eq!(report.exit_code(), 0);
/// # }
/// ```
///
/// *Anchors:* .NET's `IHostApplicationLifetime` (`ApplicationStarted`,
/// `ApplicationStopping`, `ApplicationStopped`, `StopApplication()`); here a stop carries a
/// [`Reason`], and there are two shutdown tokens (drain and hard stop) instead of one.
/// tokio-graceful-shutdown's `SubsystemHandle::request_shutdown` /
/// `on_shutdown_requested`. Go has no equivalent beyond `signal.NotifyContext`.
#[derive(Clone)]
pub struct Lifetime {
    pub(crate) state: Arc<HostState>,
}

/// The lifetime of the host that is running now, for [`Lifetime::current`].
static CURRENT: Mutex<Option<Lifetime>> = Mutex::new(None);

impl Lifetime {
    pub(crate) fn new(service_count: usize, operations: Option<Operations>) -> Lifetime {
        Lifetime {
            state: Arc::new(HostState {
                timeline: Timeline::new(service_count),
                tracker: TaskTracker::new(),
                dropper: Dropper::new(),
                operations,
                runtime: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The operations registry installed with
    /// [`HostBuilder::operations`](crate::HostBuilder::operations), if any.
    pub fn operations(&self) -> Option<&Operations> {
        self.state.operations.as_ref()
    }

    /// The host's timeline (phase and tokens).
    pub(crate) fn timeline(&self) -> &Timeline {
        &self.state.timeline
    }

    /// The lifetime of the host that is running in this process now (set when
    /// [`Host::run`](crate::Host::run) begins, cleared when it returns), so code far from
    /// `main` — a library, a request handler — can reach it without threading it through.
    /// `None` if no host runs. If several hosts run at once, the one that started last.
    ///
    /// Prefer passing the handle explicitly where you can; this is the escape hatch.
    pub fn current() -> Option<Lifetime> {
        CURRENT
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes this the [`current`](Self::current) lifetime until the guard drops.
    pub(crate) fn make_current(&self) -> CurrentGuard {
        *CURRENT.lock().unwrap_or_else(PoisonError::into_inner) = Some(self.clone());
        CurrentGuard {
            state: Arc::clone(&self.state),
        }
    }

    /// The phase the host is in now (see [`Phase`] for the timeline). One atomic load.
    pub fn phase(&self) -> Phase {
        self.timeline().phase()
    }

    /// Whether the host is ready for new work: every start step finished and no stop has
    /// been requested. Turns `false` the instant [`stop`](Self::stop) is called (or a signal
    /// or a failed service triggers shutdown) — *before* the pre-stop delay, so a readiness
    /// probe answers 503 while the load balancer still sends traffic. Two atomic loads.
    pub fn is_ready(&self) -> bool {
        self.timeline().started.is_cancelled() && !self.timeline().stop_requested.is_cancelled()
    }

    /// Fires when every service's start step has finished (the host is ready).
    /// Never fires if a stop is requested before that.
    ///
    /// *Anchors:* .NET `ApplicationStarted`.
    pub fn started(&self) -> CancellationToken {
        self.timeline().started.token()
    }

    /// Fires the instant shutdown is triggered (before the pre-stop delay), with the
    /// trigger's reason: the token behind [`is_ready`](Self::is_ready).
    pub fn stop_requested(&self) -> CancellationToken {
        self.timeline().stop_requested.token()
    }

    /// Fires when the drain phase begins: stop taking new work (stop accepting, stop
    /// fetching jobs); in-flight work continues. Its reason has
    /// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown).
    ///
    /// Each service's own token ([`ServiceContext::stopping`](crate::ServiceContext::stopping))
    /// fires during this phase too, in reverse start order.
    ///
    /// *Anchors:* .NET `ApplicationStopping` and a BackgroundService's `stoppingToken`.
    pub fn stopping(&self) -> CancellationToken {
        self.timeline().stopping.token()
    }

    /// Fires when the cancel phase begins (the drain budget is spent), with
    /// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown). Make every in-flight
    /// operation's token a child of it (`lifetime.hard_stop().child()`) so it is cancelled
    /// then. Also fires when the host stops, if it had not yet.
    ///
    /// *Anchors:* no .NET or tokio-graceful-shutdown equivalent: both have a single stop
    /// signal, then abandon what still runs.
    pub fn hard_stop(&self) -> CancellationToken {
        self.timeline().hard_stop.token()
    }

    /// Fires when the host has stopped, just before [`Host::run`](crate::Host::run)
    /// returns.
    ///
    /// *Anchors:* .NET `ApplicationStopped`.
    pub fn stopped(&self) -> CancellationToken {
        self.timeline().stopped.token()
    }

    /// Requests a graceful shutdown with `reason` (pass
    /// [`Reason::shutdown()`](Reason::shutdown) with a message saying why). Returns whether
    /// this call triggered it: the first request wins and fixes the reason recorded in the
    /// report; later ones change nothing.
    ///
    /// Does not wait for the shutdown; await [`stopped`](Self::stopped) for that. Callable
    /// from any thread, before or while the host runs; a request made before
    /// [`Host::run`](crate::Host::run) makes it shut down as soon as it starts.
    ///
    /// *Anchors:* .NET `StopApplication()` (no reason there);
    /// tokio-graceful-shutdown `request_shutdown()`.
    #[track_caller]
    pub fn stop(&self, reason: Reason) -> bool {
        // `#[track_caller]` all the way down: the reason's origin is our caller.
        self.timeline().request_stop(reason)
    }

    /// Runs `task` as a *tracked task*: a tokio task that is part of shutdown accounting.
    /// The host waits for it in the drain and cancel phases, aborts it if it is still
    /// running at the end, and lists it in the [`ShutdownReport`](crate::ShutdownReport)
    /// under `name` (with its phase, time and outcome; many tasks of one name ending alike
    /// share one line with a count).
    ///
    /// `task` may return `()` or a `Result`; an `Err` that
    /// [is a cancellation](gracefully::is_cancellation) counts as cancelled, any other `Err`
    /// (or a panic, which is caught) as failed. Give it the token it should honour:
    /// [`stopping`](Self::stopping) for work that should end when draining starts (idle
    /// loops, consumers), [`hard_stop`](Self::hard_stop) for in-flight work that may finish
    /// during the drain.
    ///
    /// ```
    /// # use gracefully_host::Host;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let host = Host::builder().handle_signals(false).build().unwrap();
    /// let lifetime = host.lifetime();
    /// let stopping = lifetime.stopping();
    /// lifetime.spawn("cache-refresh", async move {
    ///     // refresh until the drain begins
    ///     stopping.cancelled().await;
    /// });
    /// # }
    /// ```
    ///
    /// Tasks that end before a stop is requested are only counted, not listed, so a
    /// long-running host does not accumulate memory; a failure among them is logged when it
    /// happens and still makes the exit code 1. Spawned after the
    /// host stopped, the task still runs, untracked, with a warning.
    ///
    /// Must be called from within a tokio runtime. Once the host runs, the task runs on the
    /// host's runtime, wherever it is spawned from: code with a runtime of its own (a
    /// library's `block_on`) may drop that runtime as soon as it has its answer, and the task
    /// still finishes and records its end. Before the host runs, it runs on the caller's.
    ///
    /// *Anchors:* tokio-util's `TaskTracker` (which has no names, outcomes or report);
    /// tokio-graceful-shutdown's nested subsystems; .NET has none (fire-and-forget tasks are
    /// invisible to the host).
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        tracker::spawn(
            &self.state,
            name.into(),
            async move { task.await.into_result() },
        );
    }

    /// Runs `cleanup` to completion even if the caller stops waiting for it: the work is a
    /// tracked task (named after the call site), so dropping the returned future does not
    /// cancel it. Only the abort phase stops it.
    ///
    /// Use it for cleanup that must not be cut short when the caller is dropped — a
    /// rollback, releasing a lease, flushing a buffer — typically in code that may itself
    /// be cancelled.
    ///
    /// ```
    /// # use gracefully_host::Host;
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// # let host = Host::builder().handle_signals(false).build().unwrap();
    /// let lifetime = host.lifetime();
    /// let flushed = lifetime.shield(async { /* flush the buffer */ 42 });
    /// assert_eq!(flushed.await, Ok(42));
    /// # }
    /// ```
    ///
    /// Must be called from within a tokio runtime.
    ///
    /// *Anchors:* Trio's shielded cancel scopes; C#'s "don't pass the token to the cleanup";
    /// tokio-graceful-shutdown has no equivalent.
    #[track_caller]
    pub fn shield<F>(&self, cleanup: F) -> Shielded<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let location = Location::caller();
        tracker::shield(
            &self.state,
            format!("shield at {}:{}", location.file(), location.line()),
            cleanup,
        )
    }
}

impl fmt::Debug for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifetime")
            .field("phase", &self.phase())
            .field("ready", &self.is_ready())
            .field(
                "stop_reason",
                &self.timeline().stop_requested.as_token().reason(),
            )
            .finish()
    }
}

/// Clears [`CURRENT`] on drop if it still holds this host's lifetime.
pub(crate) struct CurrentGuard {
    state: Arc<HostState>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.state, &self.state))
        {
            *current = None;
        }
    }
}
