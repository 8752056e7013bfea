//! Recovery of a connection whose operation was cancelled, dropped or failed: stop what it
//! runs, roll back, verify it idle and outside any transaction — or close it. Runs as a
//! tracked task ([`Cleanups`]) so it completes even when nobody awaits it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use sqlx::Connection;
use tokio::sync::Notify;

use crate::backend::Backend;
use crate::backend::Stopped;
use crate::ops::BoxFuture;
use crate::pool::{Shared, Tracked};

/// What a recovery starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recovery {
    /// A statement may still be running: stop it first, then verify. `unsent`: bytes of it
    /// were never (fully) sent.
    Stop { unsent: bool },
    /// The body returned, but a statement it gave up on may still run: stop it; then
    /// verify only if the connection is in doubt otherwise (`Shared::in_doubt`).
    Drain,
    /// Nothing runs that we know of: verify (and roll back) only.
    Verify,
}

/// What the probe learnt about the connection.
enum Probe {
    /// Idle, outside any transaction: the server said so in its `ReadyForQuery`.
    Idle,
    /// Inside a transaction: a `ROLLBACK` has been queued; probe again.
    InTransaction,
    /// Inside a failed transaction (PostgreSQL `25P02`): roll back, probe again.
    Failed,
    /// Anything else: the connection cannot be trusted.
    Broken,
}

/// Stops, rolls back and verifies `tracked`, then returns it to the pool's idle list — or
/// closes it. Bounded by the pool's cancel grace from the start.
///
/// Boxed: the future is proven `Send` here, once, for every backend. (Left unboxed, rustc
/// fails to prove it `Send` through callers' async fns — "implementation of `Send` is not
/// general enough", rust-lang/rust#110338.)
pub(crate) fn recover<DB: Backend>(
    shared: Arc<Shared<DB>>,
    tracked: Tracked<DB>,
    how: Recovery,
) -> BoxFuture<'static, ()> {
    Box::pin(recover_inner(shared, tracked, how))
}

async fn recover_inner<DB: Backend>(
    shared: Arc<Shared<DB>>,
    mut tracked: Tracked<DB>,
    how: Recovery,
) {
    let until = Instant::now() + shared.settings.cancel_grace;
    let stop = match how {
        Recovery::Stop { unsent } => Some(unsent),
        Recovery::Drain => Some(false),
        Recovery::Verify => None,
    };
    if let Some(unsent) = stop {
        match DB::stop(&shared.canceller, &mut tracked, unsent, until).await {
            Stopped::Drained => {}
            Stopped::Close => {
                DB::abort(&shared.canceller, &tracked.handle, until).await;
                close_hard(tracked).await;
                return;
            }
        }
    }
    if matches!(how, Recovery::Drain) && !shared.in_doubt(&tracked) {
        shared.checkin(tracked);
        return;
    }
    match verify(&mut tracked, until).await {
        Verdict::Clean => shared.checkin(tracked),
        Verdict::Close => close_hard(tracked).await,
        Verdict::Unresponsive => {
            DB::abort(&shared.canceller, &tracked.handle, until).await;
            close_hard(tracked).await;
        }
    }
}

enum Verdict {
    Clean,
    Close,
    Unresponsive,
}

