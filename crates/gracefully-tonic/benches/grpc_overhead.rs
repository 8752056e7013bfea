//! Per-call overhead of a gRPC unary call through gracefully-tonic against plain tonic, in
//! the same run, on loopback.
//!
//! ```sh
//! cargo bench -p gracefully-tonic --bench grpc_overhead
//! ```
//!
//! Prints:
//!
//! ```text
//! grpc overhead: tonic <µs>, gracefully <µs>, ratio <r>
//! ```
//!
//! like for like: *tonic* is a plain `tonic::transport::Server` and a plain `Channel`, the
//! call given a deadline the way tonic offers (`Request::set_timeout`, which sends
//! `grpc-timeout`); *gracefully* is `GrpcServer` (gracefully-axum's server: a token per RPC,
//! stream-reset watch, the report's counts) with a `Channel` wrapped in `GracefulLayer`, the
//! call bound to a token with the same deadline — so it sends `grpc-timeout`, the server
//! parses it, keeps its transit allowance back and arms the RPC's deadline, and the call
//! races its token. Both sides' `Channel`s and tonic's server arm a timer when they see
//! `grpc-timeout`: that is tonic's price for a deadline, paid alike. More lines break it
//! down: the same pair without a deadline (plain tonic; gracefully with a token that has
//! none); gracefully with a deadline against plain tonic without one (the whole price of
//! sending a deadline, tonic's timers included); `GrpcServer` with a plain client (the
//! server's share).
//!
//! All calls of a side go one after another on one HTTP/2 connection; the sides take turns
//! call by call in a shuffled order; each figure is the median over `ROUNDS` rounds of a
//! side's mean over `CALLS` calls. A second line gives the process's CPU time per call
//! (client and server: `CLOCK_PROCESS_CPUTIME_ID`), which a loaded machine disturbs less
//! than wall time. `benches/grpc_instructions.sh` counts instructions instead (callgrind),
//! which does not depend on the load at all.
//!
//! Both servers run on one thread with a current-thread runtime (see `start_servers`); the
//! client on the main thread's current-thread runtime.

#![allow(missing_docs)]

#[path = "../tests/support/proto.rs"]
mod proto;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, CancellationToken};
use gracefully_axum::Shutdown;
use gracefully_tonic::{GracefulChannel, GracefulLayer, GrpcServer, RequestExt};
use proto::{WorkReply, WorkRequest, WorkerClient, WorkerServer};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response};

const ROUNDS: usize = 41;
const CALLS: usize = 300;
const WARMUP: usize = 1_000;

fn service() -> WorkerServer {
    WorkerServer::new(|request: Request<WorkRequest>| async move {
        Ok(Response::new(WorkReply {
            label: request.into_inner().label,
        }))
    })
}

/// Starts both servers, plain tonic's and gracefully's, on one thread (one current-thread
/// runtime); returns their addresses (tonic's first). One thread for both, so that the
/// machine's placement of threads on cores (and the cost of waking a thread on another core,
/// high in a VM) falls on both sides alike: with a thread each, the sides' figures differed
/// by up to 40 % with identical servers, depending on where the scheduler put which thread.
fn start_servers() -> (SocketAddr, SocketAddr) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("server runtime");
        runtime.block_on(async move {
            let tonic_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let gracefully_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send((
                    tonic_listener.local_addr().unwrap(),
                    gracefully_listener.local_addr().unwrap(),
                ))
                .unwrap();
            let never = CancellationSource::new();
            let routes = tonic::service::Routes::new(service());
            let gracefully = GrpcServer::new(gracefully_listener, routes).run(Shutdown {
                stopping: never.token(),
                hard_stop: never.token(),
            });
            let tonic = tonic::transport::Server::builder()
                .add_service(service())
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(tonic_listener));
            let (_, served) = tokio::join!(gracefully, tonic);
            served.expect("tonic server");
        });
    });
    addr_rx.recv().expect("server addresses")
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Side {
    Tonic,
    Gracefully,
    TonicWithTimeout,
    GracefullyNoDeadline,
    GrpcServerPlainClient,
}

