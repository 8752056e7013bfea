//! [`HttpApp`]: the one spelling of "a service the server can run".

use std::convert::Infallible;

use axum::body::Body;
use axum::response::Response;
use http::Request;
use tower::Service;

/// What [`HttpServer`](crate::HttpServer) serves: a tower service that answers a
/// `Request<Body>` with a `Response` and never fails (errors are responses), cloned per
/// connection and shared across threads. An axum `Router` is one, and so is a `Router`
/// wrapped in tower layers. Implemented for every such type; there is nothing to implement.
///
/// *Anchors:* the bound `axum::serve` puts on its service; Go's `http.Handler`.
pub trait HttpApp:
    Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpApp for S where
    S: Service<Request<Body>, Response = Response, Error = Infallible, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static
{
}
