//! [`cancel_at_every_await`]: run code again and again, cancelling it at each of its await
//! points in turn, and check the caller's invariants after every run.
//!
//! The settings are a [`Walk`]; [`driver`] does the polling, counting and cancelling (its
//! invariants are numbered there); [`run`] holds what the caller gets back.

mod driver;
mod error;
mod run;

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use gracefully::{CancellationSource, CancellationToken, Reason};
use gracefully_host::panic_message;

use driver::{Action, Driver};
pub use error::WalkError;
pub use run::{Outcome, Run, WalkReport};

/// How [`cancel_at_every_await`] cancels, and its limits.
///
/// ```
/// use std::time::Duration;
/// use gracefully::Reason;
/// use gracefully_test::Walk;
///
/// let shutdown = Walk::cooperative_with(Reason::shutdown()) // the host's hard stop
///     .time_limit(Duration::from_secs(30))                  // slow I/O: more per run
///     .attempts_per_point(5);                               // timing varies a lot
/// # let _ = shutdown;
/// ```
#[derive(Clone, Debug)]
#[must_use = "a Walk does nothing until given to `cancel_at_every_await`"]
pub struct Walk {
    cancel: Cancel,
    time_limit: Duration,
    attempts_per_point: usize,
    max_points: usize,
}

/// What a [`Walk`] does at the cancel point.
#[derive(Clone, Debug)]
enum Cancel {
    /// Fire the token: with this reason, or (`None`) with `Reason::requested()` naming the
    /// point.
    Fire(Option<Reason>),
    /// Drop the code's future.
    Drop,
}

impl Walk {
    /// Cancel cooperatively: at the cancel point the token fires (with
    /// [`Reason::requested`], its message naming the point), and the code is driven to its
    /// end. It must notice and stop cleanly — typically returning `Cancelled` — and the
    /// check sees its output as [`Outcome::TokenFired`].
    ///
    /// This is how a `CancellationToken` ends work in .NET and Go (`ctx` done), and how the
    /// host's hard stop and an HTTP disconnect reach a handler here.
    pub fn cooperative() -> Walk {
        Walk::new(Cancel::Fire(None))
    }

    /// [`cooperative`](Self::cooperative), firing `reason` instead: use
    /// [`Reason::shutdown()`] to walk the shutdown path of code that treats it apart (a job
    /// that goes back to its queue, a message handed back to the broker).
    pub fn cooperative_with(reason: Reason) -> Walk {
        Walk::new(Cancel::Fire(Some(reason)))
    }

    /// Cancel by dropping: at the cancel point the code's future is dropped, as Rust does
    /// when a `select!` branch loses, a timeout elapses or a task is aborted. Nothing runs
    /// after that but the future's destructors and what they spawn (a rollback, a cleanup
    /// task); the check must wait for those to settle — with the code's own "wait for
    /// cleanups", or [`eventually`](crate::eventually) — before it judges the store. The
    /// check sees [`Outcome::Dropped`].
    ///
    /// The token is never fired in this mode.
    pub fn dropping() -> Walk {
        Walk::new(Cancel::Drop)
    }

    fn new(cancel: Cancel) -> Walk {
        Walk {
            cancel,
            time_limit: Duration::from_secs(10),
            attempts_per_point: 3,
            max_points: 1000,
        }
    }

    /// How long each run, and each check, may take before the walk fails with
    /// [`WalkError::RunTimedOut`] or [`WalkError::CheckTimedOut`] naming the point.
    /// Default 10 s. Valid: more than 0.
    ///
    /// Measured on tokio's clock: under `#[tokio::test(start_paused = true)]` it passes as
    /// soon as the runtime is idle, which suits timer-only code but not real I/O.
    pub fn time_limit(mut self, limit: Duration) -> Walk {
        self.time_limit = limit;
        self
    }

    /// How many runs may try to reach a cancel point before the walk concludes that the
    /// code completes before it (and ends). Default 3. Valid: at least 1.
    ///
    /// With real I/O the number of suspensions varies from run to run: a reply that is
    /// already there when awaited costs no suspension. A run that completes before its
    /// point is therefore retried, so the walk does not stop short of the slowest run's
    /// last await. Deterministic code needs only 1 (with more, the last point is simply
    /// tried, and checked, that many times).
    pub fn attempts_per_point(mut self, attempts: usize) -> Walk {
        self.attempts_per_point = attempts;
        self
    }

