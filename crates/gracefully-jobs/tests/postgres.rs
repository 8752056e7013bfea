//! The contract on PostgreSQL (a schema of its own per test). Needs `DATABASE_URL`.

mod support;

contract_tests!(support::postgres, #[ignore = "needs PostgreSQL: set DATABASE_URL"]);

/// A worker on a PostgreSQL pool of one connection would livelock: its listener holds the
/// only connection (`LISTEN`), so nothing could be fetched or recorded and the drain would
/// never end. `build` refuses it, naming the pool's size; two connections are enough.
// Multi-threaded, as every PostgreSQL test here: the fixture's drop runs its cleanup on
// another thread with this runtime's pool, whose connections need this runtime driven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn a_worker_on_a_pool_of_one_connection_is_refused_naming_the_pool_size() {
    use gracefully_jobs::{Error, Job, Jobs};
    let b = support::postgres().await;
    let support::Db::Postgres { schema, .. } = &b.db else {
        unreachable!()
    };
    let handler =
        |_job: Job<u32>, _token: gracefully::CancellationToken| async { Ok::<_, Error>(()) };
    for (size, ok) in [(1, false), (2, true)] {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .connect(&support::database_url())
            .await
            .unwrap();
        let jobs = Jobs::postgres_in_schema(pool, schema).await.unwrap();
        match jobs.worker("q").handler(handler).build() {
            Ok(_) if ok => {}
            Err(Error::Config {
                option: "max_connections",
                message,
            }) if !ok => {
                assert!(message.contains("max_connections = 1"), "{message}");
                assert!(message.contains("LISTEN"), "{message}");
            }
            other => panic!("a pool of {size}: {other:?}"),
        }
    }
}

/// A TCP proxy in front of PostgreSQL that can be cut: the listener closes (new
/// connections refused) and every open connection is dropped, as when the database's
/// host goes away.
struct Cuttable {
    port: u16,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    async fn start() -> Cuttable {
        use sqlx::postgres::PgConnectOptions;
        let options: PgConnectOptions = support::database_url().parse().unwrap();
        let target = format!("{}:{}", options.get_host(), options.get_port());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let t = std::sync::Arc::clone(&tasks);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                t.lock().unwrap().push(conn.abort_handle());
            }
        });
        tasks.lock().unwrap().push(accept.abort_handle());
        Cuttable { port, tasks }
    }

    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

/// A database gone at shutdown holds the worker about a second after the hard stop, not
/// until the abort (run #8): the endings of the jobs its hard stop interrupted cannot be
/// written, so the worker stops without them, counts them as left to their lease, and the
/// host ends cleanly — the services the worker depends on, which drain only after it,
/// still get their turn. (Before, the worker waited for the pool until the abort: exit 2,
/// every service it depended on aborted with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn a_database_gone_at_shutdown_holds_the_worker_a_second_past_the_hard_stop_not_to_the_abort()
{
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{Duration, Instant};

    use gracefully::{CancellationToken, Reason};
    use gracefully_host::Host;
    use gracefully_jobs::{Job, Jobs, NewJob};

    let b = support::postgres().await;
    let support::Db::Postgres { schema, .. } = &b.db else {
        unreachable!()
    };
    let proxy = Cuttable::start().await;
    let options: sqlx::postgres::PgConnectOptions = support::database_url().parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        // Longer than the whole shutdown: the pool alone would never give up in time.
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options.host("127.0.0.1").port(proxy.port))
        .await
        .unwrap();
    let jobs = Jobs::postgres_in_schema(pool, schema).await.unwrap();
    let started = std::sync::Arc::new(AtomicU32::new(0));
    let s = std::sync::Arc::clone(&started);
    let worker = jobs
        .worker("work")
        .concurrency(2)
        .handler(move |_job: Job<u32>, token: CancellationToken| {
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                    .await
            }
        })
        .build()
        .unwrap();
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(6))
        .cancel_grace(Duration::from_secs(5))
        .service("worker", worker)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let report = support::run(host);
    b.jobs
        .enqueue_batch((1..=2).map(|n| NewJob::new("work", &n)))
        .await
        .unwrap();
    support::until("2 handlers running", Duration::from_secs(10), || async {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    proxy.cut();
    let stopped_at = Instant::now();
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    let took = stopped_at.elapsed();
    assert_eq!(report.exit_code(), 0, "nothing aborted:\n{report}");
    assert_eq!(
        support::counter(&report, "left to their lease"),
        2,
        "{report}"
    );
    // Drain 1 s, then at most about a second for the database: well before the abort at 6 s.
    assert!(took < Duration::from_secs(5), "took {took:?}:\n{report}");
    // The jobs are still `running` in the table, to come back when their leases expire.
    assert_eq!(b.jobs.counts(None).await.unwrap().running, 2);
}
