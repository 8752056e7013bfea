//! [`ServerState`]: what every connection and request of one server reads.

use gracefully::CancellationToken;
use gracefully::operation::OperationScope;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::config::Config;
use crate::stats::Stats;

/// What every connection and request of one server shares: its settings, its signals and
/// its counters. Made once per `HttpServer::run`; connections and request contexts hold an
/// `Arc` of it.
pub(crate) struct ServerState {
    pub(crate) config: Config,
    /// How hyper serves each connection (see `dispatch::builder`).
    pub(crate) builder: auto::Builder<TokioExecutor>,
    /// Fires when the drain begins.
    pub(crate) stopping: CancellationToken,
    /// Fires when the drain budget is spent: the parent of every request's token.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) stats: Stats,
    /// Fires when `run`'s future is dropped (the abort phase): ends long-lived streams that
    /// run in tasks of their own (WebSockets).
    pub(crate) aborted: CancellationToken,
    /// Fires when readiness ends: the host's `stop_requested` (before the pre-stop delay),
    /// or `stopping` for a server run by hand.
    pub(crate) not_ready: CancellationToken,
    /// Where each request registers as an operation: the scope the server runs in (its host
    /// service's, with an operations registry installed), unless turned off.
    pub(crate) operations: Option<OperationScope>,
}