    /// The most cancel points to walk before failing with [`WalkError::Endless`]: a guard
    /// against code that never completes but keeps suspending. Default 1000. Valid: at
    /// least 1.
    pub fn max_points(mut self, points: usize) -> Walk {
        self.max_points = points;
        self
    }

    fn validate(&self) -> Result<(), WalkError> {
        let invalid =
            |setting, problem: String| Err(WalkError::InvalidSetting { setting, problem });
        if self.time_limit.is_zero() {
            return invalid(
                "time_limit",
                "is 0; valid: more than 0 (default 10 s)".into(),
            );
        }
        if self.attempts_per_point == 0 {
            return invalid(
                "attempts_per_point",
                "is 0; valid: at least 1 (default 3)".into(),
            );
        }
        if self.max_points == 0 {
            return invalid(
                "max_points",
                "is 0; valid: at least 1 (default 1000)".into(),
            );
        }
        Ok(())
    }

    /// Runs `code` once on a fresh token, cancelling it at its `point`-th suspension.
    async fn run_once<T>(
        &self,
        point: usize,
        attempt: usize,
        code: &mut impl AsyncFnMut(CancellationToken) -> T,
    ) -> Result<Run<T>, WalkError> {
        let source = CancellationSource::new();
        let token = source.token();
        let action = match &self.cancel {
            Cancel::Fire(reason) => Action::Fire(
                source,
                reason.clone().unwrap_or_else(|| {
                    Reason::requested()
                        .with_message(format!("cancel_at_every_await: cancel point {point}"))
                }),
            ),
            // `source` stays here, unfired, to the end of the run.
            Cancel::Drop => Action::Drop,
        };
        let mut driver = Driver::new(code(token), point, action);
        let driven = tokio::time::timeout(
            self.time_limit,
            AssertUnwindSafe(&mut driver).catch_unwind(),
        )
        .await;
        let driven = match driven {
            Ok(Ok(driven)) => driven,
            Ok(Err(panic)) => {
                return Err(WalkError::CodePanicked {
                    point,
                    cancelled: driver.reached(),
                    message: panic_message(&*panic).to_owned(),
                });
            }
            Err(_elapsed) => {
                return Err(WalkError::RunTimedOut {
                    point,
                    cancelled: driver.reached(),
                    limit: self.time_limit,
                });
            }
        };
        let outcome = match (driven.output, driven.reached) {
            (Some(output), false) => Outcome::Completed(output),
            (Some(output), true) => Outcome::TokenFired(output),
            (None, _) => Outcome::Dropped,
        };
        Ok(Run {
            point,
            attempt,
            suspensions: driven.suspensions,
            outcome,
        })
    }

    /// Runs the caller's check on `run`, turning a panic or a hang into an error naming the
    /// point.
    async fn check<T>(
        &self,
        run: &Run<T>,
        check: &mut impl AsyncFnMut(&Run<T>),
    ) -> Result<(), WalkError> {
        let checked =
            tokio::time::timeout(self.time_limit, AssertUnwindSafe(check(run)).catch_unwind())
                .await;
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(panic)) => Err(WalkError::CheckFailed {
                point: run.point,
                outcome: run.outcome.shape(),
                message: panic_message(&*panic).to_owned(),
            }),
            Err(_elapsed) => Err(WalkError::CheckTimedOut {
                point: run.point,
                limit: self.time_limit,
            }),
        }
    }
}

