//! The shutdown contract and the message outcomes, against a real NATS server
//! (`NATS_URL`): drain, cancel, abort, progress, dead letters, and the start step's errors.
//! Each test uses streams of its own (unique names) and deletes them.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::stream;
use bytes::Bytes;
use futures_util::StreamExt;
use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_host::{Outcome, Phase};
use gracefully_nats::{Backoff, Consumer, Message};
use gracefully_test::{RunningHost, eventually, test_host};
use support::{TestStream, count, nats_url, trace};
use tokio::time::Instant;

#[derive(serde::Deserialize, Debug)]
struct Num {
    n: u32,
}

/// The JetStream message ids (`m-<n>`) of the messages a handler saw, with their delivery
/// counts.
type Seen = Arc<Mutex<Vec<(String, u64)>>>;

/// A consumer of `c` on `s`: the common settings of these tests.
fn consumer_of(s: &TestStream) -> gracefully_nats::ConsumerBuilder {
    Consumer::builder(nats_url()).stream(&s.name).consumer("c")
}

/// A handler that acks at once.
fn ok(
    _msg: Message<Bytes>,
    _token: CancellationToken,
) -> std::future::Ready<Result<(), std::io::Error>> {
    std::future::ready(Ok(()))
}

/// A handler that ignores its token and never ends on its own.
async fn stuck(_msg: Message<Bytes>, _token: CancellationToken) -> Result<(), std::io::Error> {
    tokio::time::sleep(Duration::from_secs(600)).await;
    Ok(())
}

/// A handler that records each delivery's id and count, and acks.
fn recorder(
    seen: &Seen,
) -> impl Fn(Message<Bytes>, CancellationToken) -> std::future::Ready<Result<(), std::io::Error>>
+ Send
+ Sync
+ 'static {
    let seen = Arc::clone(seen);
    move |msg, _token| {
        seen.lock()
            .unwrap()
            .push((msg.id().to_owned(), msg.delivery_count()));
        std::future::ready(Ok(()))
    }
}

/// Runs `service` as `name` under a test host with `shutdown` and `grace` budgets (the
/// test host's own when `None`).
async fn run(
    name: &'static str,
    service: impl gracefully_host::BackgroundService,
    budgets: Option<(u64, u64)>,
) -> RunningHost {
    let mut host = test_host();
    if let Some((shutdown, grace)) = budgets {
        host = host
            .shutdown_timeout(Duration::from_secs(shutdown))
            .cancel_grace(Duration::from_secs(grace));
    }
    RunningHost::start(host.service(name, service).build().unwrap())
        .await
        .unwrap()
}

/// `handler`, counting in `started` each call the consumer makes, that is each handler it
/// starts. The server counts a message unacked the moment it sends it; the handler starts a
/// moment later, so a test that needs a handler running waits on this count (a loaded CI
/// machine saw 0 started just after the server counted them).
fn counted<Fut>(
    started: &Arc<AtomicUsize>,
    handler: impl Fn(Message<Bytes>, CancellationToken) -> Fut + Send + Sync + 'static,
) -> impl Fn(Message<Bytes>, CancellationToken) -> Fut + Send + Sync + 'static {
    let started = Arc::clone(started);
    move |msg, token| {
        started.fetch_add(1, Ordering::SeqCst);
        handler(msg, token)
    }
}

/// Waits until `n` handlers counted by [`counted`] started.
async fn running(started: &AtomicUsize, n: usize) {
    eventually(
        &format!("{n} handler(s) started"),
        Duration::from_secs(10),
        async || started.load(Ordering::SeqCst) >= n,
    )
    .await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        n,
        "no more than {n} started"
    );
}

/// Waits until `n` messages are delivered and unacked on `c`.
async fn in_flight(s: &TestStream, n: usize) {
    eventually(
        &format!("{n} message(s) in flight"),
        Duration::from_secs(10),
        async || s.consumer_info("c").await.num_ack_pending == n,
    )
    .await;
}

