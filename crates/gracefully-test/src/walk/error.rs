//! [`WalkError`]: why a walk failed, naming the cancel point.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use crate::walk::Outcome;

/// Why [`cancel_at_every_await`](crate::cancel_at_every_await) failed. Every variant that
/// concerns a run names its cancel point, so the failure can be replayed and debugged at
/// that await.
///
/// Its `Debug` prints the same text as `Display` (the variant is still matchable): a test
/// that calls `.unwrap()` or returns `Result<_, WalkError>` shows the readable message —
/// with an assertion's multi-line text intact — rather than an escaped struct.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalkError {
    /// The invariant check panicked (an assertion failed) after the run for `point`.
    CheckFailed {
        /// The cancel point of the run the check judged.
        point: usize,
        /// How that run ended.
        outcome: Outcome<()>,
        /// The panic's message: the failed assertion.
        message: String,
    },
    /// The code under test panicked during the run for `point`.
    CodePanicked {
        /// The cancel point of that run.
        point: usize,
        /// Whether the cancel had already happened when it panicked.
        cancelled: bool,
        /// The panic's message.
        message: String,
    },
    /// A run did not finish within [`Walk::time_limit`](crate::Walk::time_limit).
    RunTimedOut {
        /// The cancel point of that run.
        point: usize,
        /// Whether the token had fired (or the point was reached) before the limit.
        cancelled: bool,
        /// The limit.
        limit: Duration,
    },
    /// The check did not finish within [`Walk::time_limit`](crate::Walk::time_limit).
    CheckTimedOut {
        /// The cancel point of the run the check judged.
        point: usize,
        /// The limit.
        limit: Duration,
    },
    /// Runs still reached their cancel point at [`Walk::max_points`](crate::Walk::max_points):
    /// the code never completes, or suspends more often than the limit allows.
    Endless {
        /// The limit that was reached.
        max_points: usize,
    },
    /// Every run completed without ever suspending: there was no await to cancel at, and a
    /// walk that cancels nothing proves nothing.
    NoAwaitPoints {
        /// How many runs were tried.
        runs: usize,
    },
    /// A [`Walk`](crate::Walk) setting is out of range.
    InvalidSetting {
        /// The setting, as its method is named.
        setting: &'static str,
        /// What was wrong and what would be right.
        problem: String,
    },
}

impl fmt::Display for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WalkError::CheckFailed {
                point,
                outcome,
                message,
            } => {
                let run = match outcome {
                    Outcome::Completed(()) => "that completed before reaching",
                    Outcome::TokenFired(()) => "whose token fired at",
                    Outcome::Dropped => "dropped at",
                };
                write!(
                    f,
                    "the invariant check failed after a run {run} cancel point {point} (the \
                     code's suspension #{point}): {message}"
                )
            }
            WalkError::CodePanicked {
                point,
                cancelled,
                message,
            } => write!(
                f,
                "the code panicked in the run for cancel point {point} ({}): {message}",
                if *cancelled {
                    "after it was cancelled there"
                } else {
                    "before reaching it"
                }
            ),
            WalkError::RunTimedOut {
                point,
                cancelled: true,
                limit,
            } => write!(
                f,
                "the run for cancel point {point} did not finish within {limit:?} after its \
                 token fired there: does the code ignore its token? (Walk::time_limit sets \
                 the limit)"
            ),
            WalkError::RunTimedOut {
                point,
                cancelled: false,
                limit,
            } => write!(
                f,
                "the run for cancel point {point} neither completed nor reached its \
                 suspension #{point} within {limit:?}: it awaits something that never \
                 happens (or is slower than Walk::time_limit)"
            ),
            WalkError::CheckTimedOut { point, limit } => write!(
                f,
                "the invariant check for cancel point {point} did not finish within \
                 {limit:?} (Walk::time_limit sets the limit)"
            ),
            WalkError::Endless { max_points } => write!(
                f,
                "runs were still cancelled at cancel point {max_points}: the code never \
                 completes, or suspends more often than Walk::max_points ({max_points}) allows"
            ),
            WalkError::NoAwaitPoints { runs } => write!(
                f,
                "the code completed without ever suspending in all {runs} runs: there is no \
                 await to cancel at (on loopback a reply may already be there when it is \
                 awaited; slow the I/O down to make each round trip a real suspension)"
            ),
            WalkError::InvalidSetting { setting, problem } => {
                write!(f, "Walk::{setting} {problem}")
            }
        }
    }
}

impl fmt::Debug for WalkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Error for WalkError {}
