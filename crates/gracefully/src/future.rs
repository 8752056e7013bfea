//! Futures: waiting for a cancellation, and racing a future against one.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll, Waker};

use crate::cancelled::Cancelled;
use crate::reason::Reason;
use crate::token::CancellationToken;
use crate::tree::entry::{self, EntryHeader, Wake};

/// The registration of one waiting future: an entry holding its latest waker.
struct Waiter {
    /// Our handle to the entry, once the first `Pending` poll registered it, and our own
    /// clone of the waker the entry holds (the two change together, under the node's lock),
    /// so that a re-poll with the same waker needs no lock at all.
    entry: Option<(NonNull<EntryHeader>, Waker)>,
}

impl Waiter {
    const fn new() -> Self {
        Waiter { entry: None }
    }

    fn poll(&mut self, token: &CancellationToken, cx: &mut Context<'_>) -> Poll<Reason> {
        let Some(node) = token.node() else {
            // `never()`: no one will ever wake us, so there is nothing to register.
            return Poll::Pending;
        };
        if let Some(reason) = node.reason() {
            return Poll::Ready(reason);
        }
        match &mut self.entry {
            None => {
                let waker = cx.waker().clone();
                let entry = entry::alloc(Wake(waker.clone()));
                let guard = node.lock();
                if let Some(reason) = guard.reason() {
                    drop(guard);
                    // SAFETY: never linked.
                    drop(unsafe { entry::unwrap_unlinked::<Wake>(entry) });
                    return Poll::Ready(reason);
                }
                // SAFETY: a fresh entry; we hold the node's lock. The token (borrowed or
                // owned by our future) keeps the node alive while the entry exists.
                unsafe { guard.push_entry(entry) };
                drop(guard);
                self.entry = Some((entry, waker));
                Poll::Pending
            }
            Some((entry, registered)) => {
                // The common re-poll: same task, not cancelled (checked above). If a cancel
                // comes now, it wakes the waker the entry holds, which wakes this task too.
                if registered.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
                // Clone outside the lock: `Waker::clone` runs executor code.
                let mut fresh = cx.waker().clone();
                let guard = node.lock();
                if let Some(reason) = guard.reason() {
                    // Collected by the walk (it marks and collects under this lock): the
                    // old waker was or will be woken once; we are ready anyway.
                    return Poll::Ready(reason);
                }
                // SAFETY: not cancelled, so the entry is still LINKED; we hold the lock.
                unsafe {
                    entry::with_payload::<Wake, _>(*entry, |w| {
                        std::mem::swap(&mut w.0, &mut fresh);
                    })
                };
                drop(guard);
                // `fresh` now holds the replaced waker: dropped here, outside the lock.
                drop(fresh);
                *registered = cx.waker().clone();
                Poll::Pending
            }
        }
    }

    fn release(&mut self, token: &CancellationToken) {
        if let (Some((entry, _)), Some(node)) = (self.entry.take(), token.node()) {
            // SAFETY: our handle; the token keeps the node alive.
            unsafe { entry::release_handle(node, entry) };
        }
    }
}

/// Future returned by [`CancellationToken::cancelled`]; resolves to the [`Reason`].
///
/// # Cancel safety
///
/// Cancel safe. Dropping it unregisters its waker.
#[must_use = "futures do nothing unless polled"]
pub struct WaitForCancellation<'a> {
    token: &'a CancellationToken,
    waiter: Waiter,
}

// SAFETY: the waiter's entry is only touched through the node's lock and the entry state
// machine, both thread-safe; `CancellationToken` is Sync.
unsafe impl Send for WaitForCancellation<'_> {}
// SAFETY: no `&self` method exists.
unsafe impl Sync for WaitForCancellation<'_> {}

impl<'a> WaitForCancellation<'a> {
    pub(crate) fn new(token: &'a CancellationToken) -> Self {
        WaitForCancellation {
            token,
            waiter: Waiter::new(),
        }
    }
}

impl Future for WaitForCancellation<'_> {
    type Output = Reason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reason> {
        let this = self.get_mut();
        this.waiter.poll(this.token, cx)
    }
}

impl Drop for WaitForCancellation<'_> {
    fn drop(&mut self) {
        self.waiter.release(self.token);
    }
}

impl fmt::Debug for WaitForCancellation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitForCancellation")
            .field("token", self.token)
            .finish()
    }
}

