//! # gracefully-sqlx — cancellation that reaches the database server
//!
//! When a [`CancellationToken`](gracefully::CancellationToken) fires during a query, the
//! *server* stops the query — not just the client — and the connection goes back to the pool
//! only once the server has confirmed it idle and outside any transaction.
//!
//! Plain sqlx cannot do this: a dropped query future leaves PostgreSQL running the statement
//! (sqlx never sends a cancel request) and the connection busy until it ends; SQLite's worker
//! thread steps the statement to its end; and a dropped `Transaction` only *queues* its
//! `ROLLBACK`. In .NET, Npgsql sends PostgreSQL a cancel request when the token fires, so a
//! client that leaves stops the database work. This crate brings that to sqlx, for
//! PostgreSQL and SQLite, while you keep writing ordinary sqlx queries.
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully::{CancellationSource, ReasonKind};
//! use gracefully_sqlx::{Error, PgGracefulPool};
//!
//! # async fn f() -> Result<(), Error> {
//! let pool = PgGracefulPool::connect("postgres://app@localhost/app").await?;
//!
//! // A request that gives up after 200 ms (or when the client disconnects, or at shutdown).
//! let request = CancellationSource::with_timeout(Duration::from_millis(200));
//! let token = request.token();
//!
//! // Ordinary sqlx inside; the pool wraps the execution.
//! let slow = pool
//!     .run(&token, |conn| Box::pin(async move {
//!         sqlx::query("SELECT pg_sleep(30)").execute(&mut *conn).await?;
//!         Ok::<_, Error>(())
//!     }))
//!     .await;
//! // After ~200 ms: the server is no longer sleeping, and the error says why.
//! assert_eq!(slow.unwrap_err().as_cancelled().unwrap().kind(), ReasonKind::DeadlineExceeded);
//!
//! // A transaction commits only if the body succeeded and the token did not fire.
//! let token = CancellationSource::new().token();
//! pool.transaction(&token, |tx, _token| Box::pin(async move {
//!     sqlx::query("INSERT INTO audit (what) VALUES ('hello')").execute(&mut **tx).await?;
//!     Ok::<_, Error>(())
//! }))
//! .await?;
//! # Ok(()) }
//! ```
//!
//! ## The mechanism
//!
//! A [`GracefulPool`] wraps a `sqlx::Pool`. Every connection it hands out has been *adopted*
//! once: PostgreSQL's backend pid read (`SELECT pg_backend_pid()`) and its check for a
//! departed client turned on (`client_connection_check_interval`, 1 s, PostgreSQL 14+, unless
//! already set: a statement whose process was killed stops within a second instead of
//! running on for nobody), SQLite's progress handler installed. An operation ([`run`](GracefulPool::run), [`transaction`](GracefulPool::transaction))
//! polls your body and the token together. When the token fires:
//!
//! 1. **Drop the body.** Its future is dropped first, so it sends nothing more on the
//!    connection. The connection is ours alone (checked out for this operation).
//! 2. **Stop the statement on the server.** PostgreSQL: `pg_cancel_backend(pid)` from a
//!    separate canceller connection (a pool of one stays cancellable). SQLite: a
//!    per-connection flag, read by the progress handler every 1000 VM instructions, was
//!    already raised by a token callback on the cancelling thread; the statement returns
//!    `SQLITE_INTERRUPT`.
//! 3. **Drain.** Read every reply still due (PostgreSQL: until the last `ReadyForQuery`;
//!    SQLite: a worker round trip), within the pool's *cancellation timeout* (2 s by
//!    default, as Npgsql's).
//! 4. **Verify and restore.** One probe reads the transaction state from the server (see
//!    below); a transaction still open or aborted is rolled back and probed again.
//! 5. **Return or close.** Verified idle: back to the idle list. Anything else — the timeout
//!    expired, the canceller was unreachable, the probe failed — PostgreSQL:
//!    `pg_terminate_backend(pid)` then close; SQLite: close with the flag left raised.
//!    This is Npgsql's sequence (cancel, wait a short window, then break the connection) with
//!    one step added: a closed socket alone does not stop a statement that never writes to it.
//!
//! Steps 2–5 run in a tracked task, so they complete even when the caller's future is
//! dropped ([`GracefulPool::pending_cleanups`], [`GracefulPool::wait_for_cleanups`]); the
//! caller, if still there, waits for them and then gets [`Error::Cancelled`] with the token's
//! [`Reason`](gracefully::Reason). A caller future dropped without the token firing gets the
//! same cleanup.
//!
//! ### Races closed
//!
//! * **A cancel that lands on the next statement.** `pg_cancel_backend` cancels whatever the
//!   backend runs when the signal arrives. We send nothing on the connection between
//!   dropping the body and the cancel's return; the cancel returns after the server's
//!   `kill()`, so the backend handles the signal before it reads anything we send next; and
//!   PostgreSQL discards a cancel that arrives while no query runs (it checks interrupts with
//!   `DoingCommandRead` set before executing the next message). The drain and probe come
//!   after. So the cancel hits our statement or nothing — never the probe, the `ROLLBACK`, or
//!   the next borrower. (`src/backend/postgres.rs` carries the full argument.)
//! * **An abandoned statement never fully sent.** If its bytes are still in sqlx's write
//!   buffer, draining would *start* it after the cancel was discarded. We detect that
//!   (`should_flush()`, recorded before sqlx queues a `ROLLBACK`) and close instead.
//! * **A SQLite interrupt that outlives its statement.** The flag is lowered only after a
//!   worker round trip proved that everything queued before it finished, and before the
//!   probe; the next borrower never runs with it raised.
//! * **Cancel during `BEGIN`.** sqlx 0.9's `begin()`, dropped mid-flight on PostgreSQL,
//!   queues no `ROLLBACK` (its guard sees depth 0) yet the server may have begun the
//!   transaction (the pool poisoning of sqlx #4385). The probe finds it and rolls it back.
//! * **Cancel during `COMMIT`.** A `COMMIT` once sent is not cancelled by the token: its
//!   outcome is reported as it is. If the whole future is dropped during it, the cleanup may
//!   cancel it, and the server decides atomically: all the body's writes, or none.
//! * **A `COMMIT` that is a `ROLLBACK`.** PostgreSQL aborts a transaction at its first
//!   failed statement; a body that swallows that error and returns `Ok` would get its
//!   `COMMIT` answered with `ROLLBACK` and no error. One statement before `COMMIT` asks (it
//!   fails with `25P02` in an aborted transaction), and the caller gets
//!   [`Error::RolledBack`], not `Ok`.
//! * **Cancel racing with completion.** A body that completes as the token fires returns its
//!   value (`run`) or rolls back (`transaction`: it commits only if the token is not
//!   cancelled once the body is done and the interrupt disarmed); SQLite's flag, if raised, is
//!   lowered through the full recovery before reuse.
//!
//! ### Verified, not assumed
//!
//! The probe is sqlx's `begin_with("SELECT 1")`. Its documented contract is to fail with
//! `BeginFailed` when after the statement the connection is *not* in a transaction, and sqlx
//! decides that from the server: PostgreSQL's `ReadyForQuery` status byte (`I`/`T`/`E`),
//! SQLite's `sqlite3_get_autocommit`. So `BeginFailed` is the server saying "idle, no
//! transaction". A connection is probed after every cancellation, dropped operation, failed
//! body, rollback or failed commit, and whenever sqlx's own state is in doubt. A body that
//! completes normally with sqlx reporting a clean connection goes back without a round trip
//! (set [`GracefulPoolOptions::verify_on_release`] to probe always).
//!
//! ### A statement the body gave up on
//!
//! A body may drop a query future itself (a `tokio::time::timeout` around it, a `select!`)
//! and still return. sqlx leaves that statement running, and the next borrower of the
//! connection would wait for it. So before a connection is lent again, the pool asks
//! whether a statement may still run — without a round trip: PostgreSQL, whether sqlx still
//! owes the statement's replies; SQLite, whether its progress handler ran during the
//! operation — and if so stops it as for a cancellation (cancel or interrupt, then drain).
//! [`GracefulPoolOptions::verify_on_release`] says what this cannot see. (Inside a
//! [`transaction`](GracefulPool::transaction) whose body returns `Ok`, such a statement is
//! part of the transaction: `COMMIT` waits for it, as in sqlx.)
//!
//! ### Deadlines on the server
//!
//! The token's [`deadline`](gracefully::CancellationToken::deadline) becomes PostgreSQL's
//! `statement_timeout` — by default in transactions, where `SET LOCAL` travels in the
//! `BEGIN` message for free; with [`ServerDeadline::Always`] also around `run` bodies (`SET`
//! before, reset after: two round trips). It is rounded up, so the token normally fires
//! first; the server's timeout is the backstop if this process stalls or dies. Either way the
//! caller sees `Cancelled` with `DeadlineExceeded`, never a raw `57014`.
//!
//! ## Coming from .NET or Go
//!
//! | | .NET (Npgsql / EF Core) | Go (`database/sql`) | gracefully-sqlx |
//! |---|---|---|---|
//! | query with a token | `cmd.ExecuteReaderAsync(token)` | `db.QueryContext(ctx, …)` | `pool.run(&token, \|conn\| Box::pin(async move { … }))` |
//! | what reaches the server | CancelRequest, then break after `CancellationTimeout` | driver-specific (lib/pq, pgx: cancel request) | `pg_cancel_backend`, then terminate + close after [`cancellation_timeout`](GracefulPoolOptions::cancellation_timeout); SQLite interrupt |
//! | the error | `OperationCanceledException` | `ctx.Err()` | [`Error::Cancelled`] with the [`Reason`](gracefully::Reason) |
//! | transaction | `BeginTransactionAsync(token)` … `CommitAsync(token)` | `db.BeginTx(ctx, …)` (rolls back when ctx is done) | [`pool.transaction(&token, …)`](GracefulPool::transaction) |
//! | connection after a cancel | reused after the cancel completes | returned to the pool | reused only if verified idle, else closed |
//! | deadline on the server | `CommandTimeout` (fixed) | — | token's deadline → `statement_timeout` |
//!
//! ## Limits
//!
//! * PostgreSQL's canceller needs the right to signal the backend: the same role, or
//!   membership in `pg_signal_backend`. Without it the statement cannot be cancelled and the
//!   connection is closed after the cancellation timeout (the server then runs the statement
//!   to its end).
//! * SQLite cannot interrupt a statement waiting in its busy handler for a lock; the timeout
//!   expires and the connection is closed.
//! * A progress handler you install on a pooled SQLite connection yourself replaces ours.
//! * The pool keeps adopted connections in its own idle list (sqlx's pool cannot attach the
//!   pid to a connection): `after_release`/`before_acquire` hooks do not run per operation.
//!   Adopting costs two round trips per connection, once (`SELECT pg_backend_pid()` and the
//!   client check's `set_config`; SQLite: one worker round trip), and PostgreSQL pools keep one extra connection open for
//!   cancels.
//!
//! The crate depends on the core (`gracefully`), tokio, sqlx 0.9 and `url` (to redact
//! passwords from errors) only. Every future it
//! spawns is tracked; it contains no `unsafe` code.

