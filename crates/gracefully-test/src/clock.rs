//! The manual clock: the core's [`ManualClock`], and [`advance_to_deadline`] on top.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use gracefully::{CancellationToken, ManualClock};

/// Moves `clock` forward to `token`'s [`deadline`](CancellationToken::deadline), so the
/// deadline fires — with everything else due by then, in deadline order — before this
/// returns. Returns how far the clock moved (`ZERO` if the deadline had passed).
///
/// Saves computing the step by hand, and catches the usual mistake of a tree left on the
/// system clock, where advancing the manual clock silently fires nothing.
///
/// ```
/// use std::time::Duration;
/// use gracefully::{CancellationSource, ReasonKind};
/// use gracefully_test::{ManualClock, advance_to_deadline};
///
/// let clock = ManualClock::new();
/// let root = CancellationSource::with_clock(&clock); // the tree's deadlines use `clock`
/// let request = root.token().child_with_timeout(Duration::from_secs(30));
/// let query = request.token().child_with_timeout(Duration::from_secs(5));
///
/// clock.advance(Duration::from_secs(1));
/// assert_eq!(advance_to_deadline(&clock, &query.token()), Ok(Duration::from_secs(4)));
/// assert_eq!(query.token().reason().unwrap().kind(), ReasonKind::DeadlineExceeded);
/// assert!(!request.is_cancelled()); // 25 s left
/// ```
///
/// To stop just short of the deadline, advance by `token.time_left()` minus a step.
///
/// # Errors
///
/// [`DeadlineError::NoDeadline`] if no deadline applies to the token (the clock does not
/// move); [`DeadlineError::OtherClock`] if the deadline did not fire when the clock reached
/// it, because the token's tree runs on another clock.
///
/// *Anchors:* .NET's `FakeTimeProvider.Advance` (by a step you compute); tokio's paused
/// clock, which jumps to the next timer by itself but is per-runtime, not per-tree.
pub fn advance_to_deadline(
    clock: &ManualClock,
    token: &CancellationToken,
) -> Result<Duration, DeadlineError> {
    let (Some(deadline), Some(left)) = (token.deadline(), token.time_left()) else {
        return Err(DeadlineError::NoDeadline);
    };
    // On this clock the time left is measured from `clock.now()`; a mismatch shows another
    // clock before we move this one.
    if left != deadline.saturating_duration_since(clock.now()) {
        return Err(DeadlineError::OtherClock);
    }
    clock.advance(left);
    if token.is_cancelled() {
        Ok(left)
    } else {
        Err(DeadlineError::OtherClock)
    }
}

/// Why [`advance_to_deadline`] could not fire a token's deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeadlineError {
    /// No deadline applies to the token, nor to any ancestor.
    NoDeadline,
    /// The deadline belongs to a tree on another clock (usually the system clock: its
    /// root was made with `CancellationSource::new()`).
    OtherClock,
}

impl fmt::Display for DeadlineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DeadlineError::NoDeadline => {
                "the token has no deadline: give it one with `child_with_timeout` or \
                 `cancel_after`"
            }
            DeadlineError::OtherClock => {
                "the token's deadline is not on this manual clock: make the tree's root with \
                 `CancellationSource::with_clock(&clock)`"
            }
        })
    }
}

impl Error for DeadlineError {}
