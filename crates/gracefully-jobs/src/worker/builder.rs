//! [`WorkerBuilder`]: a worker's queue, handler and options, checked at
//! [`build`](WorkerBuilder::build).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::BoxError;
use serde::de::DeserializeOwned;

use super::Worker;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::job::{Job, Lease};
use crate::jobs::Jobs;
use crate::new_job::validate_queue;
use crate::state::JobId;
use crate::store::{Fetched, Store};

/// Handlers at once, unless [`WorkerBuilder::concurrency`] says otherwise.
pub const DEFAULT_CONCURRENCY: usize = 16;
/// How long a fetched job is held without a renewal (default).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// How often leases are renewed and expired ones reclaimed (default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often an idle worker looks for due jobs without being woken (default).
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// The upper bounds of the duration options. The worker adds them to the clock
/// (`Instant::now() + poll_interval`, which panics on overflow) and writes the lease in
/// `i64` milliseconds; beyond these the worker would not do its job anyway (a day
/// between polls or heartbeats, a year before a dead worker's jobs are reclaimed).
const MAX_LEASE: Duration = Duration::from_secs(365 * 24 * 3600);
const MAX_HEARTBEAT: Duration = Duration::from_secs(24 * 3600);
const MAX_POLL_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A handler's future, boxed.
pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// The handler with its payload type erased: decodes, then calls. `Err` is the decode
/// error's text.
pub(crate) type ErasedHandler = Arc<
    dyn Fn(Fetched, Lease, Arc<str>, CancellationToken) -> Result<HandlerFuture, String>
        + Send
        + Sync,
>;

/// A worker's options, checked.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) queue: Arc<str>,
    pub(crate) concurrency: usize,
    /// Jobs fetched ahead: at least `prefetch`, at most `prefetch_max` (the same when set
    /// by the user; by default the worker adapts between the two, see `run.rs`).
    pub(crate) prefetch: usize,
    pub(crate) prefetch_max: usize,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) backoff: Backoff,
    /// Written to the job row while held: `pid <pid> <random>`.
    pub(crate) worker_id: String,
}

/// Builds a [`Worker`] for one queue: [`Jobs::worker`] → [`handler`](Self::handler) →
/// options → [`build`](Self::build).
///
/// | option | default | |
/// |---|---|---|
/// | [`concurrency`](Self::concurrency) | 16 | handlers running at once |
/// | [`prefetch`](Self::prefetch) | adaptive: 1× to 32× the concurrency | jobs fetched ahead, returned unstarted at the drain |
/// | [`lease`](Self::lease) | 30 s | a job whose worker stops renewing is reclaimed after this |
/// | [`heartbeat`](Self::heartbeat) | 5 s | lease renewal and reclaim period; shorter than the lease |
/// | [`poll_interval`](Self::poll_interval) | 500 ms | look for due jobs without a wake-up |
/// | [`backoff`](Self::backoff) | 1 s doubling to 1 h, jitter 0.5 | wait before retrying a failure |
pub struct WorkerBuilder {
    jobs: Jobs,
    queue: String,
    concurrency: usize,
    prefetch: Option<usize>,
    lease: Duration,
    heartbeat: Duration,
    poll_interval: Duration,
    backoff: Backoff,
    handler: Option<ErasedHandler>,
}

impl WorkerBuilder {
    pub(crate) fn new(jobs: Jobs, queue: String) -> WorkerBuilder {
        WorkerBuilder {
            jobs,
            queue,
            concurrency: DEFAULT_CONCURRENCY,
            prefetch: None,
            lease: DEFAULT_LEASE,
            heartbeat: DEFAULT_HEARTBEAT,
            poll_interval: DEFAULT_POLL_INTERVAL,
            backoff: Backoff::default(),
            handler: None,
        }
    }

