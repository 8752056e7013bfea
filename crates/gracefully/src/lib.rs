//! # gracefully — cooperative cancellation for Rust
//!
//! *Don't just stop — stop gracefully.*
//!
//! Work that is no longer wanted (the client left, a deadline passed, the process is
//! shutting down) should stop *cleanly*. This crate is the shared signal for that: a
//! [`CancellationSource`] cancels, [`CancellationToken`]s observe, and every cancellation
//! carries a [`Reason`] saying why and where it was fired.
//!
//! ```text
//!  CancellationSource ──token()──► CancellationToken ──child()──► CancellationSource ─► …
//!   cancel_with(reason)             is_cancelled()   (one atomic load)
//!   cancel_after(d)                 reason(), deadline()
//!   drop_guard()                    cancelled().await, wait(), on_cancel(f)
//!                                   check()?  →  Err(Cancelled { reason })
//! ```
//!
//! ```
//! use std::time::Duration;
//! use gracefully::{CancellationSource, CancellationToken, Cancelled, Reason, ReasonKind};
//!
//! fn handle(request: &CancellationToken) -> Result<&'static str, Cancelled> {
//!     // A query that may take at most 2 s, and less if the request has less left.
//!     let query = request.child_with_timeout(Duration::from_secs(2));
//!     query.token().check()?;
//!     Ok("rows")
//! }
//!
//! let shutdown = CancellationSource::new();              // fired by the host on SIGTERM
//! let request = shutdown.token().child_with_timeout(Duration::from_secs(30));
//! assert_eq!(handle(&request.token()), Ok("rows"));
//!
//! shutdown.cancel_with(Reason::shutdown().with_message("SIGTERM"));
//! let err = handle(&request.token()).unwrap_err();
//! assert_eq!(err.kind(), ReasonKind::Shutdown);           // the reason travelled down
//! ```
//!
//! ## Semantics you can rely on
//!
//! 1. **Cooperative and idempotent.** The first cancel wins and fixes the reason; later
//!    cancels change nothing and return `false` at once. Every descendant reports the same
//!    reason, whose [`origin`](Reason::origin) is the `#[track_caller]` location of the call
//!    that fired it.
//! 2. **Synchronous.** When a winning `cancel` returns, every descendant token reports
//!    cancelled and every callback on them has run.
//! 3. **Wait-free polling.** [`CancellationToken::is_cancelled`] is one atomic load, with no
//!    lock on any path.
//! 4. **Callbacks** registered on an already-cancelled token run inline, before `on_cancel`
//!    returns. Otherwise they run on the cancelling thread after the whole subtree reports
//!    cancelled: deepest first (a child's before its parent's), and on one token newest
//!    first. All run even if one panics; the first panic resumes afterwards.
//! 5. **Unregistering** by dropping the [`Registration`] waits if the callback is running on
//!    another thread (never when dropped from inside the callback).
//! 6. **No leaks without ceremony.** When nothing observes a node any more (no source,
//!    token, live registration, child or waiting future) it unlinks from every parent:
//!    creating and dropping a million children of a long-lived token leaves its memory where
//!    it was. (.NET and Go leak there unless you dispose or cancel.)
//! 7. **Deadlines without a runtime.** Timeouts fire from one timer thread this crate owns,
//!    within about a millisecond, with [`ReasonKind::DeadlineExceeded`]. Deadlines only move
//!    earlier; [`CancellationToken::deadline`] reports the earliest through every ancestor.
//!    With a [`ManualClock`] deadline logic is tested without sleeping.
//! 8. **Cancellation is not a failure.** [`is_cancellation`] finds a [`Cancelled`] anywhere
//!    in an error's source chain, so it can be logged (and counted) apart from errors.
//!
//! ## Coming from .NET, Go or tokio-util
//!
//! | concept | .NET | Go | tokio-util | gracefully |
//! |---|---|---|---|---|
//! | the right to cancel | `CancellationTokenSource` | `CancelFunc` | `CancellationToken` | [`CancellationSource`] |
//! | the right to observe | `CancellationToken` | `ctx.Done()` | (same type) | [`CancellationToken`] |
//! | why | — | `context.Cause` | — | [`Reason`] (kind, message, source, origin) |
//! | child | `CreateLinkedTokenSource(t)` | `WithCancel(ctx)` | `child_token()` | [`CancellationToken::child`] |
//! | several parents | `CreateLinkedTokenSource(a, b)` | — | — | [`CancellationSource::linked`] |
//! | timeout | `CancelAfter`, `new CTS(TimeSpan)` | `WithTimeout` | (with `tokio::time`) | [`CancellationSource::with_timeout`], [`CancellationToken::child_with_timeout`] |
//! | read the deadline | — | `ctx.Deadline()` | — | [`CancellationToken::deadline`] |
//! | poll | `IsCancellationRequested` | `ctx.Err() != nil` | `is_cancelled()` (mutex) | [`CancellationToken::is_cancelled`] (one load) |
//! | bail out | `ThrowIfCancellationRequested()` | `return ctx.Err()` | — | [`CancellationToken::check`]`?` |
//! | await | `Task.Delay(-1, token)` | `<-ctx.Done()` | `cancelled().await` | [`CancellationToken::cancelled`] |
//! | block a thread | `WaitHandle.WaitOne()` | `<-ctx.Done()` | — | [`CancellationToken::wait`] |
//! | callback | `Register(...)` | `context.AfterFunc` | — | [`CancellationToken::on_cancel`] |
//! | race a future | `WaitAsync(token)` | `select` | `run_until_cancelled` | [`CancellationToken::run_until_cancelled`], [`CancelOnExt::cancel_on`] |
//! | the error | `OperationCanceledException` | `context.Canceled` | — | [`Cancelled`] |
//! | test clock | `FakeTimeProvider` | — | `time::pause` | [`ManualClock`] |
//!
//! ## Performance
//!
//! Measured with `cargo bench -p gracefully --bench versus`, which runs tokio-util 0.7's
//! `CancellationToken` side by side in the same process (criterion medians; ranges over
//! three runs), on a 2-vCPU AMD EPYC virtual machine, 2026-11-26:
//!
//! | operation | gracefully | tokio-util | ratio |
//! |---|---:|---:|---:|
//! | `is_cancelled` on a live token | 0.3 ns | 4.4 ns | 15.8–16.0× |
//! | `is_cancelled` while another thread adds children | 1.8 ns | 92–134 ns | 52–73× |
//! | clone + drop | 3.6 ns | 13.2 ns | 3.6× |
//! | child create + drop | 10.9–11.0 ns | 48.8–49.5 ns | 4.4–4.5× |
//! | cancel with 1,000 children, each with a pending waiter | 6.9–7.0 µs | 21.3–21.4 µs | 3.1× |
//! | poll `cancelled()` on a cancelled token | 6.3 ns | 11.2 ns | 1.8× |
//! | two threads creating and dropping children of one parent | 25.9–37.1 ns | 100–143 ns | 2.7–5.5× |
//! | timeout source create + drop (tokio-util: child + `tokio::time::sleep`) | 74.8 ns | 121 ns | 1.6× |
//! | callback register + drop | 12.0 ns | — | |
//! | heap bytes per token node | 64 | 120 | |
//!
//! `is_cancelled` is a single load (tokio-util locks a mutex); a node is 64 bytes; children,
//! registrations allocate nothing beyond the node or entry itself, and a cancellation walk
//! only its path stack and the list of wakers it wakes. A
//! timeout fires 81–92 µs after its deadline at the median (95th percentile 90–140 µs).
//!
//! ## Seeing why work stopped
//!
//! The [`operation`] module is the interface through which every integration crate
//! registers its operations (requests, queries, outbound calls, tasks) with a registry, such
//! as `gracefully-host`'s `Operations`, which shows them live and says why each one stopped.
//! Nothing is recorded, and nothing is paid beyond a thread-local read per operation, unless
//! a registry is installed.
//!
//! ## Features and build configurations
//!
//! The crate has no dependencies and no cargo features. Built with
//! `RUSTFLAGS="--cfg loom"`, its synchronisation primitives come from
//! [loom](https://docs.rs/loom) so `tests/loom.rs` can check its interleavings.

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod cancelled;
mod clock;
mod future;
pub mod operation;
mod reason;
mod registration;
mod source;
mod sync;
mod token;
mod tree;

#[cfg(test)]
mod tests;

pub use cancelled::{Cancelled, find_cancelled, is_cancellation};
pub use clock::{Clock, ManualClock};
pub use future::{CancelOn, CancelOnExt, WaitForCancellation, WaitForCancellationOwned};
pub use reason::{Reason, ReasonKind};
pub use registration::Registration;
pub use source::{CancellationSource, DropGuard};
pub use token::CancellationToken;
