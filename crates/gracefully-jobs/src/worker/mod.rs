//! Workers: [`WorkerBuilder`] → [`Worker`], a host service that runs one queue's jobs.
//!
//! `builder.rs` checks the options; `run.rs` is one run of the service (fetch, start,
//! settle, heartbeat, drain); `verdict.rs` decides how an attempt ended; `listener.rs`
//! turns PostgreSQL notifications into wake-ups and fired tokens; `counts.rs` names the
//! report's counters.

mod builder;
mod counts;
mod endings;
mod listener;
mod run;
mod verdict;

use std::fmt;
use std::sync::Arc;

use gracefully::CancellationToken;
use gracefully_host::{BackgroundService, BoxError, ServiceContext};

pub use builder::WorkerBuilder;
pub(crate) use builder::{ErasedHandler, Settings};

use crate::jobs::Jobs;

/// A worker for one queue, run as a [`gracefully_host`] service: it takes due jobs
/// (at most [`concurrency`](WorkerBuilder::concurrency) running at once, and up to
/// [`prefetch`](WorkerBuilder::prefetch) more fetched ahead), runs each in its own
/// task with a token, renews their leases, and keeps the shutdown contract:
///
/// | phase | what the worker does |
/// |---|---|
/// | drain (`stopping` fires) | takes no new job; jobs fetched ahead ([`prefetch`](WorkerBuilder::prefetch)) go back to the queue at once, unstarted (*returned unstarted*); running jobs may finish (*finished during drain*) |
/// | cancel (hard stop fires) | the jobs' tokens fire ([`Shutdown`](gracefully::ReasonKind::Shutdown)); a job whose handler then returns is put back in the queue at once, as *interrupted*, **without using up an attempt** (*interrupted and returned*); a database that does not answer within a second of the hard stop is not waited for (*left to their lease*: the jobs come back when their leases expire) |
/// | abort | handlers still running are dropped (*aborted*) and their jobs put back the same way if the database answers within 150 ms; otherwise their leases expire and they are reclaimed |
///
/// ```no_run
/// use std::time::Duration;
/// use gracefully::CancellationToken;
/// use gracefully_host::Host;
/// use gracefully_jobs::{Job, Jobs};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Fulfil { order: u64 }
///
/// async fn fulfil(job: Job<Fulfil>, token: CancellationToken) -> Result<(), gracefully::Cancelled> {
///     // pass the token to what the work awaits; return its `Cancelled` when it fires
///     token.run_until_cancelled(tokio::time::sleep(Duration::from_millis(20))).await?;
///     let _ = job.payload().order;
///     Ok(())
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let jobs = Jobs::postgres(sqlx::PgPool::connect("postgres://localhost/app").await?).await?;
///     let worker = jobs.worker("fulfil").handler(fulfil).concurrency(8).build()?;
///     Host::builder().service("fulfil worker", worker).build()?.run_and_exit().await
/// }
/// ```
///
/// *Anchors:* .NET's `BackgroundService` polling a queue (Hangfire's `BackgroundJobServer`,
/// whose jobs get a `CancellationToken` that fires at shutdown); River's `Client.Start` with
/// `Queues: {"fulfil": {MaxWorkers: 8}}` and `StopAndCancel`; graphile-worker's `run`.
pub struct Worker {
    jobs: Jobs,
    settings: Arc<Settings>,
    handler: ErasedHandler,
}

impl BackgroundService for Worker {
    /// Runs the queue until `stopping` fires and every running job has ended and been
    /// recorded. Database errors never end it: it logs them, backs off (100 ms doubling to
    /// 5 s) and carries on when the database is back.
    ///
    /// # Cancel safety
    ///
    /// Dropped only at the host's abort: see the table above.
    async fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> Result<(), BoxError> {
        let mut run = run::Run::new(
            self.jobs.clone(),
            Arc::clone(&self.settings),
            Arc::clone(&self.handler),
            cx.clone(),
        );
        run.go(stopping).await;
        Ok(())
    }
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("queue", &self.settings.queue)
            .field("concurrency", &self.settings.concurrency)
            .finish_non_exhaustive()
    }
}
