//! Rules 4 and 5: when, where and in which order callbacks run; unregistering.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use crate::{CancellationSource, CancellationToken, Reason, ReasonKind, Registration};

fn log_into(log: &Arc<Mutex<Vec<String>>>, token: &CancellationToken, name: &str) -> Registration {
    let log = log.clone();
    let name = name.to_owned();
    token.on_cancel(move |_| log.lock().unwrap().push(name))
}

#[test]
fn a_callback_on_an_already_cancelled_token_runs_inline_before_on_cancel_returns() {
    let source = CancellationSource::new();
    source.cancel_with(Reason::shutdown());
    let caller = thread::current().id();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let registration = source.token().on_cancel(move |reason| {
        assert_eq!(reason.kind(), ReasonKind::Shutdown);
        *r.lock().unwrap() = Some(thread::current().id());
    });
    assert_eq!(*ran_on.lock().unwrap(), Some(caller));
    // Nothing left to unregister.
    assert!(!registration.unregister());
}

#[test]
fn callbacks_run_on_the_cancelling_thread() {
    let source = CancellationSource::new();
    let ran_on = Arc::new(Mutex::new(None));
    let r = ran_on.clone();
    let _registration = source.token().on_cancel(move |_| {
        *r.lock().unwrap() = Some(thread::current().id());
    });
    let canceller = thread::spawn(move || {
        source.cancel();
        thread::current().id()
    })
    .join()
    .unwrap();
    assert_eq!(*ran_on.lock().unwrap(), Some(canceller));
}

#[test]
fn callbacks_on_one_token_run_newest_first() {
    let source = CancellationSource::new();
    let log = Arc::new(Mutex::new(vec![]));
    let _a = log_into(&log, &source.token(), "first");
    let _b = log_into(&log, &source.token(), "second");
    let _c = log_into(&log, &source.token(), "third");
    source.cancel();
    assert_eq!(*log.lock().unwrap(), ["third", "second", "first"]);
}

#[test]
fn callbacks_run_deepest_first_children_before_parents() {
    let root = CancellationSource::new();
    let child = root.token().child();
    let grandchild = child.token().child();
    let sibling = root.token().child();
    let log = Arc::new(Mutex::new(vec![]));
    // Registered parent-first, so registration order cannot explain the result.
    let _r = log_into(&log, &root.token(), "root");
    let _c = log_into(&log, &child.token(), "child");
    let _s = log_into(&log, &sibling.token(), "sibling");
    let _g = log_into(&log, &grandchild.token(), "grandchild");
    root.cancel();
    let log = log.lock().unwrap().clone();
    let pos = |name: &str| log.iter().position(|n| n == name).unwrap();
    assert_eq!(log.len(), 4);
    assert!(pos("grandchild") < pos("child"));
    assert!(pos("child") < pos("root"));
    assert!(pos("sibling") < pos("root"));
    assert_eq!(pos("root"), 3);
}

#[test]
fn the_whole_subtree_reports_cancelled_before_any_callback_runs() {
    let root = CancellationSource::new();
    let a = root.token().child();
    let b = a.token().child();
    let c = root.token().child();
    let all: Vec<CancellationToken> = vec![root.token(), a.token(), b.token(), c.token()];
    let checks = Arc::new(AtomicUsize::new(0));
    let mut registrations = vec![];
    for token in &all {
        let all = all.clone();
        let checks = checks.clone();
        registrations.push(token.on_cancel(move |_| {
            assert!(all.iter().all(|t| t.is_cancelled()));
            checks.fetch_add(1, Ordering::SeqCst);
        }));
    }
    root.cancel();
    assert_eq!(checks.load(Ordering::SeqCst), 4);
}

#[test]
fn all_callbacks_run_even_if_one_panics_and_the_first_panic_resumes_afterwards() {
    let source = CancellationSource::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut registrations = vec![];
    for i in 0..5 {
        let ran = ran.clone();
        registrations.push(source.token().on_cancel(move |_| {
            ran.fetch_add(1, Ordering::SeqCst);
            if i == 1 || i == 3 {
                panic!("callback {i} failed");
            }
        }));
    }
    let result = catch_unwind(AssertUnwindSafe(|| source.cancel()));
    let payload = result.expect_err("the panic is resumed");
    // Newest first: callback 3 panics first.
    assert_eq!(
        payload.downcast_ref::<String>().map(String::as_str),
        Some("callback 3 failed")
    );
    assert_eq!(ran.load(Ordering::SeqCst), 5);
    assert!(source.is_cancelled());
    // Registrations of callbacks that panicked are still released cleanly.
    drop(registrations);
}

#[test]
fn a_callback_may_cancel_other_sources_and_register_more_callbacks() {
    let a = CancellationSource::new();
    let b = Arc::new(CancellationSource::new());
    let b2 = b.clone();
    let inner_ran = Arc::new(AtomicBool::new(false));
    let ir = inner_ran.clone();
    let _reg = a.token().on_cancel(move |_| {
        // Registering on a cancelled token from inside a callback runs inline.
        let token = b2.token();
        b2.cancel_with(Reason::failed(std::io::Error::other("a failed")));
        let _inner = token.on_cancel(move |_| ir.store(true, Ordering::SeqCst));
    });
    a.cancel();
    assert!(b.is_cancelled());
    assert!(inner_ran.load(Ordering::SeqCst));
}

// ------------------------------------------------------------------------------- rule 5

