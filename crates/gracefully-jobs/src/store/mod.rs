//! The job table and every statement on it, per database. [`Store`] dispatches to
//! [`postgres::PgStore`] or [`sqlite::SqliteStore`], which have the same methods.
//!
//! # Invariants (cited as "store #n")
//!
//! 1. **Fencing.** A pickup increments the row's `run`. Every write that ends an attempt
//!    (`succeed`, `fail`, `dead`, `cancelled`, `interrupt`, `complete_in`, `renew`) matches
//!    `id`, `run` *and* `state = 'running'`, so an attempt whose lease expired (reclaimed:
//!    state no longer `running`) or was taken over (`run` moved on) changes nothing.
//! 2. **Attempts are used up only by genuine failures** (`fail`). A pickup, a shutdown
//!    (`interrupt`) and a reclaim after a lease expired leave `attempts` as it was; a reclaim
//!    counts `lease_losses` instead, and a job that lost its lease [`MAX_LEASE_LOSSES`]
//!    times is dead (a job that kills its worker every time must not loop for ever).
//! 3. **Times are the database's clock**, in milliseconds since the Unix epoch (`run_at`,
//!    `lease_until`, `created_at`, `finished_at`), so workers on machines with skewed
//!    clocks agree on leases.
//! 4. **Waiting states** are `queued`, `retrying` and `interrupted`: a fetch takes due rows
//!    in these states, highest priority first, then oldest `run_at`, then lowest id.
//! 5. **Rows are locked in id order** (PostgreSQL) by every statement that updates several
//!    running rows (`succeed`, `interrupt`, `renew`; `reclaim` skips locked rows), so a
//!    worker's heartbeat and its ending writes never deadlock: a deadlock costs the
//!    server's `deadlock_timeout` (1 s by default) of waiting, and a renewal held back that
//!    long let the worker's own leases expire under it. Leases are written from the clock
//!    at the write (`clock_timestamp()`), not from the statement's start.

pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::sync::Arc;

use crate::error::Error;
use crate::new_job::Row;
use crate::state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts, from_millis};

/// A reclaim after the lease expired the `MAX_LEASE_LOSSES`-th time makes the job dead
/// (store #2).
pub(crate) const MAX_LEASE_LOSSES: i32 = 5;

/// A job a worker fetched (and now holds the lease of).
#[derive(Debug)]
pub(crate) struct Fetched {
    pub(crate) id: i64,
    pub(crate) payload: String,
    pub(crate) attempts: i32,
    pub(crate) max_attempts: i32,
    pub(crate) run: i64,
    pub(crate) priority: i32,
    pub(crate) run_at: i64,
    /// When the fetch that claimed this job began (set by the worker): a cancel heard
    /// before then concerns an earlier attempt, not this one (see `Jobs::register`).
    pub(crate) fetch_started: std::time::Instant,
}

/// A fetch's rows, in the order they are to start (store #4): `RETURNING` promises none.
pub(crate) fn in_order(rows: Vec<(i64, String, i32, i32, i64, i32, i64)>) -> Vec<Fetched> {
    let mut jobs: Vec<Fetched> = rows
        .into_iter()
        .map(
            |(id, payload, attempts, max_attempts, run, priority, run_at)| Fetched {
                id,
                payload,
                attempts,
                max_attempts,
                run,
                priority,
                run_at,
                fetch_started: std::time::Instant::now(),
            },
        )
        .collect();
    jobs.sort_by_key(|j| (std::cmp::Reverse(j.priority), j.run_at, j.id));
    jobs
}

/// One held lease, as `renew` reports it back.
#[derive(Debug)]
pub(crate) struct Renewed {
    pub(crate) id: i64,
    pub(crate) cancel_message: Option<String>,
}

/// The columns of [`JobInfo`], in the order every `SELECT` of them uses.
pub(crate) type InfoTuple = (
    i64,
    String,
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The `SELECT` list of [`InfoTuple`] (PostgreSQL casts the payload to text itself).
pub(crate) const INFO_COLUMNS: &str = "id, queue, state, {payload}, priority, attempts, max_attempts, \
     lease_losses, run_at, created_at, finished_at, last_error, cancel_message, unique_key";

pub(crate) fn info(t: InfoTuple) -> Result<JobInfo, Error> {
    let state = JobState::parse(&t.2).ok_or_else(|| {
        Error::Database(sqlx::Error::Decode(
            format!("job {}: unknown state {:?} in the job table", t.0, t.2).into(),
        ))
    })?;
    Ok(JobInfo {
        id: JobId::from(t.0),
        queue: t.1,
        state,
        payload_json: t.3,
        priority: t.4,
        attempts: t.5.max(0) as u32,
        max_attempts: t.6.max(0) as u32,
        lease_losses: t.7.max(0) as u32,
        run_at: from_millis(t.8),
        created_at: from_millis(t.9),
        finished_at: t.10.map(from_millis),
        last_error: t.11,
        cancel_message: t.12,
        unique_key: t.13,
    })
}

pub(crate) fn counts(rows: Vec<(String, i64)>) -> StateCounts {
    let mut counts = StateCounts::default();
    for (state, n) in rows {
        if let Some(s) = JobState::parse(&state) {
            counts.add(s, n.max(0) as u64);
        }
    }
    counts
}

/// What a cancel's `UPDATE … RETURNING state` (or the look-up after it) says.
pub(crate) fn cancel_outcome(updated: Option<String>, existing: Option<String>) -> CancelOutcome {
    match (updated.as_deref(), existing.as_deref()) {
        (Some("running"), _) => CancelOutcome::Requested,
        (Some(_), _) => CancelOutcome::Cancelled,
        (None, Some(state)) => match JobState::parse(state) {
            Some(s) => CancelOutcome::AlreadyFinished(s),
            None => CancelOutcome::NotFound,
        },
        (None, None) => CancelOutcome::NotFound,
    }
}

/// The job table of one database.
#[derive(Clone, Debug)]
pub(crate) enum Store {
    Postgres(Arc<postgres::PgStore>),
    Sqlite(Arc<sqlite::SqliteStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Postgres($s) => $e,
            Store::Sqlite($s) => $e,
        }
    };
}

