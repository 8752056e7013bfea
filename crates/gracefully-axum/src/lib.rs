//! # gracefully-axum — HTTP that stops gracefully
//!
//! An HTTP/1.1 and HTTP/2 server for axum routers (any tower service) in which every
//! request has a [`CancellationToken`](gracefully::CancellationToken) that fires when the
//! client leaves, when the route's timeout passes, or when shutdown reaches its cancel
//! phase — with the reason kept apart — and which drains on shutdown instead of dropping
//! work on the floor.

#![warn(missing_docs)]

mod conn;
mod health;
mod io;
mod layers;
mod request;
mod response;
mod server;
mod stats;
mod streams;

pub use health::health_routes;
pub use layers::{DisconnectPolicyLayer, Timeout, TimeoutLayer, WithDisconnectPolicy};
pub use request::{DisconnectPolicy, RequestToken, request_token};
pub use response::{CLIENT_CLOSED_REQUEST, HttpCancelled, cancelled_response};
pub use server::{HttpServer, Shutdown};
pub use stats::{DrainReport, ServerReport};
pub use streams::{Drain, DrainingStream, GracefulWebSocket};
