//! Phase 3 of the shutdown, after the log line: ask tokio to abort every service and
//! tracked task still running, wait — a bounded time — until they have been dropped, and
//! name what has not been as still dropping.
//!
//! The wait lets drop code (closing sockets, recording what the work was doing in its
//! report row) run before the report is taken. Aborted futures are dropped on the
//! dropper's thread (see `dropper.rs`), so no destructor can hold this phase up past its
//! bound, whatever it does.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::StreamExt;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::board::{Board, end_of};
use crate::dropper::Straggler;
use crate::lifetime::Lifetime;
use crate::outcome::Outcome;
use crate::phase::Phase;
use crate::service_task::ServiceEnd;

/// How long the abort phase waits for aborted work to be dropped.
pub(crate) const ABORT_SETTLE: Duration = Duration::from_millis(200);

/// Aborts what still runs (see the module docs). Records each service's real end — one
/// whose last poll completed was not aborted — and returns the ids of the tracked tasks
/// not yet dropped, for the tracker to record.
pub(crate) async fn abort_stragglers(
    lifetime: &Lifetime,
    board: &mut Board,
    aborted_at: Instant,
) -> HashSet<usize> {
    let started = std::time::Instant::now();
    let mut tasks = request_aborts(lifetime, board);
    let _ = tokio::time::timeout(
        ABORT_SETTLE,
        join_aborted(lifetime, board, &mut tasks, aborted_at),
    )
    .await;
    let queued =
        dropper_queue_after(lifetime, ABORT_SETTLE.saturating_sub(started.elapsed())).await;
    name_still_dropping(board, &tasks, &queued, aborted_at)
}

/// Opens the dropper, then asks tokio to abort every live service task and tracked task;
/// returns the tracked tasks' ids and handles.
fn request_aborts(lifetime: &Lifetime, board: &Board) -> Vec<(usize, JoinHandle<()>)> {
    if let Err(error) = lifetime.state.dropper.open() {
        tracing::error!(
            %error,
            "could not start the thread that drops aborted work; dropping it here, where a destructor that blocks holds up the host"
        );
    }
    for slot in board.slots.iter().filter(|slot| slot.end.is_none()) {
        slot.abort.abort();
    }
    lifetime.state.tracker.abort_all()
}

/// Waits until tokio has dropped each aborted task (quick: the future itself goes to the
/// dropper's thread) or let its last poll finish, recording each service's end.
async fn join_aborted(
    lifetime: &Lifetime,
    board: &mut Board,
    tasks: &mut [(usize, JoinHandle<()>)],
    aborted_at: Instant,
) {
    while let Some((i, joined)) = board.running.next().await {
        let end = match joined {
            Err(error) if error.is_cancelled() => aborted(aborted_at),
            joined => end_of(lifetime, joined),
        };
        board.record(i, end);
    }
    for (_, task) in tasks {
        let _ = task.await;
    }
}

/// Waits up to `limit` until the dropper's thread has run the aborted futures'
/// destructors; returns what it has not dropped yet. A blocking wait on a blocking thread:
/// that also keeps a paused test clock from jumping ahead meanwhile.
async fn dropper_queue_after(lifetime: &Lifetime, limit: Duration) -> HashSet<Straggler> {
    let dropper = &lifetime.state.dropper;
    if !dropper.is_busy() {
        return HashSet::new();
    }
    let waiting = Arc::clone(dropper);
    let queued = match tokio::task::spawn_blocking(move || waiting.wait_until_empty(limit)).await {
        Ok(queued) => queued,
        // No blocking thread (the runtime is shutting down): what is queued now.
        Err(_) => dropper.wait_until_empty(Duration::ZERO),
    };
    queued.into_iter().collect()
}

/// Marks as still dropping what is still in the dropper's queue or was not even handed to
/// it (its task is blocked in a poll, or tokio has not got to it); services not joined are
/// recorded as aborted. Logs them; returns the tracked tasks' ids.
fn name_still_dropping(
    board: &mut Board,
    tasks: &[(usize, JoinHandle<()>)],
    queued: &HashSet<Straggler>,
    aborted_at: Instant,
) -> HashSet<usize> {
    for (i, slot) in board.slots.iter_mut().enumerate() {
        if slot.end.is_none() {
            slot.end = Some(aborted(aborted_at));
            slot.still_dropping = true;
        } else if queued.contains(&Straggler::Service(i)) {
            slot.still_dropping = true;
        }
    }
    let mut task_ids: HashSet<usize> = queued
        .iter()
        .filter_map(|straggler| match straggler {
            Straggler::Task(id) => Some(*id),
            Straggler::Service(_) => None,
        })
        .collect();
    task_ids.extend(
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
    if !services.is_empty() || !task_ids.is_empty() {
        tracing::error!(
            services = %services.join(", "),
            tracked_tasks = task_ids.len(),
            "aborted work not yet dropped after {ABORT_SETTLE:?}: a destructor (or a poll) blocks its thread; the host returns without waiting for it"
        );
    }
    task_ids
}

/// A service aborted at `at`.
fn aborted(at: Instant) -> ServiceEnd {
    ServiceEnd {
        outcome: Outcome::Aborted,
        phase: Phase::Abort,
        at,
        restarts: 0,
    }
}