const SIDES: [Side; 5] = [
    Side::Tonic,
    Side::Gracefully,
    Side::TonicWithTimeout,
    Side::GracefullyNoDeadline,
    Side::GrpcServerPlainClient,
];

/// The clients of every side, each on its own connection.
struct Clients {
    tonic: WorkerClient<Channel>,
    gracefully: WorkerClient<GracefulChannel<Channel>>,
    grpc_server_plain: WorkerClient<Channel>,
    with_deadline: CancellationToken,
    without: CancellationToken,
    // Keep the sources alive (a dropped source's token stays as it is, but be explicit).
    _sources: (CancellationSource, CancellationSource),
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

impl Clients {
    async fn new(tonic_addr: SocketAddr, gracefully_addr: SocketAddr) -> Clients {
        let with_deadline = CancellationSource::with_timeout(Duration::from_secs(3600));
        let without = CancellationSource::new();
        Clients {
            tonic: WorkerClient::new(channel(tonic_addr).await),
            gracefully: WorkerClient::new(
                tower::ServiceBuilder::new()
                    .layer(GracefulLayer::new())
                    .service(channel(gracefully_addr).await),
            ),
            grpc_server_plain: WorkerClient::new(channel(gracefully_addr).await),
            with_deadline: with_deadline.token(),
            without: without.token(),
            _sources: (with_deadline, without),
        }
    }

    /// One unary call as `side` makes it.
    async fn call(&mut self, side: Side) {
        let request = || {
            Request::new(WorkRequest {
                millis: 0,
                label: "bench".to_owned(),
            })
        };
        let reply = match side {
            Side::Tonic => self.tonic.work(request()).await,
            Side::TonicWithTimeout => {
                let mut r = request();
                r.set_timeout(self.with_deadline.time_left().unwrap());
                self.tonic.work(r).await
            }
            Side::Gracefully => {
                self.gracefully
                    .work(request().with_token(&self.with_deadline))
                    .await
            }
            Side::GracefullyNoDeadline => {
                self.gracefully
                    .work(request().with_token(&self.without))
                    .await
            }
            Side::GrpcServerPlainClient => self.grpc_server_plain.work(request()).await,
        };
        assert_eq!(
            reply.expect("the call succeeds").into_inner().label,
            "bench"
        );
    }
}

fn main() {
    // `benches/grpc_instructions.sh` runs one side alone under callgrind.
    if let Ok(side) = std::env::var("GRPC_ONLY") {
        return only(&side);
    }
    let (tonic_addr, gracefully_addr) = start_servers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(overhead(tonic_addr, gracefully_addr));
}

/// `GRPC_CALLS` calls (default 1000) of one side after a warm-up of 200, nothing printed:
/// the unit that `grpc_instructions.sh` counts instructions of.
fn only(side: &str) {
    let side = match side {
        "tonic" => Side::Tonic,
        "gracefully" => Side::Gracefully,
        "tonic-timeout" => Side::TonicWithTimeout,
        "gracefully-no-deadline" => Side::GracefullyNoDeadline,
        "grpc-server-plain-client" => Side::GrpcServerPlainClient,
        other => panic!(
            "GRPC_ONLY={other}: valid: tonic, gracefully, tonic-timeout, \
             gracefully-no-deadline, grpc-server-plain-client"
        ),
    };
    let n: usize = std::env::var("GRPC_CALLS")
        .ok()
        .map(|n| n.parse().expect("GRPC_CALLS: a number of calls"))
        .unwrap_or(1_000);
    let (tonic_addr, gracefully_addr) = start_servers();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let mut clients = Clients::new(tonic_addr, gracefully_addr).await;
        for _ in 0..200 {
            clients.call(side).await;
        }
        for _ in 0..n {
            clients.call(side).await;
        }
    });
}

