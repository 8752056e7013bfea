//! Long-lived responses end cleanly when the drain begins: SSE streams finish, WebSockets
//! get close code 1001, and neither holds the shutdown until its hard timeout.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::Message;
use axum::response::sse::Event;
use axum::routing::get;
use futures_util::{SinkExt, StreamExt, stream};
use gracefully_axum::Drain;
use support::{SOON, TestServer};
use tokio_tungstenite::tungstenite;

fn app() -> Router {
    Router::new()
        .route(
            "/events",
            get(|drain: Drain| async move {
                // An endless stream: one event every 20 ms.
                let ticks = stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Some((
                        Ok::<_, Infallible>(Event::default().data(n.to_string())),
                        n + 1,
                    ))
                });
                drain.sse(ticks)
            }),
        )
        .route(
            "/ws",
            get(|drain: Drain, upgrade: WebSocketUpgrade| async move {
                drain.websocket(upgrade, |mut socket| async move {
                    // Echo until the client leaves or the drain begins.
                    while let Some(Ok(message)) = socket.recv().await {
                        if let Message::Text(text) = message
                            && socket.send(Message::Text(text)).await.is_err()
                        {
                            break;
                        }
                    }
                })
            }),
        )
}

#[tokio::test]
async fn an_sse_client_sees_its_stream_end_at_drain_and_the_server_stops_without_a_hard_stop() {
    let server = TestServer::start(app()).await;
    let response = reqwest::get(server.url("/events")).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    // Events flow.
    let first = tokio::time::timeout(SOON, body.next()).await.unwrap();
    assert!(first.is_some());

    let stopping_at = Instant::now();
    server.stopping.cancel();
    // The stream ends (cleanly: no error) soon after the drain begins.
    let ended = tokio::time::timeout(SOON, async {
        while let Some(chunk) = body.next().await {
            chunk.expect("the stream ends cleanly, not with an error");
        }
    })
    .await;
    assert!(ended.is_ok(), "the SSE stream ended");
    // The server finishes its drain on its own: the hard stop never fires.
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.sse_ended, 1, "{drain}");
    assert!(!drain.hard_stop_reached, "{drain}");
    assert!(stopping_at.elapsed() < SOON);
}

#[tokio::test]
async fn a_websocket_client_receives_close_code_1001_at_drain() {
    let server = TestServer::start(app()).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    socket
        .send(tungstenite::Message::Text("ping".into()))
        .await
        .unwrap();
    let echoed = tokio::time::timeout(SOON, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(echoed, tungstenite::Message::Text("ping".into()));

    server.stopping.cancel();
    let close = tokio::time::timeout(SOON, socket.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match close {
        tungstenite::Message::Close(Some(frame)) => {
            assert_eq!(u16::from(frame.code), 1001, "going away");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.websockets_closed, 1, "{drain}");
    assert!(!drain.hard_stop_reached, "{drain}");
}

#[tokio::test]
async fn the_drain_waits_for_an_open_websocket_session_to_end() {
    // A session that ignores the drain for 300 ms (it does not call recv/send) is still
    // waited for: WebSockets are tracked, not forgotten.
    let app = Router::new().route(
        "/ws",
        get(|drain: Drain, upgrade: WebSocketUpgrade| async move {
            drain.websocket(upgrade, |socket| async move {
                let stopping = socket.stopping().clone();
                stopping.cancelled().await;
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(socket);
            })
        }),
    );
    let server = TestServer::start(app).await;
    let (_socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", server.addr))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let stopping_at = Instant::now();
    server.stopping.cancel();
    tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stopping_at.elapsed() >= Duration::from_millis(300),
        "the drain waited for the session"
    );
}

/// Issue 11, defect 6: a WebSocket session stuck in `send` (its client stopped reading)
/// gets the same hard-stop cut as any request: at the hard stop its `send` gives up and
/// the session ends, so the server stops without being aborted. Before the fix the session
/// held the drain until the host aborted the server.
#[tokio::test]
async fn a_websocket_stuck_in_send_is_cut_at_the_hard_stop() {
    let (stuck_tx, mut stuck) = tokio::sync::mpsc::unbounded_channel();
    let app = Router::new().route(
        "/flood",
        get(move |drain: Drain, upgrade: WebSocketUpgrade| {
            let stuck_tx = stuck_tx.clone();
            async move {
                drain.websocket(upgrade, move |mut socket| async move {
                    let mut sent = 0usize;
                    loop {
                        let send = socket.send(Message::Binary(vec![7u8; 64 * 1024].into()));
                        match tokio::time::timeout(Duration::from_millis(500), send).await {
                            Ok(Ok(())) => sent += 1,
                            Ok(Err(_)) => return,
                            Err(_) => {
                                // The client does not read: the send is stuck. Wait in it.
                                let _ = stuck_tx.send(sent);
                                let _ = socket
                                    .send(Message::Binary(vec![7u8; 64 * 1024].into()))
                                    .await;
                                return;
                            }
                        }
                    }
                })
            }
        }),
    );
    let server = TestServer::start(app).await;
    // Connects and never reads.
    let (_socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/flood", server.addr))
        .await
        .unwrap();
    tokio::time::timeout(SOON, stuck.recv())
        .await
        .expect("the session's send gets stuck")
        .unwrap();
    server.stopping.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.hard_stop.cancel();
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .expect("the hard stop ends the stuck session, and the server stops")
        .unwrap();
    let drain = report.drain.unwrap();
    assert!(drain.hard_stop_reached, "{drain}");
}

/// Clients that open a quiet SSE stream (nothing to send yet) and hang up are let go at
/// once: the stream ends and the connection closes, instead of every abandoned connection
/// staying open (its socket in CLOSE_WAIT, its memory held) until the feed next sends — a
/// client opening and abandoning streams in a loop ran the server out of descriptors.
#[tokio::test]
async fn sse_clients_that_hang_up_on_a_quiet_stream_are_let_go_at_once() {
    let app = Router::new().route(
        "/quiet",
        get(
            |drain: Drain| async move { drain.sse(stream::pending::<Result<Event, Infallible>>()) },
        ),
    );
    let server = TestServer::start(app).await;
    for _ in 0..50 {
        let mut client =
            support::send_raw(server.addr, b"GET /quiet HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let head = support::read_response(&mut client).await;
        assert_eq!(support::status_of(&head), 200, "{head}");
        drop(client); // hangs up
    }
    // One client that stays: its stream is still open at the drain, and ends there.
    let mut staying =
        support::send_raw(server.addr, b"GET /quiet HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        support::status_of(&support::read_response(&mut staying).await),
        200
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = server.stop().await;
    let drain = report.drain.unwrap();
    assert_eq!(
        drain.connections_open, 1,
        "only the client that stayed: {drain}"
    );
    assert_eq!(drain.sse_ended, 1, "{drain}");
    assert!(!drain.hard_stop_reached, "{drain}");
}
