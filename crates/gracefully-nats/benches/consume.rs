//! Messages per second through a [`Consumer`] against a plain async-nats pull-consumer loop
//! doing the same explicit ack of each message, in the same run.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo bench -p gracefully-nats --bench consume
//! ```
//!
//! Each round fills a fresh stream with `MESSAGES` 16-byte messages, then drains it once
//! with each side (alternating which goes first), on its own connection and its own
//! durable consumer:
//!
//! - async-nats: `consumer.messages()` (batch 200, its default) and `msg.ack().await` per
//!   message — the loop every async-nats user writes;
//! - gracefully: a `Consumer` under a host, concurrency 100 (prefetch 100: it holds at most
//!   200, like the batch above), a handler that does nothing, so the consumer acks each
//!   message. Timed from before the host starts (connect and bind included) until the
//!   last message was handled.
//!
//! Prints each round, then the medians:
//! `nats consume: gracefully <n>/s, async-nats <n>/s, ratio <r>` (target ≥ 0.95).
//! The broker runs on the same machine and shares its cores with both sides: a loaded
//! machine moves both figures; the ratio, measured in the same run, moves less.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use futures_util::StreamExt;
use gracefully::Reason;
use gracefully_nats::Consumer;
use gracefully_test::{RunningHost, test_host};
use tokio::sync::Notify;

const MESSAGES: usize = 200_000;
const ROUNDS: usize = 5;
const CONCURRENCY: usize = 100;

fn main() {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(&url));
}

async fn run(url: &str) {
    let client = async_nats::connect(url)
        .await
        .unwrap_or_else(|e| panic!("NATS at {url}: {e} (set NATS_URL)"));
    let js = jetstream::new(client);
    let name = format!("BENCH_CONSUME_{}", std::process::id());
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for round in 0..ROUNDS {
        fill(&js, &name).await;
        let (a, b) = if round % 2 == 0 {
            let b = plain(url, &js, &name, "plain").await;
            let a = gracefully(url, &name, "graceful").await;
            (a, b)
        } else {
            let a = gracefully(url, &name, "graceful").await;
            let b = plain(url, &js, &name, "plain").await;
            (a, b)
        };
        println!(
            "round {}: gracefully {:.0}/s, async-nats {:.0}/s, ratio {:.3}",
            round + 1,
            a,
            b,
            a / b
        );
        ours.push(a);
        theirs.push(b);
        js.delete_stream(&name).await.unwrap();
    }
    let (a, b) = (median(&mut ours), median(&mut theirs));
    println!(
        "nats consume: gracefully {a:.0}/s, async-nats {b:.0}/s, ratio {:.3}  \
         (medians of {ROUNDS} rounds, {MESSAGES} messages of 16 bytes each)",
        a / b
    );
}

/// A fresh stream holding `MESSAGES` messages.
async fn fill(js: &jetstream::Context, name: &str) {
    let _ = js.delete_stream(name).await;
    js.create_stream(stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.>")],
        ..Default::default()
    })
    .await
    .unwrap();
    let payload = Bytes::from_static(b"0123456789abcdef");
    let subject = format!("{name}.m");
    let mut acks = Vec::with_capacity(1000);
    for _ in 0..MESSAGES {
        acks.push(js.publish(subject.clone(), payload.clone()).await.unwrap());
        if acks.len() == 1000 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
}

async fn durable(js: &jetstream::Context, stream: &str, consumer: &str) {
    js.get_stream(stream)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some(consumer.into()),
            ..Default::default()
        })
        .await
        .unwrap();
}

/// The anchor: async-nats's `messages()` and an explicit ack of each message.
async fn plain(url: &str, js: &jetstream::Context, stream: &str, consumer: &str) -> f64 {
    durable(js, stream, consumer).await;
    let client = async_nats::connect(url).await.unwrap();
    let started = Instant::now();
    let consumer: jetstream::consumer::PullConsumer = jetstream::new(client.clone())
        .get_stream(stream)
        .await
        .unwrap()
        .get_consumer(consumer)
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    for _ in 0..MESSAGES {
        let message = messages.next().await.unwrap().unwrap();
        message.ack().await.unwrap();
    }
    client.flush().await.unwrap();
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    drop(messages);
    rate
}

/// A `Consumer` under a host, its handler doing nothing.
async fn gracefully(url: &str, stream: &str, consumer: &str) -> f64 {
    let handled = Arc::new(AtomicUsize::new(0));
    let all = Arc::new(Notify::new());
    let (count, done) = (Arc::clone(&handled), Arc::clone(&all));
    let service = Consumer::builder(url)
        .stream(stream)
        .consumer(consumer)
        .concurrency(CONCURRENCY)
        .handler(move |_message, _token| {
            let (count, done) = (Arc::clone(&count), Arc::clone(&done));
            async move {
                if count.fetch_add(1, Ordering::Relaxed) + 1 == MESSAGES {
                    done.notify_one();
                }
                Ok::<_, std::io::Error>(())
            }
        })
        .build()
        .unwrap();
    let started = Instant::now();
    let host = RunningHost::start(test_host().service("consumer", service).build().unwrap())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(300), all.notified())
        .await
        .expect("every message handled");
    let rate = MESSAGES as f64 / started.elapsed().as_secs_f64();
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    rate
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
