//! One connection: serving it with hyper, giving each request its context, watching for
//! the client to leave, and draining it at shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use gracefully::Reason;
use http::{Request, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tower::{Service, ServiceExt};

use crate::request::{DisconnectPolicy, RequestInner, enter};
use crate::response::{CLIENT_CLOSED_REQUEST, CancelledMarker};
use crate::server::Shared;
use crate::stats::inc;
use crate::watch::{Monitor, Peek};

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

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a connection announces HTTP/2 before
/// any request, which is when hyper-util's `auto` server decides too.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The protocol a connection speaks, as far as its first bytes tell (`Conn::version`).
const VERSION_UNKNOWN: u8 = 0;
const VERSION_HTTP1: u8 = 1;
const VERSION_HTTP2: u8 = 2;

/// How long to wait before looking at a socket again when unread bytes (a request body the
/// handler has not read yet, or a pipelined request) hide whether the client is still there.
const RECHECK_BEHIND_DATA: Duration = Duration::from_millis(25);

/// State of one connection, shared with its requests.
pub(crate) struct Conn {
    /// Watches the socket for a departed client (made when first needed).
    monitor: Monitor,
    /// Bytes read from the client so far (written only by hyper's reads, see
    /// [`CountingStream`]), and how many of them were accounted for when a request was
    /// dispatched or ended. More read than accounted for, with no request in flight, means
    /// a request head is arriving: the header-read guard times that.
    bytes_read: AtomicU64,
    bytes_accounted: AtomicU64,
    /// What the connection speaks (`VERSION_*`), decided by [`CountingStream`] from the
    /// first bytes: no header-read guard once the HTTP/2 preface arrived, GOAWAY at drain.
    version: AtomicU8,
    /// Wakes the connection loop when the version becomes known or GOAWAY is wanted.
    events: tokio::sync::Notify,
    /// Set when an HTTP/2 client keeps opening streams past the handler bound.
    goaway_wanted: AtomicBool,
    /// HTTP/2 streams refused on this connection (see [`HTTP2_MAX_HANDLERS`]).
    refused: AtomicUsize,
    /// Requests of this connection still running (including handlers that outlive their
    /// HTTP/2 stream).
    in_flight: AtomicUsize,
    /// Set while the connection task waits for `in_flight` to reach zero after hyper is
    /// done with the connection; a request that ends then notifies `ended`.
    tail_waiting: AtomicBool,
    ended: tokio::sync::Notify,
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
    let conn = Arc::new(Conn {
        monitor: Monitor::new(&stream),
        bytes_read: AtomicU64::new(0),
        bytes_accounted: AtomicU64::new(0),
        version: AtomicU8::new(VERSION_UNKNOWN),
        events: tokio::sync::Notify::new(),
        goaway_wanted: AtomicBool::new(false),
        refused: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        tail_waiting: AtomicBool::new(false),
        ended: tokio::sync::Notify::new(),
        handlers: Mutex::new(JoinSet::new()),
    });
    let service = ConnService {
        app,
        shared: shared.clone(),
        conn: conn.clone(),
    };
    // If this task is aborted (the server's abort phase), the handlers that run as tasks
    // of their own go with it.
    let _abort_handlers = AbortHandlersOnDrop(conn.clone());

    // In a block of its own: the connection future must be *dropped* (not just finished)
    // before we wait below. hyper can end a connection with a request future still inside
    // it (it read EOF mid-message before polling the handler, or the client reset the
    // connection while the handler ran); that future holds its request's place in
    // `conn.in_flight`, and only its drop releases it.
    {
        // hyper reads and writes the `TcpStream` through a byte counter (no buffering layer,
        // as with `axum::serve`).
        let stream = CountingStream {
            inner: stream,
            conn: conn.clone(),
            preface_matched: 0,
        };
        let connection = shared
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let stopping = shared.stopping.clone();
        let hard_stop = shared.hard_stop.clone();
        let header_timeout = shared.config.header_read_timeout;
        // One guard for the connection's whole life: the drain does not restart a slow
        // client's clock.
        let guard = guard_headers(&conn, header_timeout);
        let mut guard = std::pin::pin!(guard);
        // The drain's idle grace (armed when the drain begins; see `HttpServer::idle_grace`).
        let grace = shared.config.idle_grace;
        let idle_timer = tokio::time::sleep(grace);
        let mut idle_timer = std::pin::pin!(idle_timer);
        let mut draining: Option<IdleWatch> = None;
        // Whether hyper was told to shut the connection down (GOAWAY, or close when idle).
        let mut shutting_down = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    log_connection_end(result);
                    break;
                }
                () = guard.as_mut() => {
                    tracing::debug!("client too slow sending request headers; closing");
                    break;
                }
                _ = stopping.cancelled(), if draining.is_none() => {
                    let busy = conn.in_flight.load(Ordering::Acquire);
                    inc(&shared.stats.open_at_drain);
                    shared
                        .stats
                        .in_flight_at_drain
                        .fetch_add(busy as u64, Ordering::Relaxed);
                    // HTTP/2: GOAWAY now; the client learns which streams are served. HTTP/1
                    // (or not known yet): nothing is closed now; answers carry
                    // `Connection: close` (see `Tracker::finish_http1`) and an idle
                    // connection is closed after the grace.
                    if conn.version.load(Ordering::Acquire) == VERSION_HTTP2 && !shutting_down {
                        shutting_down = true;
                        inc(&shared.stats.goaway_sent);
                        connection.as_mut().graceful_shutdown();
                    }
                    draining = Some(IdleWatch::observe(&conn));
                    idle_timer.as_mut().reset(tokio::time::Instant::now() + grace);
                }
                () = conn.events.notified() => {
                    let http2 = conn.version.load(Ordering::Acquire) == VERSION_HTTP2;
                    let goaway = conn.goaway_wanted.load(Ordering::Acquire)
                        || (http2 && draining.is_some());
                    if goaway && !shutting_down {
                        shutting_down = true;
                        inc(&shared.stats.goaway_sent);
                        connection.as_mut().graceful_shutdown();
                    }
                }
                () = idle_timer.as_mut(), if draining.is_some() && !shutting_down => {
                    let now = IdleWatch::observe(&conn);
                    let before = draining.replace(now);
                    if before.is_some_and(|before| before.idle && now.idle && before.bytes == now.bytes) {
                        // Idle for a whole grace, and nothing waits in the socket: hyper
                        // closes an idle connection at once.
                        shutting_down = true;
                        inc(&shared.stats.idle_closed);
                        connection.as_mut().graceful_shutdown();
                    } else {
                        idle_timer.as_mut().reset(tokio::time::Instant::now() + grace);
                    }
                }
                _ = hard_stop.cancelled(), if draining.is_some() && !shutting_down => {
                    // The drain budget is spent: the grace ends too. An idle connection
                    // closes now; a busy one after its answer (which carries
                    // `Connection: close`).
                    shutting_down = true;
                    if IdleWatch::observe(&conn).idle {
                        inc(&shared.stats.idle_closed);
                    }
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
    // Our duplicate of the socket (if one was made) must not keep it open now that hyper
    // has closed its own.
    conn.monitor.close();

    // Handlers that outlived their HTTP/2 stream still count as this connection's work.
    // (Woken by this connection's requests, whether or not a shutdown is under way.)
    conn.tail_waiting.store(true, Ordering::SeqCst);
    loop {
        let ended = conn.ended.notified();
        let mut ended = std::pin::pin!(ended);
        ended.as_mut().enable();
        // Store buffering with `Tracker::drop` (its SeqCst decrement, then its SeqCst load
        // of `tail_waiting`; our SeqCst store above, then this SeqCst load): in the single
        // order of SeqCst operations one of us sees the other's write, so we never sleep
        // on a count that already reached zero.
        if conn.in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        ended.await;
    }
}

/// One look at a draining connection, for the idle grace: closed only after two looks a
/// grace apart that both found it idle with no byte read in between.
#[derive(Clone, Copy)]
struct IdleWatch {
    bytes: u64,
    idle: bool,
}

impl IdleWatch {
    fn observe(conn: &Conn) -> IdleWatch {
        let bytes = conn.bytes_read.load(Ordering::Relaxed);
        let idle = conn.in_flight.load(Ordering::Acquire) == 0
            && bytes == conn.bytes_accounted.load(Ordering::Relaxed)
            // A request hyper has not read yet.
            && !conn.monitor.bytes_waiting();
        IdleWatch { bytes, idle }
    }
}

/// Returns once a client has spent `timeout` sending a request head (slowloris): bytes
/// arrived that no request accounts for while none is in flight, or — on a new connection —
/// no request has come since the accept (a connection that sends nothing is the cheapest
/// way to hold one open). Checked on a coarse tick (a quarter of the timeout), so a
/// connection costs one timer, not one per request (hyper's own header-read timeout arms
/// and cancels a timer for every request). Idle keep-alive connections, which send nothing
/// after an answer, are not timed; nor is an HTTP/2 connection once its preface arrived.
async fn guard_headers(conn: &Conn, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut arriving_since: Option<tokio::time::Instant> = None;
    loop {
        let now = tick.tick().await;
        if conn.version.load(Ordering::Relaxed) == VERSION_HTTP2 {
            return std::future::pending().await;
        }
        let accounted = conn.bytes_accounted.load(Ordering::Relaxed);
        let head_arriving = conn.in_flight.load(Ordering::Acquire) == 0
            && (conn.bytes_read.load(Ordering::Relaxed) > accounted || accounted == 0);
        if !head_arriving {
            arriving_since = None;
            continue;
        }
        match arriving_since {
            None => arriving_since = Some(now),
            Some(since) if now.duration_since(since) >= timeout => return,
            Some(_) => {}
        }
    }
}

/// The client's socket as hyper reads and writes it, counting the bytes read (for
/// [`guard_headers`]) and telling HTTP/2 from HTTP/1 by the first bytes. Delegates
/// everything to the `TcpStream`.
struct CountingStream {
    inner: TcpStream,
    conn: Arc<Conn>,
    /// How many bytes of [`HTTP2_PREFACE`] arrived so far, until the version is decided.
    preface_matched: usize,
}

impl CountingStream {
    /// Compares newly read bytes with the HTTP/2 preface; decides the version at the first
    /// difference (HTTP/1) or once all of it arrived (HTTP/2), as hyper-util does.
    fn detect_version(&mut self, read: &[u8]) {
        let want = &HTTP2_PREFACE[self.preface_matched..];
        let n = want.len().min(read.len());
        let version = if want[..n] != read[..n] {
            VERSION_HTTP1
        } else if n == want.len() {
            VERSION_HTTP2
        } else {
            self.preface_matched += n;
            return;
        };
        self.preface_matched = HTTP2_PREFACE.len() + 1; // decided
        self.conn.version.store(version, Ordering::Release);
        self.conn.events.notify_one();
    }
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            // Only this reader writes the count: a load and a store, no read-modify-write.
            let read = &self.conn.bytes_read;
            read.store(read.load(Ordering::Relaxed) + n, Ordering::Relaxed);
            if self.preface_matched <= HTTP2_PREFACE.len() {
                let this = &mut *self;
                this.detect_version(&buf.filled()[before..]);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
        self.0.monitor.close();
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
        self.0.stats.connections_open.fetch_sub(1, Ordering::SeqCst);
        self.0.stats.wake_drain();
    }
}

/// hyper's view of our app, for one connection.
struct ConnService<S> {
    app: S,
    shared: Arc<Shared>,
    conn: Arc<Conn>,
}

/// Why hyper gets no response for a request: it then sends nothing for it (HTTP/1: closes
/// the connection; HTTP/2: resets the stream with the reason found in the error's chain).
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// The client left (HTTP/1: it closed or half-closed its side; HTTP/2: it reset the
    /// stream). 499 is a status for logs: it is never put on the wire.
    ClientGone(h2::Error),
    /// An HTTP/2 stream refused past the handler bound (`REFUSED_STREAM`).
    Refused(h2::Error),
}

impl NoAnswer {
    fn client_gone() -> Self {
        NoAnswer::ClientGone(h2::Error::from(h2::Reason::CANCEL))
    }
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::ClientGone(_) => f.write_str("the client left; no answer is sent"),
            NoAnswer::Refused(_) => f.write_str(
                "stream refused: the connection already runs as many handlers as its stream limit",
            ),
        }
    }
}

