//! One run of a worker's `execute`: the loop that fetches, starts, settles, renews and
//! drains.
//!
//! # Invariants (cited as "run #n")
//!
//! 1. A job is in `held` from its fetch until its ending was written (or found fenced):
//!    its lease is renewed all that time, including while a write is pending after a
//!    database error. Only running handlers (and a fetch in flight) count against the
//!    concurrency. An entry belongs to one attempt (`run`): a task's end and a written
//!    ending touch it only if the run matches, since a job returned to the queue can be
//!    fetched again (a new entry) before the write that returned it has come back.
//! 2. Every handler runs in a task of its own, with a token that is a child of the host's
//!    hard stop and is registered with the [`Jobs`] (so `cancel` from this process fires
//!    it directly).
//! 3. Nothing is fetched once `stopping` fired (drain); jobs of a fetch that was in flight
//!    then are returned at once, unstarted. The run ends when nothing is held and no
//!    database call is in flight.
//! 5. At most one fetch and one batch of endings are in flight at a time; the loop keeps
//!    running handlers meanwhile, so endings that arrive during a write go in the next
//!    batch (batches grow with the load, with no timer). Successes are not written
//!    beside a fetch but *in* it: the next fetch carries them in its own transaction
//!    (`carried`: one commit, one round trip); they are written on their own only when
//!    no fetch is in flight or about to start (the queue ran dry, the drain, handlers
//!    still holding the slots) or with other endings, which never wait for a fetch.
//! 4. If the run is dropped (the host's abort), handlers that already finished (their
//!    results not yet collected) and endings queued or in a write the drop cancelled get
//!    their real endings (fenced writes, so one that had committed is a no-op); the still
//!    running handlers are aborted and their jobs returned to the queue — all by a task on
//!    the runtime; the drop waits for it at most
//!    150 ms when it is not on a runtime thread (the host drops aborted work on a thread of
//!    its own).
//! 6. The jobs fetched ahead (`prefetch`) stay between the configured floor and ceiling
//!    (the same number when the user set it): doubled after a full fetch during which
//!    the handlers ended at least half that many jobs, halved after one during which they
//!    ended under an eighth as many. None is held longer than a heartbeat period: at
//!    each heartbeat the ones that waited that long go back to the queue, unstarted, and
//!    the fetch-ahead drops to its floor (short jobs grow it, then long ones arrive: the
//!    batch is not hoarded from other workers).
//! 8. After the host's hard stop, the loop waits for its database at most
//!    [`DB_WAIT_AFTER_HARD_STOP`] once its handlers have ended: a database that went away
//!    (a fetch waiting for a connection that never comes, an ending that cannot be
//!    written) must not hold the worker — and every service it depends on, which stops
//!    only after it — until the abort. What is then still held goes back to the queue
//!    when its lease expires (counted as *left to their lease*).
//! 7. The loop awaits nothing inline: every database call (fetch, endings, heartbeat,
//!    cancel reads) is a future the loop polls beside the others. A call awaited inline
//!    would stop the loop from polling the others, and one of them may hold the pool's
//!    last connection (a pool of one is common with SQLite) or the store's write turn.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use gracefully::operation::{Operation, OperationKind, OperationScope};
use gracefully::{CancellationSource, CancellationToken, Reason};
use gracefully_host::ServiceContext;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::{Instant, sleep_until};

use super::counts::{
    self, ABORTED, CANCELLED, DEAD, FINISHED_DURING_DRAIN, INTERRUPTED, LEASE_LOST, LEFT_TO_LEASE,
    RECLAIMED, RETRIED, RETURNED_UNSTARTED, SUCCEEDED,
};
use super::endings::{self, Done, Pending, Written};
use super::listener::{self, Event};
use super::verdict::{Ended, Verdict, verdict};
use super::{ErasedHandler, Settings};
use crate::error::Error;
use crate::job::Lease;
use crate::jobs::Jobs;
use crate::state::{JobId, JobState};
use crate::store::{Fetched, Store};

/// The first wait after a database error; it doubles up to [`MAX_DB_BACKOFF`].
const FIRST_DB_BACKOFF: Duration = Duration::from_millis(100);
const MAX_DB_BACKOFF: Duration = Duration::from_secs(5);
/// How long after the host's hard stop the loop still waits for its database (run #8):
/// a healthy database answers a batch of endings in milliseconds; the rest of the cancel
/// phase is left to the services this worker depends on, which drain only after it.
pub(crate) const DB_WAIT_AFTER_HARD_STOP: Duration = Duration::from_secs(1);

/// A job this worker holds (run #1).
struct Held {
    run: i64,
    attempt: u32,
    /// The source of the handler's token; `None` for a job returned unstarted.
    source: Option<Arc<CancellationSource>>,
    abort: Option<AbortHandle>,
    completed_in_tx: Arc<AtomicBool>,
    /// The worker fired the token because the lease was lost.
    lost: bool,
}

