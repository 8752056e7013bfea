//! Why a token was cancelled: [`Reason`] and [`ReasonKind`].

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::sync::Arc;

/// The broad category of a cancellation.
///
/// Code that reacts to cancellation usually branches on the kind: an HTTP layer answers 504
/// for [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) and 503 for
/// [`Shutdown`](ReasonKind::Shutdown); a job queue puts a job interrupted by `Shutdown` back
/// without spending an attempt.
///
/// The enum is `#[non_exhaustive]`: match it with a wildcard arm.
///
/// *Anchors:* Go distinguishes only `context.Canceled` and `context.DeadlineExceeded` (plus a
/// free-form `Cause`); .NET has no kind at all. Trio's `CancelScope` reasons are the closest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReasonKind {
    /// Someone called [`cancel`](crate::CancellationSource::cancel) (or dropped a
    /// [`DropGuard`](crate::DropGuard)): the work is no longer wanted.
    Requested,
    /// A deadline or timeout passed.
    DeadlineExceeded,
    /// The process (or the host) is shutting down.
    Shutdown,
    /// The client that asked for the work went away.
    Disconnected,
    /// Related work failed, so this work is pointless (the reason's
    /// [`source`](Reason::source) usually says which failure).
    Failed,
}

impl ReasonKind {
    /// A short lowercase description, as used in [`Reason`]'s `Display`.
    pub fn as_str(self) -> &'static str {
        match self {
            ReasonKind::Requested => "requested",
            ReasonKind::DeadlineExceeded => "deadline exceeded",
            ReasonKind::Shutdown => "shutdown",
            ReasonKind::Disconnected => "client disconnected",
            ReasonKind::Failed => "failed",
        }
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a token was cancelled: a [`ReasonKind`], an optional message, an optional source
/// error, and the *origin* — the source location of the call that fired the cancellation.
///
/// A reason is fixed by the first cancel that wins (later cancels change nothing), and every
/// descendant token reports the very same reason as the ancestor that fired. Cloning is one
/// reference-count increment.
///
/// ```
/// use gracefully::{CancellationSource, Reason, ReasonKind};
///
/// let parent = CancellationSource::new();
/// let child = parent.token().child();
///
/// parent.cancel_with(Reason::shutdown().with_message("SIGTERM"));
///
/// let reason = child.token().reason().expect("children are cancelled with their parent");
/// assert_eq!(reason.kind(), ReasonKind::Shutdown);
/// assert_eq!(reason.message(), Some("SIGTERM"));
/// assert!(reason.origin().file().ends_with(".rs")); // where `cancel_with` was called
/// ```
///
/// *Anchors:* Go's `context.Cause(ctx)` (an error set by `CancelCauseFunc`), Trio's cancel
/// reasons. .NET carries no reason at all. Unlike Go, the reason here also records *where*
/// the cancellation was fired, which is what one needs when a shutdown goes wrong.
#[derive(Clone)]
pub struct Reason {
    pub(crate) inner: Arc<ReasonInner>,
}

pub(crate) struct ReasonInner {
    pub(crate) kind: ReasonKind,
    pub(crate) origin: &'static Location<'static>,
    pub(crate) message: Option<Cow<'static, str>>,
    pub(crate) source: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl Clone for ReasonInner {
    fn clone(&self) -> Self {
        ReasonInner {
            kind: self.kind,
            origin: self.origin,
            message: self.message.clone(),
            source: self.source.clone(),
        }
    }
}

impl Reason {
    /// A reason of the given kind, with no message and no source.
    ///
    /// Its origin is this call's location until the reason fires a cancellation; then it is
    /// the location of the call that fired it (`cancel_with`, the deadline's setter, …).
    #[track_caller]
    pub fn new(kind: ReasonKind) -> Self {
        Reason::at(kind, Location::caller())
    }

    pub(crate) fn at(kind: ReasonKind, origin: &'static Location<'static>) -> Self {
        Reason {
            inner: Arc::new(ReasonInner {
                kind,
                origin,
                message: None,
                source: None,
            }),
        }
    }

    /// `Reason::new(ReasonKind::Requested)`.
    #[track_caller]
    pub fn requested() -> Self {
        Reason::new(ReasonKind::Requested)
    }

    /// `Reason::new(ReasonKind::DeadlineExceeded)`.
    #[track_caller]
    pub fn deadline_exceeded() -> Self {
        Reason::new(ReasonKind::DeadlineExceeded)
    }

