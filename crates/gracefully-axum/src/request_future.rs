//! [`InRequest`]: a handler's future as the server polls it — with its request context
//! current, panics caught, the socket watched (HTTP/1), and its end accounted for — and
//! [`NoAnswer`], for the requests that must get none.

use std::borrow::Borrow;
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::response::Response;
use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use gracefully::operation::{Operation, OperationOutcome};
use gracefully::{Reason, ReasonKind};

use crate::accounting::{PanicMarker, RequestAccount, panic_response};
use crate::conn_state::ConnState;
use crate::policy::DisconnectPolicy;
use crate::request::{RequestContext, in_request};
use crate::response::{CLIENT_CLOSED_REQUEST, CancelledMarker};
use crate::socket::Peek;

/// How long to wait before looking at a socket again when unread bytes (a request body the
/// handler has not read yet, or a pipelined request) hide whether the client is still there.
const RECHECK_BEHIND_DATA: Duration = Duration::from_millis(25);

/// Why hyper gets no response for a request: it then sends nothing for it (HTTP/1: closes
/// the connection; HTTP/2: resets the stream with the reason found in the error's chain).
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// The client left (HTTP/1: it closed or half-closed its side; HTTP/2: it reset the
    /// stream). 499 is a status for logs: it is never put on the wire.
    ClientGone(h2::Error),
    /// An HTTP/2 stream refused past the handler bound (`REFUSED_STREAM`).
    Refused(h2::Error),
}

impl NoAnswer {
    pub(crate) fn client_gone() -> Self {
        NoAnswer::ClientGone(h2::Error::from(h2::Reason::CANCEL))
    }

    pub(crate) fn refused() -> Self {
        NoAnswer::Refused(h2::Error::from(h2::Reason::REFUSED_STREAM))
    }
}

impl std::fmt::Display for NoAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoAnswer::ClientGone(_) => f.write_str("the client left; no answer is sent"),
            NoAnswer::Refused(_) => f.write_str(
                "stream refused: the connection already runs as many handlers as its stream limit",
            ),
        }
    }
}

impl std::error::Error for NoAnswer {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            NoAnswer::ClientGone(reason) | NoAnswer::Refused(reason) => Some(reason),
        }
    }
}

/// A response or, where none must be sent, why.
pub(crate) type Answer = Result<Response, NoAnswer>;

/// A 499 is for logs: a response carrying it becomes no answer at all.
#[inline]
pub(crate) fn onto_the_wire(answer: &mut Answer) {
    if let Ok(response) = answer
        && response.status().as_u16() == CLIENT_CLOSED_REQUEST
    {
        *answer = Err(NoAnswer::client_gone());
    }
}

pin_project_lite::pin_project! {
    /// A handler's future, polled with its request context current (see
    /// `request::in_request`), a panic answered 500, and its end accounted for.
    ///
    /// `C` holds the context (in place: for HTTP/1 this future is pinned inside hyper's
    /// request future, so no allocation per request; for HTTP/2 it is boxed, to be able to
    /// move to a task of its own if its stream is reset first).
    ///
    /// Over HTTP/1 the socket is watched once the handler waits: a departed client fires
    /// the token (`Cooperative`) or ends the request with no answer (`Drop`). Over HTTP/2
    /// the stream reset is hyper's to see (`dispatch::StreamHandler`).
    pub(crate) struct InRequest<F, C: Borrow<RequestContext>> {
        #[pin]
        future: CatchUnwind<AssertUnwindSafe<F>>,
        end: RequestEnd<C>,
        watch: Watch,
        http1: bool,
    }
}

/// The request's context and account; if dropped before the answer, the request is counted
/// as lost (or as dropped on disconnect, for an HTTP/2 stream reset on a `Drop` route).
struct RequestEnd<C: Borrow<RequestContext>> {
    ctx: C,
    account: Option<RequestAccount>,
    /// The request's operation (inert unless recorded); ended with the answer, or here on
    /// drop.
    op: Operation,
}

impl<C: Borrow<RequestContext>> Drop for RequestEnd<C> {
    fn drop(&mut self) {
        // Dropped before its answer: the connection broke, the server was aborted, or (HTTP/2)
        // the `Drop` policy aborted the handler's task when its stream was reset.
        if let Some(account) = self.account.take() {
            let ctx = self.ctx.borrow();
            if ctx.dropped_on_disconnect() {
                account.dropped(ctx);
                std::mem::take(&mut self.op).cancelled(Reason::disconnected());
            } else {
                account.lost(ctx);
            }
        }
        // Otherwise the operation, if still unended, ends `Abandoned` as it drops.
    }
}

enum Watch {
    /// The handler has not returned `Pending` yet.
    NotYet,
    /// Looking at the socket.
    Watching(Pin<Box<dyn Future<Output = Peek> + Send>>),
    /// Bytes were waiting; look again after a pause.
    Paused(Pin<Box<tokio::time::Sleep>>),
    /// Not watching (client gone and handled, a `Detached` route, HTTP/2, or no way to
    /// watch).
    Off,
}

impl<F, C> InRequest<F, C>
where
    F: Future,
    C: Borrow<RequestContext>,
{
    pub(crate) fn new(
        future: F,
        ctx: C,
        account: RequestAccount,
        op: Operation,
        http1: bool,
    ) -> Self {
        InRequest {
            future: AssertUnwindSafe(future).catch_unwind(),
            end: RequestEnd {
                ctx,
                account: Some(account),
                op,
            },
            watch: Watch::NotYet,
            http1,
        }
    }
}

impl<F, C: Borrow<RequestContext>> InRequest<F, C> {
    /// The request's context.
    pub(crate) fn context(&self) -> &RequestContext {
        self.end.ctx.borrow()
    }
}

