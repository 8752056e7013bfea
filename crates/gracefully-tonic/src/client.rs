//! The client side: [`GracefulLayer`] around a tonic `Channel` sends each call's remaining
//! budget as `grpc-timeout` and stops the call when its token fires ([`GracefulChannel`],
//! [`ResponseFuture`]); the response body ([`TokenBody`]) stops with it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use gracefully::operation::{Operation, OperationKind};
use gracefully::{
    CancelOn, CancellationToken, Cancelled, Reason, WaitForCancellationOwned, find_cancelled,
};
use gracefully_axum::{BudgetFormat, GRPC_TIMEOUT, RequestToken};
use http::HeaderName;
use http::header::Entry;
use http_body::{Body, Frame, SizeHint};
use tower::{Layer, Service};

use crate::request_ext::CallToken;
use crate::status::status_for;

/// The error type of a [`GracefulChannel`]: tonic's own (`Box<dyn Error + Send + Sync>`).
/// A call stopped by its token fails with a boxed `tonic::Status` (see [`GracefulLayer`]).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The default [transit allowance](GracefulLayer::transit_allowance): 5 ms, as
/// `gracefully-reqwest`'s for HTTP calls.
pub const DEFAULT_TRANSIT_ALLOWANCE: Duration = Duration::from_millis(5);

/// The least budget worth sending: a call with less left fails at once instead.
const MIN_BUDGET: Duration = Duration::from_millis(1);

// Made at compile time: `from_static` at each call validates the name again, and a `&str`
// key is parsed again by every look-up.
const GRPC_TIMEOUT_NAME: HeaderName = HeaderName::from_static(GRPC_TIMEOUT);

/// A tower layer for tonic clients (put it around a `Channel`): each call is bound to a
/// token, which ends it and travels to the server as its deadline.
///
/// For each call:
///
/// 1. **The token.** The one given with [`RequestExt::with_token`](crate::RequestExt::with_token);
///    else, when the call is made from inside a request served by `gracefully-axum` or
///    `gracefully-tonic` (its handler, on its own task), that request's token — the
///    call-context propagation of grpc-dotnet's `EnableCallContextPropagation`, on by
///    default here ([`propagate_request_token`](Self::propagate_request_token)); else none,
///    and the call passes through untouched.
/// 2. **Before sending.** A token already cancelled, or with less than the transit allowance
///    plus 1 ms left, fails the call at once; nothing is sent.
/// 3. **The deadline.** `grpc-timeout` = the time left (unless the request already carries
///    a smaller one: tonic's `Request::set_timeout`), as grpc-go sends it. A gracefully
///    server keeps its [transit allowance](gracefully_axum::IncomingDeadlines::transit_allowance)
///    back from it (5 ms by default), so it gives up (and answers `DEADLINE_EXCEEDED`)
///    while this client still listens. Why the client does not shorten the header itself:
///    tonic's `Channel` ends a call at its `grpc-timeout` on the client too, counting from
///    before the request left; a shortened `grpc-timeout` would make the client give up —
///    and reset the stream — just before the server's own deadline, and the server would
///    see a departed client instead of its deadline. (Nor does it send the shortened
///    budget in a second header: a never-indexed HPACK literal with its name costs a
///    loopback call about 3 % — `benches/grpc_instructions.sh`.)
/// 4. **While waiting.** When the token fires (at its deadline too) the response future is
///    dropped, which resets the HTTP/2 stream (`RST_STREAM`): the server's RPC token fires
///    with `Disconnected`.
/// 5. **Streaming responses.** The response body watches the token: when it fires, the next
///    message (or the one awaited) is an error, and the stream is reset at once.
///
/// A call stopped by its token fails with [`status_for`]'s `Status` — `CANCELLED`,
/// `DEADLINE_EXCEEDED` or `UNAVAILABLE` (shutdown), its message the reason — whose
/// `source` is the [`Cancelled`]: [`gracefully::is_cancellation`] recognises it, and
/// [`cancellation_of`](crate::cancellation_of) gives the reason back.
///
/// ```no_run
/// use std::time::Duration;
/// use gracefully::CancellationSource;
/// use gracefully_tonic::{GracefulLayer, RequestExt};
/// use tonic::transport::Channel;
///
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// let channel = Channel::from_static("http://inventory.internal:50051").connect().await?;
/// let channel = tower::ServiceBuilder::new().layer(GracefulLayer::new()).service(channel);
/// // let mut client = InventoryClient::new(channel);   // the generated client, unchanged
///
/// let call = CancellationSource::with_timeout(Duration::from_millis(300));
/// let request = tonic::Request::new(()).with_token(&call.token()); // grpc-timeout ≈ 300 ms
/// // client.stock(request).await?;   // Err(Status::deadline_exceeded(…)) once 300 ms pass
/// # let _ = (channel, request); Ok(()) }
/// ```
///
/// **Operations.** Inside a recorded operation (a request's handler, a message's, a
/// tracked task, with an operations registry installed), each call is an `Outbound`
/// operation under it, named by its method path, with the token's deadline, from the call
/// until its response's head arrives: completed, failed (an error status or transport
/// error), or cancelled with the token's reason. Outside any, nothing is recorded.
///
/// *Anchors:* grpc-go sends `ctx`'s deadline as `grpc-timeout` and cancels the stream when
/// `ctx` is done; grpc-dotnet does both with `CallOptions` (and, with
/// `EnableCallContextPropagation`, takes them from the server call it runs in). tonic's own
/// `Endpoint::timeout` ends the call but sends no `grpc-timeout`, and tonic knows no token.
#[derive(Clone, Debug)]
pub struct GracefulLayer {
    allowance: Duration,
    propagate: bool,
}

