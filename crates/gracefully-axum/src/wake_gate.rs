//! [`WakeGate`]: polls a future only when that future asked to be woken — for the signals a
//! connection rarely gets (a slow head, the drain, its idle grace, the hard stop), which
//! would otherwise be polled each time a request wakes the connection's task.
//!
//! A task's `select!` polls every enabled branch each time the task wakes. A connection's
//! task wakes at least once per request (its socket), and its rare branches cost more than a
//! request's own work in this crate: the header guard's interval alone is some 280
//! instructions a poll. Behind the gate they cost one load and a waker comparison.
//!
//! This is what `futures::stream::FuturesUnordered` does for a set of futures (a waker per
//! future that marks it ready). It is written here because the connection's signals are one
//! future made anew after each signal, which `FuturesUnordered` would box and allocate a task
//! node for each time; the gate is one allocation per connection, and no `unsafe`.
//!
//! # Why no wake-up is lost
//!
//! 1. The task's waker is stored in `task` by the poll side only, and is never taken out:
//!    `registered` (the poll side's copy) is always what `task` holds.
//! 2. The gate's waker sets `woken` *before* it wakes the waker in `task`.
//! 3. [`Gated::poll`] stores the task's waker (if it is not the one stored already) *before*
//!    it reads `woken`.
//!
//! If a signal's waker stored `woken` before the read in 3., the poll sees it and polls the
//! inner future. Otherwise its wake comes after the read, and by 1. and 3. it wakes the
//! task's current waker: the task is polled again and sees `woken`. (Were the task's waker
//! replaced while a wake-up was under way, either the wake-up found the new waker, or its
//! store of `woken` came before the replacement under the lock, and the read sees it.)
//! `woken` is cleared (a swap) before the inner future is polled, so a wake-up during that
//! poll is seen by the next one.
//!
//! A poll that finds nothing to do is thus one load and a waker comparison: no lock and no
//! read-modify-write. (`futures`' `AtomicWaker` would cost two compare-exchanges a poll, and
//! it gives the waker away on each wake-up, so every poll would have to register again.)

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// One task's gate for the futures it polls only when they asked to be woken.
pub(crate) struct WakeGate {
    inner: Arc<GateInner>,
    /// A waker over `inner`, made once (the futures behind the gate see the same waker at
    /// every poll, so they need not replace the one they stored).
    waker: Waker,
    /// The task waker stored in `inner.task` (see "Why no wake-up is lost", 1.).
    registered: Option<Waker>,
}

struct GateInner {
    /// Set by the gate's waker (and by [`WakeGate::wait`], so a new future gets its first
    /// poll); cleared by the poll that polls the inner future.
    woken: AtomicBool,
    /// The waker of the task that polls the gate; written by the poll side only.
    task: Mutex<Option<Waker>>,
}

impl Wake for GateInner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Release, then the wake: see the module docs, "Why no wake-up is lost", 2.
        self.woken.store(true, Ordering::Release);
        // Woken outside the lock, in case the task's waker polls the task in place.
        let task = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(task) = task {
            task.wake();
        }
    }
}

impl WakeGate {
    pub(crate) fn new() -> Self {
        let inner = Arc::new(GateInner {
            woken: AtomicBool::new(false),
            task: Mutex::new(None),
        });
        let waker = Waker::from(inner.clone());
        WakeGate {
            inner,
            waker,
            registered: None,
        }
    }

    /// `future`, polled (with the gate's waker) on the first poll and then only after it
    /// asked to be woken. One gated future at a time: a new one is polled on its first poll.
    ///
    /// # Cancel safety
    ///
    /// Dropping the returned future drops `future`; nothing else is lost.
    pub(crate) fn wait<F: Future>(&mut self, future: F) -> Gated<'_, F> {
        self.inner.woken.store(true, Ordering::Relaxed);
        Gated { gate: self, future }
    }
}

pin_project_lite::pin_project! {
    /// A future behind a [`WakeGate`] (see [`WakeGate::wait`]).
    pub(crate) struct Gated<'a, F> {
        gate: &'a mut WakeGate,
        #[pin]
        future: F,
    }
}

impl<F: Future> Future for Gated<'_, F> {
    type Output = F::Output;

    // Inlined into the caller's poll: the test below is what a request pays.
    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // See the module docs, "Why no wake-up is lost", 3.: the task's waker is the one
        // stored, and no wake-up came.
        if this.gate.is_registered(cx.waker()) && !this.gate.inner.woken.load(Ordering::Acquire) {
            return Poll::Pending;
        }
        poll_woken(this.gate, this.future, cx)
    }
}

