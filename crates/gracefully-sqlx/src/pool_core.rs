//! [`PoolCore`]: the pool itself, shared by every [`GracefulPool`](crate::GracefulPool)
//! handle and every cleanup task — its idle list on top of a sqlx pool, checkout and
//! check-in, and what a cleanup needs (the canceller, the settings, the cleanup count).
//!
//! # Why the pool keeps its own idle list
//!
//! To stop a connection's statement from outside, we must know something per connection:
//! PostgreSQL's backend pid, SQLite's interrupt flag. sqlx gives a pooled connection no
//! identity we could attach that to (its `Box`es move, it has no user-data slot), and asking
//! the server on every checkout would cost a round trip per query. So the pool keeps
//! the connections it has *adopted* (learned their pid / installed their handler, once) in
//! an idle list of its own, on top of a `sqlx::Pool` that opens connections, runs your
//! `after_connect` hook and enforces `max_connections` (an adopted connection counts as
//! checked out of the sqlx pool while it sits in our list). `max_lifetime`, `idle_timeout`
//! and `test_before_acquire` of your `PoolOptions` are applied to our list at checkout
//! (`test_before_acquire` only to connections idle for [`ALIVE_BYPASS_WINDOW`]).
//!
//! A checkout takes an adopted connection from the list, or else races three things: the
//! sqlx pool handing out a connection (adopted on the spot), a connection being returned to
//! our list (whoever returns one wakes one waiter: nobody waits on the sqlx pool while an
//! idle connection sits in ours), and the token.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use gracefully::CancellationToken;
use sqlx::Connection;
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::cleanups::Cleanups;
use crate::error::Error;
use crate::settings::{ALIVE_BYPASS_WINDOW, Settings};
use crate::tracked::Tracked;

/// The pool itself: what every [`GracefulPool`](crate::GracefulPool) handle and every cleanup
/// task shares.
pub(crate) struct PoolCore<DB: Backend> {
    pool: sqlx::Pool<DB>,
    /// Adopted idle connections, most recently used last (taken LIFO).
    idle: Mutex<Vec<Tracked<DB>>>,
    /// Notified (one waiter) whenever a connection is put into `idle`.
    released: Notify,
    pub(crate) canceller: DB::Canceller,
    pub(crate) settings: Settings,
    pub(crate) cleanups: Cleanups,
    /// Set once by `close`, while holding the `idle` lock; `checkin` reads it under the same
    /// lock (elsewhere it is only a hint: a checkout that misses it fails in sqlx's closed
    /// pool, or returns its connection to a closed pool, which closes it).
    closed: AtomicBool,
    /// The connection target, password redacted: for messages.
    target: String,
}

impl<DB: Backend> PoolCore<DB> {
    /// A pool over `pool` (whose connections open lazily), with `canceller` and
    /// `settings`; `target` names it in messages.
    pub(crate) fn new(
        pool: sqlx::Pool<DB>,
        canceller: DB::Canceller,
        settings: Settings,
        target: String,
    ) -> Self {
        PoolCore {
            pool,
            idle: Mutex::new(Vec::new()),
            released: Notify::new(),
            canceller,
            settings,
            cleanups: Cleanups::default(),
            closed: AtomicBool::new(false),
            target,
        }
    }

    /// The connection target, password redacted.
    pub(crate) fn target(&self) -> &str {
        &self.target
    }

    /// Connections open (idle or in use), as the sqlx pool counts them.
    pub(crate) fn size(&self) -> u32 {
        self.pool.size()
    }

    /// Connections in the idle list.
    pub(crate) fn num_idle(&self) -> usize {
        self.lock_idle().len()
    }

