//! No request that reached an accepted connection is lost at shutdown (issue 11): many
//! keep-alive clients load the server, the host stops it mid-load, and every request the
//! clients wrote on an accepted connection is classified (see `support/loader.rs`).

mod support;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully::{CancellationSource, Reason};
use gracefully_axum::{HttpServer, Shutdown};
use support::loader::{Tally, http1_load, http2_load};
use support::{
    HostedServer, SOON, closed_within, read_response, send_raw, start_hosted, status_of,
};
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

const CLIENTS: usize = 16;

fn app() -> Router {
    Router::new().route(
        "/",
        get(|| async {
            // Some requests are in flight (not answered within their first poll) when the
            // drain begins.
            tokio::task::yield_now().await;
            "ok"
        }),
    )
}

/// Loads a host-run server with `CLIENTS` clients, stops the host after `load_for`, and
/// returns what the clients saw and the host's report.
async fn stop_mid_load(
    http2: bool,
    pre_stop: Duration,
) -> (Tally, gracefully_host::ShutdownReport) {
    let HostedServer {
        addr,
        lifetime,
        run,
    } = start_hosted(
        app(),
        // Clients that stall (a loaded CI machine) must not find their connection closed
        // by the idle grace: behaviour, not speed, is under test here. The grace has its
        // own test.
        |server| server.idle_grace(Duration::from_secs(10)),
        |host| {
            host.shutdown_timeout(Duration::from_secs(30))
                .pre_stop_delay(pre_stop)
        },
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let load = tokio::spawn(async move {
        if http2 {
            http2_load(addr, "/", CLIENTS, deadline).await
        } else {
            http1_load(addr, "/", CLIENTS, deadline).await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    lifetime.stop(Reason::shutdown().with_message("mid-load"));
    let report = tokio::time::timeout(Duration::from_secs(40), run)
        .await
        .expect("the host stops")
        .unwrap();
    let tally = tokio::time::timeout(Duration::from_secs(70), load)
        .await
        .expect("the clients stop once connections are refused")
        .unwrap();
    (tally, report)
}

fn assert_nothing_lost(tally: Tally, report: &gracefully_host::ShutdownReport) {
    assert!(tally.answered > 0, "{tally}");
    assert_eq!(tally.lost, 0, "{tally}\n{report}");
    assert_eq!(tally.partial, 0, "{tally}\n{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_clients_lose_no_request_when_the_server_stops_mid_load() {
    let (tally, report) = stop_mid_load(false, Duration::ZERO).await;
    assert_nothing_lost(tally, &report);
    assert!(tally.told_to_close > 0, "{tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_keep_alive_clients_lose_no_request_when_the_server_stops_after_a_pre_stop_delay() {
    let (tally, report) = stop_mid_load(false, Duration::from_millis(300)).await;
    assert_nothing_lost(tally, &report);
    assert!(tally.told_to_close > 0, "{tally}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_lose_no_request_when_the_server_stops_mid_load() {
    let (tally, report) = stop_mid_load(true, Duration::ZERO).await;
    assert_nothing_lost(tally, &report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_lose_no_request_when_the_server_stops_after_a_pre_stop_delay() {
    let (tally, report) = stop_mid_load(true, Duration::from_millis(300)).await;
    assert_nothing_lost(tally, &report);
}

/// The race behind the lost requests: a keep-alive connection idle on the server's side
/// when the drain begins may have a request on its way. Before the fix the connection was
/// closed at once and that request got EOF.
#[tokio::test]
async fn a_request_on_a_connection_idle_at_drain_start_is_answered_with_connection_close() {
    let server = support::TestServer::start(app()).await;
    let mut stream = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    // Idle now. The drain begins; the client's next request arrives just after.
    server.stopping.cancel();
    tokio::time::sleep(Duration::from_millis(20)).await;
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream).await;
    assert_eq!(status_of(&response), 200, "{response:?}");
    assert!(
        response.to_ascii_lowercase().contains("connection: close"),
        "{response}"
    );
    assert!(closed_within(&mut stream, SOON).await, "then it closes");
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.answered_with_close, 1, "{drain}");
    assert_eq!(drain.idle_closed, 0, "{drain}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_once_it_stayed_idle_for_the_grace() {
    let grace = Duration::from_millis(300);
    let server = support::TestServer::start_with(app(), |s| s.idle_grace(grace)).await;
    let mut stream = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    let stopped = std::time::Instant::now();
    server.stopping.cancel();
    assert!(closed_within(&mut stream, SOON).await);
    assert!(stopped.elapsed() >= grace, "{:?}", stopped.elapsed());
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.idle_closed, 1, "{drain}");
}

#[tokio::test]
async fn the_idle_grace_ends_at_the_hard_stop() {
    let server =
        support::TestServer::start_with(app(), |s| s.idle_grace(Duration::from_secs(60))).await;
    let mut stream = send_raw(server.addr, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut stream).await), 200);
    server.stopping.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.hard_stop.cancel();
    assert!(closed_within(&mut stream, SOON).await);
    tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
}

/// Connections the kernel completed but the server had not accepted yet when the drain
/// began are accepted and answered (with `Connection: close`), not reset. The server runs
/// on a runtime of its own that a handler blocks, so the connections wait in the backlog.
#[test]
fn connections_waiting_in_the_accept_backlog_when_accepting_stops_are_served() {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = std_listener.local_addr().unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let stopping = CancellationSource::new();
    let hard_stop = CancellationSource::new();
    let shutdown = Shutdown {
        stopping: stopping.token(),
        hard_stop: hard_stop.token(),
    };
    let (blocked_tx, blocked) = std::sync::mpsc::channel();
    let (unblock_tx, unblock) = std::sync::mpsc::channel::<()>();
    let unblock = std::sync::Arc::new(std::sync::Mutex::new(unblock));
    let app = app().route(
        "/block",
        get(move || {
            // Blocks the server's only thread: nothing is accepted meanwhile.
            let _ = blocked_tx.clone().send(());
            let _ = unblock.lock().unwrap().recv();
            std::future::ready("unblocked")
        }),
    );
    let server = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
                HttpServer::new(listener, app).run(shutdown).await
            })
    });
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    client.block_on(async {
        let mut blocker = send_raw(addr, b"GET /block HTTP/1.1\r\nhost: t\r\n\r\n").await;
        blocked.recv().unwrap();
        // The kernel completes these handshakes; the server cannot accept them now.
        let mut waiting = Vec::new();
        for _ in 0..5 {
            waiting.push(send_raw(addr, b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await);
        }
        stopping.cancel();
        unblock_tx.send(()).unwrap();
        assert_eq!(status_of(&read_response(&mut blocker).await), 200);
        for stream in &mut waiting {
            let response = read_response(stream).await;
            assert_eq!(status_of(&response), 200, "{response:?}");
            assert!(
                response.to_ascii_lowercase().contains("connection: close"),
                "{response}"
            );
        }
    });
    let report = server.join().unwrap();
    let drain = report.drain.unwrap();
    assert_eq!(drain.backlog_accepted, 5, "{drain}");
}