    /// `Reason::new(ReasonKind::Shutdown)`.
    #[track_caller]
    pub fn shutdown() -> Self {
        Reason::new(ReasonKind::Shutdown)
    }

    /// `Reason::new(ReasonKind::Disconnected)`.
    #[track_caller]
    pub fn disconnected() -> Self {
        Reason::new(ReasonKind::Disconnected)
    }

    /// A [`Failed`](ReasonKind::Failed) reason whose source is `error`.
    #[track_caller]
    pub fn failed(error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        Reason::new(ReasonKind::Failed).with_source(error)
    }

    /// Attaches a human-readable message (replacing any earlier one).
    pub fn with_message(mut self, message: impl Into<Cow<'static, str>>) -> Self {
        self.make_mut().message = Some(message.into());
        self
    }

    /// Attaches the error that caused the cancellation (replacing any earlier one).
    pub fn with_source(mut self, error: impl Into<Box<dyn Error + Send + Sync + 'static>>) -> Self {
        self.make_mut().source = Some(Arc::from(error.into()));
        self
    }

    /// The category of the cancellation.
    pub fn kind(&self) -> ReasonKind {
        self.inner.kind
    }

    /// The message attached with [`with_message`](Reason::with_message), if any.
    pub fn message(&self) -> Option<&str> {
        self.inner.message.as_deref()
    }

    /// The error attached with [`with_source`](Reason::with_source) or
    /// [`failed`](Reason::failed), if any.
    pub fn source(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.inner.source.as_deref()
    }

    /// Where the cancellation was fired: the `cancel`/`cancel_with` call site; for a deadline,
    /// the call that set it; for a [`DropGuard`](crate::DropGuard), where the guard was made.
    /// For a reason that has not fired anything yet, where it was constructed.
    pub fn origin(&self) -> &'static Location<'static> {
        self.inner.origin
    }

    /// Whether `self` and `other` are the same reason (the same firing), not merely equal.
    ///
    /// Every token cancelled by one `cancel` call reports a reason that is `same_as` the
    /// others.
    pub fn same_as(&self, other: &Reason) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The reason with its origin replaced, as done by the call that fires it.
    pub(crate) fn fired_at(mut self, origin: &'static Location<'static>) -> Self {
        if !std::ptr::eq(self.inner.origin, origin) {
            self.make_mut().origin = origin;
        }
        self
    }

    fn make_mut(&mut self) -> &mut ReasonInner {
        Arc::make_mut(&mut self.inner)
    }

    /// Gives up this handle's reference, for storage in a node's state word.
    pub(crate) fn into_raw(self) -> *const ReasonInner {
        Arc::into_raw(self.inner)
    }

    /// A new handle to a reason stored in a node's state word.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Reason::into_raw`] and its reference is still owned by someone who
    /// will not release it before this call returns.
    pub(crate) unsafe fn clone_from_raw(ptr: *const ReasonInner) -> Self {
        // SAFETY: the caller guarantees a live reference keeps the allocation alive; we add
        // our own reference before materialising the Arc.
        unsafe {
            Arc::increment_strong_count(ptr);
            Reason {
                inner: Arc::from_raw(ptr),
            }
        }
    }

    /// Adds one reference to a reason stored in a node's state word (for another node).
    ///
    /// # Safety
    ///
    /// As for [`clone_from_raw`](Reason::clone_from_raw).
    pub(crate) unsafe fn increment_raw(ptr: *const ReasonInner) {
        // SAFETY: forwarded from the caller.
        unsafe { Arc::increment_strong_count(ptr) }
    }

    /// Releases a reference obtained from [`into_raw`](Reason::into_raw) or
    /// [`increment_raw`](Reason::increment_raw).
    ///
    /// # Safety
    ///
    /// The caller owns one reference and does not use `ptr` afterwards.
    pub(crate) unsafe fn release_raw(ptr: *const ReasonInner) {
        // SAFETY: forwarded from the caller.
        unsafe { Arc::decrement_strong_count(ptr) }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.inner.kind.as_str())?;
        if let Some(message) = &self.inner.message {
            write!(f, ": {message}")?;
        }
        if let Some(source) = &self.inner.source {
            write!(f, ": {source}")?;
        }
        let o = self.inner.origin;
        write!(f, " (at {}:{}:{})", o.file(), o.line(), o.column())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reason")
            .field("kind", &self.inner.kind)
            .field("message", &self.inner.message)
            .field("source", &self.inner.source)
            .field("origin", &format_args!("{}", self.inner.origin))
            .finish()
    }
}
