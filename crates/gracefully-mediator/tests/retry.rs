//! The retry behaviour: genuine failures only, never a cancellation, never past the
//! token's deadline, only requests safe to run twice.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracefully::{
    CancellationSource, CancellationToken, Cancelled, ManualClock, Reason, ReasonKind,
};
use gracefully_mediator::{
    BoxError, Error, Invalid, Mediator, Request, RetryLayer, TimeoutLayer, ValidateLayer,
    handler_fn,
};
use gracefully_test::{Outcome, Walk, cancel_at_every_await};

/// A query: safe to run again.
#[derive(Clone)]
struct Lookup {
    /// What each attempt does, by attempt number (1-based); past the end: the last.
    script: Arc<[Step]>,
    valid: bool,
}

#[derive(Clone, Copy, Debug)]
enum Step {
    Fail,
    Succeed,
    /// Returns `Cancelled` with `DeadlineExceeded`, as a query cut by its own timeout would.
    Cancelled,
    /// Waits for the token, then fails with a genuine error anyway.
    FailAfterTokenFires,
    /// Suspends twice (a round trip), then fails; ignores the token.
    FailAfterTwoAwaits,
}

impl Request for Lookup {
    type Response = u32;
    fn validate(&self) -> Result<(), Invalid> {
        if self.valid {
            Ok(())
        } else {
            Err(Invalid::new().with("key", "unknown"))
        }
    }
    fn clone_for_retry(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// A command that is not safe to run twice (the default).
struct Charge;
impl Request for Charge {
    type Response = ();
}

fn lookup(script: &[Step]) -> Lookup {
    Lookup {
        script: script.into(),
        valid: true,
    }
}

/// Attempts made, and when each started (on the token's clock, as `time_left` reports it).
#[derive(Clone, Default)]
struct Attempts {
    count: Arc<AtomicU32>,
    started_with_cancelled_token: Arc<AtomicU32>,
    time_left_at_start: Arc<Mutex<Vec<Option<Duration>>>>,
}

impl Attempts {
    fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }
}

fn mediator(retry: RetryLayer, attempts: &Attempts) -> Mediator {
    let attempts = attempts.clone();
    Mediator::builder()
        .layer(retry)
        .layer(ValidateLayer::new())
        .handler(handler_fn(
            move |request: Lookup, token: CancellationToken| {
                let n = attempts.count.fetch_add(1, Ordering::SeqCst) + 1;
                if token.is_cancelled() {
                    attempts
                        .started_with_cancelled_token
                        .fetch_add(1, Ordering::SeqCst);
                }
                attempts
                    .time_left_at_start
                    .lock()
                    .unwrap()
                    .push(token.time_left());
                let step = request.script[(n as usize - 1).min(request.script.len() - 1)];
                async move {
                    match step {
                        Step::Fail => Err::<u32, BoxError>(format!("attempt {n} failed").into()),
                        Step::Succeed => Ok(n),
                        Step::Cancelled => Err(Cancelled::new(Reason::deadline_exceeded()).into()),
                        Step::FailAfterTokenFires => {
                            token.cancelled().await;
                            Err("connection reset".into())
                        }
                        Step::FailAfterTwoAwaits => {
                            tokio::task::yield_now().await;
                            tokio::task::yield_now().await;
                            Err(format!("attempt {n} failed").into())
                        }
                    }
                }
            },
        ))
        .handler(handler_fn(move |_: Charge, _t| async {
            Err::<(), _>("card declined")
        }))
        .build()
        .unwrap()
}

fn fast(retries: u32) -> RetryLayer {
    RetryLayer::new(retries).backoff(Duration::from_millis(1), Duration::from_millis(4))
}

#[tokio::test]
async fn retry_retries_genuine_failures_until_one_succeeds() {
    let attempts = Attempts::default();
    let m = mediator(fast(5), &attempts);
    let answer = m
        .send(
            lookup(&[Step::Fail, Step::Fail, Step::Succeed]),
            &CancellationToken::never(),
        )
        .await;
    assert_eq!(answer.unwrap(), 3);
    assert_eq!(attempts.count(), 3);
}

#[tokio::test]
async fn retry_gives_up_after_its_retries_with_the_last_failure() {
    let attempts = Attempts::default();
    let m = mediator(fast(2), &attempts);
    let err = m
        .send(lookup(&[Step::Fail]), &CancellationToken::never())
        .await
        .unwrap_err();
    assert_eq!(attempts.count(), 3, "the first attempt and two retries");
    assert_eq!(err.to_string(), "attempt 3 failed");
}

#[tokio::test]
async fn retry_never_retries_a_cancellation() {
    let attempts = Attempts::default();
    let m = mediator(fast(5), &attempts);
    let err = m
        .send(
            lookup(&[Step::Cancelled, Step::Succeed]),
            &CancellationToken::never(),
        )
        .await
        .unwrap_err();
    assert_eq!(attempts.count(), 1);
    assert_eq!(
        err.as_cancelled().unwrap().kind(),
        ReasonKind::DeadlineExceeded
    );
}

#[tokio::test]
async fn retry_never_retries_once_the_callers_token_fired_even_after_a_genuine_failure() {
    let attempts = Attempts::default();
    let m = mediator(fast(5), &attempts);
    let caller = CancellationSource::new();
    let send = tokio::spawn(m.send(
        lookup(&[Step::FailAfterTokenFires, Step::Succeed]),
        &caller.token(),
    ));
    while attempts.count() == 0 {
        tokio::task::yield_now().await;
    }
    caller.cancel_with(Reason::disconnected());
    let err = send.await.unwrap().unwrap_err();
    assert_eq!(attempts.count(), 1);
    assert_eq!(
        err.to_string(),
        "connection reset",
        "the failure stands, unretried"
    );
}

#[tokio::test]
async fn retry_does_not_retry_an_invalid_request() {
    let attempts = Attempts::default();
    let m = mediator(fast(5), &attempts);
    let mut request = lookup(&[Step::Succeed]);
    request.valid = false;
    let err = m
        .send(request, &CancellationToken::never())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)));
    assert_eq!(
        attempts.count(),
        0,
        "validation answered; the handler never ran"
    );
}

