//! Bad input — malformed requests, oversized headers, slowloris clients — is rejected by
//! the server without affecting other connections or holding up the shutdown.

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use support::{SOON, TestServer, closed_within, read_response, send_raw, status_of};

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

#[tokio::test]
async fn a_malformed_request_is_rejected_and_other_connections_are_unaffected() {
    let server = TestServer::start(app()).await;
    let mut bad = send_raw(server.addr, b"THIS IS NOT HTTP\r\n\r\n").await;
    let response = read_response(&mut bad).await;
    assert_eq!(status_of(&response), 400, "{response}");
    let mut good = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut good).await), 200);
    server.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_rejected() {
    let server = TestServer::start_with(app(), |s| s.max_header_bytes(8 * 1024)).await;
    let mut request = b"GET / HTTP/1.1\r\nhost: test\r\nx-big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 64 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    // The server may close before we finish writing; that is a rejection too.
    let _ = stream.write_all(&request).await;
    let mut buf = [0u8; 512];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(SOON, stream.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || text.starts_with("HTTP/1.1 431"),
        "rejected: {text:?}"
    );
    // Others are served.
    let mut good = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut good).await), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_slowloris_client_is_cut_off_without_delaying_others_or_the_shutdown() {
    let server =
        TestServer::start_with(app(), |s| s.header_read_timeout(Duration::from_millis(300))).await;
    // Sends part of its headers, then stalls.
    let started = Instant::now();
    let mut slow = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: te").await;
    // Meanwhile others are served at once.
    let mut good = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut good).await), 200);
    assert!(started.elapsed() < Duration::from_millis(300));
    // The slow one is disconnected after the header-read timeout.
    assert!(closed_within(&mut slow, SOON).await);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A stalled client does not hold the shutdown beyond the header-read timeout either.
    let _stalled = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: te").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let stopping = Instant::now();
    server.stop().await;
    assert!(stopping.elapsed() < SOON);
}

#[tokio::test]
async fn a_client_trickling_its_headers_byte_by_byte_is_cut_off_at_the_timeout() {
    use tokio::io::AsyncWriteExt;
    let server =
        TestServer::start_with(app(), |s| s.header_read_timeout(Duration::from_millis(300))).await;
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let started = Instant::now();
    // Progress does not extend the deadline: a byte every 50 ms would take 1.5 s.
    let head = b"GET / HTTP/1.1\r\nhost: trickle\r\nx-slow: yes\r\n\r\n";
    let mut cut_off = false;
    for byte in head {
        if stream.write_all(&[*byte]).await.is_err() {
            cut_off = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(5) {
            break;
        }
    }
    if !cut_off {
        cut_off = closed_within(&mut stream, SOON).await;
    }
    assert!(cut_off, "the trickling client was disconnected");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_outlives_the_header_timeout() {
    use tokio::io::AsyncWriteExt;
    let server =
        TestServer::start_with(app(), |s| s.header_read_timeout(Duration::from_millis(100))).await;
    let mut stream = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    // Idle (nothing sent) for several header timeouts: not a slow head.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    server.stop().await;
}

/// Issue 11, defect 2: hyper's HTTP/2 connection that finished its handshake but has not
/// sent a request yet is not a slow request head. Before the fix the preface started the
/// slowloris clock (the flag that turns it off was set only at the first request) and the
/// first request, sent after the timeout, failed with a broken pipe.
#[tokio::test]
async fn an_idle_http2_connection_outlives_the_header_timeout() {
    let server =
        TestServer::start_with(app(), |s| s.header_read_timeout(Duration::from_millis(200))).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    // Idle after the handshake (a pooled gRPC or HTTP/2 connection) for several timeouts.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let mut client = tokio::time::timeout(SOON, client.ready())
        .await
        .unwrap()
        .expect("the idle connection is still open");
    let request = http::Request::get(format!("http://{}/", server.addr))
        .body(())
        .unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = tokio::time::timeout(SOON, response)
        .await
        .unwrap()
        .expect("the first request on the idle connection is answered");
    assert_eq!(response.status(), 200);
    drop(client);
    server.stop().await;
    connection.abort();
}

/// Issue 11, defect 2 (the other half): a connection that never sends a byte is the
/// cheapest way to hold a server's connections; before the fix it was never timed out.
#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let server =
        TestServer::start_with(app(), |s| s.header_read_timeout(Duration::from_millis(200))).await;
    let started = Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut silent, Duration::from_secs(5)).await,
        "a silent connection is closed"
    );
    assert!(started.elapsed() >= Duration::from_millis(200));
    server.stop().await;
}

