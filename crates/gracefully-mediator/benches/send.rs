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
//! Two rows measure the core alone, for reference: a `child_with_timeout` create + drop
//! (what the timeout behaviour costs at least) and `Instant::now` (what timing a request
//! costs at least: the logging behaviour reads the clock twice when a subscriber is on).
//!
//! For a figure that does not depend on the machine's load, count instructions instead:
//! `crates/gracefully-mediator/benches/send_instructions.sh` runs one case at a time
//! under callgrind (this binary with `SEND_BENCH_CASE` and `SEND_BENCH_CALLS` set: it then
//! only makes that many calls of that case, and skips criterion).
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

/// A named case: one call per invocation.
type Case = (&'static str, Box<dyn FnMut()>);

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
const TIMEOUT_SOONER: &str = "send, timeout, the caller's deadline sooner";
const RETRY: &str = "send, retry";
const VALIDATE: &str = "send, validation";
const THREE: &str = "send, logging + timeout + retry";
const THREE_SENDER: &str = "Sender::send, logging + timeout + retry";
const CORE_TIMEOUT: &str = "core: child_with_timeout create + drop";
const CORE_NOW: &str = "core: Instant::now";
const THREE_INFO: &str = "send, logging + timeout + retry, subscriber at INFO";
const DIRECT_INFO: &str = "handler called directly, subscriber at INFO";

fn send_once(mediator: &Mediator, token: &CancellationToken) {
    let answer = mediator
        .send(Quote { id: 7 }, token)
        .now_or_never()
        .expect("ready at once");
    black_box(answer.unwrap());
}

fn direct(token: CancellationToken) -> impl FnMut() {
    move || {
        let answer = QuoteHandler
            .handle(Quote { id: 7 }, black_box(&token).clone())
            .now_or_never()
            .expect("ready at once");
        black_box(answer.unwrap());
    }
}

fn sending(mediator: Mediator, token: CancellationToken) -> impl FnMut() {
    move || send_once(&mediator, &token)
}

/// Every case without a subscriber; the first is the direct call.
fn cases(token: &CancellationToken) -> Vec<Case> {
    let with = |layers: &str| -> Mediator {
        match layers {
            "" => Mediator::builder().handler(QuoteHandler).build(),
            "logging" => Mediator::builder()
                .layer(LoggingLayer::new())
                .handler(QuoteHandler)
                .build(),
            "timeout" => Mediator::builder()
                .layer(TimeoutLayer::new(Duration::from_secs(30)))
                .handler(QuoteHandler)
                .build(),
            "retry" => Mediator::builder()
                .layer(RetryLayer::new(3))
                .handler(QuoteHandler)
                .build(),
            "validate" => Mediator::builder()
                .layer(ValidateLayer::new())
                .handler(QuoteHandler)
                .build(),
            _ => unreachable!(),
        }
        .unwrap()
    };
    // A caller whose own deadline is sooner than the behaviour's: an HTTP request under a
    // route timeout. (Half an hour against an hour, so that it never fires during the run.)
    // Its source lives as long as the closure.
    let sooner = CancellationSource::with_timeout(Duration::from_secs(1800));
    let sooner_token = sooner.token();
    let three = three_behaviours();
    let sender: Sender<Quote> = three.sender().unwrap();
    let t = token.clone();
    let core_token = token.clone();
    vec![
        (DIRECT, Box::new(direct(token.clone()))),
        (NONE, Box::new(sending(with(""), token.clone()))),
        (LOGGING, Box::new(sending(with("logging"), token.clone()))),
        (TIMEOUT, Box::new(sending(with("timeout"), token.clone()))),
        (TIMEOUT_SOONER, {
            let hour = Mediator::builder()
                .layer(TimeoutLayer::new(Duration::from_secs(3600)))
                .handler(QuoteHandler)
                .build()
                .unwrap();
            let mut send = sending(hour, sooner_token);
            Box::new(move || {
                let _keep = &sooner;
                send();
            })
        }),
        (RETRY, Box::new(sending(with("retry"), token.clone()))),
        (VALIDATE, Box::new(sending(with("validate"), token.clone()))),
        (THREE, Box::new(sending(three, token.clone()))),
        (
            THREE_SENDER,
            Box::new(move || {
                let answer = sender
                    .send(Quote { id: 7 }, &t)
                    .now_or_never()
                    .expect("ready at once");
                black_box(answer.unwrap());
            }),
        ),
        (
            CORE_TIMEOUT,
            Box::new(move || {
                drop(black_box(
                    core_token.child_with_timeout(Duration::from_secs(30)),
                ));
            }),
        ),
        (
            CORE_NOW,
            Box::new(|| {
                black_box(Instant::now());
            }),
        ),
    ]
}

fn three_behaviours() -> Mediator {
    Mediator::builder()
        .layer(LoggingLayer::new())
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .layer(RetryLayer::new(3))
        .handler(QuoteHandler)
        .build()
        .unwrap()
}

/// `SEND_BENCH_CASE=<case> SEND_BENCH_CALLS=<n>`: make `n` calls of that case and nothing
/// else (for callgrind; see send_instructions.sh). `<case>` is a case's name as printed.
fn instructions_mode(token: &CancellationToken) -> bool {
    let (Ok(name), Ok(calls)) = (
        std::env::var("SEND_BENCH_CASE"),
        std::env::var("SEND_BENCH_CALLS"),
    ) else {
        return false;
    };
    let calls: u64 = calls.parse().expect("SEND_BENCH_CALLS: a number of calls");
    let mut all = cases(token);
    let info = name.ends_with("subscriber at INFO");
    let _default = info.then(|| tracing::subscriber::set_default(info_subscriber()));
    if info {
        all = vec![
            (DIRECT_INFO, Box::new(direct(token.clone()))),
            (
                THREE_INFO,
                Box::new(sending(three_behaviours(), token.clone())),
            ),
        ];
    }
    let Some((_, f)) = all.iter_mut().find(|(case, _)| *case == name) else {
        let names: Vec<_> = all.iter().map(|(case, _)| *case).collect();
        panic!("SEND_BENCH_CASE: no case {name:?}; the cases: {names:?}");
    };
    for _ in 0..calls {
        f();
    }
    true
}

fn info_subscriber() -> impl tracing::Subscriber + Send + Sync {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::sink)
        .finish()
}

