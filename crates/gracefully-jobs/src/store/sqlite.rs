//! The SQLite job table. SQLite has one writer at a time, so a fetch is a single
//! `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …` (no row locks to skip); lists of
//! `(id, run)` pairs are bound as row values, in chunks well under SQLite's variable limit.

use sqlx::{AssertSqlSafe, SqlSafeStr, SqlStr, SqliteConnection, SqlitePool};

use super::in_order;
use super::{
    Fetched, INFO_COLUMNS, InfoTuple, MAX_LEASE_LOSSES, Renewed, cancel_outcome, counts, info,
};
use crate::error::Error;
use crate::new_job::Row;
use crate::state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts};

/// The database's clock in milliseconds (store #3).
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";
const T: &str = "gracefully_jobs";
const WAITING: &str = "('queued', 'retrying', 'interrupted')";
/// Pairs per statement (two variables each).
const CHUNK: usize = 400;
/// Rows per batch insert (seven variables each).
const INSERT_CHUNK: usize = 1000;

fn sql(s: String) -> SqlStr {
    AssertSqlSafe(s).into_sql_str()
}

/// `(?, ?), (?, ?), …` for `n` pairs.
fn pairs(n: usize) -> String {
    let mut s = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str("(?, ?)");
    }
    s
}

#[derive(Debug)]
pub(crate) struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

