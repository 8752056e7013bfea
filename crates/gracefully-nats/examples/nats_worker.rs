//! A consumer process that applies each message's effect exactly once in PostgreSQL: the
//! crate's recipe (the message id in the same transaction as the effect) under a host
//! that handles SIGTERM. The process tests (`tests/exactly_once.rs`) run it and kill it.
//!
//! ```sh
//! cargo run -p gracefully-nats --example nats_worker -- \
//!     --url nats://127.0.0.1:4222 --stream ORDERS --consumer workers \
//!     --database-url postgres://postgres@127.0.0.1:5432/postgres --tables demo \
//!     [--concurrency 4] [--prefetch 4] [--handler-ms 20]
//! ```
//!
//! Prints `ready` once consuming, and its shutdown report when it stops (exit code 0 after a
//! clean drain). The tables `processed_<tables>` and `effects_<tables>` must exist.

#[path = "../tests/support/effects.rs"]
mod effects;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gracefully::CancellationToken;
use gracefully_host::Host;
use gracefully_nats::{Consumer, Message};

use effects::Effects;

struct Args {
    url: String,
    stream: String,
    consumer: String,
    database_url: String,
    tables: String,
    concurrency: usize,
    prefetch: Option<usize>,
    handler: Duration,
}

fn args() -> Args {
    let mut args = Args {
        url: "nats://127.0.0.1:4222".into(),
        stream: String::new(),
        consumer: String::new(),
        database_url: String::new(),
        tables: String::new(),
        concurrency: 4,
        prefetch: None,
        handler: Duration::from_millis(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => args.url = value,
            "--stream" => args.stream = value,
            "--consumer" => args.consumer = value,
            "--database-url" => args.database_url = value,
            "--tables" => args.tables = value,
            "--concurrency" => args.concurrency = value.parse().expect("--concurrency N"),
            "--prefetch" => args.prefetch = Some(value.parse().expect("--prefetch N")),
            "--handler-ms" => {
                args.handler = Duration::from_millis(value.parse().expect("--handler-ms MS"))
            }
            other => panic!("unknown option {other}"),
        }
    }
    args
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gracefully_nats=info,gracefully_host=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    let effects = Arc::new(Effects::connect(&args.database_url, &args.tables).await);
    let work = args.handler;
    let mut consumer = Consumer::builder(&args.url)
        .stream(&args.stream)
        .consumer(&args.consumer)
        .concurrency(args.concurrency);
    if let Some(prefetch) = args.prefetch {
        consumer = consumer.prefetch(prefetch);
    }
    let consumer = consumer
        .handler(move |msg: Message<Bytes>, token: CancellationToken| {
            let effects = Arc::clone(&effects);
            async move { effects.handle(msg.id(), work, &token).await.map(|_| ()) }
        })
        .build()
        .expect("valid configuration");
    let host = Host::builder()
        .shutdown_timeout(Duration::from_secs(10))
        .cancel_grace(Duration::from_secs(2))
        .service("consumer", consumer)
        .build()
        .expect("valid configuration");
    let lifetime = host.lifetime();
    tokio::spawn(async move {
        lifetime.started().cancelled().await;
        println!("ready");
        let _ = std::io::stdout().flush();
    });
    let report = host.run().await;
    println!("{report}");
    let _ = std::io::stdout().flush();
    std::process::exit(report.exit_code());
}
