//! The demo on PostgreSQL (`--database postgres://…`): each test in a database of its own,
//! created from `DATABASE_URL` and dropped at the end.

mod support;

use std::time::{Duration, Instant};

use clap::Parser;
use gracefully::Reason;
use sqlx::{Connection, PgConnection};
use support::TestDb;

/// How many statements of `db` run a recursive count right now.
async fn active_reports(admin: &mut PgConnection, db: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE datname = $1 AND state = 'active' AND query ILIKE '%WITH RECURSIVE%'",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn on_postgres_a_slow_report_abandoned_by_its_client_is_gone_from_the_server_at_once() {
    let db = TestDb::create("report");
    let mut config = demo::Config::parse_from([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--database",
        db.url.as_str(),
    ]);
    config.handle_signals = false;
    let (host, addr) = demo::build(&config)
        .await
        .expect("the demo starts on PostgreSQL");
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;

    let mut admin = PgConnection::connect(&db.admin_url).await.unwrap();
    // Hours of counting for the server; the client gives up after 1 s (`curl --max-time 1`).
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let request = tokio::spawn(
        client
            .get(format!("http://{addr}/report?rows=10000000000"))
            .send(),
    );
    let seen_at = Instant::now();
    while active_reports(&mut admin, &db.name).await == 0 {
        assert!(
            seen_at.elapsed() < Duration::from_secs(1),
            "the report's query never started on the server"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(request.await.unwrap().is_err(), "the client gave up");
    let left = Instant::now();
    while active_reports(&mut admin, &db.name).await > 0 {
        assert!(
            left.elapsed() < Duration::from_millis(200),
            "the query still runs on the server 200 ms after its client left"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!(
        "client left → query gone from pg_stat_activity: {:.1} ms",
        left.elapsed().as_secs_f64() * 1000.0
    );

    lifetime.stop(Reason::shutdown().with_message("test"));
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(
        report.entry("http").unwrap().detail("clients left (499)"),
        Some("1"),
        "{report}"
    );
}

/// Replicas starting together on a fresh database (a Deployment's first rollout) all
/// start: the schema is created once, under a lock, not raced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn instances_starting_together_on_a_fresh_database_all_start() {
    let db = TestDb::create("replicas");
    let config = |_: usize| {
        let mut config = demo::Config::parse_from([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--database",
            db.url.as_str(),
        ]);
        config.handle_signals = false;
        config
    };
    let configs: Vec<_> = (0..4).map(config).collect();
    let built = futures_util::future::join_all(configs.iter().map(demo::build)).await;
    for (i, host) in built.into_iter().enumerate() {
        let (host, _addr) = host.unwrap_or_else(|e| panic!("instance {i} did not start: {e}"));
        let lifetime = host.lifetime();
        let run = tokio::spawn(host.run());
        lifetime.started().cancelled().await;
        lifetime.stop(Reason::shutdown());
        let report = run.await.unwrap();
        assert_eq!(report.exit_code(), 0, "{report}");
    }
}

/// The demo killed (SIGKILL: nothing can be cancelled from inside) while a report counts on
/// the server: the server notices within seconds that its client is gone and stops the
/// statement (gracefully-sqlx turns on `client_connection_check_interval` for every
/// connection it adopts), instead of counting for hours for nobody.
#[test]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
fn a_report_of_a_killed_demo_stops_on_the_server_within_seconds() {
    const COUNTING: &str = "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND state = 'active' AND query ILIKE '%WITH RECURSIVE%'";
    let db = TestDb::create("killed");
    let observer = support::Db::connect(&db.url);
    let demo = support::Demo::start(&db.url, &[]);
    // Hours of counting for the server; the answer never comes (the demo is killed).
    let url = format!("{}/report?rows=10000000000", demo.base);
    std::thread::spawn(move || {
        support::on_own_runtime(async move {
            let _ = reqwest::Client::new().get(url).send().await;
        })
    });
    let asked = Instant::now();
    while observer.scalar(COUNTING) == 0 {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "the report's query never started on the server"
        );
        std::thread::sleep(Duration::from_millis(10));
    }

    demo.signal(libc::SIGKILL);
    let (status, _, _) = demo.wait(Duration::from_secs(5));
    assert!(!status.success(), "killed");
    let killed = Instant::now();
    while observer.scalar(COUNTING) > 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the killed demo's report still counts on the server 5 s later"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    println!(
        "demo killed → its report gone from pg_stat_activity: {:.0} ms",
        killed.elapsed().as_secs_f64() * 1000.0
    );
}
