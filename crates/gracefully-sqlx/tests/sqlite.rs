//! SQLite behaviour of `gracefully-sqlx` (always on: a temporary file database per test).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, CancellationToken, ReasonKind};
use gracefully_sqlx::{Error, GracefulPoolOptions, SqliteGracefulPool};
use gracefully_test::Walk;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{Postgres, Sqlite};
use support::{
    Bad, assert_connect_fails, execute, execute_in_transaction, integer, rows_in_batch,
    spawn_execute,
};

/// Counts to 10^9 through a recursive CTE: minutes of pure VM work, no rows until the end.
const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                       WHERE x < 1000000000) SELECT count(*) FROM c";

async fn pool(dir: &tempfile::TempDir, max: u32) -> SqliteGracefulPool {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("test.db"))
        .create_if_missing(true);
    GracefulPoolOptions::new()
        .pool_options(SqlitePoolOptions::new().max_connections(max))
        .connect_with(options)
        .await
        .expect("open the SQLite pool")
}

async fn create_table(pool: &SqliteGracefulPool) {
    execute(
        pool,
        "CREATE TABLE IF NOT EXISTS items (batch INTEGER NOT NULL, n INTEGER NOT NULL)",
    )
    .await;
}

/// The next borrower is idle and outside any transaction: a plain `BEGIN` succeeds (it fails
/// with "cannot start a transaction within a transaction" otherwise), and sqlx agrees.
async fn assert_next_borrower_clean(pool: &SqliteGracefulPool) {
    pool.run(&CancellationToken::never(), |conn| {
        Box::pin(async move {
            use sqlx::Connection;
            assert!(
                !conn.is_in_transaction(),
                "sqlx thinks a transaction is open"
            );
            sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
            sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .expect("the next borrower could BEGIN: it was not inside a transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_recursive_cte_is_interrupted_by_the_cancel() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    let source = CancellationSource::new();
    let query = spawn_execute(&pool, source.token(), ENDLESS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!query.is_finished(), "the CTE should still be running");

    let cancelled_at = Instant::now();
    source.cancel();
    let result = query.await.unwrap();
    let stopped_after = cancelled_at.elapsed();

    let error = result.expect_err("the CTE cannot finish in 200 ms");
    assert_eq!(
        error.as_cancelled().map(|c| c.kind()),
        Some(ReasonKind::Requested)
    );
    // `run` returns only after the worker thread answered a ping queued behind the
    // statement: the statement is no longer running.
    // Behaviour, not speed (`cargo bench -p gracefully-sqlx --bench cancel_to_stop` measures
    // it): the CTE would run for minutes, and the pool's fallback (close the connection)
    // acts only after the cancellation timeout (2 s), so stopping within 1 s is the interrupt.
    assert!(
        stopped_after < Duration::from_secs(1),
        "interrupted after {stopped_after:?}"
    );
    // The single connection is free (a running statement would block this for minutes).
    let started = Instant::now();
    assert_eq!(integer(&pool, "SELECT 41 + 1").await, 42);
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_next_borrower_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sqlx_runs_the_cte_on_after_the_future_is_dropped() {
    let _serial = support::serial().await;
    // The anchor: without the interrupt, the worker thread keeps the connection busy.
    let dir = tempfile::tempdir().unwrap();
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("plain.db"))
        .create_if_missing(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    // ~10^7 steps: long enough to see, short enough for a test.
    let bounded = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                   WHERE x < 3000000) SELECT count(*) FROM c";
    let query = sqlx::query_scalar::<_, i64>(bounded).fetch_one(&pool);
    let _ = tokio::time::timeout(Duration::from_millis(20), query).await;
    let dropped_at = Instant::now();
    // The connection comes back only when the worker finished the statement.
    let mut conn = pool.acquire().await.unwrap();
    let busy_for = dropped_at.elapsed();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    assert!(
        busy_for > Duration::from_millis(50),
        "plain sqlx freed the connection after {busy_for:?}: the statement was not long enough to show the difference"
    );
}

/// Walks every await point of a transaction (checkout, BEGIN, three INSERTs, COMMIT)
/// through the shared walk (`support::walk_transaction`), and after each run checks that the
/// next borrower is idle and outside any transaction.
async fn walk_transaction(walk: Walk) {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    create_table(&pool).await;
    let report = support::walk_transaction(&pool, "items", walk, async |_| {
        assert_next_borrower_clean(&pool).await
    })
    .await;
    assert!(
        report.points() >= 5,
        "only {} await points were hit (BEGIN, 3 INSERTs, COMMIT)",
        report.points()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_cancelled_at_every_await_point_leaves_no_rows_and_a_clean_connection() {
    let _serial = support::serial().await;
    walk_transaction(Walk::cooperative()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_dropped_at_every_await_point_is_rolled_back_by_a_tracked_cleanup() {
    let _serial = support::serial().await;
    walk_transaction(Walk::dropping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_body_rolls_back_and_returns_its_error() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    create_table(&pool).await;
    let statements = [
        "INSERT INTO items (batch, n) VALUES (7, 1)",
        "INSERT INTO no_such_table VALUES (1)",
    ];
    let result = execute_in_transaction(&pool, &CancellationToken::never(), &statements).await;
    let error = result.unwrap_err();
    assert!(!error.is_cancelled());
    assert!(error.to_string().contains("no_such_table"), "{error}");
    assert_eq!(rows_in_batch(&pool, "items", 7).await, 0);
    assert_next_borrower_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_fires_as_the_body_succeeds_rolls_back() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    create_table(&pool).await;
    let source = CancellationSource::new();
    let result = pool
        .transaction(&source.token(), |tx, _| {
            Box::pin(async move {
                sqlx::query("INSERT INTO items (batch, n) VALUES (8, 1)")
                    .execute(&mut **tx)
                    .await?;
                source.cancel(); // fires after the last statement, before COMMIT
                Ok::<_, Error>(())
            })
        })
        .await;
    assert!(result.unwrap_err().is_cancelled());
    assert_eq!(rows_in_batch(&pool, "items", 8).await, 0);
    assert_next_borrower_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_of_one_keeps_working_after_200_cancelled_queries() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    support::cancel_repeatedly(&pool, ENDLESS, 200).await;
    assert_eq!(integer(&pool, "SELECT 6 * 7").await, 42);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_already_cancelled_token_never_touches_the_database() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 1).await;
    let source = CancellationSource::new();
    source.cancel_with(gracefully::Reason::shutdown());
    let result: Result<(), Error> = pool
        .run(&source.token(), |_conn| {
            Box::pin(async move { panic!("the body must not run") })
        })
        .await;
    assert_eq!(
        result.unwrap_err().as_cancelled().map(|c| c.kind()),
        Some(ReasonKind::Shutdown)
    );
    assert_eq!(pool.size(), 0, "no connection was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unopenable_database_is_a_clear_connect_error() {
    let _serial = support::serial().await;
    let url = "sqlite:///no/such/directory/db.sqlite";
    let message =
        assert_connect_fails::<Sqlite>(url, Bad::Connect, &["/no/such/directory/db.sqlite"], None)
            .await;
    assert!(message.starts_with("cannot connect to"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_url_is_a_clear_config_error() {
    let _serial = support::serial().await;
    let url = "sqlite://x.db?mode=sideways";
    assert_connect_fails::<Sqlite>(url, Bad::Config, &["invalid connection options"], None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_for_another_database_is_a_config_error_with_its_password_redacted() {
    let _serial = support::serial().await;
    // sqlx's SQLite options would take this for a file name (with the password in it).
    let url = "postgres://alice:s3cret@127.0.0.1:1/app";
    let shown = ["expected `sqlite:`", "alice:***@"];
    assert_connect_fails::<Sqlite>(url, Bad::Config, &shown, Some("s3cret")).await;
    // And the other way round.
    let shown = ["expected `postgres:` or `postgresql:`"];
    assert_connect_fails::<Postgres>("sqlite://x.db", Bad::Config, &shown, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pool_closes_its_connections_and_refuses_new_operations() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir, 2).await;
    create_table(&pool).await;
    assert_eq!(pool.num_idle(), 1);
    pool.close().await;
    assert!(pool.is_closed());
    assert_eq!(pool.num_idle(), 0);
    assert_eq!(pool.size(), 0, "every connection was closed");
    let result = pool
        .run(&CancellationToken::never(), |conn| {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                Ok::<_, Error>(())
            })
        })
        .await;
    assert!(
        matches!(result, Err(Error::Database(sqlx::Error::PoolClosed))),
        "{result:?}"
    );
}

/// Creates a table, writes a row in one operation and reads it back in the next: the URL
/// reached a working database that keeps what it was given.
async fn assert_usable(pool: &SqliteGracefulPool, url: &str) {
    execute(
        pool,
        "CREATE TABLE IF NOT EXISTS t (x INTEGER); INSERT INTO t VALUES (7)",
    )
    .await;
    assert_eq!(integer(pool, "SELECT x FROM t").await, 7, "{url}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_urls_of_every_ordinary_form_connect_as_plain_sqlx_does() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let urls = [
        "sqlite::memory:".to_owned(),
        "sqlite://:memory:".to_owned(),
        format!("sqlite:{path}/no_slashes.db?mode=rwc"),
        format!("sqlite://{path}/slashes.db?mode=rwc"),
        format!("sqlite://{path}/with:colon.db?mode=rwc"),
        format!("sqlite:{path}/a:b:c.db?mode=rwc"),
        format!("sqlite://{path}/with%20space.db?mode=rwc"),
        format!("{path}/no_scheme.db?mode=rwc"),
    ];
    for url in &urls {
        // Plain sqlx takes it: so must we.
        let plain = sqlx::SqlitePool::connect(url)
            .await
            .unwrap_or_else(|error| panic!("plain sqlx: {url}: {error}"));
        plain.close().await;
        let pool = SqliteGracefulPool::connect(url)
            .await
            .unwrap_or_else(|error| panic!("{url}: {error}"));
        assert_usable(&pool, url).await;
        pool.close().await;
    }
    // The same options built in code, not parsed from a URL.
    for options in [
        SqliteConnectOptions::new().in_memory(true),
        SqliteConnectOptions::new()
            .filename(dir.path().join("built:with:colons.db"))
            .create_if_missing(true),
    ] {
        let shown = format!("{options:?}");
        let pool = SqliteGracefulPool::connect_with(options)
            .await
            .unwrap_or_else(|error| panic!("{shown}: {error}"));
        assert_usable(&pool, &shown).await;
        pool.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_for_another_database_is_a_config_error_with_or_without_slashes() {
    let _serial = support::serial().await;
    // `sqlite:` without `//` is still SQLite: a PostgreSQL pool must not connect with it.
    for url in [
        "sqlite:test?host=127.0.0.1&port=5432&user=postgres",
        "sqlite::memory:",
        "SQLite://x.db",
        "mysql://root@127.0.0.1/app",
        "http://127.0.0.1:5432/app",
        "127.0.0.1:5432/app",
        "",
    ] {
        let error = gracefully_sqlx::PgGracefulPool::connect(url)
            .await
            .expect_err(url);
        assert!(matches!(error, Error::Config { .. }), "{url}: {error:?}");
        let message = error.to_string();
        assert!(
            message.contains("expected `postgres:` or `postgresql:`"),
            "{url}: {message}"
        );
    }
    // A URL of another database is not a SQLite file name, with or without `//`.
    for url in [
        "postgres://alice:s3cret@127.0.0.1:1/app",
        "postgresql:app?host=127.0.0.1",
        "POSTGRES:app",
        "mysql://root@127.0.0.1/app",
        "mariadb:app",
    ] {
        let error = SqliteGracefulPool::connect(url).await.expect_err(url);
        assert!(matches!(error, Error::Config { .. }), "{url}: {error:?}");
        let message = error.to_string();
        assert!(message.contains("expected `sqlite:`"), "{url}: {message}");
        assert!(!message.contains("s3cret"), "{url}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_urls_are_errors_never_panics() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let odd = [
        format!("sqlite://{}/db?mode=ro", missing.display()),
        format!("sqlite:{}/x:y/z.db", missing.display()),
        "sqlite://?mode=bogus".to_owned(),
        "sqlite://%ff%fe.db".to_owned(),
        "sqlite:".to_owned(),
        "sqlite://".to_owned(),
        ":".to_owned(),
        "://".to_owned(),
        "?".to_owned(),
    ];
    for url in &odd {
        // Each returns (Ok or a clear error): a panic fails the test.
        let result = tokio::spawn({
            let url = url.clone();
            async move {
                SqliteGracefulPool::connect(&url)
                    .await
                    .map(|pool| pool.size())
            }
        })
        .await;
        assert!(result.is_ok(), "{url}: panicked");
    }
    for url in [
        "postgres://",
        "postgres:///",
        "postgres://[::1",
        "postgres://u:p@h:99999/db",
        "postgres://%ff@h/db",
        "postgres://h/db?sslmode=sideways",
        "postgres:///db?host=/nonexistent/socket/dir&port=1",
        "postgresql://@:0",
    ] {
        let result = tokio::spawn(async move {
            let connect = gracefully_sqlx::PgGracefulPool::connect(url);
            // Bounded: a URL that names a reachable default host may try to connect.
            tokio::time::timeout(Duration::from_secs(10), connect)
                .await
                .map(|r| r.map(|pool| pool.size()))
        })
        .await;
        assert!(result.is_ok(), "{url}: panicked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn close_while_operations_return_connections_never_hangs() {
    let _serial = support::serial().await;
    // Before the fix: a connection checked in between `close` marking the pool closed and
    // taking the idle list stayed in that list holding a sqlx permit, and sqlx's
    // `Pool::close` waited for it for ever. Each round, the pool's connections are held by
    // operations that each occupy a runtime thread (blocking, then spinning on a flag), so
    // that once released they check in at once, in parallel with this task, which closes
    // the pool after a pause swept in small steps from round to round across that moment.
    const ROUNDS: usize = 3000;
    const CONNECTIONS: usize = 2;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let pool = pool(&dir, CONNECTIONS as u32).await;
        let go = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(std::sync::Barrier::new(CONNECTIONS + 1));
        let operations: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (pool, holding, go) = (pool.clone(), Arc::clone(&holding), Arc::clone(&go));
                tokio::spawn(async move {
                    pool.run(&CancellationToken::never(), |conn| {
                        Box::pin(async move {
                            sqlx::query("SELECT 1").execute(&mut *conn).await?;
                            holding.wait(); // blocks this runtime thread: one per operation
                            while !go.load(Ordering::Acquire) {
                                std::hint::spin_loop();
                            }
                            Ok::<_, Error>(())
                        })
                    })
                    .await
                })
            })
            .collect();
        holding.wait(); // every connection is checked out ...
        go.store(true, Ordering::Release); // ... and now they come back, while we close
        for _ in 0..(round % 64) * 2 {
            std::hint::spin_loop();
        }
        let closed = tokio::time::timeout(Duration::from_secs(10), pool.close()).await;
        assert!(closed.is_ok(), "close() hung in round {round}");
        for operation in operations {
            operation.await.unwrap().expect("the operation completed");
        }
        assert_eq!(pool.size(), 0, "round {round}: every connection closed");
        assert_eq!(pool.num_idle(), 0, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_body_abandoned_is_stopped_before_its_connection_is_lent_again() {
    let _serial = support::serial().await;
    let dir = tempfile::tempdir().unwrap();
    support::abandoned_statements_are_stopped(
        ENDLESS,
        async |_, verify_on_release| {
            let options = SqliteConnectOptions::new()
                .filename(dir.path().join("abandoned.db"))
                .create_if_missing(true);
            GracefulPoolOptions::new()
                .pool_options(SqlitePoolOptions::new().max_connections(1))
                .verify_on_release(verify_on_release)
                .connect_with(options)
                .await
                .expect("open the SQLite pool")
        },
        async |_, pool| assert_next_borrower_clean(pool).await,
    )
    .await;
}
