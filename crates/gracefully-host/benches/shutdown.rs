//! Time from the stop request until the host has stopped, with 10,000 idle tracked tasks
//! and 100 background services that honour their token — gracefully-host side by side
//! with tokio-graceful-shutdown (0.20) doing the same work in the same run.
//!
//! ```sh
//! cargo bench -p gracefully-host --bench shutdown
//! ```
//!
//! Prints `shutdown 10k tasks: gracefully <ms> ms, tokio-graceful-shutdown <ms> ms, ratio <r>`
//! (medians of interleaved runs; ratio = tokio-graceful-shutdown ÷ gracefully), a line
//! with the floor both build on (10,000 bare tokio tasks woken by one token), then
//! criterion's statistics for each.
//!
//! The same work on both sides, on the same 2-worker multi-thread runtime:
//!
//! * **gracefully-host:** 100 services registered with the defaults (so they start in
//!   order and are stopped one after another in reverse order, each told once the next has
//!   ended — the stricter contract), each awaiting its stopping token; 10,000 tasks from
//!   `Lifetime::spawn`, each awaiting `Lifetime::stopping()` (idle work ends when the
//!   drain begins). Measured: `Lifetime::stop` → `Host::run` returned its report (which
//!   aggregates the 10,000 task records).
//! * **tokio-graceful-shutdown:** its unit of tracked, named work is the subsystem, so 100
//!   subsystems for the services and 10,000 for the tasks, all children of the toplevel,
//!   each awaiting `on_shutdown_requested()`. Measured: cancelling the toplevel's shutdown
//!   token → `handle_shutdown_requests` returned.
//!
//! Before the clock starts, every service and task has been polled once (each bumps a
//! counter, on both sides) so only the shutdown is timed. No tracing subscriber is
//! installed, so neither side formats logs.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gracefully::Reason;
use gracefully_host::{Host, service_fn};
use tokio::runtime::Runtime;
use tokio_graceful_shutdown::{SubsystemBuilder, SubsystemHandle, Toplevel};

const TASKS: usize = 10_000;
const SERVICES: usize = 100;
const ROUNDS: usize = 30;

type BoxError = Box<dyn Error + Send + Sync>;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn until(counter: &AtomicUsize, n: usize) {
    while counter.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One gracefully-host shutdown; returns the time from `stop` to `run` returning.
async fn gracefully_once() -> Duration {
    let polled = Arc::new(AtomicUsize::new(0));
    let mut builder = Host::builder().handle_signals(false);
    for i in 0..SERVICES {
        let polled = Arc::clone(&polled);
        builder = builder.service(
            format!("service-{i}"),
            service_fn(move |stopping, _cx| {
                polled.fetch_add(1, Ordering::AcqRel);
                async move {
                    stopping.cancelled().await;
                }
            }),
        );
    }
    let host = builder.build().expect("valid configuration");
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    for _ in 0..TASKS {
        let stopping = lifetime.stopping();
        let polled = Arc::clone(&polled);
        lifetime.spawn("idle", async move {
            polled.fetch_add(1, Ordering::AcqRel);
            stopping.cancelled().await;
        });
    }
    until(&polled, SERVICES + TASKS).await;

    let start = Instant::now();
    lifetime.stop(Reason::shutdown().with_message("benchmark"));
    let report = run.await.expect("run");
    let elapsed = start.elapsed();
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.entry("idle").map(|e| e.count()), Some(TASKS));
    assert_eq!(report.services().count(), SERVICES);
    elapsed
}

