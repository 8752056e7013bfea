//! The shutdown contract against a real RabbitMQ, in one process: drain hands back what
//! was prefetched but not started at once while in-flight handlers finish; the cancel phase
//! fires their tokens and hands back what they return; abort counts what still ran; and
//! the anchor — a plain lapin consumer — holds its prefetched messages until its channel
//! closes.
//!
//! Ignored by default; CI runs them with `AMQP_URL` set:
//!
//! ```sh
//! AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f cargo test -p gracefully-amqp -- --include-ignored
//! ```

mod support;

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_amqp::lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use gracefully_amqp::lapin::types::FieldTable;
use gracefully_amqp::{Bytes, Consumer, Message};
use gracefully_host::Phase;
use gracefully_test::{RunningHost, eventually, test_host};
use support::{Broker, amqp_url, unique, watcher};
use tokio::sync::Semaphore;

const NEEDS: &str = "needs RabbitMQ: set AMQP_URL";

/// Publishes `n` messages `m0`, `m1`, … to a fresh queue; returns the broker and the queue.
async fn queue_with(test: &str, n: usize) -> (Broker, String) {
    let broker = Broker::new().await;
    let queue = unique(test);
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    for i in 0..n {
        broker.publish(&queue, &format!("m{i}"), b"{}").await;
    }
    (broker, queue)
}

