//! Waiting futures: exact wake counts with a counting waker (one wake per waiting future
//! per cancel, none spurious) and cancel safety.

use std::task::Poll;

use crate::tests::support::{CountingWaker, poll_once};
use crate::{CancelOnExt, CancellationSource, CancellationToken, ReasonKind};

#[test]
fn each_waiting_future_is_woken_exactly_once_per_cancel() {
    let source = CancellationSource::new();
    let tokens: Vec<CancellationToken> = (0..10).map(|_| source.token()).collect();
    let mut futures: Vec<_> = tokens.iter().map(|t| t.cancelled()).collect();
    let wakers: Vec<_> = (0..10).map(|_| CountingWaker::new()).collect();
    for (f, (_, w)) in futures.iter_mut().zip(&wakers) {
        assert!(poll_once(f, w).is_pending());
    }
    assert!(
        wakers.iter().all(|(c, _)| c.count() == 0),
        "no spurious wake"
    );
    source.cancel();
    assert!(wakers.iter().all(|(c, _)| c.count() == 1));
    for (f, (_, w)) in futures.iter_mut().zip(&wakers) {
        assert!(matches!(poll_once(f, w), Poll::Ready(r) if r.kind() == ReasonKind::Requested));
    }
    assert!(!source.cancel());
    assert!(
        wakers.iter().all(|(c, _)| c.count() == 1),
        "a losing cancel wakes nobody"
    );
}

#[test]
fn futures_on_descendants_are_woken_once_by_an_ancestor_cancel() {
    let root = CancellationSource::new();
    let children: Vec<_> = (0..20).map(|_| root.token().child()).collect();
    let tokens: Vec<_> = children.iter().map(|c| c.token()).collect();
    let mut futures: Vec<_> = tokens.iter().map(|t| t.cancelled()).collect();
    let (counter, waker) = CountingWaker::new();
    for f in &mut futures {
        assert!(poll_once(f, &waker).is_pending());
    }
    root.cancel();
    assert_eq!(counter.count(), 20);
}

#[test]
fn repolling_with_the_same_waker_registers_once_and_wakes_once() {
    let source = CancellationSource::new();
    let token = source.token();
    let mut future = token.cancelled();
    let (counter, waker) = CountingWaker::new();
    for _ in 0..5 {
        assert!(poll_once(&mut future, &waker).is_pending());
    }
    assert_eq!(token.node().unwrap().entry_count(), 1);
    source.cancel();
    assert_eq!(counter.count(), 1);
}

#[test]
fn repolling_with_a_new_waker_wakes_only_the_new_one() {
    let source = CancellationSource::new();
    let token = source.token();
    let mut future = token.cancelled();
    let (old, old_waker) = CountingWaker::new();
    let (new, new_waker) = CountingWaker::new();
    assert!(poll_once(&mut future, &old_waker).is_pending());
    assert!(poll_once(&mut future, &new_waker).is_pending());
    source.cancel();
    assert_eq!((old.count(), new.count()), (0, 1));
}

#[test]
fn a_dropped_future_is_never_woken_and_unregisters() {
    let source = CancellationSource::new();
    let token = source.token();
    let mut future = token.cancelled();
    let (counter, waker) = CountingWaker::new();
    assert!(poll_once(&mut future, &waker).is_pending());
    drop(future);
    assert_eq!(token.node().unwrap().entry_count(), 0);
    source.cancel();
    assert_eq!(counter.count(), 0);
}

#[test]
fn a_future_on_a_cancelled_token_is_ready_at_once_without_registering() {
    let source = CancellationSource::new();
    source.cancel();
    let token = source.token();
    let mut future = token.cancelled();
    let (counter, waker) = CountingWaker::new();
    assert!(poll_once(&mut future, &waker).is_ready());
    assert_eq!(counter.count(), 0);
    assert_eq!(token.node().unwrap().entry_count(), 0);
}

#[test]
fn a_future_on_never_stays_pending_and_registers_nothing() {
    let token = CancellationToken::never();
    let mut future = token.clone().cancelled_owned();
    let (counter, waker) = CountingWaker::new();
    assert!(poll_once(&mut future, &waker).is_pending());
    assert_eq!(counter.count(), 0);
}

#[test]
fn cancel_on_wakes_once_and_returns_the_reason() {
    let source = CancellationSource::new();
    let mut future = Box::pin(std::future::pending::<()>().cancel_on(&source.token()));
    let (counter, waker) = CountingWaker::new();
    assert!(
        future
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
            .is_pending()
    );
    source.cancel();
    assert_eq!(counter.count(), 1);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker))
    {
        Poll::Ready(Err(c)) => assert_eq!(c.kind(), ReasonKind::Requested),
        other => panic!("expected Err(Cancelled), got {other:?}"),
    }
}

#[test]
fn the_owned_future_is_static_and_send() {
    fn assert_static_send<T: Send + 'static>(_: &T) {}
    let source = CancellationSource::new();
    let future = source.token().cancelled_owned();
    assert_static_send(&future);
}

use std::future::Future;