    /// The handler: called with each job (its payload decoded from JSON as `T`) and a
    /// token, in a task of its own. Its result decides the job's fate:
    ///
    /// | the handler… | the job |
    /// |---|---|
    /// | returns `Ok(())` | succeeded (unless it already completed in its transaction: [`Job::complete_in`]) |
    /// | returns anything after its token fired for the **shutdown** | interrupted: back in the queue at once, attempt refunded |
    /// | returns anything but `Ok` after its token fired for a **cancel request** | cancelled (not retried) |
    /// | returns an error (a cancellation by its *own* deadline too), or panics | retrying after the [`backoff`](Self::backoff); dead once `max_attempts` are used up, with the error kept |
    /// | — its payload does not decode as `T` | dead at once, with the decoder's error; the handler is not called |
    /// | — its lease was lost (token fired, [`Failed`](gracefully::ReasonKind::Failed)) | nothing: the attempt is fenced off; another worker has the job |
    pub fn handler<T, F, Fut, E>(mut self, handler: F) -> WorkerBuilder
    where
        T: DeserializeOwned + Send + 'static,
        F: Fn(Job<T>, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let erased: ErasedHandler = Arc::new(move |fetched: Fetched, lease, queue, token| {
            let payload: T = serde_json::from_str(&fetched.payload).map_err(|e| {
                format!(
                    "the payload does not decode as {}: {e}",
                    std::any::type_name::<T>()
                )
            })?;
            let job = Job {
                id: JobId::from(fetched.id),
                queue,
                attempt: (fetched.attempts.max(0) as u32).saturating_add(1),
                max_attempts: fetched.max_attempts.max(0) as u32,
                payload,
                lease,
            };
            let fut = handler(job, token);
            Ok(Box::pin(async move { fut.await.map_err(Into::into) }) as HandlerFuture)
        });
        self.handler = Some(erased);
        self
    }

    /// Handlers running at once, from 1 to 10,000 (default 16). Jobs are fetched in
    /// batches of up to the free slots.
    pub fn concurrency(mut self, n: usize) -> WorkerBuilder {
        self.concurrency = n;
        self
    }

    /// Jobs fetched ahead of free handler slots, so that a slot that frees starts its next
    /// job without a round trip and fetches come in larger batches (0 to fetch only for
    /// free slots). They are held under a lease like running jobs; at the drain they go
    /// back to the queue at once, unstarted, for another worker (counted as *returned
    /// unstarted*). At most 10,000.
    ///
    /// Unset, the worker adapts it between the concurrency and 32 times the concurrency:
    /// it doubles when the handlers get through at least half of the jobs fetched ahead
    /// while one fetch is in flight (short jobs: larger batches mean fewer round trips and
    /// statements per job — for no-op jobs, a ceiling of 32× instead of 4× measured ~1.6×
    /// the jobs per second on PostgreSQL and ~2.5× on SQLite with
    /// `benches/throughput.rs`), and halves when they get through under an eighth (long
    /// jobs: not hoarded from other workers). Jobs held ahead by a worker that is killed
    /// wait for their lease to expire, like its running ones.
    pub fn prefetch(mut self, n: usize) -> WorkerBuilder {
        self.prefetch = Some(n);
        self
    }

    /// How long a job is held without a renewal (default 30 s). A worker that dies
    /// (SIGKILL, power loss) has its jobs reclaimed by another worker this long after its
    /// last renewal — back in the queue, no attempt used. Must be longer than the
    /// [`heartbeat`](Self::heartbeat); three heartbeats or more lets a renewal fail twice.
    /// At most a year.
    pub fn lease(mut self, lease: Duration) -> WorkerBuilder {
        self.lease = lease;
        self
    }

    /// How often the worker renews its leases, reads cancel requests for its jobs and
    /// reclaims expired leases of its queue (default 5 s). From 10 ms to a day.
    pub fn heartbeat(mut self, heartbeat: Duration) -> WorkerBuilder {
        self.heartbeat = heartbeat;
        self
    }

    /// How often an idle worker looks for due jobs without being woken (default 500 ms).
    /// Enqueues through the same [`Jobs`] wake it at once, and on PostgreSQL `NOTIFY`
    /// wakes every worker; this is the fallback, and on SQLite it is also how often cancel
    /// requests from other processes are read. From 1 ms to a day.
    pub fn poll_interval(mut self, interval: Duration) -> WorkerBuilder {
        self.poll_interval = interval;
        self
    }

    /// The wait before retrying a failed job (default: [`Backoff::default`]). Any backoff
    /// is accepted: its delays are capped at [`Backoff::MAX_DELAY`].
    pub fn backoff(mut self, backoff: Backoff) -> WorkerBuilder {
        self.backoff = backoff;
        self
    }

