//! The server as a `gracefully-host` service: the host's phases drive it, and its drain
//! appears in the host's shutdown report.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::Router;
use axum::response::sse::Event;
use axum::routing::get;
use futures_util::StreamExt;
use gracefully::Reason;
use gracefully_axum::{Drain, HttpCancelled, RequestToken, health_routes};
use gracefully_host::{HostBuilder, Lifetime, ShutdownReport};
use support::{SOON, read_response, send_raw, start_hosted, status_of};
use tokio::sync::mpsc;

async fn start(
    app: Router,
    configure: impl FnOnce(HostBuilder) -> HostBuilder,
) -> (
    std::net::SocketAddr,
    Lifetime,
    tokio::task::JoinHandle<ShutdownReport>,
) {
    let hosted = start_hosted(app, |server| server, configure).await;
    (hosted.addr, hosted.lifetime, hosted.run)
}

fn work_app(started: mpsc::UnboundedSender<()>, work: Duration) -> Router {
    Router::new()
        .route(
            "/work",
            get(move |RequestToken(token): RequestToken| {
                let started = started.clone();
                async move {
                    let _ = started.send(());
                    token.run_until_cancelled(tokio::time::sleep(work)).await?;
                    Ok::<_, HttpCancelled>("done")
                }
            }),
        )
        .merge(health_routes())
}

#[tokio::test]
async fn a_host_stop_drains_the_server_and_the_report_shows_each_step() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let (addr, lifetime, run) = start(work_app(tx, Duration::from_millis(300)), |b| b).await;
    let mut idle = send_raw(addr, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut idle).await), 200);
    let mut busy = send_raw(addr, b"GET /work HTTP/1.1\r\nhost: t\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();

    lifetime.stop(Reason::shutdown().with_message("test"));
    let response = read_response(&mut busy).await;
    assert_eq!(status_of(&response), 200, "{response}");
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let row = report.entry("http").expect("the server's row");
    assert_eq!(
        row.detail("connections open at drain"),
        Some("2"),
        "{report}"
    );
    assert_eq!(row.detail("idle connections closed"), Some("1"), "{report}");
    assert_eq!(
        row.detail("requests in flight at drain"),
        Some("1"),
        "{report}"
    );
    assert_eq!(row.detail("requests completed"), Some("2"), "{report}");
    assert!(row.detail("drain took").is_some(), "{report}");
}

#[tokio::test]
async fn readiness_answers_503_from_the_stop_request_while_the_server_still_serves() {
    let (tx, _started) = mpsc::unbounded_channel();
    let (addr, lifetime, run) = start(work_app(tx, Duration::ZERO), |b| {
        b.pre_stop_delay(Duration::from_millis(500))
    })
    .await;
    let mut before = send_raw(addr, b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut before).await), 200);

    lifetime.stop(Reason::shutdown());
    // Within the pre-stop delay: new connections are still accepted, readiness fails,
    // ordinary requests are served.
    let mut during = send_raw(addr, b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let response = read_response(&mut during).await;
    assert_eq!(status_of(&response), 503, "{response}");
    let mut live = send_raw(addr, b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut live).await), 200);
    let mut work = send_raw(addr, b"GET /work HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut work).await), 200);

    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn an_sse_stream_ends_at_drain_and_the_host_exits_long_before_its_hard_timeout() {
    let app = Router::new().route(
        "/events",
        get(|drain: Drain| async move {
            let ticks = futures_util::stream::unfold((), |()| async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Some((Ok::<_, Infallible>(Event::default().data("tick")), ()))
            });
            drain.sse(ticks)
        }),
    );
    // The default 30 s timeout: an SSE stream that held the shutdown would take 25 s to be
    // cancelled.
    let (addr, lifetime, run) = start(app, |b| b).await;
    let response = reqwest::get(format!("http://{addr}/events")).await.unwrap();
    let mut body = response.bytes_stream();
    assert!(body.next().await.is_some());

    let stopped = Instant::now();
    lifetime.stop(Reason::shutdown());
    while let Some(chunk) = tokio::time::timeout(SOON, body.next()).await.unwrap() {
        chunk.expect("the stream ends cleanly");
    }
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "{:?}",
        stopped.elapsed()
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    let row = report.entry("http").unwrap();
    assert_eq!(row.detail("SSE streams ended"), Some("1"), "{report}");
}