impl Held {
    /// A job fetched as the drain began, to be returned without running.
    fn unstarted(run: i64) -> Held {
        Held {
            run,
            attempt: 0,
            source: None,
            abort: None,
            completed_in_tx: Arc::new(AtomicBool::new(false)),
            lost: false,
        }
    }
}

/// What a fetch brought: the jobs, and if it found fewer than asked, in how many
/// milliseconds the next waiting job is due.
struct Fetch {
    jobs: Vec<Fetched>,
    next_due: Option<i64>,
}

/// What a heartbeat found (run #7): the attempts it renewed, and the results.
struct Beat {
    held: Vec<(i64, i64)>,
    renewed: Result<Vec<crate::store::Renewed>, Error>,
    reclaimed: Result<u64, Error>,
}

type CancelReads = Result<Vec<crate::store::Renewed>, Error>;

/// A handler's task: the job's id and attempt (`run`), and how it ended.
type TaskFuture = BoxFuture<'static, (i64, i64, Ended)>;

pub(crate) struct Run {
    jobs: Jobs,
    store: Store,
    settings: Arc<Settings>,
    handler: ErasedHandler,
    cx: ServiceContext,
    held: HashMap<i64, Held>,
    tasks: FuturesUnordered<TaskFuture>,
    /// Fetched, not started (at most `prefetch`); held (run #1) like the running ones.
    buffer: VecDeque<Fetched>,
    pending: Vec<Pending>,
    /// A copy of the batch of endings being written, so that the host's abort (which
    /// drops the write with the loop) writes them again rather than re-running the jobs.
    writing: Vec<Pending>,
    /// Successes written in the fetch in flight's own transaction (run #5): kept here
    /// until it returns, and written again by the abort like `writing`.
    carried: Vec<(i64, i64)>,
    draining: bool,
    /// No database call before this (after an error).
    backoff_until: Option<Instant>,
    backoff: Duration,
    last_renewed: Instant,
    listener: Option<AbortHandle>,
    runtime: Option<tokio::runtime::Handle>,
    /// Jobs fetched ahead now: between `settings.prefetch` and `settings.prefetch_max`
    /// (run #6).
    prefetch: usize,
    /// Handlers that have ended so far (to see how many end during a fetch).
    ended_total: u64,
}

impl Run {
    pub(crate) fn new(
        jobs: Jobs,
        settings: Arc<Settings>,
        handler: ErasedHandler,
        cx: ServiceContext,
    ) -> Run {
        let store = jobs.store().clone();
        let settings_prefetch = settings.prefetch;
        Run {
            jobs,
            store,
            settings,
            handler,
            cx,
            held: HashMap::new(),
            tasks: FuturesUnordered::new(),
            buffer: VecDeque::new(),
            pending: Vec::new(),
            writing: Vec::new(),
            carried: Vec::new(),
            draining: false,
            backoff_until: None,
            backoff: FIRST_DB_BACKOFF,
            last_renewed: Instant::now(),
            listener: None,
            runtime: tokio::runtime::Handle::try_current().ok(),
            prefetch: settings_prefetch,
            ended_total: 0,
        }
    }

    fn lease_ms(&self) -> i64 {
        self.settings.lease.as_millis() as i64
    }

