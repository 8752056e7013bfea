//! Long-lived responses that end cleanly when the drain begins: Server-Sent Events and
//! WebSockets. Without this they hold a shutdown until its hard timeout (axum #2673) or are
//! not tracked at all (axum #3003).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use axum::extract::FromRequestParts;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream;
use gracefully::CancellationToken;
use http::request::Parts;

use crate::conn_state::ConnState;
use crate::request::with_current;
use crate::socket::Peek;
use crate::state::ServerState;
use crate::stats::inc;

/// The server's drain, as an axum extractor: for responses that outlive an ordinary
/// request (SSE, WebSockets) and must end when shutdown begins.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, response::sse::Event, routing::get};
/// use futures_util::stream::{self, StreamExt};
/// use gracefully_axum::Drain;
///
/// async fn ticks(drain: Drain) -> impl axum::response::IntoResponse {
///     let ticks = stream::unfold(0u64, |n| async move {
///         tokio::time::sleep(Duration::from_secs(1)).await;
///         Some((Ok::<_, std::convert::Infallible>(Event::default().data(n.to_string())), n + 1))
///     });
///     drain.sse(ticks) // ends (and the response completes) when the drain begins
/// }
///
/// let app: Router = Router::new().route("/ticks", get(ticks));
/// ```
///
/// Outside [`HttpServer`](crate::HttpServer) the drain never begins.
#[derive(Clone)]
pub struct Drain {
    server: Option<Arc<ServerState>>,
    /// The request's HTTP/1 connection, already watched (see `from_request_parts`).
    conn: Option<Arc<ConnState>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Drain {
    type Rejection = Infallible;

    async fn from_request_parts(_: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let (server, conn) = with_current(|ctx| {
            // Start watching the connection now, while the request is being handled (what
            // the socket module's safety argument needs): a later watch of it (`sse`) only
            // reuses this one, whenever it is made.
            let conn = ctx
                .http1_conn
                .clone()
                .filter(|conn| conn.monitor.watch().is_some());
            (Some(ctx.server.clone()), conn)
        })
        .unwrap_or_default();
        Ok(Drain { server, conn })
    }
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("draining", &self.stopping().is_cancelled())
            .finish()
    }
}

impl Drain {
    /// Fires when the drain begins (the host's `stopping`).
    pub fn stopping(&self) -> CancellationToken {
        self.server
            .as_ref()
            .map(|s| s.stopping.clone())
            .unwrap_or_default()
    }

    /// An SSE response over `stream` that ends when the drain begins (the client sees the
    /// stream finish and may reconnect elsewhere), tracked by the server until then. It
    /// also ends as soon as its client leaves, even while `stream` has nothing to send:
    /// hyper only notices a departed client when it next writes, so without this a feed
    /// that is quiet kept every abandoned connection (its socket, its memory) open.
    pub fn sse<S, E>(&self, stream: S) -> Sse<DrainingStream<S>>
    where
        S: Stream<Item = Result<Event, E>> + Send + 'static,
        E: Into<axum::BoxError>,
    {
        let departed = self
            .conn
            .as_ref()
            .and_then(|conn| conn.monitor.watch())
            .map(|watch| Box::pin(watch) as Pin<Box<dyn Future<Output = Peek> + Send>>);
        Sse::new(DrainingStream {
            stream,
            stopping: self.stopping().cancelled_owned(),
            departed,
            guard: LongLived::new(self.server.clone()),
            ended: false,
        })
    }

    /// Accepts a WebSocket and runs `handler` with a [`GracefulWebSocket`]: once the drain
    /// begins, its `recv` and `send` close the socket with code 1001 (going away) and report
    /// the end, so the handler returns. At the hard stop — the cut every request gets —
    /// `recv` and `send` give up even if they are stuck (a client that stopped reading), so
    /// the session ends without waiting for the host to abort the server. The session is
    /// tracked by the server's drain, and ended by force if the server is aborted.
    pub fn websocket<F, Fut>(&self, upgrade: WebSocketUpgrade, handler: F) -> Response
    where
        F: FnOnce(GracefulWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let server = self.server.clone();
        let stopping = self.stopping();
        let hard_stop = server
            .as_ref()
            .map(|s| s.hard_stop.clone())
            .unwrap_or_default();
        let aborted = server
            .as_ref()
            .map(|s| s.aborted.clone())
            .unwrap_or_default();
        // Counted from now, not from when the upgrade task first runs: in between, neither the
        // request nor the session would hold the drain, which could end without a 1001.
        // (axum drops the closure, and with it the guard, if the upgrade fails.)
        let guard = LongLived::new(server.clone());
        upgrade
            .on_upgrade(move |socket| async move {
                let session = GracefulWebSocket {
                    socket,
                    stopping,
                    hard_stop,
                    server,
                    closed: false,
                };
                // axum runs this in a task of its own: end it if the server is aborted.
                let _ = aborted.run_until_cancelled(handler(session)).await;
                drop(guard);
            })
            .into_response()
    }
}

/// Counts a long-lived stream while it is open, so the drain waits for it.
struct LongLived(Option<Arc<ServerState>>);

