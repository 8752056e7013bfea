//! A departed client, under each disconnect policy, over HTTP/1.1 (raw sockets) and HTTP/2.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use gracefully::ReasonKind;
use gracefully_axum::{DisconnectPolicy, DisconnectPolicyLayer, RequestToken};
use support::{Http2Request, SOON, TestServer, send_raw};
use tokio::sync::mpsc;

#[derive(Debug)]
enum Event {
    Started,
    TokenFired(ReasonKind, Instant),
    Finished(Option<ReasonKind>),
    Dropped,
}

/// A handler that awaits something unrelated to the socket (a sleep) for `work`, and
/// reports its token firing, its end, or its being dropped.
fn app(work: Duration, events: mpsc::UnboundedSender<Event>) -> Router {
    Router::new().route(
        "/work",
        get(move |RequestToken(token): RequestToken| {
            let events = events.clone();
            async move {
                struct DropReporter(mpsc::UnboundedSender<Event>, bool);
                impl Drop for DropReporter {
                    fn drop(&mut self) {
                        if !self.1 {
                            let _ = self.0.send(Event::Dropped);
                        }
                    }
                }
                let mut reporter = DropReporter(events.clone(), false);
                let fired = events.clone();
                let _registration = token.on_cancel(move |reason| {
                    let _ = fired.send(Event::TokenFired(reason.kind(), Instant::now()));
                });
                let _ = events.send(Event::Started);
                tokio::time::sleep(work).await;
                reporter.1 = true;
                let _ = events.send(Event::Finished(token.reason().map(|r| r.kind())));
                "done"
            }
        }),
    )
}

async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(SOON, events.recv())
        .await
        .expect("an event arrives")
        .expect("the channel is open")
}

/// Sends GET /work over HTTP/2 and resets its stream once the handler has started; returns
/// the client, whose connection stays open until it is dropped.
async fn reset_once_started(
    server: &TestServer,
    events: &mut mpsc::UnboundedReceiver<Event>,
) -> reqwest::Client {
    let request = Http2Request::get(server, "/work");
    assert!(matches!(next(events).await, Event::Started));
    request.reset()
}

/// The next event is the request's token firing because its client left.
async fn expect_disconnected(events: &mut mpsc::UnboundedReceiver<Event>) {
    match next(events).await {
        Event::TokenFired(kind, _) => assert_eq!(kind, ReasonKind::Disconnected),
        other => panic!("expected the token to fire, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_closing_mid_handler_fires_the_token_with_disconnected_within_100ms() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(app(Duration::from_millis(300), tx)).await;
    let client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));

    let closed = Instant::now();
    drop(client);
    match next(&mut events).await {
        Event::TokenFired(kind, at) => {
            assert_eq!(kind, ReasonKind::Disconnected);
            let after = at - closed;
            assert!(
                after < Duration::from_millis(100),
                "noticed {after:?} after the client left, while the handler awaited a sleep"
            );
        }
        other => panic!("expected the token to fire, got {other:?}"),
    }
    // Cooperative (the default): the handler runs to its end and sees the reason.
    assert!(matches!(
        next(&mut events).await,
        Event::Finished(Some(ReasonKind::Disconnected))
    ));
    let report = server.stop().await;
    assert_eq!(report.client_left, 1, "{report}");
    assert_eq!(report.completed, 0, "{report}");
}

#[tokio::test]
async fn a_cooperative_handler_stays_tracked_after_the_client_left() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(app(Duration::from_millis(400), tx)).await;
    let client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));
    drop(client);
    assert!(matches!(next(&mut events).await, Event::TokenFired(..)));
    // Shutdown now: the drain must wait for the handler, which is still running.
    let stopped = tokio::spawn(server.stop());
    assert!(matches!(next(&mut events).await, Event::Finished(_)));
    let report = stopped.await.unwrap();
    assert_eq!(report.client_left, 1, "{report}");
    assert_eq!(report.lost, 0, "{report}");
}

#[tokio::test]
async fn the_drop_policy_drops_the_handler_when_the_client_leaves() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let app =
        app(Duration::from_secs(30), tx).layer(DisconnectPolicyLayer::new(DisconnectPolicy::Drop));
    let server = TestServer::start(app).await;
    let client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));
    drop(client);
    // The handler future is dropped; its token does not fire first.
    assert!(matches!(next(&mut events).await, Event::Dropped));
    let report = server.stop().await;
    assert_eq!(report.dropped_on_disconnect, 1, "{report}");
}

