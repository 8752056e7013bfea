//! A service that blocks its thread before its first `.await` must not hold up the others
//! (the .NET trap: a synchronous prefix of `ExecuteAsync` blocks the host's startup).
//! Real time, multi-thread runtime: the point is what a blocked worker thread does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracefully::Reason;
use gracefully_host::{Host, service_fn};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_blocking_before_its_first_await_does_not_delay_the_others() {
    let unblocked_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let other_ran_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let (unblocked, other_ran) = (Arc::clone(&unblocked_at), Arc::clone(&other_ran_at));

    // Registered first, so "other" (by default) starts after it: the worst case.
    let blocker = service_fn(move |stopping, _cx| {
        let unblocked = Arc::clone(&unblocked);
        async move {
            std::thread::sleep(Duration::from_millis(1500)); // blocking, before any await
            *unblocked.lock().unwrap() = Some(Instant::now());
            stopping.cancelled().await;
        }
    });
    let other = service_fn(move |stopping, _cx| {
        let other_ran = Arc::clone(&other_ran);
        async move {
            *other_ran.lock().unwrap() = Some(Instant::now());
            stopping.cancelled().await;
        }
    });
    let host = Host::builder()
        .handle_signals(false)
        .service("blocker", blocker)
        .service("other", other)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());

    tokio::time::timeout(Duration::from_secs(10), lifetime.started().cancelled())
        .await
        .expect("the host becomes ready");
    let ready_at = Instant::now();
    while unblocked_at.lock().unwrap().is_none() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();

    let unblocked_at = unblocked_at.lock().unwrap().unwrap();
    let other_ran_at = other_ran_at.lock().unwrap().expect("the other service ran");
    assert!(
        other_ran_at < unblocked_at,
        "the other service ran only after the blocking one let go of its thread"
    );
    assert!(
        ready_at < unblocked_at,
        "the host was not ready until the blocking one let go"
    );
    assert_eq!(report.exit_code(), 0, "{report}");
}
