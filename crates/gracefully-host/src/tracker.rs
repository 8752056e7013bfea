//! Tracked tasks: [`Lifetime::spawn`](crate::Lifetime::spawn) and
//! [`Lifetime::shield`](crate::Lifetime::shield).
//!
//! Invariants:
//!
//! 1. A task is in `slots` from the moment it is spawned until it is *recorded*, exactly
//!    once: either by its own wrapper when it ends (also after [`Tracker::abort_all`]
//!    asked tokio to abort it: a task whose last poll completed was not aborted), or by
//!    [`Tracker::close`], which records whatever is still there as aborted. Whoever takes
//!    it out of `slots` (under the lock) records it; the other finds it gone and does
//!    nothing.
//! 2. The spawner holds the lock while it spawns and inserts, so a task that ends at once
//!    (on another worker) cannot look for its entry before it is there.
//! 3. `idle` is notified (`notify_waiters`) every time `running` drops to 0; waiters
//!    enable their `Notified` before checking, so no wake-up is lost.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures_util::FutureExt;
use gracefully::{Cancelled, Reason};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dropper::{DropElsewhere, Straggler};
use crate::lifetime::Shared;
use crate::outcome::{BoxError, Outcome, outcome_of, panicked};
use crate::report::{Phase, TaskCounts};

/// The tracked tasks of one host.
pub(crate) struct Tracker {
    inner: Mutex<Inner>,
    /// Notified whenever `running` drops to 0 (invariant 3).
    idle: Notify,
}

struct Inner {
    /// Tasks not yet recorded (invariant 1), by id: a slab, so recording is one index.
    /// A slot is freed only by its own task's record, and never reused once the host
    /// aborted (`closed`), so an id always names the one task that holds it.
    slots: Vec<Option<Running>>,
    /// Free slots.
    free: Vec<usize>,
    /// Occupied slots.
    running: usize,
    /// Tasks that ended after the stop request, in the order they ended.
    ended: Vec<TaskEnd>,
    /// Tasks that ended before the stop request: only counted, so a long-lived host does
    /// not accumulate a record per task.
    before_stop: TaskCounts,
    /// Set when the host aborts or stops: later tasks run untracked.
    closed: bool,
    /// When [`Tracker::abort_all`] ran.
    aborted_at: Option<Instant>,
}

struct Running {
    name: Cow<'static, str>,
    /// To abort it; taken by [`Tracker::abort_all`], to wait until the runtime has
    /// dropped it.
    handle: Option<JoinHandle<()>>,
}

/// A tracked task that ended after the stop request.
pub(crate) struct TaskEnd {
    pub(crate) name: Cow<'static, str>,
    pub(crate) phase: Phase,
    pub(crate) at: Instant,
    pub(crate) outcome: Outcome,
    /// Aborted, and not yet dropped when the report was made.
    pub(crate) still_dropping: bool,
}

