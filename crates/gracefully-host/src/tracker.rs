//! Tracked tasks: [`Lifetime::spawn`](crate::Lifetime::spawn) and
//! [`Lifetime::shield`](crate::Lifetime::shield), and the [`TaskTracker`] that records how
//! each ended.
//!
//! A task reaches its host through the [`TaskHost`] trait, which the host's state
//! implements: this module needs only the tracker, the phase, and the dropper from it.
//!
//! Invariants:
//!
//! 1. A task is in `slots` from the moment it is spawned until it is *recorded*, exactly
//!    once: either by its own wrapper when it ends (also after [`TaskTracker::abort_all`]
//!    asked tokio to abort it: a task whose last poll completed was not aborted), or by
//!    [`TaskTracker::close`], which records whatever is still there as aborted. Whoever
//!    takes it out of `slots` (under the lock) records it; the other finds it gone and
//!    does nothing.
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
use gracefully::operation::{Operation, OperationKind, OperationScope};
use gracefully::{Cancelled, Reason, find_cancelled};
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::dropper::{DropElsewhere, Dropper, Straggler};
use crate::operations::{Operations, operation_outcome};
use crate::outcome::{BoxError, Outcome, outcome_of, panicked};
use crate::phase::Phase;
use crate::report::{TaskCounts, TaskRecord};

/// What a tracked task needs from the host that runs it. The host's state implements it;
/// a trait, so that this module does not depend on that state (which holds the tracker).
pub(crate) trait TaskHost: AsRef<Dropper> + Send + Sync + 'static {
    /// The host's tracked tasks.
    fn tracker(&self) -> &TaskTracker;

    /// The host's operations registry, if one was installed.
    fn operations(&self) -> Option<&Operations>;

    /// The runtime the host runs on, once it runs.
    fn runtime(&self) -> Option<&tokio::runtime::Handle>;

    /// The phase in which work ending now ended, and whether a stop had been requested
    /// (work ending before that is only counted).
    fn end_of_task(&self) -> (Phase, bool);
}

/// The tracked tasks of one host.
pub(crate) struct TaskTracker {
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
    ended: Vec<TaskRecord>,
    /// Tasks that ended before the stop request: only counted, so a long-lived host does
    /// not accumulate a record per task.
    before_stop: TaskCounts,
    /// Set when the host aborts or stops: later tasks run untracked.
    closed: bool,
    /// When [`TaskTracker::abort_all`] ran.
    aborted_at: Option<Instant>,
}

struct Running {
    name: Cow<'static, str>,
    /// To abort it; taken by [`TaskTracker::abort_all`], to wait until the runtime has
    /// dropped it.
    handle: Option<JoinHandle<()>>,
}

