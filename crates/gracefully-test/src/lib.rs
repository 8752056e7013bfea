//! # gracefully-test — prove that cancellation leaves nothing half done
//!
//! The testing aids the gracefully crates use for their own tests, for yours:
//!
//! | aid | what it proves or saves |
//! |---|---|
//! | [`cancel_at_every_await`] | cancels your code at its 1st, 2nd, … await in turn — by firing its token, or by dropping its future — and runs your invariant check after each run |
//! | [`eventually`] | waits for state that settles after the caller is gone (a cleanup task, a blocking thread) |
//! | [`ManualClock`], [`advance_to_deadline`] | deadlines without sleeping: jump to the moment a token's deadline fires |
//! | [`test_host`], [`RunningHost`] | a host with short budgets, run in the background, stopped with a reason, its report returned — a hang fails the test |
//!
//! ```
//! use std::sync::Mutex;
//! use gracefully::CancellationToken;
//! use gracefully_test::{Outcome, Walk, cancel_at_every_await};
//!
//! /// Writes an order and its lines. Both go in at the end, in one step.
//! async fn place_order(store: &Mutex<Vec<&'static str>>, token: &CancellationToken)
//!     -> Result<(), gracefully::Cancelled> {
//!     tokio::task::yield_now().await;        // price the order (a round trip)
//!     token.check()?;
//!     tokio::task::yield_now().await;        // reserve the stock (another)
//!     token.check()?;
//!     store.lock().unwrap().extend(["order", "line"]);
//!     Ok(())
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let store = Mutex::new(Vec::new());
//! let report = cancel_at_every_await(
//!     Walk::cooperative(),
//!     async |token| place_order(&store, &token).await,
//!     async |run| {
//!         let rows = std::mem::take(&mut *store.lock().unwrap());
//!         match run.outcome() {
//!             Outcome::Completed(result) => assert!(result.is_ok() && rows.len() == 2),
//!             Outcome::TokenFired(result) => {
//!                 assert!(result.is_err(), "cancelled at point {}, yet it went on", run.point());
//!                 assert!(rows.is_empty(), "a half-written order: {rows:?}");
//!             }
//!             Outcome::Dropped => unreachable!("a cooperative walk never drops"),
//!         }
//!     },
//! )
//! .await
//! .unwrap();
//! assert_eq!(report.points(), 2);
//! # }
//! ```
//!
//! `cargo run -p gracefully-test --example half_written_row` shows a walk catching a handler
//! that leaves a half-written row in SQLite, and passing the fixed one.
//!
//! ## Coming from .NET, Go or tokio
//!
//! | here | .NET | Go | tokio |
//! |---|---|---|---|
//! | [`cancel_at_every_await`] | — (tests cancel at a few chosen moments) | — | `tokio-test`'s hand-polled `task::spawn` |
//! | [`eventually`] | — | testify `assert.Eventually` | — |
//! | [`ManualClock`] | `FakeTimeProvider` | — | `time::pause` (per runtime, not per tree) |
//! | [`test_host`], [`RunningHost`] | `WebApplicationFactory`, `IHost.StopAsync` | — | — |
//!
//! ## Dependencies
//!
//! Kept light because it is every crate's dev-dependency: `gracefully`,
//! `gracefully-host`, `tokio` (`rt`, `time`) and `futures-util`. No cargo features.

#![warn(missing_docs)]
// Nothing here needs `unsafe`: the driver's waker is a safe `std::task::Wake`.
#![forbid(unsafe_code)]

mod clock;
mod eventually;
mod host;
mod walk;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use clock::{DeadlineError, advance_to_deadline};
pub use eventually::eventually;
pub use gracefully::{Clock, ManualClock};
pub use host::{HostError, RunningHost, test_host};
pub use walk::{Outcome, Run, Walk, WalkError, WalkReport, cancel_at_every_await};