impl<F, C> Future for InRequest<F, C>
where
    F: Future<Output = Result<Response, Infallible>>,
    C: Borrow<RequestContext>,
{
    type Output = Answer;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Answer> {
        let mut this = self.project();
        loop {
            let ctx = this.end.ctx.borrow();
            let future = this.future.as_mut();
            if let Poll::Ready(outcome) = in_request(ctx, || future.poll(cx)) {
                // The answer is made once and marked in place: the account reads it and
                // (HTTP/1, draining) adds to it; a 499 becomes no answer (see
                // `onto_the_wire`). Each move of a `Response` is a copy of 128 bytes.
                let mut answer: Answer = match outcome {
                    Ok(Ok(response)) => Ok(response),
                    Ok(Err(never)) => match never {},
                    Err(panic) => Ok(panic_response(panic)),
                };
                if ctx.body_cut() {
                    answer = answer.map(|response| answer_for_cut_body(response, ctx));
                }
                if let Ok(response) = &mut answer
                    && let Some(account) = this.end.account.take()
                {
                    if this.end.op.is_recording() {
                        let outcome = request_outcome(response, ctx, account.has_client_left());
                        std::mem::take(&mut this.end.op).end(outcome);
                    }
                    account.finish(response, ctx, *this.http1);
                }
                onto_the_wire(&mut answer);
                return Poll::Ready(answer);
            }
            match this.watch {
                Watch::Off => return Poll::Pending,
                Watch::NotYet => {
                    // The handler waits: from now on it can be cancelled (the hard stop,
                    // its timeout, a departed client), so it needs its token.
                    let source = ctx.source();
                    if this.end.op.is_recording() {
                        this.end.op.set_deadline(source.as_token().deadline());
                    }
                    *this.watch = match &this.end.account {
                        Some(account)
                            if *this.http1 && ctx.policy() != DisconnectPolicy::Detached =>
                        {
                            watching(&account.conn)
                        }
                        _ => Watch::Off,
                    };
                }
                Watch::Paused(sleep) => match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        *this.watch = match &this.end.account {
                            Some(account) => watching(&account.conn),
                            None => Watch::Off,
                        };
                    }
                    Poll::Pending => return Poll::Pending,
                },
                Watch::Watching(watch) => match watch.as_mut().poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Peek::Data) => {
                        *this.watch =
                            Watch::Paused(Box::pin(tokio::time::sleep(RECHECK_BEHIND_DATA)));
                    }
                    Poll::Ready(Peek::Gone) => {
                        *this.watch = Watch::Off;
                        match ctx.policy() {
                            DisconnectPolicy::Cooperative => {
                                if let Some(account) = &this.end.account {
                                    account.client_left();
                                }
                                ctx.source().cancel_with(Reason::disconnected());
                                // Loop: the handler may finish at once now.
                            }
                            DisconnectPolicy::Drop => {
                                if let Some(account) = this.end.account.take() {
                                    account.dropped(ctx);
                                }
                                std::mem::take(&mut this.end.op).cancelled(Reason::disconnected());
                                // No answer (hyper closes the connection, and drops us and
                                // the handler with us).
                                return Poll::Ready(Err(NoAnswer::client_gone()));
                            }
                            DisconnectPolicy::Detached => {}
                        }
                    }
                },
            }
        }
    }
}

fn watching(conn: &Arc<ConnState>) -> Watch {
    match conn.monitor.watch() {
        Some(watch) => Watch::Watching(Box::pin(watch)),
        None => Watch::Off,
    }
}

/// The answer to a request whose body the token cut short (`request_body`): the
/// cancellation's (504, 503 with `Connection: close`, or none for a client that left) in
/// place of the error the extractor made of the failed read. A success stands.
#[cold]
fn answer_for_cut_body(response: Response, ctx: &RequestContext) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    match ctx.source_if_made().and_then(|s| s.as_token().reason()) {
        Some(reason) => crate::response::cancelled_response(&gracefully::Cancelled::new(reason)),
        None => response,
    }
}

/// How a request that was answered ended, as its operation records it: cancelled with its
/// token's reason if the client left or the handler answered a cancellation; failed for a
/// panic or another 5xx (but a 503 with `Retry-After`, or a readiness probe's, is a refusal
/// on purpose); completed otherwise.
#[cold]
fn request_outcome(
    response: &Response,
    ctx: &RequestContext,
    client_left: bool,
) -> OperationOutcome {
    let reason = ctx.source_if_made().and_then(|s| s.as_token().reason());
    if response.extensions().get::<PanicMarker>().is_some() {
        return OperationOutcome::Failed("the handler panicked (500)".into());
    }
    let disconnected = reason
        .as_ref()
        .is_some_and(|r| r.kind() == ReasonKind::Disconnected);
    if client_left || disconnected {
        return OperationOutcome::Cancelled(reason.unwrap_or_else(Reason::disconnected));
    }
    if let Some(CancelledMarker(kind)) = response.extensions().get::<CancelledMarker>() {
        return OperationOutcome::Cancelled(reason.unwrap_or_else(|| Reason::new(*kind)));
    }
    // Not failures: a readiness probe's 503 while the server drains, and a 503 that says
    // when to come back (`Retry-After`: load shed on purpose, as the demo refuses reports
    // past its limit) — logging each at ERROR would flood the log in exactly the moments
    // the server sheds load.
    let refused_on_purpose = response.status() == http::StatusCode::SERVICE_UNAVAILABLE
        && response.headers().contains_key(http::header::RETRY_AFTER);
    if response.status().is_server_error()
        && !refused_on_purpose
        && response
            .extensions()
            .get::<crate::health::NotReadyMarker>()
            .is_none()
    {
        return OperationOutcome::Failed(format!("answered {}", response.status()).into());
    }
    OperationOutcome::Completed
}
