//! A token on a `tonic::Request`: the RPC's own on the server ([`RequestExt::token`]), the
//! call's on the client ([`RequestExt::with_token`]).

use gracefully::CancellationToken;
use gracefully_axum::RequestToken;

/// The token a client call is bound to, as it travels in the request's extensions from
/// [`RequestExt::with_token`] to [`GracefulLayer`](crate::GracefulLayer).
#[derive(Clone, Debug)]
pub(crate) struct CallToken(pub(crate) CancellationToken);

/// Tokens on `tonic::Request`: in a handler, the RPC's token; on a client, the token a call
/// stops with.
///
/// ```
/// use gracefully::CancellationSource;
/// use gracefully_tonic::{IntoStatus, RequestExt};
/// use tonic::{Request, Response, Status};
///
/// // Server side, in a handler of a service served by `GrpcServer`:
/// async fn work(request: Request<String>) -> Result<Response<String>, Status> {
///     let token = request.token(); // client cancel, grpc-timeout, shutdown
///     token.check().into_status()?;
///     Ok(Response::new(request.into_inner()))
/// }
///
/// // Client side: the call stops when `token` fires, and sends its deadline as grpc-timeout
/// // (through a channel wrapped in `GracefulLayer`).
/// let source = CancellationSource::new();
/// let request = Request::new("hello".to_owned()).with_token(&source.token());
/// # let _ = request;
/// ```
pub trait RequestExt: Sized {
    /// **Server side:** the RPC's token. It fires when the client cancels the call or goes
    /// away (RST_STREAM, a closed connection: [`Disconnected`]), when the call's
    /// `grpc-timeout` (or the server's or a route's timeout) passes ([`DeadlineExceeded`];
    /// [`deadline()`](CancellationToken::deadline) says when), and when the host's drain
    /// budget is spent ([`Shutdown`]). Return it as a `Status` with
    /// [`IntoStatus`](crate::IntoStatus).
    ///
    /// The token travels in the request's extensions, so it is right on any task; outside
    /// a [`GrpcServer`](crate::GrpcServer) (a unit test calling the service directly) it is
    /// [`CancellationToken::never()`].
    ///
    /// *Anchors:* grpc-go's `ctx` argument; grpc-dotnet's `ServerCallContext.CancellationToken`
    /// and `.Deadline`.
    ///
    /// [`Disconnected`]: gracefully::ReasonKind::Disconnected
    /// [`DeadlineExceeded`]: gracefully::ReasonKind::DeadlineExceeded
    /// [`Shutdown`]: gracefully::ReasonKind::Shutdown
    fn token(&self) -> CancellationToken;

    /// **Client side:** binds the call to `token`. Through a channel wrapped in
    /// [`GracefulLayer`](crate::GracefulLayer), the call then stops when `token` fires —
    /// the response future and a response stream both end, with a `Status` that carries
    /// the reason — and `token`'s remaining time goes to the server as `grpc-timeout`.
    ///
    /// *Anchors:* grpc-go's `ctx` argument to a client call; grpc-dotnet's
    /// `CallOptions(cancellationToken: …, deadline: …)`.
    fn with_token(self, token: &CancellationToken) -> Self;
}

impl<T> RequestExt for tonic::Request<T> {
    fn token(&self) -> CancellationToken {
        match self.extensions().get::<RequestToken>() {
            Some(RequestToken(token)) => token.clone(),
            None => gracefully_axum::current_request_token().unwrap_or_default(),
        }
    }

    fn with_token(mut self, token: &CancellationToken) -> Self {
        self.extensions_mut().insert(CallToken(token.clone()));
        self
    }
}
