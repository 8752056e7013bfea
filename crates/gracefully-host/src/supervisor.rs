//! The host's supervisor: starts the service tasks, waits for a trigger, and walks the
//! shutdown sequence of `docs/architecture.md`, "The shutdown contract" (pre-stop → drain
//! → cancel → abort), then makes the report.
//!
//! The supervisor is the only writer of the phase from `PreStop` on and the only one that
//! fires `stopping`, `hard_stop`, the per-service stop tokens and `stopped`. Service tasks
//! report their end through their `JoinHandle`s (so even a panic outside the service's own
//! code, or an abort, is seen); tracked tasks through the tracker.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::stream::StreamExt;
use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationSource, CancellationToken, Reason, ReasonKind};
use tokio::time::Instant;
use tracing::Instrument;

use crate::abort::abort_stragglers;
use crate::board::{Board, Slot, Waited, end_of};
use crate::config::{Config, ServiceSpec};
use crate::context::ServiceContext;
use crate::dropper::{DropElsewhere, Straggler};
use crate::lifetime::Lifetime;
use crate::operations::operation_outcome;
use crate::outcome::Outcome;
use crate::phase::Phase;
use crate::report::{RawReport, ServiceRecord, ShutdownReport};
use crate::service_task::{ServiceEnd, ServiceRun};
use crate::signals::EarlySignals;
use crate::timeline::Timeline;

/// [`Host::run`](crate::Host::run): the whole life of a host, in order.
pub(crate) async fn run(
    config: Config,
    services: Vec<ServiceSpec>,
    dependencies: Vec<Vec<usize>>,
    lifetime: Lifetime,
    early_signals: Option<EarlySignals>,
) -> ShutdownReport {
    let _current = lifetime.make_current();
    // Tracked tasks run here even when code on another runtime spawns them (see
    // `tracker::track`). A host run twice keeps its first runtime's handle.
    let _ = lifetime
        .state
        .runtime
        .set(tokio::runtime::Handle::current());
    // Handlers first, so that by the time the host is ready a signal cannot be missed.
    let signals = match early_signals {
        Some(signals) => {
            signals.attach(&lifetime);
            Some(signals)
        }
        None => config
            .handle_signals
            .then(|| watch_signals(&lifetime))
            .flatten(),
    };
    let board = start_services(&config, services, &dependencies, &lifetime);
    let mut supervisor = Supervisor {
        config,
        lifetime,
        board,
    };
    let trigger = supervisor.wait_for_trigger().await;

    let mut shutdown = supervisor.begin_shutdown(trigger);
    supervisor.pre_stop(&mut shutdown).await;
    supervisor.drain(&mut shutdown).await;
    supervisor.cancel(&mut shutdown).await;
    let tasks_still_dropping = supervisor.abort(&mut shutdown).await;

    // Whatever descends from hard stop, or waits on a service's stop token, and is still
    // waiting hears it now (a shutdown that ended before the cancel phase fired neither).
    let reason = shutdown.reason.clone();
    supervisor.board.stop_all(&reason);
    supervisor.timeline().hard_stop.cancel_with(reason);
    drop(signals); // stops the watcher
    supervisor.report(shutdown, &tasks_still_dropping)
}

/// Starts the signal watcher; logs (and goes on without it) if it cannot.
fn watch_signals(lifetime: &Lifetime) -> Option<EarlySignals> {
    match EarlySignals::install_for_host(lifetime) {
        Ok(signals) => {
            if crate::signals::unattached() > 0 {
                tracing::warn!(
                    "EarlySignals are held but were not handed to this host: hand them over \
                     with HostBuilder::signals, or drop them before it runs (while held they \
                     act on their own: a second signal exits the process at once)"
                );
            }
            Some(signals)
        }
        Err(error) => {
            tracing::error!(%error, "could not install signal handlers; stop the host with Lifetime::stop");
            None
        }
    }
}

/// Spawns every service task at once; each waits for its own dependencies.
fn start_services(
    config: &Config,
    services: Vec<ServiceSpec>,
    dependencies: &[Vec<usize>],
    lifetime: &Lifetime,
) -> Board {
    let started: Vec<CancellationSource> = dependencies
        .iter()
        .map(|_| CancellationSource::new())
        .collect();
    let started_tokens: Vec<CancellationToken> = started.iter().map(|s| s.token()).collect();
    let mut board = Board::new(dependencies);
    for (i, (spec, started)) in services.into_iter().zip(started).enumerate() {
        // Not a child of hard stop: a service is told to stop only once every service that
        // depends on it has ended — in the cancel phase too, where a database pool must
        // outlive the worker still recording how its interrupted jobs ended — and at the
        // abort at the latest (docs/architecture.md, shutdown rule 6).
        let stop = CancellationSource::new();
        let cx = ServiceContext::new(spec.name.clone(), lifetime.clone(), stop.token());
        let task = ServiceRun {
            name: spec.name.clone(),
            service: spec.service,
            cx: cx.clone(),
            policy: spec.options.failure_policy,
            startup_timeout: spec
                .options
                .startup_timeout
                .unwrap_or(config.startup_timeout),
            dependencies: dependencies[i]
                .iter()
                .map(|&d| started_tokens[d].clone())
                .collect(),
            started,
            lifetime: lifetime.clone(),
        };
        let span = tracing::info_span!("service", name = %spec.name);
        // With a registry, the service is an operation, and what it begins runs under it.
        let op = lifetime.operations().map_or_else(Operation::none, |ops| {
            ops.scope().begin(OperationKind::Service, &spec.name, None)
        });
        let stopping = cx.stopping();
        let run = async move {
            let end = op.scoped(task.run()).await;
            op.end(operation_outcome(&end.outcome, stopping.reason()));
            end
        };
        // Boxed so that, if the abort phase drops it unfinished, its destructor runs on the
        // dropper's thread (see `dropper.rs`).
        let task = DropElsewhere::new(
            Box::pin(run.instrument(span)),
            Straggler::Service(i),
            Arc::clone(&lifetime.state),
        );
        let handle = tokio::spawn(task);
        let slot = Slot {
            name: spec.name,
            cx,
            stop,
            abort: handle.abort_handle(),
            end: None,
            still_dropping: false,
        };
        board.add(slot, handle);
    }
    if dependencies.is_empty() {
        lifetime.timeline().mark_started();
    }
    board
}

