//! PostgreSQL: cancel the backend's statement with `pg_cancel_backend(pid)` from a separate
//! canceller connection, then drain; terminate and close if the server does not confirm.
//!
//! # Why `pg_cancel_backend` and not a CancelRequest
//!
//! A CancelRequest (what libpq's `PQcancel` and Npgsql send) needs the backend's secret key,
//! which sqlx 0.9 reads during the handshake but keeps private. `pg_cancel_backend(pid)` does
//! the same on the server (it sends the backend `SIGINT`, exactly what the postmaster does on
//! a CancelRequest) and needs only the pid, which we read once per connection with
//! `SELECT pg_backend_pid()`. It runs on a *canceller* connection of its own (the pool's
//! connections may all be busy: a pool of one must still be cancellable), kept open between
//! cancels so a cancel costs one round trip. It needs the right to signal the backend: the
//! same role, or membership in `pg_signal_backend` (a superuser can signal anyone).
//!
//! # Aim: why the cancel only ever hits our own statement
//!
//! Both a CancelRequest and `pg_cancel_backend` cancel whatever the backend runs *when the
//! signal arrives*. The procedure keeps that the statement we abandoned:
//!
//! 1. The connection is ours alone while the operation runs, and once the token fires we drop
//!    the operation's future first: nothing else will be sent on it.
//! 2. `pg_cancel_backend` returns after `kill(pid, SIGINT)` did: the signal is pending on the
//!    backend *before* we send the connection anything new. The backend runs its handler
//!    before it executes another instruction, so the flag is set before it can read our next
//!    message.
//! 3. If the backend was running our statement, the statement fails with `57014`. If it was
//!    idle (the statement had ended), PostgreSQL discards a cancel that arrives while no
//!    query runs: `PostgresMain` calls `CHECK_FOR_INTERRUPTS()` with `DoingCommandRead` set
//!    before it executes the next message it reads, and that clears the pending cancel.
//! 4. Only then do we drain (read every reply still due) and send the probe. So the cancel
//!    cannot land on the probe, the `ROLLBACK`, or the next borrower's first statement.
//!
//! If bytes of the abandoned statement were never sent (`should_flush()`; only when the
//! socket's send buffer was full), draining would *start* that statement after the cancel
//! was discarded: we close the connection instead, and the server never sees it whole.
//!
//! # Npgsql's sequence, and the step after it
//!
//! If the statement has not ended within the pool's cancellation timeout (2 s, as Npgsql's
//! `Cancellation Timeout`) after the cancel, the server is
//! unresponsive or the statement ignores interrupts; Npgsql closes the connection then. A
//! closed socket alone does not stop a statement that never writes to it (`pg_sleep`), so we
//! first `pg_terminate_backend(pid)` — safe to aim, since we are about to close this backend
//! anyway and hold it until then — and then close.

use std::future::Future;
use std::pin::pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use gracefully::{CancellationToken, Registration};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{Connection, Postgres};

use super::{Running, Stopped, sealed::Sealed};

/// How many idle canceller connections a pool keeps (more are opened under a burst of
/// simultaneous cancels, and closed afterwards).
const CANCELLER_IDLE: usize = 2;

/// The backend process of one connection.
#[derive(Debug, Clone, Copy)]
pub struct BackendPid {
    pid: i32,
}

/// Connections that send `pg_cancel_backend` / `pg_terminate_backend` for a pool.
#[derive(Debug)]
pub struct Canceller {
    options: PgConnectOptions,
    idle: Mutex<Idle>,
}

/// The canceller's idle connections.
#[derive(Debug)]
struct Idle {
    conns: Vec<PgConnection>,
    /// Set by [`Canceller::close`]: connections are no longer kept, so nothing the pool
    /// opened outlives its `close`.
    closed: bool,
}

/// The signal to send a backend.
#[derive(Clone, Copy)]
enum Signal {
    Cancel,
    Terminate,
}

/// Turns on PostgreSQL's check for a departed client, every second while a statement
/// runs, unless it is set already (see `adopt`).
const CHECK_CLIENT: &str = "SELECT set_config('client_connection_check_interval', '1000', false) \
     WHERE current_setting('client_connection_check_interval', true) = '0'";

