//! Work that outlives the caller's future: a blocking thread (local files) or a task
//! (object storage), with a token the caller's future cancels when it is dropped, and —
//! with the `host` feature — accounted as a tracked task of the running host.
//!
//! Invariants (cited as "job invariant N"):
//!
//! 1. **The job's token fires when the caller stops waiting.** It is a child of the
//!    caller's token, and the caller's handle ([`Job`], or the writer holding it) cancels it
//!    when dropped; so a dropped future stops the work at its next chunk, which then cleans
//!    up (temp invariant 4 in `local/temp.rs`; the aborted upload in `object/`).
//! 2. **The result travels once.** The work sends its result on a oneshot channel and
//!    nothing else; the caller's [`Job`] awaits it, so when it resolves the work is over
//!    (committed, or cleaned up). A panic travels the same way and resumes in the caller.
//! 3. **Tracked when a host runs** (feature `host`): the work's completion is awaited by a
//!    tracked task of the host (docs/architecture.md, "The shutdown contract", rule 3), named
//!    after the operation, so the report names a write still running at the abort phase;
//!    the host aborting that task cancels the job's token too (with `ReasonKind::Shutdown`).

use std::error::Error as StdError;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use gracefully::{CancellationSource, CancellationToken, Cancelled, Reason};
use tokio::sync::oneshot;

use crate::error::Error;

/// What a tracked task reports to the host: the outcome without the value.
type Summary = Result<(), Box<dyn StdError + Send + Sync>>;

/// Cancels its source with `message` when dropped (a `DropGuard` with a reason that says
/// what happened).
pub(crate) struct CancelOnDrop {
    source: CancellationSource,
    reason: fn() -> Reason,
}

impl CancelOnDrop {
    pub(crate) fn new(source: CancellationSource, reason: fn() -> Reason) -> Self {
        CancelOnDrop { source, reason }
    }

    /// Cancels now with `reason` (which wins over the drop's).
    pub(crate) fn cancel_with(&self, reason: Reason) {
        self.source.cancel_with(reason);
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.source.cancel_with((self.reason)());
    }
}

/// The caller's side of a job: resolves to the work's result (job invariant 2); dropping it
/// cancels the work (job invariant 1).
pub(crate) struct Job<T> {
    result: oneshot::Receiver<std::thread::Result<Result<T, Error>>>,
    /// The token the work observes.
    job: CancellationToken,
    cancel: CancelOnDrop,
}

impl<T> Job<T> {
    /// The token the work observes.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.job
    }

    /// Cancels the work now with `reason`; await the job for it to end.
    pub(crate) fn cancel_with(&self, reason: Reason) {
        self.cancel.cancel_with(reason);
    }
}

impl<T> Future for Job<T> {
    type Output = Result<T, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(Pin::new(&mut self.result).poll(cx)) {
            Ok(Ok(result)) => Poll::Ready(result),
            Ok(Err(panic)) => resume_unwind(panic),
            // The work was dropped before it ran: the runtime is shutting down.
            Err(_) => Poll::Ready(Err(Error::Cancelled(Cancelled::new(
                Reason::shutdown().with_message("the runtime shut down before the work ran"),
            )))),
        }
    }
}

/// Where a job runs.
pub(crate) struct Spawner {
    #[cfg(feature = "host")]
    lifetime: Option<gracefully_host::Lifetime>,
}

impl Spawner {
    /// Untracked, or (feature `host`) tracked by `lifetime`, else by the running host.
    pub(crate) fn new(
        #[cfg(feature = "host")] lifetime: Option<gracefully_host::Lifetime>,
    ) -> Self {
        Spawner {
            #[cfg(feature = "host")]
            lifetime: lifetime.or_else(gracefully_host::Lifetime::current),
        }
    }