impl WakeGate {
    fn is_registered(&self, waker: &Waker) -> bool {
        self.registered
            .as_ref()
            .is_some_and(|registered| registered.will_wake(waker))
    }
}

/// The rest of [`Gated::poll`], out of line so that its frame is not set up for the test.
#[inline(never)]
fn poll_woken<F: Future>(
    gate: &mut WakeGate,
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    // See the module docs, "Why no wake-up is lost", 3.
    if !gate.is_registered(cx.waker()) {
        let waker = cx.waker().clone();
        *gate
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(waker.clone());
        gate.registered = Some(waker);
    }
    // A read-modify-write clears the mark: a wake-up stored after the test in `poll` is
    // either read here (and the inner future is polled with what that wake-up published) or
    // kept for the next poll.
    if !gate.inner.woken.swap(false, Ordering::AcqRel) {
        return Poll::Pending;
    }
    future.poll(&mut Context::from_waker(&gate.waker))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Pending until released; counts its polls and keeps the last waker it was given.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        released: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    impl Probe {
        fn future(&self) -> impl Future<Output = ()> + '_ {
            std::future::poll_fn(move |cx| {
                self.polls.fetch_add(1, Ordering::SeqCst);
                *self.waker.lock().unwrap() = Some(cx.waker().clone());
                if self.released.load(Ordering::SeqCst) {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
        }

        fn wake(&self) {
            self.waker.lock().unwrap().take().unwrap().wake();
        }
    }

    /// Counts the wake-ups of the task that polls the gate.
    #[derive(Default)]
    struct TaskWakes(AtomicUsize);

    impl Wake for TaskWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_gated_future_is_polled_first_and_then_only_after_it_asked_to_be_woken() {
        let mut gate = WakeGate::new();
        let probe = Probe::default();
        let task = Arc::new(TaskWakes::default());
        let task_waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&task_waker);
        let mut gated = std::pin::pin!(gate.wait(probe.future()));

        assert!(gated.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            probe.polls.load(Ordering::SeqCst),
            1,
            "the first poll goes through"
        );
        // The task wakes for other reasons (its socket): the gated future is not polled.
        for _ in 0..3 {
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);

        // The future's own waker fires: the task is woken, and its next poll polls it.
        probe.released.store(true, Ordering::SeqCst);
        probe.wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1, "the task was woken");
        assert_eq!(gated.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_new_gated_future_gets_its_first_poll() {
        let mut gate = WakeGate::new();
        let task_waker = Waker::from(Arc::new(TaskWakes::default()));
        let mut cx = Context::from_waker(&task_waker);
        let first = Probe::default();
        {
            let mut gated = std::pin::pin!(gate.wait(first.future()));
            assert!(gated.as_mut().poll(&mut cx).is_pending());
            assert!(gated.as_mut().poll(&mut cx).is_pending());
        }
        let second = Probe::default();
        second.released.store(true, Ordering::SeqCst);
        let mut gated = std::pin::pin!(gate.wait(second.future()));
        assert_eq!(gated.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(first.polls.load(Ordering::SeqCst), 1);
    }

    /// The race the module docs reason about: wake-ups from another thread while the task
    /// polls the gate (an idle task, and one kept busy by a branch that wakes it at every
    /// poll, so the gate is polled over and over while the wake-up lands).
    #[test]
    fn a_wake_up_from_another_thread_reaches_the_task_idle_or_busy() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for round in 0..400 {
                let notify = Arc::new(tokio::sync::Notify::new());
                let mut gate = WakeGate::new();
                let notifier = {
                    let notify = notify.clone();
                    std::thread::spawn(move || notify.notify_one())
                };
                let gated = gate.wait(notify.notified());
                let woken = async {
                    if round % 2 == 0 {
                        gated.await;
                    } else {
                        let busy = std::future::poll_fn(|cx| {
                            cx.waker().wake_by_ref();
                            Poll::<()>::Pending
                        });
                        tokio::select! {
                            biased;
                            () = busy => unreachable!("never ready"),
                            () = gated => {}
                        }
                    }
                };
                // Not `timeout(..)`: it polls its future first when its timer wakes the task,
                // which would find a wake-up that never woke the task.
                tokio::select! {
                    biased;
                    () = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
                        panic!("round {round}: the notification did not wake the task");
                    }
                    () = woken => {}
                }
                notifier.join().unwrap();
            }
        });
    }
}
