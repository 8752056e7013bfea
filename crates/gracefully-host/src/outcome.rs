//! How a unit of work ended: [`Outcome`], and [`TaskOutput`] for what work may return.

use std::any::Any;
use std::error::Error;
use std::fmt;

/// The error type of services: any error, boxed. `?` converts every
/// `std::error::Error + Send + Sync` (and `anyhow::Error`, and `String`) into it.
///
/// Return a [`Cancelled`](gracefully::Cancelled) (for example from
/// `stopping.check()?`) and the host records a cancellation, not a failure.
pub type BoxError = Box<dyn Error + Send + Sync + 'static>;

/// How a service or tracked task ended, as the [`ShutdownReport`](crate::ShutdownReport)
/// records it.
///
/// `Completed` and `Cancelled` are clean; `Failed` and `Aborted` make the exit code
/// non-zero.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// It returned normally (`()` or `Ok`).
    Completed,
    /// It stopped cooperatively because it was cancelled: it returned an error that
    /// [`is_cancellation`](gracefully::is_cancellation) recognises (a
    /// [`Cancelled`](gracefully::Cancelled)), or it was never started because the host was
    /// already stopping. Not a failure, and never logged as one.
    Cancelled,
    /// It returned an error, panicked (the message is kept), or timed out in its start
    /// step. The text is the error's `Display`.
    Failed(String),
    /// It was still running when the shutdown timeout ran out (or a second signal forced
    /// the shutdown), so the host dropped it.
    Aborted,
}

impl Outcome {
    /// `Completed` or `Cancelled`: the work stopped by itself.
    pub fn is_clean(&self) -> bool {
        matches!(self, Outcome::Completed | Outcome::Cancelled)
    }

    /// A short lowercase word: `completed`, `cancelled`, `failed`, `aborted`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Cancelled => "cancelled",
            Outcome::Failed(_) => "failed",
            Outcome::Aborted => "aborted",
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Failed(error) => write!(f, "failed: {error}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// What a tracked task or a closure service may return: `()`, or `Result<T, E>` with an
/// error convertible into [`BoxError`]. An `Err` that is a cancellation counts as
/// [`Outcome::Cancelled`]; any other `Err` as [`Outcome::Failed`].
pub trait TaskOutput: Send + 'static {
    /// `Ok(())` for success, the error otherwise.
    fn into_result(self) -> Result<(), BoxError>;
}

impl TaskOutput for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<T, E> TaskOutput for Result<T, E>
where
    T: Send + 'static,
    E: Into<BoxError> + Send + 'static,
{
    fn into_result(self) -> Result<(), BoxError> {
        self.map(drop).map_err(Into::into)
    }
}

/// The outcome of work that returned `result`.
pub(crate) fn outcome_of(result: Result<(), BoxError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Completed,
        Err(error) if gracefully::is_cancellation(&*error) => Outcome::Cancelled,
        Err(error) => Outcome::Failed(error.to_string()),
    }
}

/// The message of a caught panic, as the report and the logs show it.
pub(crate) fn panicked(payload: &(dyn Any + Send)) -> String {
    format!("panicked: {}", panic_message(payload))
}

/// The message a caught panic carries: the text of `panic!("...")` (whose payload is a
/// `&'static str` or a `String`), or a fixed placeholder for any other payload.
///
/// For code that catches panics itself (`std::panic::catch_unwind`,
/// `futures_util::FutureExt::catch_unwind`, a `JoinError::into_panic`) and wants to log or
/// report them the way the host does.
///
/// ```
/// let payload = std::panic::catch_unwind(|| panic!("disk {} is full", 3)).unwrap_err();
/// assert_eq!(gracefully_host::panic_message(&*payload), "disk 3 is full");
/// ```
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a panic with a non-string payload)"
    }
}
