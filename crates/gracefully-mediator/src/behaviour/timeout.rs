//! [`TimeoutLayer`]: a deadline for the rest of the pipeline, through the token.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::call::Call;
use crate::error::Error;
use crate::request::Request;

/// Gives the rest of the pipeline at most `timeout`: the call's token is narrowed to a
/// child that fires with [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded)
/// when it passes, so the handler (and every query or call it hands the token to) sees
/// the deadline — as [`deadline()`](gracefully::CancellationToken::deadline) up front, as
/// a cancellation when it passes.
///
/// Cooperative: the handler is not dropped at the deadline; it stops the way it chooses
/// (rolls back, releases) and returns [`Cancelled`](gracefully::Cancelled), which reaches
/// the caller as [`Error::Cancelled`] with reason `DeadlineExceeded`. Deadlines only move
/// earlier, so a caller's token with no more time left than `timeout` keeps its own
/// deadline — and is passed on as it is, with no child made (the handler could not tell the
/// difference, and a request that already carries a shorter deadline pays nothing here).
///
/// ```
/// use std::time::Duration;
/// use gracefully::{CancellationToken, ReasonKind};
/// use gracefully_mediator::{Error, Mediator, Request, TimeoutLayer, handler_fn};
///
/// struct Report;
/// impl Request for Report { type Response = u64; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .layer(TimeoutLayer::new(Duration::from_millis(20)))
///     .handler(handler_fn(|_: Report, token: CancellationToken| async move {
///         // A slow query that honours the token.
///         token.run_until_cancelled(tokio::time::sleep(Duration::from_secs(60))).await?;
///         Ok::<_, gracefully::Cancelled>(42)
///     }))
///     .build()
///     .unwrap();
///
/// let err = mediator.send(Report, &CancellationToken::never()).await.unwrap_err();
/// assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::DeadlineExceeded);
/// # }
/// ```
///
/// Placed before [`RetryLayer`](crate::RetryLayer) (outside it), the timeout bounds all
/// attempts together and the retry never schedules an attempt past it. Placed after it,
/// each attempt gets its own timeout — but an attempt that times out ends in
/// `Cancelled`, which is never retried.
///
/// *Anchors:* MediatR #592 and #570 (a timeout behaviour could not pass a narrower token
/// to `next` until 12.5, and then could pass an unrelated one); Go's
/// `context.WithTimeout(ctx, d)`. tower's own `Timeout` drops the inner future and
/// answers an `Elapsed` error instead: nothing of the handler's cleanup runs.
#[derive(Clone, Copy, Debug)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A timeout of `timeout` from the moment a request reaches this layer. A zero
    /// timeout cancels every request at once; `Duration::MAX` sets no deadline.
    pub fn new(timeout: Duration) -> TimeoutLayer {
        TimeoutLayer { timeout }
    }
}

impl<S> Layer<S> for TimeoutLayer {
    type Service = Timeout<S>;

    fn layer(&self, inner: S) -> Timeout<S> {
        Timeout {
            inner,
            timeout: self.timeout,
        }
    }
}

/// The service made by [`TimeoutLayer`].
#[derive(Clone, Debug)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, R> Service<Call<R>> for Timeout<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error>,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    // The inner future as is: the narrowed token travels in the call, and the deadline's
    // node lives as long as some token of it does (the handler's), no longer.
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<R>) -> S::Future {
        // Deadlines only move earlier: when the caller's token has no more than `timeout`
        // left (a request's own deadline, typically), a child with this timeout would
        // report and fire exactly as the token does — so skip the node and its timer
        // entry. Reading it costs a walk of the token's ancestry and reads the clock only
        // if a deadline exists; arming one costs that walk, a clock read, a node and a
        // timer entry.
        let caller_is_sooner = call
            .token()
            .time_left()
            .is_some_and(|left| left <= self.timeout);
        if !caller_is_sooner {
            // The source is dropped here; dropping a source does not cancel it, and its
            // deadline stays armed while the call's token observes it.
            drop(call.narrow_with_timeout(self.timeout));
        }
        self.inner.call(call)
    }
}
