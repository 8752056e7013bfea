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
