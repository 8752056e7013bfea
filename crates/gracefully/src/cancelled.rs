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

impl From<Cancelled> for std::io::Error {
    /// An `io::Error` of kind `Interrupted` wrapping the `Cancelled` (which
    /// [`is_cancellation`] still finds).
    fn from(cancelled: Cancelled) -> Self {
        std::io::Error::new(std::io::ErrorKind::Interrupted, cancelled)
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
