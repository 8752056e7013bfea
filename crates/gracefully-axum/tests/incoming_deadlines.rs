//! Incoming deadlines: a caller's remaining budget in a request header narrows the request
//! token's deadline — never past the route's own timeout, capped by the configured maximum —
//! and a malformed one is ignored with a debug log line.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use gracefully::ReasonKind;
use gracefully_axum::{
    BudgetFormat, HttpCancelled, HttpServer, IncomingDeadlines, RequestToken, TimeoutLayer,
};
use http::HeaderName;
use support::{SOON, TestServer, read_response, send_raw, status_of};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};

/// The time the handler had left when it ran (`None`: no deadline), as its answer.
async fn time_left(RequestToken(token): RequestToken) -> String {
    match token.deadline() {
        Some(deadline) => deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .to_string(),
        None => "none".to_owned(),
    }
}

fn app() -> Router {
    Router::new()
        .route("/", get(time_left))
        .route(
            "/route-timeout-1s",
            get(time_left).layer(TimeoutLayer::new(Duration::from_secs(1))),
        )
        .route(
            "/wait",
            get(|RequestToken(token): RequestToken| async move {
                let reason = token.cancelled().await;
                assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
                token.check()?;
                Ok::<_, HttpCancelled>("unreachable")
            }),
        )
}

/// The handler's time left, in ms, for a GET of `path` with `headers`.
async fn left_ms(server: &TestServer, path: &str, headers: &[(&str, &str)]) -> Option<u64> {
    let client = reqwest::Client::new();
    let mut request = client.get(server.url(path));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body = response.text().await.unwrap();
    (body != "none").then(|| body.parse().unwrap())
}

#[tokio::test]
async fn a_request_without_a_budget_header_has_no_deadline() {
    let server = TestServer::start(app()).await;
    assert_eq!(left_ms(&server, "/", &[]).await, None);
    server.stop().await;
}