#[tokio::test]
async fn a_detached_route_completes_after_the_client_left_and_its_token_never_fires() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let app = app(Duration::from_millis(200), tx)
        .layer(DisconnectPolicyLayer::new(DisconnectPolicy::Detached));
    let server = TestServer::start(app).await;
    let client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));
    drop(client);
    match next(&mut events).await {
        Event::Finished(reason) => assert_eq!(reason, None, "the token did not fire"),
        other => panic!("expected the handler to finish undisturbed, got {other:?}"),
    }
    let report = server.stop().await;
    assert_eq!(report.completed, 1, "{report}");
}

#[tokio::test]
async fn the_disconnect_policy_of_the_server_applies_to_routes_without_one() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start_with(app(Duration::from_secs(30), tx), |s| {
        s.disconnect_policy(DisconnectPolicy::Drop)
    })
    .await;
    let client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));
    drop(client);
    assert!(matches!(next(&mut events).await, Event::Dropped));
    server.stop().await;
}

#[tokio::test]
async fn a_client_reading_its_answer_is_not_mistaken_for_a_departed_one() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(app(Duration::from_millis(100), tx)).await;
    let response = reqwest::get(server.url("/work")).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "done");
    assert!(matches!(next(&mut events).await, Event::Started));
    assert!(matches!(next(&mut events).await, Event::Finished(None)));
    let report = server.stop().await;
    assert_eq!(report.completed, 1, "{report}");
    assert_eq!(report.client_left, 0, "{report}");
}

#[tokio::test]
async fn an_http2_stream_reset_fires_the_token_and_the_cooperative_handler_runs_on() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(app(Duration::from_millis(300), tx)).await;
    let client = reset_once_started(&server, &mut events).await;
    expect_disconnected(&mut events).await;
    assert!(matches!(
        next(&mut events).await,
        Event::Finished(Some(ReasonKind::Disconnected))
    ));
    drop(client);
    let report = server.stop().await;
    assert_eq!(report.client_left, 1, "{report}");
}

#[tokio::test]
async fn an_unread_request_body_does_not_hide_the_client_forever() {
    // The handler never reads the body: bytes wait on the socket, so the server cannot
    // see past them at once, but it notices the close soon after they are gone.
    let finished = Arc::new(AtomicBool::new(false));
    let (tx, mut events) = mpsc::unbounded_channel();
    let f = finished.clone();
    let app = Router::new().route(
        "/upload",
        axum::routing::post(move |RequestToken(token): RequestToken| {
            let tx = tx.clone();
            let f = f.clone();
            async move {
                let _ = tx.send(Event::Started);
                let reason = token.cancelled().await;
                f.store(true, Ordering::SeqCst);
                let _ = tx.send(Event::TokenFired(reason.kind(), Instant::now()));
                "stopped"
            }
        }),
    );
    let server = TestServer::start(app).await;
    let client = send_raw(
        server.addr,
        b"POST /upload HTTP/1.1\r\nhost: test\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(matches!(next(&mut events).await, Event::Started));
    drop(client);
    expect_disconnected(&mut events).await;
    assert!(finished.load(Ordering::SeqCst));
    server.stop().await;
}

#[tokio::test]
async fn a_broken_http2_connection_with_a_handler_still_running_does_not_hold_a_later_shutdown() {
    // The whole HTTP/2 connection goes away (not just a stream) while a cooperative handler
    // runs; the handler finishes on its own afterwards. A drain that begins later must not
    // wait for that connection.
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestServer::start(app(Duration::from_millis(200), tx)).await;
    let client = reset_once_started(&server, &mut events).await;
    drop(client); // closes the connection
    assert!(matches!(next(&mut events).await, Event::TokenFired(..)));
    assert!(matches!(next(&mut events).await, Event::Finished(_)));
    tokio::time::sleep(Duration::from_millis(50)).await;

    let stopping = Instant::now();
    let report = server.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(2), "{report}");
}

/// Issue 11, defect 3: a client may half-close its write side after a complete request
/// (legal in HTTP/1.1). We treat the end of its stream as departure, as Go and nginx do
/// (the token fires with `Disconnected`), but 499 is a status for logs only. Before the
/// fix the client received `HTTP/1.1 499` (body "cancelled" on a `Cooperative` route, empty
/// on `Drop`).
#[tokio::test]
async fn a_half_closed_client_never_receives_a_499_on_the_wire() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for policy in [DisconnectPolicy::Cooperative, DisconnectPolicy::Drop] {
        let app = Router::new()
            .route(
                "/wait",
                get(|RequestToken(token): RequestToken| async move {
                    token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(30)))
                        .await?;
                    Ok::<_, gracefully_axum::HttpCancelled>("late")
                }),
            )
            .layer(DisconnectPolicyLayer::new(policy));
        let server = TestServer::start(app).await;
        let mut client = send_raw(server.addr, b"GET /wait HTTP/1.1\r\nhost: test\r\n\r\n").await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        client.shutdown().await.unwrap(); // FIN: the write side is closed, reading goes on
        let mut received = Vec::new();
        let read = tokio::time::timeout(SOON, client.read_to_end(&mut received)).await;
        assert!(read.is_ok(), "{policy:?}: the server ends the exchange");
        let text = String::from_utf8_lossy(&received);
        assert!(
            !text.contains(" 499"),
            "{policy:?}: a 499 was put on the wire: {text:?}"
        );
        let report = server.stop().await;
        assert_eq!(
            report.client_left + report.dropped_on_disconnect,
            1,
            "{policy:?}: {report}"
        );
    }
}

