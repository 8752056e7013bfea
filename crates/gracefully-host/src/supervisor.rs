//! The host's supervisor: starts the service tasks, waits for a trigger, and walks the
//! shutdown sequence of DESIGN.md §4 (pre-stop → drain → cancel → abort).
//!
//! The supervisor is the only writer of the stages after `Running` and the only one that
//! fires `stopping`, `hard_stop`, the per-service stop tokens and `stopped`. Service tasks
//! report their end through their `JoinHandle`s (so even a panic outside the service's own
//! code, or an abort, is seen); tracked tasks through the tracker.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gracefully::{CancellationSource, CancellationToken, Reason, ReasonKind};
use tokio::task::{AbortHandle, JoinError};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument;

use crate::dropper::{DropElsewhere, Straggler};
use crate::host::Host;
use crate::lifetime::{Lifetime, Shared, Stage};
use crate::outcome::{Outcome, panicked};
use crate::report::{Phase, RawReport, ServiceRecord, ShutdownReport};
use crate::service::ServiceContext;
use crate::service_task::{ServiceEnd, ServiceRun};
use crate::signals::SignalWatcher;

type Joined = Pin<Box<dyn Future<Output = (usize, Result<ServiceEnd, JoinError>)> + Send>>;

/// How long the abort phase waits for aborted work to be dropped (see `dropper.rs`).
const ABORT_SETTLE: std::time::Duration = std::time::Duration::from_millis(200);

