//! [`ConnState`]: what one connection's loop, its I/O and its requests share.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::socket::Monitor;

/// The protocol a connection speaks, as far as its first bytes tell (`ConnState::version`,
/// decided by `counting_io`).
pub(crate) const VERSION_UNKNOWN: u8 = 0;
pub(crate) const VERSION_HTTP1: u8 = 1;
pub(crate) const VERSION_HTTP2: u8 = 2;

/// State of one connection, shared with its requests.
pub(crate) struct ConnState {
    /// Watches the socket for a departed client (made when first needed).
    pub(crate) monitor: Monitor,
    /// Bytes read from the client so far (written only by hyper's reads, see
    /// `counting_io`), and how many of them were accounted for when a request was
    /// dispatched or ended. More read than accounted for, with no request in flight, means
    /// a request head is arriving: the header guard times that.
    pub(crate) bytes_read: AtomicU64,
    pub(crate) bytes_accounted: AtomicU64,
    /// What the connection speaks (`VERSION_*`): no header guard once the HTTP/2 preface
    /// arrived, GOAWAY at drain.
    pub(crate) version: AtomicU8,
    /// Wakes the connection loop when the version becomes known or GOAWAY is wanted.
    pub(crate) events: tokio::sync::Notify,
    /// Set when an HTTP/2 client keeps opening streams past the handler bound.
    pub(crate) goaway_wanted: AtomicBool,
    /// HTTP/2 streams refused on this connection (see `dispatch::HTTP2_MAX_HANDLERS`).
    pub(crate) refused: AtomicUsize,
    /// Requests of this connection still running (including handlers that outlive their
    /// HTTP/2 stream).
    pub(crate) in_flight: AtomicUsize,
    /// Set while the connection task waits for `in_flight` to reach zero after hyper is
    /// done with the connection; a request that ends then notifies `ended`.
    pub(crate) tail_waiting: AtomicBool,
    pub(crate) ended: tokio::sync::Notify,
    /// HTTP/2 handlers whose stream was reset before they answered, running on as tasks
    /// (a `Cooperative` or `Detached` handler must; see `dispatch::StreamHandler`). They live
    /// here so that aborting the connection aborts them.
    handlers: Mutex<JoinSet<()>>,
    /// Set (under the `handlers` lock) when the connection is aborted: a handler whose
    /// stream goes after that is dropped, not handed a task.
    pub(crate) aborted: AtomicBool,
}

impl ConnState {
    pub(crate) fn new(stream: &TcpStream) -> Self {
        ConnState {
            monitor: Monitor::new(stream),
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
            aborted: AtomicBool::new(false),
        }
    }

    /// Marks every byte read so far as accounted for by a request.
    pub(crate) fn account_bytes(&self) {
        self.bytes_accounted
            .store(self.bytes_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The HTTP/2 handler tasks (a panic elsewhere does not poison them for us).
    pub(crate) fn handlers(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.handlers.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