impl std::error::Error for NoAnswer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NoAnswer::ClientGone(reason) | NoAnswer::Refused(reason) => Some(reason),
        }
    }
}

/// A response or, where none must be sent, why.
type Answer = Result<Response, NoAnswer>;

/// A 499 is for logs: a response carrying it becomes no answer at all.
fn onto_the_wire(response: Response) -> Answer {
    if response.status().as_u16() == CLIENT_CLOSED_REQUEST {
        Err(NoAnswer::client_gone())
    } else {
        Ok(response)
    }
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
    type Error = NoAnswer;
    type Future = RequestFuture<S>;

    fn call(&self, request: Request<Incoming>) -> RequestFuture<S> {
        let shared = &self.shared;
        let version = request.version();
        if version == Version::HTTP_2
            && self.conn.in_flight.load(Ordering::Acquire) >= HTTP2_MAX_HANDLERS
        {
            // Handlers of reset streams still run here: refuse (nothing runs). A client
            // that keeps pushing gets GOAWAY.
            inc(&shared.stats.streams_refused);
            let refused = self.conn.refused.fetch_add(1, Ordering::Relaxed) + 1;
            if refused >= HTTP2_MAX_HANDLERS {
                self.conn.goaway_wanted.store(true, Ordering::Release);
                self.conn.events.notify_one();
            }
            return RequestFuture::Refused;
        }
        let ctx = RequestInner::new(shared.config.disconnect_policy, shared.clone());
        if let Some(timeout) = shared.config.request_timeout {
            ctx.cancel_after(timeout);
        }
        // The head arrived: the bytes read so far are this request's, not a slow head's.
        self.conn.account_bytes();
        let mut request = request.map(Body::new);
        if shared.config.token_in_extensions {
            request
                .extensions_mut()
                .insert(crate::RequestToken(ctx.token()));
        }
        let tracker = Tracker::start(shared.clone(), self.conn.clone());
        let future = self.app.clone().oneshot(request);

        if version == Version::HTTP_2 {
            // hyper drops an HTTP/2 stream's future when the client resets the stream;
            // run the handler as a task so the policy decides what happens to it.
            let ctx = Arc::new(ctx);
            let (tx, rx) = oneshot::channel();
            let task = InRequest {
                ctx: ctx.clone(),
                future: CatchPanic(future),
                tracker: Some(tracker),
                pending_once: false,
            };
            let abort = {
                let mut handlers = lock(&self.conn.handlers);
                // Reap finished tasks so a long-lived HTTP/2 connection does not pile them up.
                while handlers.try_join_next().is_some() {}
                handlers.spawn(async move {
                    let response = task.await;
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
            RequestFuture::Inline(Inline {
                future,
                ctx,
                conn: self.conn.clone(),
                watch: Watch::NotYet,
                tracker: Some(tracker),
            })
        }
    }
}

/// The future hyper drives for one request.
// The HTTP/1 variant is deliberately unboxed: hyper pins this future in place once per
// request, and boxing it would cost an allocation on every request.
#[allow(clippy::large_enum_variant)]
pub(crate) enum RequestFuture<S: Service<Request<Body>>> {
    /// HTTP/1: the handler runs inside this future (structurally pinned: no allocation per
    /// request); we watch the socket while it is pending.
    Inline(Inline<S>),
    /// HTTP/2, past the handler bound: refused at once.
    Refused,
    /// HTTP/2: the handler runs as a task of its connection.
    Spawned {
        rx: oneshot::Receiver<Response>,
        abort: tokio::task::AbortHandle,
        ctx: Arc<RequestInner>,
        done: bool,
    },
}

pub(crate) struct Inline<S: Service<Request<Body>>> {
    future: tower::util::Oneshot<S, Request<Body>>,
    /// The request's context; the current one (see `request::enter`) while `future` is
    /// polled. Its address is stable: `Inline` is only used pinned.
    ctx: RequestInner,
    conn: Arc<Conn>,
    watch: Watch,
    tracker: Option<Tracker>,
}

enum Watch {
    /// The handler has not returned `Pending` yet.
    NotYet,
    /// Looking at the socket.
    Watching(Pin<Box<dyn Future<Output = Peek> + Send>>),
    /// Bytes were waiting; look again after a pause.
    Paused(Pin<Box<tokio::time::Sleep>>),
    /// Not watching (client gone and handled, a `Detached` route, or no way to watch).
    Off,
}

impl<S> Future for RequestFuture<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `Inline` is structurally pinned: we never move it out of the enum or
        // replace the variant while it is pinned, and `Drop` only touches `Spawned`'s
        // (Unpin) fields. The `Spawned` fields are not pinned.
        match unsafe { self.get_unchecked_mut() } {
            RequestFuture::Inline(inline) => {
                // SAFETY: see above.
                unsafe { Pin::new_unchecked(inline) }.poll_inline(cx)
            }
            RequestFuture::Refused => Poll::Ready(Err(NoAnswer::Refused(h2::Error::from(
                h2::Reason::REFUSED_STREAM,
            )))),
            RequestFuture::Spawned { rx, done, .. } => match Pin::new(rx).poll(cx) {
                Poll::Ready(Ok(response)) => {
                    *done = true;
                    Poll::Ready(onto_the_wire(response))
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
                    ctx.source().cancel_with(Reason::disconnected());
                }
                DisconnectPolicy::Drop => {
                    // Counted as dropped on disconnect (as over HTTP/1), not lost.
                    ctx.mark_dropped_on_disconnect();
                    abort.abort();
                }
                DisconnectPolicy::Detached => {}
            }
        }
    }
}

impl<S: Service<Request<Body>>> Drop for Inline<S> {
    fn drop(&mut self) {
        // Dropped before its answer (the connection broke, or the server was aborted).
        if let Some(tracker) = self.tracker.take() {
            tracker.lost(&self.ctx);
        }
    }
}

impl<S> Inline<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    fn poll_inline(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        // SAFETY: `future` is structurally pinned (never moved out; `Inline` is only used
        // pinned, inside `RequestFuture`); the other fields are not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        loop {
            // SAFETY: see above.
            let future = unsafe { Pin::new_unchecked(&mut this.future) };
            let polled = {
                let _current = enter(&this.ctx);
                poll_catching_panics(future, cx)
            };
            if let Poll::Ready(response) = polled {
                let response = match this.tracker.take() {
                    Some(tracker) => tracker.finish_http1(response, &this.ctx),
                    None => response,
                };
                return Poll::Ready(onto_the_wire(response));
            }
            match &mut this.watch {
                Watch::Off => return Poll::Pending,
                Watch::NotYet => {
                    // The handler waits: from now on it can be cancelled (the hard stop,
                    // its timeout, a departed client), so it needs its token.
                    this.ctx.source();
                    this.watch = if this.ctx.policy() == DisconnectPolicy::Detached {
                        Watch::Off
                    } else {
                        watching(&this.conn)
                    };
                }
                Watch::Paused(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.watch = watching(&this.conn),
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
                                this.ctx.source().cancel_with(Reason::disconnected());
                                // Loop: the handler may finish at once now.
                            }
                            DisconnectPolicy::Drop => {
                                if let Some(tracker) = this.tracker.take() {
                                    tracker.dropped(&this.ctx);
                                }
                                // No answer (hyper closes the connection, and drops us and
                                // the handler with us).
                                return Poll::Ready(Err(NoAnswer::client_gone()));
                            }
                            DisconnectPolicy::Detached => {}
                        }
                    }
                },
            }
        }
    }
}

