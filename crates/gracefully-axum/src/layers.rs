//! Per-route settings as tower layers: the request's timeout and its disconnect policy.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::request::{DisconnectPolicy, with_current};

/// A cooperative timeout for the routes it wraps: the request token fires with
/// [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) once `timeout` has passed,
/// and its [`deadline()`](gracefully::CancellationToken::deadline) reports when that is, so
/// the handler can hand it on (a database `statement_timeout`, a downstream request).
///
/// The handler keeps running and decides how to stop: returning
/// [`HttpCancelled`](crate::HttpCancelled) (or any `Cancelled`) answers `504 Gateway
/// Timeout`. Deadlines only move earlier, so nested timeouts (a server default, then a
/// route's) keep the shortest.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use gracefully_axum::{HttpCancelled, RequestToken, TimeoutLayer};
///
/// async fn slow(RequestToken(token): RequestToken) -> Result<&'static str, HttpCancelled> {
///     token.run_until_cancelled(tokio::time::sleep(Duration::from_secs(60))).await?;
///     Ok("done")
/// }
///
/// let app: Router = Router::new()
///     .route("/slow", get(slow))
///     .layer(TimeoutLayer::new(Duration::from_secs(2)));
/// ```
///
/// *Anchors:* ASP.NET Core's request-timeouts middleware (`[RequestTimeout]`), which also
/// signals through the request's token; tower-http's `TimeoutLayer` instead drops the
/// handler and answers 408 — nothing of the handler's cleanup runs.
#[derive(Debug, Clone, Copy)]
pub struct TimeoutLayer {
    timeout: Duration,
}

impl TimeoutLayer {
    /// A timeout of `timeout` from the moment the request reaches this layer.
    pub fn new(timeout: Duration) -> Self {
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
#[derive(Debug, Clone)]
pub struct Timeout<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<http::Request<B>> for Timeout<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        with_current(|ctx| ctx.cancel_after(self.timeout));
        self.inner.call(request)
    }
}

/// Sets the [`DisconnectPolicy`] of the routes it wraps.
///
/// ```
/// use axum::{Router, routing::post};
/// use gracefully_axum::{DisconnectPolicy, DisconnectPolicyLayer};
///
/// async fn charge() -> &'static str { "charged" }
///
/// // A payment must complete even if the client gives up waiting.
/// let app: Router = Router::new()
///     .route("/charge", post(charge))
///     .layer(DisconnectPolicyLayer::new(DisconnectPolicy::Detached));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct DisconnectPolicyLayer {
    policy: DisconnectPolicy,
}

impl DisconnectPolicyLayer {
    /// Applies `policy` to the wrapped routes.
    pub fn new(policy: DisconnectPolicy) -> Self {
        DisconnectPolicyLayer { policy }
    }
}

impl<S> Layer<S> for DisconnectPolicyLayer {
    type Service = WithDisconnectPolicy<S>;
    fn layer(&self, inner: S) -> WithDisconnectPolicy<S> {
        WithDisconnectPolicy {
            inner,
            policy: self.policy,
        }
    }
}

/// The service made by [`DisconnectPolicyLayer`].
#[derive(Debug, Clone)]
pub struct WithDisconnectPolicy<S> {
    inner: S,
    policy: DisconnectPolicy,
}

impl<S, B> Service<http::Request<B>> for WithDisconnectPolicy<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        with_current(|ctx| ctx.set_policy(self.policy));
        self.inner.call(request)
    }
}