impl Default for GracefulLayer {
    fn default() -> Self {
        GracefulLayer::new()
    }
}

impl GracefulLayer {
    /// The layer with a 5 ms transit allowance, the current request's token propagated.
    pub fn new() -> Self {
        GracefulLayer {
            allowance: DEFAULT_TRANSIT_ALLOWANCE,
            propagate: true,
        }
    }

    /// The least time left worth sending a call with: one with less than the allowance
    /// plus 1 ms left fails at once with `DEADLINE_EXCEEDED`, unsent — its answer could not
    /// come back in time. Default 5 ms, the allowance a gracefully server keeps back from
    /// the `grpc-timeout` it receives
    /// ([`IncomingDeadlines::transit_allowance`](gracefully_axum::IncomingDeadlines::transit_allowance));
    /// set them alike. `grpc-timeout` always carries the full time left.
    pub fn transit_allowance(mut self, allowance: Duration) -> Self {
        self.allowance = allowance;
        self
    }

    /// Whether a call made without [`with_token`](crate::RequestExt::with_token) from
    /// inside a request served by `gracefully-axum`/`gracefully-tonic` takes that request's
    /// token (default: yes). Turn it off for a channel whose calls must outlive the requests
    /// that make them (or bind such a call to its own token with `with_token`).
    ///
    /// *Anchors:* grpc-dotnet's `EnableCallContextPropagation()` (off by default there, and
    /// an error outside a server call unless suppressed; here it finds nothing and does
    /// nothing).
    pub fn propagate_request_token(mut self, on: bool) -> Self {
        self.propagate = on;
        self
    }

    /// The token a call is bound to (step 1 of the type's docs).
    fn token_of<B>(&self, request: &http::Request<B>) -> Option<CancellationToken> {
        let extensions = request.extensions();
        if let Some(CallToken(token)) = extensions.get::<CallToken>() {
            return Some(token.clone());
        }
        if let Some(RequestToken(token)) = extensions.get::<RequestToken>() {
            return Some(token.clone());
        }
        if self.propagate {
            return gracefully_axum::current_request_token();
        }
        None
    }

