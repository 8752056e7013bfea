//! [`RetryLayer`]: retries genuine failures, never cancellations, never past the deadline.
//!
//! The attempt loop is a hand-written state machine (below) rather than an `async` block,
//! so the future has a name and `send` allocates nothing for it:
//!
//! ```text
//!            ┌──────────── Ok / Cancelled / Invalid / not retryable / no attempts left ──► done
//!  call ──► Calling ──Failed──► (retry allowed?) ──► Backoff ──timer──► Ready ──poll_ready──► Calling
//!                                    │                  │
//!                                    │                  └── the call's token fired ──► done (Cancelled)
//!                                    └── token fired, or its deadline is before the backoff ends ──► done (Failed)
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use gracefully::WaitForCancellationOwned;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::call::Call;
use crate::error::Error;
use crate::request::Request;

/// Retries requests whose handler failed ([`Error::Failed`]) — and nothing else:
///
/// * never a cancellation ([`Error::Cancelled`]): the work is unwanted, or out of time;
/// * never after the call's token fired, even if the handler answered with a failure;
/// * never past the token's deadline: a retry is scheduled only if its backoff ends before
///   the [`deadline`](gracefully::CancellationToken::deadline) (and the attempt then runs
///   under the same token, so it is cut at the deadline too); a token that fires while
///   waiting ends the wait at once, with `Error::Cancelled`;
/// * never an invalid request ([`Error::Invalid`]): it would fail the same way again;
/// * only requests that say they are safe to run twice
///   ([`Request::clone_for_retry`] returns `Some`).
///
/// Backoff is exponential from `initial` (doubling, capped at `max`) with jitter (each wait
/// is between half and all of its step), and is timed on the token's clock: under a
/// [`ManualClock`](gracefully::ManualClock) the waits follow the manual time. Each retry
/// is logged at `WARN` with the failure that caused it.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Mediator, Request, RetryLayer, handler_fn};
///
/// #[derive(Clone)]
/// struct GetRate;
/// impl Request for GetRate {
///     type Response = f64;
///     fn clone_for_retry(&self) -> Option<Self> { Some(self.clone()) } // a query: safe
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let calls = Arc::new(AtomicU32::new(0));
/// let seen = calls.clone();
/// let mediator = Mediator::builder()
///     .layer(RetryLayer::new(2).backoff(Duration::from_millis(1), Duration::from_millis(10)))
///     .handler(handler_fn(move |_: GetRate, _token| {
///         let attempt = seen.fetch_add(1, Ordering::SeqCst) + 1;
///         async move {
///             if attempt < 3 { Err("upstream busy") } else { Ok(1.08) }
///         }
///     }))
///     .build()
///     .unwrap();
///
/// assert_eq!(mediator.send(GetRate, &CancellationToken::never()).await.unwrap(), 1.08);
/// assert_eq!(calls.load(Ordering::SeqCst), 3); // the first attempt and two retries
/// # }
/// ```
///
/// *Anchors:* Polly's retry (`WaitAndRetryAsync`) as MediatR behaviours use it, which
/// retries whatever exception the policy names and sleeps past the caller's deadline unless
/// told otherwise; tower's `Retry` with a `Policy`. Like gRPC's retry throttling, a
/// cancellation or a spent deadline ends the retries.
#[derive(Clone, Copy, Debug)]
pub struct RetryLayer {
    retries: u32,
    initial: Duration,
    max: Duration,
}

impl RetryLayer {
    /// Up to `retries` retries after the first attempt (`0`: no retry), with a backoff of
    /// 50 ms doubling up to 2 s.
    pub fn new(retries: u32) -> RetryLayer {
        RetryLayer {
            retries,
            initial: Duration::from_millis(50),
            max: Duration::from_secs(2),
        }
    }

    /// The backoff: `initial` before the first retry, doubling before each next one, never
    /// more than `max` (if `initial` is larger than `max`, every wait is `max`).
    pub fn backoff(self, initial: Duration, max: Duration) -> RetryLayer {
        RetryLayer {
            initial,
            max,
            ..self
        }
    }

    /// The wait after the `failed`-th attempt failed (1-based), before jitter.
    fn step(&self, failed: u32) -> Duration {
        let doublings = failed.saturating_sub(1).min(31);
        self.initial.saturating_mul(1 << doublings).min(self.max)
    }

    /// The jittered wait: between half and all of the step ("equal jitter").
    fn delay(&self, failed: u32) -> Duration {
        let step = self.step(failed);
        let half = step / 2;
        let nanos = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: *self,
        }
    }
}

/// The service made by [`RetryLayer`].
#[derive(Clone, Debug)]
pub struct Retry<S> {
    inner: S,
    policy: RetryLayer,
}

