//! Measures, in one run, what the issue asks for:
//!
//! * **cancel-to-stop**: the time from the cancel until the database no longer runs the
//!   statement — for gracefully-sqlx, and for plain sqlx with the query future dropped (the
//!   anchor: sqlx has no cancel, so the statement runs to its end; the anchor's statement is
//!   capped at about 3 s so the run stays short);
//! * **overhead** per uncancelled query (`SELECT 1`): gracefully-sqlx's `run` against plain
//!   sqlx on a pool with the same options.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo run -p gracefully-sqlx --release --example cancel_to_stop
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
/// Uncancelled `SELECT 1`s per round and contender, and paired rounds.
const QUERIES: usize = 200;
const ROUNDS: usize = 41;

/// An SQLite statement that runs for minutes.
const SQLITE_ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                              WHERE x < 1000000000) SELECT count(*) FROM c";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("gracefully-sqlx measurement ({} trials, medians)", TRIALS);
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
    println!(
        "pg cancel-to-stop: gracefully {:.1} ms, sqlx {:.0} ms",
        ms(median(&mut ours)),
        ms(median(&mut anchor))
    );
    println!(
        "    (gracefully min {:.1} / max {:.1} ms over {TRIALS}; sqlx: pg_sleep(3) dropped after \
         ~20 ms runs to its end, {ANCHOR_TRIALS} trials)",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
    );

    // Overhead per uncancelled query, both on sqlx's default pool options.
    let pool: PgGracefulPool = GracefulPoolOptions::new()
        .connect_with(options.clone())
        .await?;
    let plain: Pool<Postgres> = PgPoolOptions::new().connect_with(options).await?;
    let measured = overhead(
        || {
            let pool = pool.clone();
            async move {
                let token = CancellationSource::new().token();
                let one: i32 = pool
                    .run(&token, |conn| {
                        Box::pin(async move {
                            Ok::<_, Error>(
                                sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?,
                            )
                        })
                    })
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
        || {
            let plain = plain.clone();
            async move {
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&plain)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
    )
    .await;
    print_overhead(
        "pg",
        "SELECT 1, sqlx's default pool options on both",
        measured,
    );

    // The floor: one bare sqlx connection, no pool; ours without the acquire-time ping.
    let pool: PgGracefulPool = GracefulPoolOptions::new()
        .pool_options(PgPoolOptions::new().test_before_acquire(false))
        .connect(url)
        .await?;
    let bare = std::sync::Arc::new(tokio::sync::Mutex::new(PgConnection::connect(url).await?));
    let measured = overhead(
        || {
            let pool = pool.clone();
            async move {
                let token = CancellationSource::new().token();
                let one: i32 = pool
                    .run(&token, |conn| {
                        Box::pin(async move {
                            Ok::<_, Error>(
                                sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?,
                            )
                        })
                    })
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
        || {
            let bare = bare.clone();
            async move {
                let mut conn = bare.lock().await;
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
    )
    .await;
    print_overhead(
        "pg",
        "SELECT 1, against one bare sqlx connection; no acquire ping",
        measured,
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
    println!(
        "sqlite cancel-to-stop: gracefully {:.2} ms, sqlx {:.0} ms",
        ms(median(&mut ours)),
        ms(median(&mut anchor))
    );
    println!(
        "    (gracefully min {:.2} / max {:.2} ms over {TRIALS}; sqlx: a ~3 s recursive CTE dropped \
         after 100 ms runs to its end, {ANCHOR_TRIALS} trials)",
        ms(*ours.iter().min().unwrap()),
        ms(*ours.iter().max().unwrap()),
    );

    let pool: SqliteGracefulPool = GracefulPoolOptions::new()
        .connect_with(options.clone())
        .await?;
    let plain: Pool<Sqlite> = SqlitePoolOptions::new()
        .connect_with(options.clone())
        .await?;
    let measured = overhead(
        || {
            let pool = pool.clone();
            async move {
                let token = CancellationSource::new().token();
                let one: i64 = pool
                    .run(&token, |conn| {
                        Box::pin(async move {
                            Ok::<_, Error>(
                                sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?,
                            )
                        })
                    })
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
        || {
            let plain = plain.clone();
            async move {
                let one: i64 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&plain)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
    )
    .await;
    print_overhead(
        "sqlite",
        "SELECT 1, sqlx's default pool options on both",
        measured,
    );

    let pool: SqliteGracefulPool = GracefulPoolOptions::new()
        .pool_options(SqlitePoolOptions::new().test_before_acquire(false))
        .connect_with(options.clone())
        .await?;
    let bare = std::sync::Arc::new(tokio::sync::Mutex::new(
        sqlx::SqliteConnection::connect_with(&options).await?,
    ));
    let measured = overhead(
        || {
            let pool = pool.clone();
            async move {
                let token = CancellationSource::new().token();
                let one: i64 = pool
                    .run(&token, |conn| {
                        Box::pin(async move {
                            Ok::<_, Error>(
                                sqlx::query_scalar("SELECT 1").fetch_one(&mut *conn).await?,
                            )
                        })
                    })
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
        || {
            let bare = bare.clone();
            async move {
                let mut conn = bare.lock().await;
                let one: i64 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        },
    )
    .await;
    print_overhead(
        "sqlite",
        "SELECT 1, against one bare sqlx connection; no acquire ping",
        measured,
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

/// Per-query time of each contender, measured in `ROUNDS` short paired rounds (`QUERIES`
/// sequential queries of one, then of the other, the order alternating), so that load from
/// other processes hits both alike. Returns the median round of each and the median of the
/// per-round ratios (ours / theirs).
async fn overhead<A, AF, B, BF>(ours: A, theirs: B) -> Overhead
where
    A: Fn() -> AF,
    AF: std::future::Future<Output = ()>,
    B: Fn() -> BF,
    BF: std::future::Future<Output = ()>,
{
    for _ in 0..QUERIES {
        ours().await;
        theirs().await;
    }
    let mut a = Vec::new();
    let mut b = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let mut pair = [Duration::ZERO; 2];
        for which in [round % 2, 1 - round % 2] {
            let started = Instant::now();
            for _ in 0..QUERIES {
                if which == 0 {
                    ours().await;
                } else {
                    theirs().await;
                }
            }
            pair[which] = started.elapsed() / QUERIES as u32;
        }
        a.push(pair[0]);
        b.push(pair[1]);
        ratios.push(pair[0].as_secs_f64() / pair[1].as_secs_f64());
    }
    ratios.sort_by(f64::total_cmp);
    let quartile = |q: usize| ratios[(ratios.len() - 1) * q / 4];
    Overhead {
        ours: median(&mut a),
        theirs: median(&mut b),
        ratio: quartile(2),
        spread: (quartile(1), quartile(3)),
    }
}

/// One overhead measurement: median per-query times, and the median and interquartile
/// range of the per-round ratios (ours ÷ theirs; paired rounds, so load drift cancels).
struct Overhead {
    ours: Duration,
    theirs: Duration,
    ratio: f64,
    spread: (f64, f64),
}

fn print_overhead(db: &str, setup: &str, o: Overhead) {
    let pct = |r: f64| (r - 1.0) * 100.0;
    println!(
        "{db} overhead per uncancelled query ({setup}): gracefully {:.1} µs, sqlx {:.1} µs \
         ({:+.1} %, median of paired rounds; middle half of rounds {:+.1} % to {:+.1} %)",
        us(o.ours),
        us(o.theirs),
        pct(o.ratio),
        pct(o.spread.0),
        pct(o.spread.1),
    );
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