/// CPU time the whole process has used (user + system, every thread: client and server).
fn process_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; CLOCK_PROCESS_CPUTIME_ID is supported by
    // Linux, the platform this measurement is for.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
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

async fn overhead(tonic_addr: SocketAddr, gracefully_addr: SocketAddr) {
    let mut clients = Clients::new(tonic_addr, gracefully_addr).await;
    for side in SIDES {
        for _ in 0..WARMUP {
            clients.call(side).await;
        }
    }
    // The sides take turns call by call, so a change in the machine's load falls on all of
    // them alike; each round yields one mean per side. The order is shuffled for every turn,
    // so no side always follows (and pays for what is left behind by) the same other side.
    let mut per_side: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
    let mut cpu_per_side: Vec<Vec<f64>> = vec![Vec::new(); SIDES.len()];
    let mut ratios = Vec::new();
    let mut ratios_without = Vec::new();
    let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15);
    let mut order: Vec<usize> = (0..SIDES.len()).collect();
    for _ in 0..ROUNDS {
        let mut total = [Duration::ZERO; SIDES.len()];
        let mut cpu = [Duration::ZERO; SIDES.len()];
        for _ in 0..CALLS {
            rng.shuffle(&mut order);
            for &s in &order {
                let started = Instant::now();
                let cpu_started = process_cpu_time();
                clients.call(SIDES[s]).await;
                cpu[s] += process_cpu_time().saturating_sub(cpu_started);
                total[s] += started.elapsed();
            }
        }
        let mean: Vec<f64> = total.iter().map(|t| micros(*t / CALLS as u32)).collect();
        for (s, m) in mean.iter().enumerate() {
            per_side[s].push(*m);
            cpu_per_side[s].push(micros(cpu[s] / CALLS as u32));
        }
        ratios.push(mean[1] / mean[2]);
        ratios_without.push(mean[3] / mean[0]);
    }
    let m: Vec<f64> = per_side.into_iter().map(median).collect();
    let c: Vec<f64> = cpu_per_side.into_iter().map(median).collect();
    // Sides: 0 tonic, 1 gracefully (deadline), 2 tonic with the deadline set by hand,
    // 3 gracefully without a deadline, 4 `GrpcServer` with a plain client.
    println!(
        "grpc overhead: tonic {:.2} µs, gracefully {:.2} µs, ratio {:.3}",
        m[2],
        m[1],
        m[1] / m[2]
    );
    println!(
        "  (both calls with the same deadline: tonic's Request::set_timeout, gracefully's token; \
         {ROUNDS} rounds of {CALLS} unary calls per side, taking turns in shuffled order, \
         loopback HTTP/2)"
    );
    println!("  median of per-round ratios {:.3}", median(ratios));
    println!(
        "  process CPU per call (client + server): tonic {:.2} µs, gracefully {:.2} µs, ratio {:.3}",
        c[2],
        c[1],
        c[1] / c[2]
    );
    println!(
        "  without a deadline: tonic {:.2} µs, gracefully {:.2} µs, ratio {:.3} \
         (median of per-round ratios {:.3}); CPU {:.2} µs, {:.2} µs, ratio {:.3}",
        m[0],
        m[3],
        m[3] / m[0],
        median(ratios_without),
        c[0],
        c[3],
        c[3] / c[0]
    );
    println!(
        "  gracefully with a deadline ÷ plain tonic without one: {:.3} (CPU {:.3}): what \
         sending a deadline costs, tonic's own timers included (tonic with a deadline ÷ \
         without: {:.3})",
        m[1] / m[0],
        c[1] / c[0],
        m[2] / m[0]
    );
    println!(
        "  GrpcServer with a plain tonic client {:.2} µs (÷ tonic: {:.3}); CPU {:.2} µs",
        m[4],
        m[4] / m[0],
        c[4]
    );
}