pub(crate) async fn run(host: Host) -> ShutdownReport {
    let Host {
        config,
        services,
        dependencies,
        lifetime,
    } = host;
    let shared = Arc::clone(&lifetime.shared);
    let _current = lifetime.make_current();

    // Handlers first, so that by the time the host is ready a signal cannot be missed.
    let signals = if config.handle_signals {
        match SignalWatcher::start(lifetime.clone()) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(%error, "could not install signal handlers; stop the host with Lifetime::stop");
                None
            }
        }
    } else {
        None
    };

    // Spawn every service task at once; each waits for its own dependencies.
    let n = services.len();
    let started: Vec<CancellationSource> = (0..n).map(|_| CancellationSource::new()).collect();
    let started_tokens: Vec<CancellationToken> = started.iter().map(|s| s.token()).collect();
    let mut board = Board::new(n, &dependencies);
    let mut running: FuturesUnordered<Joined> = FuturesUnordered::new();
    for (i, (spec, started)) in services.into_iter().zip(started).enumerate() {
        // Each service's own stop token: a child of hard stop, fired earlier in the drain
        // once every service that depends on it has ended.
        let stop = shared.hard_stop.token().child();
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
        // Boxed so that, if the abort phase drops it unfinished, its destructor runs on the
        // dropper's thread (see `dropper.rs`).
        let task = DropElsewhere::new(
            Box::pin(task.run().instrument(span)),
            Straggler::Service(i),
            Arc::clone(&shared.dropper),
        );
        let handle = tokio::spawn(task);
        board.slots.push(Slot {
            name: spec.name,
            cx,
            stop,
            abort: handle.abort_handle(),
            end: None,
            still_dropping: false,
        });
        running.push(Box::pin(async move { (i, handle.await) }));
    }
    if n == 0 {
        shared.mark_started();
    }

    // Running: wait for the trigger. A host whose services have all ended stops itself.
    let trigger_token = lifetime.stop_requested();
    loop {
        tokio::select! {
            biased;
            _ = trigger_token.cancelled() => break,
            Some((i, joined)) = running.next(), if board.live > 0 => {
                board.record(i, end_of(&lifetime, joined));
                if board.live == 0 {
                    lifetime.stop(Reason::requested().with_message("every service has finished"));
                }
            }
        }
    }

    let trigger = trigger_token.reason().unwrap_or_else(Reason::shutdown);
    let t0 = *shared.stop_requested_at.get_or_init(Instant::now);
    let reason = shutdown_reason(&trigger);
    let drain_deadline = t0 + (config.shutdown_timeout - config.cancel_grace);
    let cancel_deadline = t0 + config.shutdown_timeout;
    let force = shared.force.token();
    let mut phase_starts = [None; 4];
    let mut forced = false;
    let mut done = false;
    tracing::info!(
        %trigger,
        "shutdown requested; pre-stop {:?}, then drain until {:?}, cancel until {:?} after the request",
        config.pre_stop_delay,
        config.shutdown_timeout - config.cancel_grace,
        config.shutdown_timeout
    );

    // 0. Pre-stop: readiness already fails (the trigger fired); keep serving a while.
    // A host stopped while still starting was never `Running` and does not become so now
    // (`mark_started` covers a start step that finishes meanwhile).
    if shared.stage() == Stage::Running {
        shared.advance(Stage::PreStop);
    }
    phase_starts[0] = Some(Instant::now());
    if !config.pre_stop_delay.is_zero() {
        match board
            .wait(&lifetime, &mut running, &force, t0 + config.pre_stop_delay)
            .await
        {
            Waited::AllEnded => done = true,
            Waited::Deadline => {}
            Waited::Forced => forced = true,
        }
    }

    // 1. Drain: `stopping` fires; services are told to stop in reverse dependency order.
    // Entered even when everything has ended or a second signal cut the shutdown short,
    // so every token of the sequence fires, in order.
    shared.advance(Stage::Drain);
    phase_starts[1] = Some(Instant::now());
    shared.stopping.cancel_with(reason.clone());
    board.begin_drain(&reason);
    if !done && !forced {
        match board
            .wait(&lifetime, &mut running, &force, drain_deadline)
            .await
        {
            Waited::AllEnded => done = true,
            Waited::Deadline => {}
            Waited::Forced => forced = true,
        }
    }

    // 2. Cancel: hard stop fires; every in-flight token below it is cancelled.
    if !done {
        shared.advance(Stage::Cancel);
        phase_starts[2] = Some(Instant::now());
        if !forced {
            tracing::warn!(
                still_running = %board.still_running(&shared),
                "drain budget spent; cancelling what still runs"
            );
        }
        shared.hard_stop.cancel_with(reason.clone());
        if !forced {
            match board
                .wait(&lifetime, &mut running, &force, cancel_deadline)
                .await
            {
                Waited::AllEnded => done = true,
                Waited::Deadline => {}
                Waited::Forced => forced = true,
            }
        }
    }

    // 3. Abort: drop whatever still runs.
    let mut tasks_still_dropping = HashSet::new();
    if !done {
        shared.advance(Stage::Abort);
        let aborted_at = Instant::now();
        phase_starts[3] = Some(aborted_at);
        // Take the ends that are already in, so nothing that finished is called aborted.
        while let Some(Some((i, joined))) = running.next().now_or_never() {
            board.record(i, end_of(&lifetime, joined));
        }
        let stragglers = board.still_running(&shared);
        if forced {
            tracing::error!(aborted = %stragglers, "second signal: aborting now");
        } else {
            tracing::error!(aborted = %stragglers, "shutdown timeout reached; aborting stragglers");
        }
        tasks_still_dropping =
            abort_stragglers(&lifetime, &mut board, &mut running, aborted_at).await;
    }

    // Whatever descends from hard stop and is still waiting hears it now.
    shared.hard_stop.cancel_with(reason.clone());
    drop(signals); // stops the watcher
    let (tasks, before_stop) = shared
        .tracker
        .close(Phase::Abort, |id| tasks_still_dropping.contains(&id));
    shared.advance(Stage::Stopped);
    let ended_at = Instant::now();

    let services = board
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
    let report = ShutdownReport::build(RawReport {
        trigger,
        forced,
        stop_requested_at: t0,
        ended_at,
        phase_starts,
        services,
        tasks,
        before_stop,
    });
    if report.is_clean() {
        tracing::info!("{report}");
    } else {
        tracing::error!("{report}");
    }
    shared.stopped.cancel_with(reason);
    report
}