/// Issue 11, defect 4: Linux returns queued bytes before a reset's ECONNRESET, so a
/// watcher that only peeks sees "data" forever. Before the fix the token never fired and
/// the handler ran its full time when a client reset the connection while a pipelined
/// request sat unread in the socket.
#[tokio::test]
async fn a_reset_behind_an_unread_pipelined_request_fires_the_token() {
    use tokio::io::AsyncWriteExt;
    let (tx, mut events) = mpsc::unbounded_channel();
    // The handler works 2 s whatever its token says: the token must fire before that.
    let server = TestServer::start(app(Duration::from_secs(2), tx)).await;
    let mut client = send_raw(server.addr, b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n").await;
    assert!(matches!(next(&mut events).await, Event::Started));
    // A pipelined request that hyper does not read while the first one runs.
    client
        .write_all(b"GET /work HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Reset, not close: SO_LINGER 0 makes the drop send RST.
    client.set_zero_linger().unwrap();
    drop(client);
    expect_disconnected(&mut events).await;
    let stopped = tokio::spawn(server.stop());
    assert!(matches!(next(&mut events).await, Event::Finished(_)));
    let report = stopped.await.unwrap();
    assert_eq!(report.client_left, 1, "{report}");
}

/// Issue 11, defect 5: an HTTP/2 stream reset on a `Drop` route is the same event as an
/// HTTP/1.1 client leaving a `Drop` route, and is counted the same way. Before the fix it
/// was counted as lost ("lost (aborted)" in the host report).
#[tokio::test]
async fn an_http2_reset_on_a_drop_route_counts_as_dropped_on_disconnect() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let app =
        app(Duration::from_secs(30), tx).layer(DisconnectPolicyLayer::new(DisconnectPolicy::Drop));
    let server = TestServer::start(app).await;
    let client = reset_once_started(&server, &mut events).await;
    assert!(matches!(next(&mut events).await, Event::Dropped));
    drop(client);
    let report = server.stop().await;
    assert_eq!(report.dropped_on_disconnect, 1, "{report}");
    assert_eq!(report.lost, 0, "{report}");
}

/// An HTTP/2 client resets a POST whose body it never sent while the handler waits for the
/// body. The read fails and the extractor answers 400 — before hyper, which looks for a
/// reset only while the handler waits, drops the stream. It is the client's leaving, not a
/// completed request (found driving the demo: such requests showed as "completed").
#[tokio::test]
async fn an_http2_post_reset_before_its_body_counts_as_the_client_leaving() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (tx, mut started) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/",
        axum::routing::post(move |request: axum::extract::Request| {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                // What an extractor does: read the whole body, answer 400 if it fails.
                match axum::body::to_bytes(request.into_body(), 1 << 20).await {
                    Ok(_) => (axum::http::StatusCode::OK, "read"),
                    Err(_) => (axum::http::StatusCode::BAD_REQUEST, "bad body"),
                }
            }
        }),
    );
    let server = TestServer::start(app).await;
    let mut client = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // h2c preface, empty SETTINGS, then HEADERS for `POST /` with `content-length: 27`
    // (HPACK: :method POST, :scheme http, :path /, content-length by its static index) and
    // no END_STREAM: the body is announced and never sent.
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    let headers = [0x83, 0x86, 0x84, 0x0f, 0x0d, 0x02, b'2', b'7'];
    hello.extend_from_slice(&[0, 0, headers.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
    hello.extend_from_slice(&headers);
    client.write_all(&hello).await.unwrap();
    tokio::time::timeout(SOON, started.recv())
        .await
        .expect("the handler starts")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // RST_STREAM(CANCEL) on stream 1.
    client
        .write_all(&[0, 0, 4, 0x3, 0, 0, 0, 0, 1, 0, 0, 0, 0x8])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(100), client.read(&mut buf)).await;
    drop(client);
    let report = server.stop().await;
    assert_eq!(report.client_left, 1, "{report}");
    assert_eq!(report.completed, 0, "{report}");
}
