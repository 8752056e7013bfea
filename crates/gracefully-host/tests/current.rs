//! `Lifetime::current()`: any code in the process reaches the running host. (Its own test
//! binary: the current lifetime is process-wide, and other tests run hosts in parallel.)

use gracefully::Reason;
use gracefully_host::{Host, Lifetime, Phase, service_fn};

/// Library code far from `main`, with no handle passed in.
fn request_shutdown_from_anywhere() -> bool {
    match Lifetime::current() {
        Some(lifetime) => lifetime.stop(Reason::shutdown().with_message("from a library")),
        None => false,
    }
}

#[tokio::test(start_paused = true)]
async fn lifetime_current_is_the_running_host_and_only_while_it_runs() {
    assert!(Lifetime::current().is_none());
    let host = Host::builder()
        .handle_signals(false)
        .service(
            "svc",
            service_fn(|stopping, _cx| async move {
                stopping.cancelled().await;
            }),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    assert!(Lifetime::current().is_none(), "set by run, not by build");
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;

    let current = Lifetime::current().expect("set while the host runs");
    assert_eq!(current.phase(), Phase::Running);
    assert!(request_shutdown_from_anywhere());
    let report = run.await.unwrap();

    assert_eq!(report.trigger().message(), Some("from a library"));
    assert!(Lifetime::current().is_none(), "cleared when run returns");
}
