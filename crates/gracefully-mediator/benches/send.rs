//! `cargo bench -p gracefully-mediator --bench send`
//!
//! What the mediator adds to a call: `send` through three behaviours (logging, timeout,
//! retry) against calling the same handler directly, side by side in one run. Also each
//! behaviour alone, dispatch with none, and the three with a tracing subscriber recording
//! at INFO (the usual production setting; nothing is written: the writer is a sink).
//!
//! Every case goes through criterion (warm-up, sampling, outlier analysis, its usual
//! report). The summary printed at the end comes from a second pass that *interleaves* the
//! cases — round after round, each case for a short batch in turn — and takes, per case,
//! the median over rounds of its time minus the direct call's time in the same round. On a
//! shared machine whose load drifts while criterion works through the cases one after
//! another, the per-round difference is the steadier figure:
//!
//! ```text
//! <case>: <ns> ns, added <ns> ns over the direct call [quartiles] (<n> allocations per call)
//! ```
//!
//! The handler answers at once, so every future completes on its first poll
//! (`now_or_never`), in both the direct and the mediated case: what is measured is the
//! mediator's own work (lookup, pipeline clone, the behaviours, two boxed futures), not an
//! executor's. The caller's token is a live token (a request's), not `never()`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::Criterion;
use futures_util::FutureExt;
use gracefully::{CancellationSource, CancellationToken};
use gracefully_mediator::{
    BoxError, LoggingLayer, Mediator, Request, RequestHandler, RetryLayer, Sender, TimeoutLayer,
    ValidateLayer,
};

