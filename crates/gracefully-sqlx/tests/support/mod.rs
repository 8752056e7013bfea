//! What the PostgreSQL and SQLite tests share: the same runs, written once over either
//! database — walking a transaction's await points with `gracefully-test`, cancelling a pool
//! of one again and again, a body that gives up on its own statement — and the queries they
//! read results with.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, CancellationToken};
use gracefully_sqlx::{Backend, Error, GracefulPool};
use gracefully_test::{Outcome, Run, Walk, WalkReport, cancel_at_every_await};
use sqlx::{Database, Executor};

/// Runs the tests of one binary one at a time: several of them time how fast the database
/// stops, and the others (1000 cancels, walks) would load the same two cores meanwhile.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database the shared runs work on: sqlx's bounds for executing SQL text and reading an
/// integer, spelled out once (every `Backend` that sqlx can do that with is one).
pub trait TestDb: Backend {
    /// Runs `sql` (simple-query protocol: several statements allowed) on `conn`.
    fn execute(conn: &mut Self::Connection, sql: String) -> BoxFuture<'_, Result<(), Error>>;
    /// Reads one integer with `sql` on `conn`.
    fn integer(conn: &mut Self::Connection, sql: String) -> BoxFuture<'_, Result<i64, Error>>;
}

impl<DB> TestDb for DB
where
    DB: Backend,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    <DB as Database>::Arguments: sqlx::IntoArguments<DB>,
{
    fn execute(conn: &mut Self::Connection, sql: String) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(conn)
                .await?;
            Ok(())
        })
    }

    fn integer(conn: &mut Self::Connection, sql: String) -> BoxFuture<'_, Result<i64, Error>> {
        Box::pin(async move {
            let query = sqlx::query_scalar::<DB, i64>(sqlx::AssertSqlSafe(sql));
            Ok(query.fetch_one(conn).await?)
        })
    }
}

/// Runs `sql` through `pool` on a token that never fires.
pub async fn execute<DB: TestDb>(pool: &GracefulPool<DB>, sql: impl Into<String>) {
    let sql = sql.into();
    let shown = sql.clone();
    pool.run(&CancellationToken::never(), |conn| DB::execute(conn, sql))
        .await
        .unwrap_or_else(|error| panic!("{shown}: {error}"));
}

/// Starts an operation that runs `sql` through `pool` on `token`, in a task of its own
/// (so the test can watch the server, cancel, or abort it meanwhile).
pub fn spawn_execute<DB: TestDb>(
    pool: &GracefulPool<DB>,
    token: CancellationToken,
    sql: &str,
) -> tokio::task::JoinHandle<Result<(), Error>> {
    let (pool, sql) = (pool.clone(), sql.to_owned());
    tokio::spawn(async move { pool.run(&token, |conn| DB::execute(conn, sql)).await })
}

/// Reads one integer with `sql` through `pool`, on `token`.
pub async fn integer_on<DB: TestDb>(
    pool: &GracefulPool<DB>,
    token: &CancellationToken,
    sql: impl Into<String>,
) -> Result<i64, Error> {
    let sql = sql.into();
    pool.run(token, |conn| DB::integer(conn, sql)).await
}

/// Reads one integer with `sql` through `pool`, on a token that never fires.
pub async fn integer<DB: TestDb>(pool: &GracefulPool<DB>, sql: impl Into<String>) -> i64 {
    let sql = sql.into();
    let shown = sql.clone();
    integer_on(pool, &CancellationToken::never(), sql)
        .await
        .unwrap_or_else(|error| panic!("{shown}: {error}"))
}

/// Reads one integer with `sql` inside a transaction on `token`.
pub async fn integer_in_transaction<DB: TestDb>(
    pool: &GracefulPool<DB>,
    token: &CancellationToken,
    sql: impl Into<String>,
) -> Result<i64, Error> {
    let sql = sql.into();
    pool.transaction(token, |tx, _| DB::integer(tx, sql)).await
}

/// Runs `statements` in order inside one transaction on `token`; the body returns the first
/// error.
pub async fn execute_in_transaction<DB: TestDb>(
    pool: &GracefulPool<DB>,
    token: &CancellationToken,
    statements: &[&str],
) -> Result<(), Error> {
    let statements: Vec<String> = statements.iter().map(|s| (*s).to_owned()).collect();
    pool.transaction(token, |tx, _| {
        Box::pin(async move {
            for statement in statements {
                DB::execute(tx, statement).await?;
            }
            Ok(())
        })
    })
    .await
}

