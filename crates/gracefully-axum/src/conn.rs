//! One connection: serving it with hyper, giving each request its token, watching for the
//! client to leave, and draining it at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gracefully::{CancellationToken, Reason};
use http::{Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

use crate::io::{Peek, SharedStream};
use crate::request::{DisconnectPolicy, RequestContext};
use crate::response::{CLIENT_CLOSED_REQUEST, CancelledMarker};
use crate::server::Shared;
use crate::stats::inc;

/// How long to wait before looking at a socket again when unread bytes (a request body the
/// handler has not read yet, or a pipelined request) hide whether the client is still there.
const RECHECK_BEHIND_DATA: Duration = Duration::from_millis(25);

/// State of one connection, shared with its requests.
pub(crate) struct Conn {
    stream: SharedStream,
    /// Requests of this connection still running (including handlers that outlive their
    /// HTTP/2 stream).
    in_flight: AtomicUsize,
    /// HTTP/2 handlers run as tasks of their own (hyper drops a stream's future when the
    /// client resets it; a `Cooperative` or `Detached` handler must run on). They live here
    /// so that the connection waits for them, and aborting the connection aborts them.
    handlers: Mutex<JoinSet<()>>,
}

/// Serves one accepted connection until it closes, draining it when `stopping` fires.
pub(crate) async fn serve<S>(stream: TcpStream, shared: Arc<Shared>, app: S)
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let _open = OpenConnection::new(&shared);
    let stream = SharedStream(Arc::new(stream));
    let conn = Arc::new(Conn {
        stream: stream.clone(),
        in_flight: AtomicUsize::new(0),
        handlers: Mutex::new(JoinSet::new()),
    });
    let service = ConnService {
        app,
        shared: shared.clone(),
        conn: conn.clone(),
    };
    let connection = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);

    // If this task is aborted (the server's abort phase), the handlers that run as tasks
    // of their own go with it.
    let _abort_handlers = AbortHandlersOnDrop(conn.clone());

    let stopping = shared.stopping.clone();
    tokio::select! {
        result = connection.as_mut() => log_connection_end(result),
        _ = stopping.cancelled() => {
            let busy = conn.in_flight.load(Ordering::Acquire);
            inc(&shared.stats.open_at_drain);
            if busy == 0 {
                inc(&shared.stats.idle_at_drain);
            }
            shared
                .stats
                .in_flight_at_drain
                .fetch_add(busy as u64, Ordering::Relaxed);
            // HTTP/1: an idle connection closes now; a busy one answers its current request
            // with `Connection: close`, then closes. HTTP/2: GOAWAY, streams in flight finish.
            connection.as_mut().graceful_shutdown();
            log_connection_end(connection.await);
        }
    }
    // Handlers that outlived their HTTP/2 stream still count as this connection's work.
    loop {
        let quiet = shared.stats.quiet.notified();
        let mut quiet = std::pin::pin!(quiet);
        quiet.as_mut().enable();
        crate::stats::Stats::drain_fence();
        if conn.in_flight.load(Ordering::Acquire) == 0 {
            break;
        }
        quiet.await;
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct AbortHandlersOnDrop(Arc<Conn>);

impl Drop for AbortHandlersOnDrop {
    fn drop(&mut self) {
        lock(&self.0.handlers).abort_all();
    }
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(error) = result {
        // Malformed requests, resets and timeouts (header read) end up here: the client's
        // problem, not the server's.
        tracing::debug!(%error, "connection ended with an error");
    }
}

struct OpenConnection<'a>(&'a Shared);

impl<'a> OpenConnection<'a> {
    fn new(shared: &'a Shared) -> Self {
        shared.stats.connections_open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(shared)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.connections_open.fetch_sub(1, Ordering::AcqRel);
        self.0.stats.wake_drain(&self.0.stopping);
    }
}

/// hyper's view of our app, for one connection.
struct ConnService<S> {
    app: S,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

impl<S> hyper::service::Service<Request<Incoming>> for ConnService<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = RequestFuture<S>;