// -------------------------------------------------------------- allocation counting

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`; counting is a relaxed atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations made by one run of `f` (nothing else runs meanwhile).
fn allocations(mut f: impl FnMut()) -> usize {
    f(); // warm: lazily initialised statics allocate once
    ALLOCATIONS.store(0, Ordering::SeqCst);
    COUNTING.store(true, Ordering::SeqCst);
    f();
    COUNTING.store(false, Ordering::SeqCst);
    ALLOCATIONS.load(Ordering::SeqCst)
}

// ------------------------------------------------------------------- the cases

/// The cases, in the order benchmarked, with their per-call closures (kept for the
/// interleaved pass).
type Case = (&'static str, Box<dyn FnMut()>);

/// Benchmarks `f` under `case` with criterion and keeps it for the interleaved pass.
fn bench(
    c: &mut Criterion,
    cases: &mut Vec<Case>,
    case: &'static str,
    mut f: impl FnMut() + 'static,
) {
    c.bench_function(case, |b| b.iter(&mut f));
    cases.push((case, Box::new(f)));
}

/// Rounds of the interleaved pass, and calls per case per round.
const ROUNDS: usize = 41;
const BATCH: u32 = 20_000;

/// The interleaved pass: per case, ns per call in each round.
fn interleave(cases: &mut [Case]) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::with_capacity(ROUNDS); cases.len()];
    for round in 0..ROUNDS {
        // Rotate the starting case so no case always runs right after the same neighbour.
        for k in 0..cases.len() {
            let i = (round + k) % cases.len();
            let f = &mut cases[i].1;
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            times[i].push(start.elapsed().as_nanos() as f64 / f64::from(BATCH));
        }
    }
    times
}

fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * q).round() as usize]
}

// ------------------------------------------------------------------ the handler

#[derive(Clone)]
struct Quote {
    id: u64,
}

impl Request for Quote {
    type Response = u64;
    // A query: the retry behaviour keeps a copy for another attempt (part of its cost).
    fn clone_for_retry(&self) -> Option<Self> {
        Some(self.clone())
    }
}

struct QuoteHandler;

impl RequestHandler<Quote> for QuoteHandler {
    async fn handle(&self, request: Quote, token: CancellationToken) -> Result<u64, BoxError> {
        token.check()?;
        Ok(black_box(request.id).wrapping_mul(3))
    }
}

const DIRECT: &str = "handler called directly";
const NONE: &str = "send, no behaviours";
const LOGGING: &str = "send, logging";
const TIMEOUT: &str = "send, timeout";
const RETRY: &str = "send, retry";
const VALIDATE: &str = "send, validation";
const THREE: &str = "send, logging + timeout + retry";
const THREE_SENDER: &str = "Sender::send, logging + timeout + retry";
const THREE_INFO: &str = "send, logging + timeout + retry, subscriber at INFO";
const DIRECT_INFO: &str = "handler called directly, subscriber at INFO";

fn send_once(mediator: &Mediator, token: &CancellationToken) {
    let answer = mediator
        .send(Quote { id: 7 }, token)
        .now_or_never()
        .expect("ready at once");
    black_box(answer.unwrap());
}

fn main() {
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let request = CancellationSource::new(); // the caller's (a request's) token
    let token = request.token();
    let mut cases: Vec<Case> = Vec::new();

    let t = token.clone();
    bench(&mut c, &mut cases, DIRECT, move || {
        let answer = QuoteHandler
            .handle(Quote { id: 7 }, black_box(&t).clone())
            .now_or_never()
            .expect("ready at once");
        black_box(answer.unwrap());
    });

    let none = Mediator::builder().handler(QuoteHandler).build().unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, NONE, move || send_once(&none, &t));

    let logging = Mediator::builder()
        .layer(LoggingLayer::new())
        .handler(QuoteHandler)
        .build()
        .unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, LOGGING, move || send_once(&logging, &t));

    let timeout = Mediator::builder()
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .handler(QuoteHandler)
        .build()
        .unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, TIMEOUT, move || send_once(&timeout, &t));

    let retry = Mediator::builder()
        .layer(RetryLayer::new(3))
        .handler(QuoteHandler)
        .build()
        .unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, RETRY, move || send_once(&retry, &t));

    let validate = Mediator::builder()
        .layer(ValidateLayer::new())
        .handler(QuoteHandler)
        .build()
        .unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, VALIDATE, move || {
        send_once(&validate, &t)
    });

    let three = Mediator::builder()
        .layer(LoggingLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .layer(RetryLayer::new(3))
        .handler(QuoteHandler)
        .build()
        .unwrap();
    let (t, m) = (token.clone(), three.clone());
    bench(&mut c, &mut cases, THREE, move || send_once(&m, &t));

    let sender: Sender<Quote> = three.sender().unwrap();
    let t = token.clone();
    bench(&mut c, &mut cases, THREE_SENDER, move || {
        let answer = sender
            .send(Quote { id: 7 }, &t)
            .now_or_never()
            .expect("ready at once");
        black_box(answer.unwrap());
    });

    let allocs: Vec<usize> = cases.iter_mut().map(|(_, f)| allocations(f)).collect();
    let times = interleave(&mut cases);

    // Last, on its own: once a subscriber is registered, tracing's global level hint stays
    // raised, which would change every row above.
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish();
    let info = tracing::subscriber::with_default(subscriber, || {
        let mut info_cases: Vec<Case> = Vec::new();
        let t = token.clone();
        bench(&mut c, &mut info_cases, DIRECT_INFO, move || {
            let answer = QuoteHandler
                .handle(Quote { id: 7 }, black_box(&t).clone())
                .now_or_never()
                .expect("ready at once");
            black_box(answer.unwrap());
        });
        let t = token.clone();
        bench(&mut c, &mut info_cases, THREE_INFO, move || {
            send_once(&three, &t)
        });
        let allocs = allocations(&mut info_cases[1].1);
        (interleave(&mut info_cases), allocs)
    });
    c.final_summary();

    println!();
    println!(
        "summary: {ROUNDS} interleaved rounds of {BATCH} calls per case; median [first-third \
         quartile] of the per-round difference; indicative: the machine is shared"
    );
    let direct = &times[0];
    let added = |case: &[f64], direct: &[f64]| -> Vec<f64> {
        case.iter().zip(direct).map(|(c, d)| c - d).collect()
    };
    let mut headline = 0.0;
    for (i, (case, _)) in cases.iter().enumerate() {
        let ns = quantile(&times[i], 0.5);
        if i == 0 {
            println!("  {case}: {ns:.1} ns ({} allocations per call)", allocs[i]);
            continue;
        }
        let diff = added(&times[i], direct);
        let median = quantile(&diff, 0.5);
        if *case == THREE {
            headline = median;
        }
        println!(
            "  {case}: {ns:.1} ns, added {median:.1} ns [{:.1}-{:.1}] ({} allocations per call)",
            quantile(&diff, 0.25),
            quantile(&diff, 0.75),
            allocs[i]
        );
    }
    let (info_times, info_allocs) = info;
    let diff = added(&info_times[1], &info_times[0]);
    println!(
        "  {THREE_INFO}: {:.1} ns, added {:.1} ns [{:.1}-{:.1}] ({info_allocs} allocations per call)",
        quantile(&info_times[1], 0.5),
        quantile(&diff, 0.5),
        quantile(&diff, 0.25),
        quantile(&diff, 0.75),
    );
    println!();
    println!(
        "send through three behaviours (logging + timeout + retry): {:.1} ns, direct {:.1} ns, \
         added {headline:.1} ns (target <= 150 ns: {})",
        quantile(
            &times[cases.iter().position(|(c, _)| *c == THREE).unwrap()],
            0.5
        ),
        quantile(direct, 0.5),
        if headline <= 150.0 { "met" } else { "not met" }
    );
}
