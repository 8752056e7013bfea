//! [`Cancelled`], the error of work that stopped because it was cancelled, and
//! [`is_cancellation`].

use std::error::Error;
use std::fmt;

use crate::reason::{Reason, ReasonKind};

/// The error returned when work stops because its token was cancelled. Carries the
/// [`Reason`].
///
/// Return it with `?` from [`CancellationToken::check`](crate::CancellationToken::check),
/// or get it from [`run_until_cancelled`](crate::CancellationToken::run_until_cancelled).
/// Cancellation is an expected outcome, not a failure: code that logs errors should test
/// [`is_cancellation`] and log it differently (the host and the HTTP layer do).
///
/// ```
/// use gracefully::{CancellationSource, CancellationToken, Cancelled, ReasonKind};
///
/// fn process(items: &[u32], token: &CancellationToken) -> Result<u32, Cancelled> {
///     let mut sum = 0;
///     for item in items {
///         token.check()?; // stop between items once cancelled
///         sum += item;
///     }
///     Ok(sum)
/// }
///
/// let source = CancellationSource::new();
/// assert_eq!(process(&[1, 2, 3], &source.token()), Ok(6));
/// source.cancel();
/// let err = process(&[1, 2, 3], &source.token()).unwrap_err();
/// assert_eq!(err.kind(), ReasonKind::Requested);
/// ```
///
/// *Anchors:* .NET's `OperationCanceledException` (which carries the token, not a reason);
/// Go's `context.Canceled` / `context.DeadlineExceeded` sentinel errors.
#[derive(Clone)]
pub struct Cancelled {
    reason: Reason,
}

impl Cancelled {
    /// The error for a cancellation with `reason`.
    pub fn new(reason: Reason) -> Self {
        Cancelled { reason }
    }

    /// Why the work was cancelled.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// Shorthand for `self.reason().kind()`.
    pub fn kind(&self) -> ReasonKind {
        self.reason.kind()
    }

    /// The reason, by value.
    pub fn into_reason(self) -> Reason {
        self.reason
    }
}

impl PartialEq for Cancelled {
    /// Two `Cancelled` are equal if they carry the same reason (the same firing).
    fn eq(&self, other: &Self) -> bool {
        self.reason.same_as(&other.reason)
    }
}

impl From<Reason> for Cancelled {
    fn from(reason: Reason) -> Self {
        Cancelled::new(reason)
    }
}

impl fmt::Display for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "operation cancelled: {}", self.reason)
    }
}

impl fmt::Debug for Cancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Cancelled").field(&self.reason).finish()
    }
}

impl Error for Cancelled {
    /// The error the reason carries, if any (for a [`ReasonKind::Failed`] cancellation, the
    /// failure that caused it).
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.reason.source().map(|e| e as &(dyn Error + 'static))
    }
}

impl Cancelled {
    /// The [`std::io::ErrorKind`] this cancellation becomes as an `io::Error`: `TimedOut` for
    /// a [`DeadlineExceeded`](ReasonKind::DeadlineExceeded), `Other` for every other reason.
    ///
    /// Never `Interrupted`: that kind means "try again" to `std` and tokio, whose
    /// `write_all`, `read_exact` and buffered writers retry it — forever, on a reader or
    /// writer whose token has fired. For an I/O adapter that wraps `Cancelled` in an error
    /// of its own.
    ///
    /// ```
    /// use gracefully::{Cancelled, Reason};
    /// use std::io::ErrorKind;
    ///
    /// assert_eq!(Cancelled::new(Reason::deadline_exceeded()).io_error_kind(), ErrorKind::TimedOut);
    /// assert_eq!(Cancelled::new(Reason::shutdown()).io_error_kind(), ErrorKind::Other);
    /// ```
    pub fn io_error_kind(&self) -> std::io::ErrorKind {
        match self.kind() {
            ReasonKind::DeadlineExceeded => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::Other,
        }
    }
}

impl From<Cancelled> for std::io::Error {
    /// An `io::Error` wrapping the `Cancelled` (which [`is_cancellation`] still finds), of
    /// kind [`Cancelled::io_error_kind`]: `TimedOut` for a deadline, `Other` otherwise —
    /// never `Interrupted`, which readers and writers retry.
    fn from(cancelled: Cancelled) -> Self {
        std::io::Error::new(cancelled.io_error_kind(), cancelled)
    }
}

/// Whether `error`, or any error in its [`source`](Error::source) chain, is a [`Cancelled`].
///
/// Also looks inside `std::io::Error`s (whose `source` skips the error they wrap). Use it
/// to keep cancellation out of failure logs and metrics.
///
/// ```
/// use gracefully::{Cancelled, Reason, is_cancellation};
///
/// #[derive(Debug)]
/// struct QueryFailed(Cancelled);
/// impl std::fmt::Display for QueryFailed {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("query failed")
///     }
/// }
/// impl std::error::Error for QueryFailed {
///     fn source(&self) -> Option<&(dyn std::error::Error + 'static)> { Some(&self.0) }
/// }
///
/// let err = QueryFailed(Cancelled::new(Reason::deadline_exceeded()));
/// assert!(is_cancellation(&err));
/// assert!(!is_cancellation(&std::fmt::Error));
/// ```
///
/// *Anchors:* Go's `errors.Is(err, context.Canceled)`; .NET's `catch
/// (OperationCanceledException)`.
pub fn is_cancellation(error: &(dyn Error + 'static)) -> bool {
    find_cancelled(error).is_some()
}

/// The first [`Cancelled`] in `error`'s source chain (see [`is_cancellation`]).
pub fn find_cancelled<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a Cancelled> {
    let mut current: Option<&'a (dyn Error + 'static)> = Some(error);
    // Bounded, in case of a cyclic chain.
    for _ in 0..64 {
        let err = current?;
        if let Some(cancelled) = err.downcast_ref::<Cancelled>() {
            return Some(cancelled);
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
            && let Some(found) = find_cancelled(inner)
        {
            return Some(found);
        }
        current = err.source();
    }
    None
}