/// Issue 11, defect 1 (CVE-2023-44487, HTTP/2 rapid reset): a client that opens a stream
/// and resets it, again and again, must not get more handlers running on one connection
/// than the connection's stream limit. Before the fix, with the default `Cooperative`
/// policy, every reset handler ran on uncounted: 600 streams opened and reset left 600
/// handlers running.
#[tokio::test]
async fn http2_rapid_reset_cannot_run_more_handlers_than_the_stream_limit() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const STREAM_LIMIT: usize = 200;
    const ATTEMPTS: usize = 600;

    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let release = gracefully::CancellationSource::new();
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel();
    let (r, m, gate) = (running.clone(), most.clone(), release.token());
    let app = Router::new().route(
        "/hold",
        get(move || {
            let (r, m, gate, started_tx) = (r.clone(), m.clone(), gate.clone(), started_tx.clone());
            async move {
                struct Running(Arc<AtomicUsize>);
                impl Drop for Running {
                    fn drop(&mut self) {
                        self.0.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                let now = r.fetch_add(1, Ordering::SeqCst) + 1;
                let _running = Running(r.clone());
                m.fetch_max(now, Ordering::SeqCst);
                let _ = started_tx.send(());
                // Runs on after its stream is reset (until the test lets it go).
                gate.cancelled().await;
                "released"
            }
        }),
    );
    let server = TestServer::start(app).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut refused = 0;
    let mut connection_closed = false;
    for _ in 0..ATTEMPTS {
        let Ok(mut ready) = client.clone().ready().await else {
            connection_closed = true;
            break;
        };
        let request = http::Request::get(format!("http://{}/hold", server.addr))
            .body(())
            .unwrap();
        let Ok((mut response, _)) = ready.send_request(request, true) else {
            connection_closed = true;
            break;
        };
        tokio::select! {
            _ = started.recv() => {
                // The handler runs: reset the stream (RST_STREAM CANCEL) and go again.
                drop(response);
            }
            answer = &mut response => match answer {
                Err(_) => refused += 1,
                Ok(answer) => panic!("unexpected answer {}", answer.status()),
            },
        }
    }
    let most_running = most.load(Ordering::SeqCst);
    release.cancel();
    drop(client);
    connection.abort();
    assert!(
        most_running <= STREAM_LIMIT,
        "{most_running} handlers ran at once on one connection whose stream limit is {STREAM_LIMIT}"
    );
    assert!(
        refused > 0 || connection_closed,
        "past the bound, new streams are refused or the connection is closed"
    );
    server.stop().await;
}

/// A POST whose head says `len` bytes of body follow, and only the first ten do.
fn stalled_upload(len: usize) -> String {
    format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ncontent-type: application/octet-stream\r\n\
         content-length: {len}\r\n\r\n0123456789"
    )
}