impl Canceller {
    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self) -> Option<PgConnection> {
        self.lock().conns.pop()
    }

    /// Keeps `conn` for the next cancel, or closes it (a goodbye, not a dropped socket)
    /// if enough are kept or the pool is closed.
    async fn put(&self, conn: PgConnection) {
        let surplus = {
            let mut idle = self.lock();
            if idle.closed || idle.conns.len() >= CANCELLER_IDLE {
                Some(conn)
            } else {
                idle.conns.push(conn);
                None
            }
        };
        if let Some(conn) = surplus {
            let _ = conn.close().await;
        }
    }

    /// Closes the kept connections and keeps none from now on.
    async fn close(&self) {
        let conns = {
            let mut idle = self.lock();
            idle.closed = true;
            std::mem::take(&mut idle.conns)
        };
        for conn in conns {
            let _ = conn.close().await;
        }
    }

    /// Signals backend `pid`; returns once the server has sent the signal (`kill` returned).
    /// Retries once on a fresh connection if a kept one turns out to be dead.
    async fn signal(&self, pid: i32, signal: Signal) -> Result<bool, sqlx::Error> {
        let sql = match signal {
            Signal::Cancel => "SELECT pg_cancel_backend($1)",
            Signal::Terminate => "SELECT pg_terminate_backend($1)",
        };
        loop {
            let (mut conn, reused) = match self.take() {
                Some(conn) => (conn, true),
                None => (PgConnection::connect_with(&self.options).await?, false),
            };
            match sqlx::query_scalar::<_, bool>(sql)
                .bind(pid)
                .fetch_one(&mut conn)
                .await
            {
                Ok(sent) => {
                    self.put(conn).await;
                    return Ok(sent);
                }
                // A kept connection may have died while idle: try a fresh one.
                Err(_) if reused => continue,
                Err(error) => return Err(error),
            }
        }
    }
}

impl Sealed for Postgres {
    type Handle = BackendPid;
    type Canceller = Canceller;

