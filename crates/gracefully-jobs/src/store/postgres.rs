//! The PostgreSQL job table: `FOR UPDATE SKIP LOCKED` fetches, leases in the database's
//! clock, `NOTIFY` on two channels per schema (`<schema>.wake` with a queue name when jobs
//! become due; `<schema>.cancel` with `<id>\n<message>` when a running job is to be
//! cancelled). All statements are built once, with the schema quoted, and prepared by sqlx
//! per connection.

use sqlx::{AssertSqlSafe, PgConnection, PgPool, SqlSafeStr, SqlStr};

use super::in_order;
use super::{
    Fetched, INFO_COLUMNS, InfoTuple, MAX_LEASE_LOSSES, Renewed, cancel_outcome, counts, info,
};
use crate::error::Error;
use crate::new_job::Row;
use crate::state::{CancelOutcome, JobId, JobInfo, JobState, StateCounts};

/// The database's clock in milliseconds (store #3), as of the statement's start.
const NOW: &str = "(extract(epoch from now()) * 1000)::bigint";

/// The database's clock in milliseconds when read (store #3). A lease is measured from
/// when its row was written, not from when the statement began: a renewal that waited
/// for row locks would otherwise hand out a lease already partly spent (store #5).
const CLOCK: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// Locks, in id order, the running rows of this attempt list (`$ids`, `$runs`): every
/// statement that updates several running rows takes its locks through this, so two of
/// them can never wait on each other (store #5). `MATERIALIZED` keeps the lock order the
/// sort's: an inlined CTE would lock in the join's order.
fn lock_running(s: &str, name: &str, ids: &str, runs: &str) -> String {
    format!(
        "{name} AS MATERIALIZED (SELECT j.id FROM {s} AS j \
           JOIN unnest({ids}::bigint[], {runs}::bigint[]) AS d(id, run) ON j.id = d.id AND j.run = d.run \
           WHERE j.state = 'running' ORDER BY j.id FOR UPDATE OF j)"
    )
}

/// The longest `NOTIFY` payload we send (PostgreSQL's limit is 8000 bytes).
const MAX_NOTIFY: usize = 4000;

#[derive(Debug)]
pub(crate) struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) schema: String,
    pub(crate) wake_channel: String,
    pub(crate) cancel_channel: String,
    sql: Sql,
}

#[derive(Debug)]
struct Sql {
    enqueue: SqlStr,
    existing: SqlStr,
    enqueue_many: SqlStr,
    notify: SqlStr,
    fetch: SqlStr,
    next_due: SqlStr,
    succeed: SqlStr,
    succeed_and_fetch: SqlStr,
    complete: SqlStr,
    fail: SqlStr,
    dead: SqlStr,
    cancelled: SqlStr,
    interrupt: SqlStr,
    renew: SqlStr,
    reclaim: SqlStr,
    cancel_requests: SqlStr,
    get: SqlStr,
    list: SqlStr,
    counts: SqlStr,
    cancel: SqlStr,
    state_of: SqlStr,
    retry: SqlStr,
}

fn sql(s: String) -> SqlStr {
    AssertSqlSafe(s).into_sql_str()
}

/// A schema name: 1 to 48 of `[a-z0-9_]`, not starting with a digit (so the channel names
/// fit PostgreSQL's 63-byte identifiers, and nothing needs escaping).
pub(crate) fn validate_schema(schema: &str) -> Result<(), Error> {
    let ok = !schema.is_empty()
        && schema.len() <= 48
        && !schema.starts_with(|c: char| c.is_ascii_digit())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "schema",
            format!(
                "a schema name has 1 to 48 characters from [a-z0-9_] and does not start \
                 with a digit, got {schema:?}"
            ),
        ))
    }
}

