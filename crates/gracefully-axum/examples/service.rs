//! A minimal HTTP service on the gracefully host:
//!
//! ```text
//! cargo run -p gracefully-axum --example service
//! curl localhost:3000/slow    # then press Ctrl-C while it runs
//! ```
//!
//! `/slow` takes 3 s but stops early when its client leaves (Ctrl-C on curl), when its
//! 10 s route timeout passes, or when the shutdown reaches its cancel phase. On Ctrl-C the
//! host drains: readiness fails, new connections are refused, `/slow` may finish, and the
//! shutdown report (with the server's drain counts) is printed.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully_axum::{HttpCancelled, HttpServer, RequestToken, TimeoutLayer, health_routes};
use gracefully_host::Host;

async fn slow(RequestToken(token): RequestToken) -> Result<&'static str, HttpCancelled> {
    token
        .run_until_cancelled(tokio::time::sleep(Duration::from_secs(3)))
        .await?;
    Ok("done\n")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .route("/slow", get(slow))
        .layer(TimeoutLayer::new(Duration::from_secs(10)))
        .merge(health_routes());
    let host = Host::builder()
        .shutdown_timeout(Duration::from_secs(10))
        .cancel_grace(Duration::from_secs(3))
        .service("http", HttpServer::new(listener, app))
        .build()?;
    println!("listening on http://127.0.0.1:{port} (Ctrl-C to stop)");
    let report = host.run().await;
    println!("{report}");
    std::process::exit(report.exit_code());
}
