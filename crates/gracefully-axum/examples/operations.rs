//! An app and its admin listener: the live operations page, its JSON, and Prometheus
//! metrics, on a private port of their own.
//!
//! ```text
//! cargo run -p gracefully-axum --example operations
//! open http://127.0.0.1:9090/operations        # the live page (admin listener)
//! curl localhost:3000/orders/7                  # 2 s of work: a query, then a call
//! curl -m 1 localhost:3000/orders/8             # leaves after 1 s: Disconnected
//! curl localhost:3000/report                    # a 1 s route timeout: DeadlineExceeded
//! curl localhost:9090/metrics                   # counters by kind, outcome, reason
//! ```
//!
//! The app listens on 127.0.0.1:3000 (`PORT`), the admin surface on 127.0.0.1:9090
//! (`ADMIN_PORT`) — never on the public listener. Press Ctrl-C while requests run to see
//! them cancelled with `Shutdown`, and the shutdown phases in `/metrics` (until the admin
//! listener stops).

use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationToken, Cancelled};
use gracefully_axum::{
    HttpCancelled, HttpServer, OperationNameLayer, RequestToken, TimeoutLayer, admin, health_routes,
};
use gracefully_host::{Host, Operations};

/// Stands in for a database query (`gracefully-sqlx` registers real ones the same way).
async fn query(token: &CancellationToken, label: &str, took: Duration) -> Result<(), Cancelled> {
    let op = Operation::begin(OperationKind::Query, label, token.deadline());
    let result = token.run_until_cancelled(tokio::time::sleep(took)).await;
    op.end_with(&result);
    result
}

async fn order(
    RequestToken(token): RequestToken,
    Path(id): Path<u64>,
) -> Result<String, HttpCancelled> {
    query(&token, "orders.by_id", Duration::from_millis(1200)).await?;
    query(&token, "stock.reserve", Duration::from_millis(800)).await?;
    Ok(format!("order {id}\n"))
}

async fn report(RequestToken(token): RequestToken) -> Result<&'static str, HttpCancelled> {
    query(&token, "report.monthly", Duration::from_secs(5)).await?;
    Ok("report\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let admin_port = std::env::var("ADMIN_PORT").unwrap_or_else(|_| "9090".into());
    let public = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let private = tokio::net::TcpListener::bind(format!("127.0.0.1:{admin_port}")).await?;

    let operations = Operations::new();
    let app = Router::new()
        .route("/orders/{id}", get(order))
        .route(
            "/report",
            get(report).layer(TimeoutLayer::new(Duration::from_secs(1))),
        )
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .layer(OperationNameLayer::new())
        .merge(health_routes());
    let host = Host::builder()
        .shutdown_timeout(Duration::from_secs(10))
        .cancel_grace(Duration::from_secs(3))
        .operations(operations.clone())
        .service("http", HttpServer::new(public, app))
        .service("admin", admin::admin_server(private, &operations)?)
        .build()?;
    println!(
        "app on http://127.0.0.1:{port}, operations page on http://127.0.0.1:{admin_port}/operations"
    );
    let report = host.run().await;
    println!("{report}");
    std::process::exit(report.exit_code());
}
