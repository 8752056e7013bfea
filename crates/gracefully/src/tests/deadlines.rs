//! Rule 7 and its fine print: timeouts, deadlines, clocks.
//!
//! Tests that start the process-wide timer thread are named `system_timer_*`: Miri runs
//! them separately, with its leak check off, because that thread lives as long as the
//! process (CI's `.ci/run`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{CancellationSource, CancellationToken, ManualClock, ReasonKind};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn a_timeout_on_a_manual_clock_fires_at_its_deadline_and_not_before() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let line = line!() + 1;
    let timed = root.token().child_with_timeout(30 * SEC);
    clock.advance(30 * SEC - Duration::from_nanos(1));
    assert!(!timed.is_cancelled());
    clock.advance(Duration::from_nanos(1));
    let reason = timed.token().reason().expect("fired at the deadline");
    assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
    assert_eq!(
        reason.origin().line(),
        line,
        "origin: the call that set the deadline"
    );
    assert!(!root.is_cancelled());
}

#[test]
fn cancel_after_uses_the_tree_clock_and_reports_its_call_site() {
    let clock = ManualClock::new();
    let source = CancellationSource::with_clock(clock.clock());
    let line = line!() + 1;
    source.cancel_after(5 * SEC);
    assert_eq!(source.token().deadline(), Some(clock.now() + 5 * SEC));
    clock.advance(5 * SEC);
    assert_eq!(source.token().reason().unwrap().origin().line(), line);
}

#[test]
fn a_zero_timeout_cancels_before_the_constructor_returns() {
    let source = CancellationSource::with_timeout(Duration::ZERO);
    assert_eq!(
        source.token().reason().unwrap().kind(),
        ReasonKind::DeadlineExceeded
    );
    let parent = CancellationSource::new();
    assert!(
        parent
            .token()
            .child_with_timeout(Duration::ZERO)
            .is_cancelled()
    );
    let s = CancellationSource::new();
    s.cancel_after(Duration::ZERO);
    assert!(s.is_cancelled());
}

#[test]
fn a_deadline_already_past_cancels_before_the_constructor_returns() {
    let past = Instant::now() - Duration::from_millis(1);
    let line = line!() + 1;
    let source = CancellationSource::with_deadline(past);
    let reason = source.token().reason().unwrap();
    assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
    assert_eq!(reason.origin().line(), line);
}

/// A deadline that is already due still reports itself — `deadline()` is `Some`, the time
/// left zero — as a token whose timer fired does. (It used to read "no deadline", which a
/// caller turning the time left into a database or downstream timeout takes as unbounded.)
#[test]
fn a_deadline_due_at_birth_is_still_reported_with_no_time_left() {
    let past = Instant::now() - Duration::from_millis(1);
    let parent = CancellationSource::new();
    let s = CancellationSource::new();
    s.cancel_after(Duration::ZERO);
    let tokens = [
        CancellationSource::with_timeout(Duration::ZERO).token(),
        CancellationSource::with_deadline(past).token(),
        parent.token().child_with_timeout(Duration::ZERO).token(),
        s.token(),
    ];
    for (i, token) in tokens.iter().enumerate() {
        assert_eq!(
            token.reason().map(|r| r.kind()),
            Some(ReasonKind::DeadlineExceeded),
            "token {i}"
        );
        assert!(token.deadline().is_some(), "token {i} reports its deadline");
        assert_eq!(token.time_left(), Some(Duration::ZERO), "token {i}");
    }
    assert!(!parent.is_cancelled(), "the parent is untouched");
    // A due deadline on a token that had a later one: cancelled at once, the later timer
    // no longer needed. (A manual clock: the system timer's thread outlives a test, which
    // Miri refuses.)
    let clock = ManualClock::new();
    let later = CancellationSource::with_clock(clock.clone());
    later.cancel_after(Duration::from_secs(3600));
    later.cancel_after(Duration::ZERO);
    assert_eq!(
        later.token().reason().map(|r| r.kind()),
        Some(ReasonKind::DeadlineExceeded)
    );
    assert_eq!(later.token().time_left(), Some(Duration::ZERO));
}

