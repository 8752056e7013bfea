//! SQLite: interrupt the running statement through a progress handler that reads a
//! per-connection flag, raised by the token's callback on the cancelling thread.
//!
//! # Why a progress handler and not `sqlite3_interrupt`
//!
//! sqlx-sqlite runs statements on a worker thread per connection and never interrupts them:
//! a dropped query future leaves the worker stepping the statement to its end. SQLite offers
//! two ways in from another thread:
//!
//! * `sqlite3_interrupt(db)`: thread-safe, but only while `db` is open, which needs the raw
//!   handle kept outside sqlx and `unsafe` FFI; and it interrupts *whatever* runs when it is
//!   called, so a late call can hit the next statement.
//! * a progress handler (`LockedSqliteHandle::set_progress_handler`, safe API): SQLite calls
//!   it every [`PROGRESS_OPS`] virtual-machine instructions on the worker thread, and a
//!   `false` return interrupts the statement with `SQLITE_INTERRUPT`.
//!
//! We install the handler once per connection (when the pool adopts it; `lock_handle()` only
//! succeeds while no statement runs, which is true then) and let it read an `AtomicBool`
//! that this crate alone raises and lowers. The flag is the aim: it is raised only while the
//! operation that owns the connection is being stopped, and lowered only after a worker round
//! trip proved that everything queued before it (the abandoned statement, a `ROLLBACK` queued
//! by a dropped sqlx `Transaction`) has finished. So the next borrower never runs with it
//! raised, and no `unsafe` code is needed. The flag is raised by an
//! [`on_cancel`](gracefully::CancellationToken::on_cancel) callback — one atomic store on the
//! cancelling thread — so the interrupt does not wait for the operation's task to be polled.
//!
//! A statement interrupted inside an explicit transaction may roll the whole transaction back
//! (SQLite's documented behaviour for `SQLITE_INTERRUPT`); the recovery probe reads the real
//! state (`sqlite3_get_autocommit`, through sqlx's `begin_with` check) either way.
//!
//! Not interruptible this way: a statement waiting in SQLite's busy handler for a lock (the
//! progress handler is not called while it sleeps). The cancellation timeout then expires and the
//! connection is closed; its worker thread ends once the wait does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use gracefully::{CancellationToken, Registration};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{Connection, Sqlite};

use super::{Running, Stopped, sealed::Sealed};

/// Virtual-machine instructions between two calls of the progress handler: small enough
/// that an interrupt lands within microseconds, large enough that the call (one relaxed
/// load) costs nothing measurable.
pub(crate) const PROGRESS_OPS: i32 = 1_000;

/// A connection's interrupt flag, read by its progress handler.
#[derive(Debug, Clone)]
pub struct Interrupt {
    state: Arc<InterruptState>,
}

#[derive(Debug, Default)]
struct InterruptState {
    /// Raised: the progress handler interrupts every statement until it is lowered.
    raised: AtomicBool,
    /// How often the progress handler was called: it is called only while a statement
    /// runs, so a count that moved during an operation says a statement ran at length.
    /// Written only by the connection's worker thread (the handler), read by the pool.
    calls: AtomicU64,
}

impl Interrupt {
    fn raise(&self) {
        // Relaxed: the flag carries no other data; the handler needs only to see it
        // eventually, and every later check of the flag is on the same atomic.
        self.state.raised.store(true, Ordering::Relaxed);
    }

    fn lower(&self) {
        self.state.raised.store(false, Ordering::Relaxed);
    }

    /// The progress handler: counts the call, and says whether to go on.
    fn progress(&self) -> bool {
        // One writer (the worker thread): a load and a store, no read-modify-write.
        let calls = self.state.calls.load(Ordering::Relaxed);
        self.state
            .calls
            .store(calls.wrapping_add(1), Ordering::Relaxed);
        !self.state.raised.load(Ordering::Relaxed)
    }
}

/// SQLite needs nothing per pool to stop a statement.
#[derive(Debug)]
pub struct NoCanceller;

impl Sealed for Sqlite {
    type Handle = Interrupt;
    type Canceller = NoCanceller;

