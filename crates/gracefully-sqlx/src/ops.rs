//! The operations: [`GracefulPool::run`] for ordinary sqlx queries and
//! [`GracefulPool::transaction`] for transactions that commit only when they should.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gracefully::operation::{Operation, OperationKind, OperationOutcome};
use gracefully::{CancellationToken, Reason};
use sqlx::{Connection, Transaction};

use crate::backend::Backend;
use crate::error::Error;
use crate::lease::{DropHint, Ended};
use crate::pool::GracefulPool;
use crate::settings::ServerDeadline;

/// A boxed, `Send` future borrowing for `'a`: what an operation's body returns (the same
/// shape as sqlx's `Connection::transaction` and `futures::future::BoxFuture`).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// How long to wait for the token after the server's deadline-derived timeout fired first
/// (the token's own timer fires within about a millisecond of the same deadline).
const SETTLE: Duration = Duration::from_millis(100);

/// The largest `statement_timeout` PostgreSQL accepts (`INT_MAX` milliseconds); a deadline
/// further out sets none.
const MAX_TIMEOUT_MILLIS: u64 = i32::MAX as u64;

impl<DB: Backend> GracefulPool<DB> {
    /// Runs `body` on a pooled connection until it completes or `token` fires.
    ///
    /// Inside, write ordinary sqlx: `sqlx::query(…).fetch_all(&mut *conn)`. When the token
    /// fires, the body's future is dropped — it sends nothing more — and the statement it was
    /// running is stopped *on the server* (PostgreSQL: `pg_cancel_backend`; SQLite: the
    /// interrupt flag). The connection goes back to the pool only after the server confirmed
    /// it idle and outside any transaction; otherwise it is closed. Then `run` returns
    /// [`Error::Cancelled`] with the token's reason, converted into your `E`.
    ///
    /// Outcomes:
    /// * the body returns `Ok(v)`: `Ok(v)`, even if the token fired at the very end (the
    ///   work was done);
    /// * the token fires first (or was already cancelled, or fires during the checkout):
    ///   `Err(E::from(Error::Cancelled(..)))`;
    /// * the body returns `Err(e)`: `Err(e)`, unless the token had fired by then, in which
    ///   case `Cancelled` (as Go's `database/sql` returns `ctx.Err()`): an error caused by
    ///   the cancellation is reported as the cancellation.
    ///
    /// With [`ServerDeadline::Always`](crate::ServerDeadline::Always) and a token with a
    /// [`deadline`](CancellationToken::deadline), a PostgreSQL session gets `SET
    /// statement_timeout` before the body (one round trip) and a reset before reuse (one
    /// more). By default the deadline stays on the client here: the token fires, the
    /// statement is cancelled.
    ///
    /// ```no_run
    /// # async fn f(pool: gracefully_sqlx::PgGracefulPool) -> Result<(), gracefully_sqlx::Error> {
    /// use std::time::Duration;
    /// use gracefully::{CancellationSource, ReasonKind};
    ///
    /// let request = CancellationSource::with_timeout(Duration::from_millis(200));
    /// let result = pool
    ///     .run(&request.token(), |conn| Box::pin(async move {
    ///         sqlx::query("SELECT pg_sleep(30)").execute(&mut *conn).await?;
    ///         Ok::<_, gracefully_sqlx::Error>(())
    ///     }))
    ///     .await;
    /// // 200 ms later the server has stopped sleeping, and we know why.
    /// let error = result.unwrap_err();
    /// assert_eq!(error.as_cancelled().unwrap().kind(), ReasonKind::DeadlineExceeded);
    /// # Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future is safe and never leaks a busy connection: the statement
    /// is stopped and the connection verified by a tracked cleanup task
    /// ([`pending_cleanups`](Self::pending_cleanups)), as if the token had fired. What the
    /// body had done is not undone unless it was inside a transaction.
    ///
    /// *Anchors:* Npgsql's `ExecuteReaderAsync(token)` and Go's `db.QueryContext(ctx, …)`
    /// also cancel on the server. Differences: the caller's `Err` waits until the server
    /// stopped (bounded by the cancellation timeout); and a connection is verified before reuse.
    pub async fn run<T, E, F>(&self, token: &CancellationToken, body: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        let op = Operation::begin(OperationKind::Query, self.label.unwrap_or("query"), None);
        if !op.is_recording() {
            return self.run_unrecorded(token, body).await;
        }
        op.set_deadline(token.deadline());
        let result = op.scoped(self.run_unrecorded(token, body)).await;
        end_operation(op, token, &result);
        result
    }

