//! [`Jobs`]: the handle to a job store — enqueue, inspect, cancel, retry, and make workers.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, Reason};
use sqlx::{PgPool, SqlitePool};
use tokio::sync::watch;

use crate::connection::JobConnection;
use crate::connection::sealed::Conn;
use crate::error::Error;
use crate::new_job::{NewJob, Row, validate_queue};
use crate::state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;

/// The default PostgreSQL schema of the job table.
pub const DEFAULT_SCHEMA: &str = "gracefully_jobs";

/// The handle to a durable job store on SQLite or PostgreSQL: enqueue jobs (alone, in
/// batches, or inside your own transaction), look them up, cancel or retry them, and build
/// [`Worker`](crate::Worker)s. Cheap to clone (one reference count); clones share the
/// in-process registry of running jobs, so a [`cancel`](Self::cancel) reaches a job
/// running in this process at once.
///
/// ```
/// use gracefully_jobs::{Jobs, JobState, NewJob};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Fulfil { order: u64 }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), gracefully_jobs::Error> {
/// let pool = sqlx::SqlitePool::connect("sqlite::memory:").await?;
/// let jobs = Jobs::sqlite(pool).await?; // creates or migrates the table
///
/// let job = jobs.enqueue(NewJob::new("fulfil", &Fulfil { order: 42 }).unique_key("order-42")).await?;
/// let again = jobs.enqueue(NewJob::new("fulfil", &Fulfil { order: 42 }).unique_key("order-42")).await?;
/// assert_eq!((again.id, again.created), (job.id, false)); // a duplicate is a no-op
///
/// let info = jobs.get(job.id).await?.expect("it exists");
/// assert_eq!(info.state, JobState::Queued);
/// # Ok(()) }
/// ```
///
/// *Anchors:* River's `Client` (insert, `JobCancel`, `JobRetry`), graphile-worker's
/// `WorkerUtils`; .NET has no built-in durable queue (Hangfire's `BackgroundJob.Enqueue`).
#[derive(Clone)]
pub struct Jobs {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    /// Jobs running in this process: id → (run, the source of the job's token).
    running: Mutex<HashMap<i64, (i64, Arc<CancellationSource>)>>,
    /// Bumped by every enqueue through this handle: wakes this process's workers at once.
    pub(crate) wake: watch::Sender<u64>,
    /// Cancel requests for jobs not (yet) running here: a job fetched just before its
    /// cancel request arrived is registered just after it. [`Jobs::register`] looks here.
    /// At most [`EARLY_CANCELS`] entries, none older than [`EARLY_CANCEL_AGE`].
    early_cancels: Mutex<VecDeque<(i64, Reason, Instant)>>,
}

const EARLY_CANCELS: usize = 256;
const EARLY_CANCEL_AGE: Duration = Duration::from_secs(30);

/// What an enqueue did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Enqueued {
    /// The job's id — the existing job's, if a job with the same unique key was there.
    pub id: JobId,
    /// Whether a job was created (`false`: a job with this unique key already existed).
    pub created: bool,
}

impl Jobs {
    /// Jobs stored in SQLite, in the tables `gracefully_jobs` and `gracefully_jobs_schema`
    /// of `pool`'s database, created or migrated now. The embedded default: workers in
    /// one process (other processes may enqueue, inspect and cancel through the same file;
    /// a cancel from another process reaches a running job at the worker's next poll).
    /// Use WAL mode (`SqliteConnectOptions::journal_mode(Wal)`) for a file database.
    pub async fn sqlite(pool: SqlitePool) -> Result<Jobs, Error> {
        let store = SqliteStore::new(pool);
        store.migrate().await?;
        Ok(Jobs::from_store(Store::Sqlite(Arc::new(store))))
    }

    /// Jobs stored in PostgreSQL, in the schema [`DEFAULT_SCHEMA`], created or migrated
    /// now. Workers may run in many processes on many machines.
    pub async fn postgres(pool: PgPool) -> Result<Jobs, Error> {
        Jobs::postgres_in_schema(pool, DEFAULT_SCHEMA).await
    }

