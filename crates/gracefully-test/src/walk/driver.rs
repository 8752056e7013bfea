//! The driver: polls the code under test, counts where it suspends, and cancels it at the
//! chosen suspension.
//!
//! # Invariants
//!
//! 1. **A suspension is counted only if it was real.** The code is polled again only after
//!    it woke the waker it was given since its last `Pending`. Whoever else polls the
//!    driver in between — a `join!` sibling's wake-up, the walk's own time limit — gets
//!    `Pending` without the code being touched. So the k-th counted `Pending` is the k-th
//!    await the code truly waited at, and on real I/O a point is not used up by a poll
//!    that could not have made progress.
//! 2. **One cancel per run, right at the point.** The cancel happens inside the poll that
//!    returned the `point`-th `Pending`, before anything else runs: the code is suspended
//!    at that await with whatever it awaits still in flight (a statement on the server, a
//!    chunk on a blocking thread). `Fire`: the token fires there, and the code is then
//!    driven to its end. `Drop`: the code's future is dropped there.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use gracefully::{CancellationSource, Reason};

/// What to do at the cancel point.
pub(crate) enum Action {
    /// Fire this source (whose token the code holds) with this reason, and keep polling.
    Fire(CancellationSource, Reason),
    /// Drop the code's future.
    Drop,
}

/// What a driven run came to.
pub(crate) struct Driven<T> {
    /// The code's output; `None` if it was dropped at the point.
    pub(crate) output: Option<T>,
    /// Whether the point was reached (and the action taken).
    pub(crate) reached: bool,
    /// How many times the code suspended (invariant 1), over the whole run.
    pub(crate) suspensions: usize,
}

/// The waker handed to the code: records that it was woken, and passes the wake-up on to
/// whoever polls the driver.
struct Signal {
    /// Set by a wake-up, cleared by the poll it allows (invariant 1). Starts `true`: the
    /// first poll needs no wake-up.
    woken: AtomicBool,
    /// The waker of the task polling the driver.
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Ordering: see `Driver::poll`.
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Polls `code` and cancels it at its `point`-th suspension. `Unpin` (the code is boxed),
/// so the walk can poll it through `&mut` and still read [`Driver::reached`] after a time
/// limit cut it off.
pub(crate) struct Driver<F: Future> {
    /// `None` once it completed or was dropped at the point.
    code: Option<Pin<Box<F>>>,
    signal: Arc<Signal>,
    waker: Waker,
    point: usize,
    /// `None` once taken, at the point.
    action: Option<Action>,
    suspensions: usize,
}

impl<F: Future> Driver<F> {
    pub(crate) fn new(code: F, point: usize, action: Action) -> Self {
        let signal = Arc::new(Signal {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        Driver {
            code: Some(Box::pin(code)),
            waker: Waker::from(Arc::clone(&signal)),
            signal,
            point,
            action: Some(action),
            suspensions: 0,
        }
    }

    /// Whether the cancel point was reached.
    pub(crate) fn reached(&self) -> bool {
        self.action.is_none()
    }

    fn done(&mut self, output: Option<F::Output>) -> Poll<Driven<F::Output>> {
        self.code = None;
        Poll::Ready(Driven {
            output,
            reached: self.reached(),
            suspensions: self.suspensions,
        })
    }
}

impl<F: Future> Future for Driver<F> {
    type Output = Driven<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Register before reading the flag. A wake-up and this registration are both
        // read-modify-writes of the `AtomicWaker`'s one state word, so one comes first: if
        // the wake-up does, its `Release` store of `woken` happens before our `Acquire`
        // swap below, which sees it; if the registration does, the wake-up wakes `cx`'s
        // waker and we are polled again. Either way no wake-up is lost.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending; // polled without a wake-up: invariant 1
        }
        let Some(code) = this.code.as_mut() else {
            // Only reachable if polled again after `Ready`, which the walk never does.
            return Poll::Pending;
        };
        let output = code.as_mut().poll(&mut Context::from_waker(&this.waker));
        if let Poll::Ready(output) = output {
            return this.done(Some(output));
        }
        this.suspensions += 1;
        if this.suspensions != this.point {
            return Poll::Pending;
        }
        // Invariant 2: the point. `action` is taken once, so a later suspension with the
        // same count (there is none: the count only grows) could not cancel twice.
        match this.action.take() {
            Some(Action::Fire(source, reason)) => {
                // May wake the code synchronously (it waits on the token): `woken` is then
                // set, and we are polled again at once.
                source.cancel_with(reason);
                Poll::Pending
            }
            Some(Action::Drop) => this.done(None),
            None => Poll::Pending,
        }
    }
}
