//! The HTTP server: accepting, serving, and the server's part of the shutdown contract.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use gracefully::CancellationToken;
use gracefully::operation::OperationScope;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::app::HttpApp;
use crate::config::Config;
use crate::config_error::{ConfigError, check_duration, check_header_bytes};
use crate::policy::DisconnectPolicy;
use crate::state::ServerState;
use crate::stats::{DrainReport, ServerReport, Stats};

/// The signals the server obeys, from the host (see `gracefully-host`) or made by hand.
///
/// * `stopping` — drain begins: stop accepting (connections already waiting in the
///   kernel's backlog are still accepted), answer the next request on every keep-alive
///   connection with `Connection: close` (HTTP/2: GOAWAY), close connections that stay
///   idle for the idle grace, end SSE streams and close WebSockets with 1001, let requests
///   in flight finish.
/// * `hard_stop` — cancel begins: every request token (a child of it) fires with
///   [`Shutdown`](gracefully::ReasonKind::Shutdown).
///
/// What still runs after that is the host's to abort (it drops the server's future, which
/// aborts every connection).
#[derive(Debug, Clone)]
pub struct Shutdown {
    /// Fires when the drain begins.
    pub stopping: CancellationToken,
    /// Fires when in-flight work must be cancelled.
    pub hard_stop: CancellationToken,
}

/// An HTTP/1.1 + HTTP/2 server for an axum `Router` (or any tower service), with request
/// tokens, disconnect detection and a graceful drain.
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use gracefully::CancellationSource;
/// use gracefully_axum::{HttpServer, Shutdown};
///
/// # async fn run() -> std::io::Result<()> {
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
///
/// let stopping = CancellationSource::new();
/// let hard_stop = CancellationSource::new();
/// let report = HttpServer::new(listener, app)
///     .run(Shutdown { stopping: stopping.token(), hard_stop: hard_stop.token() })
///     .await;
/// println!("{report}");
/// # Ok(()) }
/// ```
///
/// With `gracefully-host`, register it as a background service instead; the host then
/// drives both signals and records the server's drain in its shutdown report.
///
/// *Anchors:* ASP.NET Core's Kestrel (request aborted token, drain on shutdown);
/// `axum::serve(..).with_graceful_shutdown(..)`, which has no drain deadline, never tells
/// handlers, and does not track WebSockets; Go's `http.Server.Shutdown(ctx)`.
pub struct HttpServer<S = Router> {
    /// Taken by the first run: a server serves once.
    listener: Option<TcpListener>,
    app: S,
    config: Config,
    /// The first setting a setter found out of range (reported when the server starts).
    invalid: Option<ConfigError>,
}

impl<S: HttpApp> HttpServer<S> {
    /// A server for `app` on `listener`.
    pub fn new(listener: TcpListener, app: S) -> Self {
        HttpServer {
            listener: Some(listener),
            app,
            config: Config::default(),
            invalid: None,
        }
    }

    /// The first setting given out of its valid range, if any (see [`ConfigError`]).
    pub fn config_error(&self) -> Option<&ConfigError> {
        self.invalid.as_ref()
    }