impl Store {
    pub(crate) fn backend(&self) -> &'static str {
        match self {
            Store::Postgres(_) => "PostgreSQL",
            Store::Sqlite(_) => "SQLite",
        }
    }

    pub(crate) async fn enqueue(&self, row: Row) -> Result<(JobId, bool), Error> {
        dispatch!(self, s => s.enqueue(row).await)
    }

    pub(crate) async fn enqueue_many(&self, rows: Vec<Row>) -> Result<u64, Error> {
        dispatch!(self, s => s.enqueue_many(rows).await)
    }

    pub(crate) async fn fetch(
        &self,
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        dispatch!(self, s => s.fetch(queue, n, lease_ms, worker).await)
    }

    /// Records `done` as succeeded and fetches up to `n` jobs in one transaction (run #5
    /// in `worker/run.rs`).
    pub(crate) async fn succeed_and_fetch(
        &self,
        done: &[(i64, i64)],
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        dispatch!(self, s => s.succeed_and_fetch(done, queue, n, lease_ms, worker).await)
    }

    /// Milliseconds until the next waiting job of `queue` is due (≤ 0: due now).
    pub(crate) async fn next_due(&self, queue: &str) -> Result<Option<i64>, Error> {
        dispatch!(self, s => s.next_due(queue).await)
    }

    pub(crate) async fn succeed(&self, done: &[(i64, i64)]) -> Result<u64, Error> {
        dispatch!(self, s => s.succeed(done).await)
    }

    /// A genuine failure: `retrying` after `delay_ms`, or `dead` if it was the last
    /// attempt. `None` if fenced (store #1).
    pub(crate) async fn fail(
        &self,
        id: i64,
        run: i64,
        error: &str,
        delay_ms: i64,
    ) -> Result<Option<JobState>, Error> {
        dispatch!(self, s => s.fail(id, run, error, delay_ms).await)
    }

    pub(crate) async fn dead(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        dispatch!(self, s => s.dead(id, run, error).await)
    }

    pub(crate) async fn cancelled(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        dispatch!(self, s => s.cancelled(id, run, error).await)
    }

    /// Back to the queue at once, no attempt used (a job with a cancel request becomes
    /// cancelled instead). Wakes the queue's workers.
    /// Returns the ids that were returned (the others were fenced, or already ended).
    pub(crate) async fn interrupt(
        &self,
        queue: &str,
        held: &[(i64, i64)],
    ) -> Result<Vec<i64>, Error> {
        dispatch!(self, s => s.interrupt(queue, held).await)
    }

    pub(crate) async fn renew(
        &self,
        held: &[(i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<Renewed>, Error> {
        dispatch!(self, s => s.renew(held, lease_ms).await)
    }

    /// Expired leases of `queue` back to the queue (store #2). Wakes the queue's workers.
    pub(crate) async fn reclaim(&self, queue: &str) -> Result<u64, Error> {
        dispatch!(self, s => s.reclaim(queue).await)
    }

    pub(crate) async fn cancel_requests(&self, held: &[(i64, i64)]) -> Result<Vec<Renewed>, Error> {
        dispatch!(self, s => s.cancel_requests(held).await)
    }

    pub(crate) async fn get(&self, id: JobId) -> Result<Option<JobInfo>, Error> {
        dispatch!(self, s => s.get(id.get()).await)
    }

    pub(crate) async fn list(
        &self,
        queue: Option<&str>,
        state: Option<JobState>,
        limit: i64,
    ) -> Result<Vec<JobInfo>, Error> {
        dispatch!(self, s => s.list(queue, state.map(JobState::as_str), limit).await)
    }

    pub(crate) async fn counts(&self, queue: Option<&str>) -> Result<StateCounts, Error> {
        dispatch!(self, s => s.counts(queue).await)
    }

    pub(crate) async fn cancel(&self, id: JobId, message: &str) -> Result<CancelOutcome, Error> {
        dispatch!(self, s => s.cancel(id.get(), message).await)
    }

    pub(crate) async fn retry(&self, id: JobId) -> Result<bool, Error> {
        dispatch!(self, s => s.retry(id.get()).await)
    }
}

/// `text` without NUL characters: PostgreSQL refuses them in `text` columns, and an ending
/// that can never be written would block the worker's later endings (they are written in
/// order and retried from the first that failed).
pub(crate) fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancel_reports_what_the_database_said() {
        assert_eq!(
            cancel_outcome(Some("running".into()), None),
            CancelOutcome::Requested
        );
        assert_eq!(
            cancel_outcome(Some("cancelled".into()), None),
            CancelOutcome::Cancelled
        );
        assert_eq!(
            cancel_outcome(None, Some("succeeded".into())),
            CancelOutcome::AlreadyFinished(JobState::Succeeded)
        );
        assert_eq!(cancel_outcome(None, None), CancelOutcome::NotFound);
    }
}
