//! Counters the server keeps for its shutdown report and for tests.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gracefully::ReasonKind;
use tokio::sync::Notify;

/// Live counters, shared by the accept loop, connections and requests.
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_open: AtomicUsize,
    pub(crate) requests_started: AtomicU64,
    pub(crate) requests_in_flight: AtomicUsize,
    pub(crate) completed: AtomicU64,
    pub(crate) cancelled_deadline: AtomicU64,
    pub(crate) cancelled_shutdown: AtomicU64,
    pub(crate) cancelled_other: AtomicU64,
    pub(crate) client_left: AtomicU64,
    pub(crate) dropped_on_disconnect: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) panicked: AtomicU64,
    pub(crate) long_lived_open: AtomicUsize,
    pub(crate) websockets_closed_going_away: AtomicU64,
    pub(crate) sse_streams_ended: AtomicU64,
    /// Connections open when the drain began (each counts itself when it sees `stopping`).
    pub(crate) open_at_drain: AtomicU64,
    /// Connections closed during the drain because they stayed idle for the idle grace
    /// (or were idle when the hard stop came).
    pub(crate) idle_closed: AtomicU64,
    /// HTTP/1 answers given with `Connection: close` during the drain.
    pub(crate) answered_with_close: AtomicU64,
    /// Connections accepted from the kernel's backlog after accepting stopped.
    pub(crate) backlog_accepted: AtomicU64,
    /// HTTP/2 connections sent GOAWAY (drain, or a reset flood).
    pub(crate) goaway_sent: AtomicU64,
    /// HTTP/2 streams refused (`REFUSED_STREAM`) because the connection already ran as many
    /// handlers as its stream limit (handlers outliving reset streams count).
    pub(crate) streams_refused: AtomicU64,
    /// Requests in flight on those connections when they saw `stopping`.
    pub(crate) in_flight_at_drain: AtomicU64,
    /// Requests whose tokens the hard stop cancelled (their reason is the hard stop's).
    pub(crate) cancelled_at_hard_stop: AtomicU64,
    /// Notified whenever a request or long-lived stream ends (the drain waits on it).
    pub(crate) quiet: Notify,
    /// Set (SeqCst) by the server's drain loop before it first reads the counters.
    pub(crate) draining: std::sync::atomic::AtomicBool,
}

pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    pub(crate) fn record_cancelled(&self, kind: ReasonKind) {
        inc(match kind {
            ReasonKind::DeadlineExceeded => &self.cancelled_deadline,
            ReasonKind::Shutdown => &self.cancelled_shutdown,
            ReasonKind::Disconnected => &self.client_left,
            _ => &self.cancelled_other,
        });
    }

    /// Wakes the server's drain loop after a request, stream or connection ended (the
    /// caller decremented its counter with SeqCst). Only the drain loop waits on `quiet`,
    /// and only once it set `draining`, so before that this is one load instead of a lock.
    ///
    /// Store buffering: we decremented, then read `draining`; the drain loop set `draining`,
    /// then reads the counters — all SeqCst, so in their single order one side sees the
    /// other's write, and a drain never sleeps on a count that already reached zero.
    pub(crate) fn wake_drain(&self) {
        if self.draining.load(Ordering::SeqCst) {
            self.quiet.notify_waiters();
        }
    }

    pub(crate) fn busy(&self) -> usize {
        self.requests_in_flight.load(Ordering::Acquire)
            + self.long_lived_open.load(Ordering::Acquire)
    }
}