    /// Keeps the first problem a setter found.
    fn checked(mut self, check: Result<(), ConfigError>) -> Self {
        if let Err(error) = check {
            self.invalid.get_or_insert(error);
        }
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the server has run already; its listener is closed",
            )),
        }
    }

    /// How long a client may take to send a request's headers (default 10 s), counted from
    /// the first byte of the head — or, on a new connection, from the accept, so a
    /// connection that sends nothing is closed too. Slow clients (slowloris) are
    /// disconnected after it, without holding up others or the shutdown. An HTTP/2
    /// connection is timed until its preface has arrived; idle after that, it stays open
    /// (pooled gRPC and HTTP/2 clients keep connections idle by design).
    ///
    /// Valid: more than 0, at most a day (see [`ConfigError`]).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self.checked(check_duration(
            "header_read_timeout",
            timeout,
            false,
            "10 s",
        ))
    }

    /// How long a keep-alive connection that is idle during the drain stays open
    /// (default 1 s; the hard stop ends it sooner).
    ///
    /// A connection idle on the server's side when the drain begins may have a request on
    /// its way at that instant; closing it at once (as `axum::serve`, hyper and Go's
    /// `Server.Shutdown` do) loses that request. So the connection keeps reading: a request
    /// that arrives is answered with `Connection: close`, and a connection that stays idle
    /// for this grace — no byte arrived and none is waiting in the socket — is closed. So
    /// is one that sent part of a request head and then nothing for a whole grace (it would
    /// otherwise hold the drain until the header-read timeout); at the hard stop, such a
    /// connection is closed at once. Make it longer than a request's trip from your
    /// clients (or load balancer) to the server.
    /// HTTP/2 needs no grace: it gets GOAWAY, which tells the client which streams will
    /// be served.
    ///
    /// Valid: 0 (close idle connections at once, as `axum::serve` does) to a day.
    pub fn idle_grace(mut self, grace: Duration) -> Self {
        self.config.idle_grace = grace;
        self.checked(check_duration("idle_grace", grace, true, "1 s"))
    }

    /// A cooperative timeout for every request (default: none); routes can shorten it with
    /// [`TimeoutLayer`](crate::TimeoutLayer). Valid: more than 0, at most a day.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = Some(timeout);
        self.checked(check_duration("request_timeout", timeout, false, "none"))
    }

    /// Which request headers may carry the caller's remaining budget, narrowing the
    /// request token's deadline (default: `grpc-timeout`, `x-envoy-expected-rq-timeout-ms`
    /// and `x-request-timeout-ms`, no cap below a day, 5 ms kept back from `grpc-timeout`;
    /// see [`IncomingDeadlines`] for why trusting them is safe). [`IncomingDeadlines::none`]
    /// turns it off. A budget never extends a route's timeout; a malformed header is ignored
    /// (logged at `debug`).
    ///
    /// Valid: a [`max`](crate::IncomingDeadlines::max) of more than 0, at most a day; a
    /// [`transit_allowance`](crate::IncomingDeadlines::transit_allowance) of at most a day.
    ///
    /// [`IncomingDeadlines`]: crate::IncomingDeadlines
    /// [`IncomingDeadlines::none`]: crate::IncomingDeadlines::none
    pub fn incoming_deadlines(mut self, deadlines: crate::IncomingDeadlines) -> Self {
        let check = deadlines.check();
        self.config.incoming_deadlines = deadlines;
        self.checked(check)
    }

    /// The disconnect policy of routes that do not set one (default
    /// [`Cooperative`](DisconnectPolicy::Cooperative)).
    pub fn disconnect_policy(mut self, policy: DisconnectPolicy) -> Self {
        self.config.disconnect_policy = policy;
        self
    }

    /// Also puts each request's token into the request's extensions, as a [`RequestToken`]
    /// (default: off).
    ///
    /// Handlers and layers reach the token without it, through the [`RequestToken`]
    /// extractor and [`request_token`]; those work while the server polls the request.
    /// Turn this on for middleware that hands the request to *another task* before the
    /// handler runs (`tower::buffer`, a worker pool), or that looks the token up with
    /// `request.extensions().get::<RequestToken>()`. It costs an extension insert and an
    /// eagerly made token per request (a request answered at once otherwise makes neither).
    /// [`TimeoutLayer`](crate::TimeoutLayer) and
    /// [`DisconnectPolicyLayer`](crate::DisconnectPolicyLayer) still act only on the server's
    /// task: apply them outside (before) such a hop.
    ///
    /// ```
    /// use axum::{Router, extract::Request, middleware::{self, Next}, routing::get};
    /// use gracefully_axum::{HttpServer, RequestToken};
    ///
    /// async fn audit(request: Request, next: Next) -> axum::response::Response {
    ///     let token = request.extensions().get::<RequestToken>().cloned();
    ///     // … hand `request` and `token` to a worker task …
    ///     # let _ = token;
    ///     next.run(request).await
    /// }
    ///
    /// # async fn f() -> std::io::Result<()> {
    /// let app = Router::new().route("/", get(|| async { "hi" })).layer(middleware::from_fn(audit));
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = HttpServer::new(listener, app).token_in_extensions(true);
    /// # let _ = server; Ok(()) }
    /// ```
    ///
    /// [`RequestToken`]: crate::RequestToken
    /// [`request_token`]: crate::request_token
    pub fn token_in_extensions(mut self, on: bool) -> Self {
        self.config.token_in_extensions = on;
        self
    }

    /// Whether each request registers as an operation (default: on). It does when the
    /// server runs inside a recorded operation: as a service of a host with an operations
    /// registry (`HostBuilder::operations`), or run by hand inside
    /// `operations.scope().scoped(server.run(shutdown))`. Each request is then an
    /// operation of kind `Request`, named by its method and path (by its matched route
    /// with [`OperationNameLayer`](crate::OperationNameLayer)), with its deadline, under
    /// the server's service; what its handler begins (queries, outbound calls) runs under
    /// it; it ends completed, cancelled with its token's reason (a departed client:
    /// `Disconnected`, with where that was noticed), failed (a panic, a 5xx answer) or
    /// abandoned (dropped before its answer).
    ///
    /// Turn it off for a server whose requests should not show: the admin listener that
    /// serves the operations page itself ([`admin`](crate::admin) does).
    pub fn record_operations(mut self, on: bool) -> Self {
        self.config.record_operations = on;
        self
    }

    /// The largest request head accepted (default 64 KiB); larger ones are answered
    /// `431`/closed by hyper. Valid: 1 KiB to 4 GiB − 1 (HTTP/2's limit).
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.config.max_header_bytes = bytes;
        self.checked(check_header_bytes(bytes))
    }

    /// Serves until `shutdown.stopping` fires, then drains: stops accepting (new
    /// connections are refused; those already waiting in the backlog are served), answers
    /// each connection's next request with `Connection: close` (HTTP/2: GOAWAY), closes
    /// connections that stay idle for the [idle grace](Self::idle_grace), lets requests in
    /// flight finish (their tokens fire when `shutdown.hard_stop` does), and returns once
    /// every connection has closed.
    ///
    /// A setting out of range ([`config_error`](Self::config_error)) is logged as an error
    /// and nothing is served: the listener is closed and an empty report returned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future aborts every connection and handler at once: that is the
    /// abort phase of a shutdown.
    pub async fn run(mut self, shutdown: Shutdown) -> ServerReport {
        if let Some(error) = &self.invalid {
            tracing::error!(%error, "HTTP server not started");
            return ServerReport::default();
        }
        match self.listener.take() {
            Some(listener) => serve(listener, self.app, self.config, shutdown, None).await,
            None => ServerReport::default(),
        }
    }
}

