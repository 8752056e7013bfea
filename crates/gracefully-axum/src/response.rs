//! What a cancelled handler answers.

use std::fmt;

use axum::response::{IntoResponse, Response};
use gracefully::{Cancelled, ReasonKind};
use http::{HeaderValue, StatusCode, header};

/// The status logged for a request whose client left before the answer (nginx's
/// convention; never sent, since nobody is there to read it).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A handler's "I stopped because I was cancelled", as a response. Convert any
/// [`Cancelled`] with `?` (`From<Cancelled>`), or build one from it.
///
/// | reason kind | answer |
/// |---|---|
/// | [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) | `504 Gateway Timeout` |
/// | [`Shutdown`](ReasonKind::Shutdown) | `503 Service Unavailable`, `Retry-After: 1`, `Connection: close` |
/// | [`Disconnected`](ReasonKind::Disconnected) | logged as `499`; nobody receives it |
/// | other (`Requested`, `Failed`, …) | `503 Service Unavailable` |
///
/// Cancellation is not a server error: the server logs these at `info`/`debug`, never as
/// errors, and never answers 500 for them.
///
/// ```
/// use gracefully::{CancellationSource, Reason};
/// use gracefully_axum::HttpCancelled;
/// use axum::response::IntoResponse;
///
/// let source = CancellationSource::new();
/// source.cancel_with(Reason::shutdown());
/// let err: HttpCancelled = source.token().check().unwrap_err().into();
/// let response = err.into_response();
/// assert_eq!(response.status(), 503);
/// assert_eq!(response.headers()["connection"], "close");
/// ```
///
/// *Anchors:* ASP.NET Core maps `OperationCanceledException` from `RequestAborted` to 499
/// in logs and from request timeouts to 504; Go's `http.TimeoutHandler` answers 503.
#[derive(Clone, PartialEq)]
pub struct HttpCancelled(pub Cancelled);

impl HttpCancelled {
    /// The status this cancellation maps to (499 for a departed client).
    pub fn status(&self) -> StatusCode {
        status_for(self.0.kind())
    }
}

pub(crate) fn status_for(kind: ReasonKind) -> StatusCode {
    match kind {
        ReasonKind::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        ReasonKind::Disconnected => {
            StatusCode::from_u16(CLIENT_CLOSED_REQUEST).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<Cancelled> for HttpCancelled {
    fn from(cancelled: Cancelled) -> Self {
        HttpCancelled(cancelled)
    }
}

impl fmt::Debug for HttpCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("HttpCancelled").field(&self.0).finish()
    }
}

impl fmt::Display for HttpCancelled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for HttpCancelled {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl IntoResponse for HttpCancelled {
    fn into_response(self) -> Response {
        cancelled_response(&self.0)
    }
}

/// The response for a cancellation (see [`HttpCancelled`]), for handlers with their own
/// error types.
pub fn cancelled_response(cancelled: &Cancelled) -> Response {
    let kind = cancelled.kind();
    let status = status_for(kind);
    let mut response = (status, status.canonical_reason().unwrap_or("cancelled")).into_response();
    if kind == ReasonKind::Shutdown {
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    // Lets the server's accounting tell cancellations from ordinary 503s/504s.
    response.extensions_mut().insert(CancelledMarker(kind));
    response
}

/// Marks `response` as the answer to a cancellation, so that the server counts and logs it
/// as one ("timed out (504)", "cancelled by shutdown (503)", …) instead of as completed.
///
/// [`cancelled_response`] and [`HttpCancelled`] mark their responses already; this is for
/// answers of another shape — a gRPC status in an HTTP 200 (`gracefully-tonic` marks those),
/// or a handler's own error page.
///
/// ```
/// use axum::response::IntoResponse;
/// use gracefully::{Cancelled, Reason};
///
/// let mut response = (http::StatusCode::OK, "grpc-status: 4").into_response();
/// gracefully_axum::mark_cancelled(&mut response, &Cancelled::new(Reason::deadline_exceeded()));
/// ```
pub fn mark_cancelled(response: &mut Response, cancelled: &Cancelled) {
    response
        .extensions_mut()
        .insert(CancelledMarker(cancelled.kind()));
}

/// Marks a response made from a cancellation (read by the server's accounting and logs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CancelledMarker(pub(crate) ReasonKind);
