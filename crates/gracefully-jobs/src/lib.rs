//! # gracefully-jobs — durable background jobs that a shutdown, a crash or a cancel never loses
//!
//! A job queue in your database — SQLite (embedded, one process) or PostgreSQL (many
//! worker processes on many machines) — whose [`Worker`]s run as [`gracefully_host`]
//! services and whose every running job has a
//! [`CancellationToken`](gracefully::CancellationToken):
//!
//! | phase or event | what happens to a running job |
//! |---|---|
//! | drain (`stopping`) | no new job is fetched; running jobs may finish |
//! | cancel (hard stop) | tokens fire ([`Shutdown`](gracefully::ReasonKind::Shutdown)); a job that stops is back in the queue at once, **attempt refunded** ([`JobState::Interrupted`]) |
//! | abort | handlers dropped; their jobs returned the same way if the database answers |
//! | crash (SIGKILL) | reclaimed by another worker once its lease expires, attempt refunded |
//! | [`Jobs::cancel`] from any process | its token fires ([`Requested`](gracefully::ReasonKind::Requested) + message); it ends [`JobState::Cancelled`] |
//! | lease lost to another worker | its token fires ([`Failed`](gracefully::ReasonKind::Failed)); its writes are fenced |
//!
//! ```
//! use gracefully::CancellationToken;
//! use gracefully_host::Host;
//! use gracefully_jobs::{Job, JobState, Jobs, NewJob};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Fulfil { order: i64 }
//!
//! async fn fulfil(job: Job<Fulfil>, token: CancellationToken) -> Result<(), gracefully::Cancelled> {
//!     token.check()?; // pass the token on to what the work awaits
//!     assert_eq!(job.payload().order, 42);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let jobs = Jobs::sqlite(sqlx::SqlitePool::connect("sqlite::memory:").await?).await?;
//! let id = jobs.enqueue(NewJob::new("fulfil", &Fulfil { order: 42 })).await?.id;
//!
//! let worker = jobs.worker("fulfil").handler(fulfil).build()?;
//! let host = Host::builder().handle_signals(false).service("fulfil", worker).build()?;
//! let lifetime = host.lifetime();
//! let running = tokio::spawn(host.run());
//! while jobs.get(id).await?.unwrap().state != JobState::Succeeded {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! lifetime.stop(gracefully::Reason::shutdown());
//! let report = running.await?;
//! assert_eq!(report.entry("fulfil").unwrap().detail("succeeded"), Some("1"));
//! # Ok(()) }
//! ```
//!
//! ## Pieces
//!
//! | piece | what | .NET | Go (River) |
//! |---|---|---|---|
//! | [`Jobs`] | a store: enqueue (also in your transaction), get, list, counts, cancel, retry | Hangfire's `IBackgroundJobClient` + monitoring API | `river.Client` |
//! | [`NewJob`] | a payload for a queue, with run time, priority, attempts, unique key | `BackgroundJob.Schedule` | `InsertOpts` |
//! | [`Worker`], [`WorkerBuilder`] | a host service running one queue with a concurrency limit | `BackgroundJobServer` | `QueueConfig{MaxWorkers}` |
//! | [`Job`] | what a handler gets: payload, id, attempt, [`Job::complete_in`] | `PerformContext` | `river.Job[T]` |
//! | [`JobState`], [`JobInfo`], [`StateCounts`], [`CancelOutcome`] | inspection | `IMonitoringApi` | `JobGet`, `JobList` |
//! | [`Backoff`] | retry delays: exponential with jitter | `AutomaticRetry` | `ClientRetryPolicy` |
//!
//! The crate's README has the whole contract, the exactly-once recipe, the backends side by
//! side and the measured figures.

#![warn(missing_docs)]
// No unsafe code: everything here is built on sqlx, tokio and the gracefully crates.
#![forbid(unsafe_code)]

mod backoff;
mod connection;
mod error;
mod job;
mod jobs;
mod new_job;
mod state;
mod store;
mod worker;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backoff::Backoff;
pub use connection::JobConnection;
pub use error::Error;
pub use job::Job;
pub use jobs::{DEFAULT_SCHEMA, Enqueued, Jobs};
pub use new_job::{DEFAULT_MAX_ATTEMPTS, NewJob};
pub use state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts};
pub use worker::{Worker, WorkerBuilder};