/// Reads the connection's transaction state from the server and restores it to idle.
///
/// The probe is sqlx's `begin_with(statement)`, whose documented contract is to fail with
/// `BeginFailed` when, after `statement`, the connection is *not* in a transaction. sqlx
/// decides that from the server itself: PostgreSQL's `ReadyForQuery` status byte (`I`, `T`
/// or `E`), SQLite's `sqlite3_get_autocommit`. So `BeginFailed` to a `SELECT 1` is the
/// server's word that the connection is idle and outside any transaction — verified, not
/// assumed, in one round trip. A probe that "succeeds" found a transaction: dropping the
/// `Transaction` it returns queues a `ROLLBACK`, which the next probe sends ahead of itself.
async fn verify<DB: Backend>(tracked: &mut Tracked<DB>, until: Instant) -> Verdict {
    for _ in 0..4 {
        let statement = if tracked.session_timeout {
            DB::PROBE_AND_RESET_TIMEOUT
        } else {
            DB::PROBE
        };
        let conn = &mut tracked.conn;
        let probe = tokio::time::timeout_at(until.into(), async move {
            match conn.begin_with(statement).await {
                Err(sqlx::Error::BeginFailed) => Probe::Idle,
                Ok(transaction) => {
                    drop(transaction); // queues the ROLLBACK
                    Probe::InTransaction
                }
                Err(error) if DB::is_failed_transaction(&error) => Probe::Failed,
                Err(_) => Probe::Broken,
            }
        })
        .await;
        match probe {
            Err(_) => return Verdict::Unresponsive,
            Ok(Probe::Idle) => {
                tracked.session_timeout = false;
                return Verdict::Clean;
            }
            Ok(Probe::InTransaction) => continue,
            Ok(Probe::Failed) => {
                match tokio::time::timeout_at(until.into(), DB::raw_rollback(&mut tracked.conn))
                    .await
                {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return Verdict::Close,
                    Err(_) => return Verdict::Unresponsive,
                }
            }
            Ok(Probe::Broken) => return Verdict::Close,
        }
    }
    Verdict::Close
}

/// Closes without the goodbye: the protocol may be out of sync.
async fn close_hard<DB: Backend>(tracked: Tracked<DB>) {
    let _ = tracked.conn.detach().close_hard().await;
}

/// Counts the cleanup tasks still running, so a host can wait for them at shutdown.
#[derive(Debug, Default)]
pub(crate) struct Cleanups {
    counter: Arc<Counter>,
}

#[derive(Debug, Default)]
struct Counter {
    pending: AtomicUsize,
    /// Notified (all waiters) when `pending` drops to zero.
    idle: Notify,
}

/// Decrements the count when the cleanup ends — also if its task is dropped unfinished
/// (the runtime shutting down).
struct PendingGuard(Arc<Counter>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if self.0.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Cleanups {
    pub(crate) fn pending(&self) -> usize {
        self.counter.pending.load(Ordering::Acquire)
    }

    pub(crate) async fn wait(&self) {
        loop {
            let idle = self.counter.idle.notified();
            tokio::pin!(idle);
            // Registered before the check: a count reaching zero in between still wakes us.
            idle.as_mut().enable();
            if self.pending() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// Runs `cleanup` in a tracked task and waits for it; if this future is dropped, the
    /// task goes on. Without a tokio runtime to spawn on, runs it inline.
    pub(crate) async fn run(&self, cleanup: impl Future<Output = ()> + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            cleanup.await;
            return;
        };
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        self.spawn_with(&runtime, cleanup, Some(done));
        // An error only means the task was dropped unfinished (runtime shutdown).
        let _ = finished.await;
    }

    /// Runs `cleanup` in a tracked task on `runtime`, nobody waiting for it.
    pub(crate) fn spawn_on(
        &self,
        runtime: &tokio::runtime::Handle,
        cleanup: impl Future<Output = ()> + Send + 'static,
    ) {
        self.spawn_with(runtime, cleanup, None);
    }

    /// Spawns `cleanup`, counted as pending until it ends; then signals `done`, so whoever
    /// waits on `done` already sees it no longer counted.
    fn spawn_with(
        &self,
        runtime: &tokio::runtime::Handle,
        cleanup: impl Future<Output = ()> + Send + 'static,
        done: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        self.counter.pending.fetch_add(1, Ordering::AcqRel);
        let guard = PendingGuard(Arc::clone(&self.counter));
        runtime.spawn(async move {
            cleanup.await;
            drop(guard);
            if let Some(done) = done {
                let _ = done.send(());
            }
        });
    }
}
