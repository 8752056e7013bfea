//! [`Call`]: the request as it travels through the behaviours, with its token.
//!
//! # The token can narrow, never detach
//!
//! The token rides inside the `Call`, so no behaviour has to thread it: the handler gets
//! whatever token the `Call` holds when it reaches the end of the stack. The field is
//! private, a `Call` can only be made by the mediator (from the caller's request and
//! token), and every method that changes the token replaces it with a *child* of the token
//! it holds (`narrow*`). So the token a handler sees is always the caller's token or a
//! descendant of it: a caller's cancellation (its client left, the host is shutting down)
//! always reaches the handler, whatever the behaviours did. The one way around it would be
//! to swap in a whole other `Call` (one the behaviour kept from an earlier `send`), which is
//! not something code does by accident.
//!
//! MediatR (since 12.5) lets a behaviour pass any token to `next(token)`, and its own
//! timeout example passes a fresh `CancellationTokenSource`'s token — which drops the
//! caller's cancellation on the floor. Here that cannot be written.

use std::fmt;
use std::time::Duration;

use gracefully::{CancellationSource, CancellationToken};

use crate::request::Request;

/// A request on its way to its handler, with the token of this call: the `Request` type
/// of the tower [`Service`](tower::Service)s that make up a mediator's pipeline.
///
/// A behaviour (a tower [`Layer`](tower::Layer)) receives a `Call`, may read or narrow its
/// token, and hands it to the inner service; the handler at the end receives the request
/// and the token. A behaviour never threads the token by hand.
///
/// ```
/// use std::task::{Context, Poll};
/// use std::time::Duration;
/// use gracefully_mediator::{Call, Error, Request};
/// use tower::Service;
///
/// /// A behaviour that gives every request at most 5 s (what `TimeoutLayer` does).
/// #[derive(Clone)]
/// struct FiveSeconds<S>(S);
///
/// impl<S, R> Service<Call<R>> for FiveSeconds<S>
/// where
///     S: Service<Call<R>, Response = R::Response, Error = Error>,
///     R: Request,
/// {
///     type Response = R::Response;
///     type Error = Error;
///     type Future = S::Future;
///
///     fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
///         self.0.poll_ready(cx)
///     }
///
///     fn call(&mut self, mut call: Call<R>) -> S::Future {
///         call.narrow_with_timeout(Duration::from_secs(5)); // a child of the caller's token
///         self.0.call(call)
///     }
/// }
/// ```
///
/// There is no way to build a `Call` or to set its token outside this crate:
///
/// ```compile_fail
/// # use gracefully::CancellationToken;
/// # use gracefully_mediator::{Call, Request};
/// fn detach<R: Request>(call: Call<R>) -> Call<R> {
///     Call { request: call.into_request(), token: CancellationToken::never() } // private fields
/// }
/// ```
///
/// ```compile_fail
/// # use gracefully::CancellationToken;
/// # use gracefully_mediator::{Call, Request};
/// fn detach<R: Request>(call: &mut Call<R>) {
///     call.set_token(CancellationToken::never()); // no such method
/// }
/// ```
///
/// *Anchors:* what MediatR passes to `IPipelineBehavior.Handle(request, next,
/// cancellationToken)` as two arguments, as one value; `next(token)` (MediatR 12.5) is
/// [`narrow`](Self::narrow) here. Like an `http::Request` travelling through tower-http
/// layers, with the token in place of extensions.
pub struct Call<R> {
    request: R,
    /// The caller's token or a descendant of it (module docs): only `narrow*` replace it.
    token: CancellationToken,
}

impl<R: Request> Call<R> {
    /// A call of `request` with the caller's `token`. Crate-private: see the module docs.
    pub(crate) fn new(request: R, token: CancellationToken) -> Self {
        Call { request, token }
    }

    /// The request.
    pub fn request(&self) -> &R {
        &self.request
    }

    /// The request, to change it on its way (normalise a field, fill in a default).
    pub fn request_mut(&mut self) -> &mut R {
        &mut self.request
    }

    /// The request, by value (the handler's end of the pipeline uses it; so may a
    /// behaviour that answers without calling the inner service).
    pub fn into_request(self) -> R {
        self.request
    }

    /// The token of this call: the caller's, or a child of it if a behaviour narrowed it.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The request's type name (`std::any::type_name`), for logs and errors.
    pub fn request_type(&self) -> &'static str {
        std::any::type_name::<R>()
    }

    /// Narrows the token to a new child of it, and returns the child's source so the
    /// behaviour can cancel the rest of the pipeline on its own (with a reason of its
    /// choosing) — never the caller's work around it.
    ///
    /// Dropping the returned source does not cancel anything: the call keeps the child
    /// token, which still fires with the caller's.
    pub fn narrow(&mut self) -> CancellationSource {
        let child = self.token.child();
        self.token = child.token();
        child
    }

    /// Narrows the token to a child that is also cancelled with
    /// [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) once `timeout`
    /// passes (on the token's clock). Deadlines only move earlier: if the caller's token
    /// has less time left, that earlier deadline still applies. A zero timeout cancels the
    /// child at once.
    ///
    /// The returned source can be dropped: the deadline fires anyway while the call's
    /// token is alive.
    #[track_caller]
    pub fn narrow_with_timeout(&mut self, timeout: Duration) -> CancellationSource {
        let child = self.token.child_with_timeout(timeout);
        self.token = child.token();
        child
    }

    /// Narrows the token to one cancelled when the current token *or* `also` is: for a
    /// behaviour that has a cancellation signal of its own (a circuit breaker that opened,
    /// a tenant's quota that ran out). The caller's token stays a parent, so this too
    /// narrows and never detaches.
    pub fn narrow_linked(&mut self, also: &CancellationToken) -> CancellationSource {
        let linked = CancellationSource::linked([&self.token, also]);
        self.token = linked.token();
        linked
    }

    /// A copy of this call for another attempt — the request from
    /// [`Request::clone_for_retry`] and the *same* token — or `None` if the request is not
    /// safe to run twice. For behaviours that retry or hedge.
    pub fn clone_for_retry(&self) -> Option<Call<R>> {
        Some(Call {
            request: self.request.clone_for_retry()?,
            token: self.token.clone(),
        })
    }

    /// The request and the token, for the handler at the end of the pipeline.
    pub(crate) fn into_parts(self) -> (R, CancellationToken) {
        (self.request, self.token)
    }
}

impl<R> fmt::Debug for Call<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Call")
            .field("request", &std::any::type_name::<R>())
            .field("token", &self.token)
            .finish()
    }
}
