//! [`Lifetime`]: the host's state, its tokens, and the way to ask it to stop.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::Location;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use gracefully::{CancellationSource, CancellationToken, Reason};
use tokio::time::Instant;

use crate::dropper::Dropper;
use crate::outcome::TaskOutput;
use crate::report::Phase;
use crate::tracker::{Shielded, Tracker};

/// Where a host is in its life. Moves only forward:
/// `Starting → Running → Draining → Stopping → Stopped` (a host asked to stop while still
/// starting goes from `Starting` straight to `Draining`).
///
/// | state | what is happening | token fired on entry |
/// |---|---|---|
/// | `Starting` | start steps run; not ready | — |
/// | `Running` | every start step finished; ready until a stop is requested (then the pre-stop delay runs, still `Running` but no longer ready) | [`Lifetime::started`] |
/// | `Draining` | phase 1: take no new work, let in-flight work finish | [`Lifetime::stopping`] |
/// | `Stopping` | phases 2 and 3: in-flight work is cancelled, then stragglers are aborted | [`Lifetime::hard_stop`] |
/// | `Stopped` | [`Host::run`](crate::Host::run) is returning its report | [`Lifetime::stopped`] |
///
/// *Anchors:* .NET's `IHostApplicationLifetime` events (`ApplicationStarted`,
/// `ApplicationStopping`, `ApplicationStopped`); .NET has no separate drain and cancel states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LifecycleState {
    /// Start steps are running.
    Starting,
    /// Every start step finished; serving.
    Running,
    /// Phase 1 of shutdown: in-flight work may finish, no new work is taken.
    Draining,
    /// Phases 2 and 3 of shutdown: in-flight work is cancelled, then aborted.
    Stopping,
    /// The host has stopped; its report is being returned.
    Stopped,
}

/// The fine-grained stage behind [`LifecycleState`] and [`Phase`], in one atomic byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(crate) enum Stage {
    Starting = 0,
    Running = 1,
    PreStop = 2,
    Drain = 3,
    Cancel = 4,
    Abort = 5,
    Stopped = 6,
}

impl Stage {
    fn from_u8(value: u8) -> Stage {
        match value {
            0 => Stage::Starting,
            1 => Stage::Running,
            2 => Stage::PreStop,
            3 => Stage::Drain,
            4 => Stage::Cancel,
            5 => Stage::Abort,
            _ => Stage::Stopped,
        }
    }

    /// The report phase of work that ends during this stage.
    pub(crate) fn phase(self) -> Phase {
        match self {
            Stage::Starting => Phase::Starting,
            Stage::Running => Phase::Running,
            Stage::PreStop => Phase::PreStop,
            Stage::Drain => Phase::Drain,
            Stage::Cancel => Phase::Cancel,
            // Work that ends once the host stopped was dropped by the abort.
            Stage::Abort | Stage::Stopped => Phase::Abort,
        }
    }

    fn state(self) -> LifecycleState {
        match self {
            Stage::Starting => LifecycleState::Starting,
            Stage::Running | Stage::PreStop => LifecycleState::Running,
            Stage::Drain => LifecycleState::Draining,
            Stage::Cancel | Stage::Abort => LifecycleState::Stopping,
            Stage::Stopped => LifecycleState::Stopped,
        }
    }
}