    /// [`run`](Self::run), without registering an operation.
    async fn run_unrecorded<T, E, F>(&self, token: &CancellationToken, body: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(&'c mut DB::Connection) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        token.check().map_err(|c| E::from(Error::from(c)))?;
        let mut lease = self.lease(token).await.map_err(E::from)?;
        let armed = DB::arm(lease.handle(), token);

        let mut deadline_applied = false;
        let timeout = match self.core.settings.server_deadline {
            ServerDeadline::Always => self.timeout_millis(token),
            ServerDeadline::Off | ServerDeadline::Transactions => None,
        };
        // Every path but the common one (no session timeout, the body succeeds, nothing in
        // doubt) is boxed: their futures (the `SET`, the recovery, a timer) would otherwise
        // make this future kilobytes larger, and it is created and moved on every call.
        if let Some(millis) = timeout {
            // Marked before it is sent: if this is cancelled midway, recovery resets it.
            lease.set_session_timeout();
            let set =
                Box::pin(token.run_until_cancelled(DB::set_session_timeout(lease.conn(), millis)))
                    .await;
            match set {
                Err(cancelled) => return Err(E::from(Box::pin(lease.abandon(cancelled)).await)),
                Ok(Ok(applied)) => deadline_applied = applied,
                Ok(Err(error)) => {
                    drop(armed);
                    Box::pin(lease.release(Ended::Completed { doubt: true })).await;
                    return Err(E::from(Error::from(error)));
                }
            }
        }

        let outcome = token.run_until_cancelled(body(lease.conn())).await;
        // No callback can raise the interrupt after this.
        drop(armed);
        match outcome {
            Err(cancelled) => Err(E::from(Box::pin(lease.abandon(cancelled)).await)),
            Ok(Ok(value)) => {
                lease.release(Ended::Returned { doubt: false }).await;
                Ok(value)
            }
            Ok(Err(error)) => {
                let reason = Box::pin(async move {
                    lease.release(Ended::Returned { doubt: true }).await;
                    settle(token, deadline_applied).await
                })
                .await;
                match reason {
                    Some(reason) => Err(E::from(Error::cancelled(reason))),
                    None => Err(error),
                }
            }
        }
    }

    /// Runs `body` inside a transaction that commits only if the body succeeded and the
    /// token has not fired; otherwise it rolls back, and the rollback has completed (not
    /// merely been queued) when this returns.
    ///
    /// The body gets the sqlx [`Transaction`] (execute on `&mut **tx`; `tx.begin()` opens a
    /// savepoint) and a clone of the token, to pass on or check between steps. Cancellation
    /// reaches the server at every point: during `BEGIN`, during any statement of the body
    /// (PostgreSQL cancels it; SQLite interrupts it), and between statements. A `COMMIT`,
    /// once sent, is never cancelled: its outcome is the outcome.
    ///
    /// Outcomes:
    /// * body `Ok(v)`, token not cancelled, `COMMIT` succeeds: `Ok(v)`, committed;
    /// * body `Ok(v)` but the token fired: rolled back, `Cancelled`;
    /// * body `Err(e)`: rolled back; `Err(e)`, or `Cancelled` if the token had fired;
    /// * the token fires before the body ends: the body is dropped, its statement stopped on
    ///   the server, rolled back, `Cancelled`;
    /// * body `Ok(v)`, but a statement in the transaction had failed and the body went on
    ///   (PostgreSQL aborts the transaction; its `COMMIT` would silently roll back): rolled
    ///   back, [`Error::RolledBack`];
    /// * `COMMIT` fails (a serialization failure, a deferred constraint): `Err` with the
    ///   database error; the server has rolled back.
    ///
    /// On PostgreSQL, telling a live transaction from an aborted one costs one round trip
    /// before `COMMIT` (sqlx does not expose `COMMIT`'s command tag, which would tell for
    /// free).
    ///
    /// With [`ServerDeadline::Transactions`](crate::ServerDeadline::Transactions) (the
    /// default) and a token with a deadline, a PostgreSQL transaction starts with `BEGIN; SET
    /// LOCAL statement_timeout = <time left>` in one message: the server enforces the deadline
    /// too, at no extra cost.
    ///
    /// ```no_run
    /// # async fn f(pool: gracefully_sqlx::PgGracefulPool, token: gracefully::CancellationToken)
    /// # -> Result<(), gracefully_sqlx::Error> {
    /// let order_id: i64 = pool
    ///     .transaction(&token, |tx, token| Box::pin(async move {
    ///         let id: i64 = sqlx::query_scalar("INSERT INTO orders DEFAULT VALUES RETURNING id")
    ///             .fetch_one(&mut **tx)
    ///             .await?;
    ///         token.check()?; // a cheap checkpoint between steps
    ///         sqlx::query("INSERT INTO order_lines (order_id) VALUES ($1)")
    ///             .bind(id)
    ///             .execute(&mut **tx)
    ///             .await?;
    ///         Ok::<_, gracefully_sqlx::Error>(id)
    ///     }))
    ///     .await?;
    /// # let _ = order_id; Ok(()) }
    /// ```
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future rolls the transaction back: a tracked cleanup task
    /// stops the running statement, sends the `ROLLBACK`, waits for it and verifies the
    /// connection ([`wait_for_cleanups`](Self::wait_for_cleanups) waits for it). If it is
    /// dropped while `COMMIT` is in flight, the commit's outcome is decided by the server and
    /// is atomic: all of the body's writes or none.
    ///
    /// *Anchors:* EF Core's `BeginTransactionAsync(token)` / `CommitAsync(token)` with the
    /// rollback on `Dispose`; sqlx's own `Connection::transaction`. Differences: sqlx's
    /// `Transaction` only *queues* its rollback when dropped; here it completes, tracked. And
    /// unlike `CommitAsync(token)`, a commit already sent is not cancelled, because a
    /// cancelled commit leaves the caller unable to tell whether it happened.
    pub async fn transaction<T, E, F>(&self, token: &CancellationToken, body: F) -> Result<T, E>
    where
        F: for<'c> FnOnce(
            &'c mut Transaction<'_, DB>,
            CancellationToken,
        ) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        let op = Operation::begin(
            OperationKind::Transaction,
            self.label.unwrap_or("transaction"),
            None,
        );
        if !op.is_recording() {
            return self.transaction_unrecorded(token, body).await;
        }
        op.set_deadline(token.deadline());
        let result = op.scoped(self.transaction_unrecorded(token, body)).await;
        end_operation(op, token, &result);
        result
    }

    /// [`transaction`](Self::transaction), without registering an operation.
    async fn transaction_unrecorded<T, E, F>(
        &self,
        token: &CancellationToken,
        body: F,
    ) -> Result<T, E>
    where
        F: for<'c> FnOnce(
            &'c mut Transaction<'_, DB>,
            CancellationToken,
        ) -> BoxFuture<'c, Result<T, E>>,
        E: From<Error>,
    {
        token.check().map_err(|c| E::from(Error::from(c)))?;
        let mut lease = self.lease(token).await.map_err(E::from)?;
        let hint = Arc::new(DropHint::default());
        lease.hint = Some(Arc::clone(&hint));
        let (handle, since) = (lease.handle().clone(), lease.since());
        let armed = DB::arm(&handle, token);
        let timeout = match self.core.settings.server_deadline {
            ServerDeadline::Transactions | ServerDeadline::Always => self.timeout_millis(token),
            ServerDeadline::Off => None,
        };
        let begin_sql = timeout.and_then(DB::begin_with_timeout);
        let deadline_applied = begin_sql.is_some();

        // Everything that borrows the connection happens in `transact`; what it returns
        // borrows nothing, so the lease can be consumed here.
        let watch = TxWatch {
            hint,
            handle,
            since,
        };
        let end = transact(lease.conn(), token, armed, begin_sql, watch, body).await;
        match end {
            TxEnd::Cancelled(cancelled) => Err(E::from(lease.abandon(cancelled).await)),
            TxEnd::BeginFailed(error) | TxEnd::CommitFailed(error) => {
                lease.release(Ended::Completed { doubt: true }).await;
                Err(E::from(Error::from(error)))
            }
            TxEnd::Committed(value) => {
                lease.release(Ended::Completed { doubt: false }).await;
                Ok(value)
            }
            TxEnd::Aborted(source) => {
                // The ROLLBACK was queued; verification sends it.
                lease.release(Ended::Completed { doubt: true }).await;
                match settle(token, deadline_applied).await {
                    // A statement the server's deadline stopped: the deadline is the cause.
                    Some(reason) => Err(E::from(Error::cancelled(reason))),
                    None => Err(E::from(Error::RolledBack { source })),
                }
            }
            TxEnd::RolledBack(result) => {
                // The ROLLBACK was queued when the transaction was dropped; verification
                // sends it, waits for it and reads the server's state after it (after
                // stopping a statement the body gave up on, as the guard recorded).
                lease.release(Ended::Returned { doubt: true }).await;
                match (settle(token, deadline_applied).await, result) {
                    (Some(reason), _) => Err(E::from(Error::cancelled(reason))),
                    (None, Err(error)) => Err(error),
                    // `Ok` is rolled back only with the token cancelled, and a cancelled
                    // token stays cancelled: `settle` returned its reason.
                    (None, Ok(_)) => unreachable!("a cancelled token has a reason"),
                }
            }
        }
    }

    /// The server-side timeout for an operation on `token`, in milliseconds: the time left
    /// before its deadline, rounded up so the token normally fires first.
    /// `None` if the database has no such timeout (SQLite).
    fn timeout_millis(&self, token: &CancellationToken) -> Option<u64> {
        if !DB::SERVER_TIMEOUT {
            return None;
        }
        let left = token.deadline()?.checked_duration_since(Instant::now())?;
        let millis = u64::try_from(left.as_millis()).ok()?.saturating_add(1);
        (millis <= MAX_TIMEOUT_MILLIS).then_some(millis)
    }
}