/// What the server did, for the host's shutdown report (and `HttpServer::run`'s caller).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerReport {
    /// Connections accepted over the server's life.
    pub connections_accepted: u64,
    /// Requests started over the server's life.
    pub requests: u64,
    /// Requests that ran to an answer (whatever its status), not counting cancellations.
    pub completed: u64,
    /// Requests whose handler stopped because of a route timeout (answered 504).
    pub cancelled_deadline: u64,
    /// Requests whose handler stopped because the server was shutting down (503).
    pub cancelled_shutdown: u64,
    /// Requests whose handler stopped for another cancellation reason (503).
    pub cancelled_other: u64,
    /// Requests whose client left while the handler ran (logged 499); their handlers were
    /// told (`Cooperative`) or kept running (`Detached`).
    pub client_left: u64,
    /// Requests whose handler was dropped when the client left (`DisconnectPolicy::Drop`).
    pub dropped_on_disconnect: u64,
    /// Requests that never finished: dropped with their connection (abort, or a broken
    /// connection under HTTP/2 without a cooperative handler).
    pub lost: u64,
    /// Handlers that panicked (answered 500, or in the app's own terms after [`mark_panicked`](crate::mark_panicked)).
    pub panicked: u64,
    /// HTTP/2 streams refused with `REFUSED_STREAM` because the connection already ran as
    /// many handlers as its stream limit allows — handlers that outlive their reset stream
    /// count (the HTTP/2 rapid-reset bound, CVE-2023-44487). Nothing of them ran.
    pub streams_refused: u64,
    /// The drain, if shutdown began.
    pub drain: Option<DrainReport>,
}

/// The server's side of a shutdown, step by step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainReport {
    /// Connections open when the server stopped accepting.
    pub connections_open: u64,
    /// Keep-alive connections closed because they stayed idle for the idle grace
    /// ([`HttpServer::idle_grace`](crate::HttpServer::idle_grace)) — or sent part of a
    /// request head and then nothing for that long — or were so when the hard stop came.
    /// (A connection idle at drain start is not closed at once: a request may be on its
    /// way.)
    pub idle_closed: u64,
    /// HTTP/1 answers given with `Connection: close` during the drain (each closed its
    /// connection once written).
    pub answered_with_close: u64,
    /// Connections that were waiting in the kernel's accept backlog when accepting
    /// stopped: accepted and served rather than reset.
    pub backlog_accepted: u64,
    /// HTTP/2 connections sent GOAWAY (RFC 9113 §6.8: streams the client opened before it
    /// saw it are served).
    pub goaway_sent: u64,
    /// Requests in flight when the drain began (they were let finish).
    pub requests_in_flight: u64,
    /// WebSockets closed with code 1001 (going away).
    pub websockets_closed: u64,
    /// SSE streams ended.
    pub sse_ended: u64,
    /// Whether the hard stop fired before the last connection closed.
    pub hard_stop_reached: bool,
    /// Requests whose tokens the hard stop cancelled.
    pub cancelled_at_hard_stop: u64,
    /// Time from the stop of accepting to the last connection closing.
    pub took: Duration,
}

impl fmt::Display for ServerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} connections, {} requests: {} completed, {} timed out (504), {} cancelled by shutdown (503), {} other cancellations, {} clients left (499), {} dropped on disconnect, {} lost, {} panicked, {} HTTP/2 streams refused",
            self.connections_accepted,
            self.requests,
            self.completed,
            self.cancelled_deadline,
            self.cancelled_shutdown,
            self.cancelled_other,
            self.client_left,
            self.dropped_on_disconnect,
            self.lost,
            self.panicked,
            self.streams_refused,
        )?;
        if let Some(drain) = &self.drain {
            write!(f, "; drain: {drain}")?;
        }
        Ok(())
    }
}

impl fmt::Display for DrainReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "stopped accepting with {} connections open and accepted {} more from the backlog; let {} requests in flight finish; answered {} with Connection: close; sent {} GOAWAY; closed {} idle after the grace",
            self.connections_open,
            self.backlog_accepted,
            self.requests_in_flight,
            self.answered_with_close,
            self.goaway_sent,
            self.idle_closed
        )?;
        if self.websockets_closed > 0 || self.sse_ended > 0 {
            write!(
                f,
                "; ended {} SSE streams, closed {} WebSockets (1001)",
                self.sse_ended, self.websockets_closed
            )?;
        }
        if self.hard_stop_reached {
            write!(
                f,
                "; hard stop cancelled {} requests",
                self.cancelled_at_hard_stop
            )?;
        } else {
            write!(f, "; all finished before the hard stop")?;
        }
        write!(f, "; drained in {} ms", self.took.as_millis())
    }
}
