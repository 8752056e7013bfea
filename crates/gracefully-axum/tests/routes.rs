//! Route-level behaviour: cooperative timeouts, cancelled answers, health routes, panics,
//! the token in middleware.

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::routing::get;
use gracefully::ReasonKind;
use gracefully_axum::{HttpCancelled, RequestToken, TimeoutLayer, health_routes, request_token};
use support::TestServer;
use tokio::sync::mpsc;

#[tokio::test]
async fn a_timeout_route_answers_504_and_the_handler_sees_deadline_exceeded() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/slow",
            get(move |RequestToken(token): RequestToken| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((
                        "deadline",
                        token
                            .deadline()
                            .map(|d| d.saturating_duration_since(Instant::now())),
                    ));
                    let outcome = token
                        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                        .await;
                    let _ = tx.send(("reason", None));
                    let _ = tx.send((
                        match token.reason().map(|r| r.kind()) {
                            Some(ReasonKind::DeadlineExceeded) => "deadline exceeded",
                            _ => "other",
                        },
                        None,
                    ));
                    outcome?;
                    Ok::<_, HttpCancelled>("never")
                }
            }),
        )
        .layer(TimeoutLayer::new(Duration::from_millis(200)));
    let server = TestServer::start(app).await;
    let started = Instant::now();
    let response = reqwest::get(server.url("/slow")).await.unwrap();
    assert_eq!(response.status(), 504);
    assert!(started.elapsed() >= Duration::from_millis(200));
    let (what, left) = seen.recv().await.unwrap();
    assert_eq!(what, "deadline");
    let left = left.expect("the token's deadline reflects the route timeout");
    assert!(left <= Duration::from_millis(200), "{left:?}");
    assert_eq!(seen.recv().await.unwrap().0, "reason");
    assert_eq!(seen.recv().await.unwrap().0, "deadline exceeded");
    let report = server.stop().await;
    assert_eq!(report.cancelled_deadline, 1, "{report}");
}

#[tokio::test]
async fn the_server_default_timeout_and_a_shorter_route_timeout_keep_the_earliest() {
    let app = Router::new()
        .route(
            "/deadline",
            get(|RequestToken(token): RequestToken| async move {
                let left = token
                    .deadline()
                    .unwrap()
                    .saturating_duration_since(Instant::now());
                format!("{}", left.as_millis())
            }),
        )
        .layer(TimeoutLayer::new(Duration::from_secs(2)));
    let server = TestServer::start_with(app, |s| s.request_timeout(Duration::from_secs(30))).await;
    let text = reqwest::get(server.url("/deadline"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let left: u64 = text.parse().unwrap();
    assert!(
        left <= 2000,
        "the route's 2 s wins over the server's 30 s: {left} ms left"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_route_timeout_too_large_for_the_clock_is_no_deadline_and_never_panics() {
    let app = Router::new()
        .route(
            "/",
            get(|RequestToken(token): RequestToken| async move {
                let left = token
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()));
                format!("{left:?}")
            }),
        )
        .layer(TimeoutLayer::new(Duration::MAX));
    // The server's own request timeout is set first; the route's cannot move it later.
    let server = TestServer::start_with(app, |s| s.request_timeout(Duration::from_secs(30))).await;
    let response = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(text.starts_with("Some("), "the server's 30 s stays: {text}");
    let report = server.stop().await;
    assert_eq!(report.panicked, 0, "{report}");
}

#[tokio::test]
async fn middleware_reads_the_same_token_as_the_handler() {
    async fn mark(request: Request, next: Next) -> axum::response::Response {
        let token = request_token(&request);
        let mut response = next.run(request).await;
        response.headers_mut().insert(
            "x-can-be-cancelled",
            token.can_be_cancelled().to_string().parse().unwrap(),
        );
        response
    }
    let app = Router::new()
        .route("/", get(|| async { "hi" }))
        .layer(middleware::from_fn(mark));
    let server = TestServer::start(app).await;
    let response = reqwest::get(server.url("/")).await.unwrap();
    assert_eq!(response.headers()["x-can-be-cancelled"], "true");
    server.stop().await;
}

#[tokio::test]
async fn with_token_in_extensions_a_request_moved_to_another_task_keeps_its_token() {
    // Middleware that runs the rest of the stack on a task of its own (as `tower::buffer`
    // does): the thread-local request context does not follow; the extension does.
    async fn on_another_task(request: Request, next: Next) -> axum::response::Response {
        let in_extensions = request.extensions().get::<RequestToken>().is_some();
        let mut response = tokio::spawn(next.run(request)).await.unwrap();
        response.headers_mut().insert(
            "x-in-extensions",
            in_extensions.to_string().parse().unwrap(),
        );
        response
    }
    let app = Router::new()
        .route(
            "/slow",
            get(|RequestToken(token): RequestToken| async move {
                let fired = tokio::time::timeout(Duration::from_secs(1), token.cancelled()).await;
                match fired {
                    Ok(reason) => format!(
                        "{:?} deadline={}",
                        reason.kind(),
                        token.deadline().is_some()
                    ),
                    Err(_) => format!("not fired, can be cancelled={}", token.can_be_cancelled()),
                }
            }),
        )
        .layer(middleware::from_fn(on_another_task))
        // Outside the hop, so it runs on the server's task and sets the request's deadline.
        .layer(TimeoutLayer::new(Duration::from_millis(100)));
    for in_extensions in [true, false] {
        let server =
            TestServer::start_with(app.clone(), |s| s.token_in_extensions(in_extensions)).await;
        let response = reqwest::get(server.url("/slow")).await.unwrap();
        assert_eq!(
            response.headers()["x-in-extensions"],
            in_extensions.to_string()
        );
        let body = response.text().await.unwrap();
        if in_extensions {
            // The handler, on another task, saw the request's token, fired by the route's
            // deadline.
            assert_eq!(body, "DeadlineExceeded deadline=true");
        } else {
            // Without the extension the handler on the other task gets `never()`.
            assert_eq!(body, "not fired, can be cancelled=false");
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn outside_the_server_the_extractor_yields_a_token_that_never_fires() {
    use tower::ServiceExt;
    let app: Router = Router::new().route(
        "/",
        get(
            |RequestToken(token): RequestToken| async move { token.can_be_cancelled().to_string() },
        ),
    );
    let response = app
        .oneshot(
            http::Request::get("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let body = axum::body::to_bytes(response.into_body(), 64)
        .await
        .unwrap();
    assert_eq!(&body[..], b"false");
}

#[tokio::test]
async fn health_routes_answer_200_while_the_server_runs() {
    // Readiness failing before the drain (under the host's pre-stop delay) is tested in
    // tests/host.rs: run by hand, the server stops accepting as readiness ends.
    let server = TestServer::start(Router::new().merge(health_routes())).await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_server_keeps_serving() {
    let app = Router::new()
        .route(
            "/panic",
            get(|| async { if true { panic!("handler bug") } else { "never" } }),
        )
        .route("/ok", get(|| async { "ok" }));
    let server = TestServer::start(app).await;
    let response = reqwest::get(server.url("/panic")).await.unwrap();
    assert_eq!(response.status(), 500);
    let response = reqwest::get(server.url("/ok")).await.unwrap();
    assert_eq!(response.status(), 200);
    let report = server.stop().await;
    assert_eq!(report.panicked, 1, "{report}");
    assert_eq!(report.completed, 1, "{report}");
}
