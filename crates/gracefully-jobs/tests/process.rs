//! Process-level tests with real signals, against the `jobs_worker` example (a worker
//! process whose handler writes its effect and completes its job in one transaction):
//!
//! - SIGTERM mid-run, then a restart: every job succeeded exactly once, and none used an
//!   attempt because of the shutdown;
//! - SIGKILL mid-run (short lease), then a restart: every job done after the lease expired,
//!   effects exactly once, no attempt used;
//! - cancel a running job from this process: the worker process's token fires (latency
//!   printed);
//! - PostgreSQL only: a worker paused (SIGSTOP) past its lease loses its jobs to another
//!   worker, and when it resumes its tokens fire and it completes nothing; the workers'
//!   connections killed with `pg_terminate_backend` mid-run lose nothing.
//!
//! SQLite tests run always; PostgreSQL ones need `DATABASE_URL`.

use std::path::PathBuf;
use std::process::Stdio;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use gracefully_jobs::{CancelOutcome, JobState, Jobs, NewJob};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{AssertSqlSafe, PgPool, SqlitePool};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

const JOBS: i64 = 1000;

enum Db {
    Sqlite(SqlitePool, #[allow(dead_code)] tempfile::TempDir),
    Postgres(PgPool, String),
}

/// One store, shared by this process and the worker processes it starts.
struct Scenario {
    database: String,
    schema: String,
    jobs: Jobs,
    db: Db,
}

struct Worker {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Scenario {
    async fn sqlite() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs.db");
        let database = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&database)
            .unwrap()
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options)
            .await
            .unwrap();
        let jobs = Jobs::sqlite(pool.clone()).await.unwrap();
        sqlx::query("CREATE TABLE effects (job INTEGER NOT NULL, pid INTEGER NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        Scenario {
            database,
            schema: String::new(),
            jobs,
            db: Db::Sqlite(pool, dir),
        }
    }

    async fn postgres() -> Scenario {
        let database = std::env::var("DATABASE_URL").expect("needs PostgreSQL: set DATABASE_URL");
        let pool = PgPool::connect(&database).await.unwrap();
        let schema = format!("jobs_proc_{:016x}", unique());
        let jobs = Jobs::postgres_in_schema(pool.clone(), &schema)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TABLE \"{schema}\".effects (job bigint NOT NULL, pid bigint NOT NULL)"
        )))
        .execute(&pool)
        .await
        .unwrap();
        Scenario {
            database,
            schema: schema.clone(),
            jobs,
            db: Db::Postgres(pool, schema),
        }
    }

    /// A worker process on this store, started and ready.
    async fn worker(&self, extra: &[&str]) -> Worker {
        let mut cmd = Command::new(example("jobs_worker"));
        cmd.args(["--database", &self.database]);
        if !self.schema.is_empty() {
            cmd.args(["--schema", &self.schema]);
        }
        let mut child = cmd
            .args(extra)
            .env("RUST_LOG", "gracefully_jobs=warn,gracefully_host=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker example");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the worker is ready within 30 s")
            .unwrap();
        assert_eq!(first.as_deref(), Some("ready"), "the worker's first line");
        Worker { child, lines }
    }

    async fn enqueue(&self, n: i64) {
        let jobs = (0..n).map(|i| NewJob::new("work", &i));
        assert_eq!(self.jobs.enqueue_batch(jobs).await.unwrap(), n as u64);
    }

    async fn scalar(&self, sql: &str) -> i64 {
        match &self.db {
            Db::Sqlite(pool, _) => {
                let sql = sql
                    .replace("{jobs}", "gracefully_jobs")
                    .replace("{effects}", "effects");
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Db::Postgres(pool, schema) => {
                let sql = sql
                    .replace("{jobs}", &format!("\"{schema}\".jobs"))
                    .replace("{effects}", &format!("\"{schema}\".effects"));
                sqlx::query_scalar(AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        }
    }

    /// On PostgreSQL, waits until no session of `application_name` is left (a killed
    /// worker's backends end once their last statement has run and they find the client
    /// gone). SQLite runs in the worker's process: nothing of it outlives the process.
    async fn wait_sessions_gone(&self, application_name: &str, within: Duration) {
        let Db::Postgres(pool, _) = &self.db else {
            return;
        };
        let deadline = Instant::now() + within;
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND datname = current_database()",
            )
            .bind(application_name)
            .fetch_one(pool)
            .await
            .unwrap();
            if left == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{left} sessions of the killed worker still there after {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn succeeded(&self) -> i64 {
        self.jobs.counts(Some("work")).await.unwrap().succeeded as i64
    }

    async fn wait_succeeded(&self, at_least: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.succeeded().await < at_least {
            assert!(
                Instant::now() < deadline,
                "{at_least} jobs succeeded within {within:?}: {:?}",
                self.jobs.counts(None).await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every job succeeded, its effect applied exactly once, and no attempt used up.
    async fn assert_all_done_exactly_once(&self) {
        let counts = self.jobs.counts(None).await.unwrap();
        assert_eq!(counts.succeeded as i64, JOBS, "{counts:?}");
        let rows = self.scalar("SELECT count(*) FROM {effects}").await;
        let distinct = self
            .scalar("SELECT count(DISTINCT job) FROM {effects}")
            .await;
        assert_eq!(
            (rows, distinct),
            (JOBS, JOBS),
            "one effect per job, none twice"
        );
        let attempts = self
            .scalar("SELECT CAST(coalesce(sum(attempts), 0) AS BIGINT) FROM {jobs}")
            .await;
        assert_eq!(attempts, 0, "no job used an attempt");
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if let Db::Postgres(pool, schema) = &self.db {
            let (pool, schema) = (pool.clone(), schema.clone());
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let _ =
                            sqlx::query(AssertSqlSafe(format!("DROP SCHEMA \"{schema}\" CASCADE")))
                                .execute(&pool)
                                .await;
                    });
            })
            .join();
        }
    }
}

impl Worker {
    fn signal(&self, signal: i32) {
        let pid = self.child.id().expect("the worker runs") as i32;
        // SAFETY: `kill(2)` with a live child's pid and a valid signal number; no memory is
        // involved.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill({pid}, {signal})");
    }

    /// Waits for the exit; returns the exit code and the report's counters.
    async fn exit(mut self, within: Duration) -> (Option<i32>, Vec<(String, u64)>) {
        let status = tokio::time::timeout(within, self.child.wait())
            .await
            .expect("the worker exits in time")
            .unwrap();
        let mut details = Vec::new();
        while let Ok(Some(line)) = self.lines.next_line().await {
            if let Some(d) = line.strip_prefix("detail ")
                && let Some((k, v)) = d.split_once('=')
                && let Ok(n) = v.parse()
            {
                details.push((k.to_owned(), n));
            }
            println!("worker: {line}");
        }
        (status.code(), details)
    }

    async fn next_line(&mut self, within: Duration) -> String {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .expect("a line from the worker in time")
            .unwrap()
            .expect("the worker's output goes on")
    }
}

fn detail(details: &[(String, u64)], key: &str) -> u64 {
    details
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no `{key}` in {details:?}"))
        .1
}

fn unique() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The example binary `name`: `cargo test` builds it; built here only when missing (a
/// nested `cargo build` could wait on the outer cargo's lock).
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", "gracefully-jobs", "--example", name])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the example failed");
        });
    }
    assert!(path.exists(), "{} not built", path.display());
    path
}