    pub(crate) async fn go(&mut self, stopping: CancellationToken) {
        counts::init(&self.cx);
        let hard_stop = self.cx.hard_stop().clone();
        // Run #8: armed by the hard stop; once due, the loop ends as soon as no handler
        // runs, whatever database call is still in flight.
        let mut give_up_at: Option<Instant> = None;
        let mut give_up_due = false;
        let queue = Arc::clone(&self.settings.queue);
        let mut wake = self.jobs.inner.wake.subscribe();
        let (events_tx, mut events) = mpsc::unbounded_channel();
        if let Store::Postgres(pg) = &self.store {
            let task = tokio::spawn(listener::listen(
                self.jobs.clone(),
                Arc::clone(pg),
                Arc::clone(&queue),
                events_tx,
            ));
            self.listener = Some(task.abort_handle());
        } else {
            drop(events_tx);
        }
        let sqlite = matches!(self.store, Store::Sqlite(_));
        let poll = self.settings.poll_interval;
        let heartbeat = self.settings.heartbeat;
        let mut want_fetch = true;
        let mut read_cancels = false;
        let mut next_poll = Instant::now() + poll;
        let mut next_heartbeat = Instant::now() + heartbeat;
        // Asked by the fetch in flight, and how many handlers had ended when it started.
        let mut asked = 0usize;
        let mut ended_at_fetch = 0u64;
        // The database calls in flight (run #5): a fetch, a batch of
        // endings.
        let mut fetching: Option<BoxFuture<'static, Result<Fetch, Error>>> = None;
        // Wake-ups so far, and how many there had been when the fetch in flight started:
        // a wake-up during a fetch that finds nothing means "look again", not "idle".
        let mut wakes: u64 = 0;
        let mut wakes_at_fetch: u64 = 0;
        let mut writing: Option<BoxFuture<'static, Written>> = None;
        // The heartbeat's and the cancel reads' database calls, polled by the loop like the
        // fetch and the write rather than awaited inline (run #7).
        let mut beating: Option<BoxFuture<'static, Beat>> = None;
        let mut reading_cancels: Option<BoxFuture<'static, CancelReads>> = None;
        tracing::debug!(queue = %queue, concurrency = self.settings.concurrency, "worker started");
        loop {
            let db_ok = self.backoff_until.is_none_or(|t| Instant::now() >= t);
            if db_ok && read_cancels && reading_cancels.is_none() && !self.held.is_empty() {
                read_cancels = false;
                reading_cancels = self.read_cancel_requests();
            }
            self.start_buffered();
            let room = self.settings.concurrency + self.prefetch;
            // Fetch when this many slots are free (or nothing runs): batches, not one by one.
            let refill = room.div_ceil(4).max(1);
            let free = room.saturating_sub(self.tasks.len() + self.buffer.len());
            if fetching.is_none()
                && !self.draining
                && want_fetch
                && db_ok
                && free > 0
                && (free >= refill || (self.tasks.is_empty() && self.buffer.is_empty()))
            {
                let (store, queue, lease, worker) = (
                    self.store.clone(),
                    Arc::clone(&queue),
                    self.lease_ms(),
                    self.settings.worker_id.clone(),
                );
                wakes_at_fetch = wakes;
                asked = free;
                ended_at_fetch = self.ended_total;
                // The successes waiting to be written ride in the fetch's transaction:
                // one commit (one WAL flush) and one round trip instead of two.
                let (succeed, rest) = std::mem::take(&mut self.pending)
                    .into_iter()
                    .partition::<Vec<_>, _>(|p| matches!(p, Pending::Succeed(..)));
                self.pending = rest;
                let carry: Vec<(i64, i64)> = succeed.iter().map(Pending::job).collect();
                self.carried.clone_from(&carry);
                fetching = Some(Box::pin(async move {
                    let started = std::time::Instant::now();
                    let mut jobs = if carry.is_empty() {
                        store.fetch(&queue, free, lease, &worker).await?
                    } else {
                        store
                            .succeed_and_fetch(&carry, &queue, free, lease, &worker)
                            .await?
                    };
                    for job in &mut jobs {
                        job.fetch_started = started;
                    }
                    // Found none: when is the next job due? (Not asked when some were
                    // found, so that they start without waiting for another round trip.)
                    let next_due = if jobs.is_empty() {
                        store.next_due(&queue).await.ok().flatten()
                    } else {
                        None
                    };
                    Ok(Fetch { jobs, next_due })
                }));
            }
            // Successes wait for the fetch in flight and ride in the next one (above),
            // unless no fetch follows it; any other ending (a failure, a return, a cancel)
            // is written at once, or a steady stream of fetches would hold it back for
            // ever (its job shown `running`, its retry delay not yet started).
            if writing.is_none()
                && db_ok
                && !self.pending.is_empty()
                && (fetching.is_none()
                    || self
                        .pending
                        .iter()
                        .any(|p| !matches!(p, Pending::Succeed(..))))
            {
                let batch = std::mem::take(&mut self.pending);
                self.writing = batch.clone();
                writing = Some(Box::pin(endings::write(
                    self.store.clone(),
                    Arc::clone(&queue),
                    batch,
                )));
            }
            // (A heartbeat in flight is waited for: what it reclaimed is counted.)
            if self.draining
                && self.held.is_empty()
                && fetching.is_none()
                && writing.is_none()
                && beating.is_none()
            {
                break;
            }
            if give_up_due && self.tasks.is_empty() {
                self.give_up(&queue);
                break;
            }
            let backoff_until = self.backoff_until;
            tokio::select! {
                biased;
                _ = stopping.cancelled(), if !self.draining => {
                    self.draining = true;
                    self.return_buffered();
                    tracing::info!(queue = %queue, running = self.tasks.len(), "draining: no new jobs; running jobs may finish");
                }
                _ = hard_stop.cancelled(), if give_up_at.is_none() => {
                    give_up_at = Some(Instant::now() + DB_WAIT_AFTER_HARD_STOP);
                }
                _ = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() && !give_up_due => {
                    give_up_due = true;
                }
                // The heartbeat (lease renewal) comes before every branch that can be ready
                // again and again: with `biased`, a busy queue (endings, fetches, wake-ups
                // always ready) would otherwise starve it, the leases would expire and the
                // running jobs would be reclaimed elsewhere. It is ready once per period,
                // so it cannot starve the others; only the one-shot drain start precedes it.
                _ = sleep_until(next_heartbeat), if beating.is_none() => {
                    beating = Some(self.heartbeat(&queue));
                    next_heartbeat = Instant::now() + heartbeat;
                }
                beat = async { beating.as_mut().expect("guarded").await }, if beating.is_some() => {
                    beating = None;
                    if self.heartbeat_done(&queue, beat) {
                        want_fetch = true;
                        wakes += 1;
                    }
                }
                reads = async { reading_cancels.as_mut().expect("guarded").await }, if reading_cancels.is_some() => {
                    reading_cancels = None;
                    self.cancel_requests_read(reads);
                }
                Some((id, run, ended)) = self.tasks.next(), if !self.tasks.is_empty() => {
                    self.ended(id, run, ended);
                    // Take everything else that is ready into the same batch.
                    while let Some(Some((id, run, ended))) = self.tasks.next().now_or_never() {
                        self.ended(id, run, ended);
                    }
                }
                written = async { writing.as_mut().expect("guarded").await }, if writing.is_some() => {
                    writing = None;
                    self.writing.clear();
                    self.apply(written);
                }
                fetched = async { fetching.as_mut().expect("guarded").await }, if fetching.is_some() => {
                    fetching = None;
                    let carried = std::mem::take(&mut self.carried);
                    if fetched.is_ok() {
                        self.apply(Written {
                            done: carried.into_iter().map(|(id, run)| (Done::Succeeded(id), run)).collect(),
                            ..Written::default()
                        });
                    } else {
                        // Rolled back with the fetch: written with the next batch.
                        self.pending.extend(carried.into_iter().map(|(id, run)| Pending::Succeed(id, run)));
                    }
                    match fetched {
                        Ok(Fetch { jobs, next_due }) => {
                            self.db_recovered();
                            let got = jobs.len();
                            self.adapt_prefetch(got, asked, self.ended_total - ended_at_fetch);
                            for job in jobs {
                                self.held.insert(job.id, Held::unstarted(job.run));
                                self.buffer.push_back(job);
                            }
                            if self.draining {
                                // Fetched as the drain began: back at once, unstarted.
                                self.return_buffered();
                            }
                            self.start_buffered();
                            if got == 0 && wakes == wakes_at_fetch {
                                // No more due jobs: wait for a wake-up, the poll, or the
                                // next job's run time.
                                want_fetch = false;
                                next_poll = Instant::now() + poll;
                                if let Some(due_in) = next_due {
                                    let due = Instant::now() + Duration::from_millis(due_in.max(0) as u64);
                                    next_poll = next_poll.min(due);
                                }
                            }
                        }
                        Err(e) => self.db_failed("fetch jobs", &e),
                    }
                }
                Ok(()) = wake.changed() => {
                    want_fetch = true;
                    wakes += 1;
                }
                Some(event) = events.recv() => {
                    want_fetch = true;
                    wakes += 1;
                    if event == Event::Reconnected {
                        read_cancels = true;
                    }
                }
                _ = sleep_until(next_poll) => {
                    want_fetch = true;
                    wakes += 1;
                    read_cancels |= sqlite;
                    next_poll = Instant::now() + poll;
                }
                _ = sleep_until(backoff_until.unwrap_or_else(Instant::now)), if backoff_until.is_some() => {
                    self.backoff_until = None;
                }
            }
        }
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        tracing::debug!(queue = %queue, "worker stopped");
    }

