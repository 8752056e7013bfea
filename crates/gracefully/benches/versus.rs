//! `cargo bench -p gracefully --bench versus`
//!
//! gracefully against tokio-util's `CancellationToken` (0.7), side by side in one run. Every
//! measurement goes through criterion (warm-up, sampling, outlier analysis as usual); each
//! sample's time per iteration is also recorded here, and the summary printed at the end
//! uses the median sample:
//!
//! ```text
//! <operation>: gracefully <ns> ns, tokio-util <ns> ns, ratio <tokio-util ÷ gracefully>
//! ```
//!
//! followed by heap bytes per token node (counted by a wrapping global allocator) and the
//! firing latency of timeouts (how long after its deadline a timeout is observed).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gracefully::{CancellationSource, CancellationToken};
use tokio_util::sync::CancellationToken as TokioToken;

// ------------------------------------------------------------------ heap byte counting

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`; counting is a relaxed atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) && new_size > layout.size() {
            BYTES.fetch_add(new_size - layout.size(), Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Bytes allocated by `f` (nothing else allocates meanwhile: benchmarks run one at a time).
fn bytes_allocated<R>(f: impl FnOnce() -> R) -> (usize, R) {
    BYTES.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    let r = f();
    COUNTING.store(false, Ordering::SeqCst);
    (BYTES.load(Ordering::SeqCst), r)
}

// ---------------------------------------------------------------------- result capture

static RESULTS: Mutex<BTreeMap<(&'static str, &'static str), Vec<f64>>> =
    Mutex::new(BTreeMap::new());
static ORDER: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

fn record(op: &'static str, lib: &'static str, elapsed: Duration, iters: u64) -> Duration {
    let mut order = ORDER.lock().unwrap();
    if !order.contains(&op) {
        order.push(op);
    }
    RESULTS
        .lock()
        .unwrap()
        .entry((op, lib))
        .or_default()
        .push(elapsed.as_nanos() as f64 / iters as f64);
    elapsed
}

fn median(op: &'static str, lib: &'static str) -> Option<f64> {
    let results = RESULTS.lock().unwrap();
    let mut v = results.get(&(op, lib))?.clone();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Some(v[v.len() / 2])
}

/// Times `iters` runs of `f` as one block.
fn timed(op: &'static str, lib: &'static str, iters: u64, mut f: impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        f();
    }
    record(op, lib, start.elapsed(), iters)
}

// -------------------------------------------------------------------------- benchmarks

const IS_CANCELLED: &str = "is_cancelled (live token)";
const IS_CANCELLED_CONTENDED: &str = "is_cancelled while another thread adds children";
const CLONE_DROP: &str = "clone + drop";
const CHILD: &str = "child create + drop";
const CANCEL_1000: &str = "cancel with 1,000 children, each with a pending waiter";
const POLL_CANCELLED: &str = "poll cancelled() on a cancelled token";
const TWO_THREADS: &str = "two threads create + drop children of one parent";
const TIMEOUT: &str = "timeout source create + drop";
const CALLBACK: &str = "callback register + drop";

const G: &str = "gracefully";
const T: &str = "tokio-util";

/// The loop is written out (rather than through `timed`) so that the only work per
/// iteration besides `is_cancelled` is adding its result to a sum (the token is reached
/// through an opaque reference, and the sum is consumed at the end). Same loop for both.
fn bench_is_cancelled(c: &mut Criterion) {
    let mut group = c.benchmark_group(IS_CANCELLED);
    let source = CancellationSource::new();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            let token = black_box(&token);
            let start = Instant::now();
            let mut cancelled = 0usize;
            for _ in 0..n {
                cancelled += token.is_cancelled() as usize;
            }
            black_box(cancelled);
            record(IS_CANCELLED, G, start.elapsed(), n)
        })
    });
    let tokio = TokioToken::new();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            let tokio = black_box(&tokio);
            let start = Instant::now();
            let mut cancelled = 0usize;
            for _ in 0..n {
                cancelled += tokio.is_cancelled() as usize;
            }
            black_box(cancelled);
            record(IS_CANCELLED, T, start.elapsed(), n)
        })
    });
    group.finish();
}

/// `is_cancelled` on a token whose node another thread keeps locking (creating and dropping
/// children of it): a single load never waits; a mutex does.
fn bench_is_cancelled_contended(c: &mut Criterion) {
    let mut group = c.benchmark_group(IS_CANCELLED_CONTENDED);
    let stop = Arc::new(AtomicBool::new(false));

    let source = CancellationSource::new();
    let token = source.token();
    let background = {
        let token = token.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(black_box(token.child()));
            }
        })
    };
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            timed(IS_CANCELLED_CONTENDED, G, n, || {
                black_box(black_box(&token).is_cancelled());
            })
        })
    });
    stop.store(true, Ordering::Relaxed);
    background.join().unwrap();

    stop.store(false, Ordering::Relaxed);
    let tokio = TokioToken::new();
    let background = {
        let tokio = tokio.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                drop(black_box(tokio.child_token()));
            }
        })
    };
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            timed(IS_CANCELLED_CONTENDED, T, n, || {
                black_box(black_box(&tokio).is_cancelled());
            })
        })
    });
    stop.store(true, Ordering::Relaxed);
    background.join().unwrap();
    group.finish();
}

fn bench_clone_drop(c: &mut Criterion) {
    let mut group = c.benchmark_group(CLONE_DROP);
    let source = CancellationSource::new();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            timed(CLONE_DROP, G, n, || {
                drop(black_box(black_box(&token).clone()))
            })
        })
    });
    let tokio = TokioToken::new();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            timed(CLONE_DROP, T, n, || {
                drop(black_box(black_box(&tokio).clone()))
            })
        })
    });
    group.finish();
}

fn bench_child(c: &mut Criterion) {
    let mut group = c.benchmark_group(CHILD);
    let source = CancellationSource::new();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| timed(CHILD, G, n, || drop(black_box(black_box(&token).child()))))
    });
    let tokio = TokioToken::new();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            timed(CHILD, T, n, || {
                drop(black_box(black_box(&tokio).child_token()))
            })
        })
    });
    group.finish();
}

/// Times only the `cancel` call: the tree of 1,000 children with one polled (registered)
/// `cancelled()` future each is built before, and dropped after, the timed region.
fn bench_cancel_1000(c: &mut Criterion) {
    let mut group = c.benchmark_group(CANCEL_1000);
    let waker = Waker::noop();
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let parent = CancellationSource::new();
                let children: Vec<CancellationSource> =
                    (0..1000).map(|_| parent.token().child()).collect();
                let tokens: Vec<CancellationToken> = children.iter().map(|c| c.token()).collect();
                let mut futures: Vec<_> = tokens.iter().map(|t| Box::pin(t.cancelled())).collect();
                let mut cx = Context::from_waker(waker);
                for f in &mut futures {
                    assert!(f.as_mut().poll(&mut cx).is_pending());
                }
                let start = Instant::now();
                black_box(parent.cancel());
                total += start.elapsed();
                drop(futures);
            }
            record(CANCEL_1000, G, total, n)
        })
    });
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            let mut total = Duration::ZERO;
            for _ in 0..n {
                let parent = TokioToken::new();
                let children: Vec<TokioToken> = (0..1000).map(|_| parent.child_token()).collect();
                let mut futures: Vec<_> =
                    children.iter().map(|t| Box::pin(t.cancelled())).collect();
                let mut cx = Context::from_waker(waker);
                for f in &mut futures {
                    assert!(f.as_mut().poll(&mut cx).is_pending());
                }
                let start = Instant::now();
                parent.cancel();
                total += start.elapsed();
                drop(futures);
            }
            record(CANCEL_1000, T, total, n)
        })
    });
    group.finish();
}

fn bench_poll_cancelled(c: &mut Criterion) {
    let mut group = c.benchmark_group(POLL_CANCELLED);
    let waker = Waker::noop();
    let source = CancellationSource::new();
    source.cancel();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            timed(POLL_CANCELLED, G, n, || {
                let mut cx = Context::from_waker(waker);
                let future = pin!(black_box(&token).cancelled());
                assert!(matches!(future.poll(&mut cx), Poll::Ready(_)));
            })
        })
    });
    let tokio = TokioToken::new();
    tokio.cancel();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            timed(POLL_CANCELLED, T, n, || {
                let mut cx = Context::from_waker(waker);
                let future = pin!(black_box(&tokio).cancelled());
                assert!(future.poll(&mut cx).is_ready());
            })
        })
    });
    group.finish();
}

/// Two threads, each creating and dropping `n` children of one shared parent; the time is
/// the wall time per iteration (both threads run in parallel).
fn bench_two_threads(c: &mut Criterion) {
    fn run(n: u64, work: impl Fn() + Sync) -> Duration {
        let barrier = Barrier::new(3);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    barrier.wait();
                    for _ in 0..n {
                        work();
                    }
                    barrier.wait();
                });
            }
            barrier.wait();
            let start = Instant::now();
            barrier.wait();
            start.elapsed()
        })
    }
    let mut group = c.benchmark_group(TWO_THREADS);
    let source = CancellationSource::new();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| record(TWO_THREADS, G, run(n, || drop(black_box(token.child()))), n))
    });
    let tokio = TokioToken::new();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            record(
                TWO_THREADS,
                T,
                run(n, || drop(black_box(tokio.child_token()))),
                n,
            )
        })
    });
    group.finish();
}

/// A source with a 30 s timeout, created and dropped. tokio-util has no timeout of its own:
/// the equivalent is a child token plus a `tokio::time::sleep` registered with the runtime's
/// timer (polled once), both dropped.
fn bench_timeout(c: &mut Criterion) {
    let mut group = c.benchmark_group(TIMEOUT);
    let thirty = Duration::from_secs(30);
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            timed(TIMEOUT, G, n, || {
                drop(black_box(CancellationSource::with_timeout(thirty)));
            })
        })
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let parent = TokioToken::new();
    let waker = Waker::noop();
    group.bench_function(T, |b| {
        b.iter_custom(|n| {
            let _guard = rt.enter();
            timed(TIMEOUT, T, n, || {
                let child = black_box(parent.child_token());
                let mut cx = Context::from_waker(waker);
                let sleep = pin!(tokio::time::sleep(thirty));
                assert!(sleep.poll(&mut cx).is_pending());
                drop(child);
            })
        })
    });
    group.finish();
}

fn bench_callback(c: &mut Criterion) {
    let mut group = c.benchmark_group(CALLBACK);
    let source = CancellationSource::new();
    let token = source.token();
    group.bench_function(G, |b| {
        b.iter_custom(|n| {
            timed(CALLBACK, G, n, || {
                drop(black_box(black_box(&token).on_cancel(|_| {})))
            })
        })
    });
    group.finish();
}

// ----------------------------------------------------------------------------- summary

/// Heap bytes per child node, measured on a fresh thread (so no cached block serves an
/// allocation) over 1,000 children, minus the benchmark's own `Vec` of handles.
fn heap_per_node() -> (f64, f64) {
    thread::spawn(|| {
        const N: usize = 1000;
        let parent = CancellationSource::new();
        let token = parent.token();
        let (ours, children) =
            bytes_allocated(|| (0..N).map(|_| token.child()).collect::<Vec<_>>());
        let vec_bytes = N * std::mem::size_of::<CancellationSource>();
        drop(children);

        let tokio = TokioToken::new();
        let (theirs, children) =
            bytes_allocated(|| (0..N).map(|_| tokio.child_token()).collect::<Vec<_>>());
        let tokio_vec_bytes = N * std::mem::size_of::<TokioToken>();
        drop(children);
        (
            (ours - vec_bytes) as f64 / N as f64,
            (theirs - tokio_vec_bytes) as f64 / N as f64,
        )
    })
    .join()
    .unwrap()
}

/// How long after its deadline a timeout is observed by a thread blocked in `wait()`.
fn timeout_latency() -> (Duration, Duration, Duration) {
    let mut lateness: Vec<Duration> = (0..200)
        .map(|i| {
            let source =
                CancellationSource::with_timeout(Duration::from_micros(500 + 37 * (i % 20)));
            let deadline = source.token().deadline().unwrap();
            source.token().wait();
            Instant::now().saturating_duration_since(deadline)
        })
        .collect();
    lateness.sort();
    (lateness[100], lateness[190], lateness[199])
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    bench_is_cancelled(&mut c);
    bench_is_cancelled_contended(&mut c);
    bench_clone_drop(&mut c);
    bench_child(&mut c);
    bench_cancel_1000(&mut c);
    bench_poll_cancelled(&mut c);
    bench_two_threads(&mut c);
    bench_timeout(&mut c);
    bench_callback(&mut c);
    c.final_summary();

    println!();
    println!("== gracefully vs tokio-util 0.7 (median of criterion samples) ==");
    for op in ORDER.lock().unwrap().iter().copied() {
        match (median(op, G), median(op, T)) {
            (Some(g), Some(t)) => {
                println!(
                    "{op}: gracefully {g:.1} ns, tokio-util {t:.1} ns, ratio {:.2}",
                    t / g
                )
            }
            (Some(g), None) => println!("{op}: gracefully {g:.1} ns (no tokio-util equivalent)"),
            _ => {}
        }
    }
    let (ours, theirs) = heap_per_node();
    println!("heap bytes per token node: gracefully {ours:.0}, tokio-util {theirs:.0}");
    let (p50, p95, max) = timeout_latency();
    println!(
        "timeout firing latency after the deadline: p50 {} µs, p95 {} µs, max {} µs",
        p50.as_micros(),
        p95.as_micros(),
        max.as_micros()
    );
}
