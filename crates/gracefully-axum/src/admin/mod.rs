//! The admin surface: the live operations page and its JSON ([`operations_router`]),
//! Prometheus metrics ([`metrics_router`], [`prometheus`]), and both on a listener of their
//! own ([`admin_server`]).
//!
//! **Never serve these on the public listener.** The page names routes, queries and the
//! source locations of cancellations; the metrics describe the service's load. Mount them on
//! a separate listener bound to a private address (loopback, the pod network behind a
//! NetworkPolicy), or behind your own authentication layer. Nothing here is mounted by
//! default.
//!
//! ```no_run
//! use axum::{Router, routing::get};
//! use gracefully_axum::{HttpServer, OperationNameLayer, admin};
//! use gracefully_host::{Host, Operations};
//!
//! # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
//! let operations = Operations::new();
//! let app = Router::new()
//!     .route("/orders/{id}", get(|| async { "order" }))
//!     .layer(OperationNameLayer::new());
//! let public = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let private = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
//! let host = Host::builder()
//!     .operations(operations.clone())
//!     .service("http", HttpServer::new(public, app))
//!     // /operations (live page), /operations.json, /metrics — on 127.0.0.1:9090 only.
//!     .service("admin", admin::admin_server(private, &operations)?)
//!     .build()?;
//! host.run_and_exit().await
//! # }
//! ```

use std::fmt;
use std::sync::OnceLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gracefully_host::Operations;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::server::HttpServer;

mod json;

/// The page: HTML, CSS and script in one file, embedded in the binary (no build step).
const PAGE: &str = include_str!("page.html");

/// A router serving the operations registry: `GET /operations`, a page showing the tree of
/// live operations with the time each has left to its deadline and the recent finished ones
/// with their outcome, reason and origin (colour-coded; it polls the JSON twice a second),
/// and `GET /operations.json`, the same data as JSON.
///
/// Merge it into an admin router; **never** into the public one (see the [module](self)
/// docs). The page fetches `operations.json` relative to its own address, so nesting the
/// router under a prefix (`Router::nest("/admin", …)`) works.
///
/// The JSON: `{"live": [...], "finished": [...], "started_total": n, "keep_finished": n}`;
/// each operation has `id` and `parent` (strings), `kind`, `name`, `age_ms`, and
/// `deadline_in_ms` (negative once passed; `null` without a deadline); a finished one also
/// `duration_ms`, `ended_ago_ms`, `outcome` (`completed`, `cancelled`, `failed`,
/// `abandoned`), `reason` (`{"kind", "message", "origin"}` for a cancellation) and `error`
/// (for a failure).
///
/// *Anchors:* Go's `x/net/trace` pages (`/debug/requests`), ASP.NET Core's health and
/// diagnostics endpoints; neither says why work stopped.
pub fn operations_router(operations: &Operations) -> Router {
    let json_ops = operations.clone();
    Router::new().route("/operations", get(page)).route(
        "/operations.json",
        get(move || {
            let ops = json_ops.clone();
            async move { json_response(json::render(&ops)) }
        }),
    )
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        PAGE,
    )
        .into_response()
}

fn json_response(body: String) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        body,
    )
        .into_response()
}

/// Prometheus could not be set up: another `metrics` recorder is installed already.
#[derive(Debug, Clone)]
pub struct MetricsError {
    message: String,
}

impl fmt::Display for MetricsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "could not install the Prometheus recorder: {}; the `metrics` facade takes one recorder per process — pass its handle to `metrics_router` instead",
            self.message
        )
    }
}

impl std::error::Error for MetricsError {}

static PROMETHEUS: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// The process's Prometheus recorder for the `metrics` facade: installed on the first
/// call, the same handle afterwards. Every `metrics::counter!` in the process (this
/// workspace's and yours) is then rendered by [`metrics_router`].
///
/// An error if another recorder was installed first (the facade takes one per process):
/// then build your own `PrometheusHandle` and pass it to [`metrics_router`].
pub fn prometheus() -> Result<PrometheusHandle, MetricsError> {
    PROMETHEUS
        .get_or_init(|| {
            PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| MetricsError {
                    message: e.to_string(),
                })
        })
        .clone()
}

/// A router serving `GET /metrics` in Prometheus' text format from `handle` (see
/// [`prometheus`]), with `operations`' counts published first
/// ([`Operations::export_metrics`]). Metrics this workspace records:
///
/// | metric | labels | what |
/// |---|---|---|
/// | `gracefully_operations_started_total` | `kind` | operations begun |
/// | `gracefully_operations_ended_total` | `kind`, `outcome` | operations ended, by outcome |
/// | `gracefully_cancellations_total` | `kind`, `name`, `reason` | cancellations by reason kind and route (or query label, task name) |
/// | `gracefully_shutdown_phase_seconds` | `phase` | how long each shutdown phase took (histogram summary) |
/// | `gracefully_http_requests_lost_total` | — | requests dropped unanswered when the server was aborted (should stay 0) |
///
/// *Anchors:* ASP.NET Core's `Microsoft.AspNetCore.Hosting` meters; Go's
/// `promhttp.Handler()`.
pub fn metrics_router(handle: PrometheusHandle, operations: &Operations) -> Router {
    let operations = operations.clone();
    Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let operations = operations.clone();
            async move {
                operations.export_metrics();
                handle.run_upkeep();
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    )],
                    handle.render(),
                )
                    .into_response()
            }
        }),
    )
}

/// The whole admin surface on `listener`, as a server to register as a host service:
/// `/operations`, `/operations.json` and `/metrics` (installing the Prometheus recorder with
/// [`prometheus`]). Its own requests are not recorded as operations, so the page does not
/// show itself polling. Bind `listener` to a private address.
pub fn admin_server(
    listener: TcpListener,
    operations: &Operations,
) -> Result<HttpServer<Router>, MetricsError> {
    let router = operations_router(operations).merge(metrics_router(prometheus()?, operations));
    Ok(HttpServer::new(listener, router).record_operations(false))
}
