//! Requests and their handlers: [`Request`], [`RequestHandler`], [`handler_fn`].

use std::fmt;
use std::future::Future;

use gracefully::CancellationToken;

use crate::error::{BoxError, Invalid};

/// A message with exactly one handler and a response: a command or a query.
///
/// The two provided methods are hooks for the built-in behaviours; a request that needs
/// neither implements only `Response`.
///
/// ```
/// use gracefully_mediator::{Invalid, Request};
///
/// #[derive(Clone)]
/// struct GetOrder { id: u64 }
///
/// impl Request for GetOrder {
///     type Response = Option<String>;
///
///     // Checked by `ValidateLayer` before the handler runs.
///     fn validate(&self) -> Result<(), Invalid> {
///         if self.id == 0 {
///             return Err(Invalid::new().with("id", "must not be 0"));
///         }
///         Ok(())
///     }
///
///     // A query is safe to run again: `RetryLayer` may retry it.
///     fn clone_for_retry(&self) -> Option<Self> {
///         Some(self.clone())
///     }
/// }
/// ```
///
/// A domain outcome the caller must branch on (say, "out of stock") belongs in the
/// `Response` (`type Response = Result<OrderId, Rejected>`): it is then an answer, not a
/// failure — the logging behaviour does not log it as an error and the retry behaviour
/// does not retry it.
///
/// *Anchors:* MediatR's `IRequest<TResponse>`. Validation and retry eligibility are hooks
/// on the request (MediatR resolves `IValidator<TRequest>` from its container; a Rust
/// mediator has no container, and a hook costs nothing where it is not overridden).
pub trait Request: Sized + Send + 'static {
    /// What the handler answers.
    type Response: Send + 'static;

    /// Checks the request before its handler runs, when the pipeline has a
    /// [`ValidateLayer`](crate::ValidateLayer). The default accepts everything.
    fn validate(&self) -> Result<(), Invalid> {
        Ok(())
    }

    /// A copy of the request for another attempt, or `None` (the default) if running it
    /// twice is not safe. [`RetryLayer`](crate::RetryLayer) retries only requests that
    /// return `Some`: a query, or a command that is idempotent (it carries its own id).
    /// Retrying a non-idempotent command could do its work twice, so it is opt-in.
    fn clone_for_retry(&self) -> Option<Self> {
        None
    }
}

/// Handles one [`Request`] type. A mediator has exactly one handler per request type.
///
/// The handler gets the request and the token of this call: the caller's token, or a
/// child of it if a behaviour narrowed it (a [`TimeoutLayer`](crate::TimeoutLayer) sets
/// a deadline). Honour it: pass it to queries and outbound calls, check it between steps,
/// and return [`Cancelled`](gracefully::Cancelled) when it fires (`token.check()?` and
/// `token.run_until_cancelled(f).await?` both do).
///
/// Any error converts with `?` (the return type is [`BoxError`]). An error that is, or
/// wraps, a `Cancelled` reaches the caller as [`Error::Cancelled`](crate::Error::Cancelled);
/// any other as [`Error::Failed`](crate::Error::Failed).
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{BoxError, Request, RequestHandler};
///
/// struct GetOrder { id: u64 }
/// impl Request for GetOrder { type Response = String; }
///
/// struct GetOrderHandler;
///
/// impl RequestHandler<GetOrder> for GetOrderHandler {
///     async fn handle(&self, request: GetOrder, token: CancellationToken) -> Result<String, BoxError> {
///         token.check()?; // returns Cancelled once the token fired
///         Ok(format!("order {}", request.id))
///     }
/// }
/// ```
///
/// A panic in a handler is not caught: it unwinds into the caller's `send`, as a function
/// call would (notification handlers are different: see
/// [`NotificationHandler`](crate::NotificationHandler)).
///
/// *Anchors:* MediatR's `IRequestHandler<TRequest, TResponse>.Handle(request,
/// cancellationToken)`. The Rust mediators `mediator`, `medi-rs`, `brazier` and `rust_bus`
/// pass no token at all.
pub trait RequestHandler<R: Request>: Send + Sync + 'static {
    /// Handles `request`, honouring `token`.
    ///
    /// # Cancel safety
    ///
    /// The mediator never drops this future early by itself: cancellation is cooperative
    /// (the token fires; the handler decides how to stop). The caller may drop it, as it
    /// may drop any future; write handlers so that is safe (no half-done work across an
    /// `.await`), or shield their cleanup.
    fn handle(
        &self,
        request: R,
        token: CancellationToken,
    ) -> impl Future<Output = Result<R::Response, BoxError>> + Send;
}

/// A [`RequestHandler`] from a closure or function: `handler_fn(|request: GetOrder, token| async move { … })`.
///
/// The future must be `'static` (move what it needs into it); its error may be any type
/// that converts into [`BoxError`].
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Mediator, Request, handler_fn};
///
/// struct Ping;
/// impl Request for Ping { type Response = &'static str; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .handler(handler_fn(|_: Ping, token: CancellationToken| async move {
///         token.check()?;
///         Ok::<_, gracefully::Cancelled>("pong")
///     }))
///     .build()
///     .unwrap();
/// assert_eq!(mediator.send(Ping, &CancellationToken::never()).await.unwrap(), "pong");
/// # }
/// ```
pub fn handler_fn<F>(f: F) -> HandlerFn<F> {
    HandlerFn { f }
}

/// The handler made by [`handler_fn`].
#[derive(Clone, Copy)]
pub struct HandlerFn<F> {
    f: F,
}

impl<R, F, Fut, T, E> RequestHandler<R> for HandlerFn<F>
where
    R: Request<Response = T>,
    T: Send + 'static,
    F: Fn(R, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn handle(
        &self,
        request: R,
        token: CancellationToken,
    ) -> impl Future<Output = Result<T, BoxError>> + Send {
        let fut = (self.f)(request, token);
        async move { fut.await.map_err(Into::into) }
    }
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}