impl TaskTracker {
    pub(crate) fn new() -> TaskTracker {
        TaskTracker {
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

    /// Reserves a slot and calls `spawn` with its id and `task`, under the lock (invariant
    /// 2), to start it. Once closed, hands both back instead: the caller runs the task
    /// untracked.
    fn insert<F>(
        &self,
        name: Cow<'static, str>,
        task: F,
        spawn: impl FnOnce(usize, F) -> JoinHandle<()>,
    ) -> Result<(), (Cow<'static, str>, F)> {
        let mut inner = self.lock();
        if inner.closed {
            return Err((name, task));
        }
        let id = match inner.free.pop() {
            Some(id) => id,
            None => {
                inner.slots.push(None);
                inner.slots.len() - 1
            }
        };
        let handle = spawn(id, task);
        inner.slots[id] = Some(Running {
            name,
            handle: Some(handle),
        });
        inner.running += 1;
        Ok(())
    }

    /// Records the end of task `id` (invariant 1), which ended in `phase`, after the stop
    /// request or before it.
    fn finish(&self, id: usize, outcome: Outcome, phase: Phase, after_stop: bool) {
        let at = Instant::now();
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
            inner.ended.push(TaskRecord {
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
    ) -> (Vec<TaskRecord>, TaskCounts) {
        let mut inner = self.lock();
        inner.closed = true;
        let Some(at) = inner.aborted_at else {
            return (std::mem::take(&mut inner.ended), inner.before_stop);
        };
        inner.running = 0;
        let slots = std::mem::take(&mut inner.slots);
        for (id, task) in slots.into_iter().enumerate() {
            if let Some(task) = task {
                inner.ended.push(TaskRecord {
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

/// Spawns `task` on `host`, catching its panics, and tracks it under `name`.
pub(crate) fn spawn<H, F>(host: &Arc<H>, name: Cow<'static, str>, task: F)
where
    H: TaskHost,
    F: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    track(host, name, async move {
        match AssertUnwindSafe(task).catch_unwind().await {
            Ok(result) => {
                let reason = result
                    .as_ref()
                    .err()
                    .and_then(|error| find_cancelled(&**error))
                    .map(|cancelled| cancelled.reason().clone());
                (outcome_of(result), reason)
            }
            Err(panic) => (Outcome::Failed(panicked(&*panic)), None),
        }
    });
}

/// Spawns `cleanup` on `host` as a tracked task whose output goes to the returned
/// [`Shielded`].
pub(crate) fn shield<H, F>(host: &Arc<H>, name: String, cleanup: F) -> Shielded<F::Output>
where
    H: TaskHost,
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    track(host, Cow::Owned(name), async move {
        let result = AssertUnwindSafe(cleanup).catch_unwind().await;
        let outcome = match &result {
            Ok(_) => Outcome::Completed,
            Err(panic) => Outcome::Failed(panicked(&**panic)),
        };
        // The caller may have stopped waiting: that is the point of shielding.
        let _ = tx.send(result);
        (outcome, None)
    });
    Shielded { rx }
}

/// Spawns `task` (which never panics: callers catch) and records it when it ends; the
/// task's output is its outcome and, if it was cancelled, the reason.
///
/// With an operations registry, the task is an operation under the code that spawned it (a
/// request, a service), or a root operation of the host's registry.
fn track<H, F>(host: &Arc<H>, name: Cow<'static, str>, task: F)
where
    H: TaskHost,
    F: Future<Output = (Outcome, Option<Reason>)> + Send + 'static,
{
    let op = OperationScope::current()
        .or_else(|| host.operations().map(Operations::scope))
        .map_or_else(Operation::none, |scope| {
            scope.begin(OperationKind::Task, &name, None)
        });
    let task = async move {
        let (outcome, reason) = op.scoped(task).await;
        op.end(operation_outcome(&outcome, reason));
        outcome
    };
    let tracked = host.tracker().insert(name, task, |id, task| {
        // Boxed so that, if the abort phase drops it unfinished, its destructor runs on
        // the dropper's thread (see `dropper.rs`). The wrapper's reference to the host
        // is the one `finish` uses.
        let mut task = DropElsewhere::new(Box::pin(task), Straggler::Task(id), Arc::clone(host));
        let tracked = async move {
            let outcome = (&mut task).await;
            let host = task.host();
            let (phase, after_stop) = host.end_of_task();
            host.tracker().finish(id, outcome, phase, after_stop);
        };
        // On the host's own runtime, not the caller's: code on another runtime (a library
        // with a runtime of its own, `block_on` in a thread) may spawn a tracked task and
        // then drop that runtime as soon as it has its answer. Dropped with it, the task
        // would never record its end, and the host would wait its whole budget for it at
        // shutdown and report it as an aborted straggler. The host's runtime lives as long
        // as the host drains and aborts its tasks.
        match host.runtime() {
            Some(runtime) => runtime.spawn(tracked),
            None => tokio::spawn(tracked),
        }
    });
    if let Err((name, task)) = tracked {
        tracing::warn!(task = %name, "task spawned after the host stopped; it runs untracked");
        tokio::spawn(task);
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