    fn call(&self, request: Request<Incoming>) -> RequestFuture<S> {
        let shared = &self.shared;
        // A child of the hard stop: born cancelled once shutdown reached the cancel phase.
        let ctx = RequestContext::new(
            shared.hard_stop.child(),
            shared.config.disconnect_policy,
            shared.clone(),
        );
        if let Some(timeout) = shared.config.request_timeout {
            ctx.cancel_after(timeout);
        }
        let version = request.version();
        let mut request = request.map(Body::new);
        request.extensions_mut().insert(ctx.clone());
        let tracker = Tracker::start(shared.clone(), self.conn.clone(), ctx.token());
        let future = self.app.clone().oneshot(request);

        if version == Version::HTTP_2 {
            // hyper drops an HTTP/2 stream's future when the client resets the stream;
            // run the handler as a task so the policy decides what happens to it.
            let (tx, rx) = oneshot::channel();
            let task_ctx = ctx.clone();
            let abort = {
                let mut handlers = lock(&self.conn.handlers);
                // Reap finished tasks so a long-lived HTTP/2 connection does not pile them up.
                while handlers.try_join_next().is_some() {}
                handlers.spawn(async move {
                    let response = CatchPanic(future).await;
                    let response = tracker.finish(response, &task_ctx);
                    let _ = tx.send(response);
                })
            };
            RequestFuture::Spawned {
                rx,
                abort,
                ctx,
                done: false,
            }
        } else {
            RequestFuture::Inline(Box::pin(Inline {
                future,
                ctx,
                stream: self.conn.stream.clone(),
                watch: Watch::NotYet,
                tracker: Some(tracker),
            }))
        }
    }
}

/// The future hyper drives for one request.
pub(crate) enum RequestFuture<S: Service<Request<Body>>> {
    /// HTTP/1: the handler runs inside this future; we watch the socket while it is pending.
    Inline(Pin<Box<Inline<S>>>),
    /// HTTP/2: the handler runs as a task of its connection.
    Spawned {
        rx: oneshot::Receiver<Response>,
        abort: tokio::task::AbortHandle,
        ctx: RequestContext,
        done: bool,
    },
}

pub(crate) struct Inline<S: Service<Request<Body>>> {
    future: tower::util::Oneshot<S, Request<Body>>,
    ctx: RequestContext,
    stream: SharedStream,
    watch: Watch,
    tracker: Option<Tracker>,
}

enum Watch {
    /// The handler has not been polled yet (its route's policy is not known).
    NotYet,
    /// Looking at the socket.
    Watching(Pin<Box<dyn Future<Output = Peek> + Send>>),
    /// Bytes were waiting; look again after a pause.
    Paused(Pin<Box<tokio::time::Sleep>>),
    /// Not watching (client gone and handled, or a `Detached` route).
    Off,
}

impl<S> Future for RequestFuture<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin (the handler future is boxed).
        match self.get_mut() {
            RequestFuture::Inline(inline) => inline.as_mut().poll_inline(cx).map(Ok),
            RequestFuture::Spawned { rx, done, .. } => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(response)) => {
                    *done = true;
                    Poll::Ready(Ok(response))
                }
                // The task was aborted (server abort): nothing to send.
                Poll::Ready(Err(_)) => {
                    *done = true;
                    Poll::Ready(Ok(StatusCode::SERVICE_UNAVAILABLE.into_response()))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<S: Service<Request<Body>>> Drop for RequestFuture<S> {
    fn drop(&mut self) {
        if let RequestFuture::Spawned {
            abort, ctx, done, ..
        } = self
            && !*done
        {
            // hyper dropped the stream before the answer: the client reset it or the
            // connection broke.
            match ctx.policy() {
                DisconnectPolicy::Cooperative => {
                    ctx.inner.source.cancel_with(Reason::disconnected());
                }
                DisconnectPolicy::Drop => abort.abort(),
                DisconnectPolicy::Detached => {}
            }
        }
    }
}

impl<S> Inline<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    fn poll_inline(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        // SAFETY: `future` is structurally pinned (never moved out; `Inline` is only used
        // behind `Pin<Box<_>>`); the other fields are not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        loop {
            // SAFETY: see above.
            let future = unsafe { Pin::new_unchecked(&mut this.future) };
            if let Poll::Ready(response) = poll_catching_panics(future, cx) {
                let tracker = this.tracker.take();
                return Poll::Ready(match tracker {
                    Some(tracker) => tracker.finish(response, &this.ctx),
                    None => response,
                });
            }
            match &mut this.watch {
                Watch::Off => return Poll::Pending,
                Watch::NotYet => {
                    this.watch = if this.ctx.policy() == DisconnectPolicy::Detached {
                        Watch::Off
                    } else {
                        watching(&this.stream)
                    };
                }
                Watch::Paused(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.watch = watching(&this.stream),
                    Poll::Pending => return Poll::Pending,
                },
                Watch::Watching(watch) => match watch.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Peek::Data) => {
                        this.watch =
                            Watch::Paused(Box::pin(tokio::time::sleep(RECHECK_BEHIND_DATA)));
                    }
                    Poll::Ready(Peek::Gone) => {
                        this.watch = Watch::Off;
                        match this.ctx.policy() {
                            DisconnectPolicy::Cooperative => {
                                if let Some(tracker) = &this.tracker {
                                    tracker.client_left();
                                }
                                this.ctx.inner.source.cancel_with(Reason::disconnected());
                                // Loop: the handler may finish at once now.
                            }
                            DisconnectPolicy::Drop => {
                                if let Some(tracker) = this.tracker.take() {
                                    tracker.dropped();
                                }
                                // Answer at once; hyper then drops us, and the handler with us.
                                return Poll::Ready(client_closed_response());
                            }
                            DisconnectPolicy::Detached => {}
                        }
                    }
                },
            }
        }
    }
}