/// Runs `code` again and again, cancelling it at its 1st, 2nd, 3rd … await point in turn
/// until a run completes before reaching its point, and runs `check` after every run: the
/// way to prove that no cancellation, wherever it lands, leaves a half-written row, a
/// leaked connection or a temporary file behind.
///
/// ```
/// use std::sync::Mutex;
/// use gracefully::{CancellationToken, Cancelled};
/// use gracefully_test::{Walk, cancel_at_every_await};
///
/// /// Moves `amount` from account 0 to account 1. Stages both changes across two round
/// /// trips (`yield_now` stands in for them) and writes them in one step at the end.
/// async fn transfer(accounts: &Mutex<[i64; 2]>, amount: i64, token: &CancellationToken)
///     -> Result<(), Cancelled> {
///     let mut staged = *accounts.lock().unwrap();
///     staged[0] -= amount;
///     tokio::task::yield_now().await;
///     token.check()?;
///     staged[1] += amount;
///     tokio::task::yield_now().await;
///     token.check()?;
///     *accounts.lock().unwrap() = staged;
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let accounts = Mutex::new([100, 0]);
/// let report = cancel_at_every_await(
///     Walk::dropping(),
///     async |token| transfer(&accounts, 30, &token).await,
///     async |run| {
///         let [from, to] = *accounts.lock().unwrap();
///         assert_eq!(from + to, 100, "money appeared or vanished: {}", run.outcome());
///         *accounts.lock().unwrap() = [100, 0]; // the next run starts afresh
///     },
/// )
/// .await
/// .unwrap();
/// assert_eq!(report.points(), 2); // dropped at each of the two awaits
/// # }
/// ```
///
/// Had `transfer` written `staged[0]` to the store before its first await, the walk would
/// fail with `the invariant check failed after a run dropped at cancel point 1 (the code's
/// suspension #1): money appeared or vanished: dropped at its cancel point`.
///
/// # Cancel points
///
/// Cancel point *k* is the moment the code is suspended at an await for the *k*-th time:
/// its *k*-th poll returned `Pending`, and what it awaits (a statement on the server, a
/// chunk on a blocking thread) is still in flight. There the walk cancels — by firing the
/// token ([`Walk::cooperative`]) or dropping the future ([`Walk::dropping`]) — then runs
/// `check`, then starts the next run for point *k*+1. The walk ends at the first point
/// that [`attempts_per_point`](Walk::attempts_per_point) runs in a row complete before
/// reaching; the check runs after those too. A token that is already cancelled before the
/// first poll is not a point: test that case directly.
///
/// A suspension counts only if the code really waited: it is polled again only after it
/// woke its waker, so with real I/O on tokio each point is a real round trip, and other
/// wake-ups of the task (a `join!` sibling, the time limit) do not use up points.
///
/// # The code and the check
///
/// * `code` is called once per run with a fresh [`CancellationToken`] (its source is the
///   walk's), and returns the future under test. An async closure can borrow the store.
/// * `check` gets each [`Run`] — its point and [`Outcome`], with the code's output unless
///   it was dropped — and asserts the invariants with `assert!`. It is async so it can
///   query a database or wait for settled state (the pool's own "wait for cleanups", or
///   [`eventually`](crate::eventually)). A failed assertion fails the walk with
///   [`WalkError::CheckFailed`], naming the point and quoting the assertion (the panic
///   hook prints it too, with its file and line, as for any failed assertion).
/// * Each run and each check must finish within [`time_limit`](Walk::time_limit); a panic
///   in the code is reported with its point too.
///
/// # Errors
///
/// A [`WalkError`] naming the cancel point: the check failed or hung, the code panicked or
/// hung, it never completed within [`max_points`](Walk::max_points), it never suspended at
/// all ([`WalkError::NoAwaitPoints`]: a walk that cancels nothing proves nothing), or a
/// setting is out of range.
///
/// # Runtime
///
/// Needs a tokio runtime with the time driver (`#[tokio::test]` has it); either flavour.
/// The code is polled on the calling task, so neither it nor its output need be `Send`.
///
/// # Cancel safety
///
/// Dropping the returned future drops the run in progress (as [`Walk::dropping`] would) and
/// skips its check. Let it complete.
///
/// *Anchors:* no .NET or Go tool does this: cancellation there is cooperative only, and
/// tests fire a token at a few chosen moments. tokio-test's `task::spawn` polls a future by
/// hand one step at a time; fail-rs injects faults at points named in the code. This walks
/// every await without touching the code, in both of Rust's ways to cancel.
pub async fn cancel_at_every_await<T>(
    walk: Walk,
    mut code: impl AsyncFnMut(CancellationToken) -> T,
    mut check: impl AsyncFnMut(&Run<T>),
) -> Result<WalkReport<T>, WalkError> {
    walk.validate()?;
    let mut runs = Vec::new();
    for point in 1..=walk.max_points {
        let mut reached = false;
        for attempt in 1..=walk.attempts_per_point {
            let run = walk.run_once(point, attempt, &mut code).await?;
            walk.check(&run, &mut check).await?;
            reached = run.cancelled();
            runs.push(run);
            if reached {
                break;
            }
        }
        if !reached {
            // Points 1 ..= point − 1 were each reached by some run (the loop goes on only
            // when one was), and this one by none.
            if point == 1 {
                return Err(WalkError::NoAwaitPoints { runs: runs.len() });
            }
            return Ok(WalkReport {
                points: point - 1,
                runs,
            });
        }
    }
    Err(WalkError::Endless {
        max_points: walk.max_points,
    })
}