/// Rows of `batch` in `table` (a table of `(batch, n)` rows).
pub async fn rows_in_batch<DB: TestDb>(pool: &GracefulPool<DB>, table: &str, batch: i64) -> i64 {
    integer(
        pool,
        format!("SELECT count(*) FROM {table} WHERE batch = {batch}"),
    )
    .await
}

/// Which error a bad target is: [`Error::Config`] (the URL) or [`Error::Connect`] (the
/// server or file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// [`Error::Config`].
    Config,
    /// [`Error::Connect`].
    Connect,
}

/// Connecting a `DB` pool to `url` fails with the `bad` kind of error, whose message
/// contains each of `shown` and — neither in the message nor in its `Debug` — `secret`.
/// Returns the message.
pub async fn assert_connect_fails<DB: TestDb>(
    url: &str,
    bad: Bad,
    shown: &[&str],
    secret: Option<&str>,
) -> String {
    let error = GracefulPool::<DB>::connect(url).await.expect_err(url);
    let kind = match error {
        Error::Config { .. } => Some(Bad::Config),
        Error::Connect { .. } => Some(Bad::Connect),
        _ => None,
    };
    assert_eq!(kind, Some(bad), "{url}: {error:?}");
    let message = error.to_string();
    for part in shown {
        assert!(message.contains(part), "{url}: `{part}` not in: {message}");
    }
    if let Some(secret) = secret {
        assert!(!message.contains(secret), "{url}: {message}");
        assert!(!format!("{error:?}").contains(secret), "{url}: {error:?}");
    }
    message
}

/// Walks every await point of a transaction that writes three rows of one batch into
/// `table`, cancelling it the `walk`'s way at each (`gracefully-test`'s
/// `cancel_at_every_await`). After each run: no cleanup is left running, and the batch has
/// all its rows or none — none if the body had not finished, all only if the outcome was
/// `Ok` or the operation was dropped with its `COMMIT` in flight. Then `after_run` checks
/// the connection the database's way (the next borrower is idle and outside any
/// transaction). Returns the walk's report.
pub async fn walk_transaction<DB: TestDb>(
    pool: &GracefulPool<DB>,
    table: &str,
    walk: Walk,
    mut after_run: impl AsyncFnMut(usize),
) -> WalkReport<Result<(), Error>> {
    let batch = Arc::new(AtomicI64::new(0));
    let body_done = Arc::new(AtomicBool::new(false));
    let report = cancel_at_every_await(
        walk,
        async |token| {
            let batch = batch.fetch_add(1, Ordering::SeqCst) + 1;
            body_done.store(false, Ordering::SeqCst);
            let (table, done) = (table.to_owned(), Arc::clone(&body_done));
            pool.transaction(&token, move |tx, token| {
                Box::pin(async move {
                    for n in 0..3i64 {
                        token.check()?;
                        let insert =
                            format!("INSERT INTO {table} (batch, n) VALUES ({batch}, {n})");
                        DB::execute(tx, insert).await?;
                    }
                    done.store(true, Ordering::SeqCst);
                    Ok::<_, Error>(())
                })
            })
            .await
        },
        async |run: &Run<Result<(), Error>>| {
            let point = run.point();
            pool.wait_for_cleanups().await;
            assert_eq!(pool.pending_cleanups(), 0, "point {point}");
            let rows = rows_in_batch(pool, table, batch.load(Ordering::SeqCst)).await;
            match run.outcome() {
                Outcome::Completed(Ok(())) | Outcome::TokenFired(Ok(())) => {
                    assert_eq!(rows, 3, "committed at point {point}")
                }
                Outcome::Completed(Err(error)) | Outcome::TokenFired(Err(error)) => {
                    assert!(error.is_cancelled(), "point {point}: {error}");
                    assert_eq!(rows, 0, "rolled back at point {point}");
                }
                // Dropped mid-body: rolled back. Dropped during COMMIT: atomic either way.
                Outcome::Dropped if !body_done.load(Ordering::SeqCst) => {
                    assert_eq!(rows, 0, "dropped mid-body at point {point}")
                }
                Outcome::Dropped => assert!(
                    rows == 0 || rows == 3,
                    "dropped in COMMIT at point {point}: {rows} rows"
                ),
            }
            after_run(point).await;
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}"));
    eprintln!("{table}: {report}");
    report
}

/// Runs `slow` (a statement of minutes) `times` times through `pool`, each on a token
/// cancelled 0 to 2 ms after the start — before the statement is sent, while it runs, in
/// between — and asserts each was cancelled and nothing was left behind. Returns how long
/// it took.
pub async fn cancel_repeatedly<DB: TestDb>(
    pool: &GracefulPool<DB>,
    slow: &str,
    times: u64,
) -> Duration {
    let started = Instant::now();
    for i in 0..times {
        let source = CancellationSource::new();
        source.cancel_after(Duration::from_micros(500 * (i % 5)));
        let sql = slow.to_owned();
        let result = pool
            .run(&source.token(), |conn| DB::execute(conn, sql))
            .await;
        assert!(result.unwrap_err().is_cancelled(), "iteration {i}");
    }
    assert_eq!(pool.pending_cleanups(), 0);
    assert!(pool.size() <= 1, "size {}", pool.size());
    started.elapsed()
}

/// How a body leaves a statement it gave up on (its own `timeout` around it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abandon {
    /// `run`; the body returns `Ok`.
    RunOk,
    /// `run`; the body returns the timeout as its error.
    RunErr,
    /// `transaction`; the body returns the timeout as its error (rolled back).
    TransactionErr,
}

