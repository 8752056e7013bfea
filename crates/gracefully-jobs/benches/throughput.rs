//! Jobs per second and pickup latency, beside an anchor measured in the same run.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p gracefully-jobs --bench throughput
//! ```
//!
//! Throughput: each round enqueues `JOBS` no-op jobs in batches of 1,000, then starts the
//! workers and stops the clock when the database says no job is left to run (an `EXISTS`
//! on the partial indexes, every 5 ms). Ours runs with its **defaults** (one worker, concurrency 16, lease 30 s, heartbeat
//! 5 s) under a host. Rounds alternate which side goes first; the medians are printed:
//!
//! - `pg jobs/s: gracefully <n>, sqlx loop <n>, ratio <r>` — the anchor is the loop every
//!   sqlx user writes: 16 tasks, each claiming one job with `FOR UPDATE SKIP LOCKED` and
//!   marking it done (two statements per job), polling 1 ms when the queue looks empty;
//! - `sqlite jobs/s (synchronous=…): gracefully <n>`, with sqlx's default `FULL` and with
//!   `NORMAL` (WAL's usual setting: durable across a process crash, not a power loss);
//! - `pg pickup latency (enqueue → handler start, workers idle): p50 <ms>, p99 <ms>` —
//!   enqueued through a second handle with its own pool, so the wake-up comes by
//!   `NOTIFY` (as from another process), 200 samples 20 ms apart.
//!
//! The PostgreSQL lines need `DATABASE_URL`; without it only SQLite runs.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gracefully::{CancellationToken, Reason};
use gracefully_host::Host;
use gracefully_jobs::{Job, Jobs, NewJob};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::mpsc;

const JOBS: usize = 20_000;
const ROUNDS: usize = 3;
const LATENCY_SAMPLES: usize = 200;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run());
}

