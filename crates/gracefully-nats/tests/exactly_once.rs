//! 1,000 messages, handlers of ~20 ms whose effects are deduplicated in PostgreSQL (the
//! crate's recipe), and the ways a consumer stops or loses its broker mid-run:
//!
//! - SIGTERM to a consumer process (the `nats_worker` example) while a second consumer runs
//!   here: every effect exactly once, and the messages it handed back at its drain reach
//!   the second consumer at once — measured and printed against AckWait, what they would
//!   otherwise wait;
//! - SIGKILL (short AckWait): every effect exactly once after redelivery;
//! - the connection cut under a running consumer (a TCP proxy in between closes it; NATS
//!   keeps running): in-flight tokens fire with `Disconnected`, the consumer reconnects,
//!   nothing is lost.
//!
//! And the recipe itself, walked with `cancel_at_every_await`: at every await a shutdown may
//! cancel it, the effect and the id are written together or not at all.
//!
//! Needs `NATS_URL` and `DATABASE_URL`.

#![cfg(unix)]

mod support;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use gracefully::{CancellationToken, ReasonKind};
use gracefully_nats::{Consumer, Message};
use gracefully_test::{Outcome, RunningHost, Walk, cancel_at_every_await, eventually, test_host};
use support::effects::Effects;
use support::{Proxy, TestStream, count, database_url, nats_url, trace, unique};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

const MESSAGES: u32 = 1000;
const WORK: Duration = Duration::from_millis(20);

/// One delivery a handler started: its id, its delivery count, when.
type Starts = Arc<Mutex<Vec<(String, u64, Instant)>>>;

/// A stream of `MESSAGES` messages, the durable consumer `workers`, and the effect tables.
struct Scenario {
    stream: TestStream,
    effects: Arc<Effects>,
    tables: String,
}

impl Scenario {
    async fn new(prefix: &str, ack_wait: Duration) -> Scenario {
        trace();
        let stream = TestStream::create(prefix).await;
        stream.durable("workers", ack_wait).await;
        let tables = unique(&prefix.to_ascii_lowercase());
        let effects = Arc::new(Effects::connect(&database_url(), &tables).await);
        effects.create_tables().await;
        stream.publish_numbers(0..MESSAGES).await;
        Scenario {
            stream,
            effects,
            tables,
        }
    }

    /// A consumer in this process, recording every handler start. Concurrency 16 and no
    /// prefetch: it holds nothing unstarted, so a message starts when it arrives, and a
    /// handler's start is when the message reached it.
    fn consumer(&self, url: &str, starts: &Starts) -> impl gracefully_host::BackgroundService {
        let (effects, starts) = (Arc::clone(&self.effects), Arc::clone(starts));
        Consumer::builder(url)
            .stream(&self.stream.name)
            .consumer("workers")
            .concurrency(16)
            .prefetch(0)
            .handler(move |msg: Message<Bytes>, token: CancellationToken| {
                starts.lock().unwrap().push((
                    msg.id().to_owned(),
                    msg.delivery_count(),
                    Instant::now(),
                ));
                let effects = Arc::clone(&effects);
                async move { effects.handle(msg.id(), WORK, &token).await.map(|_| ()) }
            })
            .build()
            .unwrap()
    }

    /// The `nats_worker` example consuming the same stream, started and ready; prefetch 8, so
    /// it nearly always holds unstarted messages.
    async fn worker(&self, concurrency: usize) -> Child {
        let mut child = Command::new(example("nats_worker"))
            .args([
                "--url",
                &nats_url(),
                "--stream",
                &self.stream.name,
                "--consumer",
                "workers",
            ])
            .args(["--database-url", &database_url(), "--tables", &self.tables])
            .args([
                "--prefetch",
                "8",
                "--concurrency",
                &concurrency.to_string(),
                "--handler-ms",
                &WORK.as_millis().to_string(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start the worker example");
        let stdout = child.stdout.as_mut().unwrap();
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line))
            .await
            .expect("the worker is ready within 30 s")
            .unwrap();
        assert_eq!(line.trim(), "ready", "the worker's first line");
        child
    }

    /// The `worker` process (concurrency 4, prefetch 8) and a consumer here (see
    /// [`consumer`](Self::consumer)), once 300 effects are applied.
    async fn two_consumers_mid_run(&self) -> (Child, RunningHost, Starts) {
        let worker = self.worker(4).await;
        let starts: Starts = Arc::default();
        let service = self.consumer(&nats_url(), &starts);
        let second = RunningHost::start(test_host().service("second", service).build().unwrap())
            .await
            .unwrap();
        self.wait_for_effects(300, Duration::from_secs(60)).await;
        (worker, second, starts)
    }

    async fn wait_for_effects(&self, at_least: i64, within: Duration) {
        eventually(&format!("{at_least} effects applied"), within, async || {
            self.effects.rows().await >= at_least
        })
        .await;
    }

    /// Every message's effect exactly once.
    async fn assert_exactly_once(&self) {
        eventually(
            "every message's effect applied",
            Duration::from_secs(60),
            async || self.effects.tally().await.0 == i64::from(MESSAGES),
        )
        .await;
        let (distinct, twice) = self.effects.tally().await;
        assert_eq!(
            (distinct, twice),
            (i64::from(MESSAGES), 0),
            "effects applied more than once"
        );
        assert_eq!(self.effects.rows().await, i64::from(MESSAGES));
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let effects = Arc::clone(&self.effects);
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(effects.drop_tables());
        })
        .join();
    }
}

