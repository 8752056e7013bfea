//! [`Lease`]: one operation's hold on a connection, and what happens to the connection when
//! the operation ends ([`Ended`]), is cancelled, or is dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use gracefully::Cancelled;
use sqlx::Connection;

use crate::backend::{Backend, Running};
use crate::error::Error;
use crate::pool_core::PoolCore;
use crate::recover::{Recovery, recover};
use crate::tracked::Tracked;

/// One operation's hold on a connection. Dropped while still holding it (the operation's
/// future was dropped), it hands the connection to a tracked cleanup task that stops
/// whatever it runs, rolls back and verifies it.
pub(crate) struct Lease<DB: Backend> {
    core: Arc<PoolCore<DB>>,
    tracked: Option<Tracked<DB>>,
    /// `Backend::progress` when the operation started.
    since: u64,
    /// What a [`crate::ops`] transaction guard recorded when the body's transaction was
    /// dropped, before sqlx's `Transaction` queued its `ROLLBACK` (which shows as bytes to
    /// send, and which a look at the connection afterwards would send).
    pub(crate) hint: Option<Arc<DropHint>>,
}

/// How an operation ended, for [`Lease::release`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    /// The body returned (`doubt`: with an error): a statement it gave up on may still run.
    Returned { doubt: bool },
    /// The last statement sent completed (`COMMIT`, or a failed `BEGIN`/`COMMIT`/`SET`):
    /// nothing sent before it can still run.
    Completed { doubt: bool },
}

/// See [`Lease::hint`]. Written once, by the transaction guard's `drop`.
#[derive(Debug, Default)]
pub(crate) struct DropHint {
    /// Bytes of an abandoned statement were never (fully) sent.
    unsent: AtomicBool,
    /// `Running` as recorded (0: nothing recorded).
    running: AtomicU8,
}

impl DropHint {
    /// Records what the transaction guard saw; `Relaxed`: read after the guard's future
    /// completed or was dropped, which orders it.
    pub(crate) fn record(&self, unsent: bool, running: Running) {
        self.unsent.store(unsent, Ordering::Relaxed);
        let running = match running {
            Running::No => 1,
            Running::Maybe => 2,
            Running::Unknown => 3,
        };
        self.running.store(running, Ordering::Relaxed);
    }

    fn unsent(&self) -> bool {
        self.unsent.load(Ordering::Relaxed)
    }

    fn running(&self) -> Option<Running> {
        match self.running.load(Ordering::Relaxed) {
            1 => Some(Running::No),
            2 => Some(Running::Maybe),
            3 => Some(Running::Unknown),
            _ => None,
        }
    }
}

impl<DB: Backend> Lease<DB> {
    /// A hold on `tracked` for one operation.
    pub(crate) fn new(core: Arc<PoolCore<DB>>, tracked: Tracked<DB>) -> Self {
        Lease {
            since: DB::progress(&tracked.handle),
            core,
            tracked: Some(tracked),
            hint: None,
        }
    }

    fn tracked(&mut self) -> &mut Tracked<DB> {
        // Invariant: `tracked` is `Some` until a consuming method takes it.
        self.tracked.as_mut().expect("lease already released")
    }

    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.tracked().conn
    }

    /// The connection's stop handle.
    pub(crate) fn handle(&mut self) -> &DB::Handle {
        &self.tracked().handle
    }

    /// `Backend::progress` when the operation started.
    pub(crate) fn since(&self) -> u64 {
        self.since
    }

    /// Marks the session's `statement_timeout` as set by us.
    pub(crate) fn set_session_timeout(&mut self) {
        self.tracked().session_timeout = true;
    }

    fn unsent(&self, tracked: &Tracked<DB>) -> bool {
        match &self.hint {
            Some(hint) => hint.unsent(),
            None => tracked.conn.should_flush(),
        }
    }

    /// The operation was cancelled: stop the statement, roll back, verify — in a tracked
    /// task that finishes even if this future is dropped — then return `Cancelled`.
    pub(crate) async fn abandon(mut self, cancelled: Cancelled) -> Error {
        if let Some(tracked) = self.tracked.take() {
            let unsent = self.unsent(&tracked);
            let core = Arc::clone(&self.core);
            self.core
                .cleanups
                .run(recover(core, tracked, Recovery::Stop { unsent }))
                .await;
        }
        Error::Cancelled(cancelled)
    }

    /// The operation ended. Back to the idle list at once if nothing runs and nothing is
    /// in doubt; otherwise stopped and drained first if a statement may still run, and
    /// verified if in doubt (`doubt`, a raised interrupt, a session timeout to reset, sqlx
    /// reporting a transaction or queued bytes, or `verify_on_release`).
    pub(crate) async fn release(mut self, ended: Ended) {
        let Some(mut tracked) = self.tracked.take() else {
            return;
        };
        let hint = self.hint.as_deref();
        let (doubt, running) = match ended {
            Ended::Completed { doubt } => (doubt, Running::No),
            Ended::Returned { doubt } => {
                let recorded = hint.and_then(DropHint::running);
                let running = recorded.unwrap_or_else(|| {
                    DB::still_running(&mut tracked.conn, &tracked.handle, self.since)
                });
                (doubt, running)
            }
        };
        let unsent = hint.is_some_and(DropHint::unsent);
        let raised = DB::raised(&tracked.handle);
        let in_doubt = doubt || self.core.in_doubt(&tracked);
        let how = if unsent {
            // The rest of an abandoned statement is queued: never send it.
            Recovery::Stop { unsent: true }
        } else if raised || running == Running::Maybe || (running == Running::Unknown && in_doubt) {
            // A statement may still run (or a cancel raced with the end, and SQLite's
            // interrupt must be lowered only after the worker drained): stop it first, so
            // verification does not wait behind it. With nothing else in doubt, a drained
            // connection goes back without a probe, as a clean one does.
            if raised || in_doubt {
                Recovery::Stop { unsent: false }
            } else {
                Recovery::Drain
            }
        } else if in_doubt {
            Recovery::Verify
        } else {
            self.core.checkin(tracked);
            return;
        };
        let core = Arc::clone(&self.core);
        // Boxed: kept out of every operation's future (see `PoolCore::checkout`).
        Box::pin(self.core.cleanups.run(recover(core, tracked, how))).await;
    }
}

impl<DB: Backend> Drop for Lease<DB> {
    fn drop(&mut self) {
        let Some(tracked) = self.tracked.take() else {
            return;
        };
        // The operation's future was dropped mid-flight (its own futures, which borrowed the
        // connection, were dropped just before this).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropped outside any runtime: nothing can run the cleanup. Detach the connection
            // (a pooled one would need a runtime to go back) and drop it: the socket closes,
            // and the server ends the session and its transaction.
            drop(tracked.conn.detach());
            return;
        };
        let unsent = self.unsent(&tracked);
        let core = Arc::clone(&self.core);
        let cleanup = recover(Arc::clone(&core), tracked, Recovery::Stop { unsent });
        core.cleanups.spawn_on(&runtime, cleanup);
    }
}
