//! [`GracefulPool`] and [`GracefulPoolOptions`]: a sqlx pool whose connections the crate can
//! stop, verify and take back.
//!
//! # Why the pool keeps its own idle list
//!
//! To stop a connection's statement from outside, we must know something per connection:
//! PostgreSQL's backend pid, SQLite's interrupt flag. sqlx gives a pooled connection no
//! identity we could attach that to (its `Box`es move, it has no user-data slot), and asking
//! the server on every checkout would cost a round trip per query. So a `GracefulPool` keeps
//! the connections it has *adopted* (learned their pid / installed their handler, once) in
//! an idle list of its own, on top of a `sqlx::Pool` that opens connections, runs your
//! `after_connect` hook and enforces `max_connections` (an adopted connection counts as
//! checked out of the sqlx pool while it sits in our list). `max_lifetime`, `idle_timeout`
//! and `test_before_acquire` of your [`PoolOptions`] are applied to our list at checkout
//! (`test_before_acquire` only to connections idle for `ALIVE_BYPASS_WINDOW`).
//!
//! A checkout takes an adopted connection from the list, or else races three things: the
//! sqlx pool handing out a connection (adopted on the spot), a connection being returned to
//! our list (whoever returns one wakes one waiter: nobody waits on the sqlx pool while an
//! idle connection sits in ours), and the token.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use gracefully::{CancellationToken, Cancelled};
use sqlx::pool::{PoolConnection, PoolOptions};
use sqlx::{ConnectOptions, Connection};
use tokio::sync::Notify;

use crate::backend::sealed::Sealed;
use crate::backend::{Backend, ConnectOptionsOf, Running};
use crate::error::Error;
use crate::recover::{Cleanups, Recovery, recover};
use crate::target::{redact, wrong_scheme};

/// How long the pool waits, after cancelling a statement, for the server to confirm it
/// stopped before it gives up on the connection (Npgsql's default `CancellationTimeout`).
pub const DEFAULT_CANCEL_GRACE: Duration = Duration::from_secs(2);

/// How long a connection may have sat in the pool's idle list and still be handed out
/// without the ping of `test_before_acquire`: HikariCP's `aliveBypassWindowMs` default.
///
/// A connection that went back less than this ago was just used, and its release was
/// checked (see [`GracefulPoolOptions::verify_on_release`]); what the ping finds — a server
/// that restarted, a proxy or firewall that dropped an idle connection — happens to
/// connections that sat idle. Measured with the crate's overhead measurement (the crate
/// README), the ping on every checkout cost a round trip per operation: see the README.
const ALIVE_BYPASS_WINDOW: Duration = Duration::from_millis(500);

/// Settings for building a [`GracefulPool`]: sqlx's [`PoolOptions`] plus what this crate adds.
///
/// ```no_run
/// # async fn f() -> Result<(), gracefully_sqlx::Error> {
/// use std::time::Duration;
/// use gracefully_sqlx::{GracefulPoolOptions, ServerDeadline};
/// use sqlx::postgres::PgPoolOptions;
///
/// let pool = GracefulPoolOptions::new()
///     .pool_options(PgPoolOptions::new().max_connections(10))
///     .cancel_grace(Duration::from_secs(2))
///     .server_deadline(ServerDeadline::Transactions)
///     .connect("postgres://app@localhost/app")
///     .await?;
/// # let _ = pool; Ok(()) }
/// ```
///
/// *Anchors:* Npgsql's connection string keywords `Cancellation Timeout` (our
/// [`cancel_grace`](Self::cancel_grace)) and `Command Timeout` (we derive the server-side
/// timeout from the token's deadline instead of a fixed number).
pub struct GracefulPoolOptions<DB: Backend> {
    pool: PoolOptions<DB>,
    cancel_grace: Duration,
    server_deadline: ServerDeadline,
    verify_on_release: bool,
}