struct Supervisor {
    config: Config,
    lifetime: Lifetime,
    board: Board,
}

/// The shutdown under way.
struct Shutdown {
    trigger: Reason,
    /// What the shutdown tokens fire with (see [`shutdown_reason`]).
    reason: Reason,
    /// When the stop was requested: the budgets count from here.
    t0: Instant,
    /// Fires at a second signal.
    force: CancellationToken,
    /// When each phase began, by `phase as usize`.
    phase_starts: [Option<Instant>; Phase::ALL.len()],
    /// A second signal cut the sequence short: later phases are entered, not waited in.
    forced: bool,
    /// Every service and tracked task has ended: later phases are not needed.
    done: bool,
}

impl Shutdown {
    fn waited(&mut self, waited: Waited) {
        match waited {
            Waited::AllEnded => self.done = true,
            Waited::Deadline => {}
            Waited::Forced => self.forced = true,
        }
    }

    /// Whether a phase still waits for its budget: nothing has cut the sequence short.
    fn waits(&self) -> bool {
        !self.done && !self.forced
    }
}

impl Supervisor {
    fn timeline(&self) -> &Timeline {
        self.lifetime.timeline()
    }

    /// Running: waits for the trigger and returns it. A host whose services have all
    /// ended stops itself.
    async fn wait_for_trigger(&mut self) -> Reason {
        let trigger = self.lifetime.stop_requested();
        loop {
            tokio::select! {
                biased;
                _ = trigger.cancelled() => break,
                Some((i, joined)) = self.board.running.next(), if self.board.live > 0 => {
                    self.board.record(i, end_of(&self.lifetime, joined));
                    if self.board.live == 0 {
                        self.lifetime
                            .stop(Reason::requested().with_message("every service has finished"));
                    }
                }
            }
        }
        trigger.reason().unwrap_or_else(Reason::shutdown)
    }

    fn begin_shutdown(&self, trigger: Reason) -> Shutdown {
        let config = &self.config;
        tracing::info!(
            %trigger,
            "shutdown requested; pre-stop {:?}, then drain until {:?}, cancel until {:?} after the request",
            config.pre_stop_delay,
            config.shutdown_timeout - config.cancel_grace,
            config.shutdown_timeout
        );
        Shutdown {
            reason: shutdown_reason(&trigger),
            trigger,
            t0: *self.timeline().stop_requested_at.get_or_init(Instant::now),
            force: self.timeline().force.token(),
            phase_starts: [None; Phase::ALL.len()],
            forced: false,
            done: false,
        }
    }

    /// Moves the host into `phase` and notes when.
    fn enter(&self, shutdown: &mut Shutdown, phase: Phase) {
        self.timeline().advance(phase);
        shutdown.phase_starts[phase as usize] = Some(Instant::now());
    }

    /// Waits in the current phase until `deadline`, or until everything has ended or a
    /// second signal arrives (which cut the rest of the sequence short).
    async fn wait_until(&mut self, shutdown: &mut Shutdown, deadline: Instant) {
        let waited = self
            .board
            .wait(&self.lifetime, &shutdown.force, deadline)
            .await;
        shutdown.waited(waited);
    }

    /// Phase 0, pre-stop: readiness already fails (the trigger fired); keep serving a
    /// while. A host stopped while still starting comes here straight from `Starting`.
    async fn pre_stop(&mut self, shutdown: &mut Shutdown) {
        self.enter(shutdown, Phase::PreStop);
        if !self.config.pre_stop_delay.is_zero() {
            let deadline = shutdown.t0 + self.config.pre_stop_delay;
            self.wait_until(shutdown, deadline).await;
        }
    }