    /// Steps 2 and 3 of the type's docs: the call may go, with its deadline in
    /// `grpc-timeout`; or it must not, and why.
    fn apply<B>(
        &self,
        request: &mut http::Request<B>,
        token: &CancellationToken,
    ) -> Result<(), Cancelled> {
        token.check()?;
        let Some(left) = token.time_left() else {
            return Ok(());
        };
        if left.saturating_sub(self.allowance) < MIN_BUDGET {
            return Err(Cancelled::new(Reason::deadline_exceeded().with_message(
                format!(
                    "not sent: {left:?} left before the deadline, less than the transit \
                     allowance of {:?} plus 1 ms",
                    self.allowance
                ),
            )));
        }
        // The full time left, unless the caller set less (tonic's `Request::set_timeout`):
        // one look-up whether or not it is there.
        match request.headers_mut().entry(GRPC_TIMEOUT_NAME) {
            Entry::Vacant(slot) => {
                slot.insert(BudgetFormat::GrpcTimeout.encode(left));
            }
            Entry::Occupied(mut set) => {
                // Compared exactly (not capped at a day: a caller's `48H` is not less than
                // 30 hours left), and every value: a second, larger one must not go on.
                let values = set.iter().count();
                let smallest = set
                    .iter()
                    .map(|value| BudgetFormat::GrpcTimeout.parse_exact(value.as_bytes()))
                    .min()
                    .flatten();
                match smallest {
                    Some(smaller) if smaller <= left && values == 1 => {}
                    Some(smaller) if smaller <= left => {
                        set.insert(BudgetFormat::GrpcTimeout.encode(smaller));
                    }
                    _ => {
                        set.insert(BudgetFormat::GrpcTimeout.encode(left));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether tonic's `TimeoutExpired` is in `error`'s source chain (a `Channel` wraps it in a
/// `transport::Error`).
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(error), |e| e.source()).any(|e| e.is::<tonic::TimeoutExpired>())
}

impl<S> Layer<S> for GracefulLayer {
    type Service = GracefulChannel<S>;

    fn layer(&self, inner: S) -> GracefulChannel<S> {
        GracefulChannel {
            inner,
            layer: self.clone(),
        }
    }
}

/// A tonic transport (a `Channel`) wrapped by [`GracefulLayer`]. Use it wherever the
/// channel went: `MyClient::new(channel)`.
#[derive(Clone, Debug)]
pub struct GracefulChannel<S> {
    inner: S,
    layer: GracefulLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for GracefulChannel<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: Into<BoxError>,
    ResBody: Body,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<TokenBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let token = self.layer.token_of(&request).unwrap_or_default();
        // Inside a recorded operation (the caller's), the call is an `Outbound` operation
        // under it, named by its method path (bounded by the service definitions), until
        // the response's head arrives; inert without a registry.
        let op = Operation::begin(
            OperationKind::Outbound,
            request.uri().path(),
            token.deadline(),
        );
        if let Err(cancelled) = self.layer.apply(&mut request, &token) {
            op.cancelled(cancelled.reason().clone());
            return ResponseFuture {
                state: State::Refused {
                    cancelled: Some(cancelled),
                },
            };
        }
        let call = token.run_until_cancelled(self.inner.call(request));
        ResponseFuture {
            state: State::Calling { call, token, op },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a call through a [`GracefulChannel`].
    ///
    /// # Cancel safety
    ///
    /// Dropping it drops the inner call, which resets its HTTP/2 stream (as dropping tonic's
    /// own response future does).
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Calling { #[pin] call: CancelOn<F>, token: CancellationToken, op: Operation },
        Refused { cancelled: Option<Cancelled> },
    }
}

/// A cancellation as the channel's error: a boxed `Status` carrying it.
fn cancelled_error(cancelled: &Cancelled) -> BoxError {
    Box::new(status_for(cancelled))
}

/// The cancellation to report instead of a transport error, if the token has fired or its
/// deadline passed: then the call stopped *because of* the token.
fn cancellation(token: &CancellationToken) -> Option<Cancelled> {
    if let Some(reason) = token.reason() {
        return Some(Cancelled::new(reason));
    }
    (token.time_left() == Some(Duration::ZERO)).then(|| {
        Cancelled::new(Reason::deadline_exceeded().with_message("the call's deadline passed"))
    })
}

/// The channel's error for a call that failed with `error`: the token's cancellation if it
/// fired; `DEADLINE_EXCEEDED` if tonic's `Channel` ended the call at its `grpc-timeout`
/// (it enforces the header on the client too; its `TimeoutExpired` would otherwise become
/// `CANCELLED`); else the error as it is.
fn call_error(error: BoxError, token: &CancellationToken) -> BoxError {
    if let Some(cancelled) = cancellation(token) {
        return cancelled_error(&cancelled);
    }
    if timed_out(&*error) {
        return cancelled_error(&Cancelled::new(
            Reason::deadline_exceeded().with_message("the call's grpc-timeout passed"),
        ));
    }
    error
}

/// Ends a call's operation when its response's head arrives: failed on an error status
/// (a trailers-only answer) or a transport error, cancelled with the reason when the
/// error is a cancellation, completed otherwise.
fn end_call<B>(op: Operation, result: &Result<http::Response<B>, BoxError>) {
    if !op.is_recording() {
        return;
    }
    match result {
        Ok(response) => match response.headers().get("grpc-status") {
            Some(status) if status.as_bytes() != b"0" => op.failed(format_args!(
                "grpc-status {}",
                status.to_str().unwrap_or("?")
            )),
            _ => op.complete(),
        },
        Err(error) => match find_cancelled(&**error) {
            Some(cancelled) => op.cancelled(cancelled.reason().clone()),
            None => op.failed(error),
        },
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<ResBody>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<TokenBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Calling { call, token, op } => {
                let result = match std::task::ready!(call.poll(cx)) {
                    Ok(Ok(response)) => {
                        Ok(response.map(|body| TokenBody::new(body, token.clone())))
                    }
                    Ok(Err(error)) => Err(call_error(error.into(), token)),
                    Err(cancelled) => Err(cancelled_error(&cancelled)),
                };
                end_call(std::mem::take(op), &result);
                Poll::Ready(result)
            }
            StateProj::Refused { cancelled } => Poll::Ready(Err(cancelled_error(
                &cancelled
                    .take()
                    .expect("a ResponseFuture is not polled after it completed"),
            ))),
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends when its call's token fires: the message being awaited,
    /// or the next one, is an error (a boxed `Status` carrying the [`Cancelled`]), and the
    /// body underneath is dropped at once, which resets the HTTP/2 stream.
    pub struct TokenBody<B> {
        #[pin]
        inner: Option<B>,
        token: CancellationToken,
        // Made the first time the body waits, if the token can fire at all.
        waiter: Option<WaitForCancellationOwned>,
    }
}

impl<B> TokenBody<B> {
    fn new(inner: B, token: CancellationToken) -> Self {
        TokenBody {
            inner: Some(inner),
            token,
            waiter: None,
        }
    }
}

impl<B> Body for TokenBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, BoxError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            // Stopped by the token, and that was reported.
            return Poll::Ready(None);
        };
        if let Some(reason) = this.token.reason() {
            this.inner.set(None);
            return Poll::Ready(Some(Err(cancelled_error(&Cancelled::new(reason)))));
        }
        match inner.poll_frame(cx) {
            Poll::Ready(Some(Err(error))) => {
                Poll::Ready(Some(Err(call_error(error.into(), this.token))))
            }
            Poll::Ready(other) => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
            Poll::Pending => {
                if !this.token.can_be_cancelled() {
                    return Poll::Pending;
                }
                let token = &*this.token;
                let waiter = this
                    .waiter
                    .get_or_insert_with(|| token.clone().cancelled_owned());
                match Pin::new(waiter).poll(cx) {
                    Poll::Ready(reason) => {
                        this.inner.set(None);
                        Poll::Ready(Some(Err(cancelled_error(&Cancelled::new(reason)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body stopped by the token is not at its end until that was reported; after,
        // `inner` is gone and `poll_frame` answers `None`.
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Some(inner) => inner.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}