    /// Run #6, after a fetch that asked `asked` and got `got` while `ended_meanwhile`
    /// handlers ended.
    fn adapt_prefetch(&mut self, got: usize, asked: usize, ended_meanwhile: u64) {
        self.prefetch = next_prefetch(
            self.prefetch,
            (self.settings.prefetch, self.settings.prefetch_max),
            got == asked,
            ended_meanwhile,
        );
    }

    /// Run #8: ends the run with database calls still in flight (dropped) and jobs still
    /// held: their endings are not written, and they go back to the queue when their
    /// leases expire, without an attempt used (store #2).
    fn give_up(&mut self, queue: &str) {
        // (Jobs fetched ahead are in `held` too.)
        let left = self.held.len();
        tracing::warn!(
            queue,
            jobs = left,
            waited_ms = DB_WAIT_AFTER_HARD_STOP.as_millis() as u64,
            "the database did not answer after the hard stop; stopping without writing how these jobs ended: they go back to the queue when their leases expire"
        );
        self.cx.count(LEFT_TO_LEASE, left as u64);
        self.pending.clear();
        self.writing.clear();
        self.carried.clear();
        self.buffer.clear();
        self.held.clear();
    }

    fn db_failed(&mut self, what: &str, e: &Error) {
        tracing::warn!(
            queue = %self.settings.queue,
            error = %e,
            retry_in_ms = self.backoff.as_millis() as u64,
            "could not {what}; backing off"
        );
        self.backoff_until = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_DB_BACKOFF);
    }

    fn db_recovered(&mut self) {
        self.backoff = FIRST_DB_BACKOFF;
        self.backoff_until = None;
    }

    /// Starts buffered jobs while handler slots are free.
    fn start_buffered(&mut self) {
        while self.tasks.len() < self.settings.concurrency
            && let Some(job) = self.buffer.pop_front()
        {
            if self.held.get(&job.id).is_some_and(|h| h.lost) {
                self.release(job.id); // its lease went while it waited: fenced, nothing to write
                continue;
            }
            self.start(job);
        }
    }

    /// The drain: every buffered job goes back to the queue at once, unstarted.
    fn return_buffered(&mut self) {
        let n = self.buffer.len() as u64;
        for job in self.buffer.drain(..) {
            self.pending.push(Pending::Interrupt(job.id, job.run));
        }
        if n > 0 {
            self.cx.count(RETURNED_UNSTARTED, n);
        }
    }

    /// Jobs fetched ahead that have waited a whole heartbeat period go back to the queue
    /// at once, unstarted, and the fetch-ahead drops to its floor (run #6): the handlers
    /// turned out slower than the batch assumed, and other workers (or this one, later)
    /// should have them rather than this buffer holding them.
    fn return_stale(&mut self) {
        let period = self.settings.heartbeat;
        if self
            .buffer
            .front()
            .is_none_or(|j| j.fetch_started.elapsed() < period)
        {
            return;
        }
        self.prefetch = self.settings.prefetch;
        let mut n = 0;
        let pending = &mut self.pending;
        self.buffer.retain(|job| {
            let stale = job.fetch_started.elapsed() >= period;
            if stale {
                pending.push(Pending::Interrupt(job.id, job.run));
                n += 1;
            }
            !stale
        });
        self.cx.count(RETURNED_UNSTARTED, n);
        tracing::debug!(queue = %self.settings.queue, jobs = n, "jobs fetched ahead waited a whole heartbeat: returned to the queue");
    }

    /// Starts one fetched job in a task of its own (run #2).
    fn start(&mut self, fetched: Fetched) {
        let (id, run, fetch_started) = (fetched.id, fetched.run, fetched.fetch_started);
        let attempt = (fetched.attempts.max(0) as u32).saturating_add(1);
        let source = Arc::new(self.cx.hard_stop().child());
        let completed_in_tx = Arc::new(AtomicBool::new(false));
        let lease = Lease {
            run,
            store: self.store.clone(),
            completed_in_tx: Arc::clone(&completed_in_tx),
        };
        let mut held = Held {
            run,
            attempt,
            source: Some(Arc::clone(&source)),
            abort: None,
            completed_in_tx,
            lost: false,
        };
        match (self.handler)(
            fetched,
            lease,
            Arc::clone(&self.settings.queue),
            source.token(),
        ) {
            Ok(fut) => {
                // The job is an operation (docs/architecture.md, "Operations") under the
                // worker's service — `start` runs while the host polls the worker in its
                // scope —, named by its queue, and what the handler begins (a query, a call)
                // is its child. Inert without a registry.
                let op = match OperationScope::current() {
                    Some(scope) => scope.begin(OperationKind::Job, &self.settings.queue, None),
                    None => Operation::none(),
                };
                let token = source.token();
                let fut = async move {
                    let result = op.scoped(fut).await;
                    match (&result, token.reason()) {
                        (Ok(()), _) => op.complete(),
                        (Err(_), Some(reason)) => op.cancelled(reason),
                        (Err(error), None) => op.failed(error),
                    }
                    result
                };
                self.jobs.register(id, run, fetch_started, source);
                let task = tokio::spawn(fut);
                held.abort = Some(task.abort_handle());
                self.tasks.push(Box::pin(async move {
                    let ended = task.await.map_err(|e| match e.try_into_panic() {
                        Ok(p) => gracefully_host::panic_message(&*p).to_owned(),
                        Err(e) => e.to_string(),
                    });
                    (id, run, ended)
                }));
            }
            Err(decode) => {
                tracing::error!(queue = %self.settings.queue, job = id, error = %decode, "job is dead: its payload does not decode");
                self.pending.push(Pending::Dead {
                    id,
                    run,
                    error: crate::store::without_nul(decode),
                });
            }
        }
        self.held.insert(id, held);
    }

    /// A handler's task ended: decide, and queue the write.
    fn ended(&mut self, id: i64, run: i64, ended: Ended) {
        self.ended_total += 1;
        // A newer attempt of the same job may hold the entry (this one lost its lease and
        // the job came back here): this attempt's ending is fenced, nothing to write.
        let Some(held) = self.held.get(&id).filter(|h| h.run == run) else {
            self.jobs.unregister(id, run);
            return;
        };
        self.jobs.unregister(id, held.run);
        let run = held.run;
        let reason = held.source.as_ref().and_then(|s| s.token().reason());
        let in_tx = held.completed_in_tx.load(Ordering::Acquire);
        let pending = match verdict(ended, reason, in_tx) {
            Verdict::Succeed => Pending::Succeed(id, run),
            // Fenced: a no-op if its transaction committed (store #1); counted at the flush.
            Verdict::CompletedInTx => Pending::Interrupt(id, run),
            Verdict::Interrupt => Pending::Interrupt(id, run),
            Verdict::Cancelled(error) => Pending::Cancelled { id, run, error },
            Verdict::Fail(error) => {
                let delay = self.settings.backoff.delay(held.attempt);
                tracing::warn!(queue = %self.settings.queue, job = id, attempt = held.attempt, error = %error, "job failed");
                Pending::Fail {
                    id,
                    run,
                    error,
                    // Saturating, as `NewJob::delay` clamps (an `as` cast would wrap a huge
                    // delay to a negative one: an immediate retry).
                    delay_ms: i64::try_from(delay.as_millis())
                        .unwrap_or(i64::MAX)
                        .min(i64::MAX / 4),
                }
            }
        };
        self.pending.push(pending);
    }

    fn count_success(&self) {
        self.cx.count(SUCCEEDED, 1);
        if self.draining {
            self.cx.count(FINISHED_DURING_DRAIN, 1);
        }
    }

    /// Applies a written batch: counts, releases the holds (run #1); after a database
    /// error keeps what is left for the next batch and backs off.
    fn apply(&mut self, written: Written) {
        for (done, run) in written.done {
            let id = done.id();
            // The entry may already belong to a newer attempt of the job (fetched again
            // between this write's return to the queue and its end): leave that one alone.
            let current = self.held.get(&id).is_some_and(|h| h.run == run);
            match done {
                Done::Succeeded(_) => self.count_success(),
                Done::Interrupted { returned, .. } => {
                    let completed = current
                        && self
                            .held
                            .get(&id)
                            .is_some_and(|h| h.completed_in_tx.load(Ordering::Acquire));
                    let unstarted =
                        current && self.held.get(&id).is_some_and(|h| h.source.is_none());
                    if returned && completed {
                        tracing::warn!(queue = %self.settings.queue, job = id, "the handler completed the job in a transaction that did not commit; it is back in the queue");
                    }
                    if returned && !unstarted {
                        self.cx.count(INTERRUPTED, 1);
                    } else if completed {
                        self.count_success();
                    }
                }
                Done::Failed { state, .. } => match state {
                    Some(JobState::Dead) => self.cx.count(DEAD, 1),
                    Some(_) => self.cx.count(RETRIED, 1),
                    None => {}
                },
                Done::Dead(_) => self.cx.count(DEAD, 1),
                Done::Cancelled(_) => self.cx.count(CANCELLED, 1),
            }
            if current {
                self.release(id);
            }
        }
        if let Some(e) = written.error {
            self.db_failed("record how jobs ended", &e);
            let mut left = written.left;
            left.append(&mut self.pending);
            self.pending = left;
        }
    }

    fn release(&mut self, id: i64) {
        self.held.remove(&id);
    }

    /// Starts a heartbeat: renews the held leases and reclaims expired leases of the
    /// queue. [`heartbeat_done`](Self::heartbeat_done) applies what it found.
    fn heartbeat(&mut self, queue: &str) -> BoxFuture<'static, Beat> {
        self.return_stale();
        let held: Vec<(i64, i64)> = self
            .held
            .iter()
            // A job its handler completed in its own transaction is no longer running in
            // the table: not a lost lease.
            .filter(|(_, h)| !h.lost && !h.completed_in_tx.load(Ordering::Acquire))
            .map(|(id, h)| (*id, h.run))
            .collect();
        let (store, queue, lease) = (self.store.clone(), queue.to_owned(), self.lease_ms());
        Box::pin(async move {
            let renewed = if held.is_empty() {
                Ok(Vec::new())
            } else {
                store.renew(&held, lease).await
            };
            let reclaimed = store.reclaim(&queue).await;
            Beat {
                held,
                renewed,
                reclaimed,
            }
        })
    }

    /// Fires the tokens of jobs whose lease was lost or that are to be cancelled, and
    /// counts the reclaimed. Returns whether jobs were reclaimed (so a fetch is worth it).
    fn heartbeat_done(&mut self, queue: &str, beat: Beat) -> bool {
        let Beat {
            held,
            renewed,
            reclaimed,
        } = beat;
        // Only attempts still held, and not ended, can have lost their lease: one whose
        // handler ended meanwhile has its ending on the way (the write is fenced, so a
        // lost lease changes nothing there), and it may be that write that took its row
        // out of `running` before the renewal read it. (A job fetched ahead and not yet
        // started has no task: it is marked lost, so it never starts.)
        let running = |run: &Self, id: i64, r: i64| {
            run.held
                .get(&id)
                .is_some_and(|h| h.run == r && h.abort.as_ref().is_none_or(|a| !a.is_finished()))
        };
        match renewed {
            Ok(renewed) => {
                self.last_renewed = Instant::now();
                let mut found: HashMap<i64, Option<String>> = renewed
                    .into_iter()
                    .map(|r| (r.id, r.cancel_message))
                    .collect();
                for (id, r) in held {
                    match found.remove(&id) {
                        Some(Some(message)) => self.fire_cancel(id, message),
                        Some(None) => {}
                        None if running(self, id, r) => self.lose(id, "another worker took the job over, or its lease expired and it was reclaimed"),
                        None => {}
                    }
                }
            }
            Err(e) => {
                tracing::warn!(queue, error = %e, "could not renew job leases");
                if self.last_renewed.elapsed() >= self.settings.lease {
                    for (id, r) in held {
                        if running(self, id, r) {
                            self.lose(id, "its lease could not be renewed (the database was unreachable) and has expired");
                        }
                    }
                }
            }
        }
        match reclaimed {
            Ok(0) => false,
            Ok(n) => {
                tracing::warn!(
                    queue,
                    jobs = n,
                    "reclaimed jobs whose worker stopped renewing their lease"
                );
                self.cx.count(RECLAIMED, n);
                true
            }
            Err(e) => {
                tracing::debug!(queue, error = %e, "could not reclaim expired leases");
                false
            }
        }
    }

    fn lose(&mut self, id: i64, why: &str) {
        let Some(h) = self.held.get_mut(&id) else {
            return;
        };
        // Completed in its transaction since the renewal was sent: not lost.
        if h.lost || h.completed_in_tx.load(Ordering::Acquire) {
            return;
        }
        h.lost = true;
        let Some(source) = &h.source else { return };
        self.cx.count(LEASE_LOST, 1);
        tracing::warn!(queue = %self.settings.queue, job = id, "lease lost: {why}; the attempt is stopped and fenced");
        source.cancel_with(
            Reason::failed(Error::LeaseLost {
                id: JobId::from(id),
            })
            .with_message(format!("lease lost: {why}")),
        );
    }

    fn fire_cancel(&mut self, id: i64, message: String) {
        if let Some(source) = self.held.get(&id).and_then(|h| h.source.as_ref()) {
            source.cancel_with(Reason::requested().with_message(message));
        } else if let Some(at) = self.buffer.iter().position(|j| j.id == id) {
            // Cancelled while it waited in the buffer, and the heartbeat found it first: it
            // never starts. (A cancel that reaches this process first through
            // `Jobs::cancel` here or PostgreSQL's notification is remembered instead, and the
            // job starts with its token already fired, so its handler sees it at once and
            // the job ends `cancelled` unless the handler returns `Ok`.)
            let job = self.buffer.remove(at).expect("found");
            self.pending.push(Pending::Cancelled {
                id,
                run: job.run,
                error: format!("cancelled before it started: {message}"),
            });
        }
    }

    /// Starts reading cancel requests for the held jobs from the table (SQLite's way
    /// across processes; PostgreSQL's after a notification may have been missed).
    fn read_cancel_requests(&mut self) -> Option<BoxFuture<'static, CancelReads>> {
        let held: Vec<(i64, i64)> = self
            .held
            .iter()
            .filter(|(_, h)| {
                h.abort.is_some() && h.source.as_ref().is_some_and(|s| !s.is_cancelled())
            })
            .map(|(id, h)| (*id, h.run))
            .collect();
        if held.is_empty() {
            return None;
        }
        let store = self.store.clone();
        Some(Box::pin(async move { store.cancel_requests(&held).await }))
    }

    fn cancel_requests_read(&mut self, reads: CancelReads) {
        match reads {
            Ok(requests) => {
                for r in requests {
                    self.fire_cancel(r.id, r.cancel_message.unwrap_or_default());
                }
            }
            Err(e) => self.db_failed("read cancel requests", &e),
        }
    }
}

