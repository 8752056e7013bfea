//! Writing how attempts ended, in batches, off the worker's loop: the loop hands a batch
//! of [`Pending`] endings to [`write`], keeps running handlers and fetching while the
//! batch is in flight, and applies the [`Written`] result when it comes back.

use crate::error::Error;
use crate::state::JobState;
use crate::store::Store;

/// An ending waiting to be written.
#[derive(Debug, Clone)]
pub(crate) enum Pending {
    Succeed(i64, i64),
    /// Return to the queue (shutdown, lost lease, a transaction that did not commit, or a
    /// job fetched as the drain began); fenced.
    Interrupt(i64, i64),
    Fail {
        id: i64,
        run: i64,
        error: String,
        delay_ms: i64,
    },
    Dead {
        id: i64,
        run: i64,
        error: String,
    },
    Cancelled {
        id: i64,
        run: i64,
        error: String,
    },
}

/// One ending written (or found fenced: the attempt no longer held the job).
#[derive(Debug)]
pub(crate) enum Done {
    Succeeded(i64),
    /// `returned`: the job was put back (false: fenced, e.g. its transaction committed).
    Interrupted {
        id: i64,
        returned: bool,
    },
    /// The state the failure led to (`None`: fenced).
    Failed {
        id: i64,
        state: Option<JobState>,
    },
    Dead(i64),
    Cancelled(i64),
}

impl Pending {
    /// The job and the attempt (`run`) it ends.
    pub(crate) fn job(&self) -> (i64, i64) {
        match self {
            Pending::Succeed(id, run) | Pending::Interrupt(id, run) => (*id, *run),
            Pending::Fail { id, run, .. }
            | Pending::Dead { id, run, .. }
            | Pending::Cancelled { id, run, .. } => (*id, *run),
        }
    }
}

impl Done {
    pub(crate) fn id(&self) -> i64 {
        match self {
            Done::Succeeded(id) | Done::Dead(id) | Done::Cancelled(id) => *id,
            Done::Interrupted { id, .. } | Done::Failed { id, .. } => *id,
        }
    }
}

/// What a batch achieved: the endings written, and — after a database error — the ones
/// still to write.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Each ending written, with the attempt (`run`) it ended.
    pub(crate) done: Vec<(Done, i64)>,
    pub(crate) left: Vec<Pending>,
    pub(crate) error: Option<Error>,
}

/// Writes a batch: successes in one statement, returns in one, the rest one by one. Stops
/// at the first database error and gives back what is left — except that an ending the
/// server refuses is given back while the ones after it are still written.
pub(crate) async fn write(
    store: Store,
    queue: std::sync::Arc<str>,
    pending: Vec<Pending>,
) -> Written {
    let mut out = Written::default();
    let mut succeed = Vec::new();
    let mut interrupt = Vec::new();
    let mut others = Vec::new();
    for p in pending {
        match p {
            Pending::Succeed(id, run) => succeed.push((id, run)),
            Pending::Interrupt(id, run) => interrupt.push((id, run)),
            other => others.push(other),
        }
    }
    let give_back = |out: &mut Written,
                     succeed: Vec<(i64, i64)>,
                     interrupt: Vec<(i64, i64)>,
                     others: Vec<Pending>,
                     e: Error| {
        out.left
            .extend(succeed.into_iter().map(|(i, r)| Pending::Succeed(i, r)));
        out.left
            .extend(interrupt.into_iter().map(|(i, r)| Pending::Interrupt(i, r)));
        out.left.extend(others);
        out.error = Some(e);
    };
    if !succeed.is_empty() {
        match store.succeed(&succeed).await {
            Ok(_) => out.done.extend(
                succeed
                    .drain(..)
                    .map(|(id, run)| (Done::Succeeded(id), run)),
            ),
            Err(e) => {
                give_back(&mut out, succeed, interrupt, others, e);
                return out;
            }
        }
    }
    if !interrupt.is_empty() {
        match store.interrupt(&queue, &interrupt).await {
            Ok(returned) => out.done.extend(interrupt.drain(..).map(|(id, run)| {
                (
                    Done::Interrupted {
                        id,
                        returned: returned.contains(&id),
                    },
                    run,
                )
            })),
            Err(e) => {
                give_back(&mut out, succeed, interrupt, others, e);
                return out;
            }
        }
    }
    let mut rest = others.into_iter();
    while let Some(p) = rest.next() {
        let result = match &p {
            Pending::Fail {
                id,
                run,
                error,
                delay_ms,
            } => store
                .fail(*id, *run, error, *delay_ms)
                .await
                .map(|state| (Done::Failed { id: *id, state }, *run)),
            Pending::Dead { id, run, error } => store
                .dead(*id, *run, error)
                .await
                .map(|_| (Done::Dead(*id), *run)),
            Pending::Cancelled { id, run, error } => store
                .cancelled(*id, *run, error)
                .await
                .map(|_| (Done::Cancelled(*id), *run)),
            Pending::Succeed(..) | Pending::Interrupt(..) => continue, // split off above
        };
        match result {
            Ok(done) => out.done.push(done),
            // The server refused this statement (not the connection): the others may
            // still be written, so one ending that always fails does not block them.
            Err(Error::Database(sqlx::Error::Database(e))) => {
                out.left.push(p);
                out.error = Some(Error::Database(sqlx::Error::Database(e)));
            }
            Err(e) => {
                out.left.push(p);
                out.left.extend(rest);
                out.error = Some(e);
                return out;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Jobs, NewJob};

    /// Bypasses the NUL stripping of `verdict` to get an ending the server refuses.
    #[tokio::test]
    #[ignore = "needs PostgreSQL: set DATABASE_URL"]
    async fn an_ending_the_server_refuses_does_not_block_the_ones_after_it() {
        let url = std::env::var("DATABASE_URL").expect("DATABASE_URL");
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        let schema = format!(
            "jobs_endings_{:016x}",
            std::hash::BuildHasher::hash_one(
                &std::hash::RandomState::new(),
                std::time::SystemTime::now()
            )
        );
        let jobs = Jobs::postgres_in_schema(pool.clone(), &schema)
            .await
            .unwrap();
        jobs.enqueue(NewJob::new("q", &1)).await.unwrap();
        jobs.enqueue(NewJob::new("q", &2)).await.unwrap();
        let store = jobs.store().clone();
        let fetched = store.fetch("q", 2, 60_000, "w").await.unwrap();
        assert_eq!(fetched.len(), 2);
        let (a, b) = (&fetched[0], &fetched[1]);
        let batch = vec![
            Pending::Dead {
                id: a.id,
                run: a.run,
                error: "bad\0byte".into(),
            },
            Pending::Dead {
                id: b.id,
                run: b.run,
                error: "fine".into(),
            },
        ];
        let written = write(store, "q".into(), batch).await;
        assert!(written.error.is_some());
        assert_eq!(written.left.len(), 1);
        assert_eq!(written.left[0].job(), (a.id, a.run));
        assert_eq!(written.done.len(), 1);
        assert!(matches!(written.done[0].0, Done::Dead(id) if id == b.id));
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(&pool)
        .await
        .unwrap();
    }
}
