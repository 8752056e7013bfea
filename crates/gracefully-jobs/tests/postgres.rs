//! The contract on PostgreSQL (a schema of its own per test). Needs `DATABASE_URL`.

mod support;

contract_tests!(support::postgres, #[ignore = "needs PostgreSQL: set DATABASE_URL"]);

/// A worker on a PostgreSQL pool of one connection would livelock: its listener holds the
/// only connection (`LISTEN`), so nothing could be fetched or recorded and the drain would
/// never end. `build` refuses it, naming the pool's size; two connections are enough.
// Multi-threaded, as every PostgreSQL test here: the fixture's drop runs its cleanup on
// another thread with this runtime's pool, whose connections need this runtime driven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn a_worker_on_a_pool_of_one_connection_is_refused_naming_the_pool_size() {
    use gracefully_jobs::{Error, Job, Jobs};
    let b = support::postgres().await;
    let support::Db::Postgres { schema, .. } = &b.db else {
        unreachable!()
    };
    let handler =
        |_job: Job<u32>, _token: gracefully::CancellationToken| async { Ok::<_, Error>(()) };
    for (size, ok) in [(1, false), (2, true)] {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(size)
            .connect(&support::database_url())
            .await
            .unwrap();
        let jobs = Jobs::postgres_in_schema(pool, schema).await.unwrap();
        match jobs.worker("q").handler(handler).build() {
            Ok(_) if ok => {}
            Err(Error::Config {
                option: "max_connections",
                message,
            }) if !ok => {
                assert!(message.contains("max_connections = 1"), "{message}");
                assert!(message.contains("LISTEN"), "{message}");
            }
            other => panic!("a pool of {size}: {other:?}"),
        }
    }
}
