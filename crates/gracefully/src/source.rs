//! [`CancellationSource`]: the right to cancel, and [`DropGuard`].

use std::borrow::Borrow;
use std::fmt;
use std::panic::Location;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::clock::Clock;
use crate::reason::{Reason, ReasonKind};
use crate::token::CancellationToken;
use crate::tree::{Node, deadline};

/// The right to cancel. Hands out [`CancellationToken`]s, which can only observe.
///
/// ```
/// use gracefully::{CancellationSource, Reason, ReasonKind};
///
/// let source = CancellationSource::new();
/// let token = source.token();
/// let worker = std::thread::spawn(move || {
///     let reason = token.wait(); // blocks until cancelled
///     reason.kind()
/// });
/// assert!(source.cancel_with(Reason::shutdown())); // the first cancel wins …
/// assert!(!source.cancel()); // … later ones change nothing
/// assert_eq!(worker.join().unwrap(), ReasonKind::Shutdown);
/// ```
///
/// Dropping a source does **not** cancel it (use [`drop_guard`](Self::drop_guard) for
/// that), and does not leak: its tokens simply can no longer be cancelled except through a
/// parent or deadline.
///
/// *Anchors:* .NET `CancellationTokenSource` (no `Dispose` needed here: nothing leaks);
/// Go's `CancelFunc`/`CancelCauseFunc` (the reason is the cause); tokio-util's
/// `CancellationToken`, where every holder can cancel.
pub struct CancellationSource {
    /// Never `CancellationToken::never()`.
    token: CancellationToken,
}

impl CancellationSource {
    /// A new, independent source.
    pub fn new() -> Self {
        CancellationSource::from_node(Node::new_root(None))
    }

    pub(crate) fn from_node(node: NonNull<Node>) -> Self {
        CancellationSource {
            token: CancellationToken::from_node(node),
        }
    }

    fn node_ptr(&self) -> NonNull<Node> {
        match self.token.node_ptr() {
            Some(node) => node,
            None => unreachable!("a source always has a node"),
        }
    }

    fn node(&self) -> &Node {
        // SAFETY: our token's reference keeps the node alive.
        unsafe { &*self.node_ptr().as_ptr() }
    }

    /// A source cancelled with [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) once
    /// `timeout` passes (on the system clock). A zero timeout cancels it before this
    /// returns; a timeout too large for an `Instant` (such as `Duration::MAX`) sets no
    /// deadline. The deadline fires even if this source is dropped, as long as some token,
    /// child or registration can still observe it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gracefully::{CancellationSource, ReasonKind};
    /// let source = CancellationSource::with_timeout(Duration::from_millis(5));
    /// let reason = source.token().wait();
    /// assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
    /// ```
    ///
    /// *Anchors:* .NET `new CancellationTokenSource(TimeSpan)`; Go
    /// `context.WithTimeout(context.Background(), d)`.
    #[track_caller]
    pub fn with_timeout(timeout: Duration) -> Self {
        let source = CancellationSource::new();
        source.set_timeout(timeout, Location::caller());
        source
    }

    /// A source cancelled with [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) at
    /// `deadline` (on the system clock); before this returns if it has passed already.
    ///
    /// *Anchors:* Go `context.WithDeadline`.
    #[track_caller]
    pub fn with_deadline(deadline: Instant) -> Self {
        let source = CancellationSource::new();
        deadline::set_deadline(
            source.node_ptr(),
            &Clock::system(),
            deadline,
            Location::caller(),
        );
        source
    }

    /// A new root source whose deadlines — its own `cancel_after`, and every
    /// `child_with_timeout` below it — use `clock`. Pass a [`ManualClock`](crate::ManualClock)
    /// to test deadline logic without sleeping.
    ///
    /// *Anchors:* .NET `new CancellationTokenSource(TimeSpan, TimeProvider)`.
    pub fn with_clock(clock: impl Into<Clock>) -> Self {
        CancellationSource::from_node(Node::new_linked(&[], Some(clock.into())))
    }

    /// A source cancelled when *any* of `parents` is (with that parent's reason), and which
    /// can also be cancelled on its own. If some parents are cancelled already, it is born
    /// cancelled with the reason of the first of them in the order given. With no parents
    /// (or only [`never()`](CancellationToken::never) tokens) it is a plain source.
    ///
    /// ```
    /// # use gracefully::{CancellationSource, Reason, ReasonKind};
    /// let shutdown = CancellationSource::new();
    /// let client_gone = CancellationSource::new();
    /// let request = CancellationSource::linked([shutdown.token(), client_gone.token()]);
    ///
    /// client_gone.cancel_with(Reason::disconnected());
    /// assert_eq!(request.token().reason().unwrap().kind(), ReasonKind::Disconnected);
    /// assert!(!shutdown.is_cancelled());
    /// ```
    ///
    /// *Anchors:* .NET `CreateLinkedTokenSource(a, b, …)`, which must be disposed or it
    /// leaks a registration on every parent — here nothing leaks. Go has no multi-parent
    /// context.
    pub fn linked<I>(parents: I) -> Self
    where
        I: IntoIterator,
        I::Item: Borrow<CancellationToken>,
    {
        let tokens: Vec<I::Item> = parents.into_iter().collect();
        let nodes: Vec<NonNull<Node>> = tokens
            .iter()
            .filter_map(|t| t.borrow().node_ptr())
            .collect();
        CancellationSource::from_node(Node::new_linked(&nodes, None))
    }