/// Ends a query's or transaction's operation. `E` is the caller's error type, which need
/// not be a `std::error::Error`; but an `Err` returned while the token is cancelled *is*
/// the cancellation (see `run`'s outcomes), so the token tells which it was.
fn end_operation<T, E>(op: Operation, token: &CancellationToken, result: &Result<T, E>) {
    let outcome = match (result, token.reason()) {
        (Ok(_), _) => OperationOutcome::Completed,
        (Err(_), Some(reason)) => OperationOutcome::Cancelled(reason),
        (Err(_), None) => OperationOutcome::Failed("returned an error".into()),
    };
    op.end(outcome);
}

/// How the part of a transaction that borrows the connection ended.
enum TxEnd<T, E> {
    /// The token fired before the body ended (or during `BEGIN`).
    Cancelled(gracefully::Cancelled),
    /// `BEGIN` failed.
    BeginFailed(sqlx::Error),
    /// `COMMIT` succeeded.
    Committed(T),
    /// `COMMIT` (or the check before it) failed; the server rolled back.
    CommitFailed(sqlx::Error),
    /// The transaction was aborted by a statement that failed in the body (which returned
    /// `Ok` anyway); its `COMMIT` would have been a silent `ROLLBACK`. Dropped, queueing the
    /// `ROLLBACK`.
    Aborted(sqlx::Error),
    /// The body failed, or the token fired as it succeeded: the transaction was dropped,
    /// queueing its `ROLLBACK`.
    RolledBack(Result<T, E>),
}

