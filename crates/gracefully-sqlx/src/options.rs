//! [`GracefulPoolOptions`]: the builder of a [`GracefulPool`] — sqlx's pool options plus what
//! this crate adds — and the connect procedure.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::pool::PoolOptions;

use crate::backend::{Backend, ConnectOptionsOf};
use crate::error::Error;
use crate::pool::GracefulPool;
use crate::pool_core::PoolCore;
use crate::settings::{DEFAULT_CANCELLATION_TIMEOUT, ServerDeadline, Settings};
use crate::target::{redact, wrong_scheme};

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
///     .cancellation_timeout(Duration::from_secs(2))
///     .server_deadline(ServerDeadline::Transactions)
///     .connect("postgres://app@localhost/app")
///     .await?;
/// # let _ = pool; Ok(()) }
/// ```
///
/// *Anchors:* Npgsql's connection string keywords `Cancellation Timeout` (our
/// [`cancellation_timeout`](Self::cancellation_timeout)) and `Command Timeout` (we derive the
/// server-side timeout from the token's deadline instead of a fixed number).
///
/// Not to be confused with the host's `cancel_grace` (`gracefully-host`): that is the
/// budget of the shutdown's whole cancel phase; this is how long one connection waits for
/// the database to confirm one cancel.
pub struct GracefulPoolOptions<DB: Backend> {
    pool: PoolOptions<DB>,
    cancellation_timeout: Duration,
    server_deadline: ServerDeadline,
    verify_on_release: bool,
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
            .field("cancellation_timeout", &self.cancellation_timeout)
            .field("server_deadline", &self.server_deadline)
            .field("verify_on_release", &self.verify_on_release)
            .finish()
    }
}

impl<DB: Backend> GracefulPoolOptions<DB> {
    /// sqlx's default [`PoolOptions`], a cancellation timeout of
    /// [`DEFAULT_CANCELLATION_TIMEOUT`] (2 s),
    /// deadlines turned into server-side timeouts in transactions
    /// ([`ServerDeadline::Transactions`]), and verification only when in doubt.
    pub fn new() -> Self {
        GracefulPoolOptions {
            pool: PoolOptions::new(),
            cancellation_timeout: DEFAULT_CANCELLATION_TIMEOUT,
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
    /// closed with its interrupt left raised). Default 2 s, as Npgsql's `Cancellation
    /// Timeout`. It also bounds the verification after a failed or abandoned operation.
    pub fn cancellation_timeout(mut self, timeout: Duration) -> Self {
        self.cancellation_timeout = timeout;
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
            cancellation_timeout: self.cancellation_timeout,
            server_deadline: self.server_deadline,
            verify_on_release: self.verify_on_release,
            acquire_timeout,
            max_lifetime: self.pool.get_max_lifetime(),
            idle_timeout: self.pool.get_idle_timeout(),
            test_before_acquire: self.pool.get_test_before_acquire(),
        };
        let pool = self.pool.connect_lazy_with(options);
        Ok(GracefulPool {
            core: Arc::new(PoolCore::new(pool, canceller, settings, target)),
            label: None,
        })
    }
}
