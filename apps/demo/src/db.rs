//! The database: a SQLite pool whose cancelled queries stop inside SQLite, run as a host
//! service (migrate on start; on stop, wait for the pool's clean-ups and close it).

use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::{BackgroundService, BoxError, ServiceContext};
use gracefully_sqlx::{Error, SqliteGracefulPool};
use serde::Serialize;
use sqlx::Row;
use tokio::sync::broadcast;

/// An order, as stored and as served.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Order {
    /// The order's id.
    pub id: i64,
    /// What was ordered.
    pub item: String,
    /// How many.
    pub quantity: i64,
}

/// The demo's database: the pool and a feed of new orders (for `/events`).
#[derive(Clone)]
pub struct Database {
    pool: SqliteGracefulPool,
    new_orders: broadcast::Sender<Order>,
}

impl Database {
    /// Opens (creating if needed) the database at `url` and creates the tables.
    pub async fn open(url: &str) -> Result<Database, Error> {
        let pool = SqliteGracefulPool::connect(url).await?;
        let never = CancellationToken::never();
        pool.run(&never, |conn| {
            Box::pin(async move {
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS orders (
                         id INTEGER PRIMARY KEY,
                         item TEXT NOT NULL,
                         quantity INTEGER NOT NULL CHECK (quantity > 0)
                     )",
                )
                .execute(&mut *conn)
                .await?;
                sqlx::query(
                    "CREATE TABLE IF NOT EXISTS audit (
                         id INTEGER PRIMARY KEY,
                         order_id INTEGER NOT NULL REFERENCES orders(id),
                         what TEXT NOT NULL
                     )",
                )
                .execute(&mut *conn)
                .await?;
                Ok::<_, Error>(())
            })
        })
        .await?;
        let (new_orders, _) = broadcast::channel(64);
        Ok(Database { pool, new_orders })
    }

    /// Creates an order and its audit row in one transaction, which commits only if both
    /// writes succeeded and `token` did not fire.
    pub async fn create_order(
        &self,
        token: &CancellationToken,
        item: String,
        quantity: i64,
    ) -> Result<Order, Error> {
        let order = self
            .pool
            .transaction(token, |tx, _token| {
                Box::pin(async move {
                    let id: i64 = sqlx::query(
                        "INSERT INTO orders (item, quantity) VALUES (?, ?) RETURNING id",
                    )
                    .bind(&item)
                    .bind(quantity)
                    .fetch_one(&mut **tx)
                    .await?
                    .try_get("id")?;
                    sqlx::query("INSERT INTO audit (order_id, what) VALUES (?, 'created')")
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, Error>(Order { id, item, quantity })
                })
            })
            .await?;
        let _ = self.new_orders.send(order.clone());
        Ok(order)
    }

    /// The latest orders, newest first.
    pub async fn list_orders(&self, token: &CancellationToken) -> Result<Vec<Order>, Error> {
        self.pool
            .run(token, |conn| {
                Box::pin(async move {
                    let rows = sqlx::query(
                        "SELECT id, item, quantity FROM orders ORDER BY id DESC LIMIT 100",
                    )
                    .fetch_all(&mut *conn)
                    .await?;
                    rows.iter()
                        .map(|r| {
                            Ok(Order {
                                id: r.try_get("id")?,
                                item: r.try_get("item")?,
                                quantity: r.try_get("quantity")?,
                            })
                        })
                        .collect::<Result<Vec<_>, sqlx::Error>>()
                        .map_err(Error::from)
                })
            })
            .await
    }

    /// A deliberately slow query (a recursive count to `rows`): seconds of CPU inside
    /// SQLite for large `rows`, interrupted as soon as `token` fires.
    pub async fn slow_report(&self, token: &CancellationToken, rows: i64) -> Result<i64, Error> {
        self.pool
            .run(token, |conn| {
                Box::pin(async move {
                    let row = sqlx::query(
                        "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?)
                         SELECT count(*) AS n FROM c",
                    )
                    .bind(rows)
                    .fetch_one(&mut *conn)
                    .await?;
                    Ok::<_, Error>(row.try_get("n")?)
                })
            })
            .await
    }

    /// Number of orders.
    pub async fn count_orders(&self, token: &CancellationToken) -> Result<i64, Error> {
        self.pool
            .run(token, |conn| {
                Box::pin(async move {
                    let row = sqlx::query("SELECT count(*) AS n FROM orders")
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok::<_, Error>(row.try_get("n")?)
                })
            })
            .await
    }

    /// New orders as they are created.
    pub fn subscribe(&self) -> broadcast::Receiver<Order> {
        self.new_orders.subscribe()
    }
}

impl BackgroundService for Database {
    /// Runs after the HTTP server has drained (it was registered first, so it stops last):
    /// waits for the clean-ups of cancelled queries (each stops its statement and verifies
    /// or closes its connection), then closes the pool.
    async fn stop(&mut self, cx: &ServiceContext) -> Result<(), BoxError> {
        let pending = self.pool.pending_cleanups();
        // `close` waits for the pending clean-ups before it closes the pool.
        self.pool.close().await;
        cx.detail("query clean-ups waited for", pending);
        Ok(())
    }
}

/// The statistics job: logs the number of orders every 5 s until `stopping` fires.
pub(crate) async fn log_stats_until(
    db: Database,
    stopping: CancellationToken,
) -> Result<(), Error> {
    loop {
        if stopping
            .run_until_cancelled(tokio::time::sleep(Duration::from_secs(5)))
            .await
            .is_err()
        {
            return Ok(());
        }
        match db.count_orders(&stopping).await {
            Ok(orders) => tracing::info!(orders, "statistics"),
            Err(error) if error.is_cancelled() => return Ok(()),
            Err(error) => tracing::warn!(%error, "statistics query failed"),
        }
    }
}
