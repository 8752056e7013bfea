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
        // Too long: the worker would add them to the clock and panic; each is named in its
        // own error, not as another option it is compared with.
        (
            "poll_interval",
            b.jobs
                .worker("q")
                .handler(handler)
                .poll_interval(Duration::MAX),
        ),
        (
            "poll_interval",
            b.jobs
                .worker("q")
                .handler(handler)
                .poll_interval(Duration::from_secs(24 * 3600 + 1)),
        ),
        (
            "heartbeat",
            b.jobs.worker("q").handler(handler).heartbeat(Duration::MAX),
        ),
        (
            "heartbeat",
            b.jobs
                .worker("q")
                .handler(handler)
                .heartbeat(Duration::MAX)
                .lease(Duration::MAX),
        ),
        (
            "lease",
            b.jobs.worker("q").handler(handler).lease(Duration::MAX),
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
    // The bounds themselves are accepted, and so is any backoff (its delays are capped).
    use gracefully_jobs::Backoff;
    b.jobs
        .worker("q")
        .handler(handler)
        .poll_interval(Duration::from_secs(24 * 3600))
        .heartbeat(Duration::from_secs(24 * 3600))
        .lease(Duration::from_secs(365 * 24 * 3600))
        .backoff(Backoff::exponential(Duration::MAX, Duration::MAX))
        .build()
        .unwrap();
}

/// Each job is an operation (`OperationKind::Job`) named by its queue, under its worker's
/// service; what its handler begins runs under it; a job stopped by the shutdown ends
/// cancelled with the token's reason (docs/architecture.md, "Operations").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_job_is_an_operation_under_its_worker_ending_with_the_tokens_reason() {
    use gracefully::operation::{Operation, OperationKind};
    use gracefully::{CancellationToken, Reason, ReasonKind};
    use gracefully_host::{Host, Operations};
    use gracefully_jobs::{Job, NewJob};
    use std::time::Duration;

    let b = support::sqlite().await;
    let worker = b
        .jobs
        .worker("ops")
        .concurrency(2)
        .handler(|job: Job<u32>, token: CancellationToken| async move {
            // Begun inside the handler: a child of the job's operation.
            Operation::begin(OperationKind::Query, "inside", None).complete();
            if *job.payload() == 1 {
                return Ok(());
            }
            token
                .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                .await
        })
        .build()
        .unwrap();
    let operations = Operations::new();
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_secs(1))
        .operations(operations.clone())
        .service("worker", worker)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let report = support::run(host);
    b.jobs.enqueue(NewJob::new("ops", &1u32)).await.unwrap();
    b.jobs.enqueue(NewJob::new("ops", &2u32)).await.unwrap();
    support::until("one job done, one running", Duration::from_secs(10), || {
        let snapshot = operations.snapshot();
        let done = snapshot
            .finished
            .iter()
            .any(|f| f.operation.kind == OperationKind::Job);
        let running = snapshot.live.iter().any(|o| o.kind == OperationKind::Job);
        async move { done && running }
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");

    let snapshot = operations.snapshot();
    let service = snapshot
        .finished
        .iter()
        .find(|f| f.operation.kind == OperationKind::Service && f.operation.name == "worker")
        .expect("the worker's service operation");
    let jobs: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Job)
        .collect();
    assert_eq!(jobs.len(), 2, "{:?}", snapshot.finished);
    for job in &jobs {
        assert_eq!(job.operation.name, "ops");
        assert_eq!(job.operation.parent, Some(service.operation.id));
        let inside = snapshot
            .finished
            .iter()
            .filter(|f| f.operation.name == "inside")
            .filter(|f| f.operation.parent == Some(job.operation.id))
            .count();
        assert_eq!(inside, 1, "the handler's work runs under its job");
    }
    let (stopped, done) = (jobs[0], jobs[1]); // newest first
    assert_eq!(done.outcome.as_str(), "completed");
    assert_eq!(stopped.outcome.as_str(), "cancelled");
    assert_eq!(
        stopped.reason().expect("the token's reason").kind(),
        ReasonKind::Shutdown
    );
}

/// A pool of one connection (common with SQLite) carries a busy worker through many
/// heartbeats: the worker never waits for a connection its own fetch or write holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_a_pool_of_one_connection_finishes_every_job() {
    use gracefully::Reason;
    use gracefully_jobs::{Error, Job, Jobs, NewJob};
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("jobs.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let jobs = Jobs::sqlite(pool).await.unwrap();
    const N: u64 = 3_000;
    jobs.enqueue_batch((0..N).map(|n| NewJob::new("one", &n)))
        .await
        .unwrap();
    let worker = jobs
        .worker("one")
        .handler(|_job: Job<u64>, _token| async {
            tokio::time::sleep(Duration::from_micros(200)).await;
            Ok::<_, Error>(())
        })
        .concurrency(8)
        // Heartbeats every 20 ms, so many fall while a fetch or a write is in flight.
        .heartbeat(Duration::from_millis(20))
        .lease(Duration::from_secs(2))
        .build()
        .unwrap();
    let (host, lifetime) = support::hosted(worker, Duration::from_secs(10));
    let report = support::run(host);
    support::until("every job succeeded", Duration::from_secs(30), || async {
        jobs.counts(Some("one")).await.unwrap().succeeded == N
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(support::counter(&report, "succeeded"), N, "{report}");
}
