//! The cost of gracefully-sqlx per uncancelled query (`SELECT 1`), against plain sqlx in the
//! same run: against a sqlx pool with the same (default) options, and against one bare
//! connection with ours not pinging on checkout (the same work on both sides: one
//! statement). Prints each side's time and the ratio.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p gracefully-sqlx --bench overhead
//! ```
//!
//! Without `DATABASE_URL` only SQLite is measured. Single queries of the two sides
//! alternate, on connections opened afresh for every round, on a single-threaded runtime;
//! the SQLite lines run with the runtime thread and the connections' worker threads on one
//! CPU; against a pool, every query starts from an idle runtime. Why each of these is
//! needed: see `overhead` and `Pair::settle`.

use std::str::FromStr;
use std::time::{Duration, Instant};

use gracefully::CancellationSource;
use gracefully_sqlx::{Error, GracefulPoolOptions, PgGracefulPool, SqliteGracefulPool};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Connection, Pool, Postgres, Sqlite};

/// Uncancelled `SELECT 1`s per round and side (after `WARMUP` of each), and rounds, each
/// on fresh connections.
const QUERIES: usize = 200;
const WARMUP: usize = 20;
/// Against a sqlx pool, every query first waits `QUIET` (see `Pair::settle`), so there are
/// fewer of them per round.
const QUIET: Duration = Duration::from_millis(1);
const QUIET_QUERIES: usize = 60;
const ROUNDS: usize = 41;

/// The two comparisons, each printed as one line.
const SETUPS: [(Theirs, &str); 2] = [
    (
        Theirs::Pool,
        "SELECT 1, sqlx's default pool options on both",
    ),
    (
        Theirs::Bare,
        "SELECT 1, against one bare sqlx connection; no acquire ping",
    ),
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; this program takes no arguments. Each line runs on a
    // thread of its own with a single-threaded runtime (see `measure`).
    println!("gracefully-sqlx overhead per uncancelled query ({ROUNDS} rounds, medians)");
    match std::env::var("DATABASE_URL") {
        Ok(url) => {
            let options = PgConnectOptions::from_str(&url)?
                .application_name(&format!("gs_overhead_{}", std::process::id()));
            for (theirs, setup) in SETUPS {
                let measured = measure(Target::Pg(options.clone()), theirs, false)
                    .map_err(|error| -> Box<dyn std::error::Error> { error })?;
                print_overhead("pg", setup, &measured);
            }
        }
        Err(_) => println!("pg: skipped (set DATABASE_URL to measure PostgreSQL)"),
    }
    let dir = std::env::temp_dir().join(format!("gs_overhead_{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let options = SqliteConnectOptions::new()
        .filename(dir.join("overhead.db"))
        .create_if_missing(true);
    for (theirs, setup) in SETUPS {
        let measured = measure(Target::Sqlite(options.clone()), theirs, true)
            .map_err(|error| -> Box<dyn std::error::Error> { error })?;
        print_overhead("sqlite", setup, &measured);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

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

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
