//! Jobs per second and pickup latency, beside the peers measured in the same run.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres cargo bench -p gracefully-jobs --bench throughput
//! ```
//!
//! Throughput: each round enqueues `JOBS` no-op jobs in batches of 1,000, then starts the
//! workers and stops the clock when the database says no job is left to run (asked every
//! 5 ms). Ours runs with its **defaults** (one worker, concurrency 16, lease 30 s,
//! heartbeat 5 s) under a host; each peer in its **best** configuration (concurrency 16
//! everywhere): apalis-postgres 1.0 with `batch_size(100)` (its default fetches 10);
//! graphile_worker 0.14 with a LocalQueue of 100 and completions batched over 2 ms (its
//! defaults fetch one job per slot per wake-up and poll every second). Each round starts
//! with a different side; the medians are printed:
//!
//! - `pg jobs/s: gracefully <n>, apalis <n>, graphile_worker <n>, ratio <r> (vs the faster
//!   peer)`;
//! - `sqlite jobs/s (synchronous=…): gracefully <n>`, with sqlx's default `FULL` and with
//!   `NORMAL` (WAL's usual setting: durable across a process crash, not a power loss);
//! - `pg pickup latency (enqueue → handler start, workers idle): p50 <ms>, p99 <ms>` —
//!   enqueued through a second handle with its own pool, so the wake-up comes by
//!   `NOTIFY` (as from another process), 200 samples 20 ms apart.
//!
//! The PostgreSQL lines need `DATABASE_URL`; without it only SQLite runs. With
//! `JOBS_BENCH_ONLY=<side>` (gracefully, apalis, graphile_worker) only that side runs on
//! PostgreSQL (to profile it alone).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
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
    if let (Ok(only), Some(url)) = (std::env::var("JOBS_BENCH_ONLY"), &url) {
        // For profiling one side alone (`perf record -a`): ROUNDS rounds of that side.
        let side = PgSide::ALL
            .into_iter()
            .find(|side| side.name() == only)
            .unwrap_or_else(|| {
                panic!("JOBS_BENCH_ONLY={only}: valid: gracefully, apalis, graphile_worker")
            });
        for round in 0..ROUNDS {
            println!("  round {round}: {only} {:.0}/s", side.run(url).await);
        }
        return;
    }
    if let Some(url) = &url {
        println!(
            "pg: gracefully with its defaults (concurrency 16); apalis-postgres 1.0 at its best: \
             batch_size(100), concurrency(16); graphile_worker 0.14 at its best: concurrency 16, \
             LocalQueue of 100, completions batched over 2 ms"
        );
        let mut rates: [Vec<f64>; 3] = Default::default();
        for round in 0..ROUNDS {
            // Each round starts with a different side, so none always runs first.
            let mut line = format!("  round {round}:");
            for k in 0..PgSide::ALL.len() {
                let i = (round + k) % PgSide::ALL.len();
                let side = PgSide::ALL[i];
                let rate = side.run(url).await;
                line += &format!(" {} {rate:.0}/s", side.name());
                rates[i].push(rate);
            }
            println!("{line}");
        }
        let [ours, apalis, graphile] = rates.map(|mut v| median(&mut v));
        println!(
            "pg jobs/s: gracefully {ours:.0}, apalis {apalis:.0}, graphile_worker {graphile:.0}, \
             ratio {:.2} (vs the faster peer)",
            ours / apalis.max(graphile)
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
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Handler calls in the round running now (the sides run one at a time). Each side's
/// handler counts here, and the database is asked whether all are done only once every
/// job has been handled: polling it every 5 ms all along would put the done-check's own
/// work (for apalis, a scan of its finished rows; for graphile_worker, of its deleted
/// ones) on the database being measured.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// Waits until every job of the round was handled (the clock keeps running: the
/// database must still say they are done).
async fn wait_for_calls(started: Instant) {
    while CALLS.load(Ordering::Relaxed) < JOBS as u64 {
        assert!(started.elapsed() < ROUND_LIMIT, "{}", stuck());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
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
    CALLS.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let running = tokio::spawn(host.run());
    wait_for_calls(started).await;
    while !done().await {
        assert!(started.elapsed() < ROUND_LIMIT, "{}", stuck());
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
    // Cheap enough to ask every 5 ms: both partial indexes, no scan of finished rows
    // (`queue = 'bench'` lets the planner use both partial indexes: without it, it may
    // choose a sequential scan over the finished rows, which every 5 ms steals the
    // database's time from the workers).
    let left = format!(
        "SELECT EXISTS (SELECT 1 FROM \"{schema}\".jobs WHERE queue = 'bench' AND state IN ('queued', 'retrying', 'interrupted')) \
         OR EXISTS (SELECT 1 FROM \"{schema}\".jobs WHERE queue = 'bench' AND state = 'running')"
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

/// The sides of the PostgreSQL comparison.
#[derive(Clone, Copy)]
enum PgSide {
    Gracefully,
    Apalis,
    GraphileWorker,
}

impl PgSide {
    const ALL: [PgSide; 3] = [PgSide::Gracefully, PgSide::Apalis, PgSide::GraphileWorker];

    fn name(self) -> &'static str {
        match self {
            PgSide::Gracefully => "gracefully",
            PgSide::Apalis => "apalis",
            PgSide::GraphileWorker => "graphile_worker",
        }
    }

    /// One round: jobs per second.
    async fn run(self, url: &str) -> f64 {
        match self {
            PgSide::Gracefully => pg_gracefully(url).await,
            PgSide::Apalis => pg_apalis(url).await,
            PgSide::GraphileWorker => pg_graphile_worker(url).await,
        }
    }
}

/// Polls `sql` (a boolean) every 5 ms until it says all jobs are done.
async fn wait_until(pool: &PgPool, sql: &str) {
    let deadline = Instant::now() + ROUND_LIMIT;
    while !sqlx::query_scalar::<_, bool>(AssertSqlSafe(sql))
        .fetch_one(pool)
        .await
        .unwrap()
    {
        assert!(Instant::now() < deadline, "{}", stuck());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A round that takes this long has a worker that stopped (even 500 jobs/s is done in 40 s):
/// the bench says so instead of waiting for ever.
const ROUND_LIMIT: Duration = Duration::from_secs(120);

fn stuck() -> String {
    format!("the jobs were not all done within {ROUND_LIMIT:?}: a worker stopped or hangs")
}

async fn apalis_noop(_n: u64) -> Result<(), apalis::prelude::BoxDynError> {
    CALLS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// apalis-postgres at its best: `batch_size(100)` (its default fetches 10), concurrency 16,
/// its default polling. Its tables live in the fixed schema `apalis`; each round uses a
/// queue of its own and deletes its rows afterwards.
async fn pg_apalis(url: &str) -> f64 {
    use apalis::prelude::{TaskBuilder, TaskSink, WorkerBuilder, WorkerBuilderExt};
    use apalis_postgres::{Config, PostgresStorage};

    let pool = PgPool::connect(url).await.unwrap();
    PostgresStorage::setup(&pool).await.unwrap();
    let queue = format!("bench_{:x}", unique() & 0xffff_ffff);
    let mut backend =
        PostgresStorage::new(&pool).with_config(Config::default().queue(&queue).batch_size(100));
    for start in (0..JOBS as u64).step_by(1000) {
        let mut batch =
            futures_util::stream::iter((start..start + 1000).map(|i| TaskBuilder::new(i).build()));
        backend.push_all(&mut batch).await.unwrap();
    }
    let worker = WorkerBuilder::new("bench-apalis")
        .backend(backend)
        .concurrency(16)
        .build(apalis_noop);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    CALLS.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let running = tokio::spawn(worker.run_until(async move {
        let _ = stopped.await;
        Ok::<(), std::io::Error>(())
    }));
    wait_for_calls(started).await;
    wait_until(
        &pool,
        &format!(
            "SELECT NOT EXISTS (SELECT 1 FROM apalis.jobs WHERE job_type = '{queue}' \
             AND status NOT IN ('Done', 'Failed', 'Killed'))"
        ),
    )
    .await;
    let elapsed = started.elapsed();
    let done: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM apalis.jobs WHERE job_type = '{queue}' AND status = 'Done'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(done as usize, JOBS, "apalis finished every job");
    let _ = stop.send(());
    let _ = running.await;
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM apalis.jobs WHERE job_type = '{queue}'"
    )))
    .execute(&pool)
    .await
    .unwrap();
    // apalis keeps every round in one table: vacuum the deleted round, so the next round
    // does not pay for this one's dead rows.
    sqlx::query("VACUUM apalis.jobs")
        .execute(&pool)
        .await
        .unwrap();
    JOBS as f64 / elapsed.as_secs_f64()
}

#[derive(Clone, serde::Deserialize, serde::Serialize)]
struct GraphileNoop(u64);

impl graphile_worker::TaskHandler for GraphileNoop {
    const IDENTIFIER: &'static str = "noop";

    async fn run(
        self,
        _ctx: graphile_worker::WorkerContext,
    ) -> impl graphile_worker::IntoTaskHandlerResult {
        CALLS.fetch_add(1, Ordering::Relaxed);
        Ok::<(), String>(())
    }
}

/// graphile_worker at its best: concurrency 16, a LocalQueue of 100 (batched fetch), and
/// completions batched over 2 ms (its defaults: one job per fetch per slot, 1 s poll).
/// It deletes a job when it completes, so "all done" is an empty jobs table.
async fn pg_graphile_worker(url: &str) -> f64 {
    use graphile_worker::{JobSpec, LocalQueueConfig, WorkerOptions};

    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(20)
        .connect(url)
        .await
        .unwrap();
    let schema = format!("bench_graphile_{:x}", unique() & 0xffff_ffff);
    let worker = WorkerOptions::default()
        .concurrency(16)
        .schema(schema.as_str())
        .define_job::<GraphileNoop>()
        .pg_pool(pool.clone())
        .local_queue(LocalQueueConfig::default().with_size(100))
        .complete_job_batch_delay(Duration::from_millis(2))
        .init()
        .await
        .unwrap();
    let utils = worker.create_utils();
    let spec = JobSpec::default();
    for start in (0..JOBS as u64).step_by(1000) {
        let batch: Vec<(GraphileNoop, &JobSpec)> = (start..start + 1000)
            .map(|i| (GraphileNoop(i), &spec))
            .collect();
        utils.add_jobs::<GraphileNoop>(&batch).await.unwrap();
    }
    let worker = Arc::new(worker);
    CALLS.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let running = tokio::spawn({
        let worker = Arc::clone(&worker);
        async move { worker.run().await }
    });
    wait_for_calls(started).await;
    wait_until(
        &pool,
        &format!("SELECT NOT EXISTS (SELECT 1 FROM \"{schema}\"._private_jobs)"),
    )
    .await;
    let elapsed = started.elapsed();
    worker.request_shutdown();
    let _ = running.await;
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
