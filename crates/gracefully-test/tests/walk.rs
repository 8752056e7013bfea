//! `cancel_at_every_await`: it finds every cancel point, cancels there in both modes,
//! reports a violated invariant at its point, and fails clearly instead of hanging.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use gracefully::{CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_test::{Outcome, Walk, WalkError, cancel_at_every_await, eventually};
use tokio::time::sleep;

const MS: Duration = Duration::from_millis(1);

/// Awaits three timers, checking its token after each, and records how many steps it
/// finished. Exactly three suspensions, three cancel points: on the current-thread runtime
/// (`#[tokio::test]`'s) the timer driver turns only when the task yields, so a 1 ms sleep
/// is never already over at its first poll.
async fn three_awaits(steps: &AtomicUsize, token: CancellationToken) -> Result<usize, Cancelled> {
    for step in 1..=3 {
        sleep(MS).await;
        token.check()?;
        steps.store(step, Ordering::SeqCst);
    }
    Ok(3)
}

#[tokio::test]
async fn a_future_with_three_awaits_has_three_cancel_points_when_its_token_fires() {
    let steps = AtomicUsize::new(0);
    let report = cancel_at_every_await(
        Walk::cooperative(),
        async |token| three_awaits(&steps, token).await,
        async |run| {
            let done = steps.swap(0, Ordering::SeqCst);
            match run.outcome() {
                Outcome::TokenFired(Err(cancelled)) => {
                    assert_eq!(done, run.point() - 1, "stopped at the first check after it");
                    assert_eq!(cancelled.kind(), ReasonKind::Requested);
                    let message = format!("cancel point {}", run.point());
                    assert!(cancelled.reason().message().unwrap().contains(&message));
                }
                Outcome::Completed(Ok(3)) => assert_eq!(done, 3),
                other => panic!("unexpected outcome at point {}: {other:?}", run.point()),
            }
        },
    )
    .await
    .unwrap();

    assert_eq!(report.points(), 3, "{report}");
    let points: Vec<_> = report.runs().iter().map(|run| run.point()).collect();
    assert_eq!(
        points,
        [1, 2, 3, 4, 4, 4],
        "then 3 attempts at the 4th point"
    );
    assert!(report.runs()[..3].iter().all(|run| run.cancelled()));
    assert!(report.runs()[3..].iter().all(|run| run.suspensions() == 3));
}

#[tokio::test]
async fn a_future_with_three_awaits_has_three_cancel_points_when_it_is_dropped() {
    let steps = AtomicUsize::new(0);
    let mut checked = Vec::new(); // the check may borrow mutably: it is an async closure
    let report = cancel_at_every_await(
        Walk::dropping().attempts_per_point(1),
        async |token| three_awaits(&steps, token).await,
        async |run| {
            checked.push(run.point());
            let done = steps.swap(0, Ordering::SeqCst);
            match run.outcome() {
                Outcome::Dropped => {
                    assert_eq!(done, run.point() - 1);
                    assert_eq!(run.suspensions(), run.point());
                }
                Outcome::Completed(Ok(3)) => assert_eq!(done, 3),
                other => panic!("unexpected outcome at point {}: {other:?}", run.point()),
            }
        },
    )
    .await
    .unwrap();

    assert_eq!(report.points(), 3, "{report}");
    assert_eq!(
        report.runs().len(),
        4,
        "one attempt per point, then the complete run"
    );
    assert_eq!(
        report.to_string(),
        "cancelled at 3 await points in 4 runs (0 with the token fired, 3 dropped, 1 completed)"
    );
}

#[tokio::test]
async fn polls_without_a_wake_up_do_not_use_up_cancel_points() {
    // `join!` polls every branch whenever any of them wakes the task: the noisy branch
    // makes the walk's driver be polled thousands of times while the code sleeps.
    let steps = AtomicUsize::new(0);
    let walked = AtomicBool::new(false);
    let noise = async {
        let mut wakeups = 0u64;
        while !walked.load(Ordering::SeqCst) {
            tokio::task::yield_now().await;
            wakeups += 1;
        }
        wakeups
    };
    let walk = async {
        let report = cancel_at_every_await(
            Walk::dropping(),
            async |token| three_awaits(&steps, token).await,
            async |_run| {},
        )
        .await;
        walked.store(true, Ordering::SeqCst);
        report
    };
    let (wakeups, report) = tokio::join!(noise, walk);
    assert!(
        wakeups > 10,
        "the noise did wake the task ({wakeups} times)"
    );
    assert_eq!(report.unwrap().points(), 3);
}

