//! What a cancelled RPC answers: a [`Cancelled`] as a `tonic::Status` ([`IntoStatus`],
//! [`status_for`]), and the way back ([`cancellation_of`]).

use std::sync::Arc;

use gracefully::{Cancelled, ReasonKind};
use tonic::{Code, Status};

/// The `Status` for a cancellation, with the [`Cancelled`] as its
/// [`source`](std::error::Error::source) (so [`gracefully::is_cancellation`] recognises the
/// status, and [`gracefully::find_cancelled`] gives back the reason):
///
/// | reason kind | code | why |
/// |---|---|---|
/// | [`DeadlineExceeded`](ReasonKind::DeadlineExceeded) | `DEADLINE_EXCEEDED` | the call's budget (`grpc-timeout`, a route timeout) ran out |
/// | [`Shutdown`](ReasonKind::Shutdown) | `UNAVAILABLE` | the server is stopping: safe to retry elsewhere, as gRPC's retry policy does for this code |
/// | [`Disconnected`](ReasonKind::Disconnected), [`Requested`](ReasonKind::Requested), any other | `CANCELLED` | the caller went away or the work was called off |
///
/// The message is the reason's (`operation cancelled: deadline exceeded …`).
///
/// ```
/// use gracefully::{CancellationSource, Reason};
/// use gracefully_tonic::status_for;
///
/// let source = CancellationSource::new();
/// source.cancel_with(Reason::shutdown());
/// let status = status_for(&source.token().check().unwrap_err());
/// assert_eq!(status.code(), tonic::Code::Unavailable);
/// assert!(gracefully::is_cancellation(&status));
/// ```
///
/// *Anchors:* grpc-go returns `codes.Canceled` and `codes.DeadlineExceeded` for
/// `context.Canceled` and `context.DeadlineExceeded`; grpc-dotnet maps an
/// `OperationCanceledException` from the call's token to `CANCELLED` (or
/// `DEADLINE_EXCEEDED` past the deadline). Neither has a shutdown reason: we answer
/// `UNAVAILABLE`, the code gRPC clients treat as "try again".
pub fn status_for(cancelled: &Cancelled) -> Status {
    let code = match cancelled.kind() {
        ReasonKind::DeadlineExceeded => Code::DeadlineExceeded,
        ReasonKind::Shutdown => Code::Unavailable,
        _ => Code::Cancelled,
    };
    let mut status = Status::new(code, cancelled.to_string());
    status.set_source(Arc::new(cancelled.clone()));
    status
}

/// Turns a [`Cancelled`] (or a `Result` that may hold one) into a `tonic::Status`, so a
/// handler uses `?` on its token's checks ([`status_for`] gives the code).
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_tonic::IntoStatus;
/// use tonic::Status;
///
/// async fn work(token: &CancellationToken) -> Result<u64, Status> {
///     let mut sum = 0;
///     for step in 0..1_000 {
///         token.check().into_status()?; // CANCELLED, DEADLINE_EXCEEDED or UNAVAILABLE
///         sum += step;
///     }
///     let more = token.run_until_cancelled(async { 1 }).await.into_status()?;
///     Ok(sum + more)
/// }
/// ```
///
/// (`tonic::Status` and `Cancelled` belong to other crates, so `From<Cancelled> for
/// Status` cannot be written here; this trait is the `?`-friendly way instead.)
pub trait IntoStatus {
    /// The converted value: `Status` for a `Cancelled`, `Result<T, Status>` for a
    /// `Result<T, Cancelled>`.
    type Output;

    /// The conversion (see [`status_for`]).
    fn into_status(self) -> Self::Output;
}

impl IntoStatus for Cancelled {
    type Output = Status;

    fn into_status(self) -> Status {
        status_for(&self)
    }
}

impl<T> IntoStatus for Result<T, Cancelled> {
    type Output = Result<T, Status>;

    fn into_status(self) -> Result<T, Status> {
        self.map_err(|cancelled| status_for(&cancelled))
    }
}

/// The cancellation a `Status` carries, if it was made from one: by [`status_for`] on this
/// side (a handler's `into_status()`), or by [`GracefulLayer`](crate::GracefulLayer) when it
/// stopped a call because its token fired. A status that came over the wire from another
/// server carries none (only its code says what happened there).
///
/// ```
/// use gracefully::{Cancelled, Reason, ReasonKind};
/// use gracefully_tonic::{IntoStatus, cancellation_of};
///
/// let status = Cancelled::new(Reason::disconnected()).into_status();
/// assert_eq!(cancellation_of(&status).map(|c| c.kind()), Some(ReasonKind::Disconnected));
/// assert!(cancellation_of(&tonic::Status::internal("bug")).is_none());
/// ```
pub fn cancellation_of(status: &Status) -> Option<&Cancelled> {
    gracefully::find_cancelled(status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gracefully::Reason;

    #[test]
    fn each_reason_kind_maps_to_its_code() {
        for (reason, code) in [
            (Reason::deadline_exceeded(), Code::DeadlineExceeded),
            (Reason::shutdown(), Code::Unavailable),
            (Reason::disconnected(), Code::Cancelled),
            (Reason::requested(), Code::Cancelled),
            (Reason::failed("a sibling failed"), Code::Cancelled),
        ] {
            let kind = reason.kind();
            let status = Cancelled::new(reason).into_status();
            assert_eq!(status.code(), code, "{kind}");
            assert!(status.message().contains(kind.as_str()), "{status:?}");
            assert!(gracefully::is_cancellation(&status));
            assert_eq!(cancellation_of(&status).map(Cancelled::kind), Some(kind));
        }
    }

    #[test]
    fn a_result_converts_with_question_mark() {
        fn handler(r: Result<u8, Cancelled>) -> Result<u8, Status> {
            let v = r.into_status()?;
            Ok(v + 1)
        }
        assert_eq!(handler(Ok(1)).unwrap(), 2);
        let err = handler(Err(Cancelled::new(Reason::deadline_exceeded()))).unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded);
    }
}