/// `BEGIN`, the body and `COMMIT` (or the queued `ROLLBACK`) on `conn`.
async fn transact<DB, T, E, F>(
    conn: &mut DB::Connection,
    token: &CancellationToken,
    armed: Option<gracefully::Registration>,
    begin_sql: Option<String>,
    watch: TxWatch<DB>,
    body: F,
) -> TxEnd<T, E>
where
    DB: Backend,
    F: for<'c> FnOnce(
        &'c mut Transaction<'_, DB>,
        CancellationToken,
    ) -> BoxFuture<'c, Result<T, E>>,
{
    let begin = async {
        match begin_sql {
            Some(sql) => conn.begin_with(sqlx::AssertSqlSafe(sql)).await,
            None => conn.begin().await,
        }
    };
    let tx = match token.run_until_cancelled(begin).await {
        Ok(Ok(tx)) => tx,
        Ok(Err(error)) => return TxEnd::BeginFailed(error),
        Err(cancelled) => return TxEnd::Cancelled(cancelled),
    };
    let mut guard = TxGuard {
        tx: Some(tx),
        watch,
    };
    let outcome = {
        let tx = guard.tx.as_mut().expect("set above");
        token.run_until_cancelled(body(tx, token.clone())).await
    };
    // No callback can raise the interrupt after this: the COMMIT cannot be interrupted.
    drop(armed);
    match outcome {
        Err(cancelled) => {
            // Records whether bytes were unsent, then queues sqlx's ROLLBACK.
            drop(guard);
            TxEnd::Cancelled(cancelled)
        }
        Ok(Ok(value)) if !token.is_cancelled() => {
            let tx = guard.tx.as_mut().expect("set above");
            // Still cancellable: nothing is committed until COMMIT is sent.
            match token.run_until_cancelled(DB::check_not_aborted(tx)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    drop(guard);
                    return if DB::is_failed_transaction(&error) {
                        TxEnd::Aborted(error)
                    } else {
                        TxEnd::CommitFailed(error)
                    };
                }
                Err(cancelled) => {
                    drop(guard);
                    return TxEnd::Cancelled(cancelled);
                }
            }
            let tx = guard.tx.take().expect("set above");
            drop(guard);
            match tx.commit().await {
                Ok(()) => TxEnd::Committed(value),
                Err(error) => TxEnd::CommitFailed(error),
            }
        }
        Ok(result) => {
            drop(guard);
            TxEnd::RolledBack(result)
        }
    }
}