/// A route whose handler waits in the `Bytes` extractor for the whole body.
fn upload_app() -> Router {
    Router::new().route(
        "/upload",
        axum::routing::post(|body: axum::body::Bytes| async move { format!("{}", body.len()) }),
    )
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_answered_504_at_the_route_timeout() {
    let app = upload_app().layer(gracefully_axum::TimeoutLayer::new(Duration::from_millis(
        300,
    )));
    let server = TestServer::start(app).await;
    let started = Instant::now();
    let mut stream = send_raw(server.addr, stalled_upload(100_000).as_bytes()).await;
    let response = tokio::time::timeout(SOON, read_response(&mut stream))
        .await
        .expect("answered, not left waiting for the body");
    assert_eq!(status_of(&response), 504, "{response}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    let report = server.stop().await;
    assert_eq!(report.cancelled_deadline, 1, "{report}");
}

#[tokio::test]
async fn a_stalled_upload_is_answered_503_at_the_hard_stop_and_nothing_is_aborted() {
    let hosted = support::start_hosted(
        upload_app(),
        |s| s,
        |h| {
            h.shutdown_timeout(Duration::from_secs(2))
                .cancel_grace(Duration::from_secs(1))
        },
    )
    .await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(send_raw(hosted.addr, stalled_upload(99_999_999).as_bytes()).await);
    }
    // The handlers are waiting for their bodies.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop = Instant::now();
    hosted.lifetime.stop(gracefully::Reason::shutdown());
    for stream in &mut streams {
        let response = tokio::time::timeout(SOON, read_response(stream))
            .await
            .expect("answered at the hard stop");
        assert_eq!(status_of(&response), 503, "{response}");
        assert!(
            response.to_ascii_lowercase().contains("connection: close"),
            "{response}"
        );
    }
    let report = hosted.run.await.unwrap();
    assert!(
        stop.elapsed() < Duration::from_millis(1900),
        "ended in the cancel phase, not at the abort: {:?}\n{report}",
        stop.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn a_head_stalled_mid_request_does_not_hold_the_drain_past_the_idle_grace() {
    use tokio::io::AsyncWriteExt;
    // The header-read timeout far away: only the drain's own logic can close it soon.
    let hosted = support::start_hosted(
        app(),
        |s| s.header_read_timeout(Duration::from_secs(60)),
        |h| {
            h.shutdown_timeout(Duration::from_secs(30))
                .cancel_grace(Duration::from_secs(5))
        },
    )
    .await;
    let mut stalled = send_raw(hosted.addr, b"GET / HTTP/1.1\r\nhost: te").await;
    // A client still sending at the drain is given the time to finish its request.
    let mut slow = send_raw(hosted.addr, b"GET / HTTP/1.1\r\n").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stop = Instant::now();
    hosted.lifetime.stop(gracefully::Reason::shutdown());
    tokio::time::sleep(Duration::from_millis(600)).await;
    slow.write_all(b"host: test\r\n\r\n").await.unwrap();
    let response = read_response(&mut slow).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    // The one that stopped sending is closed after the idle grace (1 s, two looks).
    assert!(closed_within(&mut stalled, Duration::from_secs(10)).await);
    let report = hosted.run.await.unwrap();
    assert!(
        stop.elapsed() < Duration::from_secs(10),
        "the drain waited for the stalled head: {:?}\n{report}",
        stop.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(
        report
            .entry("http")
            .unwrap()
            .detail("idle connections closed"),
        Some("1"),
        "{report}"
    );
}

/// An HTTP/2 client that got its answer and then froze (a paused process, a network that
/// drops everything without a close): at the drain the server sends GOAWAY and hyper waits
/// for the client's answer to its ping before closing — for ever, from a frozen client.
/// The connection must still close after the idle grace, not hold the drain to the hard
/// stop (found by driving the demo: a paused h2c client made every SIGTERM take the whole
/// 30 s budget and exit 2).
#[tokio::test]
async fn a_frozen_http2_client_does_not_hold_the_drain() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = Router::new().route("/", get(|| async { "ok" }));
    let server = TestServer::start(app).await;
    let mut client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // h2c with prior knowledge: the preface, an empty SETTINGS, then HEADERS for `GET /`
    // on stream 1 (HPACK static table: :method GET, :scheme http, :path /), END_STREAM.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    hello.extend_from_slice(&[0, 0, 3, 0x1, 0x5, 0, 0, 0, 1, 0x82, 0x86, 0x84]);
    client.write_all(&hello).await.unwrap();
    // Read until the answer's DATA frame ("ok") has arrived.
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let answered = tokio::time::timeout(SOON, async {
        while !seen.windows(2).any(|w| w == b"ok") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "the server closed before answering");
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(answered.is_ok(), "no answer: {seen:?}");
    // Frozen from now on: the client neither reads nor writes (nor closes).
    let stopping = Instant::now();
    let report = server.stop().await; // the drain only: the hard stop never fires here
    let took = stopping.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the drain waited {took:?} for a frozen client\n{report}"
    );
    assert_eq!(report.lost, 0, "{report}");
    drop(client);
}

/// The other side of the frozen client above: an HTTP/2 client that is there (it answers
/// the GOAWAY's ping) but sends nothing more while it reads a long, slow response body —
/// the handler has returned, so nothing counts as in flight. The drain must let the body
/// finish, not close the connection as silent (found in review of the fix above).
#[tokio::test]
async fn a_slow_http2_response_body_is_not_cut_by_the_drain() {
    use futures_util::StreamExt;

    const CHUNKS: usize = 8;
    let app = Router::new().route(
        "/trickle",
        get(|| async {
            let chunks = futures_util::stream::iter(0..CHUNKS).then(|i| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
                Ok::<_, std::io::Error>(format!("chunk {i}\n"))
            });
            axum::body::Body::from_stream(chunks)
        }),
    );
    let server = TestServer::start(app).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let response = client.get(server.url("/trickle")).send().await.unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first chunk").unwrap();
    assert_eq!(&first[..], b"chunk 0\n");
    // The drain begins while the body still has 2.8 s to go (more than two idle graces).
    let stopped = tokio::spawn(server.stop());
    let mut received = first.to_vec();
    while let Some(chunk) = body.next().await {
        received.extend_from_slice(&chunk.expect("the body is not cut"));
    }
    let text = String::from_utf8(received).unwrap();
    assert_eq!(text.lines().count(), CHUNKS, "{text}");
    let report = stopped.await.unwrap();
    assert_eq!(report.lost, 0, "{report}");
}
