//! [`GracefulPool`]: the handle users hold — cheap to clone, thin over the
//! [`PoolCore`](crate::pool_core::PoolCore) that every clone and every cleanup task shares.
//! The operations on it (`run`, `transaction`) are in `ops.rs`; its builder is
//! [`GracefulPoolOptions`] (`options.rs`).

use std::fmt;
use std::sync::Arc;

use gracefully::CancellationToken;

use crate::backend::{Backend, ConnectOptionsOf};
use crate::error::Error;
use crate::lease::Lease;
use crate::options::GracefulPoolOptions;
use crate::pool_core::PoolCore;

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
    pub(crate) core: Arc<PoolCore<DB>>,
    /// What its operations are called in an operations registry (see [`labelled`](Self::labelled)).
    pub(crate) label: Option<&'static str>,
}

impl<DB: Backend> Clone for GracefulPool<DB> {
    fn clone(&self) -> Self {
        GracefulPool {
            core: Arc::clone(&self.core),
            label: self.label,
        }
    }
}

impl<DB: Backend> fmt::Debug for GracefulPool<DB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GracefulPool")
            .field("database", &<DB as sqlx::Database>::NAME)
            .field("target", &self.core.target())
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

    /// The same pool (a clone: one reference count), whose operations are named `label` in
    /// an operations registry: the page's name for them and the `name` label of their
    /// metrics. Unlabelled, a [`run`](Self::run) is named `query` and a
    /// [`transaction`](Self::transaction) `transaction`. A `&'static str`, so that labels
    /// stay a fixed set (metric labels must not grow without bound).
    ///
    /// ```no_run
    /// # async fn f(pool: gracefully_sqlx::PgGracefulPool, token: gracefully::CancellationToken)
    /// # -> Result<(), gracefully_sqlx::Error> {
    /// let orders = pool.labelled("orders.list");
    /// orders.run(&token, |conn| Box::pin(async move {
    ///     sqlx::query("SELECT * FROM orders").fetch_all(&mut *conn).await?;
    ///     Ok::<_, gracefully_sqlx::Error>(())
    /// })).await?;
    /// # Ok(()) }
    /// ```
    ///
    /// Each `run` and `transaction` registers with the registry of the code that calls it
    /// (see `gracefully::operation`): under the HTTP request or job it runs for, with the
    /// token's deadline, ending completed, cancelled with the token's reason, or failed.
    /// Without a registry nothing is recorded.
    pub fn labelled(&self, label: &'static str) -> Self {
        GracefulPool {
            core: Arc::clone(&self.core),
            label: Some(label),
        }
    }

    /// Connections open (idle or in use), as the sqlx pool counts them.
    pub fn size(&self) -> u32 {
        self.core.size()
    }

    /// Connections idle in this pool, ready for the next operation.
    pub fn num_idle(&self) -> usize {
        self.core.num_idle()
    }

    /// Cleanups still running: statements being stopped, transactions being rolled back,
    /// connections being verified or closed — including those of operations whose futures
    /// were dropped.
    pub fn pending_cleanups(&self) -> usize {
        self.core.cleanups.pending()
    }

    /// Waits until no cleanup is running. A host calls this during shutdown, after the
    /// operations were cancelled and before the runtime stops, so every rollback and every
    /// server-side cancel completes.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only waits; dropping it stops nothing.
    pub async fn wait_for_cleanups(&self) {
        self.core.cleanups.wait().await;
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
        self.core.close().await;
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.core.is_closed()
    }

    /// Checks a connection out for an operation on `token`.
    pub(crate) async fn lease(&self, token: &CancellationToken) -> Result<Lease<DB>, Error> {
        let tracked = self.core.checkout(token).await?;
        Ok(Lease::new(Arc::clone(&self.core), tracked))
    }
}