impl Tracker {
    pub(crate) fn new() -> Tracker {
        Tracker {
            inner: Mutex::new(Inner {
                slots: Vec::new(),
                free: Vec::new(),
                running: 0,
                ended: Vec::new(),
                before_stop: TaskCounts::default(),
                closed: false,
                aborted_at: None,
            }),
            idle: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // No code panics while holding the lock; recover the data if it ever did.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `task`, catching its panics, and tracks it under `name`.
    pub(crate) fn spawn<F>(shared: &Arc<Shared>, name: Cow<'static, str>, task: F)
    where
        F: Future<Output = Result<(), BoxError>> + Send + 'static,
    {
        Tracker::track(shared, name, async move {
            match AssertUnwindSafe(task).catch_unwind().await {
                Ok(result) => outcome_of(result),
                Err(panic) => Outcome::Failed(panicked(&*panic)),
            }
        });
    }

    /// Spawns `cleanup` as a tracked task whose output goes to the returned [`Shielded`].
    pub(crate) fn shield<F>(shared: &Arc<Shared>, name: String, cleanup: F) -> Shielded<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        Tracker::track(shared, Cow::Owned(name), async move {
            let result = AssertUnwindSafe(cleanup).catch_unwind().await;
            let outcome = match &result {
                Ok(_) => Outcome::Completed,
                Err(panic) => Outcome::Failed(panicked(&**panic)),
            };
            // The caller may have stopped waiting: that is the point of shielding.
            let _ = tx.send(result);
            outcome
        });
        Shielded { rx }
    }

    /// Spawns `task` (which never panics: callers catch) and records it when it ends.
    fn track<F>(shared: &Arc<Shared>, name: Cow<'static, str>, task: F)
    where
        F: Future<Output = Outcome> + Send + 'static,
    {
        let tracker = &shared.tracker;
        let mut inner = tracker.lock();
        if inner.closed {
            drop(inner);
            tracing::warn!(task = %name, "task spawned after the host stopped; it runs untracked");
            tokio::spawn(task);
            return;
        }
        let id = match inner.free.pop() {
            Some(id) => id,
            None => {
                inner.slots.push(None);
                inner.slots.len() - 1
            }
        };
        let owner = Arc::clone(shared);
        // Boxed so that, if the abort phase drops it unfinished, its destructor runs on
        // the dropper's thread (see `dropper.rs`).
        let task = DropElsewhere::new(
            Box::pin(task),
            Straggler::Task(id),
            Arc::clone(&shared.dropper),
        );
        // Invariant 2: we still hold the lock, so `finish` cannot run before the insert.
        let handle = tokio::spawn(async move {
            let outcome = task.await;
            owner.tracker.finish(&owner, id, outcome);
        });
        inner.slots[id] = Some(Running {
            name,
            handle: Some(handle),
        });
        inner.running += 1;
    }

    /// Records the end of task `id` (invariant 1).
    fn finish(&self, shared: &Shared, id: usize, outcome: Outcome) {
        let at = Instant::now();
        let after_stop = shared.stop_requested.is_cancelled();
        let phase = shared.end_phase();
        let mut inner = self.lock();
        let Some(running) = inner.slots.get_mut(id).and_then(Option::take) else {
            return; // already recorded as aborted
        };
        inner.free.push(id);
        inner.running -= 1;
        if let Outcome::Failed(error) = &outcome {
            tracing::error!(task = %running.name, %error, "tracked task failed");
        }
        if after_stop {
            inner.ended.push(TaskEnd {
                name: running.name,
                phase,
                at,
                outcome,
                still_dropping: false,
            });
        } else {
            inner.before_stop.add(&outcome);
        }
        let idle = inner.running == 0;
        drop(inner);
        if idle {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn running_count(&self) -> usize {
        self.lock().running
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.lock().running == 0
    }

    /// Resolves once no tracked task is running (at once if none is).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it holds no state besides its `Notified`.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Invariant 3: registered before the check, so a notification after it is seen.
            notified.as_mut().enable();
            if self.is_idle() {
                return;
            }
            notified.await;
        }
    }

    /// Asks tokio to abort every running task, and returns their ids and handles, to wait
    /// until the runtime has dropped them. Records nothing: a task whose last poll
    /// completes records its own end; [`close`](Self::close) records the others as
    /// aborted (invariant 1). Tasks spawned afterwards run untracked.
    pub(crate) fn abort_all(&self) -> Vec<(usize, JoinHandle<()>)> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.aborted_at = Some(Instant::now());
        let mut handles = Vec::with_capacity(inner.running);
        for (id, slot) in inner.slots.iter_mut().enumerate() {
            if let Some(handle) = slot.as_mut().and_then(|task| task.handle.take()) {
                handle.abort();
                handles.push((id, handle));
            }
        }
        handles
    }

    /// Stops tracking (later tasks run untracked) and hands over the records. After
    /// [`abort_all`](Self::abort_all), first records every task still in `slots` as aborted
    /// in `phase` (still being dropped if `still_dropping` says so).
    pub(crate) fn close(
        &self,
        phase: Phase,
        still_dropping: impl Fn(usize) -> bool,
    ) -> (Vec<TaskEnd>, TaskCounts) {
        let mut inner = self.lock();
        inner.closed = true;
        let Some(at) = inner.aborted_at else {
            return (std::mem::take(&mut inner.ended), inner.before_stop);
        };
        inner.running = 0;
        let slots = std::mem::take(&mut inner.slots);
        for (id, task) in slots.into_iter().enumerate() {
            if let Some(task) = task {
                inner.ended.push(TaskEnd {
                    name: task.name,
                    phase,
                    at,
                    outcome: Outcome::Aborted,
                    still_dropping: still_dropping(id),
                });
            }
        }
        (std::mem::take(&mut inner.ended), inner.before_stop)
    }
}

/// The result of shielded work, from [`Lifetime::shield`](crate::Lifetime::shield):
/// `Ok(output)` once it completes, or `Err(Cancelled)` (with
/// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown)) if the host's abort phase
/// dropped it first. If the work panicked, awaiting this resumes the panic.
///
/// # Cancel safety
///
/// Dropping this future does **not** cancel the work; it runs on as a tracked task. That is
/// its purpose. Awaiting it again is not possible once dropped; the output is then
/// discarded.
#[must_use = "the work runs anyway; await this to get its output"]
pub struct Shielded<T> {
    rx: oneshot::Receiver<std::thread::Result<T>>,
}

impl<T> Future for Shielded<T> {
    type Output = Result<T, Cancelled>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(output))) => Poll::Ready(Ok(output)),
            Poll::Ready(Ok(Err(panic))) => std::panic::resume_unwind(panic),
            Poll::Ready(Err(_)) => Poll::Ready(Err(Cancelled::new(
                Reason::shutdown().with_message("shielded work was aborted at the end of shutdown"),
            ))),
        }
    }
}

impl<T> fmt::Debug for Shielded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shielded").finish_non_exhaustive()
    }
}
