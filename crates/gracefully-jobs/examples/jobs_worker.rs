//! A worker process that applies each job's effect exactly once: the effect and the job's
//! completion commit in one transaction (`Job::complete_in`), under a host that handles
//! SIGTERM. The process tests (`tests/process.rs`) run it, stop it, kill it and restart it.
//!
//! ```sh
//! cargo run -p gracefully-jobs --example jobs_worker -- \
//!     --database postgres://postgres@127.0.0.1:5432/postgres --schema demo_jobs \
//!     [--concurrency 16] [--prefetch 16] [--handler-ms 20] [--lease-ms 30000] [--heartbeat-ms 5000] \
//!     [--shutdown-ms 10000] [--cancel-grace-ms 2000] [--mode effects|wait]
//! cargo run -p gracefully-jobs --example jobs_worker -- --database sqlite:///tmp/jobs.db
//! ```
//!
//! Jobs are on the queue `work` with an `i64` payload. Mode `effects` (default): sleep
//! `--handler-ms`, then insert `(job id, pid)` into `effects` and complete the job in the
//! same transaction — all of it stopped (the transaction rolled back) when the token fires. Mode `wait`: wait for the token,
//! print `token fired <id> <kind> <message>`, return the cancellation.
//!
//! Prints `ready` once running, `detail <key>=<value>` for each counter of its report row,
//! and the shutdown report; exits with the report's exit code.

use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use gracefully::{CancellationToken, Cancelled};
use gracefully_host::{BoxError, Host};
use gracefully_jobs::{Job, Jobs};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};

struct Args {
    database: String,
    schema: String,
    concurrency: usize,
    prefetch: Option<usize>,
    handler: Duration,
    lease: Duration,
    heartbeat: Duration,
    shutdown: Duration,
    cancel_grace: Duration,
    wait_mode: bool,
    app_name: String,
}

fn ms(value: &str, flag: &str) -> Duration {
    Duration::from_millis(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{flag} takes milliseconds")),
    )
}

fn args() -> Args {
    let mut args = Args {
        database: String::new(),
        schema: "gracefully_jobs".into(),
        concurrency: 16,
        prefetch: None,
        handler: Duration::from_millis(20),
        lease: Duration::from_secs(30),
        heartbeat: Duration::from_secs(5),
        shutdown: Duration::from_secs(10),
        cancel_grace: Duration::from_secs(2),
        wait_mode: false,
        app_name: "jobs_worker".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--database" => args.database = value,
            "--schema" => args.schema = value,
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            "--prefetch" => args.prefetch = Some(value.parse().expect("--prefetch N")),
            "--handler-ms" => args.handler = ms(&value, &flag),
            "--lease-ms" => args.lease = ms(&value, &flag),
            "--heartbeat-ms" => args.heartbeat = ms(&value, &flag),
            "--shutdown-ms" => args.shutdown = ms(&value, &flag),
            "--cancel-grace-ms" => args.cancel_grace = ms(&value, &flag),
            "--mode" => args.wait_mode = value == "wait",
            "--app-name" => args.app_name = value,
            other => panic!("unknown option {other}"),
        }
    }
    assert!(!args.database.is_empty(), "--database URL is required");
    args
}

#[derive(Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool, String),
}

impl Db {
    /// The effect and the job's completion, in one transaction.
    async fn apply(&self, job: &Job<i64>) -> Result<(), BoxError> {
        let pid = i64::from(std::process::id());
        match self {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO effects (job, pid) VALUES (?, ?)")
                    .bind(job.id().get())
                    .bind(pid)
                    .execute(&mut *tx)
                    .await?;
                job.complete_in(&mut *tx).await?;
                tx.commit().await?;
            }
            Db::Postgres(pool, schema) => {
                let mut tx = pool.begin().await?;
                sqlx::query(AssertSqlSafe(format!(
                    "INSERT INTO \"{schema}\".effects (job, pid) VALUES ($1, $2)"
                )))
                .bind(job.id().get())
                .bind(pid)
                .execute(&mut *tx)
                .await?;
                job.complete_in(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }
}

async fn connect(args: &Args) -> (Jobs, Db) {
    if args.database.starts_with("sqlite:") {
        let options = SqliteConnectOptions::from_str(&args.database)
            .expect("a SQLite URL")
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("SQLite opens");
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS effects (job INTEGER NOT NULL, pid INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("effects table");
        (
            Jobs::sqlite(pool.clone()).await.expect("job table"),
            Db::Sqlite(pool),
        )
    } else {
        let options = PgConnectOptions::from_str(&args.database)
            .expect("a PostgreSQL URL")
            .application_name(&args.app_name);
        let pool = PgPoolOptions::new()
            .max_connections(args.concurrency.min(16) as u32 + 4)
            .connect_with(options)
            .await
            .expect("PostgreSQL connects");
        let jobs = Jobs::postgres_in_schema(pool.clone(), &args.schema)
            .await
            .expect("job table");
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS \"{}\".effects (job bigint NOT NULL, pid bigint NOT NULL)",
            args.schema
        )))
        .execute(&pool)
        .await
        .expect("effects table");
        (jobs, Db::Postgres(pool, args.schema.clone()))
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gracefully_jobs=info,gracefully_host=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let (jobs, db) = connect(&args).await;
    let work = args.handler;
    let mut builder = jobs.worker("work").concurrency(args.concurrency);
    if let Some(n) = args.prefetch {
        builder = builder.prefetch(n);
    }
    let builder = builder.lease(args.lease).heartbeat(args.heartbeat);
    let worker = if args.wait_mode {
        builder.handler(|job: Job<i64>, token: CancellationToken| async move {
            let reason = token.cancelled().await;
            println!(
                "token fired {} {:?} {}",
                job.id(),
                reason.kind(),
                reason.message().unwrap_or("")
            );
            let _ = std::io::stdout().flush();
            Err::<(), _>(Cancelled::new(reason))
        })
    } else {
        builder.handler(move |job: Job<i64>, token: CancellationToken| {
            let db = db.clone();
            async move {
                // The whole attempt stops when the token fires: a transaction not yet
                // committed is dropped, so it rolls back, and the job goes back to the queue.
                token
                    .run_until_cancelled(async {
                        tokio::time::sleep(work).await;
                        db.apply(&job).await
                    })
                    .await?
            }
        })
    }
    .build()
    .expect("valid worker options");
    let host = Host::builder()
        .shutdown_timeout(args.shutdown)
        .cancel_grace(args.cancel_grace)
        .service("jobs", worker)
        .build()
        .expect("valid host options");
    let lifetime = host.lifetime();
    tokio::spawn(async move {
        lifetime.started().cancelled().await;
        println!("ready");
        let _ = std::io::stdout().flush();
    });
    let report = host.run().await;
    if let Some(row) = report.entry("jobs") {
        for (key, value) in row.details() {
            println!("detail {key}={value}");
        }
    }
    println!("{report}");
    let _ = std::io::stdout().flush();
    std::process::exit(report.exit_code());
}