fn watching(conn: &Conn) -> Watch {
    match conn.monitor.watch() {
        Some(watch) => Watch::Watching(Box::pin(watch)),
        None => Watch::Off,
    }
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

/// An HTTP/2 handler's task: polls the handler with its request context current, and
/// accounts for it.
struct InRequest<F> {
    ctx: Arc<RequestInner>,
    future: F,
    tracker: Option<Tracker>,
    pending_once: bool,
}

impl<F: Future<Output = Response>> Future for InRequest<F> {
    type Output = Response;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response> {
        // SAFETY: `future` is structurally pinned (never moved out); the other fields are
        // not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let polled = {
            let _current = enter(&this.ctx);
            // SAFETY: see above.
            unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx)
        };
        match polled {
            Poll::Ready(response) => Poll::Ready(match this.tracker.take() {
                Some(tracker) => tracker.finish(response, &this.ctx),
                None => response,
            }),
            Poll::Pending => {
                if !this.pending_once {
                    // From now on it can be cancelled: it needs its token.
                    this.pending_once = true;
                    this.ctx.source();
                }
                Poll::Pending
            }
        }
    }
}

impl<F> Drop for InRequest<F> {
    fn drop(&mut self) {
        // Aborted before its answer: the `Drop` policy (the stream was reset), or the
        // server's abort.
        if let Some(tracker) = self.tracker.take() {
            if self.ctx.dropped_on_disconnect() {
                tracker.dropped(&self.ctx);
            } else {
                tracker.lost(&self.ctx);
            }
        }
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
    let message = gracefully_host::panic_message(&*panic);
    tracing::error!(panic = %message, "request handler panicked");
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    response.extensions_mut().insert(PanicMarker);
    response
}

/// Accounts for one request from start to end. Its place in the in-flight counts is
/// released when it drops, whatever happens; the owner reports how it ended first
/// ([`finish`](Tracker::finish), [`dropped`](Tracker::dropped) or [`lost`](Tracker::lost)).
pub(crate) struct Tracker {
    shared: Arc<Shared>,
    conn: Arc<Conn>,
    client_left: AtomicBool,
}

impl Tracker {
    fn start(shared: Arc<Shared>, conn: Arc<Conn>) -> Self {
        inc(&shared.stats.requests_started);
        shared
            .stats
            .requests_in_flight
            .fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        Tracker {
            shared,
            conn,
            client_left: AtomicBool::new(false),
        }
    }

