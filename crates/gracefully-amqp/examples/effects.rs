//! Exactly-once effects on at-least-once delivery: a consumer whose effect and the
//! message's id are written in one PostgreSQL transaction, so a redelivered message (after
//! a crash, a lost connection, a hand-back) finds its id already there and does nothing.
//!
//! ```sh
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//! EFFECTS_QUEUE=payments EFFECTS_TABLE=payments EFFECTS_NAME=worker-1 \
//!   cargo run -p gracefully-amqp --example effects
//! ```
//!
//! It creates `<table>_processed (message_id primary key)` and `<table>_account
//! (balance)` if missing, consumes `EFFECTS_QUEUE` (declaring it), and per message:
//! waits ~20 ms (the "work", which stops when the token fires), then in one transaction
//! records the id and adds 1 to the balance — unless the id was already recorded. It also
//! logs every delivery to `<table>_deliveries`, outside the transaction, for the tests.
//!
//! Prints `ready` once consuming; SIGTERM drains it (exit code 0 when clean), and it
//! prints its shutdown report and a `stats …` line. The process tests in
//! `tests/processes.rs` run two of these and signal one.

use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_amqp::{Bytes, Consumer, Message};
use gracefully_host::Host;
use gracefully_sqlx::{GracefulPoolOptions, PgGracefulPool};
use sqlx::AssertSqlSafe;
use sqlx::postgres::PgPoolOptions;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("set {name} (see the example's docs)"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let (queue, table, name) = (
        var("EFFECTS_QUEUE"),
        var("EFFECTS_TABLE"),
        var("EFFECTS_NAME"),
    );
    let pool: PgGracefulPool = GracefulPoolOptions::new()
        .pool_options(PgPoolOptions::new().max_connections(6))
        .connect(&var("DATABASE_URL"))
        .await
        .expect("connect to DATABASE_URL");
    create_tables(&pool, &table).await;

    let handler_pool = pool.clone();
    let consumer = Consumer::builder(var("AMQP_URL"), &queue)
        .declare()
        .concurrency(4)
        .connection_name(format!("gracefully-amqp effects {name}"))
        .build(move |message: Message<Bytes>, token: CancellationToken| {
            let (pool, table, name) = (handler_pool.clone(), table.clone(), name.clone());
            async move { handle(&pool, &table, &name, message, token).await }
        })
        .expect("valid configuration");
    let stats = consumer.stats();
    let host = Host::builder()
        .shutdown_timeout(Duration::from_secs(20))
        .service("effects", consumer)
        .build()
        .expect("valid host");
    let lifetime = host.lifetime();
    tokio::spawn(async move {
        lifetime.started().cancelled().await;
        println!("ready");
    });
    let report = host.run().await;
    println!("{report}");
    println!(
        "stats handled={} handed_back_at_drain={} cancelled_handed_back={} in_flight_at_abort={}",
        stats.handled(),
        stats.handed_back_at_drain(),
        stats.cancelled_handed_back(),
        stats.in_flight_at_abort()
    );
    std::process::exit(report.exit_code());
}

async fn handle(
    pool: &PgGracefulPool,
    table: &str,
    name: &str,
    message: Message<Bytes>,
    token: CancellationToken,
) -> Result<(), gracefully_sqlx::Error> {
    let id = message.id().unwrap_or_default().to_owned();
    let redelivered = message.redelivered();
    let log = format!(
        "INSERT INTO {table}_deliveries (message_id, consumer, redelivered) VALUES ($1, $2, $3)"
    );
    let (log_id, log_name) = (id.clone(), name.to_owned());
    pool.run(&token, |conn| {
        Box::pin(async move {
            sqlx::query(AssertSqlSafe(log))
                .bind(log_id)
                .bind(log_name)
                .bind(redelivered)
                .execute(&mut *conn)
                .await?;
            Ok::<_, gracefully_sqlx::Error>(())
        })
    })
    .await?;

    // The work before the effect; it stops when the token fires.
    token
        .run_until_cancelled(tokio::time::sleep(Duration::from_millis(20)))
        .await?;

    // The effect and the id in one transaction: exactly once, however often it arrives.
    let (record, effect) = (
        format!(
            "INSERT INTO {table}_processed (message_id, consumer) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        ),
        format!("UPDATE {table}_account SET balance = balance + 1"),
    );
    let name = name.to_owned();
    pool.transaction(&token, |tx, _token| {
        Box::pin(async move {
            let first = sqlx::query(AssertSqlSafe(record))
                .bind(id)
                .bind(name)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                == 1;
            if first {
                sqlx::query(AssertSqlSafe(effect))
                    .execute(&mut **tx)
                    .await?;
            }
            Ok::<_, gracefully_sqlx::Error>(())
        })
    })
    .await
}

async fn create_tables(pool: &PgGracefulPool, table: &str) {
    let statements = [
        format!(
            "CREATE TABLE IF NOT EXISTS {table}_processed (message_id text PRIMARY KEY, consumer text NOT NULL)"
        ),
        format!("CREATE TABLE IF NOT EXISTS {table}_account (balance bigint NOT NULL)"),
        format!(
            "INSERT INTO {table}_account SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM {table}_account)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS {table}_deliveries (message_id text NOT NULL, consumer text NOT NULL, \
             redelivered boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
    ];
    let token = CancellationToken::never();
    for sql in statements {
        pool.run(&token, |conn| {
            Box::pin(async move {
                sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                Ok::<_, gracefully_sqlx::Error>(())
            })
        })
        .await
        .expect("create the example's tables");
    }
}