/// The cases of [`abandoned_statements_are_stopped`]: each way to abandon, and `RunOk` also
/// with `verify_on_release(true)`.
pub const ABANDON_CASES: [(Abandon, bool); 4] = [
    (Abandon::RunOk, false),
    (Abandon::RunOk, true),
    (Abandon::RunErr, false),
    (Abandon::TransactionErr, false),
];

/// Runs `slow` inside a body that gives up on it after 100 ms, the way `abandon` says;
/// returns how long the operation took.
async fn abandon_statement<DB: TestDb>(
    pool: &GracefulPool<DB>,
    abandon: Abandon,
    slow: &str,
) -> Duration {
    async fn give_up<DB: TestDb>(conn: &mut DB::Connection, slow: String) -> Result<(), Error> {
        match tokio::time::timeout(Duration::from_millis(100), DB::execute(conn, slow)).await {
            Ok(done) => done,
            Err(_) => Err(Error::Database(sqlx::Error::PoolTimedOut)), // "gave up"
        }
    }
    let (never, slow) = (CancellationToken::never(), slow.to_owned());
    let started = Instant::now();
    let result = match abandon {
        Abandon::RunOk => {
            pool.run(&never, |conn| {
                Box::pin(async move {
                    let _ = give_up::<DB>(conn, slow).await; // swallowed: the body returns Ok
                    Ok::<_, Error>(())
                })
            })
            .await
        }
        Abandon::RunErr => {
            pool.run(&never, |conn| Box::pin(give_up::<DB>(conn, slow)))
                .await
        }
        Abandon::TransactionErr => {
            pool.transaction(&never, |tx, _| Box::pin(give_up::<DB>(tx, slow)))
                .await
        }
    };
    match abandon {
        Abandon::RunOk => result.expect("the body returned Ok"),
        Abandon::RunErr | Abandon::TransactionErr => assert!(
            matches!(result, Err(Error::Database(sqlx::Error::PoolTimedOut))),
            "{result:?}"
        ),
    }
    started.elapsed()
}

/// For each of [`ABANDON_CASES`], on a pool of one from `pool_for(case, verify_on_release)`:
/// a body gives up on `slow` (a statement of minutes) after 100 ms. The statement must be
/// stopped (cancelled and drained) before the operation returns — not after the 2 s
/// cancellation timeout, nor at its end — and the connection lent again at once: `after`
/// checks the database's way that the next borrower is idle and outside any transaction,
/// and must finish within 5 s.
pub async fn abandoned_statements_are_stopped<DB: TestDb>(
    slow: &str,
    mut pool_for: impl AsyncFnMut(&str, bool) -> GracefulPool<DB>,
    mut after: impl AsyncFnMut(&str, &GracefulPool<DB>),
) {
    for (abandon, verify_on_release) in ABANDON_CASES {
        let case = format!("{abandon:?}, verify_on_release({verify_on_release})");
        let pool = pool_for(&case, verify_on_release).await;
        let took = abandon_statement(&pool, abandon, slow).await;
        assert!(
            took < Duration::from_millis(1500),
            "{case}: the operation took {took:?}"
        );
        let next = tokio::time::timeout(Duration::from_secs(5), after(&case, &pool)).await;
        assert!(
            next.is_ok(),
            "{case}: the next borrower waited for the statement"
        );
        pool.close().await;
    }
}