/// The `gracefully-host` service: `execute` serves until the service's `stopping` token
/// fires, then drains; request tokens are children of the host's hard stop. The drain's
/// steps appear in the service's row of the host's shutdown report (also if the host
/// aborts the server).
///
/// ```no_run
/// use axum::{Router, routing::get};
/// use gracefully_axum::{HttpServer, health_routes};
/// use gracefully_host::Host;
///
/// # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// let host = Host::builder();
/// # let host = host.handle_signals(true);
/// // The lifetime exists once the host is built; routes that need it can be added by
/// // building the host first, or through `Lifetime::current()`.
/// let app = Router::new().route("/", get(|| async { "hello" }));
/// let host = host.service("http", HttpServer::new(listener, app)).build()?;
/// host.run_and_exit().await;
/// # }
/// ```
///
/// A server serves once: if the service is restarted (a [`RestartPolicy`]), the second
/// run fails with an error saying so. A setting out of range fails the service with its
/// [`ConfigError`] before anything is served.
///
/// [`RestartPolicy`]: gracefully_host::RestartPolicy
impl<S: HttpApp> gracefully_host::BackgroundService for HttpServer<S> {
    async fn execute(
        &mut self,
        stopping: CancellationToken,
        service: &gracefully_host::ServiceContext,
    ) -> Result<(), gracefully_host::BoxError> {
        if let Some(error) = &self.invalid {
            return Err(error.clone().into());
        }
        let listener = self.listener.take().ok_or(
            "the HTTP server's listener was used by an earlier run; an HttpServer serves once",
        )?;
        if let Ok(addr) = listener.local_addr() {
            service.detail("listening on", addr);
        }
        let shutdown = Shutdown {
            stopping,
            hard_stop: service.hard_stop(),
        };
        serve(
            listener,
            self.app.clone(),
            self.config.clone(),
            shutdown,
            Some(service.clone()),
        )
        .await;
        Ok(())
    }
}