    /// Whether [`close`](Self::close) was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// See [`GracefulPool::close`](crate::GracefulPool::close).
    pub(crate) async fn close(&self) {
        // Marked closed under the idle list's lock: a check-in either came before (its
        // connection is in the list taken here) or sees the mark (see `checkin`).
        let idle = {
            let mut idle = self.lock_idle();
            self.closed.store(true, Ordering::Release);
            std::mem::take(&mut *idle)
        };
        for tracked in idle {
            let _ = tracked.conn.close().await;
        }
        self.cleanups.wait().await;
        // Cleanups that still start (operations in flight end after this) close any
        // canceller connection they open once they used it.
        DB::close_canceller(&self.canceller).await;
        self.pool.close().await;
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Tracked<DB>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for an operation on `token`: an idle adopted one, or a new one from the
    /// sqlx pool, adopted now.
    pub(crate) async fn checkout(&self, token: &CancellationToken) -> Result<Tracked<DB>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Database(sqlx::Error::PoolClosed));
        }
        // The common case, an idle connection, is handled here; waiting, opening and adopting
        // are boxed: their futures (sqlx's acquire, the adopt query, a timer) take kilobytes
        // that every operation's future would otherwise carry, and copy, on every call.
        loop {
            let idle = self.lock_idle().pop();
            let Some(tracked) = idle else { break };
            if let Some(tracked) = self.revalidate(tracked).await {
                return Ok(tracked);
            }
        }
        Box::pin(self.wait_or_open(token)).await
    }

    /// [`checkout`](Self::checkout) when no idle connection was at hand: wait for one to be
    /// returned, or open one.
    async fn wait_or_open(&self, token: &CancellationToken) -> Result<Tracked<DB>, Error> {
        let deadline = tokio::time::Instant::now() + self.settings.acquire_timeout;
        loop {
            // Register for a release *before* looking again, so one between our look and
            // the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let idle = self.lock_idle().pop();
            if let Some(tracked) = idle {
                match self.revalidate(tracked).await {
                    Some(tracked) => return Ok(tracked),
                    None => continue,
                }
            }
            let acquired = tokio::select! {
                biased;
                reason = token.cancelled() => return Err(Error::cancelled(reason)),
                () = &mut released => continue,
                acquired = tokio::time::timeout_at(deadline, self.pool.acquire()) => acquired,
            };
            let mut conn = match acquired {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => return Err(Error::Database(error)),
                Err(_) => return Err(Error::Database(sqlx::Error::PoolTimedOut)),
            };
            let adopted = tokio::select! {
                biased;
                // The adopt query is abandoned with `conn`: sqlx drains it when the
                // connection goes back to the sqlx pool.
                reason = token.cancelled() => return Err(Error::cancelled(reason)),
                adopted = DB::adopt(&mut conn) => adopted,
            };
            return match adopted {
                Ok(handle) => Ok(Tracked::adopted(conn, handle)),
                Err(error) => {
                    conn.close_on_drop();
                    Err(Error::Database(error))
                }
            };
        }
    }

    /// Applies `max_lifetime`, `idle_timeout` and `test_before_acquire` to an idle
    /// connection; `None` if it was closed instead.
    async fn revalidate(&self, tracked: Tracked<DB>) -> Option<Tracked<DB>> {
        let settings = &self.settings;
        // One clock read for the three (none if none is set).
        let (expired, test) = if settings.max_lifetime.is_some()
            || settings.idle_timeout.is_some()
            || settings.test_before_acquire
        {
            let now = Instant::now();
            let outlived = |since: Instant, max: Option<Duration>| {
                max.is_some_and(|max| now.saturating_duration_since(since) >= max)
            };
            let expired = outlived(tracked.adopted, settings.max_lifetime)
                || outlived(tracked.idle_since, settings.idle_timeout);
            let test = settings.test_before_acquire
                && outlived(tracked.idle_since, Some(ALIVE_BYPASS_WINDOW));
            (expired, test)
        } else {
            (false, false)
        };
        if expired {
            // Boxed, as every path that is not the common one (see `checkout`).
            Box::pin(async move {
                let _ = tracked.conn.close().await;
            })
            .await;
            return None;
        }
        if test {
            return Box::pin(async move {
                let mut tracked = tracked;
                if tracked.conn.ping().await.is_ok() {
                    return Some(tracked);
                }
                let _ = tracked.conn.detach().close_hard().await;
                None
            })
            .await;
        }
        Some(tracked)
    }

    /// Puts a verified connection back, waking one waiting checkout; closes it instead if
    /// the pool is closed.
    pub(crate) fn checkin(&self, mut tracked: Tracked<DB>) {
        if self.settings.idle_timeout.is_some() || self.settings.test_before_acquire {
            tracked.idle_since = Instant::now();
        }
        let mut idle = self.lock_idle();
        // Read under the lock `close` marks it under: a connection pushed here after
        // `close` took the list would be stranded, holding a sqlx permit, and the sqlx
        // pool's `close` would wait for it for ever.
        if self.closed.load(Ordering::Acquire) {
            drop(idle);
            // The connection closes as sqlx takes it back into a closed pool.
            drop(tracked);
            return;
        }
        idle.push(tracked);
        drop(idle);
        self.released.notify_one();
    }

    /// Whether a connection must be verified with the server before reuse even though
    /// nothing runs on it: its session timeout must be reset, the pool verifies every
    /// release, or sqlx reports a transaction or bytes to send.
    pub(crate) fn in_doubt(&self, tracked: &Tracked<DB>) -> bool {
        tracked.session_timeout
            || self.settings.verify_on_release
            || tracked.conn.is_in_transaction()
            || tracked.conn.should_flush()
    }
}
