//! The same hello-world handler behind plain `axum::serve` or behind gracefully's
//! `HttpServer` with its layers — the two sides of `benches/http_overhead.sh`.
//!
//! ```text
//! cargo run --release -p gracefully-axum --example hello -- <mode> <port>
//! ```
//!
//! Modes: `axum` (plain `axum::serve`); `gracefully` (our server, with a `TimeoutLayer` and
//! a `DisconnectPolicyLayer` wrapping the router as one tower service — how app-wide layers
//! are cheapest); `gracefully-route-layers` (the same layers through axum's
//! `Router::layer`, which re-boxes every route: a cost of axum's, paid by any layer);
//! `gracefully-operations` (as `gracefully`, with an operations registry recording every
//! request; without `OperationNameLayer`, whose `Router::layer` would add axum's re-boxing).
//!
//! Stops on SIGTERM or Ctrl-C. Uses one tokio worker thread (set `WORKERS` to change it),
//! so the benchmark can pin the server and the load generator to different cores.

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use gracefully::CancellationSource;
use gracefully_axum::{
    DisconnectPolicy, DisconnectPolicyLayer, HttpServer, Shutdown, TimeoutLayer,
};

async fn hello() -> &'static str {
    "Hello, World!"
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "gracefully".into());
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let workers = std::env::var("WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(async move {
            let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
            let stop = async {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            };
            match mode.as_str() {
                "axum" => {
                    let app = Router::new().route("/", get(hello));
                    axum::serve(listener, app)
                        .with_graceful_shutdown(stop)
                        .await
                }
                "gracefully" | "gracefully-route-layers" | "gracefully-operations" => {
                    // The layers a service would typically have: a request timeout and an
                    // explicit disconnect policy (the request's token is made only if the
                    // handler asks for it or does not answer at once).
                    let timeout = TimeoutLayer::new(Duration::from_secs(30));
                    let policy = DisconnectPolicyLayer::new(DisconnectPolicy::Cooperative);
                    let stopping = CancellationSource::new();
                    let hard_stop = CancellationSource::new();
                    let shutdown = Shutdown {
                        stopping: stopping.token(),
                        hard_stop: hard_stop.token(),
                    };
                    let server = if mode == "gracefully" {
                        let app = tower::ServiceBuilder::new()
                            .layer(timeout)
                            .layer(policy)
                            .service(Router::new().route("/", get(hello)));
                        tokio::spawn(HttpServer::new(listener, app).run(shutdown))
                    } else if mode == "gracefully-operations" {
                        let operations = gracefully_host::Operations::new();
                        let app = tower::ServiceBuilder::new()
                            .layer(timeout)
                            .layer(policy)
                            .service(Router::new().route("/", get(hello)));
                        let run = HttpServer::new(listener, app).run(shutdown);
                        tokio::spawn(operations.scope().scoped(run))
                    } else {
                        let app = Router::new().route("/", get(hello)).layer(timeout).layer(policy);
                        tokio::spawn(HttpServer::new(listener, app).run(shutdown))
                    };
                    stop.await;
                    stopping.cancel();
                    let report = server.await.expect("server task");
                    eprintln!("{report}");
                    Ok(())
                }
                other => {
                    eprintln!(
                        "unknown mode {other:?}: use `axum`, `gracefully`, `gracefully-route-layers` or `gracefully-operations`"
                    );
                    std::process::exit(2);
                }
            }
        })
}
