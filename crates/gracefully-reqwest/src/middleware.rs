//! The `reqwest-middleware` integration: [`GracefulMiddleware`] does for a middleware stack
//! what [`GracefulRequest::send`](crate::GracefulRequest::send) does for a plain client, with
//! the token carried in the request's extensions ([`MiddlewareRequestExt::with_token`]).

use std::future::Future;

use gracefully::{CancellationToken, Cancelled};
use http::Extensions;
use reqwest_middleware::{Middleware, Next};

use crate::call::{self, Transport};
use crate::deadline::DeadlinePropagation;
use crate::error::Error;
use crate::retry::RetryPolicy;

/// A `reqwest-middleware` middleware that sends each request carrying a token
/// ([`MiddlewareRequestExt::with_token`]) as [`GracefulRequest::send`](crate::GracefulRequest::send)
/// does: aborted when the token fires, its timeout the token's remaining time, the budget
/// sent downstream in a header, and — with [`retry`](Self::retry) — retried within the
/// deadline. A request without a token passes through untouched.
///
/// Add it **first** (outermost), so that its retries re-run the middleware after it and its
/// abort covers them all.
///
/// Errors are `reqwest_middleware::Error`: a cancellation is
/// `reqwest_middleware::Error::Middleware` holding an [`Error::Cancelled`], whose source chain
/// [`gracefully::is_cancellation`] and [`gracefully::find_cancelled`] walk (the wrapper's
/// `source()` is the `Cancelled`).
///
/// ```no_run
/// use std::time::Duration;
/// use gracefully::{CancellationSource, is_cancellation};
/// use gracefully_reqwest::{GracefulMiddleware, MiddlewareRequestExt, RetryPolicy};
/// use reqwest_middleware::ClientBuilder;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let client = ClientBuilder::new(reqwest::Client::new())
///     .with(GracefulMiddleware::new().retry(RetryPolicy::default()))
///     // .with(tracing, auth, … )
///     .build();
///
/// let request = CancellationSource::with_timeout(Duration::from_secs(2));
/// match client.get("http://inventory.internal/items").with_token(&request.token()).send().await {
///     Ok(response) => println!("{}", response.status()),
///     Err(err) if is_cancellation(&err) => println!("gave up: {err}"),
///     Err(err) => return Err(err.into()),
/// }
/// # Ok(()) }
/// ```
///
/// *Anchors:* a .NET `DelegatingHandler` in an `HttpClient` pipeline that reads the token
/// of `SendAsync(request, token)` (with Polly's retry handler inside a timeout); Go's
/// `http.RoundTripper` wrapping, where the context travels inside the request. reqwest has
/// no per-request context, so the token travels in the request's extensions.
#[derive(Clone, Debug, Default)]
pub struct GracefulMiddleware {
    propagation: DeadlinePropagation,
    retry: Option<RetryPolicy>,
}

impl GracefulMiddleware {
    /// The middleware with the default [`DeadlinePropagation`] and no retries.
    pub fn new() -> Self {
        GracefulMiddleware::default()
    }

    /// How the token's deadline is handed on (header name, transit allowance).
    pub fn propagation(mut self, propagation: DeadlinePropagation) -> Self {
        self.propagation = propagation;
        self
    }

    /// Retries requests that carry a token under `policy`, bounded by the token. An
    /// invalid policy fails each such request with [`Error::Config`] (inside
    /// `reqwest_middleware::Error::Middleware`) before it is sent; check it with
    /// [`RetryPolicy::validate`] when you build the client.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }
}

#[async_trait::async_trait]
impl Middleware for GracefulMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let Some(CallToken(token)) = extensions.get::<CallToken>().cloned() else {
            return next.run(request, extensions).await;
        };
        if let Some(policy) = &self.retry {
            policy
                .validate()
                .map_err(|e| reqwest_middleware::Error::middleware(Error::Config(e)))?;
        }
        let mut transport = NextTransport { next, extensions };
        call::run(
            &mut transport,
            request,
            &token,
            &self.propagation,
            self.retry.as_ref(),
        )
        .await
    }
}

/// Adds [`with_token`](MiddlewareRequestExt::with_token) to `reqwest_middleware::RequestBuilder`.
///
/// *Anchors:* .NET's `SendAsync(request, token)`; Go's `req.WithContext(ctx)`.
pub trait MiddlewareRequestExt {
    /// Carries `token` in the request's extensions, for [`GracefulMiddleware`] to find. Without
    /// that middleware in the client's stack the token has no effect.
    fn with_token(self, token: &CancellationToken) -> Self;
}

impl MiddlewareRequestExt for reqwest_middleware::RequestBuilder {
    fn with_token(self, token: &CancellationToken) -> Self {
        self.with_extension(CallToken(token.clone()))
    }
}

/// The token in a request's extensions. A type of our own, so a `CancellationToken` that
/// something else keeps in the same extensions is never mistaken for the call's.
#[derive(Clone)]
struct CallToken(CancellationToken);

/// Sends through the rest of the middleware stack.
struct NextTransport<'a> {
    next: Next<'a>,
    extensions: &'a mut Extensions,
}

impl Transport for NextTransport<'_> {
    type Error = reqwest_middleware::Error;

    fn send(
        &mut self,
        request: reqwest::Request,
    ) -> impl Future<Output = reqwest_middleware::Result<reqwest::Response>> + Send + '_ {
        // Each attempt runs the rest of the stack again, from a copy of `next`.
        self.next.clone().run(request, self.extensions)
    }

    fn cancelled(cancelled: Cancelled) -> reqwest_middleware::Error {
        reqwest_middleware::Error::middleware(Error::Cancelled(cancelled))
    }

    fn as_reqwest(error: &reqwest_middleware::Error) -> Option<&reqwest::Error> {
        match error {
            reqwest_middleware::Error::Reqwest(error) => Some(error),
            reqwest_middleware::Error::Middleware(error) => error.downcast_ref(),
        }
    }
}