#[tokio::test]
async fn retry_does_not_retry_a_request_that_is_not_safe_to_run_twice() {
    let charges = Arc::new(AtomicU32::new(0));
    let seen = charges.clone();
    let m = Mediator::builder()
        .layer(fast(5))
        .handler(handler_fn(move |_: Charge, _t| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>("card declined") }
        }))
        .build()
        .unwrap();
    let err = m
        .send(Charge, &CancellationToken::never())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "card declined");
    assert_eq!(charges.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_callers_cancellation_during_the_backoff_ends_the_wait_at_once() {
    let attempts = Attempts::default();
    // An hour's backoff: only the cancellation can end the wait.
    let m = mediator(
        RetryLayer::new(5).backoff(Duration::from_secs(3600), Duration::from_secs(3600)),
        &attempts,
    );
    let caller = CancellationSource::new();
    let send = tokio::spawn(m.send(lookup(&[Step::Fail]), &caller.token()));
    while attempts.count() == 0 {
        tokio::task::yield_now().await;
    }
    caller.cancel_with(Reason::shutdown());
    let err = tokio::time::timeout(Duration::from_secs(30), send)
        .await
        .expect("the wait ended with the cancellation")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Shutdown);
    assert_eq!(attempts.count(), 1);
}

#[tokio::test]
async fn retry_is_bounded_by_the_tokens_deadline() {
    // On a manual clock, the caller has 1 s; each attempt fails at once; the backoff
    // starts at 100 ms and doubles (with jitter: 50–100, 100–200, 200–400, 400–800 ms).
    // However the jitter falls, some retry would end past the deadline: the retry stops
    // before scheduling it, with the last failure, and no attempt ever starts late.
    let clock = ManualClock::new();
    let start = clock.now();
    let caller = CancellationSource::with_clock(&clock);
    let attempts = Attempts::default();
    let m = mediator(
        RetryLayer::new(100).backoff(Duration::from_millis(100), Duration::from_secs(10)),
        &attempts,
    );
    // Put the 1 s deadline on the caller's token through a timeout behaviour's narrowing
    // equivalent: a child with a timeout, on the manual clock.
    let request = caller.token().child_with_timeout(Duration::from_secs(1));
    let send = tokio::spawn(m.send(lookup(&[Step::Fail]), &request.token()));

    // Drive the manual clock 1 ms at a time until the send ends (bounded).
    let mut steps = 0;
    while !send.is_finished() {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        if send.is_finished() {
            break;
        }
        clock.advance(Duration::from_millis(1));
        steps += 1;
        assert!(steps < 10_000, "the retry never ended");
    }
    let ended_at = clock.now() - start;
    let err = send.await.unwrap().unwrap_err();

    assert!(
        matches!(err, Error::Failed(_)),
        "the last failure, not a cancellation: {err:?}"
    );
    assert!(
        ended_at < Duration::from_secs(1),
        "gave up before the deadline: {ended_at:?}"
    );
    assert!(!request.is_cancelled(), "the deadline never had to fire");
    let n = attempts.count();
    assert!(
        (4..=5).contains(&n),
        "{n} attempts: 4 or 5 fit in 1 s with this backoff"
    );
    assert_eq!(
        attempts.started_with_cancelled_token.load(Ordering::SeqCst),
        0
    );
    for left in attempts.time_left_at_start.lock().unwrap().iter() {
        assert!(
            left.unwrap() > Duration::ZERO,
            "an attempt started at or past the deadline"
        );
    }
}