#![warn(missing_docs)]
// No `unsafe`, and none may be added without changing this line. Nothing here needs it:
// PostgreSQL's statements are cancelled with `pg_cancel_backend` (SQL on a second
// connection) instead of a CancelRequest, whose secret key sqlx keeps private; SQLite's are
// interrupted through sqlx's safe progress-handler API (`LockedSqliteHandle`), not
// `sqlite3_interrupt` on a raw handle (`backend/sqlite.rs` says why that is also the
// better aim). What sqlx does not expose is read through its safe API instead (see
// `still_running` in `backend/postgres.rs`).
#![forbid(unsafe_code)]

// For maintainers: how the files depend on each other (each imports only files below it,
// but for the builder and its type). The design is summarised in the repository's
// `docs/architecture.md`, "Data: cancelling on the server".
//
//   ops.rs         run, transaction: the operations on a pool
//   options.rs  <-> pool.rs       the builder (connect) and the handle users hold
//   lease.rs       one operation's hold on a connection; how it ends
//   recover.rs     stop, roll back, verify — or close — after a cancel, drop or failure
//   pool_core.rs   the pool itself: idle list over the sqlx pool, checkout, check-in, close
//   tracked.rs     an adopted connection      cleanups.rs   the count of cleanup tasks
//   target.rs      which URLs a pool takes    settings.rs   settings and defaults
//   backend/       the sealed per-database steps (PostgreSQL, SQLite)   error.rs   Error
mod backend;
mod cleanups;
mod error;
mod lease;
mod ops;
mod options;
mod pool;
mod pool_core;
mod recover;
mod settings;
mod target;
mod tracked;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backend::Backend;
pub use error::Error;
pub use ops::BoxFuture;
pub use options::GracefulPoolOptions;
pub use pool::GracefulPool;
pub use settings::{DEFAULT_CANCELLATION_TIMEOUT, ServerDeadline};

/// A [`GracefulPool`] for PostgreSQL.
pub type PgGracefulPool = GracefulPool<sqlx::Postgres>;

/// A [`GracefulPool`] for SQLite.
pub type SqliteGracefulPool = GracefulPool<sqlx::Sqlite>;