/// What the handlers of a test saw.
#[derive(Default)]
struct Seen {
    started: Mutex<Vec<String>>,
    reasons: Mutex<Vec<ReasonKind>>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn messages_are_handled_acked_and_counted_in_the_report_row() {
    let _ = NEEDS;
    let (broker, queue) = queue_with("handled", 20).await;
    let seen = Arc::new(Seen::default());
    let record = Arc::clone(&seen);
    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(4)
        .build(move |message: Message<Bytes>, _token| {
            let record = Arc::clone(&record);
            async move {
                record
                    .started
                    .lock()
                    .unwrap()
                    .push(message.id().unwrap().to_owned());
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let host = test_host().service("orders", consumer).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually("20 handled", Duration::from_secs(20), async || {
        stats.handled() == 20
    })
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let row = report.entry("orders").unwrap();
    assert_eq!(row.detail("handled"), Some("20"), "{report}");
    assert_eq!(row.detail("handed back at drain"), Some("0"), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    let mut ids = seen.started.lock().unwrap().clone();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
    assert_eq!(broker.ready(&queue).await, 0, "every message was acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn drain_hands_back_unstarted_messages_at_once_while_in_flight_ones_finish() {
    let (broker, queue) = queue_with("drain", 10).await;
    let seen = Arc::new(Seen::default());
    let release = Arc::new(Semaphore::new(0));
    let (record, gate) = (Arc::clone(&seen), Arc::clone(&release));
    // Two handlers at once, ten prefetched: eight wait in the client's buffer.
    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(2)
        .prefetch(10)
        .build(move |message: Message<Bytes>, _token| {
            let (record, gate) = (Arc::clone(&record), Arc::clone(&gate));
            async move {
                record
                    .started
                    .lock()
                    .unwrap()
                    .push(message.id().unwrap().to_owned());
                // Ignores the drain: it runs until the test lets it finish.
                gate.acquire().await.unwrap().forget();
                Ok::<_, std::convert::Infallible>(())
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let host = test_host()
        .shutdown_timeout(Duration::from_secs(30))
        .cancel_grace(Duration::from_secs(5))
        .service("orders", consumer)
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually(
        "two handlers running",
        Duration::from_secs(10),
        async || stats.in_flight() == 2,
    )
    .await;
    eventually("all ten prefetched", Duration::from_secs(10), async || {
        broker.ready(&queue).await == 0
    })
    .await;

    // A second consumer, which can only get messages the first one hands back.
    let (other, other_connection) = watcher(&queue, 100).await;
    let lifetime = running.lifetime().clone();
    let stop_requested = Instant::now();
    lifetime.stop(Reason::shutdown().with_message("test: drain"));
    let stopping = tokio::spawn(running.finished());
    assert!(
        other.wait_for(8, Duration::from_secs(10)).await,
        "the eight unstarted messages did not reach the other consumer: {:?}",
        other.ids()
    );
    let reached_after = other
        .messages
        .lock()
        .unwrap()
        .iter()
        .map(|(_, at, _)| at.duration_since(stop_requested))
        .max()
        .unwrap();
    println!(
        "amqp drain: 8 unstarted messages reached the other consumer {reached_after:?} after the stop request, while the 2 in-flight handlers were still running"
    );
    // The in-flight handlers are still running: the hand-back did not wait for them.
    assert_eq!(stats.in_flight(), 2);
    assert_eq!(lifetime.phase(), Phase::Drain);
    let handed: Vec<String> = other.ids();
    let started = seen.started.lock().unwrap().clone();
    assert!(
        handed.iter().all(|id| !started.contains(id)),
        "a started message was handed back: {handed:?} / {started:?}"
    );
    assert!(
        other.messages.lock().unwrap().iter().all(|(_, _, r)| *r),
        "handed-back messages arrive flagged redelivered"
    );

    release.add_permits(2);
    let report = stopping.await.unwrap().unwrap();
    let row = report.entry("orders").unwrap();
    assert_eq!(row.phase(), Phase::Drain, "{report}");
    assert_eq!(row.detail("handled"), Some("2"), "{report}");
    assert_eq!(row.detail("handed back at drain"), Some("8"), "{report}");
    assert_eq!(
        row.detail("cancelled and handed back"),
        Some("0"),
        "{report}"
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    drop(other_connection);
    assert_eq!(broker.ready(&queue).await, 0);
}

/// The anchor: a plain lapin consumer that stops (drops its stream, which sends
/// `basic.cancel`) keeps the messages it had prefetched until its channel closes; no other
/// consumer gets them before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_plain_lapin_consumer_hands_back_prefetched_messages_only_when_its_channel_closes() {
    let (_broker, queue) = queue_with("anchor", 10).await;
    let connection = support::connect().await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .basic_qos(10, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = consumer.next().await.unwrap().unwrap(); // "in flight"
    channel
        .basic_cancel(consumer.tag(), BasicCancelOptions::default())
        .await
        .unwrap();
    drop(consumer);
    let (other, _other_connection) = watcher(&queue, 100).await;
    let held_for = Duration::from_millis(500);
    assert!(
        !other.wait_for(1, held_for).await,
        "lapin handed back a prefetched message before its channel closed"
    );
    let closed = Instant::now();
    drop(first);
    channel.close(200, "done".into()).await.unwrap();
    assert!(other.wait_for(10, Duration::from_secs(10)).await);
    println!(
        "amqp drain anchor: a plain lapin consumer's 9 prefetched messages reached no one for the {held_for:?} its channel stayed open, then all 10 within {:?} of the close",
        closed.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn at_hard_stop_tokens_fire_and_cancelled_messages_are_handed_back_without_using_a_delivery()
{
    let (broker, queue) = queue_with("cancel", 6).await;
    let seen = Arc::new(Seen::default());
    let record = Arc::clone(&seen);
    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(2)
        .prefetch(6)
        .build(move |message: Message<Bytes>, token: CancellationToken| {
            let record = Arc::clone(&record);
            async move {
                record
                    .started
                    .lock()
                    .unwrap()
                    .push(message.id().unwrap().to_owned());
                // Ignores the drain, honours its token.
                let reason = token.cancelled().await;
                record.reasons.lock().unwrap().push(reason.kind());
                Err(gracefully::Cancelled::new(reason))
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let host = test_host()
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_secs(1))
        .service("orders", consumer)
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually(
        "two handlers running",
        Duration::from_secs(10),
        async || stats.in_flight() == 2,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let row = report.entry("orders").unwrap();
    assert_eq!(row.phase(), Phase::Cancel, "{report}");
    assert_eq!(
        row.detail("cancelled and handed back"),
        Some("2"),
        "{report}"
    );
    assert_eq!(row.detail("handed back at drain"), Some("4"), "{report}");
    assert_eq!(row.detail("handled"), Some("0"), "{report}");
    assert_eq!(row.detail("retried"), Some("0"), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(
        *seen.reasons.lock().unwrap(),
        [ReasonKind::Shutdown, ReasonKind::Shutdown]
    );
    // All six are back, none used up a delivery.
    eventually(
        "all six back in the queue",
        Duration::from_secs(10),
        async || broker.ready(&queue).await == 6,
    )
    .await;
    for _ in 0..6 {
        let message = broker.get(&queue).await.unwrap();
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        assert!(
            !headers.inner().contains_key("x-gracefully-failures"),
            "a handed-back message was counted as failed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn handlers_that_ignore_their_token_are_counted_at_abort_and_their_messages_come_back() {
    let (broker, queue) = queue_with("abort", 4).await;
    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(2)
        .prefetch(4)
        .build(|_message: Message<Bytes>, _token| async move {
            // Ignores everything.
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    let stats = consumer.stats();
    let host = test_host()
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_millis(500))
        .service("orders", consumer)
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually(
        "two handlers running",
        Duration::from_secs(10),
        async || stats.in_flight() == 2,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let row = report.entry("orders").unwrap();
    assert_eq!(row.phase(), Phase::Abort, "{report}");
    assert_eq!(row.detail("in flight at abort"), Some("2"), "{report}");
    assert_eq!(row.detail("handed back at drain"), Some("2"), "{report}");
    assert_eq!(report.exit_code(), 2, "{report}");
    // The aborted consumer's connection is gone: the broker requeued its two.
    eventually(
        "all four back in the queue",
        Duration::from_secs(15),
        async || broker.ready(&queue).await == 4,
    )
    .await;
}