/// Run #6: the fetch-ahead doubles (up to `ceiling`) when the handlers got through at
/// least half of it while one fetch was in flight — short jobs, for which larger batches
/// mean fewer round trips and statements per job — provided the fetch was full (a queue
/// running short is not a reason to hold more); it halves (down to `floor`) when they got
/// through under an eighth of it — long jobs, not to be hoarded from other workers.
fn next_prefetch(
    current: usize,
    (floor, ceiling): (usize, usize),
    full_fetch: bool,
    ended_meanwhile: u64,
) -> usize {
    if ended_meanwhile >= current.div_ceil(2).max(1) as u64 {
        if full_fetch {
            return (current * 2).max(1).min(ceiling);
        }
        current
    } else if ended_meanwhile < (current / 8) as u64 {
        (current / 2).max(floor)
    } else {
        current
    }
}

impl Drop for Run {
    /// The host's abort (run #4). Handlers that already finished (their result not yet
    /// collected) and endings queued or being written get their real endings; the
    /// others are aborted and returned to the queue.
    fn drop(&mut self) {
        if let Some(l) = self.listener.take() {
            l.abort();
        }
        if self.held.is_empty() {
            return;
        }
        // Collect the tasks that already finished. `FuturesUnordered` may return
        // `Pending` to yield after polling many futures: try a bounded number of times.
        for _ in 0..=(self.tasks.len() * 2 + 1) {
            match self.tasks.next().now_or_never() {
                Some(Some((id, run, ended))) => self.ended(id, run, ended),
                Some(None) => break,
                None => continue,
            }
        }
        // The batch whose write the abort dropped, then the endings not yet sent. The
        // writes are fenced (`run` and state `running`), so one that did commit is a no-op.
        let mut endings = std::mem::take(&mut self.writing);
        endings.extend(
            self.carried
                .drain(..)
                .map(|(id, run)| Pending::Succeed(id, run)),
        );
        endings.append(&mut self.pending);
        let mut aborted = 0;
        let mut interrupt = Vec::new();
        // How each job returned below is counted once its return is written, unless it was
        // counted as aborted: a handler that had already finished (its result not
        // collected) was interrupted, a job fetched ahead never started.
        let mut count_as: HashMap<i64, &'static str> = HashMap::new();
        for (id, h) in &self.held {
            let mut was_aborted = false;
            if let Some(abort) = &h.abort
                && !abort.is_finished()
            {
                abort.abort();
                aborted += 1;
                was_aborted = true;
            }
            if !endings.iter().any(|p| p.job() == (*id, h.run)) {
                interrupt.push((*id, h.run));
                if !was_aborted {
                    let key = if h.source.is_none() {
                        RETURNED_UNSTARTED
                    } else {
                        INTERRUPTED
                    };
                    count_as.insert(*id, key);
                }
            }
            self.jobs.unregister(*id, h.run);
        }
        self.cx.count(ABORTED, aborted);
        let Some(runtime) = self.runtime.clone() else {
            return;
        };
        let store = self.store.clone();
        let queue = Arc::clone(&self.settings.queue);
        let cx = self.cx.clone();
        let draining = self.draining;
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        runtime.spawn(async move {
            if !endings.is_empty() {
                let written = endings::write(store.clone(), Arc::clone(&queue), endings).await;
                // Counted before the report is taken (the drop waits for this task, below).
                for (done, _) in &written.done {
                    count_written_at_abort(&cx, draining, done);
                }
                if let Some(e) = written.error {
                    tracing::warn!(queue = %queue, error = %e, jobs = written.left.len(), "endings of aborted jobs could not be written; they will be reclaimed when their lease expires");
                }
            }
            if !interrupt.is_empty() {
                match store.interrupt(&queue, &interrupt).await {
                    Ok(ids) => {
                        for id in &ids {
                            if let Some(key) = count_as.get(id) {
                                cx.count(*key, 1);
                            }
                        }
                        tracing::warn!(queue = %queue, jobs = ids.len(), "aborted jobs returned to the queue");
                    }
                    Err(e) => tracing::warn!(queue = %queue, error = %e, "aborted jobs could not be returned; they will be reclaimed when their lease expires"),
                }
            }
            let _ = done_tx.send(());
        });
        // Wait (bounded) for those writes unless this thread may be the one that must run
        // them. The host drops aborted services on its dropper thread, which has entered
        // the runtime but runs no task, while the runtime's own threads keep going: without
        // this wait the host saw the drop finished, printed its report and exited before
        // the writes ran, and the aborted jobs sat `running` until their lease expired
        // (each such deploy cost them a lease loss). Inside a task — dropped in place on a
        // runtime thread — blocking could stop the very thread the writes need, so there
        // the writes run when they can. The bound stays inside the host's abort settle
        // (200 ms), which waits for this drop; a closed runtime drops the task, which ends
        // the wait at once.
        if tokio::task::try_id().is_none() {
            let _ = done_rx.recv_timeout(Duration::from_millis(150));
        }
    }
}

