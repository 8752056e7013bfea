//! hyper's view of the app: [`HyperService`] gives each request its context and account
//! and runs its handler — inline for HTTP/1, as a task for HTTP/2 — and [`builder`] sets up
//! how hyper serves a connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::response::Response;
use gracefully::Reason;
use gracefully::operation::{Operation, OperationKind, OperationScope, Scoped};
use http::{Request, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::accounting::RequestAccount;
use crate::app::HttpApp;
use crate::conn_state::ConnState;
use crate::policy::DisconnectPolicy;
use crate::request::RequestContext;
use crate::request_body::GuardedBody;
use crate::request_future::{Answer, InRequest, NoAnswer};
use crate::socket::Monitor;
use crate::state::ServerState;
use crate::stats::inc;

/// The most streams an HTTP/2 client may have open at once on one connection (hyper's
/// default, set explicitly because the rapid-reset bound below is tied to it).
pub(crate) const HTTP2_MAX_STREAMS: u32 = 200;

/// Handlers allowed to run at once on one HTTP/2 connection, counting those whose stream the
/// client already reset (a `Cooperative` or `Detached` handler runs on). Past it new streams
/// are refused with `REFUSED_STREAM` (RFC 9113 §8.7: not processed, safe to retry), and a
/// client that keeps opening streams into the refusals gets GOAWAY. Without it a client that
/// opens and resets streams in a loop (CVE-2023-44487) runs unbounded handlers on one
/// connection whose stream limit is 200.
const HTTP2_MAX_HANDLERS: usize = HTTP2_MAX_STREAMS as usize;

/// The builder every connection is served with.
pub(crate) fn builder(max_header_bytes: usize) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // Where we can watch the socket ourselves while a handler runs (the disconnect
        // policy decides), hyper must not drop the handler on EOF.
        .half_close(Monitor::SUPPORTED)
        // Slowloris protection is ours (`header_guard`: one timer per connection instead of
        // one per request); hyper's would also apply if it had a timer.
        .header_read_timeout(None)
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_STREAMS)
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// hyper's view of our app, for one connection.
pub(crate) struct HyperService<S> {
    pub(crate) app: S,
    pub(crate) state: Arc<ServerState>,
    pub(crate) conn: Arc<ConnState>,
}

/// The app's answer (its `Infallible` error is unwrapped by `InRequest`), polled in the
/// request's operation scope (nothing is touched when no operation is recorded).
type AppFuture<S> = Scoped<Oneshot<S, Request<Body>>>;

impl<S: HttpApp> hyper::service::Service<Request<Incoming>> for HyperService<S> {
    type Response = Response;
    type Error = NoAnswer;
    type Future = RequestFuture<S>;

    fn call(&self, request: Request<Incoming>) -> RequestFuture<S> {
        let state = &self.state;
        let version = request.version();
        if version == Version::HTTP_2
            && self.conn.in_flight.load(Ordering::Acquire) >= HTTP2_MAX_HANDLERS
        {
            return self.refuse(request);
        }
        let ctx = RequestContext::new(
            state.config.disconnect_policy,
            state.clone(),
            (version != Version::HTTP_2).then(|| self.conn.clone()),
        );
        if let Some(timeout) = state.config.request_timeout {
            ctx.cancel_after(timeout);
        }
        // The head arrived: the bytes read so far are this request's, not a slow head's.
        self.conn.account_bytes();
        // The body's reads end when the request's token fires (see `request_body`).
        let mut request = request.map(|body| Body::new(GuardedBody::new(body)));
        // The caller's budget, if it sent one: narrows, never extends (deadlines only move
        // earlier; the routes' timeouts apply on top). Read from the request as the app gets
        // it, which is built in place.
        if let Some(budget) = state.config.incoming_deadlines.budget(request.headers()) {
            ctx.cancel_after(budget);
        }
        if state.config.token_in_extensions {
            request
                .extensions_mut()
                .insert(crate::RequestToken(ctx.token()));
        }
        let account = RequestAccount::start(state.clone(), self.conn.clone());
        let op = match &state.operations {
            Some(scope) => begin_request(scope, &request),
            None => Operation::none(),
        };
        let future: AppFuture<S> = op.scoped(self.app.clone().oneshot(request));

        if version == Version::HTTP_2 {
            // hyper runs each HTTP/2 stream as a task of its own and drops this future when
            // the client resets the stream; the handler is polled here, in that task, and
            // boxed so that it can move to a task of the connection if it must run on
            // (`StreamHandler`'s drop). Polling it in place saves a task, a channel and a
            // wake-up per request over spawning it up front.
            let handler = Box::pin(InRequest::new(future, ctx, account, op, false));
            RequestFuture::Stream {
                handler: StreamHandler {
                    handler: Some(handler),
                    conn: self.conn.clone(),
                },
            }
        } else {
            RequestFuture::Inline {
                handler: InRequest::new(future, ctx, account, op, true),
            }
        }
    }
}

