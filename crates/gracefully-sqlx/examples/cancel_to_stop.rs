//! Measures, in one run, what the issue asks for:
//!
//! * **cancel-to-stop**: the time from the cancel until the database no longer runs the
//!   statement — for gracefully-sqlx, and for plain sqlx with the query future dropped (the
//!   anchor: sqlx has no cancel, so the statement runs to its end; the anchor's statement is
//!   capped at about 3 s so the run stays short);
//! * **overhead** per uncancelled query (`SELECT 1`): gracefully-sqlx's `run` against plain
//!   sqlx, on pools with the same (default) options, and against one bare connection with
//!   ours not pinging on checkout (the same work on both sides: one statement). Single
//!   queries of the two sides alternate, on connections opened afresh for every round, on a
//!   single-threaded runtime; the SQLite lines run with the runtime thread and the
//!   connections' worker threads on one CPU; against a pool, every query starts from an
//!   idle runtime. Why each of these is needed: see `overhead` and `Pair::settle`.
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
/// Uncancelled `SELECT 1`s per round and side (after `WARMUP` of each), and rounds, each
/// on fresh connections.
const QUERIES: usize = 200;
const WARMUP: usize = 20;
/// Against a sqlx pool, every query first waits `QUIET` (see `Pair::settle`), so there are
/// fewer of them per round.
const QUIET: Duration = Duration::from_millis(1);
const QUIET_QUERIES: usize = 60;
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

    // Overhead per uncancelled query.
    for (theirs, setup) in [
        (
            Theirs::Pool,
            "SELECT 1, sqlx's default pool options on both",
        ),
        (
            Theirs::Bare,
            "SELECT 1, against one bare sqlx connection; no acquire ping",
        ),
    ] {
        let measured = measure(Target::Pg(options.clone()), theirs, false)
            .map_err(|error| -> Box<dyn std::error::Error> { error })?;
        print_overhead("pg", setup, &measured);
    }
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

    // Overhead per uncancelled query.
    for (theirs, setup) in [
        (
            Theirs::Pool,
            "SELECT 1, sqlx's default pool options on both",
        ),
        (
            Theirs::Bare,
            "SELECT 1, against one bare sqlx connection; no acquire ping",
        ),
    ] {
        let measured = measure(Target::Sqlite(options.clone()), theirs, true)
            .map_err(|error| -> Box<dyn std::error::Error> { error })?;
        print_overhead("sqlite", setup, &measured);
    }
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

/// Error type of the measurement threads.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the plain-sqlx side of an overhead line queries.
#[derive(Debug, Clone, Copy)]
enum Theirs {
    /// A sqlx pool with default options, against ours with default options.
    Pool,
    /// One bare connection, against ours without the acquire-time ping.
    Bare,
}

/// Where an overhead line connects.
#[derive(Debug, Clone)]
enum Target {
    Pg(PgConnectOptions),
    Sqlite(SqliteConnectOptions),
}

/// The plain-sqlx side: a pool, or one bare connection.
enum Plain<DB: sqlx::Database> {
    Pool(Pool<DB>),
    Bare(tokio::sync::Mutex<DB::Connection>),
}

/// Both sides of one overhead round, freshly connected.
enum Pair {
    Pg(PgGracefulPool, Plain<Postgres>),
    Sqlite(SqliteGracefulPool, Plain<Sqlite>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Ours,
    Theirs,
}

impl Pair {
    async fn connect(target: &Target, theirs: Theirs) -> Result<Pair, BoxError> {
        Ok(match (target, theirs) {
            (Target::Pg(options), Theirs::Pool) => Pair::Pg(
                GracefulPoolOptions::new()
                    .connect_with(options.clone())
                    .await?,
                Plain::Pool(PgPoolOptions::new().connect_with(options.clone()).await?),
            ),
            (Target::Pg(options), Theirs::Bare) => Pair::Pg(
                GracefulPoolOptions::new()
                    .pool_options(PgPoolOptions::new().test_before_acquire(false))
                    .connect_with(options.clone())
                    .await?,
                Plain::Bare(tokio::sync::Mutex::new(
                    PgConnection::connect_with(options).await?,
                )),
            ),
            (Target::Sqlite(options), Theirs::Pool) => Pair::Sqlite(
                GracefulPoolOptions::new()
                    .connect_with(options.clone())
                    .await?,
                Plain::Pool(
                    SqlitePoolOptions::new()
                        .connect_with(options.clone())
                        .await?,
                ),
            ),
            (Target::Sqlite(options), Theirs::Bare) => Pair::Sqlite(
                GracefulPoolOptions::new()
                    .pool_options(SqlitePoolOptions::new().test_before_acquire(false))
                    .connect_with(options.clone())
                    .await?,
                Plain::Bare(tokio::sync::Mutex::new(
                    sqlx::SqliteConnection::connect_with(options).await?,
                )),
            ),
        })
    }

