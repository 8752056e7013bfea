//! Queries and transactions as operations: named by the pool's label, under the operation
//! that runs them, ending with the token's reason when cancelled. (SQLite: always on.)

use std::time::Duration;

use gracefully::operation::OperationKind;
use gracefully::{CancellationSource, ReasonKind};
use gracefully_host::Operations;
use gracefully_sqlx::{Error, GracefulPoolOptions, SqliteGracefulPool};
use sqlx::sqlite::SqliteConnectOptions;

/// Counts to 10^9 through a recursive CTE: minutes of pure VM work.
const ENDLESS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c \
                       WHERE x < 1000000000) SELECT count(*) FROM c";

async fn pool(dir: &tempfile::TempDir) -> SqliteGracefulPool {
    let options = SqliteConnectOptions::new()
        .filename(dir.path().join("ops.db"))
        .create_if_missing(true);
    GracefulPoolOptions::new()
        .connect_with(options)
        .await
        .expect("open the SQLite pool")
}

#[tokio::test]
async fn queries_and_transactions_register_under_the_operation_that_runs_them() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let operations = Operations::new();
    let request = operations
        .scope()
        .begin(OperationKind::Request, "GET /orders", None);
    let token = CancellationSource::with_timeout(Duration::from_secs(60));
    let token = token.token();
    request
        .scoped(async {
            pool.labelled("orders.count")
                .run(&token, |conn| {
                    Box::pin(async move {
                        sqlx::query("SELECT 1").execute(&mut *conn).await?;
                        Ok::<_, Error>(())
                    })
                })
                .await
                .unwrap();
            pool.transaction(&token, |tx, _| {
                Box::pin(async move {
                    sqlx::query("SELECT 1").execute(&mut **tx).await?;
                    Ok::<_, Error>(())
                })
            })
            .await
            .unwrap();
        })
        .await;
    let snapshot = operations.snapshot();
    let query = snapshot
        .finished
        .iter()
        .find(|f| f.operation.name == "orders.count")
        .expect("the labelled query");
    assert_eq!(query.operation.kind, OperationKind::Query);
    assert_eq!(query.operation.parent, request.id());
    assert!(query.operation.deadline.is_some(), "the token's deadline");
    assert_eq!(query.outcome.as_str(), "completed");
    let tx = snapshot
        .finished
        .iter()
        .find(|f| f.operation.name == "transaction")
        .expect("an unlabelled transaction");
    assert_eq!(tx.operation.kind, OperationKind::Transaction);
    assert_eq!(tx.operation.parent, request.id());
    request.complete();
}

#[tokio::test]
async fn a_cancelled_query_ends_with_the_tokens_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let operations = Operations::new();
    let source = CancellationSource::with_timeout(Duration::from_millis(100));
    let result = operations
        .scope()
        .scoped(
            pool.labelled("report.endless")
                .run(&source.token(), |conn| {
                    Box::pin(async move {
                        sqlx::query(ENDLESS).execute(&mut *conn).await?;
                        Ok::<_, Error>(())
                    })
                }),
        )
        .await;
    assert!(result.unwrap_err().as_cancelled().is_some());
    let snapshot = operations.snapshot();
    let query = &snapshot.finished[0];
    assert_eq!(query.operation.name, "report.endless");
    assert_eq!(
        query.operation.parent, None,
        "a root: run outside any operation"
    );
    assert_eq!(
        query.reason().map(|r| r.kind()),
        Some(ReasonKind::DeadlineExceeded)
    );
}

#[tokio::test]
async fn without_a_registry_nothing_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let pool = pool(&dir).await;
    let operations = Operations::new();
    pool.labelled("unrecorded")
        .run(&gracefully::CancellationToken::never(), |conn| {
            Box::pin(async move {
                sqlx::query("SELECT 1").execute(&mut *conn).await?;
                Ok::<_, Error>(())
            })
        })
        .await
        .unwrap();
    assert_eq!(operations.snapshot().started_total, 0);
}