/// The error of row `row`, which must have failed.
fn failure(report: &gracefully_host::ShutdownReport, row: &str) -> String {
    match report.entry(row).unwrap().outcome() {
        Outcome::Failed(error) => error.clone(),
        _ => panic!("{row} should have failed:\n{report}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn drain_hands_back_unstarted_messages_at_once_and_lets_in_flight_ones_finish() {
    trace();
    let s = TestStream::create("DRAIN").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..10).await;

    let started = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&started);
    // The handlers finish when the test says so (not on their token, which the drain
    // leaves alone).
    let gate = gracefully::CancellationSource::new();
    let open = gate.token();
    let consumer = consumer_of(&s)
        .concurrency(2)
        .prefetch(4)
        .handler(move |_msg: Message<Bytes>, _token| {
            counter.fetch_add(1, Ordering::SeqCst);
            let open = open.clone();
            async move {
                open.cancelled().await;
                Ok::<_, std::io::Error>(())
            }
        })
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    // Two handlers run, four messages wait in the consumer: six unacked on the server.
    in_flight(&s, 6).await;
    running(&started, 2).await;

    let lifetime = host.lifetime().clone();
    let stopping = tokio::spawn(host.stop(Reason::shutdown().with_message("test")));
    lifetime.stopping().cancelled().await;
    // The four unstarted ones are handed back while the two handlers still run: another
    // client fetches them at once (AckWait is 30 s).
    let again = s.fetch_now("c", 4, Duration::from_secs(3)).await;
    let mut again_ids: Vec<&str> = again.iter().map(|(id, _)| id.as_str()).collect();
    again_ids.sort();
    assert_eq!(again_ids, ["m-2", "m-3", "m-4", "m-5"], "{again:?}");
    assert!(
        again.iter().all(|(_, delivered)| *delivered == 2),
        "{again:?}"
    );
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "nothing started after the drain began"
    );
    gate.cancel();

    let report = stopping.await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let row = report.entry("c").unwrap();
    assert_eq!(
        (row.phase(), row.outcome()),
        (Phase::Drain, &Outcome::Completed),
        "{report}"
    );
    assert_eq!(
        count(&report, "c", "handled"),
        2,
        "in-flight handlers finish and are acked:\n{report}"
    );
    assert_eq!(count(&report, "c", "handed back at drain"), 4, "{report}");
    assert_eq!(
        count(&report, "c", "cancelled and handed back"),
        0,
        "{report}"
    );

    // The rest go to the next consumer; the two handled ones are gone for good.
    let rest = s.fetch_now("c", 10, Duration::from_secs(2)).await;
    assert_eq!(rest.len(), 4, "m-6 … m-9 remain: {rest:?}");
    assert!(
        rest.iter().all(|(_, delivered)| *delivered == 1),
        "{rest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn cancel_phase_fires_tokens_and_hands_back_messages_whose_handlers_return_cancelled() {
    trace();
    let s = TestStream::create("CANCEL").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..2).await;

    let reasons: Arc<Mutex<Vec<ReasonKind>>> = Arc::default();
    let log = Arc::clone(&reasons);
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = consumer_of(&s)
        .concurrency(2)
        .prefetch(0)
        .handler(counted(
            &started,
            move |_msg: Message<Bytes>, token: CancellationToken| {
                let log = Arc::clone(&log);
                async move {
                    // Honours its token: stops with `Cancelled` at the hard stop.
                    let stopped = token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                        .await;
                    if let Err(cancelled) = &stopped {
                        log.lock().unwrap().push(cancelled.kind());
                    }
                    stopped
                }
            },
        ))
        .build()
        .unwrap();
    let host = run("c", consumer, Some((3, 2))).await;
    in_flight(&s, 2).await;
    running(&started, 2).await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(
        report.entry("c").unwrap().phase(),
        Phase::Cancel,
        "{report}"
    );
    assert_eq!(
        count(&report, "c", "cancelled and handed back"),
        2,
        "{report}"
    );
    assert_eq!(count(&report, "c", "handled"), 0, "{report}");
    assert_eq!(
        *reasons.lock().unwrap(),
        [ReasonKind::Shutdown, ReasonKind::Shutdown]
    );
    // Handed back, not left to AckWait (30 s): a fetch gets both again at once.
    let again = s.fetch_now("c", 2, Duration::from_secs(3)).await;
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(
        again.iter().all(|(_, delivered)| *delivered == 2),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_handler_that_ignores_its_token_is_aborted_counted_and_its_message_handed_back() {
    trace();
    let s = TestStream::create("ABORT").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..1).await;
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = consumer_of(&s)
        .concurrency(1)
        .prefetch(0)
        .handler(counted(&started, stuck))
        .build()
        .unwrap();
    let host = run("c", consumer, Some((2, 1))).await;
    in_flight(&s, 1).await;
    running(&started, 1).await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 2, "{report}");
    assert_eq!(
        report.entry("c").unwrap().outcome(),
        &Outcome::Aborted,
        "{report}"
    );
    assert_eq!(count(&report, "c", "in flight at abort"), 1, "{report}");
    // Handed back by the drop, long before its AckWait (30 s) would have.
    let again = s.fetch_now("c", 1, Duration::from_secs(5)).await;
    assert_eq!(again, [("m-0".to_owned(), 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn progress_keeps_a_handler_slower_than_ack_wait_from_redelivery() {
    trace();
    let s = TestStream::create("PROGRESS").await;
    s.durable("c", Duration::from_secs(2)).await;
    s.publish_numbers(0..1).await;
    let seen: Seen = Arc::default();
    let record = recorder(&seen);
    let consumer = consumer_of(&s)
        .concurrency(2)
        .handler(move |msg: Message<Bytes>, token: CancellationToken| {
            let recorded = record(msg, token.clone());
            async move {
                recorded.await?;
                // 3 × AckWait.
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(6)))
                    .await
                    .map_err(std::io::Error::other)
            }
        })
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    eventually(
        "the slow handler finished and acked",
        Duration::from_secs(20),
        async || {
            let info = s.consumer_info("c").await;
            info.ack_floor.stream_sequence == 1 && info.num_ack_pending == 0
        },
    )
    .await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [("m-0".to_owned(), 1)],
        "handled once, never redelivered"
    );
    assert_eq!(count(&report, "c", "handled"), 1, "{report}");
    assert_eq!(s.consumer_info("c").await.num_redelivered, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn progress_stops_once_the_token_fired_so_a_stuck_handlers_message_is_redelivered() {
    trace();
    let s = TestStream::create("STUCK").await;
    s.durable("c", Duration::from_secs(2)).await;
    s.publish_numbers(0..1).await;
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = consumer_of(&s)
        .concurrency(1)
        .prefetch(0)
        .handler(counted(&started, stuck))
        .build()
        .unwrap();
    // Hard stop 1 s after the stop request; the abort only 8 s after it.
    let stuck_host = run("stuck", consumer, Some((9, 8))).await;
    in_flight(&s, 1).await;
    running(&started, 1).await;
    // Progress holds it past two AckWaits while the token lives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(s.consumer_info("c").await.num_redelivered, 0);

    let lifetime = stuck_host.lifetime().clone();
    let stopping = tokio::spawn(stuck_host.stop(Reason::shutdown()));
    lifetime.hard_stop().cancelled().await;
    let hard_stop = Instant::now();

    // Once the token fired, progress stops: JetStream redelivers within an AckWait of the
    // last signal, to another consumer, while the stuck handler still runs (before the abort).
    let seen: Seen = Arc::default();
    let other = consumer_of(&s).handler(recorder(&seen)).build().unwrap();
    let other_host = run("other", other, None).await;
    eventually(
        "redelivered to the other consumer",
        Duration::from_secs(6),
        async || !seen.lock().unwrap().is_empty(),
    )
    .await;
    let redelivered_after = hard_stop.elapsed();
    assert!(
        !stopping.is_finished(),
        "redelivered only after the abort: progress did not stop"
    );
    assert_eq!(*seen.lock().unwrap(), [("m-0".to_owned(), 2)]);
    println!("redelivered {redelivered_after:?} after the hard stop (AckWait 2 s)");
    let report = stopping.await.unwrap().unwrap();
    assert_eq!(count(&report, "stuck", "in flight at abort"), 1, "{report}");
    other_host.stop(Reason::shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_poison_message_is_dead_lettered_a_panic_retried_and_the_consumer_keeps_going() {
    trace();
    let s = TestStream::create("POISON").await;
    let dead = TestStream::create("POISON_DEAD").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..5).await;
    s.publish("msgs", b"{not json").await; // undecodable
    s.publish_numbers(5..10).await;

    let attempts = Arc::new(AtomicUsize::new(0));
    let tries = Arc::clone(&attempts);
    let consumer = consumer_of(&s)
        .concurrency(4)
        .max_deliveries(3)
        .backoff(Backoff::fixed(Duration::from_millis(50)).without_jitter())
        .dead_letter(dead.subject("letters"))
        .decode::<Num>()
        .handler(move |msg: Message<Num>, _token| {
            // A panic is a failure like any other: retried, here successfully.
            assert!(
                !(msg.payload().n == 7 && msg.delivery_count() == 1),
                "deliberate panic: n = 7 panics on its first delivery (the test checks it is retried)"
            );
            let fail = msg.payload().n == 3;
            if fail {
                tries.fetch_add(1, Ordering::SeqCst);
            }
            async move {
                if fail {
                    return Err(std::io::Error::other("n = 3 is poison"));
                }
                Ok(())
            }
        })
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    let (_, js) = support::connect().await;
    eventually(
        "both poison messages dead-lettered, the rest handled",
        Duration::from_secs(15),
        async || {
            let info = s.consumer_info("c").await;
            let stored = js
                .get_stream(&dead.name)
                .await
                .unwrap()
                .info()
                .await
                .unwrap()
                .state
                .messages;
            stored == 2 && info.num_pending == 0 && info.num_ack_pending == 0
        },
    )
    .await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(count(&report, "c", "handled"), 9, "{report}");
    assert_eq!(
        count(&report, "c", "retried"),
        3,
        "the poison twice, the panic once:\n{report}"
    );
    assert_eq!(count(&report, "c", "dead-lettered"), 2, "{report}");
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        3,
        "tried max_deliveries times"
    );

    // The dead letters name what went wrong.
    let letters = js
        .get_stream(&dead.name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config::default())
        .await
        .unwrap();
    let mut messages = letters.fetch().max_messages(2).messages().await.unwrap();
    let mut found = Vec::new();
    while let Some(message) = messages.next().await {
        let message = message.unwrap();
        let headers = message.headers.clone().unwrap();
        let h = |k: &str| {
            headers
                .get(k)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        found.push((
            h("Gracefully-Error"),
            h("Gracefully-Deliveries"),
            h("Gracefully-Stream"),
            message.payload.clone(),
        ));
    }
    found.sort();
    assert_eq!(found.len(), 2, "{found:?}");
    let (poison, undecodable) = (&found[0], &found[1]);
    assert!(
        poison
            .0
            .starts_with("handler failed on delivery 3 of at most 3: n = 3 is poison"),
        "{poison:?}"
    );
    assert_eq!(
        (poison.1.as_str(), poison.2.as_str()),
        ("3", s.name.as_str())
    );
    assert_eq!(&poison.3[..], br#"{"n":3}"#);
    assert!(
        undecodable
            .0
            .starts_with("undecodable payload: not valid JSON"),
        "{undecodable:?}"
    );
    assert_eq!(undecodable.1, "1", "dead-lettered on its first delivery");
    assert_eq!(&undecodable.3[..], b"{not json");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_missing_stream_is_named_in_the_start_error_or_created_as_configured() {
    trace();
    let name = support::unique("MISSING");
    let bind = Consumer::builder(nats_url())
        .stream(&name)
        .consumer("c")
        .handler(ok)
        .build()
        .unwrap();
    let report = run("c", bind, None).await.finished().await.unwrap();
    let error = failure(&report, "c");
    assert!(
        error.contains(&format!("stream '{name}' does not exist on NATS at")),
        "{error}"
    );
    assert!(error.contains(".create_stream("), "{error}");

    let create = Consumer::builder(nats_url())
        .create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .consumer("c")
        .handler(ok)
        .build()
        .unwrap();
    let host = run("c", create, None).await;
    assert!(host.lifetime().is_ready());
    let (_, js) = support::connect().await;
    let created = js.get_stream(&name).await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    let _ = js.delete_stream(&name).await;
    assert!(created.is_ok(), "the stream was created");
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_push_consumer_or_an_uncaptured_dead_letter_subject_fails_the_start_step() {
    trace();
    let s = TestStream::create("MISMATCH").await;
    s.js.get_stream(&s.name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::push::Config {
            durable_name: Some("pushed".into()),
            deliver_subject: format!("{}_deliver", s.name),
            ..Default::default()
        })
        .await
        .unwrap();
    let push = Consumer::builder(nats_url())
        .stream(&s.name)
        .consumer("pushed")
        .handler(ok)
        .build()
        .unwrap();
    let error = failure(&run("c", push, None).await.finished().await.unwrap(), "c");
    assert!(
        error.contains("'pushed'") && error.contains("push consumer"),
        "{error}"
    );

    let subject = format!("{}_nowhere.dead", s.name);
    let uncaptured = consumer_of(&s)
        .dead_letter(&subject)
        .handler(ok)
        .build()
        .unwrap();
    let error = failure(
        &run("c", uncaptured, None).await.finished().await.unwrap(),
        "c",
    );
    assert!(
        error.contains(&format!(
            "no stream captures the dead-letter subject '{subject}'"
        )),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_consumer_deleted_under_a_running_consumer_fails_it_with_an_error_naming_it() {
    trace();
    let s = TestStream::create("DELETED").await;
    s.durable("c", Duration::from_secs(30)).await;
    let host = run("c", consumer_of(&s).handler(ok).build().unwrap(), None).await;
    eventually(
        "the consumer waits with a pull request",
        Duration::from_secs(10),
        async || s.consumer_info("c").await.num_waiting >= 1,
    )
    .await;
    s.js.get_stream(&s.name)
        .await
        .unwrap()
        .delete_consumer("c")
        .await
        .unwrap();
    let report = host.finished().await.unwrap();
    let error = failure(&report, "c");
    let expected = format!("JetStream consumer 'c' on stream '{}' was deleted", s.name);
    assert!(error.contains(&expected), "{error}");
    assert_eq!(report.exit_code(), 1, "{report}");
}

/// The same while every slot is busy, so no pull request waits when the consumer goes: the
/// server never answers the later ones (no `409`), and the consumer asks whether it still
/// exists when its requests go unanswered. (It pulled again every few seconds for ever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_consumer_deleted_while_all_its_slots_are_busy_fails_it_with_an_error_naming_it() {
    trace();
    let s = TestStream::create("DELBUSY").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..6).await;
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = consumer_of(&s)
        .concurrency(2)
        .handler(counted(
            &started,
            |_msg: Message<Bytes>, token: CancellationToken| async move {
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(2)))
                    .await
            },
        ))
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    running(&started, 2).await;
    s.js.get_stream(&s.name)
        .await
        .unwrap()
        .delete_consumer("c")
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(60), host.finished())
        .await
        .expect("the consumer noticed its deletion")
        .unwrap();
    let error = failure(&report, "c");
    let expected = format!("JetStream consumer 'c' on stream '{}' was deleted", s.name);
    assert!(error.contains(&expected), "{error}");
    assert_eq!(report.exit_code(), 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_decoder_that_panics_dead_letters_its_message_and_the_consumer_keeps_going() {
    trace();
    let s = TestStream::create("DECODER").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish("msgs", b"boom").await;
    s.publish("msgs", b"fine").await;
    let consumer = consumer_of(&s)
        .decode_with(|payload: &Bytes| {
            assert!(&payload[..] != b"boom", "deliberate panic: the decoder cannot take this payload (the test checks it is dead-lettered)");
            Ok::<_, std::io::Error>(payload.clone())
        })
        .handler(ok)
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    eventually("both settled", Duration::from_secs(10), async || {
        let info = s.consumer_info("c").await;
        info.num_pending == 0 && info.num_ack_pending == 0
    })
    .await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(count(&report, "c", "dead-lettered"), 1, "{report}");
    assert_eq!(count(&report, "c", "handled"), 1, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_consumer_whose_max_deliver_is_below_max_deliveries_fails_the_start_step() {
    trace();
    let s = TestStream::create("MAXDELIVER").await;
    s.js.get_stream(&s.name)
        .await
        .unwrap()
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("c".into()),
            max_deliver: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let consumer = consumer_of(&s)
        .max_deliveries(5)
        .handler(ok)
        .build()
        .unwrap();
    let error = failure(
        &run("c", consumer, None).await.finished().await.unwrap(),
        "c",
    );
    assert!(
        error.contains("max_deliver (3) is below max_deliveries (5)"),
        "{error}"
    );
    // Equal is refused too: a message handed back at a shutdown on its last delivery
    // would be stranded (never delivered again, never dead-lettered).
    let consumer = consumer_of(&s)
        .max_deliveries(3)
        .handler(ok)
        .build()
        .unwrap();
    let error = failure(
        &run("c", consumer, None).await.finished().await.unwrap(),
        "c",
    );
    assert!(
        error.contains("max_deliver (3) equals max_deliveries (3)")
            && error.contains("must be greater")
            && error.contains("at least 4"),
        "{error}"
    );
    // With headroom it binds.
    let consumer = consumer_of(&s)
        .max_deliveries(2)
        .handler(ok)
        .build()
        .unwrap();
    let report = run("c", consumer, None)
        .await
        .stop(Reason::shutdown())
        .await
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_consumer_cut_off_from_nats_still_drains_at_once_when_the_host_stops() {
    trace();
    let s = TestStream::create("OUTAGE").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..4).await;
    let proxy = support::Proxy::start().await;
    let reasons: Arc<Mutex<Vec<ReasonKind>>> = Arc::default();
    let log = Arc::clone(&reasons);
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&proxy.url)
        .stream(&s.name)
        .consumer("c")
        .concurrency(2)
        .handler(counted(
            &started,
            move |_msg: Message<Bytes>, token: CancellationToken| {
                let log = Arc::clone(&log);
                async move {
                    let stopped = token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                        .await;
                    if let Err(cancelled) = &stopped {
                        log.lock().unwrap().push(cancelled.kind());
                    }
                    stopped
                }
            },
        ))
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    in_flight(&s, 4).await; // two running, two buffered
    running(&started, 2).await;
    proxy.refuse();
    assert_eq!(proxy.cut(), 1);
    eventually(
        "both handlers stopped by the cut",
        Duration::from_secs(10),
        async || reasons.lock().unwrap().len() == 2,
    )
    .await;
    let stopped = Instant::now();
    let report = host.stop(Reason::shutdown()).await.unwrap();
    // No waiting for a broker that is not there: the drain ends at once, cleanly.
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}\n{report}",
        stopped.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.entry("c").unwrap().phase(), Phase::Drain, "{report}");
    assert_eq!(count(&report, "c", "disconnects"), 1, "{report}");
    // Nothing could be handed back over the cut connection, and the report says so: the
    // two cancelled and the two buffered are left for AckWait, none counted as handed back.
    assert_eq!(
        count(&report, "c", "cancelled and handed back"),
        0,
        "{report}"
    );
    assert_eq!(
        count(&report, "c", "handed back at disconnect"),
        0,
        "{report}"
    );
    assert_eq!(count(&report, "c", "left for AckWait"), 4, "{report}");
    assert_eq!(
        *reasons.lock().unwrap(),
        [ReasonKind::Disconnected, ReasonKind::Disconnected]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn a_cut_with_more_messages_held_than_the_clients_command_channel_still_stops_at_once() {
    // async-nats's command channel (2048 by default, 8 here) is not read while the client
    // reconnects: a consumer that queued a hand-back per held message would block on the
    // full channel, deaf to the stop, until the shutdown budget ran out.
    trace();
    let s = TestStream::create("BIGOUTAGE").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..60).await;
    let proxy = support::Proxy::start().await;
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(&proxy.url)
        .connect_options(async_nats::ConnectOptions::new().client_capacity(8))
        .stream(&s.name)
        .consumer("c")
        .concurrency(2)
        .prefetch(50)
        .handler(counted(
            &started,
            |_msg: Message<Bytes>, token: CancellationToken| async move {
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                    .await
            },
        ))
        .build()
        .unwrap();
    let host = run("c", consumer, Some((20, 10))).await;
    in_flight(&s, 52).await; // two running, fifty buffered: far more than the channel holds
    running(&started, 2).await;
    proxy.refuse();
    assert_eq!(proxy.cut(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(3),
        "{:?}\n{report}",
        stopped.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.entry("c").unwrap().phase(), Phase::Drain, "{report}");
    assert_eq!(count(&report, "c", "left for AckWait"), 52, "{report}");
    assert_eq!(
        count(&report, "c", "handed back at disconnect"),
        0,
        "{report}"
    );
    assert_eq!(count(&report, "c", "handed back at drain"), 0, "{report}");
}

/// A handler that ends during a short outage (it ignores the token the cut fired) has its
/// ack sent once the client is back: the message is not delivered again after AckWait,
/// and its handler does not run twice. (The ack was dropped when the session stopped
/// queueing on a disconnected client.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn the_ack_of_a_handler_that_ends_during_an_outage_is_sent_once_reconnected() {
    trace();
    let s = TestStream::create("OWEDACK").await;
    // Longer than the outage with the client's reconnect back-off (about 2 s): only a lost
    // ack brings the message back.
    let ack_wait = Duration::from_secs(8);
    s.durable("c", ack_wait).await;
    s.publish_numbers(0..1).await;
    let proxy = support::Proxy::start().await;
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let consumer = Consumer::builder(&proxy.url)
        .stream(&s.name)
        .consumer("c")
        .concurrency(1)
        .handler(move |msg: Message<Bytes>, _token: CancellationToken| {
            record
                .lock()
                .unwrap()
                .push((msg.id().to_owned(), msg.delivery_count()));
            async move {
                // Ends while the connection is down, whatever its token says.
                tokio::time::sleep(Duration::from_millis(700)).await;
                Ok::<_, std::io::Error>(())
            }
        })
        .build()
        .unwrap();
    let host = run("c", consumer, None).await;
    eventually("the handler started", Duration::from_secs(10), async || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    proxy.pause();
    assert_eq!(proxy.cut(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.resume();
    // Past AckWait: a lost ack would have brought it back by now.
    tokio::time::sleep(ack_wait + Duration::from_secs(3)).await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(count(&report, "c", "disconnects"), 1, "{report}");
    assert_eq!(
        *seen.lock().unwrap(),
        [("m-0".to_owned(), 1)],
        "delivered once\n{report}"
    );
}