// ---------------------------------------------------------------------------------------
// SIGTERM

/// Drain budget 1 ms (shutdown 3 s, cancel grace 2.999 s): the jobs running at the
/// SIGTERM are cancelled almost at once, so the shutdown really interrupts some. Handlers
/// of 100 ms keep 16 running at nearly every instant, however loaded the machine (with
/// 20 ms ones a loaded run once found none running at the SIGTERM).
const SIGTERM_ARGS: &[&str] = &[
    "--concurrency",
    "16",
    "--handler-ms",
    "100",
    "--shutdown-ms",
    "3000",
    "--cancel-grace-ms",
    "2999",
];

async fn sigterm_mid_run(s: Scenario) {
    s.enqueue(JOBS).await;
    let first = s.worker(SIGTERM_ARGS).await;
    s.wait_succeeded(JOBS / 2, Duration::from_secs(60)).await;
    first.signal(libc::SIGTERM);
    let (code, details) = first.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "a clean shutdown");
    let interrupted = detail(&details, "interrupted and returned");
    assert!(
        interrupted > 0,
        "the shutdown interrupted running jobs: {details:?}"
    );
    assert_eq!(detail(&details, "aborted"), 0);
    let counts = s.jobs.counts(None).await.unwrap();
    assert_eq!(counts.running, 0, "nothing left held: {counts:?}");
    assert!(counts.interrupted >= interrupted, "{counts:?}");
    println!("first worker stopped: {details:?}; {counts:?}");

    let second = s.worker(SIGTERM_ARGS).await;
    s.wait_succeeded(JOBS, Duration::from_secs(60)).await;
    second.signal(libc::SIGTERM);
    let (code, _) = second.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    s.assert_all_done_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigterm_mid_run_every_job_done_once_and_no_attempt_used() {
    sigterm_mid_run(Scenario::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_sigterm_mid_run_every_job_done_once_and_no_attempt_used() {
    sigterm_mid_run(Scenario::postgres().await).await;
}

// ---------------------------------------------------------------------------------------
// SIGKILL

const SIGKILL_ARGS: &[&str] = &[
    "--concurrency",
    "16",
    "--handler-ms",
    "20",
    "--lease-ms",
    "1000",
    "--heartbeat-ms",
    "200",
];

async fn sigkill_mid_run(s: Scenario) {
    s.enqueue(JOBS).await;
    let app = format!("jobs_kill_{:08x}", unique() as u32);
    let mut args = SIGKILL_ARGS.to_vec();
    args.extend(["--app-name", app.as_str()]);
    let first = s.worker(&args).await;
    s.wait_succeeded(JOBS / 2, Duration::from_secs(60)).await;
    first.signal(libc::SIGKILL);
    let (code, _) = first.exit(Duration::from_secs(10)).await;
    assert_eq!(code, None, "killed by a signal");
    // A statement sent just before the kill still runs to its end on the server (a fetch
    // that claims more jobs, a COMMIT): count what the dead worker held only once its
    // sessions are gone. (A fixed 300 ms was not always enough on a loaded machine.)
    s.wait_sessions_gone(&app, Duration::from_secs(30)).await;
    let held = s.jobs.counts(None).await.unwrap().running as i64;
    assert!(held > 0, "the dead worker held jobs");
    let held_jobs = s
        .jobs
        .list(None, Some(JobState::Running), u32::MAX)
        .await
        .unwrap();
    assert_eq!(held_jobs.len() as i64, held);
    // Leases the first worker lost while it lived (a process starved of CPU for longer
    // than its lease on a loaded machine loses some to itself, legitimately): counted
    // apart from the dead worker's.
    let losses_before = s
        .scalar("SELECT CAST(coalesce(sum(lease_losses), 0) AS BIGINT) FROM {jobs}")
        .await;
    let killed_at = Instant::now();

    let second = s.worker(SIGKILL_ARGS).await;
    s.wait_succeeded(JOBS, Duration::from_secs(60)).await;
    println!(
        "all done {:?} after the kill; {held} jobs were held by the dead worker",
        killed_at.elapsed()
    );
    second.signal(libc::SIGTERM);
    let (code, details) = second.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    let reclaimed = detail(&details, "reclaimed") as i64;
    assert!(reclaimed >= held, "every held job reclaimed: {details:?}");
    s.assert_all_done_exactly_once().await;
    for job in held_jobs {
        let now = s.jobs.get(job.id).await.unwrap().unwrap();
        assert_eq!(
            now.lease_losses,
            job.lease_losses + 1,
            "a job the dead worker held lost its lease once: {now:?}"
        );
    }
    let losses = s
        .scalar("SELECT CAST(coalesce(sum(lease_losses), 0) AS BIGINT) FROM {jobs}")
        .await;
    assert_eq!(
        losses - losses_before,
        reclaimed,
        "every lease loss after the kill is a reclaim the second worker counted"
    );
    if losses_before > 0 || reclaimed > held {
        println!(
            "leases lost by a live worker: {losses_before} before the kill, {} after",
            reclaimed - held
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_mid_run_recovered_after_the_lease_with_effects_exactly_once() {
    sigkill_mid_run(Scenario::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_sigkill_mid_run_recovered_after_the_lease_with_effects_exactly_once() {
    sigkill_mid_run(Scenario::postgres().await).await;
}

// ---------------------------------------------------------------------------------------
// Cancel from another process

async fn cancel_from_another_process(s: Scenario) -> Duration {
    let mut worker = s.worker(&["--mode", "wait"]).await;
    let id = s.jobs.enqueue(NewJob::new("work", &1)).await.unwrap().id;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.jobs.get(id).await.unwrap().unwrap().state != JobState::Running {
        assert!(Instant::now() < deadline, "the job started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = Instant::now();
    assert_eq!(
        s.jobs.cancel(id, "operator said stop").await.unwrap(),
        CancelOutcome::Requested
    );
    let line = worker.next_line(Duration::from_secs(5)).await;
    let latency = sent.elapsed();
    assert_eq!(
        line,
        format!("token fired {id} Requested operator said stop")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while s.jobs.get(id).await.unwrap().unwrap().state != JobState::Cancelled {
        assert!(Instant::now() < deadline, "the job ended cancelled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    worker.signal(libc::SIGTERM);
    let (code, details) = worker.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert_eq!(detail(&details, "cancelled"), 1);
    let info = s.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 0, "a cancel is not a failure");
    latency
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_cancel_of_a_running_job_from_another_process_fires_its_token() {
    let latency = cancel_from_another_process(Scenario::sqlite().await).await;
    println!(
        "SQLite: cancel → token fired in the worker process: {latency:?} (poll interval 500 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_cancel_of_a_running_job_from_another_process_fires_its_token() {
    let latency = cancel_from_another_process(Scenario::postgres().await).await;
    println!("PostgreSQL: cancel → token fired in the worker process: {latency:?} (NOTIFY)");
}

// ---------------------------------------------------------------------------------------
// A second SIGTERM: the abort

/// Four jobs running handlers of a minute, then SIGTERM twice: the host skips to its abort,
/// and the jobs still held go back to the queue before the process exits — not left
/// `running` until their lease expires (which also cost each a lease loss). The host drops
/// the aborted worker on its dropper thread; the drop's own writes must land before the
/// report is printed and the process ends.
async fn second_sigterm_returns_running_jobs(s: Scenario) {
    let mut ids = Vec::new();
    for i in 0..4 {
        ids.push(s.jobs.enqueue(NewJob::new("work", &i)).await.unwrap().id);
    }
    let worker = s
        .worker(&[
            "--concurrency",
            "4",
            "--handler-ms",
            "60000",
            "--shutdown-ms",
            "10000",
            "--cancel-grace-ms",
            "9000",
        ])
        .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.jobs.counts(None).await.unwrap().running < 4 {
        assert!(Instant::now() < deadline, "the four jobs started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.signal(libc::SIGTERM);
    tokio::time::sleep(Duration::from_millis(100)).await;
    worker.signal(libc::SIGTERM);
    let (code, details) = worker.exit(Duration::from_secs(10)).await;
    assert_ne!(code, Some(0), "a second signal aborts: {details:?}");
    // At most the four, never counted twice; fewer if the loop's own write of an ending
    // had committed when the abort dropped it (rewritten fenced: a no-op, not counted).
    let reported = detail(&details, "interrupted and returned") + detail(&details, "aborted");
    assert!(reported <= 4, "{details:?}");
    // Read at once: nothing may still be on its way.
    let counts = s.jobs.counts(None).await.unwrap();
    assert_eq!(counts.running, 0, "no job left held: {counts:?}");
    assert_eq!(counts.interrupted, 4, "{counts:?}");
    for id in &ids {
        let info = s.jobs.get(*id).await.unwrap().unwrap();
        assert_eq!(
            (info.attempts, info.lease_losses),
            (0, 0),
            "job {id:?}: the abort used nothing up"
        );
    }

    let second = s.worker(&["--handler-ms", "20"]).await;
    s.wait_succeeded(4, Duration::from_secs(30)).await;
    second.signal(libc::SIGTERM);
    let (code, _) = second.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert_eq!(s.scalar("SELECT count(*) FROM {effects}").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_second_sigterm_returns_the_running_jobs_before_the_process_exits() {
    second_sigterm_returns_running_jobs(Scenario::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_a_second_sigterm_returns_the_running_jobs_before_the_process_exits() {
    second_sigterm_returns_running_jobs(Scenario::postgres().await).await;
}

// ---------------------------------------------------------------------------------------
// PostgreSQL: lease takeover, killed connections

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_a_paused_worker_loses_its_jobs_to_another_and_its_stale_attempts_complete_nothing()
 {
    let s = Scenario::postgres().await;
    s.enqueue(JOBS).await;
    // A "stuck" worker: it takes 4 jobs and sits on them (each would take a minute).
    let lease = ["--lease-ms", "1000", "--heartbeat-ms", "200"];
    let mut stuck_args = vec![
        "--concurrency",
        "4",
        "--prefetch",
        "0",
        "--handler-ms",
        "60000",
    ];
    stuck_args.extend(lease);
    let stuck = s.worker(&stuck_args).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.jobs.counts(None).await.unwrap().running < 4 {
        assert!(Instant::now() < deadline, "the stuck worker took its jobs");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stuck.signal(libc::SIGSTOP);
    let mut fast_args = vec!["--concurrency", "16", "--handler-ms", "20"];
    fast_args.extend(lease);
    let fast = s.worker(&fast_args).await;
    // The fast worker does the rest, and the stuck one's 4 once their lease expired.
    s.wait_succeeded(JOBS, Duration::from_secs(60)).await;
    stuck.signal(libc::SIGCONT);
    // Its heartbeat finds the leases gone: the tokens fire, the attempts are fenced.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stuck.signal(libc::SIGTERM);
    fast.signal(libc::SIGTERM);
    let (code, stuck_details) = stuck.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    let (code, fast_details) = fast.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0));
    assert_eq!(detail(&stuck_details, "lease lost"), 4, "{stuck_details:?}");
    assert_eq!(detail(&stuck_details, "succeeded"), 0);
    assert_eq!(detail(&fast_details, "reclaimed"), 4, "{fast_details:?}");
    s.assert_all_done_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn postgres_killed_database_connections_mid_run_lose_nothing() {
    let s = Scenario::postgres().await;
    s.enqueue(JOBS).await;
    let app = format!("jobs_kill_{:x}", unique() & 0xffff_ffff);
    let worker = s
        .worker(&[
            "--concurrency",
            "16",
            "--handler-ms",
            "20",
            "--app-name",
            &app,
        ])
        .await;
    let Db::Postgres(pool, _) = &s.db else {
        unreachable!()
    };
    let mut killed = 0;
    for round in 1..=3 {
        s.wait_succeeded(JOBS * round / 5, Duration::from_secs(60))
            .await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE application_name = $1 AND datname = current_database()",
        )
        .bind(&app)
        .fetch_one(pool)
        .await
        .unwrap();
        killed += n;
    }
    assert!(killed > 0, "connections were killed");
    s.wait_succeeded(JOBS, Duration::from_secs(120)).await;
    worker.signal(libc::SIGTERM);
    let (code, details) = worker.exit(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{details:?}");
    println!("killed {killed} connections; {details:?}");
    let counts = s.jobs.counts(None).await.unwrap();
    assert_eq!(counts.succeeded as i64, JOBS, "{counts:?}");
    let rows = s.scalar("SELECT count(*) FROM {effects}").await;
    let distinct = s.scalar("SELECT count(DISTINCT job) FROM {effects}").await;
    assert_eq!(
        (rows, distinct),
        (JOBS, JOBS),
        "one effect per job, none twice"
    );
}
