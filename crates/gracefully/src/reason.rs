//! Why a token was cancelled: [`Reason`] and [`ReasonKind`].

use std::borrow::Cow;
use std::error::Error;
use std::fmt;
use std::panic::Location;
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering, fence};

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
pub struct Reason {
    /// One counted reference to a heap `ReasonInner`.
    inner: NonNull<ReasonInner>,
}

// SAFETY: `ReasonInner` is immutable once shared (only `make_mut` writes, and only when the
// count says we are the sole owner) and its fields are Send + Sync; the count is atomic.
unsafe impl Send for Reason {}
// SAFETY: as above.
unsafe impl Sync for Reason {}

/// The shared part of a [`Reason`]: an `Arc` by hand, because a cancel walk takes one
/// reference per node it marks and `Arc` can only add them one atomic operation at a time
/// ([`Reason::add_raw`] reserves them in batches).
pub(crate) struct ReasonInner {
    refs: AtomicUsize,
    kind: ReasonKind,
    origin: &'static Location<'static>,
    message: Option<Cow<'static, str>>,
    source: Option<Arc<dyn Error + Send + Sync + 'static>>,
}

impl Clone for Reason {
    fn clone(&self) -> Self {
        // SAFETY: our reference keeps the allocation alive; see `add_raw`.
        unsafe { Reason::add_raw(self.inner.as_ptr(), 1) };
        Reason { inner: self.inner }
    }
}

impl Drop for Reason {
    fn drop(&mut self) {
        // SAFETY: we own one reference and give it up.
        unsafe { Reason::release_raw(self.inner.as_ptr()) }
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
        Reason::from_inner(ReasonInner {
            refs: AtomicUsize::new(1),
            kind,
            origin,
            message: None,
            source: None,
        })
    }

    fn from_inner(inner: ReasonInner) -> Self {
        Reason {
            inner: NonNull::from(Box::leak(Box::new(inner))),
        }
    }

    fn get(&self) -> &ReasonInner {
        // SAFETY: our reference keeps the allocation alive.
        unsafe { self.inner.as_ref() }
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
        self.get().kind
    }

    /// The message attached with [`with_message`](Reason::with_message), if any.
    pub fn message(&self) -> Option<&str> {
        self.get().message.as_deref()
    }

    /// The error attached with [`with_source`](Reason::with_source) or
    /// [`failed`](Reason::failed), if any.
    pub fn source(&self) -> Option<&(dyn Error + Send + Sync + 'static)> {
        self.get().source.as_deref()
    }

    /// Where the cancellation was fired: the `cancel`/`cancel_with` call site; for a deadline,
    /// the call that set it; for a [`DropGuard`](crate::DropGuard), where the guard was made.
    /// For a reason that has not fired anything yet, where it was constructed.
    pub fn origin(&self) -> &'static Location<'static> {
        self.get().origin
    }

    /// Whether `self` and `other` are the same reason (the same firing), not merely equal.
    ///
    /// Every token cancelled by one `cancel` call reports a reason that is `same_as` the
    /// others.
    pub fn same_as(&self, other: &Reason) -> bool {
        self.inner == other.inner
    }

    /// The reason with its origin replaced, as done by the call that fires it.
    pub(crate) fn fired_at(mut self, origin: &'static Location<'static>) -> Self {
        if !std::ptr::eq(self.get().origin, origin) {
            self.make_mut().origin = origin;
        }
        self
    }

    /// Mutable access, copying the contents first if the reason is shared (like
    /// `Arc::make_mut`).
    fn make_mut(&mut self) -> &mut ReasonInner {
        // Acquire: pairs with the Release decrements of former co-owners, so their reads
        // are done before we write.
        if self.get().refs.load(Ordering::Acquire) != 1 {
            let inner = self.get();
            *self = Reason::from_inner(ReasonInner {
                refs: AtomicUsize::new(1),
                kind: inner.kind,
                origin: inner.origin,
                message: inner.message.clone(),
                source: inner.source.clone(),
            });
        }
        // SAFETY: we are the only owner (count 1, and only owners can add references).
        unsafe { self.inner.as_mut() }
    }

    /// Gives up this handle's reference, for storage in a node's state word.
    pub(crate) fn into_raw(self) -> *const ReasonInner {
        let ptr = self.inner.as_ptr().cast_const();
        std::mem::forget(self);
        ptr
    }

    /// A new handle to a reason stored in a node's state word.
    ///
    /// # Safety
    ///
    /// `ptr` came from [`Reason::into_raw`] and its reference is still owned by someone who
    /// will not release it before this call returns.
    pub(crate) unsafe fn clone_from_raw(ptr: *const ReasonInner) -> Self {
        // SAFETY: forwarded from the caller; we add our own reference first.
        unsafe {
            Reason::add_raw(ptr, 1);
            Reason {
                inner: NonNull::new_unchecked(ptr.cast_mut()),
            }
        }
    }

    /// Adds `n` references at once (a cancel walk reserves them in batches).
    ///
    /// # Safety
    ///
    /// As for [`clone_from_raw`](Reason::clone_from_raw).
    pub(crate) unsafe fn add_raw(ptr: *const ReasonInner, n: usize) {
        // Relaxed, as `Arc::clone`: new references are made from existing ones.
        // SAFETY: the caller guarantees the allocation is alive.
        let old = unsafe { &(*ptr).refs }.fetch_add(n, Ordering::Relaxed);
        if old > isize::MAX as usize {
            std::process::abort();
        }
    }

    /// Gives back `n` references reserved with [`add_raw`](Reason::add_raw) but not used,
    /// while the caller still holds at least one more (so the count cannot reach zero).
    ///
    /// # Safety
    ///
    /// The caller owns `n + 1` references.
    pub(crate) unsafe fn unreserve_raw(ptr: *const ReasonInner, n: usize) {
        // SAFETY: the caller's remaining reference keeps the allocation alive.
        unsafe { &(*ptr).refs }.fetch_sub(n, Ordering::Release);
    }

    /// Releases a reference obtained from [`into_raw`](Reason::into_raw) or
    /// [`add_raw`](Reason::add_raw).
    ///
    /// # Safety
    ///
    /// The caller owns one reference and does not use `ptr` afterwards.
    pub(crate) unsafe fn release_raw(ptr: *const ReasonInner) {
        // SAFETY: our reference keeps it alive until this decrement.
        if unsafe { &(*ptr).refs }.fetch_sub(1, Ordering::Release) == 1 {
            // Pairs with the Release decrements of every former owner (the `Arc` argument).
            fence(Ordering::Acquire);
            // SAFETY: the last reference: allocated by `Box` in `from_inner`.
            drop(unsafe { Box::from_raw(ptr.cast_mut()) });
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.get().kind.as_str())?;
        if let Some(message) = &self.get().message {
            write!(f, ": {message}")?;
        }
        if let Some(source) = &self.get().source {
            write!(f, ": {source}")?;
        }
        let o = self.get().origin;
        write!(f, " (at {}:{}:{})", o.file(), o.line(), o.column())
    }
}

impl fmt::Debug for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reason")
            .field("kind", &self.get().kind)
            .field("message", &self.get().message)
            .field("source", &self.get().source)
            .field("origin", &format_args!("{}", self.get().origin))
            .finish()
    }
}
