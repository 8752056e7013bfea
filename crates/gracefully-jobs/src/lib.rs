//! # gracefully-jobs — durable background jobs that a shutdown, a crash or a cancel never loses
//!
//! A job queue in your database — SQLite (embedded, the default for one process) or
//! PostgreSQL (many worker processes on many machines) — whose workers run as
//! [`gracefully_host`] services, and whose every running job has a
//! [`CancellationToken`](gracefully::CancellationToken).
//!
//! (The crate docs are completed in the README, included below.)

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

pub use backoff::Backoff;
pub use connection::JobConnection;
pub use error::Error;
pub use job::Job;
pub use jobs::{DEFAULT_SCHEMA, Enqueued, Jobs};
pub use new_job::{DEFAULT_MAX_ATTEMPTS, NewJob};
pub use state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts};
pub use worker::{Worker, WorkerBuilder};