/// Phase 3 after the log line: asks tokio to abort every service and tracked task still
/// running, then waits (bounded by [`ABORT_SETTLE`]) until they have been dropped, so
/// their drop code — closing sockets, recording what they were doing in their report rows
/// — runs before the report is taken. Records each service's real end: one whose last
/// poll completed was not aborted. Returns the ids of tracked tasks not yet dropped.
///
/// Aborted futures are dropped on the dropper's thread (see `dropper.rs`), so no
/// destructor can hold up this function past its bound, whatever it does.
async fn abort_stragglers(
    lifetime: &Lifetime,
    board: &mut Board,
    running: &mut FuturesUnordered<Joined>,
    aborted_at: Instant,
) -> HashSet<usize> {
    let shared = &lifetime.shared;
    let started = std::time::Instant::now();
    if let Err(error) = shared.dropper.open() {
        tracing::error!(
            %error,
            "could not start the thread that drops aborted work; dropping it here, where a destructor that blocks holds up the host"
        );
    }
    for slot in board.slots.iter().filter(|slot| slot.end.is_none()) {
        slot.abort.abort();
    }
    let mut tasks = shared.tracker.abort_all();

    // 1. Until tokio has dropped each aborted task (quick: the future itself goes to
    //    the dropper's thread) or let its last poll finish.
    let _ = tokio::time::timeout(ABORT_SETTLE, async {
        while let Some((i, joined)) = running.next().await {
            let end = match joined {
                Err(error) if error.is_cancelled() => ServiceEnd {
                    outcome: Outcome::Aborted,
                    phase: Phase::Abort,
                    at: aborted_at,
                    restarts: 0,
                },
                joined => end_of(lifetime, joined),
            };
            board.record(i, end);
        }
        for (_, task) in &mut tasks {
            let _ = task.await;
        }
    })
    .await;

    // 2. Until the dropper's thread has run their destructors. A blocking wait on a
    //    blocking thread: it also keeps a paused test clock from jumping ahead meanwhile.
    let mut still_dropping: HashSet<Straggler> = HashSet::new();
    if shared.dropper.is_busy() {
        let dropper = Arc::clone(&shared.dropper);
        let left = ABORT_SETTLE.saturating_sub(started.elapsed());
        let queued = match tokio::task::spawn_blocking(move || dropper.wait_until_empty(left)).await
        {
            Ok(queued) => queued,
            // No blocking thread (the runtime is shutting down): what is queued now.
            Err(_) => shared.dropper.wait_until_empty(std::time::Duration::ZERO),
        };
        still_dropping.extend(queued);
    }

    // Not dropped yet: still in the dropper's queue, or not even handed to it (its task
    // is blocked in a poll, or tokio has not got to it).
    for (i, slot) in board.slots.iter_mut().enumerate() {
        if slot.end.is_none() {
            slot.end = Some(ServiceEnd {
                outcome: Outcome::Aborted,
                phase: Phase::Abort,
                at: aborted_at,
                restarts: 0,
            });
            slot.still_dropping = true;
        } else if still_dropping.contains(&Straggler::Service(i)) {
            slot.still_dropping = true;
        }
    }
    let mut tasks_still_dropping: HashSet<usize> = still_dropping
        .iter()
        .filter_map(|straggler| match straggler {
            Straggler::Task(id) => Some(*id),
            Straggler::Service(_) => None,
        })
        .collect();
    tasks_still_dropping.extend(
        tasks
            .iter()
            .filter(|(_, task)| !task.is_finished())
            .map(|(id, _)| *id),
    );
    let services: Vec<&str> = board
        .slots
        .iter()
        .filter(|slot| slot.still_dropping)
        .map(|slot| slot.name.as_ref())
        .collect();
    if !services.is_empty() || !tasks_still_dropping.is_empty() {
        tracing::error!(
            services = %services.join(", "),
            tracked_tasks = tasks_still_dropping.len(),
            "aborted work not yet dropped after {ABORT_SETTLE:?}: a destructor (or a poll) blocks its thread; the host returns without waiting for it"
        );
    }
    tasks_still_dropping
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

/// A service task's end from its join result.
fn end_of(lifetime: &Lifetime, joined: Result<ServiceEnd, JoinError>) -> ServiceEnd {
    match joined {
        Ok(end) => end,
        // Our own code caught every panic of the service; this one escaped it (a panicking
        // `Drop`, say). Still a failure, still named.
        Err(error) if error.is_panic() => {
            let message = panicked(&*error.into_panic());
            tracing::error!(error = %message, "service task panicked");
            lifetime.stop(Reason::failed(message.clone()).with_message("a service task panicked"));
            ServiceEnd::now(lifetime, Outcome::Failed(message), 0)
        }
        Err(_) => ServiceEnd::now(lifetime, Outcome::Aborted, 0),
    }
}

enum Waited {
    AllEnded,
    Deadline,
    Forced,
}

/// The supervisor's view of the services.
struct Board {
    slots: Vec<Slot>,
    /// Services whose task has not ended.
    live: usize,
    /// `waiting_on[d]`: how many of `d`'s dependents have not ended. `d` is told to stop
    /// when this reaches 0 during the drain.
    waiting_on: Vec<usize>,
    /// `dependencies[i]`: what `i` depends on.
    dependencies: Vec<Vec<usize>>,
    draining: Option<Reason>,
}

struct Slot {
    name: std::borrow::Cow<'static, str>,
    cx: ServiceContext,
    stop: CancellationSource,
    abort: AbortHandle,
    end: Option<ServiceEnd>,
    /// Aborted, and not yet dropped when the report was made.
    still_dropping: bool,
}

impl Board {
    fn new(n: usize, dependencies: &[Vec<usize>]) -> Board {
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in dependencies.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        Board {
            slots: Vec::with_capacity(n),
            live: n,
            waiting_on: dependents.iter().map(Vec::len).collect(),
            dependencies: dependencies.to_vec(),
            draining: None,
        }
    }

    fn record(&mut self, i: usize, end: ServiceEnd) {
        if self.slots[i].end.is_some() {
            return;
        }
        self.slots[i].end = Some(end);
        self.live -= 1;
        for k in 0..self.dependencies[i].len() {
            let d = self.dependencies[i][k];
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0
                && let Some(reason) = &self.draining
            {
                self.slots[d].stop.cancel_with(reason.clone());
            }
        }
    }

    /// Tells every service that no other service waits on to stop.
    fn begin_drain(&mut self, reason: &Reason) {
        self.draining = Some(reason.clone());
        for (slot, waiting) in self.slots.iter().zip(&self.waiting_on) {
            if *waiting == 0 {
                slot.stop.cancel_with(reason.clone());
            }
        }
    }

    /// Waits until every service and tracked task has ended, the deadline passes, or a
    /// second signal forces the abort.
    async fn wait(
        &mut self,
        lifetime: &Lifetime,
        running: &mut FuturesUnordered<Joined>,
        force: &CancellationToken,
        deadline: Instant,
    ) -> Waited {
        let tracker = &lifetime.shared.tracker;
        let sleep = sleep_until(deadline);
        let mut sleep = std::pin::pin!(sleep);
        loop {
            if self.live == 0 && tracker.is_idle() {
                return Waited::AllEnded;
            }
            tokio::select! {
                biased;
                _ = force.cancelled() => return Waited::Forced,
                Some((i, joined)) = running.next(), if self.live > 0 => {
                    self.record(i, end_of(lifetime, joined));
                }
                _ = tracker.wait_idle(), if self.live == 0 => {}
                _ = &mut sleep => {
                    // A deadline is honoured only once the work already woken (by the
                    // token this phase fired, say) has had its turn: with a zero budget
                    // it would otherwise not have been polled yet, and work that stops the
                    // moment it is polled would be called a straggler.
                    tokio::task::yield_now().await;
                    while let Some(Some((i, joined))) = running.next().now_or_never() {
                        self.record(i, end_of(lifetime, joined));
                    }
                    return if self.live == 0 && tracker.is_idle() {
                        Waited::AllEnded
                    } else {
                        Waited::Deadline
                    };
                }
            }
        }
    }

    /// The names of what still runs, for the log.
    fn still_running(&self, shared: &Shared) -> String {
        let mut names: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| s.end.is_none())
            .map(|s| s.name.as_ref())
            .collect();
        let tasks = shared.tracker.running_count();
        let tasks_note = format!("{tasks} tracked task(s)");
        if tasks > 0 {
            names.push(&tasks_note);
        }
        names.join(", ")
    }
}