#[test]
fn unregistering_before_cancel_returns_true_and_the_callback_never_runs() {
    let source = CancellationSource::new();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let registration = source
        .token()
        .on_cancel(move |_| r.store(true, Ordering::SeqCst));
    assert!(registration.unregister());
    source.cancel();
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(source.token().node().unwrap().entry_count(), 0);
}

#[test]
fn unregistering_after_the_callback_ran_returns_false() {
    let source = CancellationSource::new();
    let registration = source.token().on_cancel(|_| {});
    source.cancel();
    assert!(!registration.unregister());
}

#[test]
fn dropping_a_registration_releases_what_the_callback_captured_at_once() {
    let source = CancellationSource::new();
    let captured = Arc::new(());
    let witness = captured.clone();
    let registration = source.token().on_cancel(move |_| drop(witness));
    assert_eq!(Arc::strong_count(&captured), 2);
    drop(registration);
    assert_eq!(Arc::strong_count(&captured), 1);
}

#[test]
fn a_live_registration_keeps_its_callback_armed_after_every_handle_of_its_token_is_gone() {
    let parent = CancellationSource::new();
    let child = parent.token().child();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let registration = child
        .token()
        .on_cancel(move |_| r.store(true, Ordering::SeqCst));
    drop(child); // the last source/token of the child
    assert_eq!(
        parent.token().node().unwrap().child_count(),
        1,
        "kept by the registration"
    );
    parent.cancel();
    assert!(ran.load(Ordering::SeqCst));
    drop(registration);
    assert_eq!(parent.token().node().unwrap().child_count(), 0);
}

#[test]
fn dropping_the_registration_frees_its_node_if_nothing_else_observes_it() {
    let parent = CancellationSource::new();
    let child = parent.token().child();
    let registration = child.token().on_cancel(|_| {});
    drop(child);
    drop(registration);
    assert_eq!(parent.token().node().unwrap().child_count(), 0);
}

#[test]
fn dropping_a_registration_while_its_callback_runs_on_another_thread_waits_for_it() {
    let source = CancellationSource::new();
    let (started_tx, started_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let finished = Arc::new(AtomicBool::new(false));
    let f = finished.clone();
    let registration = source.token().on_cancel(move |_| {
        started_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        f.store(true, Ordering::SeqCst);
    });
    let canceller = thread::spawn(move || source.cancel());
    started_rx.recv().unwrap(); // the callback is running now

    let dropped = Arc::new(AtomicBool::new(false));
    let d = dropped.clone();
    let finished_when_dropped = Arc::new(AtomicBool::new(false));
    let fwd = finished_when_dropped.clone();
    let f2 = finished.clone();
    let dropper = thread::spawn(move || {
        drop(registration);
        fwd.store(f2.load(Ordering::SeqCst), Ordering::SeqCst);
        d.store(true, Ordering::SeqCst);
    });
    thread::sleep(Duration::from_millis(50));
    assert!(
        !dropped.load(Ordering::SeqCst),
        "the drop must wait while the callback runs"
    );
    release_tx.send(()).unwrap();
    dropper.join().unwrap();
    assert!(finished_when_dropped.load(Ordering::SeqCst));
    assert!(canceller.join().unwrap());
}

#[test]
fn dropping_a_registration_from_inside_its_own_callback_does_not_deadlock() {
    let source = CancellationSource::new();
    let slot: Arc<Mutex<Option<Registration>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let registration = source.token().on_cancel(move |_| {
        let own = s.lock().unwrap().take();
        drop(own); // our own registration, on the thread running us
        r.store(true, Ordering::SeqCst);
    });
    *slot.lock().unwrap() = Some(registration);
    source.cancel();
    assert!(ran.load(Ordering::SeqCst));
    assert!(slot.lock().unwrap().is_none());
}

#[test]
fn dropping_the_registration_of_an_outer_callback_from_a_nested_one_does_not_deadlock() {
    // Callback A (on `a`) cancels `b`; b's callback drops A's registration, which is still
    // running further up the same thread's stack.
    let a = CancellationSource::new();
    let b = Arc::new(CancellationSource::new());
    let slot: Arc<Mutex<Option<Registration>>> = Arc::new(Mutex::new(None));
    let s = slot.clone();
    let _inner = b.token().on_cancel(move |_| drop(s.lock().unwrap().take()));
    let b2 = b.clone();
    let outer = a.token().on_cancel(move |_| {
        b2.cancel();
    });
    *slot.lock().unwrap() = Some(outer);
    a.cancel();
    assert!(b.is_cancelled());
    assert!(slot.lock().unwrap().is_none());
}

#[test]
fn dropping_a_registration_whose_callback_is_queued_but_not_started_skips_it() {
    // Two callbacks on one token; the first to run (the newer) drops the other's
    // registration, which was collected by the same cancel but has not run yet.
    let source = CancellationSource::new();
    let older_ran = Arc::new(AtomicBool::new(false));
    let o = older_ran.clone();
    let older = source
        .token()
        .on_cancel(move |_| o.store(true, Ordering::SeqCst));
    let slot = Arc::new(Mutex::new(Some(older)));
    let s = slot.clone();
    let unregistered = Arc::new(AtomicBool::new(false));
    let u = unregistered.clone();
    let _newer = source.token().on_cancel(move |_| {
        let older = s.lock().unwrap().take().unwrap();
        u.store(older.unregister(), Ordering::SeqCst);
    });
    source.cancel();
    assert!(unregistered.load(Ordering::SeqCst));
    assert!(!older_ran.load(Ordering::SeqCst));
}
