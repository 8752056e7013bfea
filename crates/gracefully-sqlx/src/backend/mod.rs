//! [`Backend`]: the databases the pool can stop statements on, and what each needs to do it.
//!
//! Everything database-specific lives behind the sealed trait, so the pool, the operations
//! and the recovery procedure are written once:
//!
//! | step | PostgreSQL ([`postgres`]) | SQLite ([`sqlite`]) |
//! |---|---|---|
//! | adopt a new connection | `SELECT pg_backend_pid()` once; `client_connection_check_interval` on | install a progress handler reading a per-connection flag |
//! | token fires | (the operation wakes) | the `on_cancel` callback raises the flag at once |
//! | stop the statement | `pg_cancel_backend(pid)` from the canceller, then drain | raise the flag, then a worker round trip |
//! | give up | `pg_terminate_backend(pid)`, close | close (the flag stays raised) |
//! | deadline on the server | `SET LOCAL statement_timeout` / `SET statement_timeout` | (the interrupt covers it) |

use std::future::Future;
use std::time::Instant;

use gracefully::{CancellationToken, Registration};
use sqlx::{Connection, Database};

pub(crate) mod postgres;
pub(crate) mod sqlite;

/// A database whose running statements [`GracefulPool`](crate::GracefulPool) can stop:
/// [`sqlx::Postgres`] and [`sqlx::Sqlite`]. Sealed: the mechanism differs per database and
/// is part of this crate.
pub trait Backend: sealed::Sealed {}

impl Backend for sqlx::Postgres {}
impl Backend for sqlx::Sqlite {}

/// The connect options of a database's connections.
pub(crate) type ConnectOptionsOf<DB> = <<DB as Database>::Connection as Connection>::Options;

/// Whether [`sealed::Sealed::stop`] left the connection in sync and idle-able, or it must be
/// closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Nothing runs on the connection any more and the protocol is in sync: go on to verify.
    Drained,
    /// The connection cannot be trusted (the server did not confirm in time, the canceller
    /// was unreachable, bytes of an abandoned statement were never sent): close it.
    Close,
}

/// Whether a statement sent during an operation may still be running on its connection once
/// the operation's body ended (the body dropped a query future before the statement
/// finished: its own `timeout`, a `select!`), as far as can be told without a round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Running {
    /// Nothing runs: every reply the connection owed has been read.
    No,
    /// A statement may still run: stop and drain it before the connection is lent again.
    Maybe,
    /// Cannot be told without a round trip (see `still_running` of the backend).
    Unknown,
}

pub(crate) mod sealed {
    use super::*;

    /// The per-database mechanism. Crate-private: see [`Backend`].
    pub trait Sealed: Database + Sized {
        /// What it takes to stop this connection's statement from outside the operation:
        /// PostgreSQL's backend pid, SQLite's interrupt flag.
        type Handle: Clone + Send + Sync + 'static;
        /// Per-pool state used to stop statements: PostgreSQL's canceller connections.
        type Canceller: Send + Sync + 'static;

        /// A statement that changes nothing, used to read the connection's transaction
        /// state (see `recover::verify`).
        const PROBE: &'static str = "SELECT 1";

        /// URL schemes this backend connects with (checked before parsing, so a URL for
        /// another database is an error, not a file name): see `crate::target`.
        const SCHEMES: &'static [&'static str];

        /// Whether a string without a scheme is a target too (SQLite: a file name).
        const FILE_NAMES: bool;

        /// Examples of valid targets, for error messages.
        const URL_EXAMPLES: &'static str;

        /// The target of `options`, for messages, without its password. Built from the
        /// options' fields; never through `to_url_lossy` (see `crate::target`).
        fn describe(options: &ConnectOptionsOf<Self>) -> String;

        /// A statement that also restores the session's `statement_timeout` while probing,
        /// for connections whose timeout an operation set.
        const PROBE_AND_RESET_TIMEOUT: &'static str;

        /// Builds the canceller, taking over `first`, the connection opened to validate the
        /// options.
        fn canceller(
            options: &ConnectOptionsOf<Self>,
            first: Self::Connection,
        ) -> impl Future<Output = Self::Canceller> + Send;

        /// Closes what the canceller keeps open, and keeps nothing open from now on (the
        /// pool is closing).
        fn close_canceller(canceller: &Self::Canceller) -> impl Future<Output = ()> + Send;

        /// Learns what is needed to stop this connection's statements later. Runs once per
        /// connection, the first time the pool sees it.
        fn adopt(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<Self::Handle, sqlx::Error>> + Send + '_;

        /// Arms the handle for one operation on `token`: a callback that runs on the
        /// cancelling thread, if the database can be interrupted from there.
        fn arm(handle: &Self::Handle, token: &CancellationToken) -> Option<Registration>;

        /// Whether an interrupt was raised on this connection and must be lowered (after the
        /// worker drained) before anyone else uses it.
        fn raised(handle: &Self::Handle) -> bool;

        /// A mark of the connection's progress, taken when an operation starts, for
        /// [`still_running`](Self::still_running).
        fn progress(handle: &Self::Handle) -> u64;

        /// After an operation's body ended (and before anything new is sent): whether a
        /// statement it sent may still be running, judged without a round trip. `since` is
        /// [`progress`](Self::progress) at the operation's start.
        fn still_running(conn: &mut Self::Connection, handle: &Self::Handle, since: u64)
        -> Running;

        /// Stops whatever `conn` may still be running and drains its replies, giving up at
        /// `until`. `unsent`: bytes of an abandoned statement were never (fully) sent.
        fn stop<'a>(
            canceller: &'a Self::Canceller,
            conn: &'a mut Self::Connection,
            handle: &'a Self::Handle,
            unsent: bool,
            until: Instant,
        ) -> impl Future<Output = Stopped> + Send + 'a;

        /// Last resort before closing a connection whose statement may still run: PostgreSQL
        /// terminates the backend; SQLite leaves its flag raised so the statement is
        /// interrupted as soon as it checks.
        fn abort<'a>(
            canceller: &'a Self::Canceller,
            handle: &'a Self::Handle,
            until: Instant,
        ) -> impl Future<Output = ()> + Send + 'a;

        /// Whether the database has a server-side statement timeout that a token's deadline
        /// can become. Without one, operations never set a session timeout, so they need no
        /// reset (and no recovery) afterwards.
        const SERVER_TIMEOUT: bool;

        /// `BEGIN` with a server-side statement timeout of `millis`, if the database has one.
        fn begin_with_timeout(millis: u64) -> Option<String>;

        /// Sets a session-level statement timeout of `millis`; `Ok(false)` if the database
        /// has none.
        fn set_session_timeout(
            conn: &mut Self::Connection,
            millis: u64,
        ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send + '_;

        /// Rolls back a transaction sqlx does not know about (opened by raw SQL, or left
        /// aborted), without touching sqlx's own transaction depth.
        fn raw_rollback(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;

        /// Whether `error` says the connection is inside a failed transaction (PostgreSQL
        /// `25P02`), which only a `ROLLBACK` ends.
        fn is_failed_transaction(error: &sqlx::Error) -> bool;

        /// Before `COMMIT`: fails (with an error [`is_failed_transaction`] recognises) if the
        /// transaction was aborted, whose `COMMIT` would silently roll back. PostgreSQL: one
        /// round trip; SQLite: nothing (its `COMMIT` reports a transaction that is gone).
        ///
        /// [`is_failed_transaction`]: Self::is_failed_transaction
        fn check_not_aborted(
            conn: &mut Self::Connection,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send + '_;
    }
}