/// Where the token's [`deadline`](CancellationToken::deadline) also becomes a server-side
/// statement timeout (PostgreSQL's `statement_timeout`; SQLite has none — its interrupt at the
/// deadline covers it).
///
/// The timeout is the time left, rounded up to the next millisecond, so the token normally
/// fires first and the server's timeout is the backstop that holds even if this process
/// stalls or dies. Either way the caller gets [`Error::Cancelled`] with
/// [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded), never a raw `57014`.
/// Deadlines are read against the system clock (`Instant::now()`): a cancellation tree on a
/// `ManualClock` should use [`ServerDeadline::Off`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerDeadline {
    /// The deadline stays on the client.
    Off,
    /// In [`transaction`](GracefulPool::transaction)s: `SET LOCAL statement_timeout` travels
    /// in the same message as `BEGIN`, so it costs nothing. The default.
    #[default]
    Transactions,
    /// Also around [`run`](GracefulPool::run) bodies: `SET statement_timeout` before the body
    /// and a reset before the connection is reused — two extra round trips for every `run` on
    /// a token with a deadline.
    Always,
}

impl<DB: Backend> Default for GracefulPoolOptions<DB> {
    fn default() -> Self {
        Self::new()
    }
}

impl<DB: Backend> fmt::Debug for GracefulPoolOptions<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulPoolOptions")
            .field("pool", &self.pool)
            .field("cancel_grace", &self.cancel_grace)
            .field("server_deadline", &self.server_deadline)
            .field("verify_on_release", &self.verify_on_release)
            .finish()
    }
}

impl<DB: Backend> GracefulPoolOptions<DB> {
    /// sqlx's default [`PoolOptions`], a cancel grace of [`DEFAULT_CANCEL_GRACE`] (2 s),
    /// deadlines turned into server-side timeouts in transactions
    /// ([`ServerDeadline::Transactions`]), and verification only when in doubt.
    pub fn new() -> Self {
        GracefulPoolOptions {
            pool: PoolOptions::new(),
            cancel_grace: DEFAULT_CANCEL_GRACE,
            server_deadline: ServerDeadline::Transactions,
            verify_on_release: false,
        }
    }

    /// The sqlx pool options: `max_connections`, `acquire_timeout`, `after_connect`, … .
    ///
    /// `max_lifetime` and `idle_timeout` apply to the connections this pool keeps idle too;
    /// so does `test_before_acquire` (sqlx's default: on), but only to a connection that sat
    /// idle for 500 ms or more (HikariCP's `aliveBypassWindowMs`): pinging one returned a
    /// moment ago would cost a round trip per operation and find nothing its release had
    /// not checked. `after_release` and `before_acquire` run only when a connection
    /// passes through the sqlx pool (when it is first opened and handed to us, and when this
    /// pool is dropped), not on every operation: use `after_connect` for per-connection setup.
    pub fn pool_options(mut self, options: PoolOptions<DB>) -> Self {
        self.pool = options;
        self
    }