/// Writes the server's counts into its host report row when `serve` ends — normally or by
/// being dropped in the abort phase.
struct RecordOnExit {
    state: Arc<ServerState>,
    service: Option<gracefully_host::ServiceContext>,
    drain_started: Option<Instant>,
}

impl Drop for RecordOnExit {
    fn drop(&mut self) {
        let Some(service) = &self.service else { return };
        let report = report_of(&self.state.stats);
        let stats = &self.state.stats;
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        service.detail("requests", report.requests);
        if self.drain_started.is_some() {
            service.detail("connections open at drain", load(&stats.open_at_drain));
            service.detail("accepted from the backlog", load(&stats.backlog_accepted));
            service.detail(
                "requests in flight at drain",
                load(&stats.in_flight_at_drain),
            );
            service.detail(
                "answered with Connection: close",
                load(&stats.answered_with_close),
            );
            service.detail("HTTP/2 GOAWAY sent", load(&stats.goaway_sent));
            service.detail("idle connections closed", load(&stats.idle_closed));
        }
        service.detail("requests completed", report.completed);
        let optional = |key: &'static str, n: u64| {
            if n > 0 {
                service.detail(key, n);
            }
        };
        optional("SSE streams ended", load(&stats.sse_streams_ended));
        optional(
            "WebSockets closed (1001)",
            load(&stats.websockets_closed_going_away),
        );
        optional(
            "cancelled at hard stop",
            load(&stats.cancelled_at_hard_stop),
        );
        optional("timed out (504)", report.cancelled_deadline);
        optional("cancelled by shutdown (503)", report.cancelled_shutdown);
        optional("clients left (499)", report.client_left);
        optional("dropped on disconnect", report.dropped_on_disconnect);
        optional("panicked (500)", report.panicked);
        optional("HTTP/2 streams refused", report.streams_refused);
        let still_open = self.state.stats.busy() as u64;
        optional("lost (aborted)", report.lost + still_open);
        if let Some(started) = self.drain_started {
            service.detail(
                "drain took",
                format!("{} ms", started.elapsed().as_millis()),
            );
        }
    }
}