/// One tokio-graceful-shutdown shutdown; returns the time from the shutdown request to
/// `handle_shutdown_requests` returning.
async fn tgs_once() -> Duration {
    let polled = Arc::new(AtomicUsize::new(0));
    let token = tokio_util::sync::CancellationToken::new();
    let counter = Arc::clone(&polled);
    let toplevel = Toplevel::new_with_shutdown_token(
        async move |s: &mut SubsystemHandle| {
            for i in 0..SERVICES {
                let polled = Arc::clone(&counter);
                s.start(SubsystemBuilder::new(
                    format!("service-{i}"),
                    async move |h: &mut SubsystemHandle| {
                        polled.fetch_add(1, Ordering::AcqRel);
                        h.on_shutdown_requested().await;
                        Ok::<(), BoxError>(())
                    },
                ));
            }
            for _ in 0..TASKS {
                let polled = Arc::clone(&counter);
                s.start(SubsystemBuilder::new(
                    "idle",
                    async move |h: &mut SubsystemHandle| {
                        polled.fetch_add(1, Ordering::AcqRel);
                        h.on_shutdown_requested().await;
                        Ok::<(), BoxError>(())
                    },
                ));
            }
        },
        token.clone(),
    );
    let run = tokio::spawn(toplevel.handle_shutdown_requests(Duration::from_secs(30)));
    until(&polled, SERVICES + TASKS).await;

    let start = Instant::now();
    token.cancel();
    let result = run.await.expect("run");
    let elapsed = start.elapsed();
    assert!(result.is_ok(), "{result:?}");
    elapsed
}

/// The floor both sides build on: 10,000 bare tokio tasks, each awaiting one core
/// `CancellationToken`, cancelled; until the last has finished. No host, no accounting.
async fn floor_once() -> Duration {
    let source = gracefully::CancellationSource::new();
    let polled = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let all_done = Arc::new(tokio::sync::Notify::new());
    for _ in 0..TASKS {
        let token = source.token();
        let (polled, finished, all_done) = (
            Arc::clone(&polled),
            Arc::clone(&finished),
            Arc::clone(&all_done),
        );
        tokio::spawn(async move {
            polled.fetch_add(1, Ordering::AcqRel);
            token.cancelled().await;
            if finished.fetch_add(1, Ordering::AcqRel) + 1 == TASKS {
                all_done.notify_one();
            }
        });
    }
    until(&polled, TASKS).await;
    let start = Instant::now();
    source.cancel();
    all_done.notified().await;
    start.elapsed()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn side_by_side() {
    let rt = runtime();
    // Warm up both (allocator, runtime threads, code paths).
    for _ in 0..3 {
        rt.block_on(gracefully_once());
        rt.block_on(tgs_once());
    }
    let mut ours = Vec::with_capacity(ROUNDS);
    let mut theirs = Vec::with_capacity(ROUNDS);
    let mut floor = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        // Spawned, as a host's `run` usually is inside `main`'s runtime.
        ours.push(rt.block_on(async { tokio::spawn(gracefully_once()).await.expect("bench") }));
        theirs.push(rt.block_on(async { tokio::spawn(tgs_once()).await.expect("bench") }));
        floor.push(rt.block_on(async { tokio::spawn(floor_once()).await.expect("bench") }));
    }
    let (ours, theirs, floor) = (median(ours), median(theirs), median(floor));
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "shutdown 10k tasks: gracefully {:.2} ms, tokio-graceful-shutdown {:.2} ms, ratio {:.2}",
        ms(ours),
        ms(theirs),
        ms(theirs) / ms(ours)
    );
    println!(
        "  (floor: 10k bare tokio tasks woken by one token, no host: {:.2} ms; medians of {ROUNDS} interleaved runs)",
        ms(floor)
    );
}

fn criterion_benches(c: &mut Criterion) {
    side_by_side();
    let rt = runtime();
    let mut group = c.benchmark_group("shutdown 10k tasks + 100 services");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(1));
    group.bench_function("gracefully-host", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(gracefully_once())).sum());
    });
    group.bench_function("tokio-graceful-shutdown", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| rt.block_on(tgs_once())).sum());
    });
    group.finish();
}

criterion_group!(benches, criterion_benches);
criterion_main!(benches);