    /// How long to wait, once a statement was told to stop, for the server to confirm
    /// before the connection is abandoned (PostgreSQL: terminated and closed; SQLite:
    /// closed with its interrupt left raised). Default 2 s, as Npgsql.
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.cancel_grace = grace;
        self
    }

    /// Where the token's deadline also becomes a server-side statement timeout: see
    /// [`ServerDeadline`] (default [`ServerDeadline::Transactions`]).
    pub fn server_deadline(mut self, mode: ServerDeadline) -> Self {
        self.server_deadline = mode;
        self
    }

    /// Whether every release is verified with a server round trip (default `false`).
    ///
    /// By default a connection is verified (idle and outside any transaction, read from the
    /// server) after every cancellation, dropped operation, failed body or commit, and
    /// whenever sqlx's own state is in doubt (a transaction depth above zero, queued bytes).
    /// A statement the body gave up on (its own `timeout` or `select!` dropped the query
    /// future) and that may still run is stopped and drained before the connection is lent
    /// again, also when the body returned `Ok`: PostgreSQL tells at no cost (sqlx still
    /// owes the statement's replies) and gets a cancel; SQLite tells by its progress
    /// handler having run during the operation and gets an interrupt and one worker round
    /// trip. A body that completes normally with sqlx reporting a clean connection goes
    /// back without a round trip.
    ///
    /// Two cases miss by default: raw SQL `BEGIN` executed inside a successful
    /// [`run`](GracefulPool::run) body and never ended (use
    /// [`transaction`](GracefulPool::transaction) instead); and on SQLite, a statement whose
    /// future the body dropped within its first few thousand VM instructions, before the
    /// progress handler ever saw it run (the next borrower then waits for it). Turn this on
    /// to close both at the price of one round trip per operation (SQLite: two, interrupt
    /// and drain first, so no release ever waits for a statement still running).
    pub fn verify_on_release(mut self, on: bool) -> Self {
        self.verify_on_release = on;
        self
    }

    /// Parses `url` and connects: see [`connect_with`](Self::connect_with).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `url` is for another database (PostgreSQL takes `postgres:` and
    /// `postgresql:` URLs; SQLite `sqlite:` URLs and plain file names) or does not parse
    /// (the message shows it with its password redacted), and the errors of
    /// [`connect_with`](Self::connect_with). Never panics, whatever the string.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it completes drops the validating connection (its socket
    /// closes); nothing else was created.
    pub async fn connect(self, url: &str) -> Result<GracefulPool<DB>, Error> {
        let target = redact(url);
        if let Some(wrong) = wrong_scheme::<DB>(url) {
            let source = sqlx::Error::Configuration(wrong.into());
            return Err(Error::Config { target, source });
        }
        match url.parse::<ConnectOptionsOf<DB>>() {
            Ok(options) => self.open(options, target).await,
            Err(source) => Err(Error::Config { target, source }),
        }
    }

    /// Opens one connection to validate `options` (bounded by the pool's
    /// `acquire_timeout`), then builds the pool. The validating connection becomes
    /// PostgreSQL's first canceller connection; the pool's own connections open lazily.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] naming the target (password redacted) and carrying sqlx's reason:
    /// unreachable host, refused connection, unknown role or database, wrong password, or no
    /// connection within `acquire_timeout`. sqlx's own `PoolOptions::connect` retries a
    /// refused connection until its timeout and then reports only `PoolTimedOut`; this does
    /// not.
    ///
    /// # Cancel safety
    ///
    /// As [`connect`](Self::connect).
    pub async fn connect_with(
        self,
        options: ConnectOptionsOf<DB>,
    ) -> Result<GracefulPool<DB>, Error> {
        let target = DB::describe(&options);
        self.open(options, target).await
    }

    /// [`connect_with`](Self::connect_with), with the target shown in messages.
    async fn open(
        self,
        options: ConnectOptionsOf<DB>,
        target: String,
    ) -> Result<GracefulPool<DB>, Error> {
        let acquire_timeout = self.pool.get_acquire_timeout();
        let first = match tokio::time::timeout(acquire_timeout, options.connect()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(source)) => return Err(Error::Connect { target, source }),
            Err(_) => {
                let source = sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within the acquire timeout of {acquire_timeout:?}"),
                ));
                return Err(Error::Connect { target, source });
            }
        };
        let canceller = DB::canceller(&options, first).await;
        let settings = Settings {
            cancel_grace: self.cancel_grace,
            server_deadline: self.server_deadline,
            verify_on_release: self.verify_on_release,
            acquire_timeout,
            max_lifetime: self.pool.get_max_lifetime(),
            idle_timeout: self.pool.get_idle_timeout(),
            test_before_acquire: self.pool.get_test_before_acquire(),
        };
        let pool = self.pool.connect_lazy_with(options);
        Ok(GracefulPool {
            shared: Arc::new(Shared {
                pool,
                idle: Mutex::new(Vec::new()),
                released: Notify::new(),
                canceller,
                settings,
                cleanups: Cleanups::default(),
                closed: AtomicBool::new(false),
                target,
            }),
        })
    }
}

/// A pool of database connections whose statements stop on the server when a
/// [`CancellationToken`] fires, and whose connections go back to the pool only verified
/// idle and outside any transaction.
///
/// Cloning is cheap (one `Arc`); clones share the pool. Use
/// [`run`](Self::run) for ordinary sqlx queries and [`transaction`](Self::transaction) for
/// transactions. See the [crate docs](crate) for the mechanism and the races it closes.
///
/// ```no_run
/// # async fn f() -> Result<(), gracefully_sqlx::Error> {
/// use gracefully::CancellationSource;
/// use gracefully_sqlx::PgGracefulPool;
///
/// let pool = PgGracefulPool::connect("postgres://app@localhost/app").await?;
/// let request = CancellationSource::new(); // cancelled when the client leaves
/// let names: Vec<String> = pool
///     .run(&request.token(), |conn| Box::pin(async move {
///         sqlx::query_scalar("SELECT name FROM users ORDER BY name")
///             .fetch_all(&mut *conn)
///             .await
///             .map_err(gracefully_sqlx::Error::from)
///     }))
///     .await?;
/// # let _ = names; Ok(()) }
/// ```
///
/// *Anchors:* Npgsql's `NpgsqlDataSource` with commands taking a `CancellationToken`; Go's
/// `*sql.DB` with `QueryContext(ctx, …)`. Like them, the pool hands connections out and takes
/// them back; unlike `database/sql`, a connection whose operation was cancelled is verified
/// with the server before reuse, never assumed clean.
pub struct GracefulPool<DB: Backend> {
    pub(crate) shared: Arc<Shared<DB>>,
}

