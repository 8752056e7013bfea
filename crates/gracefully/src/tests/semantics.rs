//! Rules 1, 2, 3, 8 and the fine print of DESIGN.md §3: reasons, origins, propagation,
//! linked sources, wait-free polling, errors.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use crate::tests::support::block_on;
use crate::{
    CancelOnExt, CancellationSource, CancellationToken, Cancelled, Reason, ReasonKind,
    find_cancelled, is_cancellation,
};

// ---------------------------------------------------------------- rule 1: first cancel wins

#[test]
fn first_cancel_wins_and_fixes_the_reason() {
    let source = CancellationSource::new();
    assert!(source.cancel_with(Reason::shutdown().with_message("first")));
    assert!(!source.cancel_with(Reason::disconnected().with_message("second")));
    assert!(!source.cancel());
    let reason = source.token().reason().unwrap();
    assert_eq!(reason.kind(), ReasonKind::Shutdown);
    assert_eq!(reason.message(), Some("first"));
}

#[test]
fn every_descendant_reports_the_reason_and_origin_of_the_winning_call() {
    let root = CancellationSource::new();
    let child = root.token().child();
    let grandchild = child.token().child();
    let linked = CancellationSource::linked([grandchild.token(), CancellationToken::never()]);

    let line = line!() + 1;
    root.cancel_with(Reason::shutdown().with_message("SIGTERM"));

    let expected = root.token().reason().unwrap();
    assert_eq!(expected.origin().line(), line);
    assert_eq!(expected.origin().file(), file!());
    for token in [child.token(), grandchild.token(), linked.token()] {
        let reason = token.reason().expect("descendants are cancelled");
        assert!(
            reason.same_as(&expected),
            "the very same reason, not a copy"
        );
        assert_eq!(reason.kind(), ReasonKind::Shutdown);
        assert_eq!(reason.message(), Some("SIGTERM"));
        assert_eq!(reason.origin().line(), line);
    }
}

#[test]
fn the_origin_of_cancel_is_its_call_site_even_for_a_reason_built_elsewhere() {
    let built_here = Reason::failed(io::Error::other("disk full"));
    let source = CancellationSource::new();
    let line = line!() + 1;
    source.cancel_with(built_here.clone());
    assert_eq!(source.token().reason().unwrap().origin().line(), line);
    // The reason value the caller kept is unchanged.
    assert_ne!(built_here.origin().line(), line);
}

#[test]
fn a_child_cancelled_first_keeps_its_own_reason_when_the_parent_fires_later() {
    let parent = CancellationSource::new();
    let child = parent.token().child();
    child.cancel_with(Reason::disconnected());
    parent.cancel_with(Reason::shutdown());
    assert_eq!(
        child.token().reason().unwrap().kind(),
        ReasonKind::Disconnected
    );
    assert_eq!(
        parent.token().reason().unwrap().kind(),
        ReasonKind::Shutdown
    );
}

#[test]
fn cancelling_a_child_does_not_cancel_its_parent_or_siblings() {
    let parent = CancellationSource::new();
    let a = parent.token().child();
    let b = parent.token().child();
    a.cancel();
    assert!(a.is_cancelled());
    assert!(!parent.is_cancelled());
    assert!(!b.is_cancelled());
}