fn main() {
    let request = CancellationSource::new(); // the caller's (a request's) token
    let token = request.token();
    if instructions_mode(&token) {
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();

    let mut all = cases(&token);
    for (case, f) in &mut all {
        c.bench_function(case, |b| b.iter(&mut *f));
    }
    let allocs: Vec<usize> = all.iter_mut().map(|(_, f)| allocations(f)).collect();
    let times = interleave(&mut all);

    // Last, on its own: once a subscriber is registered, tracing's global level hint stays
    // raised, which would change every row above.
    let (info_times, info_allocs) = tracing::subscriber::with_default(info_subscriber(), || {
        let mut info: Vec<Case> = vec![
            (DIRECT_INFO, Box::new(direct(token.clone()))),
            (
                THREE_INFO,
                Box::new(sending(three_behaviours(), token.clone())),
            ),
        ];
        for (case, f) in &mut info {
            c.bench_function(case, |b| b.iter(&mut *f));
        }
        let allocs = allocations(&mut info[1].1);
        (interleave(&mut info), allocs)
    });
    c.final_summary();

    println!();
    println!(
        "summary: {ROUNDS} interleaved rounds of {BATCH} calls per case; per case the median \
         [quartiles] over rounds of its time minus the direct call's in the same round; \
         indicative: the machine is shared"
    );
    let added = |case: &[f64], base: &[f64]| -> Vec<f64> {
        case.iter().zip(base).map(|(c, d)| c - d).collect()
    };
    let row = |case: &str, times: &[f64], base: Option<&[f64]>, allocs: usize| match base {
        None => println!(
            "  {case}: {:.1} ns ({allocs} allocations per call)",
            quantile(times, 0.5)
        ),
        Some(base) => {
            let diff = added(times, base);
            println!(
                "  {case}: {:.1} ns, added {:.1} ns [{:.1} to {:.1}] ({allocs} allocations per call)",
                quantile(times, 0.5),
                quantile(&diff, 0.5),
                quantile(&diff, 0.25),
                quantile(&diff, 0.75),
            );
        }
    };
    for (i, (case, _)) in all.iter().enumerate() {
        let base = (i > 0 && !case.starts_with("core:")).then_some(times[0].as_slice());
        row(case, &times[i], base, allocs[i]);
    }
    row(DIRECT_INFO, &info_times[0], None, 0);
    row(
        THREE_INFO,
        &info_times[1],
        Some(&info_times[0]),
        info_allocs,
    );

    let three = all.iter().position(|(case, _)| *case == THREE).unwrap();
    let headline = quantile(&added(&times[three], &times[0]), 0.5);
    println!();
    println!(
        "send through three behaviours (logging + timeout + retry): {:.1} ns, direct {:.1} ns, \
         added {headline:.1} ns (target <= 150 ns: {}); of it, the core's timeout source alone: {:.1} ns",
        quantile(&times[three], 0.5),
        quantile(&times[0], 0.5),
        if headline <= 150.0 { "met" } else { "not met" },
        quantile(
            &times[all
                .iter()
                .position(|(case, _)| *case == CORE_TIMEOUT)
                .unwrap()],
            0.5
        ),
    );
}