    /// Checks the options and builds the worker. Errors name the option at fault.
    pub fn build(self) -> Result<Worker, Error> {
        validate_queue(&self.queue)?;
        let handler = self.handler.ok_or_else(|| {
            Error::config(
                "handler",
                format!(
                    "the worker for queue `{}` has no handler: call .handler(f) before .build()",
                    self.queue
                ),
            )
        })?;
        if self.concurrency == 0 || self.concurrency > 10_000 {
            return Err(Error::config(
                "concurrency",
                format!("must be from 1 to 10000, got {}", self.concurrency),
            ));
        }
        let prefetch = self.prefetch.unwrap_or(self.concurrency);
        let prefetch_max = match self.prefetch {
            Some(n) => n,
            // 32×, measured with `benches/throughput.rs` (no-op jobs, concurrency 16):
            // ceiling 4× → 16× → 32× took SQLite from ~29,000 to ~59,000 to ~73,000 jobs/s
            // and PostgreSQL from ~17,000 to ~26,000 to ~28,000. Only very short jobs reach
            // it (run #6); jobs held ahead longer than a heartbeat period go back to the
            // queue, so a batch that turned out slow is not hoarded from other workers.
            None => (self.concurrency * 32).min(10_000),
        };
        if prefetch > 10_000 {
            return Err(Error::config(
                "prefetch",
                format!("must be at most 10000, got {prefetch}"),
            ));
        }
        // Each option's own range first, so that an error names the option that is out of
        // range and not the one it is compared with (`heartbeat(Duration::MAX)` is a bad
        // heartbeat, not a lease too short for it).
        if self.heartbeat < Duration::from_millis(10) || self.heartbeat > MAX_HEARTBEAT {
            return Err(Error::config(
                "heartbeat",
                format!("must be from 10 ms to a day, got {:?}", self.heartbeat),
            ));
        }
        if self.lease > MAX_LEASE {
            return Err(Error::config(
                "lease",
                format!("must be at most a year, got {:?}", self.lease),
            ));
        }
        if self.lease <= self.heartbeat {
            return Err(Error::config(
                "lease",
                format!(
                    "must be longer than the heartbeat ({:?}) so a lease is renewed before it \
                     expires, got {:?}",
                    self.heartbeat, self.lease
                ),
            ));
        }
        if self.poll_interval < Duration::from_millis(1) || self.poll_interval > MAX_POLL_INTERVAL {
            return Err(Error::config(
                "poll_interval",
                format!("must be from 1 ms to a day, got {:?}", self.poll_interval),
            ));
        }
        // The listener holds one of the pool's connections for as long as the worker runs
        // (`LISTEN`); with no other, nothing could be fetched and no ending written — the
        // worker would wait on the pool for ever, silently, and its drain never end. (SQLite
        // has no listener: a worker works on a pool of one connection.)
        if let Store::Postgres(store) = self.jobs.store() {
            let max = store.pool.options().get_max_connections();
            if max < 2 {
                return Err(Error::config(
                    "max_connections",
                    format!(
                        "the PostgreSQL pool of the worker for queue `{}` has max_connections = \
                         {max}; a worker holds one connection for LISTEN and needs at least one \
                         more to fetch and record jobs: make the pool at least 2 (one more per \
                         further worker on it)",
                        self.queue
                    ),
                ));
            }
        }
        let settings = Settings {
            queue: Arc::from(self.queue.as_str()),
            concurrency: self.concurrency,
            prefetch,
            prefetch_max,
            lease: self.lease,
            heartbeat: self.heartbeat,
            poll_interval: self.poll_interval,
            backoff: self.backoff,
            worker_id: format!("pid {} {:08x}", std::process::id(), fastrand::u32(..)),
        };
        Ok(Worker {
            jobs: self.jobs,
            settings: Arc::new(settings),
            handler,
        })
    }
}

impl fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queue", &self.queue)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("lease", &self.lease)
            .field("heartbeat", &self.heartbeat)
            .field("poll_interval", &self.poll_interval)
            .field("has_handler", &self.handler.is_some())
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// A builder for a worker of `queue`: [`WorkerBuilder::handler`], then
    /// [`build`](WorkerBuilder::build), then register it with the host.
    ///
    /// (Defined beside the builder, so that the store handle does not depend on the worker
    /// that depends on it.)
    pub fn worker(&self, queue: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder::new(self.clone(), queue.into())
    }
}
