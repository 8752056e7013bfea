//! How long after the cancel the database stops running the statement — for gracefully-sqlx,
//! and, in the same run, for plain sqlx with the query's future dropped (the anchor: sqlx has
//! no cancel, so the statement runs to its end; the anchor's statement is capped at about
//! 3 s so the run stays short). Prints both and their ratio.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p gracefully-sqlx --bench cancel_to_stop
//! ```
//!
//! Without `DATABASE_URL` only SQLite is measured. How "no longer runs" is observed:
//! PostgreSQL: a separate connection polls `pg_stat_activity` until the backend's state is
//! no longer `active`. SQLite (no server to ask): the connection's worker thread answers
//! again — for gracefully-sqlx, `run` returns only after a worker round trip queued behind
//! the statement (and the verification probe after it); for plain sqlx, the pool of one gets
//! its connection back, which sqlx does only after a worker round trip on release.

use std::str::FromStr;
use std::time::{Duration, Instant};

use gracefully::CancellationSource;
use gracefully_sqlx::{Error, GracefulPoolOptions, PgGracefulPool, SqliteGracefulPool};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, Pool, Postgres, Sqlite};

/// Trials of the cancelled statement for gracefully-sqlx (cheap) and for the anchor
/// (each costs the anchor statement's full run time).
const TRIALS: usize = 15;
const ANCHOR_TRIALS: usize = 2;

/// An SQLite statement that runs for minutes.
const SQLITE_ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                              WHERE x < 1000000000) SELECT count(*) FROM c";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; this program takes no arguments.
    println!("gracefully-sqlx cancel-to-stop ({TRIALS} trials, medians)");
    match std::env::var("DATABASE_URL") {
        Ok(url) => postgres(&url).await?,
        Err(_) => println!("pg: skipped (set DATABASE_URL to measure PostgreSQL)"),
    }
    sqlite().await?;
    Ok(())
}

// ------------------------------------------------------------------------------ PostgreSQL

async fn postgres(url: &str) -> Result<(), Box<dyn std::error::Error>> {
    let app = format!("gs_measure_{}", std::process::id());
    let options = PgConnectOptions::from_str(url)?.application_name(&app);
    let mut monitor = PgConnection::connect(url).await?;

    // gracefully-sqlx: pg_sleep(30), cancelled once it runs on the server.
    let pool: PgGracefulPool = GracefulPoolOptions::new()
        .pool_options(PgPoolOptions::new().max_connections(1))
        .connect_with(options.clone())
        .await?;
    let mut ours = Vec::new();
    for _ in 0..TRIALS {
        let source = CancellationSource::new();
        let token = source.token();
        let runner = pool.clone();
        let task = tokio::spawn(async move {
            runner
                .run(&token, |conn| {
                    Box::pin(async move {
                        sqlx::query("SELECT pg_sleep(30)")
                            .execute(&mut *conn)
                            .await?;
                        Ok::<_, Error>(())
                    })
                })
                .await
        });
        wait_until_running(&mut monitor, &app).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let cancelled = Instant::now();
        source.cancel();
        wait_until_stopped(&mut monitor, &app).await?;
        ours.push(cancelled.elapsed());
        assert!(task.await?.unwrap_err().is_cancelled());
    }

    // plain sqlx: the future is dropped; the server runs pg_sleep(3) to its end.
    let plain: Pool<Postgres> = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let mut anchor = Vec::new();
    for _ in 0..ANCHOR_TRIALS {
        let query_pool = plain.clone();
        let task =
            tokio::spawn(
                async move { sqlx::query("SELECT pg_sleep(3)").execute(&query_pool).await },
            );
        wait_until_running(&mut monitor, &app).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let dropped = Instant::now();
        task.abort(); // drops the query future
        wait_until_stopped(&mut monitor, &app).await?;
        anchor.push(dropped.elapsed());
        // The connection comes back once sqlx drained it.
        drop(plain.acquire().await?);
    }
    let (ours_median, anchor_median) = (median(&mut ours), median(&mut anchor));
    println!(
        "pg cancel-to-stop: gracefully {:.1} ms, sqlx {:.0} ms (sqlx takes {:.0}x as long)",
        ms(ours_median),
        ms(anchor_median),
        times(ours_median, anchor_median),
    );
    println!(
        "    (gracefully min {:.1} / max {:.1} ms over {TRIALS}; sqlx: pg_sleep(3) dropped after \
         ~20 ms runs to its end, {ANCHOR_TRIALS} trials)",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
    );
    Ok(())
}

