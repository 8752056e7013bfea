//! What the pool knows of its settings: the values
//! [`GracefulPoolOptions`](crate::GracefulPoolOptions) hands over when it builds the pool,
//! [`ServerDeadline`], and the defaults.

use std::time::Duration;

/// How long the pool waits, after cancelling a statement, for the server to confirm it
/// stopped before it gives up on the connection: Npgsql's default `Cancellation Timeout`
/// (2 s). Set with
/// [`GracefulPoolOptions::cancellation_timeout`](crate::GracefulPoolOptions::cancellation_timeout).
pub const DEFAULT_CANCELLATION_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a connection may have sat in the pool's idle list and still be handed out
/// without the ping of `test_before_acquire`: HikariCP's `aliveBypassWindowMs` default.
///
/// A connection that went back less than this ago was just used, and its release was
/// checked (see `GracefulPoolOptions::verify_on_release`); what the ping finds — a server
/// that restarted, a proxy or firewall that dropped an idle connection — happens to
/// connections that sat idle. Measured with `cargo bench -p gracefully-sqlx --bench
/// overhead`, a ping on every checkout cost a round trip per operation (the crate README).
pub(crate) const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// Where the token's [`deadline`](gracefully::CancellationToken::deadline) also becomes a
/// server-side statement timeout (PostgreSQL's `statement_timeout`; SQLite has none — its
/// interrupt at the deadline covers it).
///
/// The timeout is the time left, rounded up to the next millisecond, so the token normally
/// fires first and the server's timeout is the backstop that holds even if this process
/// stalls or dies. Either way the caller gets [`Error::Cancelled`](crate::Error::Cancelled)
/// with [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded), never a raw `57014`.
/// Deadlines are read against the system clock (`Instant::now()`): a cancellation tree on a
/// `ManualClock` should use [`ServerDeadline::Off`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerDeadline {
    /// The deadline stays on the client.
    Off,
    /// In [`transaction`](crate::GracefulPool::transaction)s: `SET LOCAL statement_timeout`
    /// travels in the same message as `BEGIN`, so it costs nothing. The default.
    #[default]
    Transactions,
    /// Also around [`run`](crate::GracefulPool::run) bodies: `SET statement_timeout` before
    /// the body and a reset before the connection is reused — two extra round trips for
    /// every `run` on a token with a deadline.
    Always,
}

/// What the pool knows of its settings (see [`GracefulPoolOptions`](crate::GracefulPoolOptions)).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) cancellation_timeout: Duration,
    pub(crate) server_deadline: ServerDeadline,
    pub(crate) verify_on_release: bool,
    pub(crate) acquire_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) test_before_acquire: bool,
}
