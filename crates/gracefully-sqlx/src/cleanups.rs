//! [`Cleanups`]: the count of cleanup tasks still running (statements being stopped,
//! transactions rolled back, connections verified or closed), so a host can wait for them at
//! shutdown; and the tracked spawning that keeps it.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

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
