//! [`RequestAccount`]: one request's place in the server's and its connection's counts,
//! from its start to its end, and how it ended (for the report and the logs).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use crate::conn_state::ConnState;
use crate::request::RequestContext;
use crate::response::{CLIENT_CLOSED_REQUEST, CancelledMarker};
use crate::state::ServerState;
use crate::stats::inc;

/// Marks a 500 answer made from a handler panic.
#[derive(Clone, Copy)]
pub(crate) struct PanicMarker;

/// Marks `response` as the answer to a handler panic, so the server counts it with the
/// panics (`panicked (500)` in the report) whatever its status. For an app that answers a
/// panic in its own protocol — gracefully-tonic answers gRPC `INTERNAL` — after catching it
/// itself; a plain handler's panic is caught and answered 500 by the server.
///
/// *Anchors:* tower-http's `CatchPanicLayer` with a custom response; the HTTP server keeps
/// serving either way.
pub fn mark_panicked(response: &mut Response) {
    response.extensions_mut().insert(PanicMarker);
}

pub(crate) fn panic_response(panic: Box<dyn std::any::Any + Send>) -> Response {
    let message = gracefully_host::panic_message(&*panic);
    tracing::error!(panic = %message, "request handler panicked");
    let mut response = StatusCode::INTERNAL_SERVER_ERROR.into_response();
    mark_panicked(&mut response);
    response
}

/// Accounts for one request from start to end. Its place in the in-flight counts is
/// released when it drops, whatever happens; the owner reports how it ended first
/// ([`finish`](RequestAccount::finish), [`dropped`](RequestAccount::dropped) or [`lost`](RequestAccount::lost)).
pub(crate) struct RequestAccount {
    state: Arc<ServerState>,
    pub(crate) conn: Arc<ConnState>,
    client_left: AtomicBool,
}

impl RequestAccount {
    pub(crate) fn start(state: Arc<ServerState>, conn: Arc<ConnState>) -> Self {
        inc(&state.stats.requests_started);
        state
            .stats
            .requests_in_flight
            .fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        RequestAccount {
            state,
            conn,
            client_left: AtomicBool::new(false),
        }
    }

    pub(crate) fn has_client_left(&self) -> bool {
        self.client_left.load(Ordering::Relaxed)
    }

    pub(crate) fn client_left(&self) {
        self.client_left.store(true, Ordering::Relaxed);
    }

    /// Counts the request if the hard stop cancelled its token.
    fn note_hard_stop(&self, ctx: &RequestContext) {
        if let Some(source) = ctx.source_if_made()
            && let (Some(ours), Some(hard)) =
                (source.as_token().reason(), self.state.hard_stop.reason())
            && ours.same_as(&hard)
        {
            inc(&self.state.stats.cancelled_at_hard_stop);
        }
    }

    /// Counts how the request ended, from its answer. `http1`: during the drain the answer
    /// gets `Connection: close`, so hyper closes the connection once it is written (HTTP/2
    /// has GOAWAY instead) — not a `101 Switching Protocols`, whose `Connection` says
    /// `upgrade`.
    pub(crate) fn finish(self, response: &mut Response, ctx: &RequestContext, http1: bool) {
        self.note_hard_stop(ctx);
        let stats = &self.state.stats;
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
        if http1
            && self.state.stopping.is_cancelled()
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            inc(&stats.answered_with_close);
        }
    }

    pub(crate) fn dropped(self, ctx: &RequestContext) {
        self.note_hard_stop(ctx);
        inc(&self.state.stats.dropped_on_disconnect);
        tracing::info!(
            status = CLIENT_CLOSED_REQUEST,
            "client left; handler dropped"
        );
    }

    pub(crate) fn lost(self, ctx: &RequestContext) {
        self.note_hard_stop(ctx);
        inc(&self.state.stats.lost);
        metrics::counter!("gracefully_http_requests_lost_total").increment(1);
        tracing::debug!("request dropped before its answer");
    }
}

impl Drop for RequestAccount {
    fn drop(&mut self) {
        // Whatever the request's body left unread is not the next head's.
        self.conn.account_bytes();
        // SeqCst: see the tail loop in `connection::serve` (store buffering, no fence
        // needed).
        self.conn.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.conn.tail_waiting.load(Ordering::SeqCst) {
            self.conn.ended.notify_waiters();
        }
        self.state
            .stats
            .requests_in_flight
            .fetch_sub(1, Ordering::SeqCst);
        self.state.stats.wake_drain();
    }
}