async fn backends_running(monitor: &mut PgConnection, app: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state = 'active' AND position('pg_sleep' in query) > 0",
    )
    .bind(app)
    .fetch_one(monitor)
    .await
}

async fn wait_until_running(monitor: &mut PgConnection, app: &str) -> Result<(), sqlx::Error> {
    while backends_running(monitor, app).await? == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

async fn wait_until_stopped(monitor: &mut PgConnection, app: &str) -> Result<(), sqlx::Error> {
    while backends_running(monitor, app).await? > 0 {}
    Ok(())
}

// ---------------------------------------------------------------------------------- SQLite

async fn sqlite() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("gs_measure_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join("measure.db"))
        .create_if_missing(true);

    // Calibrate the anchor's statement to about 3 s.
    let mut conn = sqlx::SqliteConnection::connect_with(&options).await?;
    let probe = 1_000_000i64;
    let started = Instant::now();
    let _: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(bounded_cte(probe)))
        .fetch_one(&mut conn)
        .await?;
    let per_step = started.elapsed().as_secs_f64() / probe as f64;
    let anchor_steps = ((3.0 / per_step) as i64).max(probe);
    conn.close().await?;

    let pool: SqliteGracefulPool = GracefulPoolOptions::new()
        .pool_options(SqlitePoolOptions::new().max_connections(1))
        .connect_with(options.clone())
        .await?;
    let mut ours = Vec::new();
    for _ in 0..TRIALS {
        let source = CancellationSource::new();
        let token = source.token();
        let runner = pool.clone();
        let task = tokio::spawn(async move {
            runner
                .run(&token, |conn| {
                    Box::pin(async move {
                        Ok::<i64, Error>(
                            sqlx::query_scalar(SQLITE_ENDLESS)
                                .fetch_one(&mut *conn)
                                .await?,
                        )
                    })
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let cancelled = Instant::now();
        source.cancel();
        let result = task.await?;
        ours.push(cancelled.elapsed());
        assert!(result.unwrap_err().is_cancelled());
    }

    let plain: Pool<Sqlite> = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone())
        .await?;
    let mut anchor = Vec::new();
    let statement = bounded_cte(anchor_steps);
    for _ in 0..ANCHOR_TRIALS {
        let query_pool = plain.clone();
        let sql = statement.clone();
        let task = tokio::spawn(async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&query_pool)
                .await
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let dropped = Instant::now();
        task.abort();
        drop(plain.acquire().await?); // back only once the worker finished the statement
        anchor.push(dropped.elapsed());
    }
    let (ours_median, anchor_median) = (median(&mut ours), median(&mut anchor));
    println!(
        "sqlite cancel-to-stop: gracefully {:.2} ms, sqlx {:.0} ms (sqlx takes {:.0}x as long)",
        ms(ours_median),
        ms(anchor_median),
        times(ours_median, anchor_median),
    );
    println!(
        "    (gracefully min {:.2} / max {:.2} ms over {TRIALS}; sqlx: a ~3 s recursive CTE dropped \
         after 100 ms runs to its end, {ANCHOR_TRIALS} trials)",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn bounded_cte(steps: i64) -> String {
    format!(
        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {steps}) \
         SELECT count(*) FROM c"
    )
}

// ---------------------------------------------------------------------------------- common

/// The anchor's median as a multiple of ours.
fn times(ours: Duration, anchor: Duration) -> f64 {
    anchor.as_secs_f64() / ours.as_secs_f64()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
