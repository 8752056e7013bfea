//! Fire-and-forget publishing: each handler a tracked task of the host, drained by its
//! shutdown, named in its report if it overruns. Times are tokio's paused clock: the
//! host's budgets (`test_host`: 4 s drain, 1 s cancel grace) pass instantly.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracefully::{CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_host::{EntryKind, Outcome, Phase};
use gracefully_mediator::{BoxError, Mediator, Notification, notification_fn};
use gracefully_test::{RunningHost, test_host};

struct OrderPlaced;
impl Notification for OrderPlaced {}

#[tokio::test(start_paused = true)]
async fn a_shutdown_drains_detached_handlers_and_reports_each_by_name() {
    let host = test_host().build().unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let finished = done.clone();
    let audit = Arc::new(AtomicBool::new(false));
    let audited = audit.clone();
    let mediator = Mediator::builder()
        .subscribe(notification_fn(
            "send-mail",
            move |_: &OrderPlaced, token: CancellationToken| {
                let finished = finished.clone();
                async move {
                    // A slow mail server (3 s: within the 4 s drain), honouring the token.
                    token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(3)))
                        .await?;
                    finished.store(true, Ordering::SeqCst);
                    Ok::<_, Cancelled>(())
                }
            },
        ))
        .subscribe(notification_fn("audit", move |_: &OrderPlaced, _t| {
            let audited = audited.clone();
            async move {
                audited.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }))
        .lifetime(host.lifetime())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();

    mediator.publish_detached(OrderPlaced).unwrap();
    assert!(
        !done.load(Ordering::SeqCst),
        "publish_detached returned before the handler finished"
    );
    // Let the quick one finish before the stop request.
    while !audit.load(Ordering::SeqCst) {
        tokio::task::yield_now().await;
    }

    let report = running
        .stop(Reason::shutdown().with_message("test over"))
        .await
        .unwrap();
    assert!(
        done.load(Ordering::SeqCst),
        "the drain waited for the handler"
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    let mail = report
        .entry("send-mail (OrderPlaced)")
        .unwrap_or_else(|| panic!("not in the report: {report}"));
    assert_eq!(mail.kind(), EntryKind::Task);
    assert_eq!(mail.outcome(), &Outcome::Completed);
    assert_eq!(mail.phase(), Phase::Drain);
    // The quick one ended before the stop request: counted, not listed.
    assert!(report.entry("audit (OrderPlaced)").is_none(), "{report}");
    assert_eq!(report.finished_before_stop().completed, 1);
}

#[tokio::test(start_paused = true)]
async fn detached_handlers_tokens_fire_with_shutdown_in_the_cancel_phase_not_at_drain() {
    let host = test_host().build().unwrap();
    let seen = Arc::new(Mutex::new(None));
    let slot = seen.clone();
    let mediator = Mediator::builder()
        .subscribe(notification_fn(
            "index",
            move |_: &OrderPlaced, token: CancellationToken| {
                let slot = slot.clone();
                async move {
                    let reason = token.cancelled().await;
                    *slot.lock().unwrap() = Some(reason.kind());
                    Err::<(), _>(Cancelled::new(reason))
                }
            },
        ))
        .lifetime(host.lifetime())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    mediator.publish_detached(OrderPlaced).unwrap();

    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), Some(ReasonKind::Shutdown));
    let index = report
        .entry("index (OrderPlaced)")
        .unwrap_or_else(|| panic!("not in the report: {report}"));
    assert_eq!(
        index.outcome(),
        &Outcome::Cancelled,
        "a cancellation, not a failure"
    );
    assert_eq!(
        index.phase(),
        Phase::Cancel,
        "its token fired at hard stop, not at drain"
    );
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_detached_handler_that_overruns_the_shutdown_is_aborted_and_named_in_the_report() {
    let host = test_host().build().unwrap();
    let mediator = Mediator::builder()
        .subscribe(notification_fn(
            "stubborn",
            |_: &OrderPlaced, _token| async {
                // Ignores its token.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, BoxError>(())
            },
        ))
        .lifetime(host.lifetime())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    mediator.publish_detached(OrderPlaced).unwrap();

    let report = running.stop(Reason::shutdown()).await.unwrap();
    let stubborn = report
        .entry("stubborn (OrderPlaced)")
        .unwrap_or_else(|| panic!("not in the report: {report}"));
    assert_eq!(stubborn.outcome(), &Outcome::Aborted);
    assert_eq!(report.exit_code(), 2, "stragglers aborted: {report}");
    assert!(report.to_string().contains("stubborn (OrderPlaced)"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_detached_handler_is_a_failure_in_the_report_and_the_others_complete() {
    let host = test_host().build().unwrap();
    let mediator = Mediator::builder()
        .subscribe(notification_fn("mail", |_: &OrderPlaced, _t| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Err::<(), _>("smtp down")
        }))
        .subscribe(notification_fn("audit", |_: &OrderPlaced, _t| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<_, BoxError>(())
        }))
        .lifetime(host.lifetime())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    mediator.publish_detached(OrderPlaced).unwrap();

    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(
        report.entry("mail (OrderPlaced)").unwrap().outcome(),
        &Outcome::Failed("smtp down".into())
    );
    assert_eq!(
        report.entry("audit (OrderPlaced)").unwrap().outcome(),
        &Outcome::Completed
    );
}
