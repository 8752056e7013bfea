//! Liveness and readiness routes.

use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;

use crate::request::with_current;

/// Health routes: `GET /healthz` (liveness: `200 ok` while the process serves) and
/// `GET /readyz` (readiness: `200 ready`, or `503 shutting down` from the instant shutdown
/// is triggered).
///
/// Under `gracefully-host`, readiness fails when the host's stop is *requested* — before
/// the pre-stop delay, while the server still accepts — so load balancers stop sending
/// traffic before the drain begins. For a server run by hand, when `stopping` fires.
/// Merge them into the app served by [`HttpServer`](crate::HttpServer):
///
/// ```
/// use axum::{Router, routing::get};
/// use gracefully_axum::health_routes;
///
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .merge(health_routes());
/// ```
///
/// Outside the server (a router called directly), `/readyz` always answers 200.
///
/// *Anchors:* ASP.NET Core health checks (`MapHealthChecks`) with the host's
/// `ApplicationStopping`; Kubernetes' liveness and readiness probes.
pub fn health_routes() -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|| async move {
                let not_ready =
                    with_current(|ctx| ctx.server.not_ready.is_cancelled()).unwrap_or(false);
                if not_ready {
                    // The answer the probe is for, not a failure: the request's operation
                    // ends completed, and nothing is logged as an error.
                    let mut response =
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
                    response.extensions_mut().insert(NotReadyMarker);
                    response
                } else {
                    (StatusCode::OK, "ready").into_response()
                }
            }),
        )
}

/// Marks `/readyz`'s 503 during shutdown: a designed answer, which the request's operation
/// records as completed rather than failed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NotReadyMarker;
