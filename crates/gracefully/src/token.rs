//! [`CancellationToken`]: the right to observe a cancellation.

use std::fmt;
use std::future::IntoFuture;
use std::panic::Location;
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use crate::cancelled::Cancelled;
use crate::future::{CancelOn, WaitForCancellation, WaitForCancellationOwned};
use crate::reason::{Reason, ReasonInner};
use crate::registration::Registration;
use crate::source::CancellationSource;
use crate::tree::entry::{self, Callback, Unpark};
use crate::tree::{Node, deadline};

/// The right to observe a cancellation: poll it, wait for it, or run code when it happens.
///
/// Tokens come from a [`CancellationSource`] (`source.token()`). Whoever holds a token can
/// watch but cannot cancel — only a source can, so a callee cannot cancel its caller's other
/// work. A token is `Clone + Send + Sync + 'static` and one word wide; cloning is one atomic
/// increment. [`CancellationToken::never()`] (also `Default`) can never be cancelled and
/// allocates nothing.
///
/// ```
/// use gracefully::{CancellationSource, CancellationToken};
///
/// fn count_until_cancelled(token: &CancellationToken) -> u64 {
///     let mut n = 0;
///     while !token.is_cancelled() {
///         n += 1;
///         if n == 1_000 { break }
///     }
///     n
/// }
///
/// let source = CancellationSource::new();
/// let token = source.token();
/// assert_eq!(count_until_cancelled(&token), 1_000);
/// source.cancel();
/// assert_eq!(count_until_cancelled(&token), 0);
/// ```
///
/// # Semantics
///
/// * [`is_cancelled`](Self::is_cancelled) is wait-free: one atomic load.
/// * Once cancelled, a token stays cancelled, with the reason of the first cancel that won.
///   Every descendant reports that same reason.
/// * Children ([`child`](Self::child)) are cancelled with their parent; a linked source
///   ([`CancellationSource::linked`]) with any of its parents.
/// * Nothing leaks: once no handle, registration, child or waiting future refers to a token's
///   node, it unlinks from its parents, whether or not it was ever cancelled.
///
/// *Anchors:* .NET `CancellationToken` (a struct over the source; here the token has no
/// `Register` overloads with sync contexts, but gains a reason, deadlines and async waits);
/// Go's `ctx.Done()`/`ctx.Err()`/`context.Cause`; tokio-util's `CancellationToken`, which
/// conflates token and source (any holder can cancel), has no reason or deadline, and takes
/// a mutex in `is_cancelled`.
pub struct CancellationToken {
    /// A node, of which we own one reference (invariant 3); or, for
    /// [`CancellationToken::never`], the address of [`NEVER`], a state word that is never
    /// set. `Node` is `repr(C)` with its state word first, so `is_cancelled` loads through
    /// this pointer without first asking which of the two it is: no branch on the hot path.
    ptr: NonNull<Node>,
}

/// The state word `never()` tokens point at: always null (not cancelled). Never written.
static NEVER: std::sync::atomic::AtomicPtr<ReasonInner> =
    std::sync::atomic::AtomicPtr::new(std::ptr::null_mut());

// SAFETY: the node is shared through atomics and its own lock (see `tree`); the handle only
// owns a reference count.
unsafe impl Send for CancellationToken {}
// SAFETY: as above; every `&self` method is thread-safe.
unsafe impl Sync for CancellationToken {}

impl CancellationToken {
    /// A token that can never be cancelled. Allocates nothing.
    ///
    /// Useful as a default for APIs that take a token. `wait()` on it blocks forever and
    /// `cancelled()` never resolves, as with Go's `context.Background().Done()` (nil channel).
    ///
    /// *Anchors:* .NET `CancellationToken.None`, Go `context.Background()`.
    pub const fn never() -> Self {
        CancellationToken {
            // A pointer to a static: never null. Only ever read as a state word (below).
            ptr: NonNull::from_ref(&NEVER).cast::<Node>(),
        }
    }

    /// Wraps a node, taking over one reference.
    pub(crate) fn from_node(node: NonNull<Node>) -> Self {
        CancellationToken { ptr: node }
    }

    /// The node, or `None` for `never()`.
    #[inline]
    pub(crate) fn node_ptr(&self) -> Option<NonNull<Node>> {
        if std::ptr::eq(self.ptr.as_ptr().cast_const().cast(), &NEVER) {
            None
        } else {
            Some(self.ptr)
        }
    }

    #[inline]
    pub(crate) fn node(&self) -> Option<&Node> {
        // SAFETY: our reference keeps the node alive.
        self.node_ptr().map(|n| unsafe { &*n.as_ptr() })
    }

