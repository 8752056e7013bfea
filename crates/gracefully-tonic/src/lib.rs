//! # gracefully-tonic — gRPC that stops gracefully
//!
//! [tonic](https://docs.rs/tonic) servers and clients with
//! [`CancellationToken`](gracefully::CancellationToken)s: every RPC gets a token that fires
//! when the client cancels, the call's `grpc-timeout` passes, or the host shuts down; a
//! handler's `Cancelled` becomes the fitting `Status`; the server drains with GOAWAY; and a
//! client layer sends a call's remaining budget on as `grpc-timeout` and stops the call
//! when its token fires — so one deadline spans a chain of services.
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully_tonic::{GracefulLayer, GrpcServer, IntoStatus, RequestExt};
//! use tonic::{Request, Response, Status};
//!
//! // A handler of a tonic service (the method of a generated `…Server` trait):
//! async fn stock(request: Request<u32>) -> Result<Response<u32>, Status> {
//!     let token = request.token();                // client cancel, grpc-timeout, shutdown
//!     let count = token
//!         .run_until_cancelled(count_in_warehouse(*request.get_ref()))
//!         .await
//!         .into_status()?;                        // CANCELLED / DEADLINE_EXCEEDED / UNAVAILABLE
//!     Ok(Response::new(count))
//! }
//! # async fn count_in_warehouse(_: u32) -> u32 { 0 }
//!
//! # async fn run(routes: tonic::service::Routes) -> Result<(), Box<dyn std::error::Error>> {
//! // The server: tonic's routes, served with tokens and a graceful drain.
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
//! let host = gracefully_host::Host::builder()
//!     .service("grpc", GrpcServer::new(listener, routes))
//!     .build()?;
//!
//! // A client: calls carry their token's deadline and stop with it.
//! let channel = tonic::transport::Channel::from_static("http://pricing:50051").connect_lazy();
//! let channel = tower::ServiceBuilder::new().layer(GracefulLayer::new()).service(channel);
//! // let mut pricing = PricingClient::new(channel);
//! // pricing.quote(Request::new(q).with_token(&token)).await?;
//! # let _ = (host, channel); Ok(()) }
//! ```
//!
//! ## What an RPC's token reports
//!
//! | event | reason kind | `into_status()` |
//! |---|---|---|
//! | the client cancels (`RST_STREAM`) or disconnects | [`Disconnected`](gracefully::ReasonKind::Disconnected) | `CANCELLED` |
//! | the call's `grpc-timeout` passes | [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) | `DEADLINE_EXCEEDED` |
//! | the host's drain budget is spent | [`Shutdown`](gracefully::ReasonKind::Shutdown) | `UNAVAILABLE` |
//!
//! ## One server, not two
//!
//! [`GrpcServer`] is `gracefully-axum`'s `HttpServer` serving tonic's
//! [`Routes`](tonic::service::Routes). A tonic service is a tower service over HTTP/2, and
//! that server already gives each request a token (a child of the host's hard stop), sees
//! an HTTP/2 stream reset as `Disconnected`, reads `grpc-timeout` as an incoming deadline,
//! drains with GOAWAY without losing a request, and writes its row of the shutdown report.
//! A second server would repeat all of it, and its defects. What gRPC adds is small and lives
//! in [`GrpcRoutes`]: each RPC's token is a child of its request's, kept in the response body,
//! so that a client that resets a server stream after the handler returned still fires it.
//!
//! ## The deadline on the wire
//!
//! [`GracefulLayer`] sends a call's full time left as `grpc-timeout`, as grpc-go does; a
//! gracefully server keeps a transit allowance (5 ms) back from it
//! ([`IncomingDeadlines::transit_allowance`](gracefully_axum::IncomingDeadlines::transit_allowance)),
//! so it gives up while its caller still listens. (tonic's `Channel` ends a call at its
//! `grpc-timeout` on the client too; a `grpc-timeout` shortened by the client would make it
//! reset the stream just before the server's own deadline.)
//!
//! ## Coming from .NET or Go
//!
//! | | grpc-dotnet | grpc-go | gracefully-tonic |
//! |---|---|---|---|
//! | the RPC's token | `context.CancellationToken` | `ctx` | `request.token()` ([`RequestExt`]) |
//! | its deadline | `context.Deadline` | `ctx.Deadline()` | `request.token().deadline()` |
//! | cancelled → status | `OperationCanceledException` → `CANCELLED` | `ctx.Err()` → `codes.Canceled` / `DeadlineExceeded` | `.into_status()?` ([`IntoStatus`]) |
//! | a call with a token | `CallOptions(cancellationToken, deadline)` | `client.M(ctx, req)` | `Request::new(m).with_token(&t)` + [`GracefulLayer`] |
//! | deadline to the next service | `EnableCallContextPropagation()` | `ctx` passed on → `grpc-timeout` | [`GracefulLayer`]: the request's token by default → `grpc-timeout` |
//! | graceful stop | Kestrel's drain | `GracefulStop()` | [`GrpcServer`] as a host service |
//!
//! ## Limits
//!
//! * The server's answer to a cancelled handler is the handler's: a handler that ignores
//!   its token runs to its end (the client has stopped waiting by then).
//! * Client side, a response stream stops with its token as soon as it is polled (or
//!   awaited); the HTTP/2 stream is reset then, or when the stream is dropped.

// No unsafe code: the crate composes tonic, tower and gracefully-axum.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod request_ext;
mod routes;
mod server;
mod status;

pub use client::{
    BoxError, DEFAULT_TRANSIT_ALLOWANCE, GracefulChannel, GracefulLayer, ResponseFuture, TokenBody,
};
pub use request_ext::RequestExt;
pub use routes::{GrpcRoutes, RpcFuture};
pub use server::GrpcServer;
pub use status::{IntoStatus, cancellation_of, status_for};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
