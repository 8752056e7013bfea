//! One connection's life: hyper serves it; the header guard times slow heads; at drain it
//! answers with `Connection: close` (HTTP/2: GOAWAY) and closes once idle for the grace;
//! and it ends only when its last handler has.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::app::HttpApp;
use crate::conn_state::{ConnState, VERSION_HTTP1, VERSION_HTTP2};
use crate::counting_io::CountingStream;
use crate::dispatch::HyperService;
use crate::header_guard::guard_headers;
use crate::state::ServerState;
use crate::stats::inc;
use crate::wake_gate::WakeGate;

/// Serves one accepted connection until it closes, draining it when `stopping` fires.
pub(crate) async fn serve<S: HttpApp>(stream: TcpStream, state: Arc<ServerState>, app: S) {
    let _open = OpenConnection::new(&state);
    let conn = Arc::new(ConnState::new(&stream));
    let service = HyperService {
        app,
        state: state.clone(),
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
        let stream = CountingStream::new(stream, conn.clone());
        let connection = state
            .builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let stopping = state.stopping.clone();
        let hard_stop = state.hard_stop.clone();
        let header_timeout = state.config.header_read_timeout;
        // One guard for the connection's whole life: the drain does not restart a slow
        // client's clock.
        let guard = guard_headers(&conn, header_timeout);
        let mut guard = std::pin::pin!(guard);
        // The drain's idle grace (armed when the drain begins; see `HttpServer::idle_grace`).
        let grace = state.config.idle_grace;
        let idle_timer = tokio::time::sleep(grace);
        let mut idle_timer = std::pin::pin!(idle_timer);
        let mut draining: Option<IdleWatch> = None;
        // Whether hyper was told to shut the connection down (GOAWAY, or close when idle).
        let mut shutting_down = false;
        // HTTP/2: GOAWAY went out. hyper then closes once the client answered its ping and
        // the streams ended; a client that never answers (frozen, or cut off without a
        // close) would hold the connection, and the drain, to the abort. So the grace and
        // the hard stop keep watching it: quiet for a grace, or at the hard stop, it closes.
        let mut goaway_sent = false;
        // Bytes read from the client when GOAWAY went out: a client that is there answers
        // hyper's ping at once, so one byte since means it is alive (and may be reading a
        // long response body, which `in_flight` does not count): hyper is left to finish.
        let mut goaway_bytes = 0u64;
        let mut hard_stop_seen = false;
        // hyper's connection wakes the task at least once per request; the other signals
        // wake it rarely, and sit behind a gate so that a request does not pay for polling
        // them (see `WakeGate`).
        let mut gate = WakeGate::new();
        loop {
            let signals = async {
                // `biased`: each branch fires once, or is disabled once it did; no fairness
                // is needed, and the random start would cost a thread-local look-up.
                tokio::select! {
                    biased;
                    () = guard.as_mut() => Signal::SlowHead,
                    _ = stopping.cancelled(), if draining.is_none() => Signal::Stopping,
                    // Only HTTP/2 (or a connection whose version is not known yet) has
                    // events: an HTTP/1 connection stops listening once its first bytes told.
                    () = conn.events.notified(),
                        if conn.version.load(Ordering::Acquire) != VERSION_HTTP1 => Signal::Event,
                    () = idle_timer.as_mut(),
                        if draining.is_some() && (!shutting_down || goaway_sent) => {
                        Signal::IdleGraceOver
                    }
                    _ = hard_stop.cancelled(),
                        if draining.is_some()
                            && !hard_stop_seen
                            && (!shutting_down || goaway_sent) => {
                        Signal::HardStop
                    }
                }
            };
            let signal = tokio::select! {
                biased;
                result = connection.as_mut() => {
                    log_connection_end(result);
                    break;
                }
                signal = gate.wait(signals) => signal,
            };
            match signal {
                Signal::SlowHead => {
                    tracing::debug!("client too slow sending request headers; closing");
                    break;
                }
                Signal::Stopping => {
                    let busy = conn.in_flight.load(Ordering::Acquire);
                    inc(&state.stats.open_at_drain);
                    state
                        .stats
                        .in_flight_at_drain
                        .fetch_add(busy as u64, Ordering::Relaxed);
                    // HTTP/2: GOAWAY now; the client learns which streams are served. HTTP/1
                    // (or not known yet): nothing is closed now; answers carry
                    // `Connection: close` (see `RequestAccount::finish`) and an idle
                    // connection is closed after the grace.
                    if conn.version.load(Ordering::Acquire) == VERSION_HTTP2 && !shutting_down {
                        shutting_down = true;
                        goaway_sent = true;
                        goaway_bytes = conn.bytes_read.load(Ordering::Relaxed);
                        inc(&state.stats.goaway_sent);
                        connection.as_mut().graceful_shutdown();
                    }
                    draining = Some(IdleWatch::observe(&conn));
                    idle_timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + grace);
                }
                Signal::Event => {
                    let http2 = conn.version.load(Ordering::Acquire) == VERSION_HTTP2;
                    let goaway =
                        conn.goaway_wanted.load(Ordering::Acquire) || (http2 && draining.is_some());
                    if goaway && !shutting_down {
                        shutting_down = true;
                        goaway_sent = http2;
                        goaway_bytes = conn.bytes_read.load(Ordering::Relaxed);
                        inc(&state.stats.goaway_sent);
                        connection.as_mut().graceful_shutdown();
                    }
                }
                Signal::IdleGraceOver => {
                    let now = IdleWatch::observe(&conn);
                    let before = draining.replace(now);
                    let stalled = before.is_some_and(|before| {
                        before.quiet && now.quiet && before.bytes == now.bytes
                    });
                    if goaway_sent {
                        if stalled && now.bytes == goaway_bytes {
                            // GOAWAY went out, and for a whole grace the client sent not a
                            // byte (not even the answer to hyper's ping) with nothing of its
                            // in flight: frozen, or gone without a close. Close it. (A
                            // client that answered is alive: hyper closes once its streams,
                            // response bodies included, are done.)
                            inc(&state.stats.idle_closed);
                            tracing::debug!(
                                "HTTP/2 client silent for the idle grace after GOAWAY; closing"
                            );
                            break;
                        }
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + grace);
                    } else if stalled && now.idle {
                        // Idle for a whole grace, and nothing waits in the socket: hyper
                        // closes an idle connection at once.
                        shutting_down = true;
                        inc(&state.stats.idle_closed);
                        connection.as_mut().graceful_shutdown();
                    } else if stalled {
                        // Part of a request head, and not one byte more for a whole grace:
                        // a client that stopped sending (hyper would wait for the rest
                        // until the header-read timeout, holding the drain). No request of
                        // it was accepted; close it.
                        inc(&state.stats.idle_closed);
                        tracing::debug!("request head stalled during the drain; closing");
                        break;
                    } else {
                        idle_timer
                            .as_mut()
                            .reset(tokio::time::Instant::now() + grace);
                    }
                }
                Signal::HardStop => {
                    hard_stop_seen = true;
                    let now = IdleWatch::observe(&conn);
                    if goaway_sent {
                        // The drain budget is spent: an HTTP/2 connection whose client has
                        // not sent a byte since GOAWAY, with nothing in flight, closes now; a
                        // busy one is looked at again after a grace (its requests' tokens
                        // fire now); one whose client answered is hyper's to finish.
                        if now.quiet && now.bytes == goaway_bytes {
                            inc(&state.stats.idle_closed);
                            break;
                        }
                        continue;
                    }
                    // The drain budget is spent: the grace ends too. An idle connection
                    // closes now; a busy one after its answer (which carries
                    // `Connection: close`).
                    shutting_down = true;
                    if now.idle {
                        inc(&state.stats.idle_closed);
                    } else if now.quiet {
                        // Only part of a request head (no request to answer): hyper would
                        // wait for the rest; the drain budget is spent, so close now.
                        inc(&state.stats.idle_closed);
                        break;
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
        // Store buffering with `RequestAccount::drop` (its SeqCst decrement, then its SeqCst load
        // of `tail_waiting`; our SeqCst store above, then this SeqCst load): in the single
        // order of SeqCst operations one of us sees the other's write, so we never sleep
        // on a count that already reached zero.
        if conn.in_flight.load(Ordering::SeqCst) == 0 {
            break;
        }
        ended.await;
    }
}

/// What woke the connection, other than hyper's connection itself.
enum Signal {
    /// The header guard: a client took too long to send a request head.
    SlowHead,
    /// The drain began.
    Stopping,
    /// `ConnState::events`: the version became known, or GOAWAY is wanted.
    Event,
    /// A draining connection's idle grace passed (it may have been busy meanwhile).
    IdleGraceOver,
    /// The drain budget is spent.
    HardStop,
}

/// One look at a draining connection, for the idle grace: closed only after two looks a
/// grace apart that both found it quiet with no byte read in between.
#[derive(Clone, Copy)]
struct IdleWatch {
    bytes: u64,
    /// No request in flight and nothing waiting in the socket (a request hyper has not
    /// read yet): nothing to answer now.
    quiet: bool,
    /// Quiet, and no part of a request head read either.
    idle: bool,
}

impl IdleWatch {
    fn observe(conn: &ConnState) -> IdleWatch {
        let bytes = conn.bytes_read.load(Ordering::Relaxed);
        let quiet = conn.in_flight.load(Ordering::Acquire) == 0 && !conn.monitor.bytes_waiting();
        let idle = quiet && bytes == conn.bytes_accounted.load(Ordering::Relaxed);
        IdleWatch { bytes, quiet, idle }
    }
}

struct AbortHandlersOnDrop(Arc<ConnState>);

impl Drop for AbortHandlersOnDrop {
    fn drop(&mut self) {
        let mut handlers = self.0.handlers();
        self.0.aborted.store(true, Ordering::Release);
        handlers.abort_all();
        drop(handlers);
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

struct OpenConnection<'a>(&'a ServerState);

impl<'a> OpenConnection<'a> {
    fn new(state: &'a ServerState) -> Self {
        state.stats.connections_open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(state)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.stats.connections_open.fetch_sub(1, Ordering::SeqCst);
        self.0.stats.wake_drain();
    }
}