#[tokio::test]
async fn a_timeout_outside_the_retry_bounds_all_attempts_together() {
    // Timeout (outer) → retry (inner): the retry sees the timeout's deadline and does not
    // sleep past it; the whole send ends well before the 10 s backoff.
    let calls = Arc::new(AtomicU32::new(0));
    let seen = calls.clone();
    let m = Mediator::builder()
        .layer(TimeoutLayer::new(Duration::from_millis(200)))
        .layer(RetryLayer::new(3).backoff(Duration::from_secs(10), Duration::from_secs(10)))
        .handler(handler_fn(move |_: Lookup, _t| {
            seen.fetch_add(1, Ordering::SeqCst);
            async { Err::<u32, _>("busy") }
        }))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = m
        .send(lookup(&[Step::Fail]), &CancellationToken::never())
        .await
        .unwrap_err();
    // Not a speed assertion: 10 s would mean it slept through the deadline.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(err.to_string(), "busy");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cancellation_at_any_await_of_a_retrying_send_starts_no_further_attempt() {
    // Fail (two awaits), back off, fail (two awaits), back off, succeed: the caller's token
    // fires at each of those suspensions in turn. Whatever the point, no attempt starts
    // after it, and the send ends at once with a cancellation (during a backoff) or with
    // the failure the running attempt still returned (it ignores the token).
    let attempts = Attempts::default();
    let m = mediator(fast(5), &attempts);
    let script = [
        Step::FailAfterTwoAwaits,
        Step::FailAfterTwoAwaits,
        Step::Succeed,
    ];
    let report = cancel_at_every_await(
        Walk::cooperative().attempts_per_point(2),
        async |token| m.send(lookup(&script), &token).await,
        async |run| {
            let made = attempts.count.swap(0, Ordering::SeqCst);
            let late = attempts
                .started_with_cancelled_token
                .swap(0, Ordering::SeqCst);
            attempts.time_left_at_start.lock().unwrap().clear();
            assert_eq!(
                late,
                0,
                "an attempt started after the token fired (point {})",
                run.point()
            );
            match run.outcome() {
                Outcome::Completed(result) => {
                    assert_eq!(*result.as_ref().unwrap(), 3);
                    assert_eq!(made, 3);
                }
                Outcome::TokenFired(result) => {
                    assert!(made <= 3);
                    match result {
                        Err(Error::Cancelled(c)) => assert_eq!(c.kind(), ReasonKind::Requested),
                        Err(Error::Failed(e)) => {
                            assert_eq!(e.to_string(), format!("attempt {made} failed"))
                        }
                        Ok(n) => assert_eq!(*n, 3, "only the last attempt may still succeed"),
                        Err(other) => panic!("point {}: {other:?}", run.point()),
                    }
                }
                Outcome::Dropped => unreachable!("a cooperative walk never drops"),
            }
        },
    )
    .await
    .unwrap();
    // Two awaits in each failing attempt and one per backoff.
    assert!(report.points() >= 6, "{} points", report.points());
}

/// With no backoff at all, the retries still give the thread back between attempts: on a
/// current-thread runtime another task runs meanwhile — here, the one that cancels the
/// call. (Every attempt used to run within one poll: 200,000 retries held the thread, and
/// nothing on it could stop them.)
#[tokio::test(flavor = "current_thread")]
async fn retries_without_backoff_yield_so_other_tasks_run_and_can_cancel_them() {
    let attempts = Attempts::default();
    let m = mediator(
        RetryLayer::new(100_000).backoff(Duration::ZERO, Duration::ZERO),
        &attempts,
    );
    let source = Arc::new(CancellationSource::new());
    let canceller = {
        let source = Arc::clone(&source);
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            source.cancel();
        })
    };
    let answer = m.send(lookup(&[Step::Fail]), &source.token()).await;
    canceller.await.unwrap();
    assert!(answer.is_err(), "{answer:?}");
    assert!(
        attempts.count() < 1_000,
        "the canceller ran after {} attempts",
        attempts.count()
    );
}
