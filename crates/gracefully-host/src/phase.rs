//! [`Phase`]: the host's timeline, one enum for where the host is and for when a piece of
//! work ended.

use std::fmt;

/// A step of the host's life. [`Lifetime::phase`](crate::Lifetime::phase) says which one the
/// host is in; a [`ReportEntry`](crate::ReportEntry) says in which one a service or tracked
/// task ended. The host moves only forward, and the shutdown steps are the sequence of
/// `docs/architecture.md`, "The shutdown contract":
///
/// ```text
///            ready                 trigger: stop requested, readiness fails
/// Starting ───────► Running ──────────────► PreStop ─► Drain ─► Cancel ─► Abort ─► Stopped
///     │                                       ▲        stopping  hard_stop  dropped   report
///     └─── stopped while starting ────────────┘
/// ```
///
/// | phase | what is happening | token fired on entry | budget |
/// |---|---|---|---|
/// | `Starting` | start steps run; not ready | — | startup timeout, per start step |
/// | `Running` | every start step finished; ready | [`started`](crate::Lifetime::started) | — |
/// | `PreStop` | phase 0: a stop was requested, readiness fails, work goes on so load balancers notice | [`stop_requested`](crate::Lifetime::stop_requested) (just before) | `pre_stop_delay` |
/// | `Drain` | phase 1: take no new work; in-flight work may finish | [`stopping`](crate::Lifetime::stopping) | `shutdown_timeout − cancel_grace − pre_stop_delay` |
/// | `Cancel` | phase 2: in-flight work is cancelled (`ReasonKind::Shutdown`) | [`hard_stop`](crate::Lifetime::hard_stop) | `cancel_grace` |
/// | `Abort` | phase 3: what still runs is dropped and named in the report | — | 200 ms for destructors |
/// | `Stopped` | [`Host::run`](crate::Host::run) is returning its report | [`stopped`](crate::Lifetime::stopped) | — |
///
/// A host asked to stop while still starting goes from `Starting` to `PreStop`: `Running`
/// means every start step finished. A phase ends early once every service and tracked task
/// has ended, and a second signal cuts the sequence short; either way every later phase is
/// still entered (its token fired) in order, so whatever awaits a token hears it.
///
/// In a report, a piece of work's phase is the one the host was in when it ended: `Starting`
/// or `Running` for work that ended before the stop request (a failed start step, a
/// finished batch job), and never `Stopped` (work still running then was aborted: `Abort`).
///
/// *Anchors:* .NET's `IHostApplicationLifetime` events (`ApplicationStarted`,
/// `ApplicationStopping`, `ApplicationStopped`); .NET has no pre-stop, drain or cancel
/// step of its own. Kubernetes' pod termination (preStop hook, SIGTERM, grace period,
/// SIGKILL) is the model for `PreStop` → `Drain` → `Abort`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Start steps are running; the host is not ready.
    Starting = 0,
    /// Every start step finished and no stop was requested: the host is ready.
    Running = 1,
    /// Phase 0 of shutdown: between the stop request and the drain (the pre-stop delay).
    PreStop = 2,
    /// Phase 1: `stopping` fired; in-flight work may finish.
    Drain = 3,
    /// Phase 2: `hard_stop` fired; in-flight work is cancelled.
    Cancel = 4,
    /// Phase 3: what still ran at the shutdown timeout (or at a second signal) is dropped.
    Abort = 5,
    /// The host has stopped; its report is being returned.
    Stopped = 6,
}

impl Phase {
    /// Every phase, in order.
    pub(crate) const ALL: [Phase; 7] = [
        Phase::Starting,
        Phase::Running,
        Phase::PreStop,
        Phase::Drain,
        Phase::Cancel,
        Phase::Abort,
        Phase::Stopped,
    ];

    /// The phase stored as `value` by `phase as u8`.
    pub(crate) fn from_u8(value: u8) -> Phase {
        Phase::ALL[usize::from(value).min(Phase::ALL.len() - 1)]
    }

    /// A short lowercase name: `starting`, `running`, `pre-stop`, `drain`, `cancel`,
    /// `abort`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::PreStop => "pre-stop",
            Phase::Drain => "drain",
            Phase::Cancel => "cancel",
            Phase::Abort => "abort",
            Phase::Stopped => "stopped",
        }
    }

    /// Whether this is a step of the shutdown: `PreStop` or later.
    pub(crate) fn is_shutdown(self) -> bool {
        self >= Phase::PreStop
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
