//! Per-call overhead of gracefully-reqwest against plain reqwest, in the same run, on a
//! loopback server; and the time from a cancel until the server sees the connection close.
//!
//! ```sh
//! cargo bench -p gracefully-reqwest --bench outbound
//! ```
//!
//! Prints:
//!
//! ```text
//! outbound overhead: reqwest <µs>, gracefully <µs>, ratio <r>
//! ```
//!
//! where *reqwest* is `client.get(url).send()` + `bytes()` and *gracefully* the same call
//! with `.with_token(&token)` on a token with a deadline — so it computes the budget, sends
//! the `x-request-timeout-ms` header, races the send against the token and guards the body.
//! More lines break that down: plain reqwest sending the same header by hand; a token with
//! no deadline (only the abort and the body guard); and gracefully with
//! `set_request_timeout(true)` (reqwest's own timer armed too). All calls go one after
//! another on one keep-alive connection, the sides taking turns call by call in a shuffled
//! order; each figure is the median over `ROUNDS` rounds of a side's mean over `CALLS`
//! calls. The ratio is gracefully ÷ reqwest (of those medians; the median of the per-round
//! ratios follows).
//!
//! A second line gives the calling thread's CPU time per call (`CLOCK_THREAD_CPUTIME_ID`:
//! everything this crate adds runs on that thread), which a loaded machine disturbs far less
//! than wall time.
//!
//! Then `cancel to close`: a server that reads the request and stalls; the client cancels
//! the token; the time from the `cancel` call until the server's read returns end-of-file
//! (median, 95th percentile and maximum over `CANCELS` calls, each on a new connection).
//!
//! The server runs on its own thread and runtime (a core of its own on a 2-core machine),
//! the client on the main thread's current-thread runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gracefully::CancellationSource;
use gracefully_reqwest::{DeadlinePropagation, REQUEST_TIMEOUT_HEADER, RequestBuilderExt};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const ROUNDS: usize = 31;
const CALLS: usize = 400;
const WARMUP: usize = 1_000;
const CANCELS: usize = 100;

fn main() {
    // `benches/outbound_instructions.sh` runs one side alone under callgrind.
    if let Ok(side) = std::env::var("OUTBOUND_ONLY") {
        return only(&side);
    }
    let ok_server = start_server(ok_server);
    let stall_server = start_server(stall_server);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let (addr, _) = ok_server;
        overhead(addr).await;
        let (addr, closes) = stall_server;
        cancel_to_close(addr, closes).await;
    });
}

/// Starts `serve` on a thread of its own with a current-thread runtime; returns its address
/// and the channel of the close instants it reports.
fn start_server<F, Fut>(serve: F) -> (SocketAddr, mpsc::UnboundedReceiver<Instant>)
where
    F: FnOnce(TcpListener, mpsc::UnboundedSender<Instant>) -> Fut + Send + 'static,
    Fut: Future<Output = ()>,
{
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (close_tx, close_rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            serve(listener, close_tx).await;
        });
    });
    (addr_rx.recv().expect("server address"), close_rx)
}

/// hyper HTTP/1.1 answering every request `200 ok`.
async fn ok_server(listener: TcpListener, _closes: mpsc::UnboundedSender<Instant>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Reads each request head, answers nothing, reports when the client closes.
async fn stall_server(listener: TcpListener, closes: mpsc::UnboundedSender<Instant>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let closes = closes.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = closes.send(Instant::now());
        });
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Side {
    Plain,
    PlainWithHeader,
    Gracefully,
    GracefullyNoDeadline,
    GracefullyRequestTimeout,
}

/// The tokens the calls use: one with a deadline an hour away, one with none.
struct Tokens {
    with_deadline: CancellationSource,
    without: CancellationSource,
}

impl Tokens {
    fn new() -> Tokens {
        Tokens {
            with_deadline: CancellationSource::with_timeout(Duration::from_secs(3600)),
            without: CancellationSource::new(),
        }
    }
}

/// One `GET` + `bytes()` as `side` makes it.
async fn call(client: &reqwest::Client, url: &str, side: Side, tokens: &Tokens) {
    let body = match side {
        Side::Plain => client.get(url).send().await.unwrap().bytes().await,
        Side::PlainWithHeader => {
            let left = tokens.with_deadline.token().time_left().unwrap();
            client
                .get(url)
                .header(REQUEST_TIMEOUT_HEADER, (left.as_millis() - 5) as u64)
                .send()
                .await
                .unwrap()
                .bytes()
                .await
        }
        Side::Gracefully => {
            let token = tokens.with_deadline.token();
            let response = client.get(url).with_token(&token).send().await.unwrap();
            response.bytes().await
        }
        Side::GracefullyRequestTimeout => {
            let token = tokens.with_deadline.token();
            let response = client
                .get(url)
                .with_token(&token)
                .propagation(DeadlinePropagation::default().set_request_timeout(true))
                .send()
                .await
                .unwrap();
            response.bytes().await
        }
        Side::GracefullyNoDeadline => {
            let token = tokens.without.token();
            let response = client.get(url).with_token(&token).send().await.unwrap();
            response.bytes().await
        }
    };
    assert_eq!(&body.unwrap()[..], b"ok");
}

async fn calls(client: &reqwest::Client, url: &str, side: Side, n: usize) {
    let tokens = Tokens::new();
    for _ in 0..n {
        call(client, url, side, &tokens).await;
    }
}

