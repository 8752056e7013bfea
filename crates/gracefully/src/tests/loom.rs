//! loom models of the races the tree must win. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p gracefully --lib --release`.
//!
//! Each model ends by checking that every node was freed (the per-thread live-node count:
//! loom runs all its threads on the test's OS thread), so a lost unlink is caught as well as
//! a lost wake-up or a data race.

use std::sync::Arc as StdArc;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use crate::tree::debug::live_nodes;
use crate::{CancellationSource, Reason, ReasonKind};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(2);
    }
    builder.check(move || {
        let before = live_nodes();
        f();
        assert_eq!(live_nodes(), before, "every node is freed");
    });
}

#[test]
fn cancel_vs_a_future_registering_its_waker_loses_no_wake_up() {
    model(|| {
        let source = CancellationSource::new();
        let token = source.token();
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        let reason = loom::future::block_on(token.cancelled());
        assert_eq!(reason.kind(), ReasonKind::Requested);
        canceller.join().unwrap();
    });
}

#[test]
fn cancel_vs_a_future_re_polled_with_a_new_waker_loses_no_wake_up() {
    model(|| {
        let source = CancellationSource::new();
        let token = source.token();
        let mut future = Box::pin(token.cancelled());
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Registered with one waker (the token is live, so this is Pending)...
        assert!(future.as_mut().poll(&mut cx).is_pending());
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        // ...then polled by an executor with its own waker, racing the walk that takes the
        // registered waker out of the entry.
        let reason = loom::future::block_on(future);
        assert_eq!(reason.kind(), ReasonKind::Requested);
        canceller.join().unwrap();
    });
}

#[test]
fn cancel_vs_on_cancel_runs_the_callback_exactly_once() {
    model(|| {
        let source = CancellationSource::new();
        let token = source.token();
        let ran = Arc::new(AtomicUsize::new(0));
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        let r = ran.clone();
        let registration = token.on_cancel(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        canceller.join().unwrap();
        // Either inline (already cancelled) or by the canceller, before `cancel` returned.
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        drop(registration);
    });
}

#[test]
fn cancel_vs_registration_drop_never_runs_the_callback_after_the_drop_returned() {
    model(|| {
        let source = CancellationSource::new();
        let dropped = Arc::new(AtomicUsize::new(0));
        let d = dropped.clone();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let registration = source.token().on_cancel(move |_| {
            // Rule 5: if this runs, the drop has not returned yet (it waits for us).
            assert_eq!(
                d.load(Ordering::SeqCst),
                0,
                "callback ran after its drop returned"
            );
            r.fetch_add(1, Ordering::SeqCst);
        });
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        let unregistered = registration.unregister();
        dropped.store(1, Ordering::SeqCst);
        canceller.join().unwrap();
        // Unregistered before it ran, or it ran exactly once — never both, never neither.
        assert_eq!(ran.load(Ordering::SeqCst) + unregistered as usize, 1);
    });
}

#[test]
fn cancel_of_a_parent_vs_drop_of_a_child_unlinks_and_frees_it() {
    model(|| {
        let parent = CancellationSource::new();
        let child = parent.token().child();
        let child_token = child.token();
        let canceller = thread::spawn(move || {
            parent.cancel();
            parent
        });
        drop(child);
        drop(child_token);
        let parent = canceller.join().unwrap();
        assert_eq!(parent.token().node().unwrap().child_count(), 0);
    });
}

#[test]
fn cancel_of_a_parent_vs_creation_of_a_child_never_leaves_it_uncancelled() {
    model(|| {
        let parent = CancellationSource::new();
        let token = parent.token();
        let canceller = thread::spawn(move || {
            parent.cancel();
        });
        let child = token.child();
        canceller.join().unwrap();
        assert!(child.is_cancelled());
    });
}

#[test]
fn two_parents_of_one_linked_source_cancelled_at_once() {
    model(|| {
        let a = CancellationSource::new();
        let b = CancellationSource::new();
        let linked = CancellationSource::linked([a.token(), b.token()]);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let registration = linked.token().on_cancel(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let ta = thread::spawn(move || {
            a.cancel_with(Reason::shutdown());
        });
        b.cancel_with(Reason::disconnected());
        ta.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "cancelled once");
        let kind = linked.token().reason().unwrap().kind();
        assert!(matches!(
            kind,
            ReasonKind::Shutdown | ReasonKind::Disconnected
        ));
        drop(registration);
    });
}

#[test]
fn is_cancelled_observes_everything_written_before_cancel() {
    model(|| {
        let source = CancellationSource::new();
        let token = source.token();
        // Plain (non-atomic) data written before cancel: loom reports a causality violation
        // if `is_cancelled` returning true did not synchronise with the cancel.
        let data = StdArc::new(Data(UnsafeCell::new(0)));
        let d = data.clone();
        let observer = thread::spawn(move || {
            while !token.is_cancelled() {
                thread::yield_now();
            }
            assert_eq!(d.0.with(|p| unsafe { *p }), 42);
        });
        data.0.with_mut(|p| unsafe { *p = 42 });
        source.cancel();
        observer.join().unwrap();
    });
}

struct Data(UnsafeCell<u32>);
// SAFETY: accesses are ordered by the cancellation (that is what the model checks).
unsafe impl Sync for Data {}
// SAFETY: as above.
unsafe impl Send for Data {}

#[test]
fn a_registration_dropped_on_another_thread_waits_for_the_running_callback() {
    model(|| {
        let source = CancellationSource::new();
        let inside = Arc::new(AtomicUsize::new(0));
        let i = inside.clone();
        let registration = source.token().on_cancel(move |_| {
            i.store(1, Ordering::SeqCst);
            thread::yield_now();
            i.store(2, Ordering::SeqCst);
        });
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        drop(registration);
        // After the drop the callback is not running: not started (0) or finished (2).
        let state = inside.load(Ordering::SeqCst);
        assert_ne!(state, 1, "drop returned while the callback was running");
        canceller.join().unwrap();
    });
}

#[test]
fn a_waiting_future_dropped_during_cancel_is_freed_exactly_once() {
    model(|| {
        let source = CancellationSource::new();
        let token = source.token();
        let canceller = thread::spawn(move || {
            source.cancel();
        });
        {
            let mut future = token.cancelled();
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            let _ = std::future::Future::poll(std::pin::Pin::new(&mut future), &mut cx);
            // Dropped here, possibly while the canceller is waking it.
        }
        canceller.join().unwrap();
        assert!(token.is_cancelled());
    });
}
