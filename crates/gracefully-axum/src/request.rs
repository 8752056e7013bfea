//! Per-request cancellation: the token, how handlers reach it, and what a departed client
//! does to it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use axum::extract::FromRequestParts;
use gracefully::{CancellationSource, CancellationToken};
use http::request::Parts;

/// What happens to a request when its client disconnects while the handler runs.
///
/// Set per route with [`DisconnectPolicyLayer`](crate::DisconnectPolicyLayer) (or for the
/// whole server with [`HttpServer::disconnect_policy`](crate::HttpServer::disconnect_policy)).
///
/// *Anchors:* ASP.NET Core always behaves like [`Cooperative`](Self::Cooperative)
/// (`HttpContext.RequestAborted` fires, the action runs on); Go's `net/http` too (the
/// request context is cancelled). axum on hyper behaves like [`Drop`](Self::Drop) on
/// HTTP/2 and, on HTTP/1, drops the handler once hyper notices the closed socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DisconnectPolicy {
    /// The request token fires with [`Disconnected`](gracefully::ReasonKind::Disconnected);
    /// the handler keeps running to its end, so its cleanup runs, and it stays tracked for
    /// shutdown. The default.
    #[default]
    Cooperative,
    /// The handler's future is dropped at once (axum's usual behaviour). Cleanup that needs
    /// to `.await` does not run.
    Drop,
    /// Nothing happens: the token does not fire, and the handler runs to completion. For
    /// work that must finish even if nobody reads the answer (a payment, a write the client
    /// will retry idempotently).
    Detached,
}

impl DisconnectPolicy {
    fn to_u8(self) -> u8 {
        match self {
            DisconnectPolicy::Cooperative => 0,
            DisconnectPolicy::Drop => 1,
            DisconnectPolicy::Detached => 2,
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            1 => DisconnectPolicy::Drop,
            2 => DisconnectPolicy::Detached,
            _ => DisconnectPolicy::Cooperative,
        }
    }
}

/// The server's per-request state, in the request's extensions. Layers change it (policy,
/// deadline); the server reads it when the client leaves.
#[derive(Clone)]
pub(crate) struct RequestContext {
    pub(crate) inner: Arc<RequestInner>,
}

pub(crate) struct RequestInner {
    pub(crate) source: CancellationSource,
    policy: AtomicU8,
    /// The server, for long-lived responses that must end at drain.
    pub(crate) server: Arc<crate::server::Shared>,
}

impl RequestContext {
    pub(crate) fn new(
        source: CancellationSource,
        policy: DisconnectPolicy,
        server: Arc<crate::server::Shared>,
    ) -> Self {
        RequestContext {
            inner: Arc::new(RequestInner {
                source,
                policy: AtomicU8::new(policy.to_u8()),
                server,
            }),
        }
    }

    pub(crate) fn policy(&self) -> DisconnectPolicy {
        DisconnectPolicy::from_u8(self.inner.policy.load(Ordering::Relaxed))
    }

    pub(crate) fn set_policy(&self, policy: DisconnectPolicy) {
        self.inner.policy.store(policy.to_u8(), Ordering::Relaxed);
    }

    pub(crate) fn token(&self) -> CancellationToken {
        self.inner.source.token()
    }

    /// Sets (or moves earlier) the request's deadline.
    #[track_caller]
    pub(crate) fn cancel_after(&self, timeout: Duration) {
        self.inner.source.cancel_after(timeout);
    }
}

/// The request's [`CancellationToken`], as an axum extractor.
///
/// It is a child of the host's hard-stop token and fires when:
///
/// * the client disconnects while the handler runs ([`Disconnected`]) — unless the route's
///   [`DisconnectPolicy`] is `Detached`;
/// * the route's timeout passes ([`DeadlineExceeded`]; see
///   [`TimeoutLayer`](crate::TimeoutLayer)), and its [`deadline`] says when that will be;
/// * the server's drain budget is spent and shutdown moves to cancelling ([`Shutdown`]).
///
/// ```
/// use axum::{Router, routing::get};
/// use gracefully_axum::{HttpCancelled, RequestToken};
///
/// async fn report(RequestToken(token): RequestToken) -> Result<String, HttpCancelled> {
///     let mut rows = Vec::new();
///     for i in 0..100 {
///         token.check()?; // stop between rows once the client is gone
///         rows.push(i.to_string());
///     }
///     Ok(rows.join(","))
/// }
///
/// let app: Router = Router::new().route("/report", get(report));
/// ```
///
/// Outside [`HttpServer`](crate::HttpServer) (in a unit test calling the router directly)
/// the extractor yields [`CancellationToken::never()`].
///
/// Middleware can read the same token with [`request_token`].
///
/// *Anchors:* ASP.NET Core's `HttpContext.RequestAborted` (which only reports disconnects);
/// Go's `r.Context()`.
///
/// [`Disconnected`]: gracefully::ReasonKind::Disconnected
/// [`DeadlineExceeded`]: gracefully::ReasonKind::DeadlineExceeded
/// [`Shutdown`]: gracefully::ReasonKind::Shutdown
/// [`deadline`]: CancellationToken::deadline
#[derive(Debug, Clone)]
pub struct RequestToken(pub CancellationToken);

impl std::ops::Deref for RequestToken {
    type Target = CancellationToken;
    fn deref(&self) -> &CancellationToken {
        &self.0
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestToken {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(RequestToken(token_of(&parts.extensions)))
    }
}

fn token_of(extensions: &http::Extensions) -> CancellationToken {
    extensions
        .get::<RequestContext>()
        .map(RequestContext::token)
        .unwrap_or_default()
}

/// The request's token, for tower middleware that sees the `Request` (see
/// [`RequestToken`]). [`CancellationToken::never()`] if the request did not come through
/// [`HttpServer`](crate::HttpServer).
pub fn request_token<B>(request: &http::Request<B>) -> CancellationToken {
    token_of(request.extensions())
}
