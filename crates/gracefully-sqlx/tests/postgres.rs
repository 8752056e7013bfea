//! PostgreSQL behaviour of `gracefully-sqlx`, against a real server.
//!
//! Ignored by default; CI runs them with `DATABASE_URL` set:
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p gracefully-sqlx -- --include-ignored
//! ```
//!
//! Tests share the server with other sessions: each uses its own `application_name` (to find
//! its backends in `pg_stat_activity`) and its own table.

mod support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, CancellationToken, ReasonKind};
use gracefully_sqlx::{Error, GracefulPoolOptions, PgGracefulPool, ServerDeadline};
use gracefully_test::Walk;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, Postgres};
use support::{
    Bad, TestDb, assert_connect_fails, execute, execute_in_transaction, integer,
    integer_in_transaction, integer_on, rows_in_batch, spawn_execute,
};

fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "these tests need PostgreSQL: set DATABASE_URL, e.g. \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

/// A name unique to this test and process, for `application_name` and tables.
fn unique(test: &str) -> String {
    format!("gs_{test}_{}", std::process::id())
}

async fn pool(app: &str, max: u32) -> PgGracefulPool {
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL parses")
        .application_name(app)
        // JIT compilation (on by default; PostgreSQL uses it for costly statements like the
        // CPU-bound one below, with LLVM optimisation and inlining) does not look for a
        // cancel until it has finished: on a loaded CI machine it once took the statement
        // past the pool's 2 s fallback. These tests are about the cancel, not about LLVM.
        .options([("jit", "off")]);
    pool_with(options, max).await
}

async fn pool_with(options: PgConnectOptions, max: u32) -> PgGracefulPool {
    GracefulPoolOptions::new()
        .pool_options(PgPoolOptions::new().max_connections(max))
        .connect_with(options)
        .await
        .expect("connect to DATABASE_URL")
}

