//! The SQLite job table. SQLite has one writer at a time, so a fetch is a single
//! `UPDATE … WHERE id IN (SELECT … LIMIT n) RETURNING …` (no row locks to skip); lists of
//! `(id, run)` pairs are bound as row values, in chunks well under SQLite's variable limit.

use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Row as _, SqlSafeStr, SqlStr, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, MutexGuard};

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

/// `text` as an SQL string literal (`'` doubled), or `None` if it holds a NUL (which
/// would end the statement's text early).
fn literal(text: &str) -> Option<String> {
    (!text.contains('\0')).then(|| format!("'{}'", text.replace('\'', "''")))
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
    /// Taken by this handle's writes on `pool` (see [`SqliteStore::writer`]).
    writer: Mutex<()>,
}

impl SqliteStore {
    pub(crate) fn new(pool: SqlitePool) -> SqliteStore {
        SqliteStore {
            pool,
            writer: Mutex::new(()),
        }
    }

    /// A connection for a write, and this handle's turn to write (one turn per
    /// `Jobs::sqlite`, shared by its clones and its workers). SQLite lets one
    /// connection write at a time; a second writer gets `SQLITE_BUSY` and sqlite's busy
    /// handler *sleeps* (1 ms, 2 ms, 5 ms, … — nothing wakes it early). A worker may
    /// write endings while its next fetch is in flight, and its heartbeat comes when it
    /// comes, so its own writes would meet in that sleep; queued here instead, the next
    /// starts the instant the previous commits (measured: +10 % jobs/s). Writers elsewhere
    /// (other processes, other `Jobs` handles, the caller's own transactions) still meet
    /// the busy handler, as any SQLite user does.
    ///
    /// The connection comes first: the turn is never held while waiting for the pool
    /// (whose connections may all be with handlers that are waiting for a turn). The
    /// worker's loop awaits none of these inline (run #7 in `worker/run.rs`): it polls its
    /// fetch, its endings and its heartbeat side by side, so one holding the turn always
    /// gets to finish.
    async fn writer(&self) -> Result<(PoolConnection<Sqlite>, MutexGuard<'_, ()>), Error> {
        let conn = self.pool.acquire().await?;
        Ok((conn, self.writer.lock().await))
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
        let (mut conn, _writer) = self.writer().await?;
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
        let (mut conn, _writer) = self.writer().await?;
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
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
        let (mut conn, _writer) = self.writer().await?;
        fetch_on(&mut conn, queue, n, lease_ms, worker).await
    }

    /// Records `done` as succeeded and fetches up to `n` jobs in **one** transaction, sent
    /// as **one** call (docs/architecture.md, "Jobs"). With `synchronous = FULL` every
    /// commit waits for the disk, so ending a batch and fetching the next pay for one flush
    /// instead of two. And sqlx runs each SQLite call on the connection's own thread: every
    /// call is a hop there and back (~100 µs measured on a 2-core VM, more than the
    /// statements themselves), so `BEGIN`, the two updates and `COMMIT` go as one script
    /// with their values written in (integers, and two strings quoted as SQL literals),
    /// not as four calls. Returns the jobs fetched.
    pub(crate) async fn succeed_and_fetch(
        &self,
        done: &[(i64, i64)],
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        let (mut conn, _writer) = self.writer().await?;
        let (Some(queue_lit), Some(worker_lit)) = (literal(queue), literal(worker)) else {
            // Not expressible as a literal: four calls, values bound.
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            succeed_on(&mut tx, done).await?;
            let jobs = fetch_on(&mut tx, queue, n, lease_ms, worker).await?;
            tx.commit().await?;
            return Ok(jobs);
        };
        // IMMEDIATE: the write lock is taken at BEGIN, so a writer in another process makes
        // this wait in the busy handler rather than fail when the transaction upgrades.
        let mut script = String::with_capacity(600 + done.len() * 24);
        script.push_str("BEGIN IMMEDIATE;\n");
        for chunk in done.chunks(CHUNK) {
            let values: Vec<String> = chunk
                .iter()
                .map(|(id, run)| format!("({id}, {run})"))
                .collect();
            script.push_str(&succeed_sql(&values.join(", ")));
            script.push_str(";\n");
        }
        script.push_str(&fetch_sql(
            &queue_lit,
            &n.to_string(),
            &lease_ms.to_string(),
            &worker_lit,
        ));
        script.push_str(";\nCOMMIT;");
        // Dropped part-way (the host's abort drops the worker's fetch), sqlx stops the
        // script before its COMMIT and returns the connection to the pool inside our
        // transaction, which it does not track: every later write on it would vanish.
        // So the connection is closed instead, unless the script ran to its end.
        let mut conn = CloseUnlessFinished {
            conn,
            finished: false,
        };
        let result = sqlx::raw_sql(AssertSqlSafe(script))
            .fetch_all(&mut *conn.conn)
            .await
            .and_then(|rows| {
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                            r.try_get(6)?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
            });
        match result {
            Ok(rows) => {
                conn.finished = true;
                Ok(in_order(rows))
            }
            Err(e) => {
                // A statement failed part-way: the script stopped before its COMMIT. Roll
                // back here, or the connection would go back to the pool inside a
                // transaction; one that cannot even do that is closed, not reused.
                match sqlx::query("ROLLBACK").execute(&mut *conn.conn).await {
                    // Rolled back, or SQLite says no transaction was open.
                    Ok(_) | Err(sqlx::Error::Database(_)) => conn.finished = true,
                    Err(_) => {}
                }
                Err(e.into())
            }
        }
    }