impl<DB: Backend> Clone for GracefulPool<DB> {
    fn clone(&self) -> Self {
        GracefulPool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<DB: Backend> fmt::Debug for GracefulPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulPool")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("target", &self.shared.target)
            .field("size", &self.size())
            .field("num_idle", &self.num_idle())
            .field("pending_cleanups", &self.pending_cleanups())
            .finish()
    }
}

impl<DB: Backend> GracefulPool<DB> {
    /// Connects with default [`GracefulPoolOptions`].
    ///
    /// # Errors
    ///
    /// As [`GracefulPoolOptions::connect`]: [`Error::Config`] for a URL that does not
    /// parse, [`Error::Connect`] when no connection can be opened. Passwords are redacted.
    ///
    /// # Cancel safety
    ///
    /// As [`GracefulPoolOptions::connect`].
    pub async fn connect(url: &str) -> Result<Self, Error> {
        GracefulPoolOptions::new().connect(url).await
    }

    /// Connects with default [`GracefulPoolOptions`] and the given connect options.
    ///
    /// # Errors
    ///
    /// As [`GracefulPoolOptions::connect_with`].
    ///
    /// # Cancel safety
    ///
    /// As [`GracefulPoolOptions::connect`].
    pub async fn connect_with(options: ConnectOptionsOf<DB>) -> Result<Self, Error> {
        GracefulPoolOptions::new().connect_with(options).await
    }

    /// Connections open (idle or in use), as the sqlx pool counts them.
    pub fn size(&self) -> u32 {
        self.shared.pool.size()
    }

    /// Connections idle in this pool, ready for the next operation.
    pub fn num_idle(&self) -> usize {
        self.shared.lock_idle().len()
    }

    /// Cleanups still running: statements being stopped, transactions being rolled back,
    /// connections being verified or closed — including those of operations whose futures
    /// were dropped.
    pub fn pending_cleanups(&self) -> usize {
        self.shared.cleanups.pending()
    }

    /// Waits until no cleanup is running. A host calls this during shutdown, after the
    /// operations were cancelled and before the runtime stops, so every rollback and every
    /// server-side cancel completes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits; dropping it stops nothing.
    pub async fn wait_for_cleanups(&self) {
        self.shared.cleanups.wait().await;
    }

    /// Closes the pool: new operations fail with `PoolClosed`, idle connections are closed,
    /// pending cleanups complete, PostgreSQL's canceller connections are closed, and then
    /// the sqlx pool closes (it waits for connections still in use to come back). Once it
    /// returns, every connection the pool opened is closed.
    ///
    /// # Cancel safety
    ///
    /// The pool is marked closed at the first poll; dropping the future early leaves the
    /// remaining connections to be closed as their operations end.
    pub async fn close(&self) {
        // Marked closed under the idle list's lock: a check-in either came before (its
        // connection is in the list taken here) or sees the mark (see `Shared::checkin`).
        let idle = {
            let mut idle = self.shared.lock_idle();
            self.shared.closed.store(true, Ordering::Release);
            std::mem::take(&mut *idle)
        };
        for tracked in idle {
            let _ = tracked.conn.close().await;
        }
        self.shared.cleanups.wait().await;
        // Cleanups that still start (operations in flight end after this) close any
        // canceller connection they open once they used it.
        DB::close_canceller(&self.shared.canceller).await;
        self.shared.pool.close().await;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Checks a connection out for an operation on `token`.
    pub(crate) async fn lease(&self, token: &CancellationToken) -> Result<Lease<DB>, Error> {
        let tracked = self.shared.checkout(token).await?;
        Ok(Lease {
            shared: Arc::clone(&self.shared),
            since: DB::progress(&tracked.handle),
            tracked: Some(tracked),
            hint: None,
        })
    }
}

/// What the pool knows of the settings.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) cancel_grace: Duration,
    pub(crate) server_deadline: ServerDeadline,
    pub(crate) verify_on_release: bool,
    pub(crate) acquire_timeout: Duration,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) test_before_acquire: bool,
}