#[tokio::test]
async fn the_token_fires_while_the_code_is_suspended_at_the_point() {
    let report = cancel_at_every_await(
        Walk::cooperative().attempts_per_point(1),
        // One await: a 200 ms operation that stops when the token fires.
        async |token| {
            token
                .run_until_cancelled(sleep(Duration::from_millis(200)))
                .await
        },
        async |run| {
            if run.point() == 1 {
                // Cancelled mid-operation, not after it: the sleep never finished.
                assert!(matches!(run.outcome(), Outcome::TokenFired(Err(_))));
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(report.points(), 1);
}

#[tokio::test]
async fn cooperative_with_fires_the_given_reason() {
    let report = cancel_at_every_await(
        Walk::cooperative_with(Reason::shutdown().with_message("hard stop")),
        async |token| three_awaits(&AtomicUsize::new(0), token).await,
        async |run| {
            if let Outcome::TokenFired(result) = run.outcome() {
                let cancelled = result.as_ref().unwrap_err();
                assert_eq!(cancelled.kind(), ReasonKind::Shutdown);
                assert_eq!(cancelled.reason().message(), Some("hard stop"));
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(report.points(), 3);
}

/// Writes an order, awaits, then writes its line: cancelled between the two, it leaves a
/// half-written order. Its second await is the one at fault.
async fn half_writer(
    rows: &std::sync::Mutex<Vec<&str>>,
    token: CancellationToken,
) -> Result<(), Cancelled> {
    sleep(MS).await;
    token.check()?;
    rows.lock().unwrap().push("order");
    sleep(MS).await;
    token.check()?;
    rows.lock().unwrap().push("line");
    sleep(MS).await;
    Ok(())
}

async fn walk_half_writer(walk: Walk) -> WalkError {
    let rows = std::sync::Mutex::new(Vec::new());
    cancel_at_every_await(
        walk,
        async |token| half_writer(&rows, token).await,
        async |_run| {
            let written = std::mem::take(&mut *rows.lock().unwrap());
            assert!(written.len() != 1, "half-written: {written:?}");
        },
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn a_planted_invariant_violation_is_reported_at_its_cancel_point_when_dropped() {
    let error = walk_half_writer(Walk::dropping()).await;
    assert!(
        matches!(
            &error,
            WalkError::CheckFailed { point: 2, outcome: Outcome::Dropped, message }
                if message == r#"half-written: ["order"]"#
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        r#"the invariant check failed after a run dropped at cancel point 2 (the code's suspension #2): half-written: ["order"]"#
    );
    assert_eq!(
        format!("{error:?}"),
        error.to_string(),
        "Debug reads as Display"
    );
}

#[tokio::test]
async fn a_planted_invariant_violation_is_reported_at_its_cancel_point_when_the_token_fires() {
    let error = walk_half_writer(Walk::cooperative()).await;
    assert!(
        matches!(
            &error,
            WalkError::CheckFailed {
                point: 2,
                outcome: Outcome::TokenFired(()),
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_cleanup_spawned_on_drop_is_waited_for_with_eventually() {
    /// Undoes the half-done write when dropped, in a task, a little later: like a rollback
    /// spawned by a dropped transaction.
    struct Rollback(Arc<AtomicUsize>);
    impl Drop for Rollback {
        fn drop(&mut self) {
            let rows = Arc::clone(&self.0);
            tokio::spawn(async move {
                sleep(Duration::from_millis(5)).await;
                rows.store(0, Ordering::SeqCst);
            });
        }
    }

    let rows = Arc::new(AtomicUsize::new(0));
    let report = cancel_at_every_await(
        Walk::dropping().attempts_per_point(1),
        async |_token| {
            rows.store(1, Ordering::SeqCst); // half done
            let rollback = Rollback(Arc::clone(&rows));
            sleep(MS).await;
            sleep(MS).await;
            std::mem::forget(rollback); // done: nothing to undo
            rows.store(2, Ordering::SeqCst);
        },
        async |run| {
            if run.cancelled() {
                eventually("the rollback ran", Duration::from_secs(5), async || {
                    rows.load(Ordering::SeqCst) == 0
                })
                .await;
            } else {
                assert_eq!(rows.swap(0, Ordering::SeqCst), 2);
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(report.points(), 2);
}

#[tokio::test(start_paused = true)]
async fn eventually_fails_the_check_naming_what_did_not_settle() {
    let error = cancel_at_every_await(
        Walk::dropping(),
        async |_token| sleep(MS).await,
        async |_run| {
            eventually(
                "the temporary file is removed",
                Duration::from_secs(2),
                async || false,
            )
            .await;
        },
    )
    .await
    .unwrap_err();
    let WalkError::CheckFailed {
        point: 1, message, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert!(
        message.starts_with("the temporary file is removed: still not so after 2s"),
        "{message}"
    );
}

/// Walks a future that never completes and ignores its token.
async fn walk_never_ending(walk: Walk) -> WalkError {
    cancel_at_every_await(
        walk,
        async |_token| std::future::pending::<()>().await,
        async |_run| {},
    )
    .await
    .unwrap_err()
}

#[tokio::test(start_paused = true)]
async fn a_future_that_never_completes_fails_with_the_run_time_limit_when_its_token_fires() {
    let error = walk_never_ending(Walk::cooperative()).await;
    let limit = Duration::from_secs(10); // the default
    let expected = WalkError::RunTimedOut {
        point: 1,
        cancelled: true,
        limit,
    };
    assert_eq!(error, expected);
    assert!(
        error
            .to_string()
            .contains("does the code ignore its token?"),
        "{error}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_future_that_never_completes_fails_with_the_run_time_limit_when_dropped() {
    let limit = Duration::from_secs(3);
    let error = walk_never_ending(Walk::dropping().time_limit(limit)).await;
    // Dropped at its one suspension; the run for point 2 never gets there.
    let expected = WalkError::RunTimedOut {
        point: 2,
        cancelled: false,
        limit,
    };
    assert_eq!(error, expected);
}

#[tokio::test(start_paused = true)]
async fn a_check_that_hangs_fails_with_the_check_time_limit() {
    let error = cancel_at_every_await(
        Walk::dropping(),
        async |_token| sleep(MS).await,
        async |_run| std::future::pending::<()>().await,
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        WalkError::CheckTimedOut {
            point: 1,
            limit: Duration::from_secs(10)
        }
    );
}

#[tokio::test]
async fn code_that_never_suspends_is_an_error_not_a_vacuous_pass() {
    let checks = Cell::new(0);
    let error = cancel_at_every_await(
        Walk::dropping(),
        async |_token| 42,
        async |_run| checks.set(checks.get() + 1),
    )
    .await
    .unwrap_err();
    assert_eq!(error, WalkError::NoAwaitPoints { runs: 3 });
    assert_eq!(checks.get(), 3, "each run was still checked");
}

#[tokio::test]
async fn code_that_keeps_suspending_stops_at_max_points() {
    let error = cancel_at_every_await(
        Walk::dropping().max_points(50),
        async |_token| loop {
            tokio::task::yield_now().await;
        },
        async |_run| {},
    )
    .await
    .unwrap_err();
    assert_eq!(error, WalkError::Endless { max_points: 50 });
}

#[tokio::test]
async fn a_panic_in_the_code_is_reported_with_its_cancel_point() {
    let error = cancel_at_every_await(
        Walk::cooperative(),
        async |token| {
            sleep(MS).await;
            sleep(MS).await;
            assert!(!token.is_cancelled(), "boom: cancelled");
        },
        async |_run| {},
    )
    .await
    .unwrap_err();
    assert_eq!(
        error,
        WalkError::CodePanicked {
            point: 1,
            cancelled: true,
            message: "boom: cancelled".to_owned()
        }
    );
}

#[tokio::test]
async fn a_point_only_some_runs_reach_is_retried_until_one_does() {
    // Odd runs suspend twice, even runs three times: like I/O whose reply is sometimes
    // already there. Point 3 is reached only by an even run.
    async fn walk(attempts: usize) -> usize {
        let run = Cell::new(0);
        cancel_at_every_await(
            Walk::dropping().attempts_per_point(attempts),
            async |_token| {
                run.set(run.get() + 1);
                let suspensions = if run.get() % 2 == 0 { 3 } else { 2 };
                for _ in 0..suspensions {
                    tokio::task::yield_now().await;
                }
            },
            async |_run| {},
        )
        .await
        .unwrap()
        .points()
    }
    assert_eq!(walk(3).await, 3, "run 3 missed point 3; run 4 reached it");
    assert_eq!(walk(1).await, 2, "with one attempt the walk stops short");
}

#[tokio::test]
async fn code_and_output_need_not_be_send() {
    let shared = Rc::new(Cell::new(0));
    let report = cancel_at_every_await(
        Walk::dropping(),
        async |_token| {
            let local = Rc::clone(&shared);
            tokio::task::yield_now().await;
            local.set(local.get() + 1);
            local
        },
        async |_run| {},
    )
    .await
    .unwrap();
    assert_eq!(report.points(), 1);
    let completed = report.runs().iter().filter_map(|run| run.output()).count();
    assert_eq!(completed, 3);
}

#[tokio::test]
async fn out_of_range_settings_are_errors_naming_the_setting() {
    for (walk, setting) in [
        (Walk::dropping().time_limit(Duration::ZERO), "time_limit"),
        (
            Walk::cooperative().attempts_per_point(0),
            "attempts_per_point",
        ),
        (Walk::dropping().max_points(0), "max_points"),
    ] {
        let error = cancel_at_every_await(walk, async |_token| (), async |_run| {})
            .await
            .unwrap_err();
        let WalkError::InvalidSetting { setting: named, .. } = &error else {
            panic!("{error}");
        };
        assert_eq!(*named, setting);
        assert!(
            error
                .to_string()
                .starts_with(&format!("Walk::{setting} is 0; valid:")),
            "{error}"
        );
    }
}