    pub(crate) async fn next_due(&self, queue: &str) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(sql(format!(
            "SELECT min(run_at) - {NOW} FROM {T} WHERE queue = ?1 AND state IN {WAITING}"
        )))
        .bind(queue)
        .fetch_one(&self.pool)
        .await?)
    }

    pub(crate) async fn succeed(&self, done: &[(i64, i64)]) -> Result<u64, Error> {
        let (mut conn, _writer) = self.writer().await?;
        succeed_on(&mut conn, done).await
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
        let (mut conn, _writer) = self.writer().await?;
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
        .fetch_optional(&mut *conn)
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
        let (mut conn, _writer) = self.writer().await?;
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET state = ?4, last_error = ?3, lease_until = NULL, finished_at = {NOW} \
             WHERE id = ?1 AND run = ?2 AND state = 'running'"
        )))
        .bind(id)
        .bind(run)
        .bind(error)
        .bind(state)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1)
    }

    pub(crate) async fn interrupt(
        &self,
        _queue: &str,
        held: &[(i64, i64)],
    ) -> Result<Vec<i64>, Error> {
        let (mut conn, _writer) = self.writer().await?;
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
            out.extend(q.fetch_all(&mut *conn).await?);
        }
        Ok(out)
    }

    pub(crate) async fn renew(
        &self,
        held: &[(i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<Renewed>, Error> {
        let (mut conn, _writer) = self.writer().await?;
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
                q.fetch_all(&mut *conn)
                    .await?
                    .into_iter()
                    .map(|(id, cancel_message)| Renewed { id, cancel_message }),
            );
        }
        Ok(out)
    }

    pub(crate) async fn reclaim(&self, queue: &str) -> Result<u64, Error> {
        let (mut conn, _writer) = self.writer().await?;
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
        .execute(&mut *conn)
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
        let (mut conn, _writer) = self.writer().await?;
        let updated: Option<String> = sqlx::query_scalar(sql(format!(
            "UPDATE {T} SET cancel_message = ?2, \
               state = CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END, \
               last_error = CASE WHEN state = 'running' THEN last_error ELSE 'cancelled: ' || ?2 END, \
               finished_at = CASE WHEN state = 'running' THEN NULL ELSE {NOW} END \
             WHERE id = ?1 AND state IN ('queued', 'retrying', 'interrupted', 'running') RETURNING state"
        )))
        .bind(id)
        .bind(message)
        .fetch_optional(&mut *conn)
        .await?;
        let existing = match updated {
            Some(_) => None,
            None => {
                sqlx::query_scalar(sql(format!("SELECT state FROM {T} WHERE id = ?1")))
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?
            }
        };
        Ok(cancel_outcome(updated, existing))
    }

    pub(crate) async fn retry(&self, id: i64) -> Result<bool, Error> {
        let (mut conn, _writer) = self.writer().await?;
        Ok(sqlx::query(sql(format!(
            "UPDATE {T} SET state = 'queued', attempts = 0, lease_losses = 0, run_at = {NOW}, \
               finished_at = NULL, cancel_message = NULL \
             WHERE id = ?1 AND state IN ('dead', 'cancelled')"
        )))
        .bind(id)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1)
    }
}

async fn fetch_on(
    conn: &mut SqliteConnection,
    queue: &str,
    n: usize,
    lease_ms: i64,
    worker: &str,
) -> Result<Vec<Fetched>, Error> {
    let rows: Vec<(i64, String, i32, i32, i64, i32, i64)> =
        sqlx::query_as(sql(fetch_sql("?1", "?2", "?3", "?4")))
            .bind(queue)
            .bind(n as i64)
            .bind(lease_ms)
            .bind(worker)
            .fetch_all(&mut *conn)
            .await?;
    Ok(in_order(rows))
}