    /// Jobs stored in PostgreSQL in the schema `schema` (1 to 48 of `[a-z0-9_]`): separate
    /// job stores in one database, for instance one per test.
    pub async fn postgres_in_schema(pool: PgPool, schema: &str) -> Result<Jobs, Error> {
        let store = PgStore::new(pool, schema)?;
        store.migrate().await?;
        Ok(Jobs::from_store(Store::Postgres(Arc::new(store))))
    }

    fn from_store(store: Store) -> Jobs {
        Jobs {
            inner: Arc::new(Inner {
                store,
                running: Mutex::new(HashMap::new()),
                wake: watch::Sender::new(0),
                early_cancels: Mutex::new(VecDeque::new()),
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Enqueues one job. With a [`unique_key`](NewJob::unique_key) that a job of the same
    /// queue already has, nothing is written and that job's id is returned with
    /// `created: false`.
    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, Error> {
        let row = Row::from_new(job)?;
        let (id, created) = self.inner.store.enqueue(row).await?;
        self.wake_local();
        Ok(Enqueued { id, created })
    }

    /// Enqueues many jobs in one statement per thousand (one transaction on SQLite, one
    /// statement on PostgreSQL: all or none). Jobs whose unique key exists are skipped.
    /// Returns how many were created.
    pub async fn enqueue_batch(
        &self,
        jobs: impl IntoIterator<Item = NewJob>,
    ) -> Result<u64, Error> {
        let rows = jobs
            .into_iter()
            .map(Row::from_new)
            .collect::<Result<Vec<_>, _>>()?;
        let n = self.inner.store.enqueue_many(rows).await?;
        self.wake_local();
        Ok(n)
    }

    /// Enqueues one job on `conn` — your transaction's connection (`&mut *tx`): the job
    /// exists only if your transaction commits, together with your writes (the
    /// transactional outbox, without the outbox). Workers are woken at the commit on
    /// PostgreSQL (`NOTIFY` is transactional); on SQLite at once, and a worker that looks
    /// before your commit finds the job at its next poll.
    ///
    /// ```no_run
    /// # use gracefully_jobs::{Jobs, NewJob, Error};
    /// # async fn f(pool: sqlx::PgPool, jobs: Jobs) -> Result<(), Error> {
    /// let mut tx = pool.begin().await?;
    /// let order: i64 = sqlx::query_scalar("INSERT INTO orders (item) VALUES ('book') RETURNING id")
    ///     .fetch_one(&mut *tx)
    ///     .await?;
    /// jobs.enqueue_in(&mut *tx, NewJob::new("fulfil", &order)).await?;
    /// tx.commit().await?; // the order and its job, or neither
    /// # Ok(()) }
    /// ```
    pub async fn enqueue_in<C: JobConnection + ?Sized>(
        &self,
        conn: &mut C,
        job: NewJob,
    ) -> Result<Enqueued, Error> {
        let row = Row::from_new(job)?;
        let (id, created) = match (&self.inner.store, conn.conn()) {
            (Store::Postgres(s), Conn::Postgres(c)) => s.enqueue_on(c, row).await?,
            (Store::Sqlite(s), Conn::Sqlite(c)) => s.enqueue_on(c, row).await?,
            (store, conn) => return Err(self.wrong_backend(store, &conn)),
        };
        self.wake_local();
        Ok(Enqueued { id, created })
    }

    /// [`enqueue_batch`](Self::enqueue_batch) on your transaction's connection.
    pub async fn enqueue_batch_in<C: JobConnection + ?Sized>(
        &self,
        conn: &mut C,
        jobs: impl IntoIterator<Item = NewJob>,
    ) -> Result<u64, Error> {
        let rows = jobs
            .into_iter()
            .map(Row::from_new)
            .collect::<Result<Vec<_>, _>>()?;
        let n = match (&self.inner.store, conn.conn()) {
            (Store::Postgres(s), Conn::Postgres(c)) => s.enqueue_many_on(c, rows).await?,
            (Store::Sqlite(s), Conn::Sqlite(c)) => s.enqueue_many_on(c, rows).await?,
            (store, conn) => return Err(self.wrong_backend(store, &conn)),
        };
        self.wake_local();
        Ok(n)
    }

    fn wrong_backend(&self, store: &Store, conn: &Conn<'_>) -> Error {
        Error::WrongBackend {
            jobs: store.backend(),
            connection: conn.backend(),
        }
    }

    fn wake_local(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The job with this id, as stored now, or `None`.
    pub async fn get(&self, id: JobId) -> Result<Option<JobInfo>, Error> {
        self.inner.store.get(id).await
    }

    /// The newest `limit` jobs (highest ids first), of one queue and one state if given.
    pub async fn list(
        &self,
        queue: Option<&str>,
        state: Option<JobState>,
        limit: u32,
    ) -> Result<Vec<JobInfo>, Error> {
        self.inner.store.list(queue, state, i64::from(limit)).await
    }

    /// How many jobs are in each state, in one queue or all.
    pub async fn counts(&self, queue: Option<&str>) -> Result<StateCounts, Error> {
        if let Some(q) = queue {
            validate_queue(q)?;
        }
        self.inner.store.counts(queue).await
    }

    /// Cancels a job, from any process. A waiting job (queued, retrying, interrupted) is
    /// cancelled at once. A *running* one has its token fired with
    /// [`ReasonKind::Requested`](gracefully::ReasonKind::Requested) and `message`: at once
    /// if it runs in this process; on PostgreSQL within milliseconds wherever it runs
    /// (`NOTIFY`, with the workers' lease renewals as the fallback); on SQLite at the
    /// worker's next poll. It ends as [`JobState::Cancelled`] once its handler returns —
    /// not retried — unless the handler finishes its work anyway and returns `Ok`.
    ///
    /// *Anchors:* River's `JobCancel` (also reaches running jobs); .NET's
    /// `CancellationTokenSource.Cancel()` for a job's token. Most job crates cancel queued
    /// jobs only.
    pub async fn cancel(&self, id: JobId, message: &str) -> Result<CancelOutcome, Error> {
        // PostgreSQL refuses NUL characters in text; both backends store the message
        // without them.
        let message = crate::store::without_nul(message.to_owned());
        let message = message.as_str();
        let outcome = self.inner.store.cancel(id, message).await?;
        if outcome == CancelOutcome::Requested {
            self.fire_local(
                id.get(),
                None,
                Reason::requested().with_message(message.to_owned()),
            );
        }
        Ok(outcome)
    }

    /// Puts a dead or cancelled job back in the queue with its attempts reset. Returns
    /// `false` if the job is in another state (or does not exist).
    pub async fn retry(&self, id: JobId) -> Result<bool, Error> {
        let retried = self.inner.store.retry(id).await?;
        // A cancel remembered for the job's last attempt must not reach the new one.
        self.early_cancels().retain(|(i, _, _)| *i != id.get());
        if retried {
            self.wake_local();
        }
        Ok(retried)
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<i64, (i64, Arc<CancellationSource>)>> {
        // Nothing panics while holding the lock; recover the map if it ever did.
        self.inner
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a running job's token source (so a cancel in this process fires it),
    /// and fires it at once if a cancel request for it came just before — after the
    /// fetch that claimed this attempt began. A cancel heard before that fetch began was
    /// committed before it, so it concerned an earlier attempt (one that has ended, since
    /// the job could be claimed again — e.g. cancelled, then `retry`): it is dropped, not
    /// applied, else the retried job would be cancelled again with the old reason.
    pub(crate) fn register(
        &self,
        id: i64,
        run: i64,
        fetch_started: Instant,
        source: Arc<CancellationSource>,
    ) {
        self.registry().insert(id, (run, Arc::clone(&source)));
        let early = {
            let mut early = self.early_cancels();
            let mut found = None;
            early.retain(|(i, reason, at)| {
                if *i != id {
                    return true;
                }
                if *at >= fetch_started && found.is_none() {
                    found = Some(reason.clone());
                }
                false
            });
            found
        };
        if let Some(reason) = early {
            source.cancel_with(reason);
        }
    }

    fn early_cancels(&self) -> MutexGuard<'_, VecDeque<(i64, Reason, Instant)>> {
        self.inner
            .early_cancels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn unregister(&self, id: i64, run: i64) {
        let mut reg = self.registry();
        if reg.get(&id).is_some_and(|(r, _)| *r == run) {
            reg.remove(&id);
        }
    }

    /// Fires the token of job `id` if it runs in this process (of attempt `run`, if
    /// given). The callbacks run after the registry's lock is released.
    pub(crate) fn fire_local(&self, id: i64, run: Option<i64>, reason: Reason) -> bool {
        let source = {
            let reg = self.registry();
            match reg.get(&id) {
                Some((r, s)) if run.is_none_or(|run| run == *r) => Arc::clone(s),
                _ => {
                    drop(reg);
                    // Maybe fetched here and about to be registered: remember it briefly.
                    let mut early = self.early_cancels();
                    let now = Instant::now();
                    while early
                        .front()
                        .is_some_and(|(_, _, at)| now.duration_since(*at) > EARLY_CANCEL_AGE)
                        || early.len() >= EARLY_CANCELS
                    {
                        early.pop_front();
                    }
                    early.push_back((id, reason, now));
                    return false;
                }
            }
        };
        source.cancel_with(reason)
    }
}

impl fmt::Debug for Jobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jobs")
            .field("backend", &self.inner.store.backend())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn jobs() -> Jobs {
        let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
        Jobs::sqlite(pool).await.unwrap()
    }

    #[tokio::test]
    async fn a_cancel_that_arrives_before_its_job_is_registered_fires_at_registration() {
        let jobs = jobs().await;
        let fetch_started = Instant::now();
        assert!(!jobs.fire_local(7, None, Reason::requested().with_message("early")));
        let source = Arc::new(CancellationSource::new());
        jobs.register(7, 1, fetch_started, Arc::clone(&source));
        let reason = source.token().reason().expect("fired at registration");
        assert_eq!(
            (reason.kind(), reason.message()),
            (gracefully::ReasonKind::Requested, Some("early"))
        );
        // Remembered once only.
        let again = Arc::new(CancellationSource::new());
        jobs.register(8, 1, fetch_started, Arc::clone(&again));
        jobs.register(7, 2, fetch_started, Arc::clone(&again));
        assert!(!again.is_cancelled());
    }

    #[tokio::test]
    async fn a_cancel_heard_before_the_fetch_began_does_not_reach_the_fetched_attempt() {
        let jobs = jobs().await;
        assert!(!jobs.fire_local(7, None, Reason::requested().with_message("old")));
        // The job ended cancelled, was retried, and a later fetch claims it again.
        std::thread::sleep(Duration::from_millis(2));
        let fetch_started = Instant::now();
        let source = Arc::new(CancellationSource::new());
        jobs.register(7, 2, fetch_started, Arc::clone(&source));
        assert!(!source.is_cancelled());
        assert!(
            jobs.early_cancels().is_empty(),
            "the stale entry is dropped"
        );
    }

    #[tokio::test]
    async fn retry_forgets_a_remembered_cancel() {
        let jobs = jobs().await;
        let id = jobs.enqueue(NewJob::new("q", &1)).await.unwrap().id;
        assert_eq!(
            jobs.cancel(id, "x").await.unwrap(),
            CancelOutcome::Cancelled
        );
        jobs.fire_local(id.get(), None, Reason::requested());
        assert!(jobs.retry(id).await.unwrap());
        assert!(jobs.early_cancels().is_empty());
    }

    #[tokio::test]
    async fn early_cancels_are_bounded() {
        let jobs = jobs().await;
        for id in 0..(EARLY_CANCELS as i64 * 3) {
            jobs.fire_local(id, None, Reason::requested());
        }
        assert_eq!(jobs.early_cancels().len(), EARLY_CANCELS);
    }

    #[tokio::test]
    async fn a_cancel_reaches_a_registered_job_of_the_same_attempt_only() {
        let jobs = jobs().await;
        let source = Arc::new(CancellationSource::new());
        jobs.register(3, 5, Instant::now(), Arc::clone(&source));
        assert!(
            !jobs.fire_local(3, Some(4), Reason::requested()),
            "another attempt"
        );
        assert!(jobs.fire_local(3, Some(5), Reason::requested()));
        jobs.unregister(3, 5);
        assert!(source.is_cancelled());
    }
}
