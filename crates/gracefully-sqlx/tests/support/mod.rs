//! Helpers shared by the integration tests: a future wrapper that cancels (or drops) at
//! its k-th poll, so a test can walk every await point of an operation.

#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use gracefully::{CancellationSource, Reason};

/// What to do at the chosen poll.
pub enum Hook {
    /// Cancel this source just before the k-th poll (the operation sees the token fired).
    Cancel(Arc<CancellationSource>),
    /// Drop the operation at the k-th poll instead of polling it (the caller went away).
    Drop,
}

/// What an [`AtPoll`] resolved to.
pub struct Polled<T> {
    /// The operation's output; `None` if it was dropped by the hook.
    pub output: Option<T>,
    /// Whether the hook ran (the operation had not completed before the chosen poll).
    pub fired: bool,
    /// How many times the operation was polled.
    pub polls: usize,
}

/// Wraps `inner`; at its `at`-th poll performs the hook.
pub struct AtPoll<F> {
    inner: Option<Pin<Box<F>>>,
    polls: usize,
    at: usize,
    hook: Option<Hook>,
}

impl<F: Future> AtPoll<F> {
    pub fn new(inner: F, at: usize, hook: Hook) -> Self {
        AtPoll {
            inner: Some(Box::pin(inner)),
            polls: 0,
            at,
            hook: Some(hook),
        }
    }
}

impl<F: Future> Future for AtPoll<F> {
    type Output = Polled<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `AtPoll` is `Unpin`: the inner future is boxed.
        let this = self.get_mut();
        this.polls += 1;
        if this.polls == this.at {
            match this.hook.take() {
                Some(Hook::Cancel(source)) => {
                    source.cancel_with(Reason::requested().with_message("test hook"));
                }
                Some(Hook::Drop) => {
                    this.inner = None; // dropped here, mid-flight
                    return Poll::Ready(Polled {
                        output: None,
                        fired: true,
                        polls: this.polls,
                    });
                }
                None => {}
            }
        }
        let fired = this.hook.is_none();
        let polls = this.polls;
        match this.inner.as_mut() {
            Some(inner) => inner.as_mut().poll(cx).map(|out| Polled {
                output: Some(out),
                fired,
                polls,
            }),
            None => Poll::Ready(Polled {
                output: None,
                fired,
                polls,
            }),
        }
    }
}

impl<F> Unpin for AtPoll<F> {}

/// Runs the tests of one binary one at a time: several of them time how fast the database
/// stops, and the others (1000 cancels, walks) would load the same two cores meanwhile.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}