#[test]
fn an_overflowing_timeout_means_no_deadline() {
    let source = CancellationSource::with_timeout(Duration::MAX);
    assert!(!source.is_cancelled());
    assert_eq!(source.token().deadline(), None);
    source.cancel_after(Duration::MAX);
    assert_eq!(source.token().deadline(), None);
    let child = source.token().child_with_timeout(Duration::MAX);
    assert_eq!(child.token().deadline(), None);
    let clock = ManualClock::new();
    let manual = CancellationSource::with_clock(&clock);
    manual.cancel_after(Duration::MAX);
    clock.advance(Duration::MAX); // saturates instead of overflowing
    assert!(!manual.is_cancelled());
}

#[test]
fn deadlines_only_move_earlier() {
    let clock = ManualClock::new();
    let source = CancellationSource::with_clock(&clock);
    source.cancel_after(10 * SEC);
    source.cancel_after(20 * SEC); // later: ignored
    assert_eq!(source.token().deadline(), Some(clock.now() + 10 * SEC));
    source.cancel_after(5 * SEC); // earlier: taken
    assert_eq!(source.token().deadline(), Some(clock.now() + 5 * SEC));
    clock.advance(5 * SEC);
    assert!(source.is_cancelled());
    assert_eq!(clock.armed(), 0, "the replaced deadline was disarmed");
}

#[test]
fn deadline_is_the_minimum_through_all_ancestors_including_linked_parents() {
    let clock = ManualClock::new();
    let t0 = clock.now();
    let root = CancellationSource::with_clock(&clock);
    let a = root.token().child_with_timeout(50 * SEC);
    let b = root.token().child_with_timeout(20 * SEC);
    let a1 = a.token().child_with_timeout(90 * SEC);
    let linked = CancellationSource::linked([a1.token(), b.token()]);
    let leaf = linked.token().child();
    assert_eq!(a1.token().deadline(), Some(t0 + 50 * SEC));
    assert_eq!(leaf.token().deadline(), Some(t0 + 20 * SEC));
    assert_eq!(root.token().deadline(), None);
    // Moving an ancestor earlier is seen below at once.
    root.cancel_after(3 * SEC);
    assert_eq!(leaf.token().deadline(), Some(t0 + 3 * SEC));
    clock.advance(3 * SEC);
    assert!(leaf.is_cancelled());
}

#[test]
fn a_timeout_child_of_a_cancelled_parent_is_born_cancelled_with_no_deadline_or_timer() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    root.cancel();
    let child = root.token().child_with_timeout(60 * SEC);
    assert_eq!(
        child.token().reason().unwrap().kind(),
        ReasonKind::Requested,
        "the parent's reason, not a deadline"
    );
    assert_eq!(child.token().deadline(), None);
    assert_eq!(clock.armed(), 0);
    // And a zero timeout under a cancelled parent keeps the parent's reason too.
    let zero = root.token().child_with_timeout(Duration::ZERO);
    assert_eq!(zero.token().reason().unwrap().kind(), ReasonKind::Requested);
}

#[test]
fn a_timeout_covered_by_an_earlier_ancestor_deadline_arms_no_timer() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    root.cancel_after(SEC);
    let inner = root.token().child_with_timeout(60 * SEC);
    assert_eq!(clock.armed(), 1, "only the ancestor's timer");
    assert_eq!(inner.token().deadline(), Some(clock.now() + SEC));
    clock.advance(SEC);
    assert!(inner.is_cancelled());
}

#[test]
fn a_timeout_still_fires_after_its_source_is_dropped() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let token = root.token().child_with_timeout(SEC).token(); // source dropped at once
    clock.advance(SEC);
    assert_eq!(token.reason().unwrap().kind(), ReasonKind::DeadlineExceeded);
}

