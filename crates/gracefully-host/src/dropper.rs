//! Dropping aborted work where its destructor cannot hold up the host.
//!
//! When the abort phase aborts a service or a tracked task, tokio drops its future on a
//! runtime thread: usually the supervisor's own worker (the abort wakes the task there),
//! and on a current-thread runtime the only thread there is. A destructor that blocks —
//! joins a thread, flushes to a dead disk — would stall the supervisor and its timers with
//! it, and one that never returns would hang [`Host::run`](crate::Host::run) for good.
//!
//! So every service and tracked task runs inside a [`DropElsewhere`]. Dropped before its
//! future finished while the [`Dropper`] is open (from the abort phase on), it hands the
//! boxed future to the dropper's own thread instead of dropping it in place. The
//! supervisor waits for that thread a bounded time and names what it has not dropped yet
//! as *still dropping* in the report.
//!
//! A dedicated `std` thread, not `spawn_blocking`: a runtime waits for its blocking tasks
//! when it shuts down, so a destructor that never returns would hang the process's exit
//! instead of the host. One thread for all stragglers, in the order they were aborted: a
//! destructor that blocks delays those queued behind it, never the host.
//!
//! Invariants:
//!
//! 1. `queue` lists, oldest first, the stragglers sent to the thread and not yet dropped.
//!    A straggler is pushed in the same critical section in which it is sent, and the
//!    thread pops the front once it has dropped one, so the two orders agree.
//! 2. The thread holds only a `Weak` to the dropper, so it does not keep the dropper (and
//!    the channel's sender in it) alive: once the host's state is dropped, the channel
//!    closes and the thread ends after dropping what it was sent.

use std::any::Any;
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use crate::outcome::panic_message;

/// Which piece of work a dropped future belonged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Straggler {
    /// The service at this index of the host's services.
    Service(usize),
    /// The tracked task with this id in the tracker.
    Task(usize),
}

impl std::fmt::Display for Straggler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Straggler::Service(i) => write!(f, "service #{i}"),
            Straggler::Task(id) => write!(f, "tracked task #{id}"),
        }
    }
}

/// A future sent to the thread, type-erased: all the thread does is drop it.
type Unfinished = (Straggler, Box<dyn Any + Send>);

/// The host's dropper. Closed until the abort phase [opens](Self::open) it.
pub(crate) struct Dropper {
    state: Mutex<State>,
    /// Notified when `queue` becomes empty.
    emptied: Condvar,
}

struct State {
    /// The way to the thread; `None` until opened (and if the thread could not start).
    sender: Option<Sender<Unfinished>>,
    /// Sent and not yet dropped, oldest first (invariant 1).
    queue: VecDeque<Straggler>,
}

impl Dropper {
    pub(crate) fn new() -> Arc<Dropper> {
        Arc::new(Dropper {
            state: Mutex::new(State {
                sender: None,
                queue: VecDeque::new(),
            }),
            emptied: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover the data if it ever did.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts the thread: from now on, unfinished work that is dropped is dropped there.
    /// Idempotent. On error (the OS would not start a thread) it stays closed, and
    /// unfinished work is dropped in place as before.
    pub(crate) fn open(self: &Arc<Self>) -> io::Result<()> {
        let mut state = self.lock();
        if state.sender.is_some() {
            return Ok(());
        }
        let (sender, receiver) = mpsc::channel::<Unfinished>();
        let dropper = Arc::downgrade(self); // invariant 2
        // Destructors may need the runtime the work ran on: a pooled database connection
        // returns itself to its pool with `tokio::spawn` (sqlx's `PoolConnection`), which
        // panics outside a runtime. So the thread enters the host's runtime. Once that
        // runtime has shut down, what they spawn is dropped at once, without a panic.
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("gracefully-host-drop".into())
            .spawn(move || {
                let _in_runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
                for (straggler, future) in receiver {
                    let dropped = catch_unwind(AssertUnwindSafe(move || drop(future)));
                    if let Err(panic) = &dropped {
                        tracing::error!(
                            %straggler,
                            panic = panic_message(&**panic),
                            "aborted work panicked in its destructor"
                        );
                    }
                    if let Some(dropper) = Weak::upgrade(&dropper) {
                        dropper.dropped();
                    }
                }
            })?;
        state.sender = Some(sender);
        Ok(())
    }

    /// Drops `future` on the thread if the dropper is open, here otherwise.
    fn take(&self, straggler: Straggler, future: Box<dyn Any + Send>) {
        let mut state = self.lock();
        let future = match &state.sender {
            Some(sender) => match sender.send((straggler, future)) {
                Ok(()) => {
                    state.queue.push_back(straggler); // invariant 1: same critical section
                    return;
                }
                // The thread is gone (it cannot be while we hold the sender, but if it
                // were): drop it here.
                Err(mpsc::SendError((_, future))) => future,
            },
            None => future,
        };
        drop(state);
        drop(future);
    }

    /// The thread dropped the oldest straggler in the queue.
    fn dropped(&self) {
        let mut state = self.lock();
        state.queue.pop_front();
        if state.queue.is_empty() {
            self.emptied.notify_all();
        }
    }

    /// Whether something is queued or being dropped.
    pub(crate) fn is_busy(&self) -> bool {
        !self.lock().queue.is_empty()
    }

    /// Blocks the calling thread until the thread has dropped everything it was sent, or
    /// `limit` has passed; returns what it has not dropped yet, oldest (the one whose
    /// destructor runs now) first. Call it from a blocking context.
    pub(crate) fn wait_until_empty(&self, limit: Duration) -> Vec<Straggler> {
        let deadline = Instant::now() + limit;
        let mut state = self.lock();
        while !state.queue.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state = self
                .emptied
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        state.queue.iter().copied().collect()
    }
}

/// The boxed future of a service or tracked task, which — if it is dropped before it
/// finished — has its host's [`Dropper`] drop it (on the dropper's thread once open).
/// Holds the host (`H`, whatever owns the dropper) for that, and lends it to the code that
/// awaits it ([`host`](Self::host)), so a task needs one reference to its host, not two.
///
/// Finished, the future is dropped in place at once, as tokio would.
pub(crate) struct DropElsewhere<T: 'static, H: AsRef<Dropper>> {
    future: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    straggler: Straggler,
    host: Arc<H>,
}

impl<T: 'static, H: AsRef<Dropper>> DropElsewhere<T, H> {
    pub(crate) fn new(
        future: Pin<Box<dyn Future<Output = T> + Send>>,
        straggler: Straggler,
        host: Arc<H>,
    ) -> DropElsewhere<T, H> {
        DropElsewhere {
            future: Some(future),
            straggler,
            host,
        }
    }

    /// The host whose dropper this uses.
    pub(crate) fn host(&self) -> &Arc<H> {
        &self.host
    }
}

impl<T: 'static, H: AsRef<Dropper>> Future for DropElsewhere<T, H> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let Some(future) = self.future.as_mut() else {
            panic!("DropElsewhere polled after it completed");
        };
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<T: 'static, H: AsRef<Dropper>> Drop for DropElsewhere<T, H> {
    fn drop(&mut self) {
        if let Some(future) = self.future.take() {
            let future: Box<dyn Any + Send> = Box::new(future);
            AsRef::<Dropper>::as_ref(&*self.host).take(self.straggler, future);
        }
    }
}