async fn run() {
    let url = std::env::var("DATABASE_URL").ok();
    if let Some(url) = &url {
        let (mut ours, mut loops, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            let (a, b) = if round % 2 == 0 {
                let a = pg_gracefully(url).await;
                (a, pg_sqlx_loop(url).await)
            } else {
                let b = pg_sqlx_loop(url).await;
                (pg_gracefully(url).await, b)
            };
            println!("  round {round}: gracefully {a:.0}/s, sqlx loop {b:.0}/s");
            ours.push(a);
            loops.push(b);
            ratios.push(a / b);
        }
        println!(
            "pg jobs/s: gracefully {:.0}, sqlx loop {:.0}, ratio {:.2}",
            median(&mut ours),
            median(&mut loops),
            median(&mut ratios)
        );
    } else {
        println!("pg: skipped (set DATABASE_URL)");
    }
    for (sync, label) in [
        (SqliteSynchronous::Full, "synchronous=FULL, sqlx's default"),
        (
            SqliteSynchronous::Normal,
            "synchronous=NORMAL, WAL's usual setting",
        ),
    ] {
        let mut sqlite = Vec::new();
        for round in 0..ROUNDS {
            let r = sqlite_gracefully(sync).await;
            println!("  round {round}: sqlite gracefully {r:.0}/s");
            sqlite.push(r);
        }
        println!(
            "sqlite jobs/s ({label}): gracefully {:.0}",
            median(&mut sqlite)
        );
    }
    if let Some(url) = &url {
        let (p50, p99) = pg_pickup_latency(url).await;
        println!(
            "pg pickup latency (enqueue → handler start, workers idle): p50 {p50:.2} ms, p99 {p99:.2} ms"
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn unique() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

async fn noop(_job: Job<u64>, _token: CancellationToken) -> Result<(), std::convert::Infallible> {
    Ok(())
}

/// Enqueues `JOBS` jobs in batches of 1,000, runs a host with one default worker until
/// `done` says the database has no job left to run; returns jobs per second.
async fn throughput<F, Fut>(jobs: Jobs, done: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut n = 0u64;
    while (n as usize) < JOBS {
        let batch: Vec<NewJob> = (n..n + 1000).map(|i| NewJob::new("bench", &i)).collect();
        jobs.enqueue_batch(batch).await.unwrap();
        n += 1000;
    }
    let worker = jobs.worker("bench").handler(noop).build().unwrap();
    let host = Host::builder()
        .handle_signals(false)
        .service("bench", worker)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let started = Instant::now();
    let running = tokio::spawn(host.run());
    while !done().await {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    assert_eq!(
        jobs.counts(Some("bench")).await.unwrap().succeeded as usize,
        JOBS
    );
    lifetime.stop(Reason::shutdown());
    running.await.unwrap();
    JOBS as f64 / elapsed.as_secs_f64()
}

async fn pg_gracefully(url: &str) -> f64 {
    let pool = PgPool::connect(url).await.unwrap();
    let schema = format!("bench_jobs_{:x}", unique() & 0xffff_ffff);
    let jobs = Jobs::postgres_in_schema(pool.clone(), &schema)
        .await
        .unwrap();
    // Cheap enough to ask every 5 ms: both partial indexes, no scan of finished rows.
    let left = format!(
        "SELECT EXISTS (SELECT 1 FROM \"{schema}\".jobs WHERE state IN ('queued', 'retrying', 'interrupted')) \
         OR EXISTS (SELECT 1 FROM \"{schema}\".jobs WHERE state = 'running')"
    );
    let rate = throughput(jobs, || async {
        !sqlx::query_scalar::<_, bool>(AssertSqlSafe(left.as_str()))
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    drop_schema(&pool, &schema).await;
    rate
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
        .execute(pool)
        .await
        .unwrap();
}

async fn sqlite_gracefully(sync: SqliteSynchronous) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::from_str(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ))
    .unwrap()
    .create_if_missing(true)
    .journal_mode(SqliteJournalMode::Wal)
    .synchronous(sync);
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let jobs = Jobs::sqlite(pool.clone()).await.unwrap();
    throughput(jobs, || async {
        !sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM gracefully_jobs WHERE state IN ('queued', 'retrying', 'interrupted')) \
             OR EXISTS (SELECT 1 FROM gracefully_jobs WHERE state = 'running')",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    })
    .await
}

/// The anchor: the SKIP LOCKED loop every sqlx user writes, 16 tasks.
async fn pg_sqlx_loop(url: &str) -> f64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .unwrap();
    let schema = format!("bench_loop_{:x}", unique() & 0xffff_ffff);
    let t = format!("\"{schema}\".jobs");
    for stmt in [
        format!("CREATE SCHEMA \"{schema}\""),
        format!(
            "CREATE TABLE {t} (id bigserial PRIMARY KEY, payload jsonb NOT NULL, \
             state text NOT NULL DEFAULT 'queued', locked_at timestamptz)"
        ),
        format!("CREATE INDEX ON {t} (id) WHERE state = 'queued'"),
        format!("CREATE INDEX ON {t} (id) WHERE state = 'running'"),
    ] {
        sqlx::query(AssertSqlSafe(stmt))
            .execute(&pool)
            .await
            .unwrap();
    }
    for start in (0..JOBS as i64).step_by(1000) {
        let payloads: Vec<String> = (start..start + 1000).map(|i| i.to_string()).collect();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {t} (payload) SELECT p::jsonb FROM unnest($1::text[]) AS p"
        )))
        .bind(payloads)
        .execute(&pool)
        .await
        .unwrap();
    }
    let claim = Arc::new(format!(
        "UPDATE {t} SET state = 'running', locked_at = now() WHERE id = \
         (SELECT id FROM {t} WHERE state = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) \
         RETURNING id, payload::text"
    ));
    let done = Arc::new(format!("UPDATE {t} SET state = 'succeeded' WHERE id = $1"));
    let source = gracefully::CancellationSource::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (pool, claim, done, stopped) = (
            pool.clone(),
            Arc::clone(&claim),
            Arc::clone(&done),
            source.token(),
        );
        tasks.push(tokio::spawn(async move {
            while !stopped.is_cancelled() {
                let row: Option<(i64, String)> = sqlx::query_as(AssertSqlSafe(claim.as_str()))
                    .fetch_optional(&pool)
                    .await
                    .unwrap();
                match row {
                    Some((id, _payload)) => {
                        sqlx::query(AssertSqlSafe(done.as_str()))
                            .bind(id)
                            .execute(&pool)
                            .await
                            .unwrap();
                    }
                    None => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }));
    }
    let count = format!("SELECT count(*) FROM {t} WHERE state = 'succeeded'");
    loop {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(count.as_str()))
            .fetch_one(&pool)
            .await
            .unwrap();
        if n as usize >= JOBS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    source.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    drop_schema(&pool, &schema).await;
    JOBS as f64 / elapsed.as_secs_f64()
}

/// Enqueue → handler start with idle workers, the enqueue from a second handle.
async fn pg_pickup_latency(url: &str) -> (f64, f64) {
    let pool = PgPool::connect(url).await.unwrap();
    let schema = format!("bench_latency_{:x}", unique() & 0xffff_ffff);
    let jobs = Jobs::postgres_in_schema(pool.clone(), &schema)
        .await
        .unwrap();
    let other = Jobs::postgres_in_schema(PgPool::connect(url).await.unwrap(), &schema)
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel::<Instant>();
    let worker = jobs
        .worker("latency")
        .handler(move |_job: Job<u64>, _token: CancellationToken| {
            let _ = tx.send(Instant::now());
            async { Ok::<_, std::convert::Infallible>(()) }
        })
        .build()
        .unwrap();
    let host = Host::builder()
        .handle_signals(false)
        .service("latency", worker)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for i in 0..LATENCY_SAMPLES as u64 {
        let sent = Instant::now();
        other.enqueue(NewJob::new("latency", &i)).await.unwrap();
        let started = rx.recv().await.unwrap();
        samples.push(started.duration_since(sent).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lifetime.stop(Reason::shutdown());
    running.await.unwrap();
    drop_schema(&pool, &schema).await;
    samples.sort_by(f64::total_cmp);
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}