    /// Phase 1, drain: `stopping` fires; services are told to stop in reverse dependency
    /// order. Entered even when everything has ended or a second signal cut the shutdown
    /// short, so every token of the sequence fires, in order.
    async fn drain(&mut self, shutdown: &mut Shutdown) {
        self.enter(shutdown, Phase::Drain);
        self.timeline()
            .stopping
            .cancel_with(shutdown.reason.clone());
        self.board.begin_drain(&shutdown.reason);
        if shutdown.waits() {
            let deadline = shutdown.t0 + (self.config.shutdown_timeout - self.config.cancel_grace);
            self.wait_until(shutdown, deadline).await;
        }
    }

    /// Phase 2, cancel: hard stop fires; every in-flight token below it is cancelled.
    async fn cancel(&mut self, shutdown: &mut Shutdown) {
        if shutdown.done {
            return;
        }
        self.enter(shutdown, Phase::Cancel);
        if !shutdown.forced {
            tracing::warn!(
                still_running = %self.board.still_running(&self.lifetime),
                "drain budget spent; cancelling what still runs"
            );
        }
        self.timeline()
            .hard_stop
            .cancel_with(shutdown.reason.clone());
        if shutdown.waits() {
            let deadline = shutdown.t0 + self.config.shutdown_timeout;
            self.wait_until(shutdown, deadline).await;
        }
    }

    /// Phase 3, abort: drop whatever still runs. Returns the tracked tasks not yet dropped.
    async fn abort(&mut self, shutdown: &mut Shutdown) -> HashSet<usize> {
        if shutdown.done {
            return HashSet::new();
        }
        self.enter(shutdown, Phase::Abort);
        let aborted_at = Instant::now();
        // A service still waiting for a stuck dependent hears its stop now; what stops the
        // moment it is polled has its turn (as at a phase's deadline) and is not called
        // aborted. Then take the ends that are already in.
        self.board.stop_all(&shutdown.reason);
        tokio::task::yield_now().await;
        self.board.sweep(&self.lifetime);
        let stragglers = self.board.still_running(&self.lifetime);
        if shutdown.forced {
            tracing::error!(aborted = %stragglers, "second signal: aborting now");
        } else {
            tracing::error!(aborted = %stragglers, "shutdown timeout reached; aborting stragglers");
        }
        abort_stragglers(&self.lifetime, &mut self.board, aborted_at).await
    }

    /// Stopped: gathers every end into the report, logs it, fires `stopped`.
    fn report(self, shutdown: Shutdown, tasks_still_dropping: &HashSet<usize>) -> ShutdownReport {
        let timeline = self.lifetime.timeline();
        let (tasks, before_stop) = self
            .lifetime
            .state
            .tracker
            .close(Phase::Abort, |id| tasks_still_dropping.contains(&id));
        timeline.advance(Phase::Stopped);
        let ended_at = Instant::now();
        let services = self
            .board
            .slots
            .into_iter()
            .map(|slot| {
                let end = slot.end.unwrap_or(ServiceEnd {
                    outcome: Outcome::Aborted,
                    phase: Phase::Abort,
                    at: ended_at,
                    restarts: 0,
                });
                ServiceRecord {
                    name: slot.name,
                    phase: end.phase,
                    at: end.at,
                    outcome: end.outcome,
                    restarts: end.restarts,
                    still_dropping: slot.still_dropping,
                    details: slot.cx.rendered_details(),
                }
            })
            .collect();
        record_phase_durations(&shutdown.phase_starts, ended_at);
        let report = ShutdownReport::build(RawReport {
            trigger: shutdown.trigger,
            forced: shutdown.forced,
            stop_requested_at: shutdown.t0,
            ended_at,
            phase_starts: shutdown.phase_starts,
            services,
            tasks,
            before_stop,
        });
        match (self.config.log_report, report.is_clean()) {
            (false, _) => {}
            (true, true) => tracing::info!("{report}"),
            (true, false) => tracing::error!("{report}"),
        }
        timeline.stopped.cancel_with(shutdown.reason);
        report
    }
}

/// The reason the shutdown tokens fire with: always [`ReasonKind::Shutdown`], so every
/// in-flight operation can tell a shutdown from a timeout or a disconnect; the trigger's
/// own reason if it already is one (keeping its message, e.g. `"SIGTERM"`).
fn shutdown_reason(trigger: &Reason) -> Reason {
    if trigger.kind() == ReasonKind::Shutdown {
        return trigger.clone();
    }
    let mut message = trigger.kind().to_string();
    if let Some(m) = trigger.message() {
        message.push_str(": ");
        message.push_str(m);
    }
    if let Some(source) = trigger.source() {
        message.push_str(": ");
        message.push_str(&source.to_string());
    }
    Reason::shutdown().with_message(message)
}

/// Each shutdown phase's duration, into the `metrics` facade:
/// `gracefully_shutdown_phase_seconds{phase}` (a histogram; a phase that was skipped
/// records nothing).
fn record_phase_durations(starts: &[Option<Instant>; Phase::ALL.len()], ended_at: Instant) {
    for (i, start) in starts.iter().enumerate() {
        let Some(start) = start else { continue };
        let end = starts[i + 1..]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(ended_at);
        metrics::histogram!("gracefully_shutdown_phase_seconds", "phase" => Phase::ALL[i].as_str())
            .record(end.saturating_duration_since(*start).as_secs_f64());
    }
}
