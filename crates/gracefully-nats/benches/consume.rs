//! Messages per second through a [`Consumer`] against a plain async-nats pull-consumer loop
//! doing the same explicit ack of each message, in the same run.
//!
//! ```sh
//! NATS_URL=nats://127.0.0.1:4222 cargo bench -p gracefully-nats --bench consume
//! ```
//!
//! Each round fills a fresh stream with `MESSAGES` 16-byte messages, then drains it once
//! with each side (alternating which goes first), on its own connection and its own
//! durable consumer, created (with the same default configuration) before either side's
//! clock starts:
//!
//! - async-nats: `consumer.messages()` (batch 200, its default) and `msg.ack().await` per
//!   message — the loop every async-nats user writes; timed from before it connects until
//!   the last ack is flushed;
//! - gracefully: a `Consumer` under a host, concurrency 100 (prefetch 100: it holds at most
//!   200, like the batch above), a handler that does nothing, so the consumer acks each
//!   message. Timed from before the host starts (connect and bind to the durable included,
//!   as on the other side) until the last message was handled.
//!
//! Both sides' timed work is the same: connect, look up the stream and the consumer, pull
//! and ack every message. After each fill the bench pauses for `SETTLE` before the first
//! side starts, so that the side reading first does not share the cores with the broker
//! still writing the fill away.
//!
//! Prints each round (rates, and this process's CPU time per message: user + system, which
//! a loaded machine disturbs far less than the wall time), then the medians:
//! `nats consume: gracefully <n>/s, async-nats <n>/s, ratio <r>` (target ≥ 0.95; the ratio
//! is the median of the rounds' ratios; `ROUNDS` is even, so each side goes first equally
//! often), and before it the median ratio of the rounds each side went first in, with the
//! order-balanced ratio (their geometric mean). The broker runs on the same machine and shares its
//! cores with both sides: a loaded machine moves both figures; the ratio, measured in the
//! same run, moves less.

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

const MESSAGES: usize = 100_000;
const ROUNDS: usize = 24;
const CONCURRENCY: usize = 100;
/// The pause after each fill, before the first side starts.
const SETTLE: Duration = Duration::from_secs(1);

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
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut our_cpu, mut their_cpu) = (Vec::new(), Vec::new());
    // Ratios by which side read the fresh stream first.
    let (mut ours_first, mut theirs_first) = (Vec::new(), Vec::new());
    let (ours_name, theirs_name) = (format!("{name}_G"), format!("{name}_P"));
    for round in 0..ROUNDS {
        // Each side drains a stream of its own, both filled afresh (in alternating order)
        // before either side starts: the first reader of a fresh stream pays for loading it,
        // and with one stream shared, that was whichever side went first.
        if round % 2 == 0 {
            fill(&js, &ours_name).await;
            fill(&js, &theirs_name).await;
        } else {
            fill(&js, &theirs_name).await;
            fill(&js, &ours_name).await;
        }
        // Let the broker finish writing the fills before either side reads (see above).
        tokio::time::sleep(SETTLE).await;
        let ((a, a_cpu), (b, b_cpu)) = if round % 2 == 0 {
            let b = timed(plain(url, &js, &theirs_name, "plain")).await;
            let a = timed(gracefully(url, &js, &ours_name, "graceful")).await;
            (a, b)
        } else {
            let a = timed(gracefully(url, &js, &ours_name, "graceful")).await;
            let b = timed(plain(url, &js, &theirs_name, "plain")).await;
            (a, b)
        };
        println!(
            "round {}: gracefully {a:.0}/s ({a_cpu:.2} µs CPU/msg), async-nats {b:.0}/s ({b_cpu:.2} µs CPU/msg), ratio {:.3}",
            round + 1,
            a / b
        );
        ours.push(a);
        theirs.push(b);
        ratios.push(a / b);
        if round % 2 == 0 {
            theirs_first.push(a / b);
        } else {
            ours_first.push(a / b);
        }
        our_cpu.push(a_cpu);
        their_cpu.push(b_cpu);
        js.delete_stream(&ours_name).await.unwrap();
        js.delete_stream(&theirs_name).await.unwrap();
    }
    let (a, b, r) = (median(&mut ours), median(&mut theirs), median(&mut ratios));
    println!(
        "cpu per message (this process, median): gracefully {:.2} µs, async-nats {:.2} µs",
        median(&mut our_cpu),
        median(&mut their_cpu)
    );
    // Whichever side reads a fresh stream first is slowed by it (the broker loads the
    // stream's blocks for it): by the same factor `f` for either side, the rounds in which
    // gracefully goes first show `f·r` and the others `r/f`, so the geometric mean of the
    // two medians is the ratio `r` with the order taken out.
    let (first, second) = (median(&mut ours_first), median(&mut theirs_first));
    println!(
        "by order: gracefully first {first:.3}, async-nats first {second:.3}, \
         order-balanced ratio {:.3}",
        (first * second).sqrt()
    );
    println!(
        "nats consume: gracefully {a:.0}/s, async-nats {b:.0}/s, ratio {r:.3}  \
         (medians of {ROUNDS} rounds, {MESSAGES} messages of 16 bytes each)"
    );
}

/// Runs one side; returns its rate and this process's CPU time per message in µs.
async fn timed(side: impl std::future::Future<Output = f64>) -> (f64, f64) {
    let before = cpu_time();
    let rate = side.await;
    let cpu = cpu_time() - before;
    (rate, cpu.as_secs_f64() * 1e6 / MESSAGES as f64)
}

/// User + system CPU time of this process so far.
fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `getrusage` writes a `rusage` into the pointer it is given, which points to
    // one of the right size and alignment; it reads nothing from it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage");
    // SAFETY: `getrusage` returned 0, so it filled the struct.
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
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
    let started = Instant::now();
    let client = async_nats::connect(url).await.unwrap();
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
async fn gracefully(url: &str, js: &jetstream::Context, stream: &str, consumer: &str) -> f64 {
    durable(js, stream, consumer).await;
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