#[test]
fn a_losing_concurrent_cancel_returns_false() {
    for _ in 0..50 {
        let source = Arc::new(CancellationSource::new());
        let barrier = Arc::new(Barrier::new(4));
        let wins: usize = (0..4)
            .map(|_| {
                let source = source.clone();
                let barrier = barrier.clone();
                thread::spawn(move || {
                    barrier.wait();
                    source.cancel() as usize
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(wins, 1, "exactly one cancel wins");
    }
}

// ------------------------------------------------- rule 2: cancel is complete when it returns

#[test]
fn after_cancel_returns_every_descendant_is_cancelled_and_every_callback_has_run() {
    let root = CancellationSource::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let mut sources = vec![];
    let mut registrations = vec![];
    // A tree three levels deep, three wide, with a callback on every node.
    let mut frontier = vec![root.token()];
    for _ in 0..3 {
        let mut next = vec![];
        for token in &frontier {
            for _ in 0..3 {
                let child = token.child();
                let ran = ran.clone();
                registrations.push(child.token().on_cancel(move |_| {
                    ran.fetch_add(1, Ordering::SeqCst);
                }));
                next.push(child.token());
                sources.push(child);
            }
        }
        frontier = next;
    }
    assert_eq!(sources.len(), 3 + 9 + 27);
    assert!(root.cancel());
    assert!(sources.iter().all(|s| s.is_cancelled()));
    assert_eq!(ran.load(Ordering::SeqCst), sources.len());
}

#[test]
fn a_child_created_from_a_cancelled_token_is_born_cancelled_with_its_reason() {
    let parent = CancellationSource::new();
    parent.cancel_with(Reason::shutdown());
    let child = parent.token().child();
    assert!(child.is_cancelled());
    assert!(
        child
            .token()
            .reason()
            .unwrap()
            .same_as(&parent.token().reason().unwrap())
    );
}

#[test]
fn cancel_racing_child_creation_never_leaves_a_live_child_of_a_cancelled_parent() {
    for _ in 0..200 {
        let parent = CancellationSource::new();
        let token = parent.token();
        let creator = thread::spawn(move || (0..20).map(|_| token.child()).collect::<Vec<_>>());
        parent.cancel();
        for child in creator.join().unwrap() {
            assert!(child.is_cancelled());
        }
    }
}

// ----------------------------------------------------------- rule 3: wait-free is_cancelled

#[test]
fn is_cancelled_does_not_take_the_lock() {
    // If `is_cancelled` (or `reason`) took the node's lock, this would spin forever: we
    // hold the lock on this very thread.
    let source = CancellationSource::new();
    let token = source.token();
    let node = token.node().unwrap();
    let guard = node.lock();
    assert!(!token.is_cancelled());
    assert!(!source.is_cancelled());
    assert!(token.reason().is_none());
    drop(guard);
    source.cancel();
    let guard = node.lock();
    assert!(token.is_cancelled());
    assert!(token.reason().is_some());
    drop(guard);
}

// --------------------------------------------------------------------------- never()

#[test]
fn never_is_never_cancelled_and_can_be_cancelled_is_false_only_for_never() {
    let never = CancellationToken::never();
    assert!(!never.is_cancelled());
    assert!(!never.can_be_cancelled());
    assert!(never.reason().is_none());
    assert!(never.check().is_ok());
    assert!(never.deadline().is_none());
    assert!(!CancellationToken::default().can_be_cancelled());

    let source = CancellationSource::new();
    assert!(source.token().can_be_cancelled());
    source.cancel();
    assert!(source.token().can_be_cancelled());
    assert!(source.token().child().token().can_be_cancelled());
}

#[test]
fn never_on_cancel_drops_the_callback_at_once() {
    let captured = Arc::new(());
    let witness = captured.clone();
    let registration = CancellationToken::never().on_cancel(move |_| drop(witness));
    assert_eq!(Arc::strong_count(&captured), 1);
    assert!(!registration.unregister());
}

#[test]
fn never_wait_timeout_times_out() {
    assert!(
        CancellationToken::never()
            .wait_timeout(Duration::from_millis(5))
            .is_none()
    );
}

#[test]
fn a_child_of_never_is_a_plain_source() {
    let child = CancellationToken::never().child();
    assert!(!child.is_cancelled());
    assert!(child.cancel());
    assert!(child.is_cancelled());
}

// ------------------------------------------------------------------------ linked sources

#[test]
fn linked_is_cancelled_when_any_parent_is() {
    for which in 0..3 {
        let parents: Vec<_> = (0..3).map(|_| CancellationSource::new()).collect();
        let linked = CancellationSource::linked(parents.iter().map(|p| p.token()));
        assert!(!linked.is_cancelled());
        parents[which]
            .cancel_with(Reason::new(ReasonKind::Failed).with_message(format!("{which}")));
        let reason = linked.token().reason().unwrap();
        assert_eq!(reason.message(), Some(format!("{which}").as_str()));
        for (i, p) in parents.iter().enumerate() {
            assert_eq!(p.is_cancelled(), i == which, "parents are independent");
        }
    }
}

#[test]
fn linked_from_already_cancelled_parents_takes_the_first_in_the_order_given() {
    let a = CancellationSource::new();
    let b = CancellationSource::new();
    let c = CancellationSource::new();
    b.cancel_with(Reason::disconnected());
    c.cancel_with(Reason::shutdown());
    let linked = CancellationSource::linked([a.token(), c.token(), b.token()]);
    assert_eq!(
        linked.token().reason().unwrap().kind(),
        ReasonKind::Shutdown
    );
    let linked = CancellationSource::linked([&b.token(), &c.token()]);
    assert_eq!(
        linked.token().reason().unwrap().kind(),
        ReasonKind::Disconnected
    );
}

#[test]
fn linked_with_no_parents_is_a_plain_source() {
    let linked = CancellationSource::linked(Vec::<CancellationToken>::new());
    assert!(!linked.is_cancelled());
    assert!(linked.token().can_be_cancelled());
    assert!(linked.cancel());
    let only_never = CancellationSource::linked([CancellationToken::never()]);
    assert!(only_never.cancel());
}

#[test]
fn linked_can_be_cancelled_on_its_own_without_affecting_parents() {
    let a = CancellationSource::new();
    let b = CancellationSource::new();
    let linked = CancellationSource::linked([a.token(), b.token()]);
    assert!(linked.cancel());
    assert!(!a.is_cancelled() && !b.is_cancelled());
}

#[test]
fn the_same_parent_twice_is_harmless() {
    let a = CancellationSource::new();
    let linked = CancellationSource::linked([a.token(), a.token()]);
    let ran = Arc::new(AtomicUsize::new(0));
    let r = ran.clone();
    let registration = linked.token().on_cancel(move |_| {
        r.fetch_add(1, Ordering::SeqCst);
    });
    a.cancel();
    assert_eq!(ran.load(Ordering::SeqCst), 1);
    drop(registration);
    drop(linked);
    assert_eq!(a.token().node().unwrap().child_count(), 0);
}

#[test]
fn two_parents_cancelled_at_once_cancel_a_linked_source_exactly_once() {
    for _ in 0..200 {
        let a = CancellationSource::new();
        let b = CancellationSource::new();
        let linked = CancellationSource::linked([a.token(), b.token()]);
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        let _reg = linked.token().on_cancel(move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let barrier = Arc::new(Barrier::new(2));
        let bb = barrier.clone();
        let t = thread::spawn(move || {
            bb.wait();
            b.cancel_with(Reason::disconnected());
        });
        barrier.wait();
        a.cancel_with(Reason::shutdown());
        t.join().unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        let kind = linked.token().reason().unwrap().kind();
        assert!(matches!(
            kind,
            ReasonKind::Shutdown | ReasonKind::Disconnected
        ));
    }
}

// ----------------------------------------------------------------------------- drop guard

#[test]
fn a_drop_guard_cancels_on_drop_with_the_origin_where_it_was_made() {
    let source = CancellationSource::new();
    let token = source.token();
    let line = line!() + 1;
    let guard = source.drop_guard();
    assert!(!token.is_cancelled());
    drop(guard);
    let reason = token.reason().unwrap();
    assert_eq!(reason.kind(), ReasonKind::Requested);
    assert_eq!(reason.origin().line(), line);
}

#[test]
fn a_disarmed_drop_guard_does_not_cancel() {
    let source = CancellationSource::new();
    let token = source.token();
    let source = source.drop_guard().disarm();
    assert!(!token.is_cancelled());
    drop(source);
    assert!(!token.is_cancelled());
}

#[test]
fn dropping_a_source_does_not_cancel_its_tokens() {
    let source = CancellationSource::new();
    let token = source.token();
    drop(source);
    assert!(!token.is_cancelled());
}

// ------------------------------------------------------------------ check, futures, wait

#[test]
fn check_returns_cancelled_carrying_the_reason() {
    let source = CancellationSource::new();
    assert_eq!(source.token().check(), Ok(()));
    source.cancel_with(Reason::deadline_exceeded().with_message("2s"));
    let err = source.token().check().unwrap_err();
    assert_eq!(err.kind(), ReasonKind::DeadlineExceeded);
    assert_eq!(err.reason().message(), Some("2s"));
    assert!(err.to_string().contains("deadline exceeded: 2s"));
}

#[test]
fn wait_blocks_a_thread_until_cancelled() {
    let source = CancellationSource::new();
    let token = source.token();
    let waiter = thread::spawn(move || token.wait().kind());
    thread::sleep(Duration::from_millis(10));
    source.cancel_with(Reason::shutdown());
    assert_eq!(waiter.join().unwrap(), ReasonKind::Shutdown);
}

#[test]
fn wait_timeout_returns_none_on_timeout_and_the_reason_when_cancelled() {
    let source = CancellationSource::new();
    assert!(
        source
            .token()
            .wait_timeout(Duration::from_millis(5))
            .is_none()
    );
    // The timed-out waiter unregistered itself.
    assert_eq!(source.token().node().unwrap().entry_count(), 0);
    source.cancel();
    assert!(source.token().wait_timeout(Duration::ZERO).is_some());
    assert!(source.token().wait_timeout(Duration::MAX).is_some());
}

#[test]
fn cancelled_resolves_without_a_runtime() {
    let source = CancellationSource::new();
    let token = source.token();
    let t = thread::spawn(move || block_on(token.cancelled()).kind());
    thread::sleep(Duration::from_millis(5));
    source.cancel_with(Reason::disconnected());
    assert_eq!(t.join().unwrap(), ReasonKind::Disconnected);
}

#[test]
fn run_until_cancelled_returns_ok_when_the_future_wins_and_err_when_the_token_does() {
    let source = CancellationSource::new();
    assert_eq!(
        block_on(source.token().run_until_cancelled(async { 7 })),
        Ok(7)
    );
    let token = source.token();
    let t =
        thread::spawn(move || block_on(token.run_until_cancelled(std::future::pending::<()>())));
    thread::sleep(Duration::from_millis(5));
    source.cancel_with(Reason::shutdown());
    assert_eq!(t.join().unwrap().unwrap_err().kind(), ReasonKind::Shutdown);
}

#[test]
fn cancel_on_checks_the_token_before_polling_the_future() {
    let source = CancellationSource::new();
    source.cancel();
    let polled = Arc::new(AtomicUsize::new(0));
    let p = polled.clone();
    let result = block_on(
        async move {
            p.fetch_add(1, Ordering::SeqCst);
        }
        .cancel_on(&source.token()),
    );
    assert!(result.is_err());
    assert_eq!(polled.load(Ordering::SeqCst), 0);
}

#[test]
fn a_future_that_completes_at_once_registers_nothing() {
    let source = CancellationSource::new();
    let _ = block_on(async { 1 }.cancel_on(&source.token()));
    assert_eq!(source.token().node().unwrap().entry_count(), 0);
}

// ----------------------------------------------------------------- rule 8: is_cancellation

#[derive(Debug)]
struct Wrapper(Box<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for Wrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("wrapped")
    }
}

impl std::error::Error for Wrapper {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[test]
fn is_cancellation_walks_the_source_chain_and_looks_inside_io_errors() {
    let cancelled = Cancelled::new(Reason::shutdown());
    assert!(is_cancellation(&cancelled));
    let wrapped = Wrapper(Box::new(Wrapper(Box::new(cancelled.clone()))));
    assert!(is_cancellation(&wrapped));
    assert_eq!(
        find_cancelled(&wrapped).unwrap().kind(),
        ReasonKind::Shutdown
    );
    let io: io::Error = cancelled.clone().into();
    // Not `Interrupted`, which `write_all`/`read_exact` would retry for ever.
    assert_eq!(io.kind(), io::ErrorKind::Other);
    let deadline: io::Error = Cancelled::new(Reason::deadline_exceeded()).into();
    assert_eq!(deadline.kind(), io::ErrorKind::TimedOut);
    assert!(is_cancellation(&deadline));
    assert!(is_cancellation(&io));
    assert!(is_cancellation(&Wrapper(Box::new(io))));

    assert!(!is_cancellation(&io::Error::other("disk full")));
    assert!(!is_cancellation(&Wrapper(Box::new(io::Error::other("x")))));
}

#[test]
fn a_failed_reason_exposes_its_cause_as_the_error_source() {
    let reason = Reason::failed(io::Error::other("replica lost"));
    let err = Cancelled::new(reason);
    let source = std::error::Error::source(&err).unwrap();
    assert_eq!(source.to_string(), "replica lost");
}

#[test]
fn reason_display_names_kind_message_and_origin() {
    let source = CancellationSource::new();
    source.cancel_with(Reason::shutdown().with_message("SIGTERM"));
    let text = source.token().reason().unwrap().to_string();
    assert!(text.starts_with("shutdown: SIGTERM (at "), "{text}");
    assert!(text.contains(file!()), "{text}");
}

// ------------------------------------------------------------------------- threads & Send

#[test]
fn handles_are_send_sync_and_tokens_are_one_word() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<CancellationToken>();
    assert_send_sync::<CancellationSource>();
    assert_send_sync::<crate::Registration>();
    assert_send_sync::<Reason>();
    assert_send_sync::<Cancelled>();
    assert_send_sync::<crate::WaitForCancellationOwned>();
    assert_eq!(std::mem::size_of::<CancellationToken>(), 8);
    assert_eq!(std::mem::size_of::<Option<CancellationToken>>(), 8);
}

#[test]
fn every_registration_either_runs_once_or_is_unregistered_under_concurrent_cancel() {
    // Conservation: created == ran + unregistered-before-running, with four threads
    // creating children and registrations while the parent is cancelled.
    let source = CancellationSource::new();
    let ran = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let token = source.token();
            let ran = ran.clone();
            thread::spawn(move || {
                let (mut created, mut unregistered) = (0usize, 0usize);
                let mut registrations = Vec::new();
                loop {
                    let stop = token.is_cancelled();
                    let child = token.child();
                    let ran = ran.clone();
                    registrations.push(child.token().on_cancel(move |_| {
                        ran.fetch_add(1, Ordering::SeqCst);
                    }));
                    created += 1;
                    if registrations.len() > 8 {
                        unregistered += registrations.remove(0).unregister() as usize;
                    }
                    drop(child);
                    if stop {
                        break;
                    }
                }
                for registration in registrations {
                    unregistered += registration.unregister() as usize;
                }
                (created, unregistered)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(20));
    source.cancel();
    let (created, unregistered) = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .fold((0, 0), |(c, u), (c2, u2)| (c + c2, u + u2));
    assert!(created > 4);
    assert_eq!(ran.load(Ordering::SeqCst) + unregistered, created);
    assert_eq!(source.token().node().unwrap().child_count(), 0);
}