/// The fetch: claims up to `n` due jobs of `queue` for `worker` under a lease of
/// `lease_ms`. The values are SQL: placeholders (`fetch_on`) or literals (the script of
/// `SqliteStore::succeed_and_fetch`), so the statement is written once for both.
fn fetch_sql(queue: &str, n: &str, lease_ms: &str, worker: &str) -> String {
    format!(
        "UPDATE {T} SET state = 'running', run = run + 1, lease_until = {NOW} + {lease_ms}, worker = {worker} \
         WHERE id IN (SELECT id FROM {T} WHERE queue = {queue} AND state IN {WAITING} AND run_at <= {NOW} \
                      ORDER BY priority DESC, run_at, id LIMIT {n}) \
         RETURNING id, payload, attempts, max_attempts, run, priority, run_at"
    )
}

/// The success of the attempts in `pairs` (`(id, run), …` as SQL: placeholders or
/// literals), fenced: only attempts still holding their job.
fn succeed_sql(pairs: &str) -> String {
    format!(
        "UPDATE {T} SET state = 'succeeded', lease_until = NULL, finished_at = {NOW} \
         WHERE (id, run) IN (VALUES {pairs}) AND state = 'running'"
    )
}

/// Marks the attempts `done` succeeded (fenced: only attempts still holding their job);
/// returns the rows affected.
async fn succeed_on(conn: &mut SqliteConnection, done: &[(i64, i64)]) -> Result<u64, Error> {
    let mut n = 0;
    for chunk in done.chunks(CHUNK) {
        let mut q = sqlx::query(sql(succeed_sql(&pairs(chunk.len()))));
        for (id, run) in chunk {
            q = q.bind(id).bind(run);
        }
        n += q.execute(&mut *conn).await?.rows_affected();
    }
    Ok(n)
}

/// A pooled connection that is closed when dropped, not returned to the pool, unless
/// `finished` (see `SqliteStore::succeed_and_fetch`).
struct CloseUnlessFinished {
    conn: PoolConnection<Sqlite>,
    finished: bool,
}

impl Drop for CloseUnlessFinished {
    fn drop(&mut self) {
        if !self.finished {
            self.conn.close_on_drop();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Connection as _;
    use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

    use crate::store::Store;
    use crate::{Jobs, NewJob};

    /// The fetch dropped mid-script (the host's abort drops the worker's loop with its
    /// fetch in flight) must not leave the pooled connection inside its `BEGIN
    /// IMMEDIATE`: the next writes through the pool must commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_dropped_mid_script_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.path().join("jobs.db"))
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(2));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(opts.clone())
            .await
            .unwrap();
        let jobs = Jobs::sqlite(pool.clone()).await.unwrap();
        jobs.enqueue(NewJob::new("q", &1)).await.unwrap();
        let Store::Sqlite(s) = jobs.store().clone() else {
            unreachable!()
        };
        // Another process holds the write lock for a moment.
        let mut other = sqlx::SqliteConnection::connect_with(&opts).await.unwrap();
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut other)
            .await
            .unwrap();
        let dropped = tokio::time::timeout(
            Duration::from_millis(200),
            s.succeed_and_fetch(&[(999, 1)], "q", 10, 60_000, "w"),
        )
        .await;
        assert!(dropped.is_err(), "the fetch was dropped in flight");
        sqlx::query("COMMIT").execute(&mut other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A job enqueued now, through the same pool, reports success...
        let id = jobs.enqueue(NewJob::new("q", &2)).await.unwrap().id;
        let seen_here = jobs.get(id).await.unwrap().is_some();
        let seen_elsewhere: i64 =
            sqlx::query_scalar("SELECT count(*) FROM gracefully_jobs WHERE id = ?1")
                .bind(id.get())
                .fetch_one(&mut other)
                .await
                .unwrap();
        let other_can_write = sqlx::query("UPDATE gracefully_jobs SET priority = 0 WHERE 0")
            .execute(&mut other)
            .await;
        assert!(seen_here);
        assert!(other_can_write.is_ok(), "{other_can_write:?}");
        // ...and the next fetch on that connection rolls it back.
        let next = s.succeed_and_fetch(&[(999, 1)], "q", 10, 60_000, "w").await;
        let after = jobs.get(id).await.unwrap().is_some();
        assert!(next.is_ok(), "{next:?}");
        assert_eq!(seen_elsewhere, 1, "the enqueue was left uncommitted");
        assert!(after, "the enqueue was lost");
    }
}
