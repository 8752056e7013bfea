//! A handler must never leave a half-written order — an order row without its lines — however
//! it is cancelled. `cancel_at_every_await` checks that at every await of two versions of
//! the handler, against SQLite through `gracefully-sqlx`:
//!
//! * `place_order_unsafely` runs its three INSERTs one after the other, each committed on its
//!   own. The walk finds the await after which a cancellation leaves an order without lines,
//!   and names it.
//! * `place_order` runs the same INSERTs in one `pool.transaction`: the walk passes, both
//!   with the token fired at each await and with the future dropped there.
//!
//! ```sh
//! cargo run -p gracefully-test --example half_written_row
//! ```
//!
//! (`cargo test -p gracefully-test` runs it too.)

use gracefully::CancellationToken;
use gracefully_sqlx::{Error, GracefulPoolOptions, SqliteGracefulPool};
use gracefully_test::{Outcome, Run, Walk, WalkError, cancel_at_every_await};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

/// The buggy handler: the order and each line are committed separately.
async fn place_order_unsafely(
    pool: &SqliteGracefulPool,
    token: &CancellationToken,
) -> Result<i64, Error> {
    pool.run(token, |conn| {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar("INSERT INTO orders DEFAULT VALUES RETURNING id")
                .fetch_one(&mut *conn)
                .await?;
            for item in ["tea", "biscuits"] {
                sqlx::query("INSERT INTO order_lines (order_id, item) VALUES (?, ?)")
                    .bind(id)
                    .bind(item)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(id)
        })
    })
    .await
}

/// The fixed handler: the same statements, in one transaction.
async fn place_order(pool: &SqliteGracefulPool, token: &CancellationToken) -> Result<i64, Error> {
    pool.transaction(token, |tx, token| {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar("INSERT INTO orders DEFAULT VALUES RETURNING id")
                .fetch_one(&mut **tx)
                .await?;
            for item in ["tea", "biscuits"] {
                token.check()?; // a cheap checkpoint between statements
                sqlx::query("INSERT INTO order_lines (order_id, item) VALUES (?, ?)")
                    .bind(id)
                    .bind(item)
                    .execute(&mut **tx)
                    .await?;
            }
            Ok(id)
        })
    })
    .await
}

/// The invariant, after any run: no order lacks a line, and the outcome is one the
/// handler may have.
async fn check(pool: &SqliteGracefulPool, run: &Run<Result<i64, Error>>) {
    // A dropped operation's rollback runs in a tracked cleanup task: let it finish.
    pool.wait_for_cleanups().await;
    let half_written: i64 = pool
        .run(&CancellationToken::never(), |conn| {
            Box::pin(async move {
                Ok::<_, Error>(
                    sqlx::query_scalar(
                        "SELECT count(*) FROM orders o WHERE \
                         (SELECT count(*) FROM order_lines l WHERE l.order_id = o.id) <> 2",
                    )
                    .fetch_one(&mut *conn)
                    .await?,
                )
            })
        })
        .await
        .expect("count the orders");
    assert_eq!(half_written, 0, "an order without all its lines");
    match run.outcome() {
        Outcome::Completed(result) => assert!(result.is_ok(), "{result:?}"),
        // Fired while COMMIT was in flight, the transaction still commits: Ok is fine.
        Outcome::TokenFired(Err(error)) => assert!(error.is_cancelled(), "{error}"),
        Outcome::TokenFired(Ok(_)) | Outcome::Dropped => {}
    }
}

async fn open(dir: &std::path::Path) -> SqliteGracefulPool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join("orders.db"))
        .create_if_missing(true);
    let pool = GracefulPoolOptions::new()
        .pool_options(SqlitePoolOptions::new().max_connections(1))
        .connect_with(options)
        .await
        .expect("open the database");
    pool.run(&CancellationToken::never(), |conn| {
        Box::pin(async move {
            sqlx::raw_sql(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY); \
                 CREATE TABLE order_lines (order_id INTEGER NOT NULL, item TEXT NOT NULL)",
            )
            .execute(&mut *conn)
            .await?;
            Ok::<_, Error>(())
        })
    })
    .await
    .expect("create the tables");
    pool
}

/// Walks both handlers in both modes; returns the error that caught the buggy one in each.
async fn demo() -> Vec<WalkError> {
    let mut caught = Vec::new();
    for (mode, walk) in [
        ("token fired", Walk::cooperative()),
        ("future dropped", Walk::dropping()),
    ] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = open(dir.path()).await;

        // The check's failing assertion is printed (with its line) by the panic hook, then
        // caught by the walk and returned as an error naming the cancel point.
        let unsafe_walk = cancel_at_every_await(
            walk.clone(),
            async |token| place_order_unsafely(&pool, &token).await,
            async |run| check(&pool, run).await,
        )
        .await;
        let error = unsafe_walk.expect_err("the walk catches the unsafe handler");
        println!("unsafe handler, {mode} at every await:\n  caught: {error}");
        caught.push(error);

        // A fresh database: the failed walk left its half-written order behind.
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pool = open(dir.path()).await;
        let report = cancel_at_every_await(
            walk,
            async |token| place_order(&pool, &token).await,
            async |run| check(&pool, run).await,
        )
        .await
        .unwrap_or_else(|error| panic!("the transactional handler fails the walk: {error}"));
        println!("transactional handler, {mode} at every await:\n  passed: {report}");
        pool.close().await;
    }
    caught
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    demo().await;
}

#[cfg(test)]
mod tests {
    use gracefully_test::{Outcome, WalkError};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_walk_catches_the_unsafe_handler_and_passes_the_transactional_one() {
        let caught = super::demo().await;
        assert_eq!(caught.len(), 2);
        for error in caught {
            assert!(
                matches!(
                    &error,
                    WalkError::CheckFailed { outcome: Outcome::TokenFired(()) | Outcome::Dropped, message, .. }
                        if message.contains("an order without all its lines")
                ),
                "{error}"
            );
        }
    }
}
