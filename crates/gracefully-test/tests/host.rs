//! `test_host` and `RunningHost`: start, stop with a reason, get the report; a hang is an
//! error, not a stalled test.

use std::time::Duration;

use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_host::{
    BackgroundService, BoxError, Host, Outcome, Phase, ServiceContext, ShutdownReport, service_fn,
};
use gracefully_test::{HostError, RunningHost, test_host};
use tokio::time::Instant;

fn honouring() -> impl BackgroundService {
    service_fn(|stopping, _cx| async move {
        stopping.cancelled().await;
    })
}

fn stubborn() -> impl BackgroundService {
    service_fn(|_stopping, _cx| std::future::pending::<()>())
}

#[tokio::test]
async fn a_test_host_stops_with_the_given_reason_and_returns_its_report() {
    let host = test_host().service("worker", honouring()).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    assert!(running.lifetime().is_ready());

    let report = running
        .stop(Reason::shutdown().with_message("test over"))
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.trigger().kind(), ReasonKind::Shutdown);
    assert_eq!(report.trigger().message(), Some("test over"));
    let worker = report.entry("worker").unwrap();
    assert_eq!(worker.phase(), Phase::Drain);
    assert_eq!(worker.outcome(), &Outcome::Completed);
}

#[tokio::test(start_paused = true)]
async fn a_stubborn_service_is_aborted_at_the_test_budget_of_5_s() {
    let host = test_host()
        .service("polite", honouring())
        .service("stubborn", stubborn())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    let stopped_at = Instant::now();
    let report = running.stop(Reason::shutdown()).await.unwrap();

    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED, "{report}");
    let stubborn = report.entry("stubborn").unwrap();
    assert_eq!(stubborn.outcome(), &Outcome::Aborted);
    assert_eq!(
        report.phase_started(Phase::Cancel),
        Some(Duration::from_secs(4))
    );
    assert!(stopped_at.elapsed() >= Duration::from_secs(5));
    assert!(stopped_at.elapsed() < RunningHost::LIMIT);
}

#[tokio::test(start_paused = true)]
async fn a_host_that_outlasts_the_limit_fails_with_stop_timed_out() {
    // The host's own budget is longer than the helper's limit: the helper gives up first.
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(600))
        .service("stubborn", stubborn())
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    let lifetime = running.lifetime().clone();
    let error = running.stop(Reason::shutdown()).await.unwrap_err();

    assert_eq!(
        error,
        HostError::StopTimedOut {
            limit: RunningHost::LIMIT
        }
    );
    assert!(
        error.to_string().contains("no shutdown report within 60s"),
        "{error}"
    );
    assert!(
        !lifetime.stopped().is_cancelled(),
        "the host was indeed still stopping"
    );
}

#[tokio::test(start_paused = true)]
async fn a_start_step_that_outlasts_the_limit_fails_with_start_timed_out() {
    struct SlowStart;
    impl BackgroundService for SlowStart {
        async fn start(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
            std::future::pending().await
        }
        async fn execute(
            &mut self,
            stopping: CancellationToken,
            _cx: &ServiceContext,
        ) -> Result<(), BoxError> {
            stopping.cancelled().await;
            Ok(())
        }
    }
    let host = test_host()
        .startup_timeout(Duration::from_secs(600))
        .service("slow", SlowStart)
        .build()
        .unwrap();
    let error = RunningHost::start(host).await.unwrap_err();
    assert_eq!(
        error,
        HostError::StartTimedOut {
            limit: RunningHost::LIMIT
        }
    );
}

#[tokio::test]
async fn a_host_ended_by_a_failing_service_is_returned_by_finished() {
    let failing = service_fn(|_stopping, _cx| async move {
        tokio::task::yield_now().await;
        Err::<(), BoxError>("the disk is full".into())
    });
    let host = test_host().service("failing", failing).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    let report = running.finished().await.unwrap();

    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED, "{report}");
    assert!(report.to_string().contains("the disk is full"), "{report}");
}

#[tokio::test]
async fn dropping_a_running_host_stops_it() {
    let host = test_host().service("worker", honouring()).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    let lifetime = running.lifetime().clone();
    drop(running);

    let stopped = tokio::time::timeout(RunningHost::LIMIT, lifetime.stopped().cancelled()).await;
    let reason = stopped.expect("the host stops once its handle is dropped");
    assert_eq!(reason.kind(), ReasonKind::Shutdown);
    let trigger = lifetime.stop_requested().reason().unwrap();
    assert_eq!(trigger.message(), Some("RunningHost dropped"));
}