/// The request's operation, named `METHOD /path` until a route names it
/// ([`OperationNameLayer`](crate::OperationNameLayer)). Its deadline is recorded once its
/// token exists (`InRequest`).
#[inline(never)]
fn begin_request(scope: &OperationScope, request: &Request<Body>) -> Operation {
    let (method, path) = (request.method().as_str(), request.uri().path());
    // Most names fit on the stack: no allocation for them, and no second look at the
    // bytes (`ArrayString` joins `str`s without validating them again).
    let mut name = arrayvec::ArrayString::<128>::new();
    if name.try_push_str(method).is_ok()
        && name.try_push(' ').is_ok()
        && name.try_push_str(path).is_ok()
    {
        return scope.begin(OperationKind::Request, &name, None);
    }
    scope.begin(OperationKind::Request, &format!("{method} {path}"), None)
}

impl<S: HttpApp> HyperService<S> {
    /// An HTTP/2 stream past the handler bound: handlers of reset streams still run here, so
    /// nothing runs for it. A client that keeps pushing gets GOAWAY.
    // Cold and out of line: the request path then builds the app's request in place.
    #[cold]
    #[inline(never)]
    fn refuse(&self, request: Request<Incoming>) -> RequestFuture<S> {
        drop(request);
        inc(&self.state.stats.streams_refused);
        let refused = self.conn.refused.fetch_add(1, Ordering::Relaxed) + 1;
        if refused >= HTTP2_MAX_HANDLERS {
            self.conn.goaway_wanted.store(true, Ordering::Release);
            self.conn.events.notify_one();
        }
        RequestFuture::Refused
    }
}

pin_project_lite::pin_project! {
    /// The future hyper drives for one request.
    // The HTTP/1 variant is deliberately unboxed: hyper pins this future in place once per
    // request, and boxing it would cost an allocation on every request.
    #[project = RequestFutureProj]
    pub(crate) enum RequestFuture<S: HttpApp> {
        /// HTTP/1: the handler runs inside this future; the socket is watched while it is
        /// pending.
        Inline { #[pin] handler: InRequest<AppFuture<S>, RequestContext> },
        /// HTTP/2, past the handler bound: refused at once.
        Refused,
        /// HTTP/2: the handler runs inside this future, in hyper's task for the stream.
        Stream { handler: StreamHandler<S> },
    }
}

/// An HTTP/2 handler, movable to a task of its own.
type BoxedHandler<S> = Pin<Box<InRequest<AppFuture<S>, RequestContext>>>;

/// An HTTP/2 handler, polled in its stream's task until it answers. If hyper drops the
/// stream first (the client reset it, or the connection broke), the drop hands the handler
/// to the disconnect policy: `Cooperative` fires its token and lets it run on as a task of
/// the connection (which waits for it, and aborts it if the connection is aborted);
/// `Detached` lets it run on untouched; `Drop` drops it.
pub(crate) struct StreamHandler<S: HttpApp> {
    /// `None` once it answered.
    handler: Option<BoxedHandler<S>>,
    conn: Arc<ConnState>,
}

impl<S: HttpApp> Future for RequestFuture<S> {
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        match self.project() {
            RequestFutureProj::Inline { handler } => handler.poll(cx),
            RequestFutureProj::Refused => Poll::Ready(Err(NoAnswer::refused())),
            RequestFutureProj::Stream { handler } => {
                let Some(inner) = handler.handler.as_mut() else {
                    // Polled again after its answer (hyper does not): nothing more to send.
                    return Poll::Ready(Err(NoAnswer::client_gone()));
                };
                let answer = std::task::ready!(inner.as_mut().poll(cx));
                handler.handler = None;
                Poll::Ready(answer)
            }
        }
    }
}

impl<S: HttpApp> Drop for StreamHandler<S> {
    fn drop(&mut self) {
        let Some(handler) = self.handler.take() else {
            return;
        };
        // hyper dropped the stream before the answer: the client reset it or the
        // connection broke.
        let ctx = handler.as_ref().get_ref().context();
        let policy = ctx.policy();
        match policy {
            DisconnectPolicy::Cooperative => {
                ctx.source().cancel_with(Reason::disconnected());
            }
            DisconnectPolicy::Drop => {
                // Counted as dropped on disconnect (as over HTTP/1), not lost.
                ctx.mark_dropped_on_disconnect();
                drop(handler);
                return;
            }
            DisconnectPolicy::Detached => {}
        }
        // It runs on as a task of the connection. Not once the connection was aborted (the
        // server's abort phase: checked under the same lock the abort takes, so no handler
        // slips past it), nor outside a runtime (one being shut down drops its tasks): then
        // it is dropped here, and counted as lost.
        let mut handlers = self.conn.handlers();
        if self.conn.aborted.load(Ordering::Acquire)
            || tokio::runtime::Handle::try_current().is_err()
        {
            drop(handlers);
            drop(handler);
            return;
        }
        // Reap finished tasks so a long-lived HTTP/2 connection does not pile them up.
        while handlers.try_join_next().is_some() {}
        handlers.spawn(async move {
            let _ = handler.await;
        });
    }
}