/// An adopted connection: the sqlx connection and what it takes to stop it.
pub struct Tracked<DB: Sealed> {
    pub(crate) conn: PoolConnection<DB>,
    pub(crate) handle: DB::Handle,
    /// When the pool adopted it (about when it was opened): for `max_lifetime`.
    adopted: Instant,
    /// When it last went idle: for `idle_timeout` and `test_before_acquire` (kept only when
    /// one of them is set).
    idle_since: Instant,
    /// An operation set the session's `statement_timeout`: reset it before reuse.
    pub(crate) session_timeout: bool,
}

/// The state shared by a pool's handles and its cleanup tasks.
pub(crate) struct Shared<DB: Backend> {
    pool: sqlx::Pool<DB>,
    /// Adopted idle connections, most recently used last (taken LIFO).
    idle: Mutex<Vec<Tracked<DB>>>,
    /// Notified (one waiter) whenever a connection is put into `idle`.
    released: Notify,
    pub(crate) canceller: DB::Canceller,
    pub(crate) settings: Settings,
    pub(crate) cleanups: Cleanups,
    /// Set once by `close`, while holding the `idle` lock; `checkin` reads it under the same
    /// lock (elsewhere it is only a hint: a checkout that misses it fails in sqlx's closed
    /// pool, or returns its connection to a closed pool, which closes it).
    closed: AtomicBool,
    /// The connection target, password redacted: for messages.
    target: String,
}

impl<DB: Backend> Shared<DB> {
    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Tracked<DB>>> {
        // A panic while holding this lock cannot leave the Vec inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for an operation on `token`: an idle adopted one, or a new one from the
    /// sqlx pool, adopted now.
    async fn checkout(&self, token: &CancellationToken) -> Result<Tracked<DB>, Error> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Database(sqlx::Error::PoolClosed));
        }
        // The common case, an idle connection, is handled here; waiting, opening and adopting
        // are boxed: their futures (sqlx's acquire, the adopt query, a timer) take kilobytes
        // that every operation's future would otherwise carry, and copy, on every call.
        loop {
            let idle = self.lock_idle().pop();
            let Some(tracked) = idle else { break };
            if let Some(tracked) = self.revalidate(tracked).await {
                return Ok(tracked);
            }
        }
        Box::pin(self.wait_or_open(token)).await
    }

    /// [`checkout`](Self::checkout) when no idle connection was at hand: wait for one to be
    /// returned, or open one.
    async fn wait_or_open(&self, token: &CancellationToken) -> Result<Tracked<DB>, Error> {
        let deadline = tokio::time::Instant::now() + self.settings.acquire_timeout;
        loop {
            // Register for a release *before* looking again, so one between our look and
            // the wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let idle = self.lock_idle().pop();
            if let Some(tracked) = idle {
                match self.revalidate(tracked).await {
                    Some(tracked) => return Ok(tracked),
                    None => continue,
                }
            }
            let acquired = tokio::select! {
                biased;
                reason = token.cancelled() => return Err(Error::cancelled(reason)),
                () = &mut released => continue,
                acquired = tokio::time::timeout_at(deadline, self.pool.acquire()) => acquired,
            };
            let mut conn = match acquired {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => return Err(Error::Database(error)),
                Err(_) => return Err(Error::Database(sqlx::Error::PoolTimedOut)),
            };
            let adopted = tokio::select! {
                biased;
                // The adopt query is abandoned with `conn`: sqlx drains it when the
                // connection goes back to the sqlx pool.
                reason = token.cancelled() => return Err(Error::cancelled(reason)),
                adopted = DB::adopt(&mut conn) => adopted,
            };
            return match adopted {
                Ok(handle) => {
                    let now = Instant::now();
                    Ok(Tracked {
                        conn,
                        handle,
                        adopted: now,
                        idle_since: now,
                        session_timeout: false,
                    })
                }
                Err(error) => {
                    conn.close_on_drop();
                    Err(Error::Database(error))
                }
            };
        }
    }

    /// Applies `max_lifetime`, `idle_timeout` and `test_before_acquire` to an idle
    /// connection; `None` if it was closed instead.
    async fn revalidate(&self, tracked: Tracked<DB>) -> Option<Tracked<DB>> {
        let settings = &self.settings;
        // One clock read for the three (none if none is set).
        let (expired, test) = if settings.max_lifetime.is_some()
            || settings.idle_timeout.is_some()
            || settings.test_before_acquire
        {
            let now = Instant::now();
            let outlived = |since: Instant, max: Option<Duration>| {
                max.is_some_and(|max| now.saturating_duration_since(since) >= max)
            };
            let expired = outlived(tracked.adopted, settings.max_lifetime)
                || outlived(tracked.idle_since, settings.idle_timeout);
            let test = settings.test_before_acquire
                && outlived(tracked.idle_since, Some(ALIVE_BYPASS_WINDOW));
            (expired, test)
        } else {
            (false, false)
        };
        if expired {
            // Boxed, as every path that is not the common one (see `checkout`).
            Box::pin(async move {
                let _ = tracked.conn.close().await;
            })
            .await;
            return None;
        }
        if test {
            return Box::pin(async move {
                let mut tracked = tracked;
                if tracked.conn.ping().await.is_ok() {
                    return Some(tracked);
                }
                let _ = tracked.conn.detach().close_hard().await;
                None
            })
            .await;
        }
        Some(tracked)
    }

    /// Puts a verified connection back, waking one waiting checkout; closes it instead if
    /// the pool is closed.
    pub(crate) fn checkin(&self, mut tracked: Tracked<DB>) {
        if self.settings.idle_timeout.is_some() || self.settings.test_before_acquire {
            tracked.idle_since = Instant::now();
        }
        let mut idle = self.lock_idle();
        // Read under the lock `close` marks it under: a connection pushed here after
        // `close` took the list would be stranded, holding a sqlx permit, and the sqlx
        // pool's `close` would wait for it for ever.
        if self.closed.load(Ordering::Acquire) {
            drop(idle);
            // The connection closes as sqlx takes it back into a closed pool.
            drop(tracked);
            return;
        }
        idle.push(tracked);
        drop(idle);
        self.released.notify_one();
    }

    /// Whether a connection must be verified with the server before reuse even though
    /// nothing runs on it: its session timeout must be reset, the pool verifies every
    /// release, or sqlx reports a transaction or bytes to send.
    pub(crate) fn in_doubt(&self, tracked: &Tracked<DB>) -> bool {
        tracked.session_timeout
            || self.settings.verify_on_release
            || tracked.conn.is_in_transaction()
            || tracked.conn.should_flush()
    }
}