#[tokio::test]
async fn when_the_drain_budget_is_spent_requests_are_cancelled_and_answer_503() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let (addr, lifetime, run) = start(work_app(tx, Duration::from_secs(60)), |b| {
        b.shutdown_timeout(Duration::from_millis(1200))
            .cancel_grace(Duration::from_millis(600))
    })
    .await;
    let mut busy = send_raw(addr, b"GET /work HTTP/1.1\r\nhost: t\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();
    lifetime.stop(Reason::shutdown().with_message("SIGTERM"));
    let response = read_response(&mut busy).await;
    assert_eq!(status_of(&response), 503, "{response}");
    assert!(
        response.to_ascii_lowercase().contains("retry-after"),
        "{response}"
    );
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    // The handler stopped cooperatively at the hard stop: a clean shutdown.
    assert_eq!(report.exit_code(), 0, "{report}");
    let row = report.entry("http").unwrap();
    assert_eq!(row.detail("cancelled at hard stop"), Some("1"), "{report}");
    assert_eq!(
        row.detail("cancelled by shutdown (503)"),
        Some("1"),
        "{report}"
    );
}

#[tokio::test]
async fn a_handler_that_ignores_its_token_is_aborted_and_named_in_the_report() {
    let (tx, mut started) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/stubborn",
        get(move || {
            let tx = tx.clone();
            async move {
                let _ = tx.send(());
                tokio::time::sleep(Duration::from_secs(60)).await; // ignores everything
                "never"
            }
        }),
    );
    let (addr, lifetime, run) = start(app, |b| {
        b.shutdown_timeout(Duration::from_millis(800))
            .cancel_grace(Duration::from_millis(400))
    })
    .await;
    let _busy = send_raw(addr, b"GET /stubborn HTTP/1.1\r\nhost: t\r\n\r\n").await;
    tokio::time::timeout(SOON, started.recv()).await.unwrap();
    lifetime.stop(Reason::shutdown());
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert_ne!(report.exit_code(), 0, "{report}");
    let row = report.entry("http").unwrap();
    assert_eq!(row.detail("lost (aborted)"), Some("1"), "{report}");
}

/// An HTTP/2 handler runs inside hyper's task for its stream (not a task of our own); the
/// abort phase must still end it — dropped, and counted lost — rather than leave it running
/// in a task nobody aborts.
#[tokio::test]
async fn an_http2_handler_that_ignores_its_token_is_dropped_at_the_abort_and_counted_lost() {
    struct DropFlag(mpsc::UnboundedSender<&'static str>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            let _ = self.0.send("dropped");
        }
    }
    let (tx, mut events) = mpsc::unbounded_channel();
    let app = Router::new().route(
        "/stubborn",
        get(move || {
            let tx = tx.clone();
            async move {
                let _flag = DropFlag(tx.clone());
                let _ = tx.send("started");
                tokio::time::sleep(Duration::from_secs(60)).await; // ignores everything
                "never"
            }
        }),
    );
    let (addr, lifetime, run) = start(app, |b| {
        b.shutdown_timeout(Duration::from_millis(800))
            .cancel_grace(Duration::from_millis(400))
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let call = tokio::spawn(client.get(format!("http://{addr}/stubborn")).send());
    let event = tokio::time::timeout(SOON, events.recv()).await.unwrap();
    assert_eq!(event, Some("started"));
    lifetime.stop(Reason::shutdown());
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert_ne!(report.exit_code(), 0, "{report}");
    let row = report.entry("http").unwrap();
    assert_eq!(row.detail("lost (aborted)"), Some("1"), "{report}");
    let event = tokio::time::timeout(SOON, events.recv()).await.unwrap();
    assert_eq!(
        event,
        Some("dropped"),
        "the handler is dropped, not left running"
    );
    // The client is not answered with a success.
    let answer = tokio::time::timeout(SOON, call).await.unwrap().unwrap();
    assert!(answer.map_or(true, |r| !r.status().is_success()));
}