#[tokio::test]
async fn an_incoming_budget_narrows_the_deadline_visible_through_token_deadline() {
    let server =
        TestServer::start_with(app(), |s| s.request_timeout(Duration::from_secs(60))).await;
    let left = left_ms(&server, "/", &[("x-request-timeout-ms", "5000")])
        .await
        .expect("a deadline");
    assert!(
        left <= 5000,
        "the 5 s budget narrows the 60 s timeout: {left} ms left"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_incoming_budget_never_extends_the_route_timeout() {
    let server = TestServer::start(app()).await;
    let left = left_ms(&server, "/route-timeout-1s", &[("grpc-timeout", "60S")])
        .await
        .expect("the route's deadline");
    assert!(left <= 1000, "the route's 1 s stands: {left} ms left");
    server.stop().await;
}

#[tokio::test]
async fn an_incoming_budget_is_capped_by_the_configured_maximum() {
    let server = TestServer::start_with(app(), |s| {
        s.incoming_deadlines(IncomingDeadlines::default().max(Duration::from_secs(2)))
    })
    .await;
    let left = left_ms(&server, "/", &[("x-request-timeout-ms", "600000")])
        .await
        .expect("a deadline");
    assert!(left <= 2000, "capped at 2 s: {left} ms left");
    server.stop().await;
}

#[tokio::test]
async fn each_default_header_form_is_read() {
    let server = TestServer::start(app()).await;
    for (name, value) in [
        ("grpc-timeout", "4S"),
        ("grpc-timeout", "4000m"),
        ("grpc-timeout", "4000000u"),
        ("x-envoy-expected-rq-timeout-ms", "4000"),
        ("x-request-timeout-ms", "4000"),
    ] {
        let left = left_ms(&server, "/", &[(name, value)]).await;
        let left = left.unwrap_or_else(|| panic!("{name}: {value} gives a deadline"));
        assert!(left <= 4000, "{name}: {value} → {left} ms left");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_gracefully_reqwest_header_is_one_of_the_defaults() {
    assert_eq!(
        gracefully_axum::REQUEST_TIMEOUT_MS,
        gracefully_reqwest::REQUEST_TIMEOUT_HEADER
    );
    assert!(
        IncomingDeadlines::default()
            .headers()
            .any(|(name, _)| name == gracefully_reqwest::REQUEST_TIMEOUT_HEADER)
    );
}

#[tokio::test]
async fn the_header_set_can_be_changed_added_removed_and_renamed() {
    let deadlines = IncomingDeadlines::default()
        .without(&HeaderName::from_static("x-request-timeout-ms"))
        .header(
            HeaderName::from_static("x-budget-ms"),
            BudgetFormat::Milliseconds,
        );
    let server = TestServer::start_with(app(), |s| s.incoming_deadlines(deadlines)).await;
    assert_eq!(
        left_ms(&server, "/", &[("x-request-timeout-ms", "4000")]).await,
        None,
        "removed"
    );
    assert!(
        left_ms(&server, "/", &[("x-budget-ms", "4000")])
            .await
            .is_some_and(|left| left <= 4000),
        "added"
    );
    server.stop().await;

    let server =
        TestServer::start_with(app(), |s| s.incoming_deadlines(IncomingDeadlines::none())).await;
    assert_eq!(
        left_ms(&server, "/", &[("grpc-timeout", "4S")]).await,
        None,
        "turned off"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_incoming_budget_fires_the_token_with_deadline_exceeded_and_answers_504() {
    let server = TestServer::start(app()).await;
    let response = reqwest::Client::new()
        .get(server.url("/wait"))
        .header("grpc-timeout", "100m")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    let report = server.stop().await;
    assert_eq!(report.cancelled_deadline, 1, "{report}");
}

#[tokio::test]
async fn a_zero_budget_cancels_the_request_at_once() {
    let server = TestServer::start(app()).await;
    let response = reqwest::Client::new()
        .get(server.url("/wait"))
        .header("x-request-timeout-ms", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 504);
    server.stop().await;
}

#[tokio::test]
async fn an_out_of_range_cap_is_a_config_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = HttpServer::new(listener, Router::new())
        .incoming_deadlines(IncomingDeadlines::default().max(Duration::ZERO));
    let error = server.config_error().expect("a zero cap is refused");
    assert_eq!(error.field(), "incoming_deadlines.max");
}

#[tokio::test]
async fn the_transit_allowance_is_kept_back_from_grpc_timeout_and_not_from_milliseconds() {
    let server = TestServer::start_with(app(), |s| {
        s.incoming_deadlines(IncomingDeadlines::default().transit_allowance(Duration::from_secs(1)))
    })
    .await;
    let grpc = left_ms(&server, "/", &[("grpc-timeout", "4S")])
        .await
        .expect("a deadline");
    assert!(grpc <= 3000, "4 s less the 1 s allowance: {grpc} ms left");
    let millis = left_ms(&server, "/", &[("x-request-timeout-ms", "4000")])
        .await
        .expect("a deadline");
    assert!(
        millis > 3000 && millis <= 4000,
        "taken as it is (the sender kept its allowance back): {millis} ms left"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_out_of_range_transit_allowance_is_a_config_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = HttpServer::new(listener, Router::new()).incoming_deadlines(
        IncomingDeadlines::default().transit_allowance(Duration::from_secs(3 * 86_400)),
    );
    let error = server.config_error().expect("three days are refused");
    assert_eq!(error.field(), "incoming_deadlines.transit_allowance");
    assert!(error.to_string().contains("at most"), "{error}");
}

/// Records every event's level and message.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(Level, String)>>>);

struct Message<'a>(&'a mut String);

impl tracing::field::Visit for Message<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Events {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut text = String::new();
        event.record(&mut Message(&mut text));
        self.0
            .lock()
            .unwrap()
            .push((*event.metadata().level(), text));
    }
}

// One thread: the server's tasks run where the thread-local subscriber is installed.
#[tokio::test(flavor = "current_thread")]
async fn a_malformed_budget_is_ignored_with_a_debug_log_line_never_a_500() {
    let events = Events::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(events.clone()));
    let server = TestServer::start(app()).await;
    for (name, value) in [
        ("grpc-timeout", "soon"),
        ("grpc-timeout", "123456789m"),
        ("x-request-timeout-ms", "-5"),
        ("x-envoy-expected-rq-timeout-ms", "1.5"),
    ] {
        let head = format!("GET / HTTP/1.1\r\nhost: t\r\n{name}: {value}\r\n\r\n");
        let mut stream = send_raw(server.addr, head.as_bytes()).await;
        let response = tokio::time::timeout(SOON, read_response(&mut stream))
            .await
            .unwrap();
        assert_eq!(status_of(&response), 200, "{name}: {value}");
        assert!(
            response.ends_with("none"),
            "{name}: {value} ignored: {response}"
        );
    }
    server.stop().await;
    let events = events.0.lock().unwrap();
    let ignored: Vec<_> = events
        .iter()
        .filter(|(_, text)| text.contains("malformed incoming deadline ignored"))
        .collect();
    assert_eq!(ignored.len(), 4, "{events:?}");
    assert!(ignored.iter().all(|(level, _)| *level == Level::DEBUG));
    assert!(ignored[0].1.contains("grpc-timeout"), "{:?}", ignored[0]);
    assert!(events.iter().all(|(level, _)| *level != Level::ERROR));
}
