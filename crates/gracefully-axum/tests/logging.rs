//! Cancellation is an expected outcome: the server logs timeouts (504), departed clients
//! (499) and shutdown cancellations (503) without a single ERROR event. A real failure
//! (a handler panic) still is an error.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully::Reason;
use gracefully_axum::{HttpCancelled, RequestToken, TimeoutLayer};
use support::{SOON, TestServer, read_response, send_raw, status_of};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// Records the level of every event.
#[derive(Clone, Default)]
struct Levels(Arc<Mutex<Vec<(Level, String)>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Levels {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        self.0
            .lock()
            .unwrap()
            .push((*meta.level(), meta.target().to_string()));
    }
}

impl Levels {
    fn errors(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(level, _)| *level == Level::ERROR)
            .map(|(_, target)| target.clone())
            .collect()
    }
}

async fn wait_for_token(RequestToken(token): RequestToken) -> Result<&'static str, HttpCancelled> {
    token.cancelled().await;
    token.check()?;
    Ok("unreachable")
}

// One thread: the server's tasks run where the thread-local subscriber is installed.
#[tokio::test(flavor = "current_thread")]
async fn cancelled_requests_are_not_logged_as_errors_but_a_panic_is() {
    let levels = Levels::default();
    let subscriber = tracing_subscriber::registry().with(levels.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let app = Router::new()
        .route(
            "/timeout",
            get(wait_for_token).layer(TimeoutLayer::new(Duration::from_millis(50))),
        )
        .route("/wait", get(wait_for_token));
    let server = TestServer::start(app).await;

    // 504: the route's timeout.
    let mut timed_out = send_raw(server.addr, b"GET /timeout HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut timed_out).await), 504);

    // 499: the client leaves.
    let leaver = send_raw(server.addr, b"GET /wait HTTP/1.1\r\nhost: t\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(leaver);
    tokio::time::sleep(Duration::from_millis(50)).await;

    // 503: the hard stop cancels a request in flight.
    let mut stopped = send_raw(server.addr, b"GET /wait HTTP/1.1\r\nhost: t\r\n\r\n").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    server.stopping.cancel();
    server.hard_stop.cancel_with(Reason::shutdown());
    assert_eq!(status_of(&read_response(&mut stopped).await), 503);
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.cancelled_deadline, 1, "{report}");
    assert_eq!(report.client_left, 1, "{report}");
    assert_eq!(report.cancelled_shutdown, 1, "{report}");
    assert!(
        levels.errors().is_empty(),
        "errors logged: {:?}",
        levels.errors()
    );

    // A genuine failure is an error.
    let server = TestServer::start(Router::new().route(
        "/panic",
        get(|| async { if true { panic!("bug") } else { "never" } }),
    ))
    .await;
    let mut failed = send_raw(server.addr, b"GET /panic HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut failed).await), 500);
    server.stop().await;
    assert_eq!(levels.errors().len(), 1, "{:?}", levels.errors());
}