    const PROBE_AND_RESET_TIMEOUT: &'static str = "RESET statement_timeout";
    const SCHEMES: &'static [&'static str] = &["postgres", "postgresql"];
    const FILE_NAMES: bool = false;
    const URL_EXAMPLES: &'static str =
        "postgres://user@host:5432/database, or postgres:///database?host=/var/run/postgresql";

    fn describe(options: &PgConnectOptions) -> String {
        let (user, port) = (options.get_username(), options.get_port());
        let database = options.get_database().unwrap_or_default();
        match options.get_socket() {
            Some(socket) => format!(
                "postgres://{user}@/{database}?host={}&port={port}",
                socket.display()
            ),
            None => format!("postgres://{user}@{}:{port}/{database}", options.get_host()),
        }
    }
    const SERVER_TIMEOUT: bool = true;

    fn canceller(
        options: &PgConnectOptions,
        first: PgConnection,
    ) -> impl Future<Output = Canceller> + Send {
        let canceller = Canceller {
            options: options.clone(),
            idle: Mutex::new(Idle {
                conns: vec![first],
                closed: false,
            }),
        };
        std::future::ready(canceller)
    }

    async fn close_canceller(canceller: &Canceller) {
        canceller.close().await;
    }

    async fn adopt(conn: &mut PgConnection) -> Result<BackendPid, sqlx::Error> {
        let pid = sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()")
            .fetch_one(&mut *conn)
            .await?;
        // A process that dies mid-statement (killed, crashed: no cancel can be sent) must
        // not leave the statement running on the server for nobody. PostgreSQL 14+ checks
        // that its client is still connected every `client_connection_check_interval`
        // while a statement runs, and ends the statement when it is not; off by default,
        // turned on here unless something set it already (the URL's `options`, the role,
        // the server). Older servers have no such setting: the WHERE clause selects
        // nothing and nothing is called. A server on a platform without the kernel support
        // refuses a non-zero value: the error is ignored and the connection works as before.
        let _ = sqlx::query(CHECK_CLIENT).execute(&mut *conn).await;
        Ok(BackendPid { pid })
    }

    fn arm(_: &BackendPid, _: &CancellationToken) -> Option<Registration> {
        // The operation's future wakes on the token and starts the cancel; nothing to do on
        // the cancelling thread (network I/O does not belong in a callback).
        None
    }

    fn raised(_: &BackendPid) -> bool {
        false
    }

    fn progress(_: &BackendPid) -> u64 {
        0
    }

    fn still_running(conn: &mut PgConnection, _: &BackendPid, _: u64) -> Running {
        if conn.should_flush() {
            // Bytes are queued (a dropped sqlx `Transaction`'s ROLLBACK, or the unsent rest
            // of an abandoned statement): polling below would send them. Verification sends
            // them and waits for their replies, as sqlx would.
            return Running::No;
        }
        // sqlx counts the `ReadyForQuery` replies it still expects (one per statement sent)
        // but does not expose the count. Its `flush` (the wait before every statement) is
        // ready at its first poll exactly when there are none, and sends nothing when the
        // write buffer is empty. So one poll, with a waker that does nothing, tells whether
        // a statement's replies are still owed — the statement may still run — at no cost.
        // Replies already in the socket are read by that poll; what it leaves half read
        // stays buffered in sqlx (its reads are cancel safe), for the drain.
        let mut flush = pin!(conn.flush());
        match flush.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => Running::No,
            // An error reply of the abandoned statement, or a broken connection: drain it
            // (a broken connection is then closed).
            Poll::Ready(Err(_)) | Poll::Pending => Running::Maybe,
        }
    }

    async fn stop<'a>(
        canceller: &'a Canceller,
        conn: &'a mut PgConnection,
        handle: &'a BackendPid,
        unsent: bool,
        until: Instant,
    ) -> Stopped {
        let pid = handle.pid;
        // Step 2 of the module docs: the signal is pending on the backend before we send
        // the connection anything else.
        let sent =
            tokio::time::timeout_at(until.into(), canceller.signal(pid, Signal::Cancel)).await;
        if !matches!(sent, Ok(Ok(_))) {
            // Could not reach the server to cancel: the statement may still run.
            return Stopped::Close;
        }
        if unsent {
            // Draining would start the abandoned statement after the cancel was discarded;
            // closing mid-message makes the backend quit instead.
            return Stopped::Close;
        }
        // Step 4: drain. Each reply still due is read; the cancelled statement's `57014` (and
        // any error before it) surfaces as an `Err` of `ping`, after which we ping again
        // until every `ReadyForQuery` arrived.
        for _ in 0..16 {
            match tokio::time::timeout_at(until.into(), conn.ping()).await {
                Ok(Ok(())) => return Stopped::Drained,
                Ok(Err(sqlx::Error::Database(_))) => continue,
                Ok(Err(_)) | Err(_) => return Stopped::Close,
            }
        }
        Stopped::Close
    }

    async fn abort<'a>(canceller: &'a Canceller, handle: &'a BackendPid, until: Instant) {
        // We still hold the connection, so the backend (and its pid) is ours. Give the
        // terminate a moment even if the cancellation timeout is spent: it is what stops a
        // statement that never notices a closed socket.
        let until = until.max(Instant::now() + Duration::from_millis(500));
        let terminate = canceller.signal(handle.pid, Signal::Terminate);
        let _ = tokio::time::timeout_at(until.into(), terminate).await;
    }

    fn begin_with_timeout(millis: u64) -> Option<String> {
        Some(format!("BEGIN; SET LOCAL statement_timeout = {millis}"))
    }

    async fn set_session_timeout(
        conn: &mut PgConnection,
        millis: u64,
    ) -> Result<bool, sqlx::Error> {
        // The simple-query protocol: nothing lands in the statement cache.
        let sql = format!("SET statement_timeout = {millis}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await?;
        Ok(true)
    }

    async fn raw_rollback(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
        Ok(())
    }

    fn is_failed_transaction(error: &sqlx::Error) -> bool {
        matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("25P02"))
    }

    async fn check_not_aborted(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        // PostgreSQL answers the COMMIT of an aborted transaction with the command tag
        // `ROLLBACK` and no error; pgx and lib/pq read that tag, but sqlx 0.9 keeps both the
        // tag and the `ReadyForQuery` status (`E`) private. So ask: in an aborted
        // transaction every statement but ROLLBACK fails with `25P02`. Simple-query
        // protocol: one message, nothing in the statement cache.
        sqlx::raw_sql("SELECT 1").execute(&mut *conn).await?;
        Ok(())
    }
}
