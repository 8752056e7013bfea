//! The server's part of a shutdown: stop accepting, close connections that stay idle, let
//! requests in flight finish, cancel them at hard stop.

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully::{Reason, ReasonKind};
use gracefully_axum::{HttpCancelled, RequestToken};
use support::{SOON, TestServer, closed_within, read_response, send_raw, status_of};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

fn slow_app(started: mpsc::UnboundedSender<()>, work: Duration) -> Router {
    Router::new()
        .route(
            "/slow",
            get(move |RequestToken(token): RequestToken| {
                let started = started.clone();
                async move {
                    let _ = started.send(());
                    token.run_until_cancelled(tokio::time::sleep(work)).await?;
                    Ok::<_, HttpCancelled>("finished")
                }
            }),
        )
        .route("/fast", get(|| async { "fast" }))
}

#[tokio::test]
async fn during_drain_an_in_flight_request_completes_with_200_while_a_new_connection_is_refused() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let server = TestServer::start(slow_app(tx, Duration::from_millis(400))).await;
    let addr = server.addr;
    let mut client = send_raw(addr, b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();

    server.stopping.cancel();
    // The listener is closed at once: new connections are refused.
    let mut refused = false;
    for _ in 0..100 {
        match tokio::net::TcpStream::connect(addr).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    assert!(refused, "new connections are refused during the drain");

    let response = read_response(&mut client).await;
    assert_eq!(status_of(&response), 200, "{response}");
    assert!(response.ends_with("finished"), "{response}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "the busy connection is told to close: {response}"
    );
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.completed, 1, "{report}");
    let drain = report.drain.expect("a drain happened");
    assert_eq!(drain.requests_in_flight, 1, "{drain}");
    assert!(!drain.hard_stop_reached, "{drain}");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_idle_grace() {
    let (tx, _started) = mpsc::unbounded_channel();
    let server = TestServer::start(slow_app(tx, Duration::ZERO)).await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        let mut stream = send_raw(server.addr, b"GET /fast HTTP/1.1\r\nhost: test\r\n\r\n").await;
        let response = read_response(&mut stream).await;
        assert_eq!(status_of(&response), 200);
        idle.push(stream); // keep-alive: still open
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    server.stopping.cancel();
    for stream in &mut idle {
        assert!(
            closed_within(stream, SOON).await,
            "idle connections are closed"
        );
    }
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.connections_open, 3, "{drain}");
    assert_eq!(drain.idle_closed, 3, "{drain}");
}

#[tokio::test]
async fn the_hard_stop_cancels_requests_in_flight_and_they_answer_503_with_retry_after() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let server = TestServer::start(slow_app(tx, Duration::from_secs(60))).await;
    let mut client = send_raw(server.addr, b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();
    server.stopping.cancel();
    tokio::time::sleep(Duration::from_millis(50)).await;
    server
        .hard_stop
        .cancel_with(Reason::shutdown().with_message("drain budget spent"));

    let response = read_response(&mut client).await;
    assert_eq!(status_of(&response), 503, "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(lower.contains("retry-after: 1"), "{response}");
    assert!(lower.contains("connection: close"), "{response}");
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.cancelled_shutdown, 1, "{report}");
    let drain = report.drain.unwrap();
    assert!(drain.hard_stop_reached, "{drain}");
    assert_eq!(drain.cancelled_at_hard_stop, 1, "{drain}");
}

#[tokio::test]
async fn a_request_arriving_after_the_hard_stop_is_born_cancelled() {
    let server = TestServer::start(Router::new().route(
        "/check",
        get(|RequestToken(token): RequestToken| async move {
            token.check()?;
            Ok::<_, HttpCancelled>("not cancelled")
        }),
    ))
    .await;
    // Keep a connection open, fire the hard stop (without draining), then ask.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    server.hard_stop.cancel_with(Reason::shutdown());
    stream
        .write_all(b"GET /check HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(status_of(&response), 503, "{response}");
    server.stop().await;
}

#[tokio::test]
async fn requests_on_other_connections_are_unaffected_by_one_clients_departure() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let server = TestServer::start(slow_app(tx, Duration::from_millis(200))).await;
    let leaver = send_raw(server.addr, b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").await;
    let mut stayer = send_raw(server.addr, b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();
    tokio::time::timeout(SOON, started.recv()).await.unwrap();
    drop(leaver);
    let response = read_response(&mut stayer).await;
    assert_eq!(status_of(&response), 200, "{response}");
    let report = server.stop().await;
    assert_eq!(report.completed, 1, "{report}");
    assert_eq!(report.cancelled_other + report.client_left, 1, "{report}");
    let _ = ReasonKind::Disconnected;
}

/// A client that stops sending mid-upload does not hold the drain until the hard stop: once
/// the drain has begun, a body with no byte for the idle grace is cut — 503 with
/// `Connection: close` — and the server finishes its drain on its own.
#[tokio::test]
async fn an_upload_stalled_mid_body_is_cut_after_the_idle_grace_once_the_drain_begins() {
    let app = Router::new().route(
        "/upload",
        axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
    );
    let server = TestServer::start_with(app, |s| s.idle_grace(Duration::from_millis(300))).await;
    // 100 bytes announced, one sent, then nothing.
    let mut stalled = send_raw(
        server.addr,
        b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{",
    )
    .await;
    // Outside a drain, a slow body is the client's business: still waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    server.stopping.cancel();
    let answer = read_response(&mut stalled).await;
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.lost, 0, "{report:?}");
    let drain = report.drain.unwrap();
    assert!(!drain.hard_stop_reached, "{drain}");
}
