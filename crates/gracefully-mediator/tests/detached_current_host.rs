//! `publish_detached` without `MediatorBuilder::lifetime` uses the host running now. In a
//! test binary of its own: `Lifetime::current()` is process-wide, and another test's host
//! would be "current" too.

use std::time::Duration;

use gracefully::{CancellationToken, Reason};
use gracefully_host::Outcome;
use gracefully_mediator::{Mediator, Notification, notification_fn};
use gracefully_test::{RunningHost, test_host};

struct Tick;
impl Notification for Tick {}

#[tokio::test(start_paused = true)]
async fn publish_detached_uses_the_running_host_when_the_builder_was_given_none() {
    let mediator = Mediator::builder()
        .subscribe(notification_fn(
            "slow",
            |_: &Tick, token: CancellationToken| async move {
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(2)))
                    .await
            },
        ))
        .build()
        .unwrap();
    let running = RunningHost::start(test_host().build().unwrap())
        .await
        .unwrap();
    mediator.publish_detached(Tick).unwrap();
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let slow = report
        .entry("slow (Tick)")
        .unwrap_or_else(|| panic!("not in the report: {report}"));
    assert_eq!(slow.outcome(), &Outcome::Completed);
}