/// The state every [`Lifetime`] handle shares.
///
/// Each source below is fired once, by the party named, and never un-fired. Together they
/// make the sequence of DESIGN.md §4: `stop_requested` (trigger) → `stopping` (drain) →
/// `hard_stop` (cancel) → `stopped`.
pub(crate) struct Shared {
    /// The current [`Stage`]. Written only by the host's supervisor (and, for
    /// `Starting → Running`, by the last service to finish its start step); only moves
    /// forward.
    stage: AtomicU8,
    /// Fired by the last start step to finish (or by `run` when there are no services).
    pub(crate) started: CancellationSource,
    /// The trigger: fired by [`Lifetime::stop`] (signals and failed services call it too).
    /// Readiness turns false the moment it fires.
    pub(crate) stop_requested: CancellationSource,
    /// When the trigger fired; set just before `stop_requested` is fired (first caller
    /// wins), so whoever sees the trigger also sees the instant.
    pub(crate) stop_requested_at: OnceLock<Instant>,
    /// Drain begins (phase 1).
    pub(crate) stopping: CancellationSource,
    /// Cancel begins (phase 2); per-service stop tokens and in-flight operations descend
    /// from it, so it cascades with `ReasonKind::Shutdown`.
    pub(crate) hard_stop: CancellationSource,
    /// The host returned.
    pub(crate) stopped: CancellationSource,
    /// A second signal: skip to the abort phase now.
    pub(crate) force: CancellationSource,
    /// Services whose start step has not finished yet.
    pub(crate) starting: AtomicUsize,
    /// Tracked tasks.
    pub(crate) tracker: Tracker,
    /// Where the abort phase drops what it aborted (see `dropper.rs`).
    pub(crate) dropper: Arc<Dropper>,
}

impl Shared {
    pub(crate) fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    /// Moves to `stage` if that is forward; returns whether it moved.
    pub(crate) fn advance(&self, stage: Stage) -> bool {
        let mut current = self.stage.load(Ordering::Acquire);
        loop {
            if current >= stage as u8 {
                return false;
            }
            match self.stage.compare_exchange_weak(
                current,
                stage as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// The report phase of work ending now: the current stage's, but at least `PreStop`
    /// once a stop was requested (the supervisor may not have moved on yet).
    pub(crate) fn end_phase(&self) -> Phase {
        let phase = self.stage().phase();
        if phase < Phase::PreStop && self.stop_requested.is_cancelled() {
            Phase::PreStop
        } else {
            phase
        }
    }

    /// A service finished its start step; the last one makes the host ready.
    pub(crate) fn service_started(&self) {
        if self.starting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.mark_started();
        }
    }

    /// `Starting → Running`, unless a stop was requested first.
    pub(crate) fn mark_started(&self) {
        if self.stop_requested.is_cancelled() || !self.advance(Stage::Running) {
            return;
        }
        self.started
            .cancel_with(Reason::requested().with_message("host started"));
        tracing::info!("host started: every start step finished; ready");
        // A stop requested between the check and the advance: the supervisor may have
        // found the host still starting and left the stage alone; move on for it.
        if self.stop_requested.is_cancelled() {
            self.advance(Stage::PreStop);
        }
    }
}

/// A handle to the host's lifetime: its state, its tokens, readiness, `stop`, and tracked
/// tasks. Cheap to clone (one reference count); every clone sees the same host.
///
/// Get one from [`Host::lifetime`](crate::Host::lifetime) before running, from a
/// [`ServiceContext`](crate::ServiceContext) inside a service, or — from any code in the
/// process — with [`Lifetime::current`] while a host runs.
///
/// ```
/// use std::time::Duration;
/// use gracefully::Reason;
/// use gracefully_host::{Host, LifecycleState};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let host = Host::builder().handle_signals(false).build().unwrap();
/// let lifetime = host.lifetime();
/// assert_eq!(lifetime.state(), LifecycleState::Starting);
///
/// let running = tokio::spawn(host.run());
/// lifetime.started().cancelled().await;          // every start step finished
/// assert!(lifetime.is_ready());
///
/// lifetime.stop(Reason::shutdown().with_message("deploy"));
/// assert!(!lifetime.is_ready());                  // readiness fails at once
/// let report = running.await.unwrap();
/// assert_eq!(lifetime.state(), LifecycleState::Stopped);
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
    pub(crate) shared: Arc<Shared>,
}

/// The lifetime of the host that is running now, for [`Lifetime::current`].
static CURRENT: Mutex<Option<Lifetime>> = Mutex::new(None);

impl Lifetime {
    pub(crate) fn new(service_count: usize) -> Lifetime {
        Lifetime {
            shared: Arc::new(Shared {
                stage: AtomicU8::new(Stage::Starting as u8),
                started: CancellationSource::new(),
                stop_requested: CancellationSource::new(),
                stop_requested_at: OnceLock::new(),
                stopping: CancellationSource::new(),
                hard_stop: CancellationSource::new(),
                stopped: CancellationSource::new(),
                force: CancellationSource::new(),
                starting: AtomicUsize::new(service_count),
                tracker: Tracker::new(),
                dropper: Dropper::new(),
            }),
        }
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
            shared: Arc::clone(&self.shared),
        }
    }