    const PROBE_AND_RESET_TIMEOUT: &'static str = "SELECT 1";
    const SCHEMES: &'static [&'static str] = &["sqlite"];
    const FILE_NAMES: bool = true;
    const URL_EXAMPLES: &'static str =
        "sqlite://path/to/file.db, sqlite:file.db, sqlite::memory:, or a file name";

    fn describe(options: &SqliteConnectOptions) -> String {
        format!("sqlite://{}", options.get_filename().display())
    }
    const SERVER_TIMEOUT: bool = false;

    async fn canceller(_: &SqliteConnectOptions, first: SqliteConnection) -> NoCanceller {
        // The first connection only validated the options.
        let _ = first.close().await;
        NoCanceller
    }

    async fn close_canceller(_: &NoCanceller) {}

    async fn adopt(conn: &mut SqliteConnection) -> Result<Interrupt, sqlx::Error> {
        let interrupt = Interrupt {
            state: Arc::default(),
        };
        let handler = interrupt.clone();
        let mut handle = conn.lock_handle().await?;
        // `true` continues the statement, `false` interrupts it.
        handle.set_progress_handler(PROGRESS_OPS, move || handler.progress());
        Ok(interrupt)
    }

    fn arm(handle: &Interrupt, token: &CancellationToken) -> Option<Registration> {
        let interrupt = handle.clone();
        // One store on the cancelling thread: the statement stops at its next progress
        // check, however long the operation's task takes to be polled.
        Some(token.on_cancel(move |_| interrupt.raise()))
    }

    fn raised(handle: &Interrupt) -> bool {
        handle.state.raised.load(Ordering::Relaxed)
    }

    fn progress(handle: &Interrupt) -> u64 {
        handle.state.calls.load(Ordering::Relaxed)
    }

    fn still_running(_: &mut SqliteConnection, handle: &Interrupt, since: u64) -> Running {
        // The worker thread runs commands in order and tells nobody when one ends; only a
        // round trip (a ping) proves it idle, and that would double the cost of a short
        // query. What costs nothing: the progress handler, called every `PROGRESS_OPS`
        // VM instructions of a running statement. SQLite counts those instructions per
        // prepared statement across its executions, so a short statement run often calls
        // it now and then too; two calls or more during one operation say a statement ran
        // at length — a statement the body gave up on after even a millisecond calls it
        // many times — and the connection is drained (interrupt, ping) before reuse, at
        // the price of one worker round trip for operations that ran long statements.
        // Fewer calls: a statement dropped within its first few thousand instructions may
        // still run, and only a round trip could tell (see `Running::Unknown`).
        if Self::progress(handle).wrapping_sub(since) >= 2 {
            Running::Maybe
        } else {
            Running::Unknown
        }
    }

    async fn stop<'a>(
        _: &'a NoCanceller,
        conn: &'a mut SqliteConnection,
        handle: &'a Interrupt,
        _unsent: bool,
        until: Instant,
    ) -> Stopped {
        handle.raise();
        // The worker runs commands in order: its answer to the ping means the abandoned
        // statement (and whatever was queued behind it) has finished.
        match tokio::time::timeout_at(until.into(), conn.ping()).await {
            Ok(Ok(())) => {
                handle.lower();
                Stopped::Drained
            }
            // The flag stays raised: the worker interrupts the statement when it next checks,
            // then finds the connection closed.
            Ok(Err(_)) | Err(_) => Stopped::Close,
        }
    }

    async fn abort<'a>(_: &'a NoCanceller, handle: &'a Interrupt, _: Instant) {
        handle.raise();
    }

    fn begin_with_timeout(_: u64) -> Option<String> {
        None
    }

    async fn set_session_timeout(_: &mut SqliteConnection, _: u64) -> Result<bool, sqlx::Error> {
        Ok(false)
    }

    async fn raw_rollback(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        Ok(())
    }

    fn is_failed_transaction(_: &sqlx::Error) -> bool {
        false
    }

    async fn check_not_aborted(_: &mut SqliteConnection) -> Result<(), sqlx::Error> {
        // A SQLite transaction is not left aborted: an error that ends it (SQLITE_FULL,
        // SQLITE_IOERR, …) rolls it back at once, and the COMMIT then fails with "no
        // transaction is active", which sqlx reports.
        Ok(())
    }
}
