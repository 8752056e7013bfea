//! Recovery of a connection whose operation was cancelled, dropped or failed: stop what it
//! runs, roll back, verify it idle and outside any transaction — or close it. Runs as a
//! tracked task (`crate::cleanups::Cleanups`) so it completes even when nobody awaits it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use sqlx::Connection;

use crate::backend::{Backend, Stopped};
use crate::pool_core::PoolCore;
use crate::tracked::Tracked;

/// What a recovery starts with.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Recovery {
    /// A statement may still be running: stop it first, then verify. `unsent`: bytes of it
    /// were never (fully) sent.
    Stop { unsent: bool },
    /// The body returned, but a statement it gave up on may still run: stop it; then
    /// verify only if the connection is in doubt otherwise (`PoolCore::in_doubt`).
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
/// closes it. Bounded by the pool's cancellation timeout from the start.
///
/// Boxed: the future is proven `Send` here, once, for every backend. (Left unboxed, rustc
/// fails to prove it `Send` through callers' async fns — "implementation of `Send` is not
/// general enough", rust-lang/rust#110338.)
pub(crate) fn recover<DB: Backend>(
    core: Arc<PoolCore<DB>>,
    tracked: Tracked<DB>,
    how: Recovery,
) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(recover_inner(core, tracked, how))
}

async fn recover_inner<DB: Backend>(
    core: Arc<PoolCore<DB>>,
    mut tracked: Tracked<DB>,
    how: Recovery,
) {
    let until = Instant::now() + core.settings.cancellation_timeout;
    let stop = match how {
        Recovery::Stop { unsent } => Some(unsent),
        Recovery::Drain => Some(false),
        Recovery::Verify => None,
    };
    if let Some(unsent) = stop {
        match DB::stop(
            &core.canceller,
            &mut tracked.conn,
            &tracked.handle,
            unsent,
            until,
        )
        .await
        {
            Stopped::Drained => {}
            Stopped::Close => {
                DB::abort(&core.canceller, &tracked.handle, until).await;
                close_hard(tracked).await;
                return;
            }
        }
    }
    if matches!(how, Recovery::Drain) && !core.in_doubt(&tracked) {
        core.checkin(tracked);
        return;
    }
    match verify(&mut tracked, until).await {
        Verdict::Clean => core.checkin(tracked),
        Verdict::Close => close_hard(tracked).await,
        Verdict::Unresponsive => {
            DB::abort(&core.canceller, &tracked.handle, until).await;
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
