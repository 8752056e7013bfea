//! Cancellation is logged as cancellation, never as an error; failures are errors.

use gracefully::Reason;
use gracefully_host::{BoxError, Host, Outcome, service_fn};
use support::Captured;

mod support;

/// Runs a one-service host to a stop on this thread, capturing its logs.
async fn logs_of(service: impl gracefully_host::BackgroundService) -> (String, Outcome) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let host = Host::builder()
        .handle_signals(false)
        .service("svc", service)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let stopper = lifetime.clone();
    // Everything runs on this thread (current-thread runtime), under the subscriber.
    let (report, ()) = tokio::join!(host.run(), async move {
        stopper.started().cancelled().await;
        stopper.stop(Reason::shutdown().with_message("test"));
    });
    let outcome = report.entry("svc").unwrap().outcome().clone();
    let logs = captured.text();
    (logs, outcome)
}

#[tokio::test(start_paused = true)]
async fn a_service_stopping_with_cancelled_is_logged_as_cancelled_not_as_an_error() {
    let (logs, outcome) = logs_of(service_fn(
        |stopping: gracefully::CancellationToken, _cx| async move {
            stopping.cancelled().await;
            stopping.check()?; // returns Err(Cancelled)
            Ok::<(), BoxError>(())
        },
    ))
    .await;
    assert_eq!(outcome, Outcome::Cancelled);
    assert!(!logs.contains("ERROR"), "{logs}");
    assert!(logs.contains("outcome=\"cancelled\""), "{logs}");
    assert!(logs.contains("shutdown report: exit code 0"), "{logs}");
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_is_logged_as_an_error() {
    let (logs, outcome) = logs_of(service_fn(|_stopping, _cx| async move {
        Err::<(), BoxError>("broken pipe".into())
    }))
    .await;
    assert_eq!(outcome, Outcome::Failed("broken pipe".into()));
    assert!(
        logs.lines()
            .any(|l| l.contains("ERROR") && l.contains("broken pipe")),
        "{logs}"
    );
}