    /// The current state. One atomic load.
    pub fn state(&self) -> LifecycleState {
        self.shared.stage().state()
    }

    /// Whether the host is ready for new work: every start step finished and no stop has
    /// been requested. Turns `false` the instant [`stop`](Self::stop) is called (or a signal
    /// or a failed service triggers shutdown) — *before* the pre-stop delay, so a readiness
    /// probe answers 503 while the load balancer still sends traffic. Two atomic loads.
    pub fn is_ready(&self) -> bool {
        self.shared.started.is_cancelled() && !self.shared.stop_requested.is_cancelled()
    }

    /// Fires when every service's start step has finished (the host is ready).
    /// Never fires if a stop is requested before that.
    ///
    /// *Anchors:* .NET `ApplicationStarted`.
    pub fn started(&self) -> CancellationToken {
        self.shared.started.token()
    }

    /// Fires the instant shutdown is triggered (before the pre-stop delay), with the
    /// trigger's reason: the token behind [`is_ready`](Self::is_ready).
    pub fn stop_requested(&self) -> CancellationToken {
        self.shared.stop_requested.token()
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
        self.shared.stopping.token()
    }

    /// Fires when the cancel phase begins (the drain budget is spent), with
    /// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown). Make every in-flight
    /// operation's token a child of it (`lifetime.hard_stop().child()`) so it is cancelled
    /// then. Also fires when the host stops, if it had not yet.
    ///
    /// *Anchors:* no .NET or tokio-graceful-shutdown equivalent: both have a single stop
    /// signal, then abandon what still runs.
    pub fn hard_stop(&self) -> CancellationToken {
        self.shared.hard_stop.token()
    }

    /// Fires when the host has stopped, just before [`Host::run`](crate::Host::run)
    /// returns.
    ///
    /// *Anchors:* .NET `ApplicationStopped`.
    pub fn stopped(&self) -> CancellationToken {
        self.shared.stopped.token()
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
        if self.shared.stop_requested.is_cancelled() {
            return false;
        }
        let _ = self.shared.stop_requested_at.set(Instant::now());
        // `cancel_with` is `#[track_caller]` too, so the origin is our caller.
        self.shared.stop_requested.cancel_with(reason)
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
    /// Must be called from within a tokio runtime.
    ///
    /// *Anchors:* tokio-util's `TaskTracker` (which has no names, outcomes or report);
    /// tokio-graceful-shutdown's nested subsystems; .NET has none (fire-and-forget tasks are
    /// invisible to the host).
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        Tracker::spawn(&self.shared, name.into(), async move {
            task.await.into_result()
        });
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
        Tracker::shield(
            &self.shared,
            format!("shield at {}:{}", location.file(), location.line()),
            cleanup,
        )
    }
}

impl fmt::Debug for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifetime")
            .field("state", &self.state())
            .field("ready", &self.is_ready())
            .field(
                "stop_reason",
                &self.shared.stop_requested.as_token().reason(),
            )
            .finish()
    }
}

/// Clears [`CURRENT`] on drop if it still holds this host's lifetime.
pub(crate) struct CurrentGuard {
    shared: Arc<Shared>,
}

impl Drop for CurrentGuard {
    fn drop(&mut self) {
        let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|l| Arc::ptr_eq(&l.shared, &self.shared))
        {
            *current = None;
        }
    }
}
