//! Failures against a real RabbitMQ: a poison message is dead-lettered with the error in
//! its headers while the consumer keeps going; a failing handler is retried with backoff
//! and dead-lettered after `max_deliveries`; a cut connection fires the in-flight tokens
//! with `Disconnected`, the consumer reconnects and nothing is lost; a missing queue or
//! exchange, a bad URL or an unreachable broker fail the start with an error naming them.
//!
//! The broker tests are ignored by default; CI runs them with `AMQP_URL` set. The
//! unreachable-broker test needs no broker and always runs.

mod support;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_amqp::lapin::types::AMQPValue;
use gracefully_amqp::{Backoff, Bytes, Consumer, DeadLetter, Message};
use gracefully_test::{RunningHost, eventually, test_host};
use support::{Broker, Proxy, amqp_url, broker_address, unique};

/// Each message id's deliveries: the delivery count the handler saw, and when.
type Deliveries = BTreeMap<String, Vec<(u32, Instant)>>;

#[derive(serde::Deserialize)]
struct Job {
    fail: bool,
}

fn header_text(message: &gracefully_amqp::lapin::message::BasicGetMessage, name: &str) -> String {
    let headers = message
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        Some(AMQPValue::LongLongInt(n)) => n.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_poison_message_is_dead_lettered_at_once_and_a_failing_one_after_its_retries_while_the_consumer_keeps_going()
 {
    let broker = Broker::new().await;
    let queue = unique("poison");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[50, 100]);
    for i in 0..10 {
        broker
            .publish(&queue, &format!("good{i}"), br#"{"fail":false}"#)
            .await;
    }
    broker
        .publish(&queue, "undecodable", b"this is not JSON")
        .await;
    broker.publish(&queue, "failing", br#"{"fail":true}"#).await;

    let deliveries: Arc<Mutex<Deliveries>> = Arc::default();
    let record = Arc::clone(&deliveries);
    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(3)
        .max_deliveries(3)
        .retry_backoff(Backoff::exponential(
            Duration::from_millis(50),
            Duration::from_millis(100),
        ))
        .decode::<Job>()
        .build(move |message: Message<Job>, _token| {
            let record = Arc::clone(&record);
            async move {
                record
                    .lock()
                    .unwrap()
                    .entry(message.id().unwrap().to_owned())
                    .or_default()
                    .push((message.delivery_count(), Instant::now()));
                if message.payload().fail {
                    return Err(format!(
                        "the card was declined (delivery {})",
                        message.delivery_count()
                    ));
                }
                Ok(())
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let host = test_host().service("jobs", consumer).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually("both dead-lettered", Duration::from_secs(20), async || {
        stats.dead_lettered() == 2
    })
    .await;
    eventually(
        "the good ones handled",
        Duration::from_secs(20),
        async || stats.handled() == 10,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let row = report.entry("jobs").unwrap();
    assert_eq!(row.detail("dead-lettered"), Some("2"), "{report}");
    assert_eq!(row.detail("retried"), Some("2"), "{report}");
    assert_eq!(row.detail("handled"), Some("10"), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");

    let deliveries = deliveries.lock().unwrap().clone();
    assert!(
        !deliveries.contains_key("undecodable"),
        "the handler was called for an undecodable body"
    );
    let failing = &deliveries["failing"];
    assert_eq!(
        failing.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3],
        "delivered max_deliveries times, counting up"
    );
    assert!(
        failing[1].1 - failing[0].1 >= Duration::from_millis(50)
            && failing[2].1 - failing[1].1 >= Duration::from_millis(100),
        "retried after its backoff: {failing:?}"
    );

    let mut dead = BTreeMap::new();
    while let Some(message) = broker.get(&format!("{queue}.dead")).await {
        let id = message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .unwrap()
            .to_string();
        dead.insert(id, message);
    }
    assert_eq!(dead.len(), 2);
    let undecodable = &dead["undecodable"];
    assert_eq!(undecodable.delivery.data, b"this is not JSON", "body kept");
    assert_eq!(
        header_text(undecodable, "x-gracefully-error-kind"),
        "undecodable"
    );
    assert_eq!(header_text(undecodable, "x-gracefully-deliveries"), "1");
    assert!(header_text(undecodable, "x-gracefully-error").contains("expected"));
    let failed = &dead["failing"];
    assert_eq!(header_text(failed, "x-gracefully-error-kind"), "failed");
    assert_eq!(header_text(failed, "x-gracefully-deliveries"), "3");
    assert_eq!(
        header_text(failed, "x-gracefully-error"),
        "the card was declined (delivery 3)"
    );
    assert_eq!(header_text(failed, "x-gracefully-queue"), queue);
    assert_eq!(header_text(failed, "x-gracefully-routing-key"), queue);
    assert_eq!(broker.ready(&queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_panicking_handler_is_a_failure_of_its_message_not_of_the_consumer() {
    let broker = Broker::new().await;
    let queue = unique("panic");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[]);
    broker.publish(&queue, "boom", b"").await;
    broker.publish(&queue, "fine", b"").await;
    let consumer = Consumer::builder(amqp_url(), &queue)
        .max_deliveries(1)
        .build(|message: Message<Bytes>, _token| async move {
            assert_ne!(message.id(), Some("boom"), "a bug in the handler");
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    let stats = consumer.stats();
    let running = RunningHost::start(test_host().service("c", consumer).build().unwrap())
        .await
        .unwrap();
    eventually(
        "one handled, one dead",
        Duration::from_secs(20),
        async || stats.handled() == 1 && stats.dead_lettered() == 1,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let dead = broker.get(&format!("{queue}.dead")).await.unwrap();
    assert!(header_text(&dead, "x-gracefully-error").contains("the handler panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_cut_connection_fires_in_flight_tokens_with_disconnected_and_the_consumer_reconnects_losing_nothing()
 {
    let broker = Broker::new().await;
    let queue = unique("cut");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    const N: usize = 120;
    for i in 0..N {
        broker.publish(&queue, &format!("m{i}"), b"").await;
    }
    let proxy = Proxy::start(&broker_address()).await;
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let reasons: Arc<Mutex<Vec<ReasonKind>>> = Arc::default();
    let (record, seen) = (Arc::clone(&done), Arc::clone(&reasons));
    let consumer = Consumer::builder(proxy.url(), &queue)
        .concurrency(4)
        .reconnect_backoff(Backoff::fixed(Duration::from_millis(50)))
        .build(move |message: Message<Bytes>, token: CancellationToken| {
            let (record, seen) = (Arc::clone(&record), Arc::clone(&seen));
            async move {
                // 300 ms of work that stops when the token fires: long enough that some are
                // still running at the cut (with 40 ms, a loaded CI machine once let them
                // all finish first).
                if let Err(cancelled) = token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_millis(300)))
                    .await
                {
                    seen.lock().unwrap().push(cancelled.kind());
                    return Err(cancelled);
                }
                record
                    .lock()
                    .unwrap()
                    .insert(message.id().unwrap().to_owned());
                Ok(())
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let running = RunningHost::start(test_host().service("c", consumer).build().unwrap())
        .await
        .unwrap();
    eventually(
        "some handled, four in flight",
        Duration::from_secs(20),
        async || stats.handled() >= 8 && stats.in_flight() == 4,
    )
    .await;
    proxy.cut();
    eventually("reconnected", Duration::from_secs(20), async || {
        stats.reconnects() >= 1
    })
    .await;
    eventually(
        "every message handled",
        Duration::from_secs(30),
        async || done.lock().unwrap().len() == N,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let reasons = reasons.lock().unwrap().clone();
    assert!(
        !reasons.is_empty() && reasons.iter().all(|k| *k == ReasonKind::Disconnected),
        "in-flight tokens fire with Disconnected: {reasons:?}"
    );
    let row = report.entry("c").unwrap();
    let at_disconnect: u64 = row
        .detail("in flight at disconnect")
        .unwrap()
        .parse()
        .unwrap();
    assert!(at_disconnect >= 1, "{report}");
    assert_eq!(row.detail("reconnects"), Some("1"), "{report}");
    assert_eq!(broker.ready(&queue).await, 0, "nothing left behind");
    println!(
        "amqp cut: {} in-flight tokens fired with Disconnected, {at_disconnect} messages redelivered after the reconnect, all {N} handled",
        reasons.len()
    );
}

/// Every concurrency slot held by a handler that waits for its token: the consume loop reads
/// no delivery then, so it must learn of the cut from the connection itself (lapin's error
/// event), not from the delivery stream. Before the connection watch, the tokens had not
/// fired 20 s after the cut.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_cut_connection_fires_the_tokens_of_handlers_holding_every_slot() {
    let broker = Broker::new().await;
    let queue = unique("cut-held");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    const N: usize = 8;
    for i in 0..N {
        broker.publish(&queue, &format!("m{i}"), b"").await;
    }
    let proxy = Proxy::start(&broker_address()).await;
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let fired: Arc<Mutex<Vec<(ReasonKind, Instant)>>> = Arc::default();
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (record, seen, after_cut) = (Arc::clone(&done), Arc::clone(&fired), Arc::clone(&cut));
    let consumer = Consumer::builder(proxy.url(), &queue)
        .concurrency(4)
        .reconnect_backoff(Backoff::fixed(Duration::from_millis(50)))
        .build(move |message: Message<Bytes>, token: CancellationToken| {
            let (record, seen) = (Arc::clone(&record), Arc::clone(&seen));
            let held = !after_cut.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                // Before the cut: hold the slot until the token fires (a minute at most).
                if held
                    && let Err(cancelled) = token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                        .await
                {
                    seen.lock()
                        .unwrap()
                        .push((cancelled.kind(), Instant::now()));
                    return Err(cancelled);
                }
                record
                    .lock()
                    .unwrap()
                    .insert(message.id().unwrap().to_owned());
                Ok(())
            }
        })
        .unwrap();
    let stats = consumer.stats();
    let running = RunningHost::start(test_host().service("c", consumer).build().unwrap())
        .await
        .unwrap();
    eventually(
        "four handlers holding every slot",
        Duration::from_secs(20),
        async || stats.in_flight() == 4,
    )
    .await;
    cut.store(true, std::sync::atomic::Ordering::SeqCst);
    let cut_at = Instant::now();
    proxy.cut();
    eventually(
        "the held handlers' tokens fired",
        Duration::from_secs(10),
        async || fired.lock().unwrap().len() == 4,
    )
    .await;
    let fired = fired.lock().unwrap().clone();
    assert!(
        fired
            .iter()
            .all(|(kind, _)| *kind == ReasonKind::Disconnected),
        "{fired:?}"
    );
    let slowest = fired
        .iter()
        .map(|(_, at)| at.duration_since(cut_at))
        .max()
        .unwrap();
    eventually(
        "every message handled",
        Duration::from_secs(30),
        async || done.lock().unwrap().len() == N,
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(broker.ready(&queue).await, 0, "nothing left behind");
    println!("amqp cut with every slot held: the 4 tokens fired within {slowest:?} of the cut");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_missing_queue_fails_the_start_naming_it_unless_the_consumer_may_declare_it() {
    let broker = Broker::new().await;
    let queue = unique("missing");
    broker.forget(&queue);
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    let handler =
        |_m: Message<Bytes>, _t: CancellationToken| async { Ok::<_, std::convert::Infallible>(()) };
    let consumer = Consumer::builder(amqp_url(), &queue)
        .build(handler)
        .unwrap();
    let host = test_host().service("c", consumer).build().unwrap();
    let report = RunningHost::start(host)
        .await
        .unwrap()
        .finished()
        .await
        .unwrap();
    let text = report.to_string();
    assert_eq!(report.exit_code(), 1, "{text}");
    assert!(
        text.contains(&format!("the queue `{queue}` does not exist in vhost `/`"))
            && text.contains("ConsumerBuilder::declare"),
        "{text}"
    );

    let consumer = Consumer::builder(amqp_url(), &queue)
        .declare()
        .build(handler)
        .unwrap();
    let host = test_host().service("c", consumer).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    assert!(running.lifetime().is_ready());
    broker.publish(&queue, "x", b"").await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn a_missing_exchange_to_bind_or_dead_letter_to_fails_the_start_naming_it() {
    let broker = Broker::new().await;
    let queue = unique("exchange");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    let handler =
        |_m: Message<Bytes>, _t: CancellationToken| async { Ok::<_, std::convert::Infallible>(()) };
    for (consumer, needle) in [
        (
            Consumer::builder(amqp_url(), &queue).bind("no-such-exchange-gracefully", "k"),
            "the exchange `no-such-exchange-gracefully` (to bind the queue to) does not exist",
        ),
        (
            Consumer::builder(amqp_url(), &queue)
                .dead_letter(DeadLetter::exchange("no-such-dlx-gracefully", "k")),
            "the exchange `no-such-dlx-gracefully` (the dead-letter target) does not exist",
        ),
    ] {
        let host = test_host()
            .service("c", consumer.build(handler).unwrap())
            .build()
            .unwrap();
        let report = RunningHost::start(host)
            .await
            .unwrap()
            .finished()
            .await
            .unwrap();
        assert_eq!(report.exit_code(), 1);
        assert!(report.to_string().contains(needle), "{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn an_existing_queue_with_other_arguments_is_used_as_it_is_when_declaring() {
    use gracefully_amqp::lapin::options::QueueDeclareOptions;
    use gracefully_amqp::lapin::types::FieldTable;
    let broker = Broker::new().await;
    let queue = unique("args");
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongLongInt(1000));
    broker
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .unwrap();
    broker.forget(&queue);
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    broker.publish(&queue, "x", b"").await;
    let consumer = Consumer::builder(amqp_url(), &queue)
        .declare() // would declare it without x-max-length: PRECONDITION_FAILED
        .build(|_m: Message<Bytes>, _t: CancellationToken| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    let stats = consumer.stats();
    let running = RunningHost::start(test_host().service("c", consumer).build().unwrap())
        .await
        .unwrap();
    assert!(running.lifetime().is_ready(), "the start failed");
    eventually("handled", Duration::from_secs(10), async || {
        stats.handled() == 1
    })
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// Needs no broker: nothing listens on the port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_fails_the_start_with_an_error_naming_the_url_without_its_password() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: connections are refused
    let url = format!("amqp://guest:hunter2@127.0.0.1:{port}/%2f");
    let consumer = Consumer::builder(url, "orders")
        .build(|_m: Message<Bytes>, _t: CancellationToken| async {
            Ok::<_, std::convert::Infallible>(())
        })
        .unwrap();
    let host = test_host().service("orders", consumer).build().unwrap();
    let started = Instant::now();
    let report = RunningHost::start(host)
        .await
        .unwrap()
        .finished()
        .await
        .unwrap();
    let text = report.to_string();
    assert_eq!(report.exit_code(), 1, "{text}");
    assert!(
        text.contains(&format!(
            "could not connect to RabbitMQ at amqp://guest:***@127.0.0.1:{port}/%2f"
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10), "failed fast");
}