    /// Whether the token has been cancelled. Wait-free: one atomic load, no lock, on every
    /// path (tokio-util's takes a mutex).
    ///
    /// `Acquire`: everything the canceller did before `cancel` is visible after this returns
    /// `true`.
    #[inline]
    pub fn is_cancelled(&self) -> bool {
        #[cfg(not(loom))]
        {
            // SAFETY: `ptr` points either to a live node (our reference keeps it alive),
            // whose first field (`repr(C)`) is its state word, or to `NEVER`; both are a
            // `std` `AtomicPtr<ReasonInner>` in non-loom builds. Invariant 1: the state is
            // a reason pointer (8-aligned) plus the lock bit, so "cancelled" is "> LOCKED".
            let state = unsafe {
                &*self
                    .ptr
                    .as_ptr()
                    .cast::<std::sync::atomic::AtomicPtr<ReasonInner>>()
            };
            state.load(std::sync::atomic::Ordering::Acquire).addr() > crate::tree::node::LOCKED
        }
        #[cfg(loom)]
        {
            // loom's atomics are not `std`'s: take the branch.
            self.node().is_some_and(Node::is_cancelled)
        }
    }

    /// `false` only for [`CancellationToken::never()`].
    pub fn can_be_cancelled(&self) -> bool {
        self.node_ptr().is_some()
    }

    /// `Err(Cancelled)` if the token is cancelled: the Rust form of .NET's
    /// `ThrowIfCancellationRequested`, meant for `?`.
    ///
    /// ```
    /// # use gracefully::{CancellationToken, Cancelled};
    /// fn step(token: &CancellationToken) -> Result<(), Cancelled> {
    ///     token.check()?;
    ///     // ... a unit of work ...
    ///     Ok(())
    /// }
    /// # assert!(step(&CancellationToken::never()).is_ok());
    /// ```
    #[inline]
    pub fn check(&self) -> Result<(), Cancelled> {
        match self.reason() {
            None => Ok(()),
            Some(reason) => Err(Cancelled::new(reason)),
        }
    }

    /// Why the token was cancelled, or `None` if it is not (yet). Lock-free.
    #[inline]
    pub fn reason(&self) -> Option<Reason> {
        self.node()?.reason()
    }

    /// The earliest deadline that can cancel this token: its own and every ancestor's
    /// (through all parents of linked sources). Hand it to a database `statement_timeout`
    /// or a downstream request so the whole chain gives up at the same moment.
    ///
    /// The instant is on the tree's [`Clock`](crate::Clock) (the system clock unless one was
    /// chosen). `None` if no deadline applies.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gracefully::CancellationSource;
    /// let request = CancellationSource::with_timeout(Duration::from_secs(10));
    /// let query = request.token().child_with_timeout(Duration::from_secs(60));
    /// // The parent's 10 s bound the child's 60 s.
    /// assert_eq!(query.token().deadline(), request.token().deadline());
    /// ```
    ///
    /// *Anchors:* Go's `ctx.Deadline()`. .NET tokens do not expose their timeout.
    pub fn deadline(&self) -> Option<Instant> {
        deadline::effective_deadline(self.node()?)
    }

    /// How long until [`deadline`](Self::deadline), measured on the tree's clock (so it is
    /// right under a [`ManualClock`](crate::ManualClock) too, where comparing the deadline
    /// with `Instant::now()` is not). `Some(Duration::ZERO)` once the deadline has passed;
    /// `None` if no deadline applies.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gracefully::{CancellationSource, ManualClock};
    /// let clock = ManualClock::new();
    /// let root = CancellationSource::with_clock(&clock);
    /// let request = root.token().child_with_timeout(Duration::from_secs(5));
    /// clock.advance(Duration::from_secs(2));
    /// assert_eq!(request.token().time_left(), Some(Duration::from_secs(3)));
    /// ```
    ///
    /// *Anchors:* what Go code computes as `time.Until(deadline)` after `ctx.Deadline()`.
    pub fn time_left(&self) -> Option<Duration> {
        let (clock, at) = deadline::ancestry(self.node()?);
        Some(at?.saturating_duration_since(clock.unwrap_or_default().now()))
    }