impl PgStore {
    pub(crate) fn new(pool: PgPool, schema: &str) -> Result<PgStore, Error> {
        validate_schema(schema)?;
        let s = format!("\"{schema}\".jobs");
        let waiting = "('queued', 'retrying', 'interrupted')";
        // The fetch (`picked` + the update claiming it) and the success of a batch, each
        // written once: `fetch` and `succeed` use them alone, `succeed_and_fetch` both.
        let claim = format!(
            "picked AS (SELECT id FROM {s} WHERE queue = $1 AND state IN {waiting} AND run_at <= {NOW} \
               ORDER BY priority DESC, run_at, id LIMIT $2 FOR UPDATE SKIP LOCKED) \
             UPDATE {s} AS j SET state = 'running', run = j.run + 1, lease_until = {CLOCK} + $3, worker = $4 \
             FROM picked WHERE j.id = picked.id \
             RETURNING j.id, j.payload::text, j.attempts, j.max_attempts, j.run, j.priority, j.run_at"
        );
        // The rows to mark succeeded, locked in id order (`ok`), then the update: two CTE
        // parts, so that `succeed_and_fetch` can put them in front of the claim.
        let succeed = |ids: &str, runs: &str| {
            (
                lock_running(&s, "ok", ids, runs),
                format!(
                    "UPDATE {s} AS j SET state = 'succeeded', lease_until = NULL, finished_at = {NOW} \
                     FROM ok WHERE j.id = ok.id AND j.state = 'running'"
                ),
            )
        };
        let (ok, mark_ok) = succeed("$1", "$2");
        let (ok_then, mark_ok_then) = succeed("$5", "$6");
        let info_cols = INFO_COLUMNS.replace("{payload}", "payload::text");
        let sql = Sql {
            enqueue: sql(format!(
                "WITH ins AS (INSERT INTO {s} (queue, payload, priority, run_at, max_attempts, unique_key, created_at) \
                 VALUES ($1, $2::jsonb, $3, COALESCE($4, {NOW} + $5), $6, $7, {NOW}) \
                 ON CONFLICT DO NOTHING RETURNING id) \
                 SELECT ins.id FROM ins, LATERAL (SELECT pg_notify($8, $1)) AS n"
            )),
            existing: sql(format!(
                "SELECT id FROM {s} WHERE queue = $1 AND unique_key = $2"
            )),
            enqueue_many: sql(format!(
                "INSERT INTO {s} (queue, payload, priority, run_at, max_attempts, unique_key, created_at) \
                 SELECT q, p::jsonb, pr, COALESCE(at, {NOW} + d), m, k, {NOW} \
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::bigint[], $5::bigint[], $6::int[], $7::text[]) \
                   AS t(q, p, pr, at, d, m, k) \
                 ON CONFLICT DO NOTHING"
            )),
            notify: sql("SELECT pg_notify($1, q) FROM unnest($2::text[]) AS q".into()),
            fetch: sql(format!("WITH {claim}")),
            // One statement, so one round trip and one commit (run #5 in
            // `worker/run.rs`); the two updates touch disjoint rows (running / waiting).
            succeed_and_fetch: sql(format!("WITH {ok_then}, done AS ({mark_ok_then}), {claim}")),
            next_due: sql(format!(
                "SELECT min(run_at) - {NOW} FROM {s} WHERE queue = $1 AND state IN {waiting}"
            )),
            succeed: sql(format!("WITH {ok} {mark_ok}")),
            complete: sql(format!(
                "UPDATE {s} SET state = 'succeeded', lease_until = NULL, finished_at = {NOW} \
                 WHERE id = $1 AND run = $2 AND state = 'running'"
            )),
            fail: sql(format!(
                "UPDATE {s} SET attempts = attempts + 1, last_error = $3, lease_until = NULL, \
                   state = CASE WHEN attempts + 1 >= max_attempts THEN 'dead' ELSE 'retrying' END, \
                   run_at = {NOW} + $4, \
                   finished_at = CASE WHEN attempts + 1 >= max_attempts THEN {NOW} END \
                 WHERE id = $1 AND run = $2 AND state = 'running' RETURNING state"
            )),
            dead: sql(format!(
                "UPDATE {s} SET state = 'dead', last_error = $3, lease_until = NULL, finished_at = {NOW} \
                 WHERE id = $1 AND run = $2 AND state = 'running'"
            )),
            cancelled: sql(format!(
                "UPDATE {s} SET state = 'cancelled', last_error = $3, lease_until = NULL, finished_at = {NOW} \
                 WHERE id = $1 AND run = $2 AND state = 'running'"
            )),
            interrupt: sql(format!(
                "WITH {held} UPDATE {s} AS j SET lease_until = NULL, run_at = {NOW}, \
                   state = CASE WHEN j.cancel_message IS NOT NULL THEN 'cancelled' ELSE 'interrupted' END, \
                   finished_at = CASE WHEN j.cancel_message IS NOT NULL THEN {NOW} END \
                 FROM held WHERE j.id = held.id AND j.state = 'running' RETURNING j.id",
                held = lock_running(&s, "held", "$1", "$2"),
            )),
            renew: sql(format!(
                "WITH {held} UPDATE {s} AS j SET lease_until = {CLOCK} + $3 \
                 FROM held WHERE j.id = held.id AND j.state = 'running' \
                 RETURNING j.id, j.cancel_message",
                held = lock_running(&s, "held", "$1", "$2"),
            )),
            // Rows locked by anyone (their worker renewing or ending them this instant) are
            // skipped: the next heartbeat sees them again if they are still expired.
            reclaim: sql(format!(
                "WITH expired AS MATERIALIZED (SELECT id FROM {s} WHERE queue = $1 AND state = 'running' \
                   AND lease_until < {NOW} ORDER BY id FOR UPDATE SKIP LOCKED) \
                 UPDATE {s} AS j SET lease_losses = lease_losses + 1, lease_until = NULL, run_at = {NOW}, \
                   state = CASE WHEN cancel_message IS NOT NULL THEN 'cancelled' \
                                WHEN lease_losses + 1 >= {MAX_LEASE_LOSSES} THEN 'dead' ELSE 'interrupted' END, \
                   last_error = CASE WHEN cancel_message IS NOT NULL THEN last_error \
                     ELSE 'lease expired: worker ' || coalesce(worker, '?') || ' stopped renewing it (lost lease ' \
                          || (lease_losses + 1) || ' of {MAX_LEASE_LOSSES})' END, \
                   finished_at = CASE WHEN cancel_message IS NOT NULL OR lease_losses + 1 >= {MAX_LEASE_LOSSES} THEN {NOW} END \
                 FROM expired WHERE j.id = expired.id AND j.state = 'running' AND j.lease_until < {NOW}"
            )),
            cancel_requests: sql(format!(
                "SELECT j.id, j.cancel_message FROM {s} AS j \
                 JOIN unnest($1::bigint[], $2::bigint[]) AS d(id, run) ON j.id = d.id AND j.run = d.run \
                 WHERE j.state = 'running' AND j.cancel_message IS NOT NULL"
            )),
            get: sql(format!("SELECT {info_cols} FROM {s} WHERE id = $1")),
            list: sql(format!(
                "SELECT {info_cols} FROM {s} WHERE ($1::text IS NULL OR queue = $1) \
                 AND ($2::text IS NULL OR state = $2) ORDER BY id DESC LIMIT $3"
            )),
            counts: sql(format!(
                "SELECT state, count(*) FROM {s} WHERE ($1::text IS NULL OR queue = $1) GROUP BY state"
            )),
            cancel: sql(format!(
                "UPDATE {s} SET cancel_message = $2, \
                   state = CASE WHEN state = 'running' THEN 'running' ELSE 'cancelled' END, \
                   last_error = CASE WHEN state = 'running' THEN last_error ELSE 'cancelled: ' || $2 END, \
                   finished_at = CASE WHEN state = 'running' THEN NULL ELSE {NOW} END \
                 WHERE id = $1 AND state IN ('queued', 'retrying', 'interrupted', 'running') RETURNING state"
            )),
            state_of: sql(format!("SELECT state FROM {s} WHERE id = $1")),
            retry: sql(format!(
                "UPDATE {s} SET state = 'queued', attempts = 0, lease_losses = 0, run_at = {NOW}, \
                   finished_at = NULL, cancel_message = NULL \
                 WHERE id = $1 AND state IN ('dead', 'cancelled') RETURNING queue"
            )),
        };
        Ok(PgStore {
            pool,
            schema: schema.to_owned(),
            wake_channel: format!("{schema}.wake"),
            cancel_channel: format!("{schema}.cancel"),
            sql,
        })
    }

