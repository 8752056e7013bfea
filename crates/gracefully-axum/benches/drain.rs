//! `cargo bench -p gracefully-axum --bench drain`
//!
//! A shutdown under load: 1,000 idle keep-alive connections and 100 requests in flight
//! (each finishing 100–300 ms after it started, well inside the drain budget). The stop
//! request (`stopping`) is fired while all 100 handlers run; we measure the time until the
//! server has drained (`run` returned), check that every idle connection was closed and
//! that all 100 requests already accepted were answered 200, and print:
//!
//! ```text
//! drain with 1,000 idle keep-alive connections and 100 in-flight requests: <ms> ms
//!   (<ms> ms after the last request finished), 0 failed of 100 accepted
//! ```
//!
//! (The idle connections are closed after the server's idle grace, 1 s by default: a
//! connection idle at drain start may have a request on its way.)
//!
//! Then the same server, and plain `axum::serve` with `with_graceful_shutdown` as the
//! anchor, under steady load: 16 keep-alive clients loop `GET` (the loader of
//! `tests/support/loader.rs`, which classifies every request written on an accepted
//! connection as answered, partial or lost), and the stop comes after 1.5 s. Over 5 rounds:
//!
//! ```text
//! drain under load: axum lost <n> of <m>, gracefully lost <n> of <m>
//! ```
//!
//! (lost counts partial answers too). No criterion here: one run is seconds of wall time;
//! the median of 5 rounds is printed.

#[path = "../tests/support/loader.rs"]
mod loader;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use gracefully::CancellationSource;
use gracefully_axum::{HttpServer, Shutdown};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

const IDLE: usize = 1000;
const IN_FLIGHT: usize = 100;
const ROUNDS: usize = 5;

async fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if text.contains("\r\n\r\n") {
            // Bodies here are short and arrive with the head.
            return text.split_whitespace().nth(1)?.parse().ok();
        }
    }
}

async fn round() -> (Duration, Duration, usize, usize) {
    let started = Arc::new(AtomicUsize::new(0));
    let last_finished = Arc::new(Mutex::new(Instant::now()));
    let (s, lf) = (started.clone(), last_finished.clone());
    let app = Router::new().route("/fast", get(|| async { "ok" })).route(
        "/work",
        get(move || {
            let (s, lf) = (s.clone(), lf.clone());
            async move {
                let n = s.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(100 + 2 * n as u64)).await;
                let mut last = lf.lock().await;
                *last = (*last).max(Instant::now());
                "done"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopping = CancellationSource::new();
    let hard_stop = CancellationSource::new();
    let server = tokio::spawn(HttpServer::new(listener, app).run(Shutdown {
        stopping: stopping.token(),
        hard_stop: hard_stop.token(),
    }));

    // 1,000 keep-alive connections, each having made one request, now idle.
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /fast HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_status(&mut stream).await, Some(200));
        idle.push(stream);
    }
    // 100 requests in flight.
    let mut busy = Vec::with_capacity(IN_FLIGHT);
    for _ in 0..IN_FLIGHT {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /work HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await
            .unwrap();
        busy.push(tokio::spawn(async move { read_status(&mut stream).await }));
    }
    while started.load(Ordering::SeqCst) < IN_FLIGHT {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    let stop = Instant::now();
    stopping.cancel();
    let report = server.await.unwrap();
    let took = stop.elapsed();
    let after_last = Instant::now().saturating_duration_since(*last_finished.lock().await);

    let mut failed = 0;
    for request in busy {
        if request.await.unwrap() != Some(200) {
            failed += 1;
        }
    }
    let mut closed = 0;
    for mut stream in idle {
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte).await, Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    let drain = report.drain.expect("drained");
    assert_eq!(drain.idle_closed as usize, IDLE, "{drain}");
    assert_eq!(drain.goaway_sent, 0, "{drain}");
    assert_eq!(drain.requests_in_flight as usize, IN_FLIGHT, "{drain}");
    (took, after_last, failed, closed)
}

const LOAD_CLIENTS: usize = 16;

/// One server under steady load, stopped after 1.5 s: what the clients saw.
async fn under_load(gracefully_axum: bool) -> loader::Tally {
    let app = Router::new().route(
        "/",
        get(|| async {
            tokio::task::yield_now().await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopping = CancellationSource::new();
    let hard_stop = CancellationSource::new();
    let server = if gracefully_axum {
        let shutdown = Shutdown {
            stopping: stopping.token(),
            hard_stop: hard_stop.token(),
        };
        tokio::spawn(async move {
            HttpServer::new(listener, app).run(shutdown).await;
        })
    } else {
        let stop = stopping.token();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    stop.cancelled().await;
                })
                .await
                .unwrap();
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let load = tokio::spawn(loader::http1_load(addr, "/", LOAD_CLIENTS, deadline));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stopping.cancel();
    server.await.unwrap();
    load.await.unwrap()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut results = Vec::new();
    for i in 0..ROUNDS {
        let (took, after_last, failed, closed) = rt.block_on(round());
        println!(
            "round {}: drained in {} ms ({} ms after the last request finished), {failed} failed of {IN_FLIGHT}, {closed} of {IDLE} idle connections closed",
            i + 1,
            took.as_millis(),
            after_last.as_millis()
        );
        results.push((took, after_last, failed));
    }
    results.sort();
    let (took, after_last, _) = results[ROUNDS / 2];
    let failed: usize = results.iter().map(|r| r.2).sum();
    println!(
        "drain with 1,000 idle keep-alive connections and 100 in-flight requests: {} ms ({} ms after the last request finished), {failed} failed of {} accepted",
        took.as_millis(),
        after_last.as_millis(),
        IN_FLIGHT * ROUNDS,
    );

    let mut totals = [loader::Tally::default(), loader::Tally::default()];
    for i in 0..ROUNDS {
        // Alternate which server goes first, so drift on the machine hits both.
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        let mut round = [loader::Tally::default(), loader::Tally::default()];
        for gracefully_axum in order {
            round[gracefully_axum as usize] = rt.block_on(under_load(gracefully_axum));
        }
        println!(
            "round {}: axum {}; gracefully {}",
            i + 1,
            round[0],
            round[1]
        );
        totals[0].add(round[0]);
        totals[1].add(round[1]);
    }
    let lost = |t: &loader::Tally| t.lost + t.partial;
    println!(
        "drain under load: axum lost {} of {}, gracefully lost {} of {}",
        lost(&totals[0]),
        totals[0].sent(),
        lost(&totals[1]),
        totals[1].sent()
    );
}
