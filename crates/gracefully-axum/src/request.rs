//! Per-request cancellation: the token, how handlers reach it, and what a departed client
//! does to it.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;
use std::time::Instant;

use axum::extract::FromRequestParts;
use gracefully::{CancellationSource, CancellationToken};
use http::request::Parts;

use crate::policy::DisconnectPolicy;
use crate::state::ServerState;

/// The server's per-request state. Layers change it (policy, deadline); extractors read it;
/// the server reads it when the client leaves. Code names a value of it `ctx` throughout
/// (`cx` is always a task's `Context`).
///
/// Reached through a scoped thread-local that is set only while the server polls the
/// request's future (the handler, its extractors, and every layer's `call` run then), rather
/// than through the request's extensions: inserting one more extension forced axum's map
/// into a rehash on every request, and the context would have needed an `Arc`. The context
/// lives in the pinned request future (HTTP/1) or behind an `Arc` the polling task holds
/// (HTTP/2).
pub(crate) struct RequestContext {
    /// The request's cancellation, made on first need ([`RequestContext::source`]): when the
    /// handler asks for the token, or first returns `Pending`. A request answered within its
    /// first poll never needs one, and then costs no tree node and no timer.
    source: OnceLock<CancellationSource>,
    /// A timeout set before `source` existed: its length, when it was set, and where the
    /// layer that set it was made. Applied (minus the time since) when `source` is made.
    pending_timeout: Mutex<Option<PendingTimeout>>,
    policy: AtomicU8,
    /// Set when an HTTP/2 handler is aborted because its stream was reset on a `Drop` route
    /// (counted as dropped on disconnect, not as lost).
    dropped_on_disconnect: AtomicBool,
    /// Set when the token fired while the handler waited for the request's body
    /// (`request_body::GuardedBody`): the answer is then the cancellation's.
    body_cut: AtomicBool,
    /// The server, for long-lived responses that must end at drain.
    pub(crate) server: Arc<ServerState>,
    /// The HTTP/1 connection the request came on, for long-lived responses that must end
    /// when their client leaves (`Drain::sse`). `None` on HTTP/2, where a departed client
    /// resets the stream and hyper drops the response with it.
    pub(crate) http1_conn: Option<Arc<crate::conn_state::ConnState>>,
}

#[derive(Clone, Copy)]
struct PendingTimeout {
    timeout: Duration,
    set_at: Instant,
}

impl RequestContext {
    pub(crate) fn new(
        policy: DisconnectPolicy,
        server: Arc<ServerState>,
        http1_conn: Option<Arc<crate::conn_state::ConnState>>,
    ) -> Self {
        RequestContext {
            source: OnceLock::new(),
            pending_timeout: Mutex::new(None),
            policy: AtomicU8::new(policy.to_u8()),
            dropped_on_disconnect: AtomicBool::new(false),
            body_cut: AtomicBool::new(false),
            server,
            http1_conn,
        }
    }

    /// The request's source, made now if needed: a child of the hard stop (born cancelled
    /// if shutdown already reached its cancel phase), with any timeout set so far.
    pub(crate) fn source(&self) -> &CancellationSource {
        self.source.get_or_init(|| {
            let source = self.server.hard_stop.child();
            let pending = self
                .pending_timeout
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(p) = pending {
                source.cancel_after(p.timeout.saturating_sub(p.set_at.elapsed()));
            }
            source
        })
    }

    /// The source, if it was made.
    pub(crate) fn source_if_made(&self) -> Option<&CancellationSource> {
        self.source.get()
    }

    pub(crate) fn policy(&self) -> DisconnectPolicy {
        DisconnectPolicy::from_u8(self.policy.load(Ordering::Relaxed))
    }

    pub(crate) fn set_policy(&self, policy: DisconnectPolicy) {
        self.policy.store(policy.to_u8(), Ordering::Relaxed);
    }

    pub(crate) fn mark_dropped_on_disconnect(&self) {
        self.dropped_on_disconnect.store(true, Ordering::Release);
    }

    pub(crate) fn mark_body_cut(&self) {
        self.body_cut.store(true, Ordering::Release);
    }

    /// Whether the token cut the request's body short (see `request_body`).
    pub(crate) fn body_cut(&self) -> bool {
        self.body_cut.load(Ordering::Acquire)
    }

    pub(crate) fn dropped_on_disconnect(&self) -> bool {
        self.dropped_on_disconnect.load(Ordering::Acquire)
    }

    pub(crate) fn token(&self) -> CancellationToken {
        self.source().token()
    }