/// Future returned by [`CancellationToken::cancelled_owned`]: like
/// [`WaitForCancellation`], but owns its token, so it is `'static`.
///
/// # Cancel safety
///
/// Cancel safe. Dropping it unregisters its waker.
#[must_use = "futures do nothing unless polled"]
pub struct WaitForCancellationOwned {
    token: CancellationToken,
    waiter: Waiter,
}

// SAFETY: as for `WaitForCancellation`.
unsafe impl Send for WaitForCancellationOwned {}
// SAFETY: no `&self` method exists.
unsafe impl Sync for WaitForCancellationOwned {}

impl WaitForCancellationOwned {
    pub(crate) fn new(token: CancellationToken) -> Self {
        WaitForCancellationOwned {
            token,
            waiter: Waiter::new(),
        }
    }
}

impl Future for WaitForCancellationOwned {
    type Output = Reason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reason> {
        let this = self.get_mut();
        this.waiter.poll(&this.token, cx)
    }
}

impl Drop for WaitForCancellationOwned {
    fn drop(&mut self) {
        self.waiter.release(&self.token);
    }
}

impl fmt::Debug for WaitForCancellationOwned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WaitForCancellationOwned")
            .field("token", &self.token)
            .finish()
    }
}

/// A future raced against a token: `Ok(output)` if it completes first, `Err(Cancelled)` if
/// the token is cancelled first. Made by
/// [`CancellationToken::run_until_cancelled`] or [`CancelOnExt::cancel_on`].
///
/// Each poll checks the token first (so an already-cancelled token never polls the inner
/// future), then polls the inner future, and registers for the cancellation only if that
/// future is still pending (so a future that completes at once costs no registration).
///
/// # Cancel safety
///
/// As cancel safe as the inner future.
#[must_use = "futures do nothing unless polled"]
pub struct CancelOn<F> {
    future: F,
    token: CancellationToken,
    waiter: Waiter,
}

// SAFETY: the waiter is thread-safe (see `WaitForCancellation`); the rest is as Send as `F`.
unsafe impl<F: Send> Send for CancelOn<F> {}
// SAFETY: no `&self` method exists besides Debug, which reads the token (Sync).
unsafe impl<F: Sync> Sync for CancelOn<F> {}

impl<F> CancelOn<F> {
    pub(crate) fn new(future: F, token: CancellationToken) -> Self {
        CancelOn {
            future,
            token,
            waiter: Waiter::new(),
        }
    }

    /// The token this future is raced against.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

impl<F: Future> Future for CancelOn<F> {
    type Output = Result<F::Output, Cancelled>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // SAFETY: `future` is structurally pinned: we never move it out of `self` nor hand
        // out `&mut F`, and `CancelOn` has no `Unpin` impl of its own (it is `Unpin` only
        // if `F` is). `token` and `waiter` are not pinned and are only used by reference.
        let this = unsafe { self.get_unchecked_mut() };
        if let Some(reason) = this.token.reason() {
            return Poll::Ready(Err(Cancelled::new(reason)));
        }
        // SAFETY: see above.
        let future = unsafe { Pin::new_unchecked(&mut this.future) };
        if let Poll::Ready(output) = future.poll(cx) {
            return Poll::Ready(Ok(output));
        }
        match this.waiter.poll(&this.token, cx) {
            Poll::Ready(reason) => Poll::Ready(Err(Cancelled::new(reason))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<F> Drop for CancelOn<F> {
    fn drop(&mut self) {
        self.waiter.release(&self.token);
    }
}

impl<F> fmt::Debug for CancelOn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CancelOn")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

/// Adds [`cancel_on`](CancelOnExt::cancel_on) to every future.
///
/// ```
/// use gracefully::{CancelOnExt, CancellationSource};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let source = CancellationSource::new();
/// source.cancel();
/// let result = async { 42 }.cancel_on(&source.token()).await;
/// assert!(result.is_err()); // cancelled before it was polled
/// # }
/// ```
pub trait CancelOnExt: Future + Sized {
    /// Races this future against `token`: the same as
    /// [`token.run_until_cancelled(self)`](CancellationToken::run_until_cancelled).
    fn cancel_on(self, token: &CancellationToken) -> CancelOn<Self> {
        CancelOn::new(self, token.clone())
    }
}

impl<F: Future> CancelOnExt for F {}
