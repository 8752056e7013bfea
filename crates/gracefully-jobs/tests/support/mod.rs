//! Shared by the SQLite and PostgreSQL tests: a store per test, a host around a worker,
//! and waiting for a condition.
#![allow(dead_code)]

pub mod contract;

use std::future::Future;
use std::time::Duration;

use gracefully_host::{Host, Lifetime, ShutdownReport};
use gracefully_jobs::{Jobs, Worker};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{PgPool, SqlitePool};

/// A job store of one test, and a pool on the same database for the test's own SQL.
pub struct Backend {
    pub jobs: Jobs,
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

pub enum Db {
    Sqlite(SqlitePool),
    Postgres { pool: PgPool, schema: String },
}

pub async fn sqlite() -> Backend {
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("jobs.db"))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let jobs = Jobs::sqlite(pool.clone()).await.unwrap();
    sqlx::query("CREATE TABLE effects (job INTEGER NOT NULL, note TEXT NOT NULL)")
        .execute(&pool)
        .await
        .unwrap();
    Backend {
        jobs,
        db: Db::Sqlite(pool),
        _dir: Some(dir),
    }
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").expect("needs PostgreSQL: set DATABASE_URL")
}

/// A fresh schema of its own, so tests run in parallel with each other and with other
/// suites on the same database.
pub async fn postgres() -> Backend {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .connect(&database_url())
        .await
        .unwrap();
    let schema = format!("jobs_test_{:016x}", fastrand_u64());
    let jobs = Jobs::postgres_in_schema(pool.clone(), &schema)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{schema}\".effects (job bigint NOT NULL, note text NOT NULL)"
    )))
    .execute(&pool)
    .await
    .unwrap();
    Backend {
        jobs,
        db: Db::Postgres { pool, schema },
        _dir: None,
    }
}

pub fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

impl Backend {
    /// Another handle on the same store, as another process would have (its own pool,
    /// its own registry of running jobs).
    pub async fn other_handle(&self) -> Jobs {
        match &self.db {
            Db::Sqlite(pool) => Jobs::sqlite(pool.clone()).await.unwrap(),
            Db::Postgres { schema, .. } => {
                let pool = PgPool::connect(&database_url()).await.unwrap();
                Jobs::postgres_in_schema(pool, schema).await.unwrap()
            }
        }
    }

    /// Runs `sql` (with `{jobs}` and `{effects}` as the tables' names).
    pub async fn exec(&self, sql: &str) -> u64 {
        match &self.db {
            Db::Sqlite(pool) => {
                let sql = sql
                    .replace("{jobs}", "gracefully_jobs")
                    .replace("{effects}", "effects");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Db::Postgres { pool, schema } => {
                let sql = sql
                    .replace("{jobs}", &format!("\"{schema}\".jobs"))
                    .replace("{effects}", &format!("\"{schema}\".effects"));
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(pool)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }

    /// A count from `sql`.
    pub async fn count(&self, sql: &str) -> i64 {
        match &self.db {
            Db::Sqlite(pool) => {
                let sql = sql
                    .replace("{jobs}", "gracefully_jobs")
                    .replace("{effects}", "effects");
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            Db::Postgres { pool, schema } => {
                let sql = sql
                    .replace("{jobs}", &format!("\"{schema}\".jobs"))
                    .replace("{effects}", &format!("\"{schema}\".effects"));
                sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        }
    }
}

impl Drop for Backend {
    /// Drops a PostgreSQL test's schema (CI's database is shared by every run).
    fn drop(&mut self) {
        if let Db::Postgres { pool, schema } = &self.db {
            let (pool, schema) = (pool.clone(), schema.clone());
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP SCHEMA \"{schema}\" CASCADE"
                        )))
                        .execute(&pool)
                        .await;
                    });
            })
            .join();
        }
    }
}

/// A host running `worker` (no signal handling), with a 2 s cancel grace.
pub fn hosted(worker: Worker, shutdown: Duration) -> (Host, Lifetime) {
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(shutdown)
        .cancel_grace(Duration::from_secs(2).min(shutdown / 2))
        .service("worker", worker)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    (host, lifetime)
}

/// Runs the host in a task; returns the handle of its report.
pub fn run(host: Host) -> tokio::task::JoinHandle<ShutdownReport> {
    tokio::spawn(host.run())
}

/// Waits until `check` is true, polling every 10 ms; panics after `within`.
pub async fn until<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The counter `key` of the worker's report row.
pub fn counter(report: &ShutdownReport, key: &str) -> u64 {
    report
        .entry("worker")
        .and_then(|e| e.detail(key))
        .unwrap_or_else(|| panic!("no `{key}` in the report:\n{report}"))
        .parse()
        .unwrap()
}