    /// A future that resolves to the [`Reason`] once the token is cancelled (at once if it
    /// already is).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future before it completes unregisters it; nothing is lost.
    /// Each waiting future is woken exactly once by the cancellation, never spuriously.
    ///
    /// Works on any executor (tokio, smol, a hand-written `block_on`).
    ///
    /// ```
    /// # use gracefully::{CancellationSource, ReasonKind};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = CancellationSource::new();
    /// let token = source.token();
    /// tokio::spawn(async move { source.cancel() });
    /// let reason = token.cancelled().await;
    /// assert_eq!(reason.kind(), ReasonKind::Requested);
    /// # }
    /// ```
    pub fn cancelled(&self) -> WaitForCancellation<'_> {
        WaitForCancellation::new(self)
    }

    /// Like [`cancelled`](Self::cancelled), but owns the token, so the future is `'static`
    /// (for `tokio::spawn` and stored futures). Clone first to keep a token.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe, as [`cancelled`](Self::cancelled).
    pub fn cancelled_owned(self) -> WaitForCancellationOwned {
        WaitForCancellationOwned::new(self)
    }

    /// Blocks the current thread until the token is cancelled; returns the reason.
    ///
    /// For threads outside any async runtime. On [`never()`](Self::never) this blocks
    /// forever. Do not call it on an async executor's thread.
    ///
    /// *Anchors:* .NET `token.WaitHandle.WaitOne()`; C++ `std::stop_token` with a
    /// `condition_variable_any`. tokio-util has no blocking wait.
    pub fn wait(&self) -> Reason {
        match self.wait_until(None) {
            Some(reason) => reason,
            // `wait_until(None)` only returns once cancelled.
            None => unreachable!("an unbounded wait returns only when cancelled"),
        }
    }

    /// Blocks the current thread until the token is cancelled or `timeout` passes. Returns
    /// the reason, or `None` on timeout. A `timeout` too large for an `Instant` waits
    /// without limit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<Reason> {
        self.wait_until(Instant::now().checked_add(timeout))
    }

    fn wait_until(&self, until: Option<Instant>) -> Option<Reason> {
        let Some(node) = self.node() else {
            // `never()`: nothing can wake us; sleep out the timeout (or forever).
            park_until(until, || false);
            return None;
        };
        if let Some(reason) = node.reason() {
            return Some(reason);
        }
        let entry = entry::alloc(Unpark(crate::sync::thread::current()));
        let guard = node.lock();
        if let Some(reason) = guard.reason() {
            drop(guard);
            // SAFETY: never linked.
            drop(unsafe { entry::unwrap_unlinked::<Unpark>(entry) });
            return Some(reason);
        }
        // SAFETY: a fresh entry; we hold the node's lock.
        unsafe { guard.push_entry(entry) };
        drop(guard);
        park_until(until, || node.is_cancelled());
        // SAFETY: our handle to the entry; our token keeps the node alive.
        unsafe { entry::release_handle(node, entry) };
        node.reason()
    }

    /// Calls `callback` with the reason when the token is cancelled — or at once, on this
    /// thread and before returning, if it already is. Returns a [`Registration`]: dropping it
    /// unregisters the callback.
    ///
    /// Callbacks run on the thread that cancels, after every affected token already reports
    /// cancelled; on one token, newest first; children's before their parents'. If a callback
    /// panics, the others still run and the first panic is resumed from `cancel` afterwards.
    /// Keep callbacks short and non-blocking: they delay the canceller (and, for deadlines,
    /// the crate's timer thread). On [`never()`](Self::never) the callback is dropped at once.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// # use gracefully::CancellationSource;
    /// let source = CancellationSource::new();
    /// let closed = Arc::new(AtomicBool::new(false));
    /// let flag = closed.clone();
    /// let _registration = source.token().on_cancel(move |reason| {
    ///     println!("closing the connection: {reason}");
    ///     flag.store(true, Ordering::SeqCst);
    /// });
    /// source.cancel();
    /// assert!(closed.load(Ordering::SeqCst)); // callbacks have run when cancel returns
    /// ```
    ///
    /// *Anchors:* .NET `token.Register(...)` returning a `CancellationTokenRegistration`;
    /// Go's `context.AfterFunc` (which runs `f` in its own goroutine instead); C++
    /// `std::stop_callback`.
    pub fn on_cancel<F>(&self, callback: F) -> Registration
    where
        F: FnOnce(&Reason) + Send + 'static,
    {
        let Some(node_ptr) = self.node_ptr() else {
            drop(callback);
            return Registration::empty();
        };
        // SAFETY: our reference keeps the node alive.
        let node = unsafe { node_ptr.as_ref() };
        if let Some(reason) = node.reason() {
            callback(&reason);
            return Registration::empty();
        }
        let entry = entry::alloc(Callback(callback));
        node.acquire(); // the registration's reference (invariant 6)
        let guard = node.lock();
        if let Some(reason) = guard.reason() {
            drop(guard);
            // SAFETY: never linked; and the reference we just took is ours.
            let Callback(callback) = unsafe { entry::unwrap_unlinked::<Callback<F>>(entry) };
            // SAFETY: as above.
            unsafe { Node::release(node_ptr) };
            callback(&reason);
            return Registration::empty();
        }
        // SAFETY: a fresh entry; we hold the node's lock.
        unsafe { guard.push_entry(entry) };
        drop(guard);
        Registration::new(node_ptr, entry)
    }

    /// A new source whose tokens are cancelled when this token is (with the same reason),
    /// and which can also be cancelled on its own without affecting this token.
    ///
    /// The child is born cancelled if this token already is. On
    /// [`never()`](Self::never) it is a plain root source.
    ///
    /// *Anchors:* .NET `CancellationTokenSource.CreateLinkedTokenSource(token)`; Go
    /// `context.WithCancel(ctx)`; tokio-util `child_token()`. Unlike .NET and Go, nothing
    /// leaks if the child is neither cancelled nor disposed.
    pub fn child(&self) -> CancellationSource {
        match self.node_ptr() {
            Some(node) => CancellationSource::from_node(Node::new_child(node)),
            None => CancellationSource::new(),
        }
    }

    /// A child (as [`child`](Self::child)) that is also cancelled with
    /// [`DeadlineExceeded`](crate::ReasonKind::DeadlineExceeded) once `timeout` passes on
    /// the tree's clock. Its [`deadline`](Self::deadline) is the earlier of this one and
    /// the parent's. A zero timeout cancels it before this returns; a timeout too large for
    /// an `Instant` sets no deadline.
    ///
    /// *Anchors:* Go `context.WithTimeout(ctx, d)`; .NET
    /// `CreateLinkedTokenSource(token)` + `CancelAfter(d)`.
    #[track_caller]
    pub fn child_with_timeout(&self, timeout: Duration) -> CancellationSource {
        match self.node_ptr() {
            Some(node) => CancellationSource::from_node(
                crate::tree::deadline::new_child_with_timeout(node, timeout, Location::caller()),
            ),
            None => {
                let child = CancellationSource::new();
                child.set_timeout(timeout, Location::caller());
                child
            }
        }
    }

    /// Runs `future` until it completes (`Ok`) or this token is cancelled (`Err` with the
    /// reason). Cancellation is checked first, so an already-cancelled token never polls
    /// the future. On cancellation the future is dropped when the returned future is.
    ///
    /// # Cancel safety
    ///
    /// As cancel safe as `future` itself.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use gracefully::{CancellationSource, ReasonKind};
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let source = CancellationSource::with_timeout(Duration::from_millis(10));
    /// let slow = tokio::time::sleep(Duration::from_secs(60));
    /// let err = source.token().run_until_cancelled(slow).await.unwrap_err();
    /// assert_eq!(err.kind(), ReasonKind::DeadlineExceeded);
    /// # }
    /// ```
    ///
    /// *Anchors:* tokio-util `run_until_cancelled` (returns `Option`, no reason); the
    /// extension [`CancelOnExt::cancel_on`](crate::CancelOnExt::cancel_on) is the same.
    pub fn run_until_cancelled<F: IntoFuture>(&self, future: F) -> CancelOn<F::IntoFuture> {
        CancelOn::new(future.into_future(), self.clone())
    }
}