/// One operation's hold on a connection. Dropped while still holding it (the operation's
/// future was dropped), it hands the connection to a tracked cleanup task that stops
/// whatever it runs, rolls back and verifies it.
pub(crate) struct Lease<DB: Backend> {
    shared: Arc<Shared<DB>>,
    tracked: Option<Tracked<DB>>,
    /// `Backend::progress` when the operation started.
    since: u64,
    /// What a [`crate::ops`] transaction guard recorded when the body's transaction was
    /// dropped, before sqlx's `Transaction` queued its `ROLLBACK` (which shows as bytes to
    /// send, and which a look at the connection afterwards would send).
    pub(crate) hint: Option<Arc<DropHint>>,
}

/// How an operation ended, for [`Lease::release`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ended {
    /// The body returned (`doubt`: with an error): a statement it gave up on may still run.
    Returned { doubt: bool },
    /// The last statement sent completed (`COMMIT`, or a failed `BEGIN`/`COMMIT`/`SET`):
    /// nothing sent before it can still run.
    Completed { doubt: bool },
}

/// See [`Lease::hint`]. Written once, by the transaction guard's `drop`.
#[derive(Debug, Default)]
pub(crate) struct DropHint {
    /// Bytes of an abandoned statement were never (fully) sent.
    unsent: AtomicBool,
    /// `Running` as recorded (0: nothing recorded).
    running: AtomicU8,
}

impl DropHint {
    /// Records what the transaction guard saw; `Relaxed`: read after the guard's future
    /// completed or was dropped, which orders it.
    pub(crate) fn record(&self, unsent: bool, running: Running) {
        self.unsent.store(unsent, Ordering::Relaxed);
        let running = match running {
            Running::No => 1,
            Running::Maybe => 2,
            Running::Unknown => 3,
        };
        self.running.store(running, Ordering::Relaxed);
    }

    fn unsent(&self) -> bool {
        self.unsent.load(Ordering::Relaxed)
    }

    fn running(&self) -> Option<Running> {
        match self.running.load(Ordering::Relaxed) {
            1 => Some(Running::No),
            2 => Some(Running::Maybe),
            3 => Some(Running::Unknown),
            _ => None,
        }
    }
}