    fn client_left(&self) {
        self.client_left.store(true, Ordering::Relaxed);
    }

    /// Counts the request if the hard stop cancelled its token.
    fn note_hard_stop(&self, ctx: &RequestInner) {
        if let Some(source) = ctx.source_if_made()
            && let (Some(ours), Some(hard)) =
                (source.as_token().reason(), self.shared.hard_stop.reason())
            && ours.same_as(&hard)
        {
            inc(&self.shared.stats.cancelled_at_hard_stop);
        }
    }

    fn finish(self, response: Response, ctx: &RequestInner) -> Response {
        self.note_hard_stop(ctx);
        let stats = &self.shared.stats;
        let disconnected = ctx.source_if_made().is_some_and(|source| {
            source
                .as_token()
                .reason()
                .is_some_and(|r| r.kind() == gracefully::ReasonKind::Disconnected)
        });
        if response.extensions().get::<PanicMarker>().is_some() {
            inc(&stats.panicked);
        } else if self.client_left.load(Ordering::Relaxed) || disconnected {
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
        response
    }

    /// [`finish`](Self::finish) for an HTTP/1 request: during the drain the answer carries
    /// `Connection: close`, so hyper closes the connection once it is written (HTTP/2 has
    /// GOAWAY instead). Not for a `101 Switching Protocols`, whose `Connection` says
    /// `upgrade`.
    fn finish_http1(self, response: Response, ctx: &RequestInner) -> Response {
        if !self.shared.stopping.is_cancelled() {
            return self.finish(response, ctx);
        }
        let shared = self.shared.clone();
        let mut response = self.finish(response, ctx);
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            inc(&shared.stats.answered_with_close);
        }
        response
    }

