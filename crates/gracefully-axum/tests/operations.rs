//! Requests as operations: named by their route, with their deadline and their children,
//! ending with the reason they stopped; and the JSON the admin router serves.

mod support;

use gracefully::ReasonKind;
use gracefully::operation::OperationKind;
use gracefully_host::{FinishedOperation, Operations};
use support::admin::{eventually, slow_app, start};
use support::{SOON, read_response, send_raw, status_of};

fn finished(ops: &Operations, name: &str) -> Option<FinishedOperation> {
    ops.snapshot()
        .finished
        .into_iter()
        .find(|f| f.operation.name == name)
}

#[tokio::test]
async fn a_request_is_an_operation_named_by_its_route_that_ends_disconnected_when_the_client_leaves()
 {
    let server = start(slow_app()).await;
    let ops = &server.operations;
    let client = send_raw(server.addr, b"GET /slow/42 HTTP/1.1\r\nhost: t\r\n\r\n").await;

    let (request, query) = eventually("the request and its query to run", || {
        let live = ops.snapshot().live;
        let request = live
            .iter()
            .find(|o| o.kind == OperationKind::Request)?
            .clone();
        let query = live.iter().find(|o| o.name == "orders.slow")?.clone();
        Some((request, query))
    })
    .await;
    assert_eq!(
        request.name, "GET /slow/{id}",
        "named by its route, not its path"
    );
    assert!(
        request.deadline.is_some(),
        "the route's timeout is its deadline"
    );
    assert_eq!(
        query.parent,
        Some(request.id),
        "the query runs under its request"
    );
    let service = ops
        .snapshot()
        .live
        .into_iter()
        .find(|o| o.name == "http")
        .unwrap();
    assert_eq!(
        request.parent,
        Some(service.id),
        "the request runs under the server"
    );

    drop(client);
    let ended = eventually("the request to end", || finished(ops, "GET /slow/{id}")).await;
    assert_eq!(ended.outcome.as_str(), "cancelled");
    let reason = ended.reason().unwrap();
    assert_eq!(reason.kind(), ReasonKind::Disconnected);
    assert!(
        reason.origin().file().ends_with("request_future.rs"),
        "the origin is where the server noticed the client left: {}",
        reason.origin()
    );
    let query = eventually("the query to end", || finished(ops, "orders.slow")).await;
    assert_eq!(
        query.reason().map(|r| r.kind()),
        Some(ReasonKind::Disconnected)
    );
    assert!(
        ops.snapshot()
            .live
            .iter()
            .all(|o| o.kind != OperationKind::Request)
    );

    server.lifetime.stop(gracefully::Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn the_admin_server_serves_operations_as_json_and_does_not_record_itself() {
    let server = start(slow_app()).await;
    let mut fast = send_raw(server.addr, b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n").await;
    assert_eq!(status_of(&read_response(&mut fast).await), 200);
    let _slow = send_raw(server.addr, b"GET /slow/7 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    eventually("the slow request to run", || {
        let live = server.operations.snapshot().live;
        live.iter()
            .any(|o| o.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;

    let url = format!("http://{}/operations.json", server.admin);
    let response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    let live = json["live"].as_array().unwrap();
    let slow = live.iter().find(|o| o["name"] == "GET /slow/{id}").unwrap();
    assert_eq!(slow["kind"], "request");
    let left = slow["deadline_in_ms"].as_f64().unwrap();
    assert!(
        left > 0.0 && left <= 30_000.0,
        "time left to the 30 s timeout: {left}"
    );
    assert!(slow["id"].is_string() && slow["parent"].is_string());
    let fast = json["finished"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "GET /fast")
        .unwrap();
    assert_eq!(fast["outcome"], "completed");
    assert!(fast["reason"].is_null());

    // The page is served too, and the admin's own requests are not operations.
    let page = reqwest::get(format!("http://{}/operations", server.admin))
        .await
        .unwrap();
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    assert!(page.text().await.unwrap().contains("operations.json"));
    let snapshot = server.operations.snapshot();
    assert!(
        snapshot
            .finished
            .iter()
            .all(|f| !f.operation.name.contains("operations")),
        "the admin listener records nothing"
    );

    server.lifetime.stop(gracefully::Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    // At the hard stop the slow request was cancelled with Shutdown.
    let slow = finished(&server.operations, "GET /slow/{id}").unwrap();
    assert_eq!(slow.reason().map(|r| r.kind()), Some(ReasonKind::Shutdown));
}

#[tokio::test]
async fn an_http2_request_whose_stream_is_reset_ends_disconnected() {
    let server = start(slow_app()).await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let call = tokio::spawn(client.get(format!("http://{}/slow/9", server.addr)).send());
    let ops = &server.operations;
    eventually("the request to run", || {
        let live = ops.snapshot().live;
        live.iter()
            .any(|o| o.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;
    call.abort(); // resets the stream; the connection stays open
    let ended = eventually("the request to end", || finished(ops, "GET /slow/{id}")).await;
    assert_eq!(
        ended.reason().map(|r| r.kind()),
        Some(ReasonKind::Disconnected)
    );
    drop(client);
    server.lifetime.stop(gracefully::Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn readiness_answering_503_during_shutdown_is_a_completed_operation_not_a_failure() {
    let operations = Operations::new();
    let registry = operations.clone();
    let support::HostedServer {
        addr,
        lifetime,
        run,
    } = support::start_hosted(
        gracefully_axum::health_routes(),
        |s| s,
        |h| {
            h.operations(registry)
                .pre_stop_delay(std::time::Duration::from_millis(500))
        },
    )
    .await;
    lifetime.stop(gracefully::Reason::shutdown());
    // In the pre-stop delay: still served, and not ready.
    let mut stream = send_raw(addr, b"GET /readyz HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let response = read_response(&mut stream).await;
    assert_eq!(status_of(&response), 503, "{response}");
    drop(stream);
    let report = run.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let readyz = finished(&operations, "GET /readyz").expect("recorded");
    assert_eq!(readyz.outcome.as_str(), "completed", "{:?}", readyz.outcome);
}

/// A 503 that says when to come back (`Retry-After`) is load shed on purpose, not a failure:
/// recorded as completed, so a burst of refusals does not flood the log at ERROR (found
/// driving the demo: 240 ERROR lines from one burst of refused reports). A plain 503 is
/// still a failure.
#[tokio::test]
async fn a_503_with_retry_after_is_a_refusal_not_a_failure() {
    use axum::http::{HeaderValue, StatusCode, header};
    use axum::response::IntoResponse;

    let operations = Operations::new();
    let registry = operations.clone();
    let app = axum::Router::new()
        .route(
            "/busy",
            axum::routing::get(|| async {
                let mut response = StatusCode::SERVICE_UNAVAILABLE.into_response();
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                response
            }),
        )
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        );
    let support::HostedServer {
        addr,
        lifetime,
        run,
    } = support::start_hosted(app, |s| s, |h| h.operations(registry)).await;
    for path in ["/busy", "/broken"] {
        let request = format!("GET {path} HTTP/1.1\r\nhost: t\r\n\r\n");
        let mut stream = send_raw(addr, request.as_bytes()).await;
        let response = read_response(&mut stream).await;
        assert_eq!(status_of(&response), 503, "{response}");
    }
    lifetime.stop(gracefully::Reason::shutdown());
    run.await.unwrap();
    let busy = finished(&operations, "GET /busy").expect("recorded");
    assert_eq!(busy.outcome.as_str(), "completed", "{:?}", busy.outcome);
    let broken = finished(&operations, "GET /broken").expect("recorded");
    assert_eq!(broken.outcome.as_str(), "failed", "{:?}", broken.outcome);
}