async fn serve<S: HttpApp>(
    listener: TcpListener,
    app: S,
    config: Config,
    shutdown: Shutdown,
    service: Option<gracefully_host::ServiceContext>,
) -> ServerReport {
    // Registered at 0, so a scrape shows it before anything is lost (it should stay 0).
    metrics::counter!("gracefully_http_requests_lost_total").increment(0);
    let abort = gracefully::CancellationSource::new();
    let aborted = abort.token();
    // Cancels `aborted` if this future is dropped before it finishes.
    let _abort_on_drop = abort.drop_guard();
    let builder = crate::dispatch::builder(config.max_header_bytes);
    let operations = if config.record_operations {
        OperationScope::current()
    } else {
        None
    };
    let state = Arc::new(ServerState {
        operations,
        config,
        builder,
        stopping: shutdown.stopping.clone(),
        hard_stop: shutdown.hard_stop.clone(),
        stats: Stats::default(),
        aborted,
        not_ready: service
            .as_ref()
            .map(|service| service.lifetime().stop_requested())
            .unwrap_or_else(|| shutdown.stopping.clone()),
    });
    let mut record = RecordOnExit {
        state: state.clone(),
        service,
        drain_started: None,
    };
    let mut connections = JoinSet::new();
    let stopping = shutdown.stopping.clone();

    loop {
        tokio::select! {
            biased;
            _ = stopping.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    let _ = stream.set_nodelay(true);
                    crate::stats::inc(&state.stats.connections_accepted);
                    connections.spawn(crate::connection::serve(stream, state.clone(), app.clone()));
                }
                Err(error) => accept_error(error).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Drain. Connections the kernel completed before now are served; closing the listener
    // refuses new ones. Each connection sees `stopping` itself (and counts itself in the
    // drain report).
    for stream in accept_backlog(listener) {
        crate::stats::inc(&state.stats.connections_accepted);
        crate::stats::inc(&state.stats.backlog_accepted);
        connections.spawn(crate::connection::serve(stream, state.clone(), app.clone()));
    }
    let started = Instant::now();
    record.drain_started = Some(started);
    tracing::info!(
        connections = state.stats.connections_open.load(Ordering::Relaxed),
        "HTTP server draining: stopped accepting"
    );
    let hard_stop = shutdown.hard_stop.clone();
    let mut hard_stop_seen = false;
    // See `Stats::wake_drain`.
    state.stats.draining.store(true, Ordering::SeqCst);
    loop {
        let quiet = state.stats.quiet.notified();
        let mut quiet = std::pin::pin!(quiet);
        quiet.as_mut().enable();
        // Reap finished connections.
        while connections.try_join_next().is_some() {}
        if connections.is_empty() && state.stats.busy() == 0 {
            break;
        }
        tokio::select! {
            _ = quiet => {}
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = hard_stop.cancelled(), if !hard_stop_seen => {
                hard_stop_seen = true;
                tracing::info!(
                    requests = state.stats.busy(),
                    "HTTP server: hard stop, request tokens cancelled"
                );
            }
        }
    }
    let stats = &state.stats;
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let drain = DrainReport {
        connections_open: load(&stats.open_at_drain),
        idle_closed: load(&stats.idle_closed),
        answered_with_close: load(&stats.answered_with_close),
        backlog_accepted: load(&stats.backlog_accepted),
        goaway_sent: load(&stats.goaway_sent),
        requests_in_flight: load(&stats.in_flight_at_drain),
        websockets_closed: load(&stats.websockets_closed_going_away),
        sse_ended: load(&stats.sse_streams_ended),
        hard_stop_reached: shutdown.hard_stop.is_cancelled(),
        cancelled_at_hard_stop: load(&stats.cancelled_at_hard_stop),
        took: started.elapsed(),
    };
    let mut report = report_of(&state.stats);
    report.drain = Some(drain);
    tracing::info!(%report, "HTTP server stopped");
    report
}

fn report_of(stats: &Stats) -> ServerReport {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    ServerReport {
        connections_accepted: load(&stats.connections_accepted),
        requests: load(&stats.requests_started),
        completed: load(&stats.completed),
        cancelled_deadline: load(&stats.cancelled_deadline),
        cancelled_shutdown: load(&stats.cancelled_shutdown),
        cancelled_other: load(&stats.cancelled_other),
        client_left: load(&stats.client_left),
        dropped_on_disconnect: load(&stats.dropped_on_disconnect),
        lost: load(&stats.lost),
        panicked: load(&stats.panicked),
        streams_refused: load(&stats.streams_refused),
        drain: None,
    }
}

/// Accepts every connection waiting in the kernel's backlog, then closes the listener.
///
/// A client whose handshake the kernel completed has connected as far as it can tell, and
/// may have written its request already: dropping the listener would reset it. Accepting
/// goes on (without waiting) until the backlog is empty; the listener is closed right after,
/// so a connection can slip in only between those two system calls.
fn accept_backlog(listener: TcpListener) -> Vec<tokio::net::TcpStream> {
    let mut accepted = Vec::new();
    // Out of the runtime's hands: a plain non-blocking accept sees the backlog as it is now,
    // whether or not the runtime has been told it is readable.
    let Ok(listener) = listener.into_std() else {
        return accepted;
    };
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                let ready = stream
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpStream::from_std(stream));
                if let Ok(stream) = ready {
                    let _ = stream.set_nodelay(true);
                    accepted.push(stream);
                }
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if error.kind() == io::ErrorKind::ConnectionAborted => {}
            // `WouldBlock`: the backlog is empty. Anything else (out of descriptors): stop.
            Err(_) => break,
        }
    }
    drop(listener);
    accepted
}

/// Accept errors are usually transient (the process ran out of file descriptors, a
/// connection was reset before we accepted it): log, pause briefly, keep serving.
async fn accept_error(error: io::Error) {
    tracing::warn!(%error, "accept failed; retrying");
    tokio::time::sleep(Duration::from_millis(10)).await;
}