/// Counts an ending the abort's own write recorded (`Run::apply` does this for the loop's).
fn count_written_at_abort(cx: &ServiceContext, draining: bool, done: &Done) {
    match done {
        Done::Succeeded(_) => {
            cx.count(SUCCEEDED, 1);
            if draining {
                cx.count(FINISHED_DURING_DRAIN, 1);
            }
        }
        Done::Interrupted { returned: true, .. } => cx.count(INTERRUPTED, 1),
        Done::Interrupted { .. } => {}
        Done::Failed { state, .. } => match state {
            Some(JobState::Dead) => cx.count(DEAD, 1),
            Some(_) => cx.count(RETRIED, 1),
            None => {}
        },
        Done::Dead(_) => cx.count(DEAD, 1),
        Done::Cancelled(_) => cx.count(CANCELLED, 1),
    }
}

#[cfg(test)]
mod prefetch_tests {
    use super::next_prefetch;

    #[test]
    fn short_jobs_grow_the_fetch_ahead_to_its_ceiling_and_long_ones_bring_it_back() {
        let bounds = (16, 64);
        // No-op jobs: every fetch sees more jobs end than are buffered.
        let mut p = 16;
        for _ in 0..5 {
            p = next_prefetch(p, bounds, true, 1_000);
        }
        assert_eq!(p, 64, "doubles, then stays at the ceiling");
        // Long jobs: hardly any end during a fetch.
        for _ in 0..5 {
            p = next_prefetch(p, bounds, true, 1);
        }
        assert_eq!(p, 16, "halves, then stays at the floor");
    }

    #[test]
    fn a_short_fetch_never_grows_it_and_a_middling_rate_keeps_it() {
        assert_eq!(next_prefetch(16, (16, 64), false, 1_000), 16);
        assert_eq!(
            next_prefetch(32, (16, 64), true, 10),
            32,
            "between an eighth and half"
        );
    }

    #[test]
    fn a_fixed_prefetch_never_moves() {
        for ended in [0, 3, 8, 1_000] {
            assert_eq!(next_prefetch(8, (8, 8), true, ended), 8);
        }
        // Zero ahead (fetch only for free slots) stays zero.
        assert_eq!(next_prefetch(0, (0, 0), true, 1_000), 0);
    }
}
