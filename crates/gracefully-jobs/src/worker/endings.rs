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
/// at the first database error and gives back what is left.
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