#[test]
fn a_timeout_nobody_observes_is_dropped_from_the_timer_queue() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    for _ in 0..100 {
        drop(root.token().child_with_timeout(SEC));
    }
    assert_eq!(clock.armed(), 0);
    assert_eq!(root.token().node().unwrap().child_count(), 0);
}

#[test]
fn deadlines_fire_in_deadline_order_on_the_advancing_thread() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let order = Arc::new(std::sync::Mutex::new(vec![]));
    let mut keep = vec![];
    for secs in [3u32, 1, 2] {
        let s = root.token().child_with_timeout(SEC * secs);
        let order = order.clone();
        // The registration alone keeps the timed node observed; its source is dropped.
        keep.push(
            s.token()
                .on_cancel(move |_| order.lock().unwrap().push(secs)),
        );
    }
    clock.advance(10 * SEC);
    assert_eq!(*order.lock().unwrap(), [1, 2, 3]);
}

#[test]
fn a_deadline_cancellation_reaches_descendants_with_the_same_reason() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let timed = root.token().child_with_timeout(SEC);
    let below = timed.token().child().token().child();
    clock.advance(SEC);
    assert!(
        below
            .token()
            .reason()
            .unwrap()
            .same_as(&timed.token().reason().unwrap())
    );
}

#[test]
fn system_timer_fires_a_timeout_without_any_runtime() {
    // Behaviour only (the latency is measured in the `versus` benchmark).
    let start = Instant::now();
    let source = CancellationSource::with_timeout(Duration::from_millis(20));
    let deadline = source.token().deadline().unwrap();
    let reason = source.token().wait();
    assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
    assert!(Instant::now() >= deadline, "never before the deadline");
    assert!(deadline >= start + Duration::from_millis(20));
}

#[test]
fn system_timer_fires_after_the_source_is_dropped_while_a_token_observes() {
    let token: CancellationToken =
        CancellationSource::with_timeout(Duration::from_millis(5)).token();
    assert_eq!(token.wait().kind(), ReasonKind::DeadlineExceeded);
}

#[test]
fn system_timer_fires_many_timeouts_in_deadline_order() {
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    // Created latest-deadline first, so creation order cannot explain the firing order. All
    // are armed before the first is due (Miri is slow enough to need a later base).
    let base = Instant::now() + Duration::from_millis(if cfg!(miri) { 3_000 } else { 50 });
    let sources: Vec<_> = (0..50u64)
        .rev()
        .map(|i| {
            let at = base + Duration::from_millis(2 * i);
            (i, CancellationSource::with_deadline(at))
        })
        .collect();
    let registrations: Vec<_> = sources
        .iter()
        .map(|(i, s)| {
            let (i, order) = (*i, order.clone());
            s.token().on_cancel(move |_| order.lock().unwrap().push(i))
        })
        .collect();
    // A thread blocked in `wait` sees the cancellation before the timer thread has run the
    // callbacks (rule 2 holds on the cancelling thread), so wait for all of them to land.
    let deadline = Instant::now() + Duration::from_secs(30);
    while order.lock().unwrap().len() < 50 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let order = order.lock().unwrap().clone();
    assert_eq!(order, (0..50).collect::<Vec<_>>());
    assert!(sources.iter().all(|(_, s)| s.is_cancelled()));
    drop(registrations);
}

#[test]
fn time_left_is_measured_on_the_tree_clock_and_stops_at_zero() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    assert_eq!(root.token().time_left(), None);
    let timed = root.token().child_with_timeout(10 * SEC);
    let below = timed.token().child();
    assert_eq!(below.token().time_left(), Some(10 * SEC));
    clock.advance(4 * SEC);
    assert_eq!(below.token().time_left(), Some(6 * SEC));
    clock.advance(60 * SEC);
    assert_eq!(below.token().time_left(), Some(Duration::ZERO));
    assert!(below.is_cancelled());
    assert_eq!(CancellationToken::never().time_left(), None);
}