impl SqliteStore {
    pub(crate) fn new(pool: SqlitePool) -> SqliteStore {
        SqliteStore { pool }
    }

    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let mut conn = self.pool.acquire().await?;
        // BEGIN IMMEDIATE: two processes migrating at once serialise on the write lock.
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
        let result = async {
            sqlx::query("CREATE TABLE IF NOT EXISTS gracefully_jobs_schema (version INTEGER NOT NULL)")
                .execute(&mut *conn)
                .await?;
            let version: Option<i64> =
                sqlx::query_scalar("SELECT max(version) FROM gracefully_jobs_schema")
                    .fetch_one(&mut *conn)
                    .await?;
            if version.unwrap_or(0) < 1 {
                for stmt in [
                    "CREATE TABLE gracefully_jobs (
                       id INTEGER PRIMARY KEY AUTOINCREMENT,
                       queue TEXT NOT NULL,
                       payload TEXT NOT NULL,
                       state TEXT NOT NULL DEFAULT 'queued',
                       priority INTEGER NOT NULL DEFAULT 0,
                       run_at INTEGER NOT NULL,
                       attempts INTEGER NOT NULL DEFAULT 0,
                       max_attempts INTEGER NOT NULL,
                       lease_losses INTEGER NOT NULL DEFAULT 0,
                       run INTEGER NOT NULL DEFAULT 0,
                       lease_until INTEGER,
                       worker TEXT,
                       unique_key TEXT,
                       last_error TEXT,
                       cancel_message TEXT,
                       created_at INTEGER NOT NULL,
                       finished_at INTEGER
                     )",
                    "CREATE UNIQUE INDEX gracefully_jobs_unique_key ON gracefully_jobs (queue, unique_key) \
                     WHERE unique_key IS NOT NULL",
                    "CREATE INDEX gracefully_jobs_waiting ON gracefully_jobs (queue, priority DESC, run_at, id) \
                     WHERE state IN ('queued', 'retrying', 'interrupted')",
                    "CREATE INDEX gracefully_jobs_leases ON gracefully_jobs (queue, lease_until) \
                     WHERE state = 'running'",
                    "INSERT INTO gracefully_jobs_schema (version) VALUES (1)",
                ] {
                    sqlx::query(stmt).execute(&mut *conn).await?;
                }
            }
            Ok::<_, Error>(())
        }
        .await;
        match result {
            Ok(()) => {
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok(())
            }
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                Err(e)
            }
        }
    }

    pub(crate) async fn enqueue(&self, row: Row) -> Result<(JobId, bool), Error> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_on(&mut conn, row).await
    }

    pub(crate) async fn enqueue_on(
        &self,
        conn: &mut SqliteConnection,
        row: Row,
    ) -> Result<(JobId, bool), Error> {
        let id: Option<i64> = sqlx::query_scalar(sql(format!(
            "INSERT INTO {T} (queue, payload, priority, run_at, max_attempts, unique_key, created_at) \
             VALUES (?1, ?2, ?3, COALESCE(?4, {NOW} + ?5), ?6, ?7, {NOW}) \
             ON CONFLICT DO NOTHING RETURNING id"
        )))
        .bind(&row.queue)
        .bind(&row.payload)
        .bind(row.priority)
        .bind(row.run_at_ms)
        .bind(row.delay_ms)
        .bind(row.max_attempts)
        .bind(&row.unique_key)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(id) = id {
            return Ok((JobId::from(id), true));
        }
        let id: i64 = sqlx::query_scalar(sql(format!(
            "SELECT id FROM {T} WHERE queue = ?1 AND unique_key = ?2"
        )))
        .bind(&row.queue)
        .bind(&row.unique_key)
        .fetch_one(&mut *conn)
        .await?;
        Ok((JobId::from(id), false))
    }

    pub(crate) async fn enqueue_many(&self, rows: Vec<Row>) -> Result<u64, Error> {
        let mut tx = self.pool.begin().await?;
        let n = self.enqueue_many_on(&mut tx, rows).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub(crate) async fn enqueue_many_on(
        &self,
        conn: &mut SqliteConnection,
        rows: Vec<Row>,
    ) -> Result<u64, Error> {
        let mut inserted = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let values =
                vec![format!("(?, ?, ?, COALESCE(?, {NOW} + ?), ?, ?, {NOW})"); chunk.len()]
                    .join(", ");
            let stmt = format!(
                "INSERT INTO {T} (queue, payload, priority, run_at, max_attempts, unique_key, created_at) \
                 VALUES {values} ON CONFLICT DO NOTHING"
            );
            let mut q = sqlx::query(sql(stmt));
            for r in chunk {
                q = q
                    .bind(&r.queue)
                    .bind(&r.payload)
                    .bind(r.priority)
                    .bind(r.run_at_ms)
                    .bind(r.delay_ms)
                    .bind(r.max_attempts)
                    .bind(&r.unique_key);
            }
            inserted += q.execute(&mut *conn).await?.rows_affected();
        }
        Ok(inserted)
    }

    pub(crate) async fn fetch(
        &self,
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        let rows: Vec<(i64, String, i32, i32, i64, i32, i64)> = sqlx::query_as(sql(format!(
            "UPDATE {T} SET state = 'running', run = run + 1, lease_until = {NOW} + ?3, worker = ?4 \
             WHERE id IN (SELECT id FROM {T} WHERE queue = ?1 AND state IN {WAITING} AND run_at <= {NOW} \
                          ORDER BY priority DESC, run_at, id LIMIT ?2) \
             RETURNING id, payload, attempts, max_attempts, run, priority, run_at"
        )))
        .bind(queue)
        .bind(n as i64)
        .bind(lease_ms)
        .bind(worker)
        .fetch_all(&self.pool)
        .await?;
        Ok(in_order(rows))
    }

    pub(crate) async fn next_due(&self, queue: &str) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(sql(format!(
            "SELECT min(run_at) - {NOW} FROM {T} WHERE queue = ?1 AND state IN {WAITING}"
        )))
        .bind(queue)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Runs `head … WHERE (id, run) IN (VALUES …) tail` over `held` in chunks; returns
    /// the rows affected.
    async fn over_pairs(&self, head: &str, tail: &str, held: &[(i64, i64)]) -> Result<u64, Error> {
        let mut n = 0;
        for chunk in held.chunks(CHUNK) {
            let stmt = format!(
                "{head} WHERE (id, run) IN (VALUES {}) {tail}",
                pairs(chunk.len())
            );
            let mut q = sqlx::query(sql(stmt));
            for (id, run) in chunk {
                q = q.bind(id).bind(run);
            }
            n += q.execute(&self.pool).await?.rows_affected();
        }
        Ok(n)
    }

    pub(crate) async fn succeed(&self, done: &[(i64, i64)]) -> Result<u64, Error> {
        self.over_pairs(
            &format!("UPDATE {T} SET state = 'succeeded', lease_until = NULL, finished_at = {NOW}"),
            "AND state = 'running'",
            done,
        )
        .await
    }

    pub(crate) async fn complete_on(
        &self,
        conn: &mut SqliteConnection,
        id: i64,
        run: i64,
    ) -> Result<bool, Error> {
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET state = 'succeeded', lease_until = NULL, finished_at = {NOW} \
             WHERE id = ?1 AND run = ?2 AND state = 'running'"
        )))
        .bind(id)
        .bind(run)
        .execute(conn)
        .await?
        .rows_affected()
            == 1)
    }

    pub(crate) async fn fail(
        &self,
        id: i64,
        run: i64,
        error: &str,
        delay_ms: i64,
    ) -> Result<Option<JobState>, Error> {
        let state: Option<String> = sqlx::query_scalar(sql(format!(
            "UPDATE {T} SET attempts = attempts + 1, last_error = ?3, lease_until = NULL, \
               state = CASE WHEN attempts + 1 >= max_attempts THEN 'dead' ELSE 'retrying' END, \
               run_at = {NOW} + ?4, \
               finished_at = CASE WHEN attempts + 1 >= max_attempts THEN {NOW} END \
             WHERE id = ?1 AND run = ?2 AND state = 'running' RETURNING state"
        )))
        .bind(id)
        .bind(run)
        .bind(error)
        .bind(delay_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(state.as_deref().and_then(JobState::parse))
    }

    pub(crate) async fn dead(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        self.end("dead", id, run, error).await
    }

    pub(crate) async fn cancelled(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        self.end("cancelled", id, run, error).await
    }

    async fn end(&self, state: &str, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET state = ?4, last_error = ?3, lease_until = NULL, finished_at = {NOW} \
             WHERE id = ?1 AND run = ?2 AND state = 'running'"
        )))
        .bind(id)
        .bind(run)
        .bind(error)
        .bind(state)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    pub(crate) async fn interrupt(
        &self,
        _queue: &str,
        held: &[(i64, i64)],
    ) -> Result<Vec<i64>, Error> {
        let mut out = Vec::new();
        for chunk in held.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {T} SET lease_until = NULL, run_at = {NOW}, \
                   state = CASE WHEN cancel_message IS NOT NULL THEN 'cancelled' ELSE 'interrupted' END, \
                   finished_at = CASE WHEN cancel_message IS NOT NULL THEN {NOW} END \
                 WHERE (id, run) IN (VALUES {}) AND state = 'running' RETURNING id",
                pairs(chunk.len())
            );
            let mut q = sqlx::query_scalar::<_, i64>(sql(stmt));
            for (id, run) in chunk {
                q = q.bind(id).bind(run);
            }
            out.extend(q.fetch_all(&self.pool).await?);
        }
        Ok(out)
    }

    pub(crate) async fn renew(
        &self,
        held: &[(i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<Renewed>, Error> {
        let mut out = Vec::with_capacity(held.len());
        for chunk in held.chunks(CHUNK) {
            let stmt = format!(
                "UPDATE {T} SET lease_until = {NOW} + ? WHERE (id, run) IN (VALUES {}) \
                 AND state = 'running' RETURNING id, cancel_message",
                pairs(chunk.len())
            );
            let mut q = sqlx::query_as::<_, (i64, Option<String>)>(sql(stmt)).bind(lease_ms);
            for (id, run) in chunk {
                q = q.bind(id).bind(run);
            }
            out.extend(
                q.fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(|(id, cancel_message)| Renewed { id, cancel_message }),
            );
        }
        Ok(out)
    }

    pub(crate) async fn reclaim(&self, queue: &str) -> Result<u64, Error> {
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET lease_losses = lease_losses + 1, lease_until = NULL, run_at = {NOW}, \
               state = CASE WHEN cancel_message IS NOT NULL THEN 'cancelled' \
                            WHEN lease_losses + 1 >= {MAX_LEASE_LOSSES} THEN 'dead' ELSE 'interrupted' END, \
               last_error = CASE WHEN cancel_message IS NOT NULL THEN last_error \
                 ELSE 'lease expired: worker ' || coalesce(worker, '?') || ' stopped renewing it (lost lease ' \
                      || (lease_losses + 1) || ' of {MAX_LEASE_LOSSES})' END, \
               finished_at = CASE WHEN cancel_message IS NOT NULL OR lease_losses + 1 >= {MAX_LEASE_LOSSES} THEN {NOW} END \
             WHERE queue = ?1 AND state = 'running' AND lease_until < {NOW}"
        )))
        .bind(queue)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    pub(crate) async fn cancel_requests(&self, held: &[(i64, i64)]) -> Result<Vec<Renewed>, Error> {
        let mut out = Vec::new();
        for chunk in held.chunks(CHUNK) {
            let stmt = format!(
                "SELECT id, cancel_message FROM {T} WHERE (id, run) IN (VALUES {}) \
                 AND state = 'running' AND cancel_message IS NOT NULL",
                pairs(chunk.len())
            );
            let mut q = sqlx::query_as::<_, (i64, Option<String>)>(sql(stmt));
            for (id, run) in chunk {
                q = q.bind(id).bind(run);
            }
            out.extend(
                q.fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(|(id, cancel_message)| Renewed { id, cancel_message }),
            );
        }
        Ok(out)
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<JobInfo>, Error> {
        let cols = INFO_COLUMNS.replace("{payload}", "payload");
        let row: Option<InfoTuple> =
            sqlx::query_as(sql(format!("SELECT {cols} FROM {T} WHERE id = ?1")))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        row.map(info).transpose()
    }

    pub(crate) async fn list(
        &self,
        queue: Option<&str>,
        state: Option<&str>,
        limit: i64,
    ) -> Result<Vec<JobInfo>, Error> {
        let cols = INFO_COLUMNS.replace("{payload}", "payload");
        let rows: Vec<InfoTuple> = sqlx::query_as(sql(format!(
            "SELECT {cols} FROM {T} WHERE (?1 IS NULL OR queue = ?1) AND (?2 IS NULL OR state = ?2) \
             ORDER BY id DESC LIMIT ?3"
        )))
        .bind(queue)
        .bind(state)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(info).collect()
    }

    pub(crate) async fn counts(&self, queue: Option<&str>) -> Result<StateCounts, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(sql(format!(
            "SELECT state, count(*) FROM {T} WHERE (?1 IS NULL OR queue = ?1) GROUP BY state"
        )))
        .bind(queue)
        .fetch_all(&self.pool)
        .await?;
        Ok(counts(rows))
    }

    pub(crate) async fn cancel(&self, id: i64, message: &str) -> Result<CancelOutcome, Error> {
        let updated: Option<String> = sqlx::query_scalar(sql(format!(
            "UPDATE {T} SET cancel_message = ?2, \
               state = CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END, \
               last_error = CASE WHEN state = 'running' THEN last_error ELSE 'cancelled: ' || ?2 END, \
               finished_at = CASE WHEN state = 'running' THEN NULL ELSE {NOW} END \
             WHERE id = ?1 AND state IN ('queued', 'retrying', 'interrupted', 'running') RETURNING state"
        )))
        .bind(id)
        .bind(message)
        .fetch_optional(&self.pool)
        .await?;
        let existing = match updated {
            Some(_) => None,
            None => {
                sqlx::query_scalar(sql(format!("SELECT state FROM {T} WHERE id = ?1")))
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        Ok(cancel_outcome(updated, existing))
    }

    pub(crate) async fn retry(&self, id: i64) -> Result<bool, Error> {
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET state = 'queued', attempts = 0, lease_losses = 0, run_at = {NOW}, \
               finished_at = NULL, cancel_message = NULL \
             WHERE id = ?1 AND state IN ('dead', 'cancelled')"
        )))
        .bind(id)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }
}