/// Parks the current thread until `done()` or `until` passes. Returns `done()`.
fn park_until(until: Option<Instant>, done: impl Fn() -> bool) -> bool {
    loop {
        if done() {
            return true;
        }
        match until {
            None => crate::sync::thread::park(),
            Some(until) => {
                let now = Instant::now();
                if now >= until {
                    return done();
                }
                crate::sync::park_timeout(until - now);
            }
        }
    }
}

impl Clone for CancellationToken {
    #[inline]
    fn clone(&self) -> Self {
        if let Some(node) = self.node() {
            node.acquire();
        }
        CancellationToken { ptr: self.ptr }
    }
}

impl Drop for CancellationToken {
    #[inline]
    fn drop(&mut self) {
        if let Some(node) = self.node_ptr() {
            // SAFETY: we own one reference and drop it exactly once.
            unsafe { Node::release(node) }
        }
    }
}

impl Default for CancellationToken {
    /// [`CancellationToken::never()`].
    fn default() -> Self {
        CancellationToken::never()
    }
}

impl fmt::Debug for CancellationToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("CancellationToken");
        match self.reason() {
            _ if self.node_ptr().is_none() => d.field("never", &true),
            Some(reason) => d.field("cancelled", &reason),
            None => d.field("cancelled", &false),
        };
        d.finish()
    }
}