impl<S, R> Service<Call<R>> for Retry<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error> + Clone,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    type Future = RetryFuture<S, R, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        let next = if self.policy.retries > 0 {
            call.clone_for_retry()
        } else {
            None
        };
        // A request that cannot be retried (a command, or no retries configured) makes one
        // attempt: no service is kept for later ones, so nothing is cloned.
        let mut service = if next.is_some() {
            // tower's rule: the service that was polled ready takes this call; the future
            // keeps it for later attempts, and a fresh clone stays here.
            let clone = self.inner.clone();
            Some(std::mem::replace(&mut self.inner, clone))
        } else {
            None
        };
        let fut = match &mut service {
            Some(service) => service.call(call),
            None => self.inner.call(call),
        };
        RetryFuture {
            state: State::Calling { fut },
            service,
            next,
            attempts: 1,
            policy: self.policy,
        }
    }
}

pin_project! {
    /// The future of [`Retry`]: the attempts and the waits between them.
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the attempt in progress (as dropping any handler future does) or
    /// the wait; nothing is retried afterwards.
    pub struct RetryFuture<S, R, F> {
        #[pin]
        state: State<F>,
        // The service for later attempts; `None` when there will be none (`next` is `None`
        // from the start).
        service: Option<S>,
        // The copy for the next attempt (taken before each attempt starts); `None` if the
        // request is not retryable or no attempt is left.
        next: Option<Call<R>>,
        // Attempts started so far.
        attempts: u32,
        policy: RetryLayer,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] fut: F },
        Backoff { #[pin] wait: WaitForCancellationOwned },
        Readying,
    }
}

impl<S, R, F> Future for RetryFuture<S, R, F>
where
    S: Service<Call<R>, Response = R::Response, Error = Error, Future = F>,
    R: Request,
    F: Future<Output = Result<R::Response, Error>>,
{
    type Output = Result<R::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Calling { fut } => {
                    let error = match ready!(fut.poll(cx)) {
                        Err(Error::Failed(error)) => error,
                        // A response, a cancellation, an invalid request: final.
                        other => return Poll::Ready(other),
                    };
                    let Some(next) = this.next.as_ref() else {
                        return Poll::Ready(Err(Error::Failed(error)));
                    };
                    let token = next.token();
                    if token.is_cancelled() {
                        // The handler failed while (or after) its token fired: the caller no
                        // longer wants an answer, so no retry; its failure stands.
                        return Poll::Ready(Err(Error::Failed(error)));
                    }
                    let delay = this.policy.delay(*this.attempts);
                    if let Some(left) = token.time_left()
                        && left <= delay
                    {
                        tracing::debug!(
                            request = next.request_type(),
                            attempts = *this.attempts,
                            ?delay,
                            ?left,
                            %error,
                            "request failed; not retrying: the deadline comes before the backoff ends"
                        );
                        return Poll::Ready(Err(Error::Failed(error)));
                    }
                    tracing::warn!(
                        request = next.request_type(),
                        attempts = *this.attempts,
                        ?delay,
                        %error,
                        "request failed; retrying"
                    );
                    // The wait is a child of the call's token with the backoff as its
                    // timeout: it ends at the backoff, or at once when the caller's token
                    // fires; on the token's own clock; no async runtime needed.
                    let wait = token.child_with_timeout(delay).token().cancelled_owned();
                    this.state.set(State::Backoff { wait });
                    // Give the thread back once per retry, even with no backoff: a wait that
                    // is over at once would otherwise run every attempt within this one poll,
                    // and with many retries hold the thread (on a current-thread runtime,
                    // everything else on it, including whatever would cancel this).
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                StateProj::Backoff { wait } => {
                    ready!(wait.poll(cx));
                    let next = this.next.as_ref().expect("a retry has its copy");
                    if let Err(cancelled) = next.token().check() {
                        return Poll::Ready(Err(Error::Cancelled(cancelled)));
                    }
                    this.state.set(State::Readying);
                }
                StateProj::Readying => {
                    let service = this.service.as_mut().expect("a retry has its service");
                    ready!(service.poll_ready(cx))?;
                    let call = this.next.take().expect("a retry has its copy");
                    *this.attempts += 1;
                    if *this.attempts <= this.policy.retries {
                        *this.next = call.clone_for_retry();
                    }
                    let fut = service.call(call);
                    this.state.set(State::Calling { fut });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_initial_and_is_capped_at_max() {
        let policy =
            RetryLayer::new(10).backoff(Duration::from_millis(10), Duration::from_millis(50));
        let steps: Vec<_> = (1..=5).map(|n| policy.step(n).as_millis()).collect();
        assert_eq!(steps, [10, 20, 40, 50, 50]);
        // An initial step above the cap: every wait is the cap.
        let inverted = RetryLayer::new(3).backoff(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(inverted.step(1), Duration::from_secs(1));
        // No overflow for absurd attempt numbers.
        assert_eq!(policy.step(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn jittered_delay_stays_between_half_and_all_of_the_step() {
        let policy = RetryLayer::new(3).backoff(Duration::from_millis(100), Duration::from_secs(1));
        for failed in 1..=4 {
            let step = policy.step(failed);
            for _ in 0..200 {
                let delay = policy.delay(failed);
                assert!(
                    delay >= step / 2 && delay <= step,
                    "{delay:?} outside [{:?}, {step:?}]",
                    step / 2
                );
            }
        }
    }
}
