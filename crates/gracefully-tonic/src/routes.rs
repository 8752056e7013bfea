//! [`GrpcRoutes`]: tonic's routes as [`GrpcServer`](crate::GrpcServer) runs them — each
//! RPC's token in its request's extensions, and fired when its client resets the stream
//! while the response stream still runs (`StreamGuard`).
//!
//! The HTTP server fires a request's token when the client leaves *while the handler
//! runs*. A server-streaming RPC's handler returns at once, with the stream; the stream then
//! runs as the response body, outside the handler, and a client that cancels mid-stream
//! only makes hyper drop that body. So each RPC gets a child of the request's token, whose
//! source rides in the response body and fires `Disconnected` if the body is dropped before
//! its end.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use gracefully::operation::{Operation, OperationKind, Scoped};
use gracefully::{CancellationSource, Reason};
use gracefully_axum::RequestToken;
use http_body::Frame;
use tower::Service;

/// The service a [`GrpcServer`](crate::GrpcServer) runs: tonic's routes, with each RPC's
/// token put where [`RequestExt::token`](crate::RequestExt::token) finds it. It appears
/// only in the type of [`GrpcServer::configure`](crate::GrpcServer::configure)'s argument.
#[derive(Clone, Debug)]
pub struct GrpcRoutes {
    router: Router,
}

impl GrpcRoutes {
    pub(crate) fn new(router: Router) -> Self {
        GrpcRoutes { router }
    }
}

impl Service<http::Request<Body>> for GrpcRoutes {
    type Response = Response;
    type Error = Infallible;
    type Future = RpcFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<http::Request<Body>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> RpcFuture {
        // Called while the server polls the request (gracefully-axum's `request_token`
        // finds it then): the RPC's token is a child of the request's, so the client's
        // departure during the handler, the deadline and the hard stop reach it too.
        let rpc = gracefully_axum::request_token(&request).child();
        let token = rpc.token();
        // Under the HTTP request's operation (current here, when a registry is installed):
        // the RPC, named by its method path, with the handler run in its scope.
        let op = Operation::begin(OperationKind::Rpc, request.uri().path(), token.deadline());
        request.extensions_mut().insert(RequestToken(token));
        let inner = op.scoped(self.router.call(request));
        RpcFuture {
            inner,
            rpc: Some(rpc),
            op,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of one RPC's answer, made by [`GrpcRoutes`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the handler's future, as dropping tonic's own would; it does not
    /// fire the RPC's token (the HTTP server fires the request's, whose child it is, as the
    /// route's disconnect policy says).
    pub struct RpcFuture {
        #[pin]
        inner: Scoped<axum::routing::future::RouteFuture<Infallible>>,
        rpc: Option<CancellationSource>,
        op: Operation,
    }
}

impl Future for RpcFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        // A panicking handler is answered here, in gRPC's terms (HTTP 200, `grpc-status:
        // INTERNAL`), rather than by the HTTP server's plain 500 that a gRPC client can only
        // read as `UNKNOWN`; the server still counts it as a panic and keeps serving. The
        // inner future is not polled again after a panic: `Ready` is returned.
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.inner.poll(cx)));
        let mut response = match polled {
            Ok(Poll::Pending) => return Poll::Pending,
            Ok(Poll::Ready(Ok(response))) => response,
            Err(panic) => {
                let message = gracefully_host::panic_message(&*panic);
                tracing::error!(panic = %message, "gRPC handler panicked");
                let mut response =
                    tonic::Status::internal("the handler panicked").into_http::<Body>();
                gracefully_axum::mark_panicked(&mut response);
                response
            }
        };
        // A handler's `Status` made from a `Cancelled` (tonic puts an error status in the
        // response's extensions): the server counts it as that cancellation.
        let cancelled = response
            .extensions()
            .get::<tonic::Status>()
            .and_then(crate::cancellation_of)
            .cloned();
        if let Some(cancelled) = &cancelled {
            gracefully_axum::mark_cancelled(&mut response, cancelled);
        }
        let rpc = this.rpc.take();
        end_rpc(
            std::mem::take(this.op),
            &response,
            rpc.as_ref(),
            cancelled.as_ref(),
        );
        Poll::Ready(Ok(response.map(|body| {
            Body::new(StreamGuard {
                body,
                rpc,
                ended: false,
            })
        })))
    }
}

/// Ends the RPC's operation when its handler answers: cancelled with the token's reason if
/// it fired — or with the reason of the `Cancelled` its status was made from (a narrower
/// deadline of the handler's own), as the server counts it —, failed if the answer is
/// another error status, completed otherwise. (A response stream that runs on after the
/// handler is not part of it.)
fn end_rpc(
    op: Operation,
    response: &Response,
    rpc: Option<&CancellationSource>,
    cancelled: Option<&gracefully::Cancelled>,
) {
    if !op.is_recording() {
        return;
    }
    if let Some(reason) = rpc.and_then(|rpc| rpc.token().reason()) {
        op.cancelled(reason);
        return;
    }
    if let Some(cancelled) = cancelled {
        op.cancelled(cancelled.reason().clone());
        return;
    }
    let status = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("0");
    if status == "0" && response.status().is_success() {
        op.complete();
    } else {
        op.failed(format_args!(
            "grpc-status {status} (HTTP {})",
            response.status().as_u16()
        ));
    }
}

/// A response body that fires its RPC's token with `Disconnected` if it is dropped before
/// its end (hyper drops it when the client resets the stream or the connection closes) —
/// whatever the disconnect policy: the stream itself is gone with the body, so there is no
/// work of the response's left to detach.
struct StreamGuard {
    body: Body,
    rpc: Option<CancellationSource>,
    ended: bool,
}

impl http_body::Body for StreamGuard {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        http_body::Body::is_end_stream(&self.body)
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::Body::size_hint(&self.body)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.ended || http_body::Body::is_end_stream(&self.body) {
            return;
        }
        if let Some(rpc) = &self.rpc {
            rpc.cancel_with(Reason::disconnected().with_message(
                "the client reset the stream (or closed the connection) while the response \
                 stream ran",
            ));
        }
    }
}
