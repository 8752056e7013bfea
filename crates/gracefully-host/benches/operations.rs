//! What the operations registry costs per operation, beside the core's own cheapest
//! operation (a child token made and dropped) in the same run.
//!
//! ```sh
//! cargo bench -p gracefully-host --bench operations
//! ```
//!
//! Prints one line per case — `<case>: <ns> ns per operation` (the median of criterion's
//! samples) — and the summary: the registry's cost per operation (begin + end, the target is
//! ≤ 50 ns), the ratio to a child token's create + drop, and the cost of an operation when
//! no registry is installed (what every integration crate pays then). No `metrics` recorder
//! and no `tracing` subscriber are installed: this is the registry's own cost.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::Criterion;
use gracefully::CancellationSource;
use gracefully::operation::{Operation, OperationKind};
use gracefully_host::Operations;

static SAMPLES: Mutex<Option<HashMap<&'static str, Vec<f64>>>> = Mutex::new(None);

fn record(case: &'static str, elapsed: Duration, iters: u64) -> Duration {
    let ns = elapsed.as_nanos() as f64 / iters as f64;
    SAMPLES
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .entry(case)
        .or_default()
        .push(ns);
    elapsed
}

fn median(case: &str) -> f64 {
    let mut samples = SAMPLES.lock().unwrap().as_ref().unwrap()[case].clone();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

const ROOT: &str = "registry: begin + complete, root";
const NESTED: &str = "registry: Operation::begin + complete in a scope";
const TWO_THREADS: &str = "registry: begin + complete, 2 threads at once (wall time per op)";
const INERT: &str = "no registry: Operation::begin + complete (inert)";
const CHILD: &str = "anchor: child token create + drop";
const CLOCK: &str = "floor: Instant::now()";
const LOCK: &str = "floor: uncontended Mutex lock + unlock";

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .configure_from_args();
    let operations = Operations::new();
    let scope = operations.scope();

    c.bench_function(ROOT, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                scope
                    .begin(OperationKind::Query, black_box("orders.list"), None)
                    .complete();
            }
            record(ROOT, start.elapsed(), iters)
        })
    });
    let request = scope.begin(OperationKind::Request, "GET /orders", None);
    let request_scope = request.scope().unwrap();
    c.bench_function(NESTED, |b| {
        b.iter_custom(|iters| {
            request_scope.enter(|| {
                let start = Instant::now();
                for _ in 0..iters {
                    Operation::begin(OperationKind::Query, black_box("orders.list"), None)
                        .complete();
                }
                record(NESTED, start.elapsed(), iters)
            })
        })
    });
    c.bench_function(TWO_THREADS, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            std::thread::scope(|s| {
                for _ in 0..2 {
                    s.spawn(|| {
                        for _ in 0..iters {
                            scope
                                .begin(OperationKind::Query, black_box("orders.list"), None)
                                .complete();
                        }
                    });
                }
            });
            // Two operations per iteration, at once.
            record(TWO_THREADS, start.elapsed() / 2, iters)
        })
    });
    c.bench_function(INERT, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                Operation::begin(OperationKind::Query, black_box("orders.list"), None).complete();
            }
            record(INERT, start.elapsed(), iters)
        })
    });
    let parent = CancellationSource::new();
    let token = parent.token();
    c.bench_function(CHILD, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                drop(black_box(token.child()));
            }
            record(CHILD, start.elapsed(), iters)
        })
    });
    c.bench_function(CLOCK, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                black_box(Instant::now());
            }
            record(CLOCK, start.elapsed(), iters)
        })
    });
    let mutex = Mutex::new(0u64);
    c.bench_function(LOCK, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                *black_box(&mutex).lock().unwrap() += 1;
            }
            record(LOCK, start.elapsed(), iters)
        })
    });
    request.complete();

    println!();
    println!("== operations registry (median of criterion samples) ==");
    for case in [ROOT, NESTED, TWO_THREADS, INERT, CHILD, CLOCK, LOCK] {
        println!("{case}: {:.1} ns per operation", median(case));
    }
    let registry = median(NESTED);
    let child = median(CHILD);
    println!(
        "operation registry: {registry:.1} ns per operation (target ≤ 50 ns); \
         child token create + drop {child:.1} ns; ratio registry ÷ child {:.2}; \
         without a registry {:.1} ns",
        registry / child,
        median(INERT)
    );
}