    fn dropped(self, ctx: &RequestInner) {
        self.note_hard_stop(ctx);
        inc(&self.shared.stats.dropped_on_disconnect);
        tracing::info!(
            status = CLIENT_CLOSED_REQUEST,
            "client left; handler dropped"
        );
    }

    fn lost(self, ctx: &RequestInner) {
        self.note_hard_stop(ctx);
        inc(&self.shared.stats.lost);
        tracing::debug!("request dropped before its answer");
    }
}

impl Conn {
    /// Marks every byte read so far as accounted for by a request.
    fn account_bytes(&self) {
        self.bytes_accounted
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        // Whatever the request's body left unread is not the next head's.
        self.conn.account_bytes();
        // SeqCst: see the tail loop in `serve` (store buffering, no fence needed).
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.conn.tail_waiting.load(Ordering::SeqCst) {
            self.conn.ended.notify_waiters();
        }
        self.shared
            .stats
            .requests_in_flight
            .fetch_sub(1, Ordering::SeqCst);
        self.shared.stats.wake_drain();
    }
}

/// The builder every connection is served with.
pub(crate) fn builder(max_header_bytes: usize) -> auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder = auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        // Where we can watch the socket ourselves while a handler runs (the disconnect
        // policy decides), hyper must not drop the handler on EOF.
        .half_close(Monitor::SUPPORTED)
        // Slowloris protection is ours (`guard_headers`: one timer per connection instead of
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
