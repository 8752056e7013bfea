//! Per-route settings as tower layers: the request's timeout and its disconnect policy.

use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service};

use crate::policy::DisconnectPolicy;
use crate::request::with_current;

/// A layer that applies one per-route setting to the current request's context (on the
/// server's task, in `call`) and then calls the service it wraps: the same shape for every
/// route setting, written once. Makes `$service<S>` and the `Layer` impl of `$layer`, whose
/// `setting` field holds the value.
macro_rules! route_setting {
    ($(#[$doc:meta])* $layer:ident => $service:ident: $value:ty, |$ctx:ident, $setting:ident| $apply:expr) => {
        impl<S> Layer<S> for $layer {
            type Service = $service<S>;
            fn layer(&self, inner: S) -> $service<S> {
                $service {
                    inner,
                    setting: self.setting,
                }
            }
        }

        $(#[$doc])*
        #[derive(Debug, Clone)]
        pub struct $service<S> {
            inner: S,
            setting: $value,
        }

        impl<S, B> Service<http::Request<B>> for $service<S>
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
                let $setting = self.setting;
                with_current(|$ctx| $apply);
                self.inner.call(request)
            }
        }
    };
}

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
    setting: Duration,
}

impl TimeoutLayer {
    /// A timeout of `timeout` from the moment the request reaches this layer.
    pub fn new(timeout: Duration) -> Self {
        TimeoutLayer { setting: timeout }
    }
}

route_setting! {
    /// The service made by [`TimeoutLayer`].
    TimeoutLayer => Timeout: Duration, |ctx, timeout| ctx.cancel_after(timeout)
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
    setting: DisconnectPolicy,
}

impl DisconnectPolicyLayer {
    /// Applies `policy` to the wrapped routes.
    pub fn new(policy: DisconnectPolicy) -> Self {
        DisconnectPolicyLayer { setting: policy }
    }
}

route_setting! {
    /// The service made by [`DisconnectPolicyLayer`].
    DisconnectPolicyLayer => WithDisconnectPolicy: DisconnectPolicy, |ctx, policy| ctx.set_policy(policy)
}
