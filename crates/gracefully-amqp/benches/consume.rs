//! Messages per second through a `gracefully_amqp::Consumer` against a plain lapin
//! consumer loop doing the same ack, in the same run, with the same prefetch (100), on
//! the same broker: `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`).
//!
//! ```sh
//! cargo bench -p gracefully-amqp --bench consume
//! ```
//!
//! Each round fills a fresh queue with `MESSAGES` 16-byte messages, then times one
//! consumer from its first delivery to its last ack; the two sides alternate (ROUNDS
//! each, the first round of each side a warm-up) and the medians are compared. The anchor
//! is the loop every lapin user writes: `while let Some(d) = consumer.next().await {
//! d.ack(..).await }`. The gracefully side runs a host service with prefetch 100, a
//! handler that returns `Ok(())` at once, a task and a token per message: with concurrency
//! 50 (the first line printed: acks from many tasks overlap, which the serial loop cannot
//! do) and with concurrency 1 (the second line: handled and acked one at a time like the
//! loop, so the ratio is the per-message overhead).
//! The broker, the client and the benchmark share the machine's cores, so figures taken on
//! a loaded machine are indicative.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gracefully::{CancellationToken, Reason};
use gracefully_amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use gracefully_amqp::lapin::types::FieldTable;
use gracefully_amqp::lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use gracefully_amqp::{Bytes, Consumer, Message};
use gracefully_host::Host;

const MESSAGES: u64 = 20_000;
const ROUNDS: usize = 4;
const PREFETCH: u16 = 100;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("the benchmark needs RabbitMQ at AMQP_URL ({}): {e}", url()));
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("gracefully-amqp-bench.{}", std::process::id());

    let (mut gracefully_rates, mut serial_rates, mut lapin_rates) = (vec![], vec![], vec![]);
    for round in 0..ROUNDS {
        fill(&channel, &queue).await;
        let lapin = lapin_loop(&queue).await;
        fill(&channel, &queue).await;
        let ours = gracefully_consumer(&queue, 50).await;
        fill(&channel, &queue).await;
        let serial = gracefully_consumer(&queue, 1).await;
        eprintln!(
            "round {round}{}: gracefully {ours:.0}/s (concurrency 1: {serial:.0}/s), lapin {lapin:.0}/s",
            if round == 0 { " (warm-up)" } else { "" }
        );
        if round > 0 {
            gracefully_rates.push(ours);
            serial_rates.push(serial);
            lapin_rates.push(lapin);
        }
    }
    for suffix in ["", ".dead"] {
        let _ = channel
            .queue_delete(
                format!("{queue}{suffix}").as_str().into(),
                QueueDeleteOptions::default(),
            )
            .await;
    }
    let (ours, serial, lapin) = (
        median(gracefully_rates),
        median(serial_rates),
        median(lapin_rates),
    );
    println!(
        "amqp consume: gracefully {ours:.0}/s, lapin {lapin:.0}/s, ratio {:.3}",
        ours / lapin
    );
    // One handler at a time: the same serial ack-after-handling as the lapin loop, so the
    // ratio is the per-message overhead (a task, a token, the settle step).
    println!(
        "amqp consume (concurrency 1): gracefully {serial:.0}/s, lapin {lapin:.0}/s, ratio {:.3}",
        serial / lapin
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A fresh queue holding `MESSAGES` 16-byte messages.
async fn fill(channel: &Channel, queue: &str) {
    let _ = channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut confirms = Vec::with_capacity(MESSAGES as usize);
    for i in 0..MESSAGES {
        confirms.push(
            channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    format!("{i:016}").as_bytes(),
                    BasicProperties::default(),
                )
                .await
                .unwrap(),
        );
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }
}

/// The anchor: lapin's consumer stream with an ack per message, in order.
async fn lapin_loop(queue: &str) -> f64 {
    let connection = Connection::connect(&url(), ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut first = None;
    let mut n = 0;
    while let Some(delivery) = consumer.next().await {
        let delivery = delivery.unwrap();
        first.get_or_insert_with(Instant::now);
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        n += 1;
        if n == MESSAGES {
            break;
        }
    }
    let elapsed = first.unwrap().elapsed();
    let _ = connection.close(200, "done".into()).await;
    MESSAGES as f64 / elapsed.as_secs_f64()
}

/// The same through a `Consumer` run by a host.
async fn gracefully_consumer(queue: &str, concurrency: usize) -> f64 {
    let first: Arc<OnceLock<Instant>> = Arc::default();
    let seen = Arc::new(AtomicU64::new(0));
    let (first2, seen2) = (Arc::clone(&first), Arc::clone(&seen));
    let consumer = Consumer::builder(url(), queue)
        .concurrency(concurrency)
        .prefetch(u32::from(PREFETCH))
        .max_deliveries(1)
        .build(move |_message: Message<Bytes>, _token: CancellationToken| {
            first2.get_or_init(Instant::now);
            seen2.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, std::convert::Infallible>(()))
        })
        .unwrap();
    let stats = consumer.stats();
    let host = Host::builder()
        .handle_signals(false)
        .service("bench", consumer)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    // Waits for the last ack on a thread of its own, so the wait takes no turn on the
    // runtime the consumer runs on.
    let done = Arc::new(AtomicBool::new(false));
    let done2 = Arc::clone(&done);
    let ended = tokio::task::spawn_blocking(move || {
        while stats.handled() < MESSAGES {
            std::thread::sleep(Duration::from_micros(200));
        }
        done2.store(true, Ordering::Release);
        Instant::now()
    })
    .await
    .unwrap();
    let elapsed = ended.duration_since(*first.get().unwrap());
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert!(done.load(Ordering::Acquire));
    MESSAGES as f64 / elapsed.as_secs_f64()
}
