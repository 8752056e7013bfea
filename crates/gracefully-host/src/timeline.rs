//! [`Timeline`]: the phase a host is in and the tokens fired along the way — the state
//! behind every [`Lifetime`](crate::Lifetime) handle, apart from tracked tasks.
//!
//! Each source below is fired once, by the party named, and never un-fired. Together with
//! the phase they make the sequence of `docs/architecture.md`, "The shutdown contract":
//! `stop_requested` (trigger) → `stopping` (drain) → `hard_stop` (cancel) → `stopped`.
//!
//! Invariants:
//!
//! 1. `phase` only moves forward ([`Timeline::advance`] is a compare-exchange that never
//!    goes back). The last start step to finish moves it `Starting → Running`
//!    ([`Timeline::mark_started`]); the supervisor moves it from `PreStop` on.
//! 2. `Running` means every start step finished: it is entered only from `Starting`, by
//!    the last start step. A host stopped while starting goes from `Starting` to
//!    `PreStop`, and a start step finishing after that cannot move it back (invariant 1),
//!    so `started` does not fire.
//! 3. `stop_requested_at` is set before `stop_requested` fires (first caller wins), so
//!    whoever sees the trigger also sees the instant.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use gracefully::{CancellationSource, Reason};
use tokio::time::Instant;

use crate::phase::Phase;

pub(crate) struct Timeline {
    /// The current [`Phase`], as `u8` (invariant 1).
    phase: AtomicU8,
    /// Services whose start step has not finished yet.
    starting: AtomicUsize,
    /// Fired by the last start step to finish (or by the supervisor when there are no
    /// services).
    pub(crate) started: CancellationSource,
    /// The trigger: fired by [`Timeline::request_stop`] (signals and failed services call
    /// it too). Readiness turns false the moment it fires.
    pub(crate) stop_requested: CancellationSource,
    /// When the trigger fired (invariant 3).
    pub(crate) stop_requested_at: OnceLock<Instant>,
    /// Drain begins (phase 1). Fired by the supervisor.
    pub(crate) stopping: CancellationSource,
    /// Cancel begins (phase 2); per-service stop tokens and in-flight operations descend
    /// from it, so it cascades with `ReasonKind::Shutdown`. Fired by the supervisor.
    pub(crate) hard_stop: CancellationSource,
    /// The host returned. Fired by the supervisor.
    pub(crate) stopped: CancellationSource,
    /// A second signal: skip to the abort phase now. Fired by the signal watcher.
    pub(crate) force: CancellationSource,
}

impl Timeline {
    pub(crate) fn new(service_count: usize) -> Timeline {
        Timeline {
            phase: AtomicU8::new(Phase::Starting as u8),
            starting: AtomicUsize::new(service_count),
            started: CancellationSource::new(),
            stop_requested: CancellationSource::new(),
            stop_requested_at: OnceLock::new(),
            stopping: CancellationSource::new(),
            hard_stop: CancellationSource::new(),
            stopped: CancellationSource::new(),
            force: CancellationSource::new(),
        }
    }

    /// The current phase. One atomic load.
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Moves to `phase` if that is forward (invariant 1); returns whether it moved.
    pub(crate) fn advance(&self, phase: Phase) -> bool {
        let mut current = self.phase.load(Ordering::Acquire);
        loop {
            if current >= phase as u8 {
                return false;
            }
            match self.phase.compare_exchange_weak(
                current,
                phase as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Starts the shutdown sequence with `reason`, unless it already started; returns
    /// whether this call started it.
    #[track_caller]
    pub(crate) fn request_stop(&self, reason: Reason) -> bool {
        if self.stop_requested.is_cancelled() {
            return false;
        }
        let _ = self.stop_requested_at.set(Instant::now()); // invariant 3
        // `cancel_with` is `#[track_caller]` too, so the origin is our caller's caller.
        self.stop_requested.cancel_with(reason)
    }

    /// The phase in which work that ends now ended, for the report: the current one, but
    /// `PreStop` at least once a stop was requested (the supervisor may not have moved on
    /// yet), and `Abort` once the host stopped (work still running then was aborted).
    pub(crate) fn end_phase(&self) -> Phase {
        match self.phase() {
            Phase::Starting | Phase::Running if self.stop_requested.is_cancelled() => {
                Phase::PreStop
            }
            Phase::Stopped => Phase::Abort,
            phase => phase,
        }
    }

    /// A service finished its start step; the last one makes the host ready.
    pub(crate) fn service_started(&self) {
        if self.starting.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.mark_started();
        }
    }

    /// `Starting → Running` (invariant 2), unless a stop was requested first.
    pub(crate) fn mark_started(&self) {
        if self.stop_requested.is_cancelled() || !self.advance(Phase::Running) {
            return;
        }
        self.started
            .cancel_with(Reason::requested().with_message("host started"));
        tracing::info!("host started: every start step finished; ready");
    }
}
