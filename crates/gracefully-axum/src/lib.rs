//! # gracefully-axum — HTTP that stops gracefully
//!
//! An HTTP/1.1 and HTTP/2 server for axum routers (any tower service) in which every
//! request has a [`CancellationToken`](gracefully::CancellationToken), and which takes part
//! in the host's three-phase shutdown instead of dropping work on the floor.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use gracefully_axum::{HttpCancelled, HttpServer, RequestToken, Shutdown, TimeoutLayer};
//!
//! async fn search(RequestToken(token): RequestToken) -> Result<String, HttpCancelled> {
//!     // Runs until done, or until the client leaves, the 5 s timeout passes, or shutdown
//!     // reaches its cancel phase — the token's reason says which, and the answer follows:
//!     // 499 in the logs, 504, or 503 with `Retry-After` and `Connection: close`.
//!     let hits = token.run_until_cancelled(expensive_search()).await?;
//!     Ok(hits)
//! }
//! # async fn expensive_search() -> String { String::new() }
//!
//! # async fn run(shutdown: Shutdown) -> std::io::Result<()> {
//! let app = Router::new()
//!     .route("/search", get(search))
//!     .layer(TimeoutLayer::new(Duration::from_secs(5)));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! let report = HttpServer::new(listener, app).run(shutdown).await;
//! # Ok(()) }
//! ```
//!
//! ## What a request's token reports
//!
//! | event | reason kind | handler's answer (with [`HttpCancelled`]) |
//! |---|---|---|
//! | the client disconnects while the handler runs | [`Disconnected`](gracefully::ReasonKind::Disconnected) | logged as 499 (nobody is there to receive it) |
//! | the route's [`TimeoutLayer`] passes, or the caller's budget ([`IncomingDeadlines`]: `grpc-timeout`, `x-request-timeout-ms`, …) if that is sooner | [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) | 504 |
//! | the host's drain budget is spent (hard stop) | [`Shutdown`](gracefully::ReasonKind::Shutdown) | 503, `Retry-After: 1`, `Connection: close` |
//!
//! A departed client is noticed while the handler awaits *anything* — a database, a sleep —
//! not only when it next touches the socket: on HTTP/1.1 the request future watches the
//! connection (a non-consuming peek, no extra task), on HTTP/2 the stream reset is seen.
//! What happens next is the route's [`DisconnectPolicy`]: `Cooperative` (default: the
//! token fires, the handler runs on to clean up and stays tracked), `Drop` (axum's usual
//! behaviour), or `Detached` (the token does not fire; for work that must complete).
//!
//! ## Shutdown
//!
//! The server is a participant in the shutdown contract of `gracefully-host`
//! (the repository's `docs/architecture.md`, "The shutdown contract"), given as a
//! [`Shutdown`] pair of tokens:
//!
//! ```text
//!  stopping fires ─► stop accepting: connections already in the kernel's backlog are
//!                      accepted and served, new ones are refused
//!                    HTTP/1.1: every connection answers its next request with
//!                      Connection: close; one that stays idle for the idle grace (1 s)
//!                      is closed — not at once, since a request may be on its way
//!                    HTTP/2: GOAWAY (RFC 9113 §6.8); streams the client opened are served
//!                    SSE streams end, WebSockets get close code 1001   (see Drain)
//!                    requests in flight run on, their tokens untouched
//!  hard stop fires ─► every request token fires with Shutdown; handlers wind down;
//!                    idle connections close; WebSockets stuck in send are cut
//!  (host aborts)  ─► whatever still runs is dropped with the server's future
//! ```
//!
//! No request that reached an accepted connection goes unanswered: `axum::serve`, hyper
//! and Go's `Server.Shutdown` close a keep-alive connection that looks idle at drain start,
//! and lose the request a client was sending on it at that instant.
//!
//! [`HttpServer::run`] returns a [`ServerReport`] with the counts of each step. Health
//! routes ([`health_routes`]) answer readiness 503 from the instant shutdown is triggered,
//! before the pre-stop delay, so load balancers stop routing while the server still serves.
//!
//! ## Seeing why requests stopped
//!
//! Run the server under a host with an operations registry
//! (`HostBuilder::operations`) and each request is an operation — named by its route with
//! [`OperationNameLayer`], with its deadline, its queries and outbound calls under it, and
//! when it ends, its outcome and the reason with its origin (a departed client shows as
//! `Disconnected`). The [`admin`] module serves the registry as a live page, as JSON, and
//! Prometheus metrics, on a listener of their own (never the public one):
//!
//! ![The operations page](https://raw.githubusercontent.com/gracefully-rs/gracefully/main/docs/operations-page.png)
//!
//! ## Robustness
//!
//! Malformed requests are answered 400 by hyper and closed; oversized heads are rejected;
//! a client must send its headers within [`HttpServer::header_read_timeout`] (slowloris),
//! and a new connection its first request; a panicking handler answers 500 and the server
//! keeps serving; an HTTP/2 client that opens and resets streams in a loop (rapid reset,
//! CVE-2023-44487) cannot run more handlers on a connection than its stream limit — handlers
//! that outlive their reset stream count — and gets its streams refused, then GOAWAY. None
//! of it affects other connections or holds up a shutdown.
//!
//! A request body is read under the request's token: a client that sends its body slowly,
//! or stops sending it, while the handler waits in an extractor (`Json`, `Bytes`) is
//! answered 504 at the route's timeout and 503 with `Connection: close` at the hard stop —
//! never left to the abort, so stalled uploads cannot make every shutdown spend its whole
//! budget. (The extractor's own 400 for the failed read is replaced by the cancellation's
//! answer.) Like `axum::serve` and Go's `Server` (`IdleTimeout` 0), an idle keep-alive
//! connection has no timeout of its own before the drain.
//!
//! A client that closes (or half-closes) its side while its handler runs has left, as Go
//! and nginx count it: the token fires with `Disconnected`, and no answer is sent — 499
//! appears in logs and counts, never on the wire.
//!
//! *Anchors:* ASP.NET Core's `HttpContext.RequestAborted`, request-timeout middleware and
//! Kestrel's drain; Go's `http.Server.Shutdown` and `r.Context()`; `axum::serve` with
//! `with_graceful_shutdown`, which has no drain deadline (axum #1070), hangs on SSE
//! (#2673), does not track WebSockets (#3003) and never tells handlers.

