//! [`ValidateLayer`]: rejects invalid requests before their handler runs.

use std::future::{Ready, ready};
use std::task::{Context, Poll};

use futures_util::future::Either;
use tower::{Layer, Service};

use crate::call::Call;
use crate::error::Error;
use crate::request::Request;

/// Checks each request with [`Request::validate`] and answers
/// [`Error::Invalid`] (naming the request type and every problem) without calling the rest
/// of the pipeline when it fails.
///
/// Requests that do not override `validate` pass straight through; the check is a direct
/// (monomorphised) call, no lookup.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Error, Invalid, Mediator, Request, ValidateLayer, handler_fn};
///
/// struct CreateOrder { quantity: u32 }
/// impl Request for CreateOrder {
///     type Response = u64;
///     fn validate(&self) -> Result<(), Invalid> {
///         if self.quantity == 0 {
///             return Err(Invalid::new().with("quantity", "must be at least 1"));
///         }
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .layer(ValidateLayer::new())
///     .handler(handler_fn(|_: CreateOrder, _token| async { Ok::<_, gracefully_mediator::BoxError>(7) }))
///     .build()
///     .unwrap();
///
/// let err = mediator.send(CreateOrder { quantity: 0 }, &CancellationToken::never()).await.unwrap_err();
/// assert!(matches!(err, Error::Invalid(_)));
/// assert!(err.to_string().ends_with("CreateOrder`: quantity: must be at least 1"));
/// # }
/// ```
///
/// *Anchors:* the FluentValidation `ValidationBehavior<TRequest, TResponse>` of MediatR
/// codebases (which throws a `ValidationException`).
#[derive(Clone, Copy, Debug, Default)]
pub struct ValidateLayer {
    _private: (),
}

impl ValidateLayer {
    /// The validation behaviour.
    pub fn new() -> ValidateLayer {
        ValidateLayer { _private: () }
    }
}

impl<S> Layer<S> for ValidateLayer {
    type Service = Validate<S>;

    fn layer(&self, inner: S) -> Validate<S> {
        Validate { inner }
    }
}

/// The service made by [`ValidateLayer`].
#[derive(Clone, Debug)]
pub struct Validate<S> {
    inner: S,
}

impl<S, R> Service<Call<R>> for Validate<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error>,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    type Future = Either<Ready<Result<R::Response, Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        match call.request().validate() {
            Ok(()) => Either::Right(self.inner.call(call)),
            Err(invalid) => Either::Left(ready(Err(Error::Invalid(
                invalid.for_request(call.request_type()),
            )))),
        }
    }
}
