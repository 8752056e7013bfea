//! # gracefully-host — background services and a three-phase shutdown that ends in a report
//!
//! The Rust equivalent of .NET's Generic Host (`BackgroundService`,
//! `IHostApplicationLifetime`), on tokio, built on the [`gracefully`] tokens — with the
//! pain points fixed: a blocking service does not hold up the others, a failure is never
//! exit code 0, a shutdown has a drain phase *and* a cancel phase, and it ends with a
//! report that names whatever held it up.
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully::CancellationToken;
//! use gracefully_host::{BackgroundService, BoxError, Host, ServiceContext, service_fn};
//!
//! struct Consumer;
//!
//! impl BackgroundService for Consumer {
//!     async fn execute(&mut self, stopping: CancellationToken, cx: &ServiceContext) -> Result<(), BoxError> {
//!         while !stopping.is_cancelled() {
//!             // take a message; hand its processing a token that fires at hard stop
//!             let job = cx.hard_stop().child();
//!             let _ = job.token().run_until_cancelled(tokio::time::sleep(Duration::from_millis(100))).await;
//!             cx.count("messages", 1);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let host = Host::builder()
//!         .shutdown_timeout(Duration::from_secs(30))
//!         .service("consumer", Consumer)
//!         .service("heartbeat", service_fn(|stopping, _cx| async move {
//!             stopping.cancelled().await;
//!         }))
//!         .build()
//!         .expect("valid configuration");
//!     host.run_and_exit().await // SIGTERM → drain → cancel → abort → report → exit code
//! }
//! ```
//!
//! ## The shutdown sequence
//!
//! ```text
//! trigger (SIGINT/SIGTERM/SIGQUIT/SIGHUP | lifetime.stop(reason) | a failed service)
//!  │                                  readiness (Lifetime::is_ready) is false from here
//!  └ 0. pre-stop delay    (default 0)  keep serving while load balancers notice
//!  └ 1. drain   `stopping` fires; services are stopped in reverse start order;
//!               in-flight work continues          budget: shutdown_timeout − cancel_grace
//!  └ 2. cancel  `hard_stop` fires (ReasonKind::Shutdown), cancelling every token below it
//!                                                 budget: cancel_grace (default 5 s)
//!  └ 3. abort   what still runs is dropped and named in the report; exit code non-zero
//! ```
//!
//! `shutdown_timeout` (default 30 s) is the whole budget, counted from the trigger; the
//! pre-stop delay and the cancel grace are its first and last parts. A phase ends early
//! once every service and tracked task has ended. A second signal skips to the abort.
//! However the sequence is cut short, its tokens (`stopping`, `hard_stop`, `stopped`)
//! all fire, in order.
//!
//! The abort phase drops aborted work on a thread of its own and waits for it at most
//! 200 ms, so a destructor that blocks — or never returns — cannot hold up
//! [`Host::run`]; the report names such work as still dropping.
//!
//! ## Pieces
//!
//! | piece | what | .NET | tokio-graceful-shutdown |
//! |---|---|---|---|
//! | [`Host`], [`HostBuilder`] | runs services, signals, the shutdown sequence | `IHost`, `HostBuilder`, `HostOptions` | `Toplevel` |
//! | [`BackgroundService`], [`service_fn`] | a long-running unit with optional start/stop steps | `BackgroundService`, `IHostedService` | `IntoSubsystem`, `SubsystemBuilder` |
//! | [`ServiceContext`] | a service's name, tokens, tracked spawn, report details | — | `SubsystemHandle` |
//! | [`Lifetime`], [`Phase`] | the phase the host is in, readiness, `started`/`stopping`/`hard_stop` tokens, `stop(reason)` | `IHostApplicationLifetime` | `request_shutdown` |
//! | [`Lifetime::spawn`], [`Lifetime::shield`] | tracked tasks; cleanup that survives its caller | — | nested subsystems |
//! | [`FailurePolicy`], [`RestartPolicy`] | stop host / ignore / restart with backoff and an intensity limit | `BackgroundServiceExceptionBehavior` | `ErrorAction` |
//! | [`Operations`] | opt-in registry: what runs now, why recent work stopped; metrics and spans | `Activity` listeners | — |
//! | [`ShutdownReport`] | per service and task: the [`Phase`] it ended in, time, outcome; exit code | — | `GracefulShutdownError` |
//!
//! ## Exit codes
//!
//! [`ShutdownReport::exit_code`] (used by [`Host::run_and_exit`]): `0` every service and
//! tracked task stopped cleanly (completed, or cancelled cooperatively); `1` a service or
//! tracked task failed, at any time (an error, a panic, a start step that failed or timed
//! out, restarts exhausted); `2` stragglers were aborted at the shutdown timeout; `3` a
//! second signal forced the shutdown. A panic is always a failure. See
//! [`ShutdownReport`] for the precedence.
//!
//! ## Runtime
//!
//! Needs tokio with the time driver (`#[tokio::main]` has it). Signals are handled on a
//! thread of the host's own, so the runtime needs no IO driver for them. Use the
//! multi-thread runtime: each service runs in its own task, so a service that blocks holds
//! up only itself.

#![warn(missing_docs)]
// No unsafe code, and none may be added: everything here is built on std, tokio and the
// `gracefully` core, which keeps the crate's own unsafe (the token tree) in one audited
// place. `forbid`, not `deny`, so no module can opt back in with `allow`.
#![forbid(unsafe_code)]

mod abort;
mod board;
mod builder;
mod config;
mod context;
mod dropper;
mod host;
mod lifetime;
mod operations;
mod options;
mod outcome;
mod phase;
mod policy;
mod report;
mod service;
mod service_task;
mod signals;
mod supervisor;
mod timeline;
mod tracker;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use builder::{ConfigError, HostBuilder};
pub use context::ServiceContext;
pub use host::Host;
pub use lifetime::Lifetime;
pub use operations::{
    CANCELLATION_SERIES, DEFAULT_KEEP_FINISHED, FinishedOperation, OTHER_NAME, OperationRecord,
    Operations, OperationsSnapshot,
};
pub use options::ServiceOptions;
pub use outcome::{BoxError, Outcome, TaskOutput, panic_message};
pub use phase::Phase;
pub use policy::{FailurePolicy, RestartPolicy};
pub use report::{EntryKind, ReportEntry, ShutdownReport, TaskCounts};
pub use service::{BackgroundService, ServiceFn, service_fn};
pub use signals::EarlySignals;
pub use tracker::Shielded;