    /// A token observing this source. Cheap: one atomic increment.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Borrows this source's own token handle (no reference count change).
    pub fn as_token(&self) -> &CancellationToken {
        &self.token
    }

    /// Cancels with [`ReasonKind::Requested`], origin this call. See
    /// [`cancel_with`](Self::cancel_with).
    #[track_caller]
    pub fn cancel(&self) -> bool {
        if self.is_cancelled() {
            return false;
        }
        self.node()
            .cancel(Reason::at(ReasonKind::Requested, Location::caller()))
    }

    /// Cancels this source, every token of it and every descendant, with `reason` (its
    /// origin set to this call). Returns whether this call won: `false` if the source was
    /// already cancelled, in which case nothing changes and the call returns at once.
    ///
    /// When a winning call returns, every descendant token reports cancelled and every
    /// callback registered on them has run (on this thread). A descendant cancelled
    /// concurrently through another parent may still be running its callbacks on that
    /// other thread. Thread-safe; callable from inside a callback.
    ///
    /// *Anchors:* .NET `Cancel()` (no reason); Go `CancelCauseFunc(cause)`.
    #[track_caller]
    pub fn cancel_with(&self, reason: Reason) -> bool {
        if self.is_cancelled() {
            return false;
        }
        self.node().cancel(reason.fired_at(Location::caller()))
    }

    /// Cancels with [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) once `delay` passes
    /// on the tree's clock, unless an earlier deadline is set already (deadlines only move
    /// earlier). A zero delay cancels before this returns; a delay too large for an
    /// `Instant` changes nothing.
    ///
    /// *Anchors:* .NET `CancelAfter` (which can also move the deadline later; ours cannot,
    /// so a deadline read with `deadline()` can be trusted downstream).
    #[track_caller]
    pub fn cancel_after(&self, delay: Duration) {
        self.set_timeout(delay, Location::caller());
    }

    pub(crate) fn set_timeout(&self, timeout: Duration, origin: &'static Location<'static>) {
        if self.is_cancelled() {
            return;
        }
        deadline::set_timeout(self.node_ptr(), timeout, origin);
    }

    /// Whether this source has been cancelled (one atomic load).
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Turns the source into a guard that cancels it when dropped (with
    /// [`ReasonKind::Requested`], origin: this call), unless
    /// [`disarm`](DropGuard::disarm)ed.
    ///
    /// ```
    /// # use gracefully::CancellationSource;
    /// let source = CancellationSource::new();
    /// let token = source.token();
    /// {
    ///     let _guard = source.drop_guard();
    ///     // ... if this scope exits early (return, `?`, panic), the work is cancelled ...
    /// }
    /// assert!(token.is_cancelled());
    /// ```
    ///
    /// *Anchors:* tokio-util `drop_guard`; Go's `defer cancel()`.
    #[track_caller]
    pub fn drop_guard(self) -> DropGuard {
        DropGuard {
            source: Some(self),
            origin: Location::caller(),
        }
    }
}

impl Default for CancellationSource {
    fn default() -> Self {
        CancellationSource::new()
    }
}

impl fmt::Debug for CancellationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancellationSource")
            .field("cancelled", &self.token.reason())
            .finish()
    }
}

/// Cancels its source when dropped. Made by [`CancellationSource::drop_guard`].
#[must_use = "the source is cancelled as soon as the guard is dropped"]
pub struct DropGuard {
    source: Option<CancellationSource>,
    origin: &'static Location<'static>,
}

impl DropGuard {
    /// Gives the source back without cancelling it.
    pub fn disarm(mut self) -> CancellationSource {
        match self.source.take() {
            Some(source) => source,
            None => unreachable!("the source is only taken by disarm or drop"),
        }
    }

    /// A token of the guarded source.
    pub fn token(&self) -> CancellationToken {
        match &self.source {
            Some(source) => source.token(),
            None => unreachable!("the source is only taken by disarm or drop"),
        }
    }
}

impl Drop for DropGuard {
    fn drop(&mut self) {
        if let Some(source) = self.source.take()
            && !source.is_cancelled()
        {
            source
                .node()
                .cancel(Reason::at(ReasonKind::Requested, self.origin));
        }
    }
}

impl fmt::Debug for DropGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DropGuard")
            .field("source", &self.source)
            .finish()
    }
}
