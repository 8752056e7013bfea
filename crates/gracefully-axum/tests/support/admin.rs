//! A host with an operations registry, serving an app and, on a second listener, the admin
//! router; a slow route whose handler runs a query under its request.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully::operation::{Operation, OperationKind};
use gracefully_axum::{HttpCancelled, OperationNameLayer, RequestToken, TimeoutLayer, admin};
use gracefully_host::{Host, Lifetime, Operations, ShutdownReport};
use tokio::task::JoinHandle;

use super::SOON;

pub struct Admin {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub operations: Operations,
    pub lifetime: Lifetime,
    pub run: JoinHandle<ShutdownReport>,
}

/// A host with an operations registry serving `app` and, on a second listener, the admin
/// router.
pub async fn start(app: Router) -> Admin {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (addr, admin) = (
        listener.local_addr().unwrap(),
        admin_listener.local_addr().unwrap(),
    );
    let operations = Operations::new();
    let host = Host::builder()
        .handle_signals(false)
        .operations(operations.clone())
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_secs(1))
        .service("http", gracefully_axum::HttpServer::new(listener, app))
        .service(
            "admin",
            admin::admin_server(admin_listener, &operations).unwrap(),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    tokio::time::timeout(SOON, lifetime.started().cancelled())
        .await
        .unwrap();
    Admin {
        addr,
        admin,
        operations,
        lifetime,
        run,
    }
}

/// A route whose handler begins a query under its request, then waits for its token.
pub fn slow_app() -> Router {
    Router::new()
        .route(
            "/slow/{id}",
            get(|RequestToken(token): RequestToken| async move {
                let query = Operation::begin(OperationKind::Query, "orders.slow", token.deadline());
                let result = token
                    .run_until_cancelled(std::future::pending::<()>())
                    .await;
                query.end_with(&result);
                result?;
                Ok::<_, HttpCancelled>("never")
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(TimeoutLayer::new(Duration::from_secs(30)))
        .layer(OperationNameLayer::new())
}

pub async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        if let Some(found) = f() {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