    /// One uncancelled `SELECT 1` by `side`, timed from the call to the result. Ours runs on
    /// a fresh token, as a request would bring one.
    async fn timed(&self, side: Side) -> Duration {
        self.settle().await;
        let started = Instant::now();
        match (self, side) {
            (Pair::Pg(pool, _), Side::Ours) => {
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
            (Pair::Pg(_, Plain::Pool(pool)), Side::Theirs) => {
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(pool)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
            (Pair::Pg(_, Plain::Bare(conn)), Side::Theirs) => {
                let mut conn = conn.lock().await;
                let one: i32 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
            (Pair::Sqlite(pool, _), Side::Ours) => {
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
            (Pair::Sqlite(_, Plain::Pool(pool)), Side::Theirs) => {
                let one: i64 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(pool)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
            (Pair::Sqlite(_, Plain::Bare(conn)), Side::Theirs) => {
                let mut conn = conn.lock().await;
                let one: i64 = sqlx::query_scalar("SELECT 1")
                    .fetch_one(&mut *conn)
                    .await
                    .expect("SELECT 1");
                assert_eq!(one, 1);
            }
        }
        started.elapsed()
    }

    /// Before every query of either side, untimed: against a sqlx pool, waits until the
    /// machine is quiet. sqlx takes a connection back in a spawned task that pings it, after
    /// its caller has the result; that ping must not land in the next query's time, and
    /// waiting for it must not spin either (spinning for it, the query right after the spin
    /// took ~10 µs longer when it was ours, not when it was sqlx's: ours came out +30 %, or
    /// bimodal, on one CPU, and the same ours against a bare connection doing the same ping
    /// and query measured +3 %). So the runtime
    /// sleeps `QUIET` (its timer granularity, 1 ms), the release task runs as it would, and
    /// every query of both sides starts from an idle runtime, as a request does on a lightly
    /// loaded service. Against a bare connection nothing is left behind: queries run back to
    /// back.
    async fn settle(&self) {
        async fn quiet<DB: sqlx::Database>(pool: &Pool<DB>) {
            let started = Instant::now();
            loop {
                tokio::time::sleep(QUIET).await;
                let taken_back = pool.num_idle() >= pool.size() as usize;
                if taken_back || started.elapsed() > Duration::from_secs(1) {
                    break;
                }
            }
        }
        match self {
            Pair::Pg(_, Plain::Pool(pool)) => quiet(pool).await,
            Pair::Sqlite(_, Plain::Pool(pool)) => quiet(pool).await,
            Pair::Pg(_, Plain::Bare(_)) | Pair::Sqlite(_, Plain::Bare(_)) => {}
        }
    }

    /// Pairs of queries per round: fewer when each query waits `QUIET` first.
    fn queries(&self) -> usize {
        match self {
            Pair::Pg(_, Plain::Pool(_)) | Pair::Sqlite(_, Plain::Pool(_)) => QUIET_QUERIES,
            Pair::Pg(_, Plain::Bare(_)) | Pair::Sqlite(_, Plain::Bare(_)) => QUERIES,
        }
    }

    async fn close(self) {
        match self {
            Pair::Pg(ours, plain) => {
                ours.close().await;
                match plain {
                    Plain::Pool(pool) => pool.close().await,
                    Plain::Bare(conn) => drop(conn.into_inner().close().await),
                }
            }
            Pair::Sqlite(ours, plain) => {
                ours.close().await;
                match plain {
                    Plain::Pool(pool) => pool.close().await,
                    Plain::Bare(conn) => drop(conn.into_inner().close().await),
                }
            }
        }
    }
}

/// Measures one overhead line on a thread of its own, running a single-threaded runtime
/// (the thread that polls the socket runs the query: no hand-off between runtime threads),
/// that thread pinned to one CPU if `pin` (see `overhead`). Returns the measurement and
/// where it ran.
fn measure(target: Target, theirs: Theirs, pin: bool) -> Result<Overhead, BoxError> {
    std::thread::spawn(move || {
        let placement = if !pin {
            "threads not pinned".to_owned()
        } else {
            match pin_this_thread() {
                Some(cpu) => format!("runtime and SQLite worker threads on CPU {cpu}"),
                None => "NOT pinned (taskset failed): thread placement may decide".to_owned(),
            }
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut measured = runtime.block_on(overhead(&target, theirs))?;
        measured.placement = placement;
        Ok(measured)
    })
    .join()
    .expect("measurement thread")
}

/// Pins the calling thread to one CPU (the last it may use) with util-linux's `taskset`;
/// threads it starts afterwards inherit that. Returns the CPU, or `None` if that failed.
fn pin_this_thread() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let allowed = status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    // "0-1", "0,2-3", "5": the last CPU listed.
    let cpu = allowed.rsplit([',', '-']).next()?.to_owned();
    // "/proc/thread-self" links to "<pid>/task/<tid>".
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    let tid = link.file_name()?.to_str()?.to_owned();
    let pinned = std::process::Command::new("taskset")
        .args(["-p", "-c", &cpu, &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?
        .success();
    pinned.then_some(cpu)
}

/// Per-query time of each side, as its caller sees it: `ROUNDS` rounds, each on freshly
/// opened connections, of `QUERIES` (against a pool: `QUIET_QUERIES`) pairs of single
/// queries (ours then theirs, then theirs then ours, …).
///
/// What a `SELECT 1` costs here is mostly thread wake-ups — of the PostgreSQL backend
/// process, of SQLite's per-connection worker thread — and a wake-up costs a few µs if the
/// woken thread lands on the waker's CPU, tens of µs if it must wake another, idle, vCPU.
/// Where the scheduler puts a thread sticks to it for seconds, and each side has its own
/// backend or worker thread. So:
/// * batches (200 of ours, then 200 of theirs) compared two machine states, not two
///   libraries: single queries alternate instead;
/// * even alternating, one connection per side for the whole run compared two placement
///   draws (the SQLite "bimodal" results, +460 % one run, the reverse the next): every round
///   opens fresh connections, so each round is a new draw for both sides, and the median of
///   the per-round ratios is the answer; the interquartile range shows the luck left;
/// * SQLite: the runtime thread and the worker threads it starts are pinned to one CPU, so
///   every hand-off is a switch on that CPU for both sides, and what remains is the work.
///   (PostgreSQL's backends are the server's processes: not ours to pin.)
///
/// Against a sqlx pool, each query also waits first until the previous one's leftovers are
/// done (`Pair::settle`): sqlx's ping on release never lands in either side's time, so it is
/// *not* counted against sqlx.
async fn overhead(target: &Target, theirs: Theirs) -> Result<Overhead, BoxError> {
    // Per round: (ours ÷ theirs, ours, theirs), from each side's median query.
    let mut rounds = Vec::with_capacity(ROUNDS);
    let mut queries = 0;
    for _ in 0..ROUNDS {
        let pair = Pair::connect(target, theirs).await?;
        // Warm-up: connections opened and adopted, statements prepared, on both sides.
        for _ in 0..WARMUP {
            pair.timed(Side::Ours).await;
            pair.timed(Side::Theirs).await;
        }
        queries = pair.queries();
        let mut ours = Vec::with_capacity(queries);
        let mut plain = Vec::with_capacity(queries);
        for i in 0..queries {
            let order = if i % 2 == 0 {
                [Side::Ours, Side::Theirs]
            } else {
                [Side::Theirs, Side::Ours]
            };
            for side in order {
                let took = pair.timed(side).await;
                match side {
                    Side::Ours => ours.push(took),
                    Side::Theirs => plain.push(took),
                }
            }
        }
        pair.close().await;
        let (ours, plain) = (median(&mut ours), median(&mut plain));
        rounds.push((ours.as_secs_f64() / plain.as_secs_f64(), ours, plain));
    }
    rounds.sort_by(|x, y| x.0.total_cmp(&y.0));
    let quartile = |q: usize| rounds[(rounds.len() - 1) * q / 4];
    // The times shown are the median round's (absolute times differ between rounds far more
    // than the ratio does: each round is a new placement draw).
    let (ratio, ours, theirs) = quartile(2);
    Ok(Overhead {
        ours,
        theirs,
        ratio,
        spread: (quartile(1).0, quartile(3).0),
        queries,
        placement: String::new(),
    })
}

/// One overhead measurement: the median and interquartile range of the per-round ratios
/// (ours ÷ theirs, each side's median query), and the median round's per-query times.
struct Overhead {
    ours: Duration,
    theirs: Duration,
    ratio: f64,
    spread: (f64, f64),
    queries: usize,
    placement: String,
}

fn print_overhead(db: &str, setup: &str, o: &Overhead) {
    let pct = |r: f64| (r - 1.0) * 100.0;
    println!(
        "{db} overhead per uncancelled query ({setup}): gracefully {:.1} µs, sqlx {:.1} µs \
         ({:+.1} %, the median of {ROUNDS} rounds on fresh connections, {} alternating pairs \
         each; middle half of rounds {:+.1} % to {:+.1} %; {})",
        us(o.ours),
        us(o.theirs),
        pct(o.ratio),
        o.queries,
        pct(o.spread.0),
        pct(o.spread.1),
        o.placement,
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
