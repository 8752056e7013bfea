//! [`Tracked`]: a connection the pool has adopted — the sqlx connection, what it takes to
//! stop its statements, and the pool's bookkeeping for it.

use std::time::Instant;

use sqlx::pool::PoolConnection;

use crate::backend::sealed::Sealed;

/// An adopted connection: the sqlx connection and what it takes to stop it.
pub(crate) struct Tracked<DB: Sealed> {
    pub(crate) conn: PoolConnection<DB>,
    pub(crate) handle: DB::Handle,
    /// When the pool adopted it (about when it was opened): for `max_lifetime`.
    pub(crate) adopted: Instant,
    /// When it last went idle: for `idle_timeout` and `test_before_acquire` (kept only when
    /// one of them is set).
    pub(crate) idle_since: Instant,
    /// An operation set the session's `statement_timeout`: reset it before reuse.
    pub(crate) session_timeout: bool,
}

impl<DB: Sealed> Tracked<DB> {
    /// A connection just adopted, with `handle`.
    pub(crate) fn adopted(conn: PoolConnection<DB>, handle: DB::Handle) -> Self {
        let now = Instant::now();
        Tracked {
            conn,
            handle,
            adopted: now,
            idle_since: now,
            session_timeout: false,
        }
    }
}