/// A TCP proxy in front of the server that holds every chunk the server sends for `delay`,
/// so that every round trip is a real suspension point of the client's future (on loopback
/// a reply often arrives before the client reads, and the await completes without ever
/// returning `Pending` — a point no cancel can land on). Returns options that connect
/// through it.
async fn delayed(options: PgConnectOptions, delay: Duration) -> PgConnectOptions {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    let target = format!("{}:{}", options.get_host(), options.get_port());
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the proxy");
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let target = target.clone();
            tokio::spawn(async move {
                let Ok(server) = TcpStream::connect(&target).await else {
                    return;
                };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up = async {
                    let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
                    let _ = server_write.shutdown().await;
                };
                let down = async {
                    let mut buffer = vec![0u8; 64 * 1024];
                    while let Ok(n) = server_read.read(&mut buffer).await {
                        if n == 0 {
                            break;
                        }
                        tokio::time::sleep(delay).await;
                        if client_write.write_all(&buffer[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = client_write.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    options.host("127.0.0.1").port(port)
}

/// A separate connection that watches the server.
async fn monitor() -> PgConnection {
    PgConnection::connect(&database_url())
        .await
        .expect("connect the monitor")
}

/// Backends of `app` running a statement whose text contains `needle`.
async fn running(monitor: &mut PgConnection, app: &str, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state = 'active' AND position($2 in query) > 0",
    )
    .bind(app)
    .bind(needle)
    .fetch_one(monitor)
    .await
    .expect("query pg_stat_activity")
}

/// Backends of `app` left inside a transaction (open or aborted).
async fn idle_in_transaction(monitor: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND state LIKE 'idle in transaction%'",
    )
    .bind(app)
    .fetch_one(monitor)
    .await
    .expect("query pg_stat_activity")
}

/// Polls until no backend of `app` runs `needle`; returns how long that took from `since`.
async fn gone_after(
    monitor: &mut PgConnection,
    app: &str,
    needle: &str,
    since: Instant,
) -> Duration {
    loop {
        if running(monitor, app, needle).await == 0 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(10),
            "`{needle}` still running 10 s after the cancel"
        );
        // Poll every millisecond, not in a tight loop: on two cores a tight loop (and its
        // backend) would compete with the canceller it is timing.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The next borrower is idle and outside any transaction, read from the server: `SAVEPOINT`
/// fails with `25P01` ("can only be used in transaction blocks"; inside an aborted block it
/// would be `25P02`, inside an open one it would succeed), and no transaction id is assigned.
async fn assert_next_borrower_clean(pool: &PgGracefulPool) {
    let (savepoint, no_xid) = pool
        .run(&CancellationToken::never(), |conn| {
            Box::pin(async move {
                assert!(
                    !conn.is_in_transaction(),
                    "sqlx thinks a transaction is open"
                );
                let savepoint = sqlx::raw_sql("SAVEPOINT gs_check")
                    .execute(&mut *conn)
                    .await;
                let code = match savepoint {
                    Ok(_) => "no error: inside a transaction block".to_owned(),
                    Err(error) => error
                        .as_database_error()
                        .and_then(|e| e.code())
                        .map_or_else(|| error.to_string(), |c| c.into_owned()),
                };
                let no_xid: bool =
                    sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NULL")
                        .fetch_one(&mut *conn)
                        .await?;
                Ok::<_, Error>((code, no_xid))
            })
        })
        .await
        .expect("the next borrower can query");
    assert_eq!(
        savepoint, "25P01",
        "the next borrower is inside a transaction block"
    );
    assert!(
        no_xid,
        "the next borrower inherited a transaction with writes"
    );
}

async fn create_table(pool: &PgGracefulPool, table: &str) {
    let sql = format!(
        "DROP TABLE IF EXISTS {table}; \
         CREATE TABLE {table} (batch bigint NOT NULL, n bigint NOT NULL, \
         UNIQUE (batch, n) DEFERRABLE INITIALLY DEFERRED)"
    );
    execute(pool, sql).await;
}

async fn drop_table(pool: &PgGracefulPool, table: &str) {
    execute(pool, format!("DROP TABLE IF EXISTS {table}")).await;
}

/// Starts `sql` through the pool on a fresh token, waits until the server runs it, cancels
/// 200 ms after the start, and returns how long after the cancel the server stopped
/// running it, and the operation's result.
async fn cancel_on_server(
    test: &str,
    sql: &'static str,
    needle: &str,
) -> (Duration, Result<(), Error>) {
    let app = unique(test);
    let pool = pool(&app, 1).await;
    let mut monitor = monitor().await;
    let source = CancellationSource::new();
    let operation = spawn_execute(&pool, source.token(), sql);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        running(&mut monitor, &app, needle).await,
        1,
        "the statement runs on the server"
    );

    let cancelled_at = Instant::now();
    source.cancel();
    let stopped_after = gone_after(&mut monitor, &app, needle, cancelled_at).await;
    let result = operation.await.expect("the operation task");
    assert_next_borrower_clean(&pool).await;
    (stopped_after, result)
}

/// Behaviour, not speed (the cancel-to-stop time is measured by `cargo bench -p
/// gracefully-sqlx --bench cancel_to_stop`): a statement gone from `pg_stat_activity` within
/// this was stopped by the server-side cancel, not by the pool's fallback, which terminates
/// the backend only after the cancellation timeout (2 s by default).
const STOPPED_BY_THE_CANCEL: Duration = Duration::from_millis(1000);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn pg_sleep_cancelled_after_200ms_is_stopped_by_the_server_side_cancel() {
    let _serial = support::serial().await;
    let (stopped_after, result) =
        cancel_on_server("sleep", "SELECT pg_sleep(30)", "pg_sleep").await;
    assert_eq!(
        result.unwrap_err().as_cancelled().map(|c| c.kind()),
        Some(ReasonKind::Requested)
    );
    assert!(
        stopped_after < STOPPED_BY_THE_CANCEL,
        "stopped after {stopped_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_cpu_bound_query_cancelled_after_200ms_is_stopped_by_the_server_side_cancel() {
    let _serial = support::serial().await;
    let (stopped_after, result) = cancel_on_server(
        "cpu",
        "SELECT sum(x) FROM (SELECT generate_series(1::bigint, 100000000000::bigint) AS x) s",
        "generate_series",
    )
    .await;
    assert!(result.unwrap_err().is_cancelled());
    assert!(
        stopped_after < STOPPED_BY_THE_CANCEL,
        "stopped after {stopped_after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn plain_sqlx_leaves_the_statement_running_after_the_future_is_dropped() {
    let _serial = support::serial().await;
    // The anchor, for contrast: dropping a plain sqlx query future stops nothing.
    let app = unique("plain");
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .application_name(&app);
    let plain = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .unwrap();
    let mut monitor = monitor().await;
    let query = sqlx::query("SELECT pg_sleep(2)").execute(&plain);
    let _ = tokio::time::timeout(Duration::from_millis(200), query).await; // dropped here
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        running(&mut monitor, &app, "pg_sleep").await,
        1,
        "plain sqlx: the server still runs the statement 300 ms after the future was dropped"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_dropped_run_future_still_stops_the_statement_on_the_server() {
    let _serial = support::serial().await;
    let app = unique("dropped_run");
    let pool = pool(&app, 1).await;
    let mut monitor = monitor().await;
    let operation = spawn_execute(&pool, CancellationToken::never(), "SELECT pg_sleep(30)");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(running(&mut monitor, &app, "pg_sleep").await, 1);
    let dropped_at = Instant::now();
    operation.abort(); // drops the future: no token fired
    let stopped_after = gone_after(&mut monitor, &app, "pg_sleep", dropped_at).await;
    eprintln!("dropped run: stopped after {stopped_after:?}");
    assert!(
        stopped_after < STOPPED_BY_THE_CANCEL,
        "stopped after {stopped_after:?}"
    );
    pool.wait_for_cleanups().await;
    assert_eq!(pool.pending_cleanups(), 0);
    assert_next_borrower_clean(&pool).await;
}

/// Walks every await point of a transaction (checkout, BEGIN, three INSERTs, the check
/// before COMMIT, COMMIT) through the shared walk (`support::walk_transaction`), over a proxy
/// that makes every round trip a real suspension; after each run, no backend of the pool is
/// left in a transaction, and the next borrower is idle and outside any.
async fn walk_transaction(test: &str, walk: Walk) {
    let app = unique(test);
    let table = unique(test);
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL parses")
        .application_name(&app);
    let pool = pool_with(delayed(options, Duration::from_millis(1)).await, 1).await;
    let mut monitor = monitor().await;
    create_table(&pool, &table).await;
    let report = support::walk_transaction(&pool, &table, walk, async |point| {
        assert_eq!(
            idle_in_transaction(&mut monitor, &app).await,
            0,
            "point {point}"
        );
        assert_next_borrower_clean(&pool).await;
    })
    .await;
    assert!(
        report.points() >= 6,
        "only {} await points were hit (BEGIN, 3 INSERTs, the check before COMMIT, COMMIT)",
        report.points()
    );
    drop_table(&pool, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_transaction_cancelled_at_every_await_point_leaves_no_rows_and_a_clean_connection() {
    let _serial = support::serial().await;
    walk_transaction("walk_cancel", Walk::cooperative()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_transaction_dropped_at_every_await_point_is_rolled_back_by_a_tracked_cleanup() {
    let _serial = support::serial().await;
    walk_transaction("walk_drop", Walk::dropping()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_pool_of_one_keeps_working_after_1000_cancelled_queries() {
    let _serial = support::serial().await;
    let app = unique("thousand");
    let pool = pool(&app, 1).await;
    let mut monitor = monitor().await;
    const PID: &str = "SELECT pg_backend_pid()::bigint";
    let first_pid = integer(&pool, PID).await;
    let took = support::cancel_repeatedly(&pool, "SELECT pg_sleep(10)", 1000).await;
    let last_pid = integer(&pool, PID).await;
    // Informational: a connection is closed only when it cannot be verified (for example
    // when the cancel caught a statement still in the write buffer), so usually the very
    // same backend served all 1000.
    eprintln!(
        "1000 cancelled queries in {took:?}; same backend before and after: {}",
        first_pid == last_pid
    );
    assert_eq!(running(&mut monitor, &app, "pg_sleep").await, 0);
    assert_eq!(idle_in_transaction(&mut monitor, &app).await, 0);
    assert_eq!(integer(&pool, "SELECT (6 * 7)::bigint").await, 42);
    assert_next_borrower_clean(&pool).await;
}

/// The session's `statement_timeout` in milliseconds.
const TIMEOUT_MS: &str = "SELECT setting::bigint FROM pg_settings WHERE name = 'statement_timeout'";

/// Reads `statement_timeout` in a transaction and then in a `run`, both on a token with 5 s
/// left: the transaction's is the deadline (`SET LOCAL` travels in its `BEGIN`); returns the
/// `run`'s.
async fn timeout_in_run_after_a_transaction_with_5s_left(pool: &PgGracefulPool) -> i64 {
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let token = source.token();
    let in_transaction = integer_in_transaction(pool, &token, TIMEOUT_MS)
        .await
        .unwrap();
    assert!(
        (4_000..=5_001).contains(&in_transaction),
        "SET LOCAL gave {in_transaction} ms"
    );
    integer_on(pool, &token, TIMEOUT_MS).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn the_tokens_deadline_becomes_the_statement_timeout_and_is_reset_afterwards() {
    let _serial = support::serial().await;
    let app = unique("deadline");
    let options = PgConnectOptions::from_str(&database_url())
        .expect("DATABASE_URL parses")
        .application_name(&app);
    let pool: PgGracefulPool = GracefulPoolOptions::new()
        .pool_options(PgPoolOptions::new().max_connections(1))
        .server_deadline(ServerDeadline::Always)
        .connect_with(options)
        .await
        .expect("connect");
    let in_run = timeout_in_run_after_a_transaction_with_5s_left(&pool).await;
    assert!((4_000..=5_001).contains(&in_run), "SET gave {in_run} ms");

    // The same (single) connection, borrowed without a deadline: back to the default.
    let after = integer(&pool, TIMEOUT_MS).await;
    assert_eq!(after, 0, "statement_timeout was not reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn by_default_only_transactions_carry_the_deadline_to_the_server() {
    let _serial = support::serial().await;
    let app = unique("deadline_default");
    let pool = pool(&app, 1).await;
    let in_run = timeout_in_run_after_a_transaction_with_5s_left(&pool).await;
    assert_eq!(in_run, 0, "run sets no session timeout by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_passed_deadline_is_deadline_exceeded_not_a_raw_57014() {
    let _serial = support::serial().await;
    let app = unique("deadline_exceeded");
    let pool = pool(&app, 1).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(200));
    let token = source.token();
    let started = Instant::now();
    let result = execute_in_transaction(&pool, &token, &["SELECT pg_sleep(30)"]).await;
    let error = result.unwrap_err();
    assert_eq!(
        error.as_cancelled().map(|c| c.kind()),
        Some(ReasonKind::DeadlineExceeded),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_next_borrower_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_failing_commit_is_reported_and_leaves_no_rows() {
    let _serial = support::serial().await;
    let app = unique("commit_fails");
    let table = unique("commit_fails");
    let pool = pool(&app, 1).await;
    create_table(&pool, &table).await;
    let insert = format!("INSERT INTO {table} (batch, n) VALUES (1, 1), (1, 1)");
    // The deferred unique constraint fails at COMMIT, not at the INSERT.
    let result = execute_in_transaction(&pool, &CancellationToken::never(), &[&insert]).await;
    let error = result.unwrap_err();
    assert!(!error.is_cancelled());
    assert_eq!(
        error
            .as_sqlx()
            .and_then(|e| e.as_database_error())
            .and_then(|e| e.code())
            .as_deref(),
        Some("23505"),
        "{error}"
    );
    assert_eq!(rows_in_batch(&pool, &table, 1).await, 0);
    assert_next_borrower_clean(&pool).await;
    drop_table(&pool, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_raw_begin_left_open_by_a_failing_body_is_rolled_back_before_reuse() {
    let _serial = support::serial().await;
    let app = unique("raw_begin");
    let pool = pool(&app, 1).await;
    let result: Result<(), Error> = pool
        .run(&CancellationToken::never(), |conn| {
            Box::pin(async move {
                sqlx::raw_sql("BEGIN").execute(&mut *conn).await?;
                sqlx::query("SELECT 1/0").execute(&mut *conn).await?; // aborts the block
                Ok(())
            })
        })
        .await;
    assert!(!result.unwrap_err().is_cancelled());
    assert_next_borrower_clean(&pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Needs no server.
async fn an_unreachable_server_is_a_clear_error_with_the_password_redacted() {
    let _serial = support::serial().await;
    let url = "postgres://postgres:s3cretpw@127.0.0.1:1/test";
    assert_connect_fails::<Postgres>(url, Bad::Connect, &["127.0.0.1:1"], Some("s3cretpw")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn bad_credentials_are_a_clear_error_with_the_password_redacted() {
    let _serial = support::serial().await;
    let url = database_url();
    let options = PgConnectOptions::from_str(&url).unwrap();
    let bad = format!(
        "postgres://gs_no_such_role:s3cretpw@{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );
    let shown = ["gs_no_such_role", "***"];
    assert_connect_fails::<Postgres>(&bad, Bad::Connect, &shown, Some("s3cretpw")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_server_error_shows_its_message_and_sqlstate_not_the_servers_source_line() {
    let _serial = support::serial().await;
    let options = PgConnectOptions::from_str(&database_url()).unwrap();
    let url = format!(
        "postgres://{}@{}:{}/gs_no_such_database",
        options.get_username(),
        options.get_host(),
        options.get_port(),
    );
    let shown = [
        "gs_no_such_database",
        "database \"gs_no_such_database\" does not exist",
        "SQLSTATE 3D000",
    ];
    let message = assert_connect_fails::<Postgres>(&url, Bad::Connect, &shown, None).await;
    // sqlx 0.9 renders a PostgreSQL error with the server's C source line appended.
    assert!(!message.contains(" at line "), "{message}");

    // A failed statement: the server's detail is shown too.
    let pool = pool(&unique("sqlstate"), 1).await;
    let sql = r#"SELECT '{"a":}'::json"#.to_owned();
    let message = pool
        .run(&CancellationToken::never(), |conn| {
            Postgres::execute(conn, sql)
        })
        .await
        .unwrap_err()
        .to_string();
    let shown = [
        "invalid input syntax for type json",
        "SQLSTATE 22P02",
        "; detail: Expected JSON value",
    ];
    for part in shown {
        assert!(message.contains(part), "`{part}` not in: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Needs no server.
async fn a_bad_url_is_a_clear_error_with_the_password_redacted() {
    let _serial = support::serial().await;
    let url = "postgres://postgres:s3cretpw@127.0.0.1:notaport/test";
    let shown = ["invalid connection options"];
    assert_connect_fails::<Postgres>(url, Bad::Config, &shown, Some("s3cretpw")).await;
}

/// The first directory the server listens on for Unix-socket connections.
async fn socket_directory(monitor: &mut PgConnection) -> String {
    let dirs: String = sqlx::query_scalar("SELECT current_setting('unix_socket_directories')")
        .fetch_one(monitor)
        .await
        .expect("read unix_socket_directories");
    dirs.split(',')
        .map(str::trim)
        .find(|d| !d.is_empty())
        .expect("the server listens on a Unix socket")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn postgres_urls_of_every_ordinary_form_connect_as_plain_sqlx_does() {
    let _serial = support::serial().await;
    let url = database_url();
    let options = PgConnectOptions::from_str(&url).expect("DATABASE_URL parses");
    let (user, port) = (options.get_username().to_owned(), options.get_port());
    let database = options.get_database().unwrap_or("postgres").to_owned();
    let host = options.get_host().to_owned();
    let mut monitor = monitor().await;
    let socket = socket_directory(&mut monitor).await;
    let app = unique("url_forms");
    let urls = [
        format!("postgresql://{user}@{host}:{port}/{database}?application_name={app}"),
        format!("POSTGRES://{user}@{host}:{port}/{database}?application_name={app}"),
        // Unix socket, named in the query and percent-encoded in the host.
        format!(
            "postgres:///{database}?host={socket}&port={port}&user={user}&application_name={app}"
        ),
        format!(
            "postgres://{user}@{}:{port}/{database}?application_name={app}",
            socket.replace('/', "%2F")
        ),
        // No host at all: libpq's default (the socket if there is one, else localhost).
        format!("postgres:///{database}?user={user}&port={port}&application_name={app}"),
    ];
    for url in &urls {
        let plain = PgPoolOptions::new()
            .max_connections(1)
            .connect(url)
            .await
            .unwrap_or_else(|error| panic!("plain sqlx: {url}: {error}"));
        plain.close().await;
        let pool = GracefulPoolOptions::new()
            .pool_options(PgPoolOptions::new().max_connections(1))
            .connect(url)
            .await
            .unwrap_or_else(|error| panic!("{url}: {error}"));
        assert_eq!(integer(&pool, "SELECT 1::bigint").await, 1, "{url}");
        pool.close().await;
    }
    // The same, built in code: a socket path in the options.
    let built = PgConnectOptions::new()
        .socket(&socket)
        .port(port)
        .username(&user)
        .database(&database)
        .application_name(&app);
    let pool = pool_with(built, 1).await;
    assert_next_borrower_clean(&pool).await;
    pool.close().await;
}

/// Backends of `app` connected at all (any state).
async fn backends(monitor: &mut PgConnection, app: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
        .bind(app)
        .fetch_one(monitor)
        .await
        .expect("query pg_stat_activity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn closing_the_pool_closes_every_connection_it_opened_the_cancellers_too() {
    let _serial = support::serial().await;
    let app = unique("close_all");
    let pool = pool(&app, 3).await;
    let mut monitor = monitor().await;
    // Three statements cancelled at once: the canceller opens connections beyond the one
    // it keeps from `connect` (it keeps at most two idle).
    let source = CancellationSource::new();
    let operations: Vec<_> = (0..3)
        .map(|_| spawn_execute(&pool, source.token(), "SELECT pg_sleep(30)"))
        .collect();
    let started = Instant::now();
    while running(&mut monitor, &app, "pg_sleep").await < 3 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sleeps never ran"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    source.cancel();
    for operation in operations {
        assert!(operation.await.unwrap().unwrap_err().is_cancelled());
    }
    assert!(
        backends(&mut monitor, &app).await >= 4,
        "pool connections and a canceller"
    );

    pool.close().await;
    // A closed socket ends its backend within milliseconds; allow for a loaded machine.
    let closed_at = Instant::now();
    let mut left = backends(&mut monitor, &app).await;
    while left > 0 && closed_at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        left = backends(&mut monitor, &app).await;
    }
    assert_eq!(
        left, 0,
        "backends of the pool still connected 5 s after close() returned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_statement_the_body_abandoned_is_stopped_before_its_connection_is_lent_again() {
    let _serial = support::serial().await;
    let mut monitor = monitor().await;
    let app_for = |case: &str| unique(&format!("abandoned_{case}"));
    support::abandoned_statements_are_stopped(
        "SELECT pg_sleep(30)",
        async |case, verify_on_release| {
            let options = PgConnectOptions::from_str(&database_url())
                .expect("DATABASE_URL parses")
                .application_name(&app_for(case));
            GracefulPoolOptions::new()
                .pool_options(PgPoolOptions::new().max_connections(1))
                .verify_on_release(verify_on_release)
                .connect_with(options)
                .await
                .expect("connect")
        },
        async |case, pool| {
            assert_eq!(
                running(&mut monitor, &app_for(case), "pg_sleep").await,
                0,
                "{case}"
            );
            assert_next_borrower_clean(pool).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_commit_the_server_turns_into_a_rollback_is_an_error_not_ok() {
    let _serial = support::serial().await;
    let app = unique("silent_rollback");
    let table = unique("silent_rollback");
    let pool = pool(&app, 1).await;
    create_table(&pool, &table).await;
    let insert = format!("INSERT INTO {table} (batch, n) VALUES (1, 1)");
    // The body writes a row, swallows a failing statement (which aborts the transaction
    // on PostgreSQL) and returns Ok: PostgreSQL answers the COMMIT with ROLLBACK.
    let result: Result<(), Error> = pool
        .transaction(&CancellationToken::never(), move |tx, _| {
            Box::pin(async move {
                sqlx::raw_sql(sqlx::AssertSqlSafe(insert))
                    .execute(&mut **tx)
                    .await?;
                let failed = sqlx::raw_sql("SELECT 1/0").execute(&mut **tx).await;
                assert!(failed.is_err(), "division by zero");
                Ok(())
            })
        })
        .await;
    let error = result.expect_err("nothing was committed: the outcome must not be Ok");
    assert!(!error.is_cancelled(), "{error}");
    assert!(matches!(error, Error::RolledBack { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains("rolled back"), "{message}");
    assert!(message.contains("nothing was committed"), "{message}");
    assert_eq!(rows_in_batch(&pool, &table, 1).await, 0);
    assert_next_borrower_clean(&pool).await;
    // A healthy transaction on the same connection still commits.
    let insert = format!("INSERT INTO {table} (batch, n) VALUES (2, 1)");
    execute_in_transaction(&pool, &CancellationToken::never(), &[&insert])
        .await
        .expect("committed");
    assert_eq!(rows_in_batch(&pool, &table, 2).await, 1);
    drop_table(&pool, &table).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (set DATABASE_URL)"]
async fn a_connection_that_died_while_idle_is_replaced_not_lent() {
    let _serial = support::serial().await;
    let app = unique("died_idle");
    let pool = pool(&app, 1).await; // sqlx's default: test_before_acquire on
    let mut monitor = monitor().await;
    const PID: &str = "SELECT pg_backend_pid()::bigint";
    let first = integer(&pool, PID).await;
    // The server ends the idle connection's backend (a restart, an idle timeout).
    let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(i32::try_from(first).expect("a pid"))
        .fetch_one(&mut monitor)
        .await
        .unwrap();
    assert!(ended);
    // Idle longer than the window in which a just-used connection is lent unpinged.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = integer_on(&pool, &CancellationToken::never(), PID)
        .await
        .expect("the dead connection was found by the ping and replaced");
    assert_ne!(first, second);
    pool.close().await;
}
