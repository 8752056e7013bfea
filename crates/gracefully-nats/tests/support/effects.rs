//! The exactly-once-effects recipe of the crate docs, as the tests and the `worker` example
//! run it: each message's effect is a row in `effects_<suffix>`, written in the same
//! transaction as its id in `processed_<suffix>` (the dedupe table), so a redelivered
//! message changes nothing. `effects_<suffix>` has no unique key on purpose: an effect
//! applied twice shows up as two rows.

#![allow(dead_code)] // the worker example uses a part

use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_sqlx::{Error, PgGracefulPool};
use sqlx::AssertSqlSafe;

// Table names come from the tests (checked: letters, digits, `_`), never from input.

pub struct Effects {
    pool: PgGracefulPool,
    processed: String,
    effects: String,
}

impl Effects {
    /// Connects to `database_url`; the tables are named after `suffix` (letters, digits, `_`).
    pub async fn connect(database_url: &str, suffix: &str) -> Effects {
        assert!(
            suffix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "table suffix {suffix:?}"
        );
        let pool = PgGracefulPool::connect(database_url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at DATABASE_URL: {e}"));
        Effects {
            pool,
            processed: format!("processed_{suffix}"),
            effects: format!("effects_{suffix}"),
        }
    }

    pub async fn create_tables(&self) {
        let token = CancellationToken::never();
        for sql in [
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id text PRIMARY KEY)",
                self.processed
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {} (id text NOT NULL, at timestamptz NOT NULL DEFAULT now())",
                self.effects
            ),
        ] {
            self.pool
                .run(&token, move |conn| {
                    Box::pin(async move {
                        sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                        Ok::<_, Error>(())
                    })
                })
                .await
                .unwrap();
        }
    }

    pub async fn drop_tables(&self) {
        let token = CancellationToken::never();
        let sql = format!("DROP TABLE IF EXISTS {}, {}", self.processed, self.effects);
        let _ = self
            .pool
            .run(&token, move |conn| {
                Box::pin(async move {
                    sqlx::query(AssertSqlSafe(sql)).execute(&mut *conn).await?;
                    Ok::<_, Error>(())
                })
            })
            .await;
    }

    /// The recipe: record `id` and apply the effect in one transaction, unless `id` is
    /// already recorded. Returns whether the effect was applied (false: a duplicate).
    pub async fn apply(&self, id: &str, token: &CancellationToken) -> Result<bool, Error> {
        let id = id.to_owned();
        let (processed, effects) = (self.processed.clone(), self.effects.clone());
        self.pool
            .transaction(token, move |tx, _token| {
                Box::pin(async move {
                    let first = sqlx::query(AssertSqlSafe(format!(
                        "INSERT INTO {processed} (id) VALUES ($1) ON CONFLICT DO NOTHING"
                    )))
                    .bind(&id)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
                        == 1;
                    if first {
                        sqlx::query(AssertSqlSafe(format!(
                            "INSERT INTO {effects} (id) VALUES ($1)"
                        )))
                        .bind(&id)
                        .execute(&mut **tx)
                        .await?;
                    }
                    Ok::<_, Error>(first)
                })
            })
            .await
    }

    /// The handler's work: `work` of (token-aware) waiting, then the effect.
    pub async fn handle(
        &self,
        id: &str,
        work: Duration,
        token: &CancellationToken,
    ) -> Result<bool, Error> {
        token.run_until_cancelled(tokio::time::sleep(work)).await?;
        self.apply(id, token).await
    }

    /// `(whether id is recorded as processed, how many effect rows it has)`.
    pub async fn state_of(&self, id: &str) -> (bool, i64) {
        let quoted = id.replace('\'', "''");
        let processed = self
            .scalar(format!(
                "SELECT count(*) FROM {} WHERE id = '{quoted}'",
                self.processed
            ))
            .await;
        let effects = self
            .scalar(format!(
                "SELECT count(*) FROM {} WHERE id = '{quoted}'",
                self.effects
            ))
            .await;
        (processed == 1, effects)
    }

    /// How many effect rows there are.
    pub async fn rows(&self) -> i64 {
        self.scalar(format!("SELECT count(*) FROM {}", self.effects))
            .await
    }

    /// `(distinct ids with an effect, ids with more than one effect)`.
    pub async fn tally(&self) -> (i64, i64) {
        let distinct = self
            .scalar(format!("SELECT count(DISTINCT id) FROM {}", self.effects))
            .await;
        let twice = self
            .scalar(format!(
                "SELECT count(*) FROM (SELECT id FROM {} GROUP BY id HAVING count(*) > 1) d",
                self.effects
            ))
            .await;
        (distinct, twice)
    }

    async fn scalar(&self, sql: String) -> i64 {
        self.pool
            .run(&CancellationToken::never(), move |conn| {
                Box::pin(async move {
                    let n: i64 = sqlx::query_scalar(AssertSqlSafe(sql))
                        .fetch_one(&mut *conn)
                        .await?;
                    Ok::<_, Error>(n)
                })
            })
            .await
            .unwrap()
    }
}
