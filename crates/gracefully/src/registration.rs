//! [`Registration`]: the RAII guard of an `on_cancel` callback.

use std::fmt;
use std::ptr::NonNull;

use crate::tree::Node;
use crate::tree::entry::{self, EntryHeader};

/// Keeps a callback registered with
/// [`CancellationToken::on_cancel`](crate::CancellationToken::on_cancel) armed; dropping it
/// unregisters the callback.
///
/// * While it lives, the callback stays armed even if every source and token of its node is
///   gone (a parent or deadline can still cancel the node).
/// * Dropping it before the cancellation releases the callback (and what it captured) at
///   once.
/// * Dropping it while the callback runs on another thread waits until the callback has
///   finished, so that after the drop the callback is guaranteed not to be running. Dropped
///   from inside the callback itself (on the thread running it), it does not wait.
/// * After the callback ran, dropping it only frees memory.
///
/// *Anchors:* .NET `CancellationTokenRegistration` (`Dispose` waits the same way;
/// `Unregister` is [`unregister`](Self::unregister)); C++ `std::stop_callback`'s destructor;
/// Go's `stop` function returned by `context.AfterFunc`.
#[must_use = "dropping the Registration unregisters the callback at once"]
pub struct Registration {
    /// `None` when the callback ran inline (already cancelled) or the token was `never()`.
    /// Otherwise we own a reference to the node and the entry's handle (invariant 6).
    inner: Option<(NonNull<Node>, NonNull<EntryHeader>)>,
}

// SAFETY: the entry's state machine is thread-safe, and releasing the handle from another
// thread is explicitly supported (rule 5). The callback itself is `Send`.
unsafe impl Send for Registration {}
// SAFETY: no `&self` method touches shared state.
unsafe impl Sync for Registration {}

impl Registration {
    pub(crate) fn new(node: NonNull<Node>, entry: NonNull<EntryHeader>) -> Self {
        Registration {
            inner: Some((node, entry)),
        }
    }

    pub(crate) fn empty() -> Self {
        Registration { inner: None }
    }

    /// Unregisters the callback. Returns `true` if it had not started and now never will;
    /// `false` if it already ran (or is running, in which case this waits for it as `drop`
    /// does), or if nothing was registered.
    ///
    /// *Anchors:* .NET `CancellationTokenRegistration.Unregister()`; Go's `stop()` from
    /// `context.AfterFunc`.
    pub fn unregister(mut self) -> bool {
        self.release()
    }

    fn release(&mut self) -> bool {
        let Some((node, entry)) = self.inner.take() else {
            return false;
        };
        // SAFETY: we own the entry's handle and a reference to the node, which keeps it alive
        // through the call; both are given up here exactly once.
        unsafe {
            let unregistered = entry::release_handle(node.as_ref(), entry);
            Node::release(node);
            unregistered
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("armed", &self.inner.is_some())
            .finish()
    }
}