/// `OUTBOUND_CALLS` calls (default 1000) of one side after a warm-up of 200, nothing
/// printed: the unit that `outbound_instructions.sh` counts instructions of.
fn only(side: &str) {
    let side = match side {
        "reqwest" => Side::Plain,
        "gracefully" => Side::Gracefully,
        "gracefully-no-deadline" => Side::GracefullyNoDeadline,
        "reqwest-header" => Side::PlainWithHeader,
        "gracefully-request-timeout" => Side::GracefullyRequestTimeout,
        other => panic!(
            "OUTBOUND_ONLY={other}: valid: reqwest, gracefully, gracefully-no-deadline, \
             reqwest-header, gracefully-request-timeout"
        ),
    };
    let n: usize = std::env::var("OUTBOUND_CALLS")
        .ok()
        .map(|n| n.parse().expect("OUTBOUND_CALLS: a number of calls"))
        .unwrap_or(1_000);
    let (addr, _) = start_server(ok_server);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client");
        let url = format!("http://{addr}/");
        calls(&client, &url, side, 200).await;
        calls(&client, &url, side, n).await;
    });
}

/// CPU time the calling thread has used (user + system): what a call costs the caller,
/// without the time it waited for the server or for a core. Less sensitive to a loaded
/// machine than wall time, though not immune (caches, frequency).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID is supported by
    // Linux (and by every platform the bench runs on: it is a Linux-only measurement).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A tiny xorshift generator: enough to shuffle five sides, no dependency.
struct Xorshift(u64);

impl Xorshift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn shuffle(&mut self, items: &mut [usize]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn overhead(addr: SocketAddr) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{addr}/");
    let sides = [
        Side::Plain,
        Side::Gracefully,
        Side::PlainWithHeader,
        Side::GracefullyNoDeadline,
        Side::GracefullyRequestTimeout,
    ];
    for side in sides {
        calls(&client, &url, side, WARMUP).await;
    }
    // The sides take turns call by call, so a change in the machine's load falls on all of
    // them alike; each round yields one mean per side. The order is shuffled for every turn:
    // a call can leave work behind that the next call pays for (the pool's idle task, a
    // timer to deregister), and a fixed order would always bill one side for another's.
    let tokens = Tokens::new();
    let mut per_side: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    let mut cpu_per_side: Vec<Vec<f64>> = vec![Vec::new(); sides.len()];
    let mut ratios = Vec::new();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut order: Vec<usize> = (0..sides.len()).collect();
    for _ in 0..ROUNDS {
        let mut total = [Duration::ZERO; 5];
        let mut cpu = [Duration::ZERO; 5];
        for _ in 0..CALLS {
            rng.shuffle(&mut order);
            for &s in &order {
                let started = Instant::now();
                let cpu_started = thread_cpu_time();
                call(&client, &url, sides[s], &tokens).await;
                cpu[s] += thread_cpu_time().saturating_sub(cpu_started);
                total[s] += started.elapsed();
            }
        }
        let mean: Vec<f64> = total.iter().map(|t| micros(*t / CALLS as u32)).collect();
        for (s, m) in mean.iter().enumerate() {
            per_side[s].push(*m);
            cpu_per_side[s].push(micros(cpu[s] / CALLS as u32));
        }
        ratios.push(mean[1] / mean[0]);
    }
    let m: Vec<f64> = per_side.into_iter().map(median).collect();
    let c: Vec<f64> = cpu_per_side.into_iter().map(median).collect();
    println!(
        "outbound overhead: reqwest {:.2} µs, gracefully {:.2} µs, ratio {:.3}",
        m[0],
        m[1],
        m[1] / m[0]
    );
    println!(
        "  median of per-round ratios {:.3} ({ROUNDS} rounds of {CALLS} calls per side, taking turns in shuffled order, loopback HTTP/1.1 keep-alive)",
        median(ratios)
    );
    println!(
        "  client thread CPU per call: reqwest {:.2} µs, gracefully {:.2} µs, ratio {:.3} \
         (header by hand {:.2}, no deadline {:.2}, set_request_timeout {:.2})",
        c[0],
        c[1],
        c[1] / c[0],
        c[2],
        c[3],
        c[4]
    );
    println!(
        "  reqwest sending the same header by hand {:.2} µs (gracefully ÷ that: {:.3})",
        m[2],
        m[1] / m[2]
    );
    println!(
        "  gracefully, token without deadline (abort + body guard only) {:.2} µs (÷ reqwest: {:.3})",
        m[3],
        m[3] / m[0]
    );
    println!(
        "  gracefully with set_request_timeout(true) (reqwest's timer armed too) {:.2} µs (÷ reqwest: {:.3})",
        m[4],
        m[4] / m[0]
    );
}

async fn cancel_to_close(addr: SocketAddr, mut closes: mpsc::UnboundedReceiver<Instant>) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let url = format!("http://{addr}/stall");
    let mut latencies = Vec::with_capacity(CANCELS);
    for _ in 0..CANCELS {
        let source = CancellationSource::new();
        let token = source.token();
        let request = client.get(&url).with_token(&token).send();
        let call = tokio::spawn(request);
        // Let the request reach the server and the server start waiting.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let cancelled_at = Instant::now();
        source.cancel();
        let closed_at = tokio::time::timeout(Duration::from_secs(10), closes.recv())
            .await
            .expect("the server saw the close")
            .expect("server running");
        let result = call.await.unwrap();
        assert!(result.unwrap_err().is_cancelled());
        latencies.push(closed_at.saturating_duration_since(cancelled_at));
    }
    latencies.sort();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "cancel to close (seen by the server): median {:.1} µs, p95 {:.1} µs, max {:.1} µs ({CANCELS} calls)",
        micros(at(0.5)),
        micros(at(0.95)),
        micros(at(1.0))
    );
}
