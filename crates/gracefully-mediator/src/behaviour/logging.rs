//! [`LoggingLayer`]: one event per request with its outcome and how long it took.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tracing::Level;
use tracing::level_filters::LevelFilter;

use crate::call::Call;
use crate::error::Error;
use crate::request::Request;

/// Logs every request (with [`tracing`], target `gracefully_mediator`) when it ends: its
/// type, how long it took, and its outcome, each at a level that fits it.
///
/// | outcome | level | fields |
/// |---|---|---|
/// | response | `DEBUG` | `request`, `elapsed` |
/// | [`Error::Cancelled`] | `DEBUG` — never as an error | `request`, `elapsed`, `reason` (kind, message, origin) |
/// | [`Error::Invalid`] | `INFO` (the caller's mistake, not ours) | `request`, `elapsed`, `problems` |
/// | [`Error::Failed`] | `ERROR` | `request`, `elapsed`, `error` |
///
/// The inner service runs inside a `DEBUG` span `request` with the request's type, so the
/// handler's own events carry it when that level is on. When no subscriber would record
/// anything at all, the layer does not read the clock.
///
/// Register it first (outermost) to time the whole pipeline, validation and retries
/// included; after [`RetryLayer`](crate::RetryLayer) it logs each attempt instead.
///
/// ```
/// use std::time::Duration;
/// use gracefully_mediator::{LoggingLayer, Mediator, Request, TimeoutLayer, handler_fn};
///
/// struct Ping;
/// impl Request for Ping { type Response = (); }
///
/// let mediator = Mediator::builder()
///     .layer(LoggingLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_secs(5)))
///     .handler(handler_fn(|_: Ping, _token| async { Ok::<_, gracefully_mediator::BoxError>(()) }))
///     .build()
///     .unwrap();
/// ```
///
/// *Anchors:* the logging `IPipelineBehavior` every MediatR codebase writes (a
/// `Stopwatch` around `next()`), which logs an `OperationCanceledException` as an error;
/// tower-http's `TraceLayer`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoggingLayer {
    _private: (),
}

impl LoggingLayer {
    /// The logging behaviour.
    pub fn new() -> LoggingLayer {
        LoggingLayer { _private: () }
    }
}

impl<S> Layer<S> for LoggingLayer {
    type Service = Logging<S>;

    fn layer(&self, inner: S) -> Logging<S> {
        Logging { inner }
    }
}

/// The service made by [`LoggingLayer`].
#[derive(Clone, Debug)]
pub struct Logging<S> {
    inner: S,
}

impl<S, R> Service<Call<R>> for Logging<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error>,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    type Future = LoggingFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        let request = call.request_type();
        // `current()` is the most verbose level any subscriber records (one atomic load):
        // `OFF` means no span or event below can be recorded, so there is nothing to time
        // and no span to make (`debug_span!` would make a disabled one).
        let recording = LevelFilter::current() != LevelFilter::OFF;
        let start = recording.then(Instant::now);
        // A disabled span (DEBUG off: the usual production setting) is not kept, so neither
        // this call nor any poll enters it.
        let span = recording
            .then(|| tracing::debug_span!("request", request))
            .filter(|span| !span.is_disabled());
        let entered = span.as_ref().map(tracing::Span::enter);
        let inner = self.inner.call(call);
        drop(entered);
        LoggingFuture {
            inner,
            span,
            request,
            start,
        }
    }
}

pin_project! {
    /// The future of [`Logging`]: the inner future, polled inside the request's span,
    /// and the event at its end.
    ///
    /// # Cancel safety
    ///
    /// As the inner future; dropped before it ends, it logs nothing.
    pub struct LoggingFuture<F> {
        #[pin]
        inner: F,
        // `None` when the span would be disabled.
        span: Option<tracing::Span>,
        request: &'static str,
        start: Option<Instant>,
    }
}

impl<F, T> Future for LoggingFuture<F>
where
    F: Future<Output = Result<T, Error>>,
{
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let _entered = this.span.as_ref().map(tracing::Span::enter);
        let result = ready!(this.inner.poll(cx));
        let elapsed = this.start.map_or(Duration::ZERO, |start| start.elapsed());
        log(this.request, elapsed, &result);
        Poll::Ready(result)
    }
}

/// The event for a finished request (levels: see [`LoggingLayer`]).
fn log<T>(request: &'static str, elapsed: Duration, result: &Result<T, Error>) {
    match result {
        Ok(_) => tracing::event!(Level::DEBUG, request, ?elapsed, "request handled"),
        // docs/architecture.md, "The shutdown contract", rule 2: a cancellation is an
        // outcome, logged with its reason, never as an error.
        Err(Error::Cancelled(cancelled)) => tracing::event!(
            Level::DEBUG,
            request,
            ?elapsed,
            reason = %cancelled.reason(),
            "request cancelled"
        ),
        Err(Error::Invalid(invalid)) => {
            tracing::event!(Level::INFO, request, ?elapsed, problems = %invalid, "request invalid")
        }
        Err(error) => {
            tracing::event!(Level::ERROR, request, ?elapsed, %error, "request failed")
        }
    }
}
