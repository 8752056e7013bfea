//! What a walk observed: each [`Run`] with its [`Outcome`], and the [`WalkReport`].

use std::fmt;

/// How one run ended.
///
/// Matched by the invariant check, which decides what the store may look like after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The code finished before reaching its cancel point: nothing cancelled it. Every walk
    /// ends with such runs; the check must hold after a clean run too.
    Completed(T),
    /// [`Walk::cooperative`](crate::Walk::cooperative): the token fired at the cancel
    /// point, and the code ran on and returned this — typically its `Cancelled` error, or
    /// its result if the point was past its last check of the token.
    TokenFired(T),
    /// [`Walk::dropping`](crate::Walk::dropping): the code's future was dropped at the
    /// cancel point. Its drop-time cleanup may still be running when the check starts.
    Dropped,
}

impl<T> Outcome<T> {
    /// The code's output, unless it was dropped.
    pub fn output(&self) -> Option<&T> {
        match self {
            Outcome::Completed(output) | Outcome::TokenFired(output) => Some(output),
            Outcome::Dropped => None,
        }
    }

    /// The same outcome without its output (for error reports).
    pub(crate) fn shape(&self) -> Outcome<()> {
        match self {
            Outcome::Completed(_) => Outcome::Completed(()),
            Outcome::TokenFired(_) => Outcome::TokenFired(()),
            Outcome::Dropped => Outcome::Dropped,
        }
    }
}

impl<T> fmt::Display for Outcome<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::Completed(_) => "completed before its cancel point",
            Outcome::TokenFired(_) => "token fired at its cancel point",
            Outcome::Dropped => "dropped at its cancel point",
        })
    }
}

/// One run of the code under test, as the invariant check sees it (and as the
/// [`WalkReport`] keeps it).
#[derive(Debug)]
pub struct Run<T> {
    pub(crate) point: usize,
    pub(crate) attempt: usize,
    pub(crate) suspensions: usize,
    pub(crate) outcome: Outcome<T>,
}

impl<T> Run<T> {
    /// The cancel point this run aimed at: `k` means "cancel when the code is suspended at
    /// an await for the k-th time". Counted from 1.
    pub fn point(&self) -> usize {
        self.point
    }

    /// Which try at this point it was, from 1 (see
    /// [`Walk::attempts_per_point`](crate::Walk::attempts_per_point)).
    pub fn attempt(&self) -> usize {
        self.attempt
    }

    /// How many times the code suspended in this run: up to the point if it was dropped
    /// there, to its end otherwise.
    pub fn suspensions(&self) -> usize {
        self.suspensions
    }

    /// How the run ended.
    pub fn outcome(&self) -> &Outcome<T> {
        &self.outcome
    }

    /// The code's output, unless it was dropped.
    pub fn output(&self) -> Option<&T> {
        self.outcome.output()
    }

    /// Whether the run reached its cancel point (the token fired, or the future was
    /// dropped), as opposed to [`Outcome::Completed`].
    pub fn cancelled(&self) -> bool {
        !matches!(self.outcome, Outcome::Completed(_))
    }
}

/// What a successful walk did: how many cancel points it exercised, and every run.
///
/// Its `Display` is a one-line summary for test logs.
#[derive(Debug)]
pub struct WalkReport<T> {
    pub(crate) points: usize,
    pub(crate) runs: Vec<Run<T>>,
}

impl<T> WalkReport<T> {
    /// How many cancel points were exercised: the code was cancelled at each of its 1st,
    /// 2nd, … `points()`-th suspension, and then completed before the next one.
    pub fn points(&self) -> usize {
        self.points
    }

    /// Every run, in order: one per cancel point that was reached, plus the runs that
    /// completed before reaching theirs (the last ones, and any retried ones).
    pub fn runs(&self) -> &[Run<T>] {
        &self.runs
    }

    /// The runs, taking ownership of their outputs.
    pub fn into_runs(self) -> Vec<Run<T>> {
        self.runs
    }
}

impl<T> fmt::Display for WalkReport<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = |shape: Outcome<()>| {
            self.runs
                .iter()
                .filter(|run| run.outcome.shape() == shape)
                .count()
        };
        write!(
            f,
            "cancelled at {} await points in {} runs ({} with the token fired, {} dropped, {} completed)",
            self.points,
            self.runs.len(),
            count(Outcome::TokenFired(())),
            count(Outcome::Dropped),
            count(Outcome::Completed(())),
        )
    }
}