#![warn(missing_docs)]
// Unsafe policy: denied in the whole crate except `socket`, which must borrow the socket
// hyper owns by its descriptor number to peek at it (the reason is written there). `deny`
// rather than `forbid`, because `forbid` would not let that one module opt out.
#![deny(unsafe_code)]

// From the top down: the server accepts; each connection runs hyper over a counting
// stream; `dispatch` gives each request its context and account and runs its handler in an
// `InRequest`. Nothing below imports from above.
mod accounting;
pub mod admin;
mod app;
mod config;
mod config_error;
mod conn_state;
mod connection;
mod counting_io;
mod dispatch;
mod header_guard;
mod health;
mod incoming_deadline;
mod layers;
mod operation_names;
mod policy;
mod request;
mod request_body;
mod request_future;
mod response;
mod server;
#[allow(unsafe_code)]
mod socket;
mod state;
mod stats;
mod streams;
mod wake_gate;

pub use accounting::mark_panicked;
pub use app::HttpApp;
pub use config_error::ConfigError;
pub use health::health_routes;
pub use incoming_deadline::{
    BudgetFormat, ENVOY_EXPECTED_RQ_TIMEOUT_MS, GRPC_TIMEOUT, IncomingDeadlines, REQUEST_TIMEOUT_MS,
};
pub use layers::{DisconnectPolicyLayer, Timeout, TimeoutLayer, WithDisconnectPolicy};
pub use operation_names::{OperationName, OperationNameLayer};
pub use policy::DisconnectPolicy;
pub use request::{RequestToken, current_request_token, request_token};
pub use response::{CLIENT_CLOSED_REQUEST, HttpCancelled, cancelled_response, mark_cancelled};
pub use server::{HttpServer, Shutdown};
pub use stats::{DrainReport, ServerReport};
pub use streams::{Drain, DrainingStream, GracefulWebSocket};