    /// Sets (or moves earlier) the request's deadline.
    pub(crate) fn cancel_after(&self, timeout: Duration) {
        if let Some(source) = self.source.get() {
            source.cancel_after(timeout);
            return;
        }
        let now = Instant::now();
        let mut pending = self
            .pending_timeout
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Deadlines only move earlier.
        // A timeout too large for the clock (`Duration::MAX`) is no deadline at all, as in
        // the core; it must never panic a request.
        let at = |set_at: Instant, timeout: Duration| set_at.checked_add(timeout);
        let earlier = pending.is_none_or(|p| match (at(now, timeout), at(p.set_at, p.timeout)) {
            (Some(new), Some(old)) => new < old,
            (Some(_), None) => true,
            (None, _) => false,
        });
        if earlier {
            *pending = Some(PendingTimeout {
                timeout,
                set_at: now,
            });
        }
        drop(pending);
        // Made meanwhile on another thread (an HTTP/2 stream reset): apply it directly.
        if let Some(source) = self.source.get() {
            source.cancel_after(timeout);
        }
    }
}

// scoped-tls rather than a hand-written `thread_local!` pointer, knowingly: it reaches its
// thread-local through a function pointer (not inlined), twice in `with_current`
// (`is_set`, then `with`). Measured with `benches/http_instructions.sh` (a timeout layer
// and a policy layer, so two `with_current` a request), a hand-written pointer would save
// some 60-75 of ~12,900 instructions a request, but dereferencing it takes `unsafe`
// outside `socket`, the crate's one module allowed it (see `lib.rs`); not worth 0.6 %.
scoped_tls::scoped_thread_local! {
    /// The request whose future this thread is polling, if any. (A request future polled
    /// from within another's poll sees its own; the outer one is restored after.)
    static CURRENT: RequestContext
}

/// Polls with `ctx` as the current request: what `with_current` finds meanwhile.
pub(crate) fn in_request<R>(ctx: &RequestContext, poll: impl FnOnce() -> R) -> R {
    CURRENT.set(ctx, poll)
}

/// Calls `f` with the current request, if the server is polling one on this thread.
pub(crate) fn with_current<R>(f: impl FnOnce(&RequestContext) -> R) -> Option<R> {
    CURRENT.is_set().then(|| CURRENT.with(f))
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
/// the extractor yields [`CancellationToken::never()`]. So does it in code that a layer
/// moved to another task before the handler runs (`tower::buffer`'s worker); a handler's
/// own task always sees the request's token.
///
/// Middleware can read the same token with [`request_token`] (or, with
/// [`HttpServer::token_in_extensions`](crate::HttpServer::token_in_extensions) on, from the
/// request's extensions as a `RequestToken`).
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
        // In the extensions only with `HttpServer::token_in_extensions` (then also right
        // on a task other than the server's).
        Ok(match parts.extensions.get::<RequestToken>() {
            Some(token) => token.clone(),
            None => RequestToken(current_token()),
        })
    }
}

fn current_token() -> CancellationToken {
    with_current(RequestContext::token).unwrap_or_default()
}

/// The token of the request this task is serving, if the server is polling one on this
/// thread now: in a handler, its extractors and the layers' `call` and `poll` — and in
/// whatever they await, so an outbound call made from a handler finds the handler's token
/// (`gracefully-tonic`'s client layer propagates it this way). `None` elsewhere (another
/// task, a thread of its own, outside [`HttpServer`](crate::HttpServer)).
///
/// ```
/// // Outside a request: nothing to find.
/// assert!(gracefully_axum::current_request_token().is_none());
/// ```
///
/// *Anchors:* ASP.NET Core's `IHttpContextAccessor.HttpContext?.RequestAborted`, which
/// grpc-dotnet's `EnableCallContextPropagation` reads the same way; Go has no ambient
/// request and passes `ctx` by hand.
pub fn current_request_token() -> Option<CancellationToken> {
    with_current(RequestContext::token)
}

/// The token of the request being served, for tower middleware (see [`RequestToken`]).
///
/// The server makes the request's context available while it polls the request's future,
/// which is when layers' `call` and `poll` run. With
/// [`HttpServer::token_in_extensions`](crate::HttpServer::token_in_extensions) on, the token
/// also travels in `request`'s extensions, and is found there first: that works on any
/// task. Otherwise this returns [`CancellationToken::never()`] outside
/// [`HttpServer`](crate::HttpServer), and in a layer that hands the request to another task
/// to call the inner service (such as `tower::buffer`).
pub fn request_token<B>(request: &http::Request<B>) -> CancellationToken {
    match request.extensions().get::<RequestToken>() {
        Some(RequestToken(token)) => token.clone(),
        None => current_token(),
    }
}
