//! The contract on SQLite (a temporary file database per test).

mod support;

contract_tests!(support::sqlite);

/// Bad worker options are refused at `build`, with an error naming the option.
#[tokio::test]
async fn bad_worker_options_are_rejected_naming_them() {
    use gracefully_jobs::{Error, Job};
    use std::time::Duration;
    let b = support::sqlite().await;
    let handler =
        |_job: Job<u32>, _token: gracefully::CancellationToken| async { Ok::<_, Error>(()) };
    let cases: Vec<(&str, gracefully_jobs::WorkerBuilder)> = vec![
        (
            "concurrency",
            b.jobs.worker("q").handler(handler).concurrency(0),
        ),
        (
            "lease",
            b.jobs
                .worker("q")
                .handler(handler)
                .heartbeat(Duration::from_secs(5))
                .lease(Duration::from_secs(5)),
        ),
        (
            "heartbeat",
            b.jobs
                .worker("q")
                .handler(handler)
                .heartbeat(Duration::ZERO),
        ),
        (
            "poll_interval",
            b.jobs
                .worker("q")
                .handler(handler)
                .poll_interval(Duration::ZERO),
        ),
        (
            "prefetch",
            b.jobs.worker("q").handler(handler).prefetch(1_000_000),
        ),
        ("queue", b.jobs.worker("").handler(handler)),
        ("handler", b.jobs.worker("q")),
    ];
    for (option, builder) in cases {
        match builder.build() {
            Err(Error::Config {
                option: named,
                message,
            }) => {
                assert_eq!(named, option, "{message}");
                assert!(!message.is_empty());
            }
            other => panic!("{option}: expected a config error, got {other:?}"),
        }
    }
}