/// Holds the body's transaction. Dropped with the transaction still in it (the operation's
/// future was dropped, the token fired, or the body failed), it records — *before* sqlx's
/// `Transaction` queues its `ROLLBACK`, which also shows as bytes to send and which a look
/// at the connection afterwards would send — whether bytes of an abandoned statement were
/// never sent, and whether a statement the body gave up on may still run.
struct TxGuard<'c, DB: Backend> {
    tx: Option<Transaction<'c, DB>>,
    watch: TxWatch<DB>,
}

/// What [`TxGuard`] needs to judge the connection, and where it records its findings.
struct TxWatch<DB: Backend> {
    hint: Arc<DropHint>,
    handle: DB::Handle,
    /// `Backend::progress` when the operation started.
    since: u64,
}

impl<DB: Backend> Drop for TxGuard<'_, DB> {
    fn drop(&mut self) {
        if let Some(tx) = &mut self.tx {
            let watch = &self.watch;
            let unsent = tx.should_flush();
            let running = DB::still_running(&mut **tx, &watch.handle, watch.since);
            watch.hint.record(unsent, running);
        }
        // `self.tx` drops after this, queueing the ROLLBACK.
    }
}

/// The reason to report for an operation that ended with an error: the token's, if it has
/// fired. If the server's deadline-derived timeout fired first, the token's timer is due
/// within about a millisecond: wait briefly for it, so the caller sees `DeadlineExceeded`
/// rather than the server's `57014`.
async fn settle(token: &CancellationToken, deadline_applied: bool) -> Option<Reason> {
    if let Some(reason) = token.reason() {
        return Some(reason);
    }
    let due = token
        .deadline()
        .is_some_and(|deadline| deadline <= Instant::now() + Duration::from_millis(1));
    if deadline_applied && due {
        return tokio::time::timeout(SETTLE, token.cancelled()).await.ok();
    }
    None
}
