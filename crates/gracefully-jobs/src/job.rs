//! [`Job`]: what a handler receives.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::connection::JobConnection;
use crate::connection::sealed::Conn;
use crate::error::Error;
use crate::state::JobId;
use crate::store::Store;

/// One attempt at a job, as its handler receives it: the decoded payload, its id, queue
/// and attempt number, and [`complete_in`](Self::complete_in) to make the job's success
/// part of the handler's own transaction.
pub struct Job<T> {
    pub(crate) id: JobId,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) payload: T,
    pub(crate) lease: Lease,
}

/// The attempt's hold on the job: its fencing number and the store.
#[derive(Clone, Debug)]
pub(crate) struct Lease {
    pub(crate) run: i64,
    pub(crate) store: Store,
    /// Set once `complete_in` wrote the success (its transaction may still roll back).
    pub(crate) completed_in_tx: Arc<AtomicBool>,
}

impl<T> Job<T> {
    /// The job's id (the same in every attempt).
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The queue it was taken from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1: one more than the attempts genuine failures used
    /// up. An attempt stopped by a shutdown or lost with its worker does not count, so a
    /// job that was interrupted runs again with the same number.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempts it may use.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The payload, owned.
    pub fn into_payload(self) -> T {
        self.payload
    }

    /// Marks the job succeeded on `conn` — inside your transaction, so the job's success
    /// commits together with its effects, or not at all. This is how effects happen
    /// exactly once: a worker that dies before the commit leaves neither (the job runs
    /// again after its lease expires); one that commits leaves both.
    ///
    /// Fenced: if this attempt no longer holds the job (its lease expired and the job was
    /// reclaimed, or another worker took it over), nothing is written and
    /// [`Error::LeaseLost`] is returned — return that error so the transaction rolls
    /// back. A cancel request does not take the job away: the job stays `running` until
    /// its attempt ends, so `complete_in` still succeeds and the job ends `succeeded`. Call it as the transaction's last statement before `COMMIT`, and return `Ok`
    /// only once the commit succeeded. (If the commit fails after all, the worker finds the
    /// job still running under this attempt and puts it back in the queue at once.)
    ///
    /// ```no_run
    /// # use gracefully_jobs::{Job, Error};
    /// # #[derive(serde::Deserialize)] struct Ship { order: i64 }
    /// async fn ship(pool: &sqlx::PgPool, job: Job<Ship>) -> Result<(), Error> {
    ///     let mut tx = pool.begin().await?;
    ///     sqlx::query("UPDATE orders SET shipped = true WHERE id = $1")
    ///         .bind(job.payload().order)
    ///         .execute(&mut *tx)
    ///         .await?;
    ///     job.complete_in(&mut *tx).await?; // fenced: fails if this attempt lost the job
    ///     tx.commit().await?;
    ///     Ok(())
    /// }
    /// ```
    ///
    /// *Anchors:* River's `JobCompleteTx`; graphile-worker has no equivalent (a job's
    /// completion is always its own statement).
    pub async fn complete_in<C: JobConnection + ?Sized>(&self, conn: &mut C) -> Result<(), Error> {
        let done = match (&self.lease.store, conn.conn()) {
            (Store::Postgres(s), Conn::Postgres(c)) => {
                s.complete_on(c, self.id.get(), self.lease.run).await?
            }
            (Store::Sqlite(s), Conn::Sqlite(c)) => {
                s.complete_on(c, self.id.get(), self.lease.run).await?
            }
            (store, conn) => {
                return Err(Error::WrongBackend {
                    jobs: store.backend(),
                    connection: conn.backend(),
                });
            }
        };
        if !done {
            return Err(Error::LeaseLost { id: self.id });
        }
        self.lease.completed_in_tx.store(true, Ordering::Release);
        Ok(())
    }
}

impl<T: fmt::Debug> fmt::Debug for Job<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}