    /// Runs `work` on a blocking thread with the job's token (job invariant 1). `name`
    /// names it in the host's report; `dropped` is the reason given when the caller's
    /// handle is dropped first. Returns the caller's handle.
    ///
    /// Must be called from within a tokio runtime.
    pub(crate) fn blocking<T, F>(
        self,
        name: impl FnOnce() -> String,
        token: &CancellationToken,
        dropped: fn() -> Reason,
        work: F,
    ) -> Job<T>
    where
        T: Send + 'static,
        F: FnOnce(CancellationToken) -> Result<T, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let tokens = self.tokens(token);
        let job_token = tokens.job.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let result = catch_unwind(AssertUnwindSafe(|| work(job_token)));
            let summary = summarize(&result);
            let _ = tx.send(result);
            summary
        });
        tokens.account(name, rx, dropped, |tracked| {
            tracked.then(|| await_summary(handle))
        })
    }

    /// Runs the future `work` as a task with the job's token, like [`blocking`](Self::blocking).
    ///
    /// Must be called from within a tokio runtime.
    #[cfg(feature = "object_store")]
    pub(crate) fn task<T, F, Fut>(
        self,
        name: impl FnOnce() -> String,
        token: &CancellationToken,
        dropped: fn() -> Reason,
        work: F,
    ) -> Job<T>
    where
        T: Send + 'static,
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + Send + 'static,
    {
        use futures_util::FutureExt;
        let (tx, rx) = oneshot::channel();
        let tokens = self.tokens(token);
        let work = work(tokens.job.clone());
        // Its own task, not the tracked one: the host aborting the tracked task cancels the
        // job's token, and this task still gets to clean up (abort the upload on the server).
        let handle = tokio::spawn(async move {
            let result = AssertUnwindSafe(work).catch_unwind().await;
            let summary = summarize(&result);
            let _ = tx.send(result);
            summary
        });
        tokens.account(name, rx, dropped, |tracked| {
            tracked.then(|| await_summary(handle))
        })
    }

    fn tokens(self, token: &CancellationToken) -> Tokens {
        let caller = token.child();
        #[cfg(feature = "host")]
        if let Some(lifetime) = self.lifetime {
            // Job invariant 3: the host aborting its task cancels the job too.
            let aborted = CancellationSource::new();
            let job = CancellationSource::linked([caller.token(), aborted.token()]).token();
            return Tokens {
                caller,
                job,
                tracked: Some((lifetime, aborted)),
            };
        }
        Tokens {
            job: caller.token(),
            caller,
            #[cfg(feature = "host")]
            tracked: None,
        }
    }
}

/// The tokens of one job (job invariants 1 and 3).
struct Tokens {
    /// A child of the caller's token; the caller's handle cancels it when dropped.
    caller: CancellationSource,
    /// The token the work observes.
    job: CancellationToken,
    /// The host, and the source its tracked task cancels when aborted.
    #[cfg(feature = "host")]
    tracked: Option<(gracefully_host::Lifetime, CancellationSource)>,
}

impl Tokens {
    /// Makes the caller's handle; `driver(tracked)` returns, when tracked, the future that
    /// ends with the work (job invariant 3). Untracked, nobody needs to await the work: the
    /// caller's `Job` gets its result.
    fn account<T, Fut>(
        self,
        name: impl FnOnce() -> String,
        result: oneshot::Receiver<std::thread::Result<Result<T, Error>>>,
        dropped: fn() -> Reason,
        driver: impl FnOnce(bool) -> Option<Fut>,
    ) -> Job<T>
    where
        Fut: Future<Output = Summary> + Send + 'static,
    {
        #[cfg(feature = "host")]
        if let Some((lifetime, aborted)) = self.tracked {
            if let Some(done) = driver(true) {
                lifetime.spawn(name(), async move {
                    let _aborted = CancelOnDrop::new(aborted, || {
                        Reason::shutdown()
                            .with_message("the host aborted it at the end of shutdown")
                    });
                    done.await
                });
            }
            return Job {
                result,
                job: self.job,
                cancel: CancelOnDrop::new(self.caller, dropped),
            };
        }
        let _ = (name, driver(false));
        Job {
            result,
            job: self.job,
            cancel: CancelOnDrop::new(self.caller, dropped),
        }
    }
}

/// The summary of the work behind `handle`, for the tracked task.
async fn await_summary(handle: tokio::task::JoinHandle<Summary>) -> Summary {
    match handle.await {
        Ok(summary) => summary,
        Err(e) => Err(Box::new(e)),
    }
}

fn summarize<T>(result: &std::thread::Result<Result<T, Error>>) -> Summary {
    match result {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Box::new(e.clone())),
        Err(_) => Err("panicked (the panic resumes in the caller)".into()),
    }
}