impl LongLived {
    fn new(server: Option<Arc<ServerState>>) -> Self {
        if let Some(server) = &server {
            server.stats.long_lived_open.fetch_add(1, Ordering::AcqRel);
        }
        LongLived(server)
    }
}

impl Drop for LongLived {
    fn drop(&mut self) {
        if let Some(server) = &self.0 {
            server.stats.long_lived_open.fetch_sub(1, Ordering::SeqCst);
            server.stats.wake_drain();
        }
    }
}

pin_project_lite::pin_project! {
    /// A stream that ends when the server's drain begins. Made by [`Drain::sse`].
    pub struct DrainingStream<S> {
        #[pin]
        stream: S,
        stopping: gracefully::WaitForCancellationOwned,
        // Resolves when the client of an HTTP/1 connection leaves; `None` on HTTP/2 (a reset
        // stream drops the response) and once the client was seen sending.
        departed: Option<Pin<Box<dyn Future<Output = Peek> + Send>>>,
        guard: LongLived,
        ended: bool,
    }
}

impl<S: Stream> Stream for DrainingStream<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        if *this.ended {
            return Poll::Ready(None);
        }
        if Pin::new(this.stopping).poll(cx).is_ready() {
            *this.ended = true;
            if let Some(server) = &this.guard.0 {
                inc(&server.stats.sse_streams_ended);
            }
            return Poll::Ready(None);
        }
        if let Some(departed) = this.departed {
            match departed.as_mut().poll(cx) {
                Poll::Ready(Peek::Gone) => {
                    // Ending the body lets hyper finish the response, find the connection
                    // closed and drop it.
                    *this.ended = true;
                    return Poll::Ready(None);
                }
                // The client is there and sending (a pipelined request): nothing more to
                // learn from its socket.
                Poll::Ready(Peek::Data) => *this.departed = None,
                Poll::Pending => {}
            }
        }
        let next = this.stream.poll_next(cx);
        if let Poll::Ready(None) = next {
            *this.ended = true;
        }
        next
    }
}

/// A WebSocket that closes itself with code 1001 (going away) when the server drains.
/// Made by [`Drain::websocket`].
pub struct GracefulWebSocket {
    socket: WebSocket,
    stopping: CancellationToken,
    /// The hard stop: cuts a `recv` or `send` that would otherwise hold the drain.
    hard_stop: CancellationToken,
    server: Option<Arc<ServerState>>,
    closed: bool,
}

impl std::fmt::Debug for GracefulWebSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GracefulWebSocket")
            .field("closed", &self.closed)
            .finish()
    }
}

impl GracefulWebSocket {
    /// The next message; `None` when the client closed the socket, when the drain began
    /// (after sending the 1001 close frame), or at the hard stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as `WebSocket::recv`.
    pub async fn recv(&mut self) -> Option<Result<Message, axum::Error>> {
        if self.closed {
            return None;
        }
        let stopping = self.stopping.clone();
        let hard_stop = self.hard_stop.clone();
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => {
                self.cut();
                None
            }
            _ = stopping.cancelled() => {
                self.going_away().await;
                None
            }
            message = self.socket.recv() => {
                if matches!(message, None | Some(Ok(Message::Close(_)))) {
                    self.closed = true;
                }
                message
            }
        }
    }

    /// Sends a message, unless the drain began: then the socket is closed with 1001 and an
    /// error is returned. At the hard stop a send still waiting (the client does not read)
    /// gives up with an error.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe, as `WebSocket::send`: a send dropped (or cut at the hard stop)
    /// midway may have written part of the message.
    pub async fn send(&mut self, message: Message) -> Result<(), axum::Error> {
        if self.stopping.is_cancelled() || self.closed {
            self.going_away().await;
            return Err(axum::Error::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "the server is shutting down; the WebSocket was closed (1001)",
            )));
        }
        let hard_stop = self.hard_stop.clone();
        tokio::select! {
            biased;
            _ = hard_stop.cancelled() => {
                self.cut();
                Err(axum::Error::new(std::io::Error::new(
                    std::io::ErrorKind::ConnectionAborted,
                    "the server's drain budget is spent; the WebSocket was cut",
                )))
            }
            sent = self.socket.send(message) => sent,
        }
    }

    /// The hard stop ended the session: nothing more is sent (the socket may be stuck).
    fn cut(&mut self) {
        if !self.closed {
            self.closed = true;
            if let Some(server) = &self.server {
                inc(&server.stats.cancelled_at_hard_stop);
            }
        }
    }

    /// Fires when the drain begins (for handlers that select on it themselves).
    pub fn stopping(&self) -> &CancellationToken {
        &self.stopping
    }

    async fn going_away(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        let frame = CloseFrame {
            code: close_code::AWAY,
            reason: "server shutting down".into(),
        };
        // The close frame too may wait on a client that does not read: the hard stop cuts it.
        let hard_stop = self.hard_stop.clone();
        let sent = tokio::select! {
            biased;
            _ = hard_stop.cancelled() => false,
            sent = self.socket.send(Message::Close(Some(frame))) => sent.is_ok(),
        };
        if let Some(server) = &self.server {
            if sent {
                inc(&server.stats.websockets_closed_going_away);
            } else if hard_stop.is_cancelled() {
                inc(&server.stats.cancelled_at_hard_stop);
            }
        }
    }
}