/// The example binary `name`: `cargo test` builds it; built here only when missing (a
/// nested `cargo build` could wait on the outer cargo's lock), so after changing the
/// example, run this test target alone only after `cargo build -p gracefully-nats
/// --example nats_worker`.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let path = std::env::current_exe()
        .unwrap()
        .parent() // deps/
        .and_then(|p| p.parent())
        .unwrap()
        .join("examples")
        .join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = std::process::Command::new(cargo)
                .args(["build", "-p", "gracefully-nats", "--example", name])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the example failed");
        });
    }
    assert!(path.exists(), "{} not built", path.display());
    path
}

fn signal(child: &Child, signal: i32) {
    let pid = child.id().expect("the worker runs") as i32;
    // SAFETY: `kill(2)` with a live child's pid and a valid signal number; no memory is
    // involved.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal})");
}

/// The value after `key: ` in a report line.
fn reported(report: &str, key: &str) -> u64 {
    let at = report
        .find(&format!("{key}: "))
        .unwrap_or_else(|| panic!("no {key} in the worker's report:\n{report}"));
    report[at + key.len() + 2..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set NATS_URL and DATABASE_URL"]
async fn sigterm_mid_run_hands_back_at_once_to_the_second_consumer_and_every_effect_happens_once() {
    let ack_wait = Duration::from_secs(30);
    let s = Scenario::new("SIGTERM", ack_wait).await;
    let (mut worker, second, starts) = s.two_consumers_mid_run().await;

    let sigterm = Instant::now();
    signal(&worker, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait())
        .await
        .expect("the worker stops within 30 s")
        .unwrap();
    let mut report = String::new();
    worker
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut report)
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0), "a clean drain exits 0:\n{report}");
    let handed_back = reported(&report, "handed back at drain");
    let handled_there = reported(&report, "handled");
    assert_eq!(reported(&report, "in flight at abort"), 0, "{report}");

    s.assert_exactly_once().await;
    let report_here = second.stop(gracefully::Reason::shutdown()).await.unwrap();
    assert_eq!(report_here.exit_code(), 0, "{report_here}");

    // The worker's hand-backs are the second consumer's redeliveries.
    let starts = starts.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = starts
        .iter()
        .filter(|(_, delivered, _)| *delivered >= 2)
        .map(|(_, _, at)| at.saturating_duration_since(sigterm))
        .collect();
    latencies.sort();
    assert!(
        handed_back >= 1,
        "the worker held unstarted messages at SIGTERM:\n{report}"
    );
    assert_eq!(
        latencies.len() as u64,
        handed_back,
        "each handed-back message reached the second consumer once"
    );
    let slowest = *latencies.last().unwrap();
    println!(
        "SIGTERM: the worker handled {handled_there} and handed back {handed_back} at its drain; they reached \
         the second consumer {:.1} ms (median) / {:.1} ms (slowest) after the SIGTERM — target 100 ms; \
         without the hand-back they would have waited out AckWait ({} s)",
        millis(latencies[latencies.len() / 2]),
        millis(slowest),
        ack_wait.as_secs()
    );
    // Far sooner than AckWait: they were handed back, not left to expire.
    assert!(
        slowest < ack_wait / 10,
        "slowest hand-back reached the second consumer after {slowest:?}"
    );
    assert_eq!(count(&report_here, "second", "in flight at abort"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set NATS_URL and DATABASE_URL"]
async fn sigkill_mid_run_loses_nothing_and_every_effect_happens_once_after_redelivery() {
    let ack_wait = Duration::from_secs(2);
    let s = Scenario::new("SIGKILL", ack_wait).await;
    let (mut worker, second, starts) = s.two_consumers_mid_run().await;
    let killed = Instant::now();
    signal(&worker, libc::SIGKILL);
    let status = worker.wait().await.unwrap();
    assert_eq!(status.code(), None, "killed by a signal");

    s.assert_exactly_once().await;
    let took = killed.elapsed();
    let report = second.stop(gracefully::Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let redelivered = starts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, d, _)| *d >= 2)
        .count();
    assert!(
        redelivered >= 1,
        "what the killed worker held came back after AckWait"
    );
    println!(
        "SIGKILL: {redelivered} messages the killed worker held were redelivered after AckWait ({} s); \
         all {MESSAGES} effects exactly once, {:.1} s after the kill",
        ack_wait.as_secs(),
        took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS and PostgreSQL: set NATS_URL and DATABASE_URL"]
async fn a_cut_connection_fires_in_flight_tokens_with_disconnected_and_the_consumer_reconnects_losing_nothing()
 {
    let s = Scenario::new("CUT", Duration::from_secs(30)).await;
    let proxy = Proxy::start().await;
    let reasons: Arc<Mutex<Vec<ReasonKind>>> = Arc::default();
    // Around the cut, handlers take 2 s instead of 20 ms, so those running at the cut are
    // certainly still running when the client reports the disconnect (it may take tens of
    // milliseconds to notice), whatever the machine's load.
    let slow = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (effects, log, slow_now) = (
        Arc::clone(&s.effects),
        Arc::clone(&reasons),
        Arc::clone(&slow),
    );
    let consumer = Consumer::builder(&proxy.url)
        .stream(&s.stream.name)
        .consumer("workers")
        .concurrency(8)
        .handler(move |msg: Message<Bytes>, token: CancellationToken| {
            let (effects, log) = (Arc::clone(&effects), Arc::clone(&log));
            let work = if slow_now.load(std::sync::atomic::Ordering::Relaxed) {
                Duration::from_secs(2)
            } else {
                WORK
            };
            async move {
                let result = effects.handle(msg.id(), work, &token).await;
                if let Err(error) = &result
                    && let Some(cancelled) = error.as_cancelled()
                {
                    log.lock().unwrap().push(cancelled.kind());
                }
                result.map(|_| ())
            }
        })
        .build()
        .unwrap();
    let host = RunningHost::start(test_host().service("c", consumer).build().unwrap())
        .await
        .unwrap();
    s.wait_for_effects(300, Duration::from_secs(60)).await;
    slow.store(true, std::sync::atomic::Ordering::Relaxed);
    let at_slow = s.effects.rows().await;
    // Every handler now running started slow: the fast ones finish within their 20 ms.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut = proxy.cut();
    slow.store(false, std::sync::atomic::Ordering::Relaxed);
    assert!(cut >= 1, "the consumer's connection went through the proxy");
    let at_cut = s.effects.rows().await;
    assert!(
        at_cut < at_slow + 8 * 2,
        "handlers were slow around the cut: {at_slow} effects then {at_cut}"
    );

    s.assert_exactly_once().await;
    let report = host.stop(gracefully::Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(count(&report, "c", "disconnects"), 1, "{report}");
    let reasons = reasons.lock().unwrap().clone();
    assert!(
        !reasons.is_empty(),
        "in-flight handlers were cancelled by the cut"
    );
    assert!(
        reasons.iter().all(|k| *k == ReasonKind::Disconnected),
        "{reasons:?}"
    );
    println!(
        "connection cut after {at_cut} effects: {} in-flight handlers stopped with Disconnected, \
         {} unstarted handed back once reconnected, {} left for AckWait; all {MESSAGES} effects \
         exactly once\n{report}",
        reasons.len(),
        count(&report, "c", "handed back at disconnect"),
        count(&report, "c", "left for AckWait"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: set DATABASE_URL"]
async fn the_dedupe_recipe_writes_the_effect_and_its_id_together_or_neither_at_every_cancel_point()
{
    let tables = unique("walk");
    let effects = Effects::connect(&database_url(), &tables).await;
    effects.create_tables().await;
    let mut n = 0u32;
    let walked = cancel_at_every_await(
        Walk::cooperative_with(gracefully::Reason::shutdown()).time_limit(Duration::from_secs(30)),
        async |token| {
            n += 1;
            let id = format!("walk-{n}");
            let applied = effects.apply(&id, &token).await;
            (id, applied)
        },
        async |run| {
            let (id, applied) = run.output().expect("a cooperative walk never drops");
            let state = effects.state_of(id).await;
            match (run.outcome(), applied) {
                (_, Ok(true)) => assert_eq!(state, (true, 1), "{id}: applied, so recorded once"),
                (Outcome::TokenFired(_), Err(e)) if e.is_cancelled() => {
                    assert_eq!(
                        state,
                        (false, 0),
                        "{id}: cancelled at point {}, yet half written",
                        run.point()
                    )
                }
                (_, other) => panic!("{id} at point {}: {other:?}", run.point()),
            }
            // The message comes again (its hand-back): the effect ends up applied once.
            effects
                .apply(id, &CancellationToken::never())
                .await
                .unwrap();
            assert_eq!(
                effects.state_of(id).await,
                (true, 1),
                "{id}: once after the redelivery"
            );
        },
    )
    .await;
    effects.drop_tables().await;
    let walked = walked.unwrap();
    // How many points there are depends on how often the I/O is not ready yet when polled
    // (2 to 5 seen on loopback PostgreSQL); at least one must have been walked.
    assert!(
        walked.points() >= 1,
        "walked {} cancel points",
        walked.points()
    );
    println!("the recipe walked {} cancel points", walked.points());
}