impl<DB: Backend> Lease<DB> {
    fn tracked(&mut self) -> &mut Tracked<DB> {
        // Invariant: `tracked` is `Some` until a consuming method takes it.
        self.tracked.as_mut().expect("lease already released")
    }

    /// The connection.
    pub(crate) fn conn(&mut self) -> &mut DB::Connection {
        &mut self.tracked().conn
    }

    /// The connection's stop handle.
    pub(crate) fn handle(&mut self) -> &DB::Handle {
        &self.tracked().handle
    }

    /// `Backend::progress` when the operation started.
    pub(crate) fn since(&self) -> u64 {
        self.since
    }

    /// Marks the session's `statement_timeout` as set by us.
    pub(crate) fn set_session_timeout(&mut self) {
        self.tracked().session_timeout = true;
    }

    fn unsent(&self, tracked: &Tracked<DB>) -> bool {
        match &self.hint {
            Some(hint) => hint.unsent(),
            None => tracked.conn.should_flush(),
        }
    }

    /// The operation was cancelled: stop the statement, roll back, verify — in a tracked
    /// task that finishes even if this future is dropped — then return `Cancelled`.
    pub(crate) async fn abandon(mut self, cancelled: Cancelled) -> Error {
        if let Some(tracked) = self.tracked.take() {
            let unsent = self.unsent(&tracked);
            let shared = Arc::clone(&self.shared);
            self.shared
                .cleanups
                .run(recover(shared, tracked, Recovery::Stop { unsent }))
                .await;
        }
        Error::Cancelled(cancelled)
    }

    /// The operation ended. Back to the idle list at once if nothing runs and nothing is
    /// in doubt; otherwise stopped and drained first if a statement may still run, and
    /// verified if in doubt (`doubt`, a raised interrupt, a session timeout to reset, sqlx
    /// reporting a transaction or queued bytes, or `verify_on_release`).
    pub(crate) async fn release(mut self, ended: Ended) {
        let Some(mut tracked) = self.tracked.take() else {
            return;
        };
        let hint = self.hint.as_deref();
        let (doubt, running) = match ended {
            Ended::Completed { doubt } => (doubt, Running::No),
            Ended::Returned { doubt } => {
                let recorded = hint.and_then(DropHint::running);
                let running = recorded.unwrap_or_else(|| {
                    DB::still_running(&mut tracked.conn, &tracked.handle, self.since)
                });
                (doubt, running)
            }
        };
        let unsent = hint.is_some_and(DropHint::unsent);
        let raised = DB::raised(&tracked.handle);
        let in_doubt = doubt || self.shared.in_doubt(&tracked);
        let how = if unsent {
            // The rest of an abandoned statement is queued: never send it.
            Recovery::Stop { unsent: true }
        } else if raised || running == Running::Maybe || (running == Running::Unknown && in_doubt) {
            // A statement may still run (or a cancel raced with the end, and SQLite's
            // interrupt must be lowered only after the worker drained): stop it first, so
            // verification does not wait behind it. With nothing else in doubt, a drained
            // connection goes back without a probe, as a clean one does.
            if raised || in_doubt {
                Recovery::Stop { unsent: false }
            } else {
                Recovery::Drain
            }
        } else if in_doubt {
            Recovery::Verify
        } else {
            self.shared.checkin(tracked);
            return;
        };
        let shared = Arc::clone(&self.shared);
        // Boxed: kept out of every operation's future (see `Shared::checkout`).
        Box::pin(self.shared.cleanups.run(recover(shared, tracked, how))).await;
    }
}

impl<DB: Backend> Drop for Lease<DB> {
    fn drop(&mut self) {
        let Some(tracked) = self.tracked.take() else {
            return;
        };
        // The operation's future was dropped mid-flight (its own futures, which borrowed the
        // connection, were dropped just before this).
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Dropped outside any runtime: nothing can run the cleanup. Detach the connection
            // (a pooled one would need a runtime to go back) and drop it: the socket closes,
            // and the server ends the session and its transaction.
            drop(tracked.conn.detach());
            return;
        };
        let unsent = self.unsent(&tracked);
        let shared = Arc::clone(&self.shared);
        let cleanup = recover(Arc::clone(&shared), tracked, Recovery::Stop { unsent });
        shared.cleanups.spawn_on(&runtime, cleanup);
    }
}