    /// Creates the schema and table, or brings them to the current version. Safe to run
    /// from many processes at once (a transaction-scoped advisory lock serialises them).
    pub(crate) async fn migrate(&self) -> Result<(), Error> {
        let schema = &self.schema;
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('gracefully_jobs:' || $1))")
            .bind(schema)
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"")))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sql(format!(
            "CREATE TABLE IF NOT EXISTS \"{schema}\".schema_version (version integer NOT NULL)"
        )))
        .execute(&mut *tx)
        .await?;
        let version: Option<i32> = sqlx::query_scalar(sql(format!(
            "SELECT max(version) FROM \"{schema}\".schema_version"
        )))
        .fetch_one(&mut *tx)
        .await?;
        if version.unwrap_or(0) < 1 {
            for stmt in [
                format!(
                    "CREATE TABLE \"{schema}\".jobs (
                       id bigserial PRIMARY KEY,
                       queue text NOT NULL,
                       payload jsonb NOT NULL,
                       state text NOT NULL DEFAULT 'queued',
                       priority integer NOT NULL DEFAULT 0,
                       run_at bigint NOT NULL,
                       attempts integer NOT NULL DEFAULT 0,
                       max_attempts integer NOT NULL,
                       lease_losses integer NOT NULL DEFAULT 0,
                       run bigint NOT NULL DEFAULT 0,
                       lease_until bigint,
                       worker text,
                       unique_key text,
                       last_error text,
                       cancel_message text,
                       created_at bigint NOT NULL,
                       finished_at bigint
                     )"
                ),
                format!(
                    "CREATE UNIQUE INDEX jobs_unique_key ON \"{schema}\".jobs (queue, unique_key) \
                     WHERE unique_key IS NOT NULL"
                ),
                format!(
                    "CREATE INDEX jobs_waiting ON \"{schema}\".jobs (queue, priority DESC, run_at, id) \
                     WHERE state IN ('queued', 'retrying', 'interrupted')"
                ),
                format!(
                    "CREATE INDEX jobs_leases ON \"{schema}\".jobs (queue, lease_until) WHERE state = 'running'"
                ),
                format!("INSERT INTO \"{schema}\".schema_version (version) VALUES (1)"),
            ] {
                sqlx::query(sql(stmt)).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn enqueue(&self, row: Row) -> Result<(JobId, bool), Error> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_on(&mut conn, row).await
    }

    pub(crate) async fn enqueue_on(
        &self,
        conn: &mut PgConnection,
        row: Row,
    ) -> Result<(JobId, bool), Error> {
        let id: Option<i64> = sqlx::query_scalar(self.sql.enqueue.clone())
            .bind(&row.queue)
            .bind(&row.payload)
            .bind(row.priority)
            .bind(row.run_at_ms)
            .bind(row.delay_ms)
            .bind(row.max_attempts)
            .bind(&row.unique_key)
            .bind(&self.wake_channel)
            .fetch_optional(&mut *conn)
            .await?;
        if let Some(id) = id {
            return Ok((JobId::from(id), true));
        }
        // Only a unique key conflicts (store: the unique index).
        let id: i64 = sqlx::query_scalar(self.sql.existing.clone())
            .bind(&row.queue)
            .bind(&row.unique_key)
            .fetch_one(&mut *conn)
            .await?;
        Ok((JobId::from(id), false))
    }

    pub(crate) async fn enqueue_many(&self, rows: Vec<Row>) -> Result<u64, Error> {
        let mut conn = self.pool.acquire().await?;
        self.enqueue_many_on(&mut conn, rows).await
    }

    pub(crate) async fn enqueue_many_on(
        &self,
        conn: &mut PgConnection,
        rows: Vec<Row>,
    ) -> Result<u64, Error> {
        if rows.is_empty() {
            return Ok(0);
        }
        let n = rows.len();
        let (mut q, mut p, mut pr, mut at, mut d, mut m, mut k) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut queues: Vec<String> = Vec::new();
        for r in rows {
            if !queues.contains(&r.queue) {
                queues.push(r.queue.clone());
            }
            q.push(r.queue);
            p.push(r.payload);
            pr.push(r.priority);
            at.push(r.run_at_ms);
            d.push(r.delay_ms);
            m.push(r.max_attempts);
            k.push(r.unique_key);
        }
        let inserted = sqlx::query(self.sql.enqueue_many.clone())
            .bind(q)
            .bind(p)
            .bind(pr)
            .bind(at)
            .bind(d)
            .bind(m)
            .bind(k)
            .execute(&mut *conn)
            .await?
            .rows_affected();
        // In the caller's transaction the notification is delivered at its commit, or never.
        sqlx::query(self.sql.notify.clone())
            .bind(&self.wake_channel)
            .bind(queues)
            .execute(&mut *conn)
            .await?;
        Ok(inserted)
    }

    pub(crate) async fn fetch(
        &self,
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        let rows: Vec<(i64, String, i32, i32, i64, i32, i64)> =
            sqlx::query_as(self.sql.fetch.clone())
                .bind(queue)
                .bind(n as i64)
                .bind(lease_ms)
                .bind(worker)
                .fetch_all(&self.pool)
                .await?;
        Ok(in_order(rows))
    }

    /// Records `done` as succeeded and fetches up to `n` jobs, in one statement.
    pub(crate) async fn succeed_and_fetch(
        &self,
        done: &[(i64, i64)],
        queue: &str,
        n: usize,
        lease_ms: i64,
        worker: &str,
    ) -> Result<Vec<Fetched>, Error> {
        let (ids, runs): (Vec<i64>, Vec<i64>) = done.iter().copied().unzip();
        let rows: Vec<(i64, String, i32, i32, i64, i32, i64)> =
            sqlx::query_as(self.sql.succeed_and_fetch.clone())
                .bind(queue)
                .bind(n as i64)
                .bind(lease_ms)
                .bind(worker)
                .bind(ids)
                .bind(runs)
                .fetch_all(&self.pool)
                .await?;
        Ok(in_order(rows))
    }

    pub(crate) async fn next_due(&self, queue: &str) -> Result<Option<i64>, Error> {
        Ok(sqlx::query_scalar(self.sql.next_due.clone())
            .bind(queue)
            .fetch_one(&self.pool)
            .await?)
    }

    pub(crate) async fn succeed(&self, done: &[(i64, i64)]) -> Result<u64, Error> {
        let (ids, runs): (Vec<i64>, Vec<i64>) = done.iter().copied().unzip();
        Ok(sqlx::query(self.sql.succeed.clone())
            .bind(ids)
            .bind(runs)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    pub(crate) async fn complete_on(
        &self,
        conn: &mut PgConnection,
        id: i64,
        run: i64,
    ) -> Result<bool, Error> {
        Ok(sqlx::query(self.sql.complete.clone())
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
        let state: Option<String> = sqlx::query_scalar(self.sql.fail.clone())
            .bind(id)
            .bind(run)
            .bind(error)
            .bind(delay_ms)
            .fetch_optional(&self.pool)
            .await?;
        Ok(state.as_deref().and_then(JobState::parse))
    }

    pub(crate) async fn dead(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        self.end(&self.sql.dead, id, run, error).await
    }

    pub(crate) async fn cancelled(&self, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        self.end(&self.sql.cancelled, id, run, error).await
    }

    async fn end(&self, stmt: &SqlStr, id: i64, run: i64, error: &str) -> Result<bool, Error> {
        Ok(sqlx::query(stmt.clone())
            .bind(id)
            .bind(run)
            .bind(error)
            .execute(&self.pool)
            .await?
            .rows_affected()
            == 1)
    }

    pub(crate) async fn interrupt(
        &self,
        queue: &str,
        held: &[(i64, i64)],
    ) -> Result<Vec<i64>, Error> {
        let (ids, runs): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        let returned: Vec<i64> = sqlx::query_scalar(self.sql.interrupt.clone())
            .bind(ids)
            .bind(runs)
            .fetch_all(&self.pool)
            .await?;
        if !returned.is_empty() {
            self.wake(queue).await?;
        }
        Ok(returned)
    }

    async fn wake(&self, queue: &str) -> Result<(), Error> {
        sqlx::query(self.sql.notify.clone())
            .bind(&self.wake_channel)
            .bind(vec![queue])
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn renew(
        &self,
        held: &[(i64, i64)],
        lease_ms: i64,
    ) -> Result<Vec<Renewed>, Error> {
        let (ids, runs): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(self.sql.renew.clone())
            .bind(ids)
            .bind(runs)
            .bind(lease_ms)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, cancel_message)| Renewed { id, cancel_message })
            .collect())
    }

    pub(crate) async fn reclaim(&self, queue: &str) -> Result<u64, Error> {
        let n = sqlx::query(self.sql.reclaim.clone())
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if n > 0 {
            self.wake(queue).await?;
        }
        Ok(n)
    }

    pub(crate) async fn cancel_requests(&self, held: &[(i64, i64)]) -> Result<Vec<Renewed>, Error> {
        let (ids, runs): (Vec<i64>, Vec<i64>) = held.iter().copied().unzip();
        let rows: Vec<(i64, Option<String>)> = sqlx::query_as(self.sql.cancel_requests.clone())
            .bind(ids)
            .bind(runs)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, cancel_message)| Renewed { id, cancel_message })
            .collect())
    }

    pub(crate) async fn get(&self, id: i64) -> Result<Option<JobInfo>, Error> {
        let row: Option<InfoTuple> = sqlx::query_as(self.sql.get.clone())
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
        let rows: Vec<InfoTuple> = sqlx::query_as(self.sql.list.clone())
            .bind(queue)
            .bind(state)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(info).collect()
    }

    pub(crate) async fn counts(&self, queue: Option<&str>) -> Result<StateCounts, Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(self.sql.counts.clone())
            .bind(queue)
            .fetch_all(&self.pool)
            .await?;
        Ok(counts(rows))
    }

    pub(crate) async fn cancel(&self, id: i64, message: &str) -> Result<CancelOutcome, Error> {
        let updated: Option<String> = sqlx::query_scalar(self.sql.cancel.clone())
            .bind(id)
            .bind(message)
            .fetch_optional(&self.pool)
            .await?;
        let existing = match updated {
            Some(_) => None,
            None => {
                sqlx::query_scalar(self.sql.state_of.clone())
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let outcome = cancel_outcome(updated, existing);
        if outcome == CancelOutcome::Requested {
            let mut payload = format!("{id}\n{message}");
            if payload.len() > MAX_NOTIFY {
                let mut cut = MAX_NOTIFY;
                while !payload.is_char_boundary(cut) {
                    cut -= 1;
                }
                payload.truncate(cut);
            }
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(&self.cancel_channel)
                .bind(payload)
                .execute(&self.pool)
                .await?;
        }
        Ok(outcome)
    }

    pub(crate) async fn retry(&self, id: i64) -> Result<bool, Error> {
        let queue: Option<String> = sqlx::query_scalar(self.sql.retry.clone())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        match queue {
            Some(q) => {
                self.wake(&q).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// A cancel notification's payload: `<id>\n<message>`.
pub(crate) fn parse_cancel(payload: &str) -> Option<(i64, String)> {
    let (id, message) = payload.split_once('\n').unwrap_or((payload, ""));
    Some((id.parse().ok()?, message.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_that_would_need_quoting_are_rejected_naming_the_option() {
        for bad in ["", "Jobs", "1jobs", "a-b", "a\"b", &"x".repeat(49)] {
            let err = validate_schema(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Config {
                        option: "schema",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        validate_schema("gracefully_jobs").unwrap();
    }

    /// Two heartbeats renewing the same leases in opposite orders, then a renewal beside
    /// a return of the same jobs in the opposite order: with locks taken in the order of
    /// the list, these wait on each other and the server aborts one with "deadlock
    /// detected" after its `deadlock_timeout` (store #5).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL: set DATABASE_URL"]
    async fn writes_to_many_running_rows_never_deadlock_whatever_their_order() {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let schema = format!("jobs_lock_order_{}", std::process::id());
        sqlx::query(sql(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
        let store = std::sync::Arc::new(PgStore::new(pool.clone(), &schema).unwrap());
        store.migrate().await.unwrap();
        const N: usize = 400;
        let rows = (0..N)
            .map(|i| Row::from_new(crate::NewJob::new("q", &i)).unwrap())
            .collect();
        assert_eq!(store.enqueue_many(rows).await.unwrap(), N as u64);
        let held: Vec<(i64, i64)> = store
            .fetch("q", N, 60_000, "w")
            .await
            .unwrap()
            .iter()
            .map(|f| (f.id, f.run))
            .collect();
        assert_eq!(held.len(), N);
        let mut reversed = held.clone();
        reversed.reverse();
        for _ in 0..10 {
            let (a, b) = tokio::join!(store.renew(&held, 60_000), store.renew(&reversed, 60_000));
            assert_eq!(a.expect("renew ascending").len(), N);
            assert_eq!(b.expect("renew descending").len(), N);
        }
        let (renewed, returned) =
            tokio::join!(store.renew(&held, 60_000), store.interrupt("q", &reversed));
        renewed.expect("renew beside a return");
        assert_eq!(returned.expect("return beside a renewal").len(), N);
        sqlx::query(sql(format!("DROP SCHEMA \"{schema}\" CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
    }

    #[test]
    fn cancel_notifications_carry_the_id_and_the_message() {
        assert_eq!(
            parse_cancel("42\nno longer wanted"),
            Some((42, "no longer wanted".into()))
        );
        assert_eq!(parse_cancel("42"), Some((42, String::new())));
        assert_eq!(parse_cancel("x\ny"), None);
    }
}
