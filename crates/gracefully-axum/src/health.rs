//! Liveness and readiness routes.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use gracefully::CancellationToken;
use http::StatusCode;

/// Health routes: `GET /healthz` (liveness: `200 ok` while the process serves) and
/// `GET /readyz` (readiness: `200 ready`, or `503 shutting down` from the instant shutdown
/// is triggered — before the pre-stop delay, so load balancers stop sending traffic while
/// the server still accepts it).
///
/// `not_ready` is the token that fires when readiness ends: with `gracefully-host`, the
/// lifetime's readiness token (see the crate docs); standalone, the `stopping` token.
///
/// ```
/// use gracefully::CancellationSource;
/// use gracefully_axum::health_routes;
///
/// let shutdown_triggered = CancellationSource::new();
/// let app: axum::Router = axum::Router::new()
///     .merge(health_routes(shutdown_triggered.token()));
/// ```
///
/// *Anchors:* ASP.NET Core health checks (`MapHealthChecks`), Kubernetes' liveness and
/// readiness probes.
pub fn health_routes(not_ready: CancellationToken) -> Router {
    let not_ready = Arc::new(not_ready);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let not_ready = not_ready.clone();
                async move {
                    if not_ready.is_cancelled() {
                        (StatusCode::SERVICE_UNAVAILABLE, "shutting down")
                    } else {
                        (StatusCode::OK, "ready")
                    }
                }
            }),
        )
}