fn watching(stream: &SharedStream) -> Watch {
    let stream = stream.clone();
    Watch::Watching(Box::pin(async move { stream.watch().await }))
}

fn client_closed_response() -> Response {
    let status = StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::BAD_REQUEST);
    status.into_response()
}

fn poll_catching_panics<F: Future<Output = Result<Response, Infallible>>>(
    future: Pin<&mut F>,
    cx: &mut Context<'_>,
) -> Poll<Response> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
        Ok(Poll::Ready(Ok(response))) => Poll::Ready(response),
        Ok(Poll::Ready(Err(never))) => match never {},
        Ok(Poll::Pending) => Poll::Pending,
        Err(panic) => Poll::Ready(panic_response(panic)),
    }
}

/// A handler future whose panics become 500 answers (HTTP/2 task form).
struct CatchPanic<F>(F);

impl<F: Future<Output = Result<Response, Infallible>>> Future for CatchPanic<F> {
    type Output = Response;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        // SAFETY: structural pinning of the only field.
        let future = unsafe { self.map_unchecked_mut(|s| &mut s.0) };
        poll_catching_panics(future, cx)
    }
}

/// Marks a 500 answer made from a handler panic.
#[derive(Clone, Copy)]
struct PanicMarker;

fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into());
    tracing::error!(panic = %message, "request handler panicked");
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(PanicMarker);
    response
}

/// Accounts for one request from start to end.
pub(crate) struct Tracker {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    token: CancellationToken,
    client_left: std::cell::Cell<bool>,
    finished: bool,
}

// SAFETY-free note: `Cell<bool>` makes Tracker !Sync, which is fine (owned by one future or
// task); it is Send.

impl Tracker {
    fn start(shared: Arc<Shared>, conn: Arc<Conn>, token: CancellationToken) -> Self {
        inc(&shared.stats.requests_started);
        shared
            .stats
            .requests_in_flight
            .fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Tracker {
            shared,
            conn,
            token,
            client_left: std::cell::Cell::new(false),
            finished: false,
        }
    }

    fn client_left(&self) {
        self.client_left.set(true);
    }

    /// Counts the request if the hard stop cancelled its token.
    fn note_hard_stop(&self) {
        if let (Some(ours), Some(hard)) = (self.token.reason(), self.shared.hard_stop.reason())
            && ours.same_as(&hard)
        {
            inc(&self.shared.stats.cancelled_at_hard_stop);
        }
    }

    fn finish(mut self, response: Response, ctx: &RequestContext) -> Response {
        self.finished = true;
        self.note_hard_stop();
        let stats = &self.shared.stats;
        if response.extensions().get::<PanicMarker>().is_some() {
            inc(&stats.panicked);
        } else if self.client_left.get()
            || self
                .token
                .reason()
                .is_some_and(|r| r.kind() == gracefully::ReasonKind::Disconnected)
        {
            inc(&stats.client_left);
            tracing::info!(
                status = CLIENT_CLOSED_REQUEST,
                "client left before the answer"
            );
        } else if let Some(CancelledMarker(kind)) = response.extensions().get::<CancelledMarker>() {
            stats.record_cancelled(*kind);
            tracing::info!(status = response.status().as_u16(), reason = %kind, "request cancelled");
        } else {
            inc(&stats.completed);
        }
        let _ = ctx;
        response
    }

    fn dropped(mut self) {
        self.finished = true;
        self.note_hard_stop();
        inc(&self.shared.stats.dropped_on_disconnect);
        tracing::info!(
            status = CLIENT_CLOSED_REQUEST,
            "client left; handler dropped"
        );
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        if !self.finished {
            // The future was dropped before an answer: the connection broke or was aborted.
            self.note_hard_stop();
            inc(&self.shared.stats.lost);
            tracing::debug!(
                cancelled = self.token.is_cancelled(),
                "request dropped before its answer"
            );
        }
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.shared
            .stats
            .requests_in_flight
            .fetch_sub(1, Ordering::AcqRel);
        self.shared.stats.wake_drain(&self.shared.stopping);
    }
}

/// The builder every connection is served with.
pub(crate) fn builder(
    header_read_timeout: Duration,
    max_header_bytes: usize,
) -> auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder = auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        // We watch the socket ourselves while a handler runs (the disconnect policy
        // decides); hyper would otherwise drop the handler on EOF.
        .half_close(true)
        .timer(hyper_util::rt::TokioTimer::new())
        // Slowloris: a client must send its headers within this time.
        .header_read_timeout(header_read_timeout)
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}
