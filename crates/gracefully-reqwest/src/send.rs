//! Sending a `reqwest::RequestBuilder` with a token: [`RequestBuilderExt::with_token`] and
//! the [`GracefulRequest`] it returns.

use std::future::Future;

use gracefully::operation::OperationScope;
use gracefully::{CancellationToken, Cancelled};

use crate::call::{self, Transport};
use crate::deadline::{DEFAULT_PROPAGATION, DeadlinePropagation};
use crate::error::Error;
use crate::retry::RetryPolicy;

/// Adds [`with_token`](RequestBuilderExt::with_token) to `reqwest::RequestBuilder`.
///
/// ```no_run
/// use std::time::Duration;
/// use gracefully::{CancellationToken, ReasonKind};
/// use gracefully_reqwest::{Error, RequestBuilderExt};
///
/// async fn price(client: &reqwest::Client, request: &CancellationToken) -> Result<String, Error> {
///     // Stops when the request's token fires (client gone, deadline, shutdown); the
///     // server is told how long it has in `x-request-timeout-ms`.
///     let response = client
///         .get("http://pricing.internal/price/42")
///         .with_token(request)
///         .send()
///         .await?;
///     // The body read stops too if the token fires meanwhile.
///     Ok(response.text().await?)
/// }
/// ```
///
/// *Anchors:* .NET's `HttpClient.SendAsync(request, token)`; Go's
/// `http.NewRequestWithContext(ctx, …)` then `client.Do(req)`.
pub trait RequestBuilderExt {
    /// Binds `token` to this request: sent with [`GracefulRequest::send`], it is aborted when
    /// the token fires (at its deadline too: the token's remaining time is the request's
    /// timeout), and that budget travels downstream in a header ([`DeadlinePropagation`]).
    fn with_token(self, token: &CancellationToken) -> GracefulRequest;
}

impl RequestBuilderExt for reqwest::RequestBuilder {
    fn with_token(self, token: &CancellationToken) -> GracefulRequest {
        GracefulRequest {
            builder: self,
            token: token.clone(),
            propagation: None,
            retry: None,
        }
    }
}

/// A `reqwest::RequestBuilder` bound to a token, made by
/// [`RequestBuilderExt::with_token`]. Configure the deadline header and retries, then
/// [`send`](Self::send).
///
/// *Anchors:* a .NET `HttpRequestMessage` about to go to `SendAsync(request, token)`; a Go
/// `*http.Request` made by `NewRequestWithContext`.
#[must_use = "a request does nothing until it is sent"]
#[derive(Debug)]
pub struct GracefulRequest {
    builder: reqwest::RequestBuilder,
    token: CancellationToken,
    /// `None`: the default, borrowed from a static rather than built per request.
    propagation: Option<DeadlinePropagation>,
    retry: Option<RetryPolicy>,
}

impl GracefulRequest {
    /// How the token's deadline is handed on (header name, transit allowance); default
    /// [`DeadlinePropagation::default`].
    ///
    /// *Anchors:* none in .NET's `HttpClient` or Go's `net/http`, which send no deadline;
    /// gRPC always sends `grpc-timeout`.
    pub fn propagation(mut self, propagation: DeadlinePropagation) -> Self {
        self.propagation = Some(propagation);
        self
    }

    /// Retries under `policy`, bounded by the token (see [`RetryPolicy`]). Without it the
    /// request is sent once.
    ///
    /// *Anchors:* a Polly retry handler around `HttpClient.SendAsync`; a Go retry loop
    /// around `client.Do`.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Sends the request (and its retries), racing each against the token.
    ///
    /// * **Before sending:** a cancelled token, or a budget too small to send
    ///   ([`DeadlinePropagation`]), fails at once with [`Error::Cancelled`]; nothing goes out.
    /// * **While waiting for the response:** when the token fires the request is aborted —
    ///   its future dropped, so reqwest closes the HTTP/1.1 connection (HTTP/2: resets the
    ///   stream) — and the call returns [`Error::Cancelled`] with the token's reason.
    /// * **The response** is an ordinary `reqwest::Response` whose body watches the token:
    ///   when it fires, a read in progress or the next one fails with an error that
    ///   [`gracefully::is_cancellation`] recognises, and the connection is closed even if
    ///   nothing is reading (the body is dropped from the token's callback).
    ///
    /// An error reqwest reports after the token fired, or after its deadline passed, is
    /// reported as that cancellation.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future aborts the request in flight, as dropping reqwest's own does
    /// (and a wait between retries ends). Nothing else is left behind.
    ///
    /// *Anchors:* .NET's `HttpClient.SendAsync(request, token)`, which also throws
    /// `TaskCanceledException` when the token fires; there the token covers the body only
    /// while `SendAsync` buffers it (`ResponseContentRead`), and a stream read later takes
    /// a token of its own. Go's `client.Do(req)` with `NewRequestWithContext`: the context
    /// covers the body too, as here. Neither sends the deadline downstream.
    pub fn send(self) -> impl Future<Output = Result<reqwest::Response, Error>> + Send {
        let GracefulRequest {
            builder,
            token,
            propagation,
            retry,
        } = self;
        async move {
            if let Some(policy) = &retry {
                policy.validate()?;
            }
            let (client, request) = builder.build_split();
            let mut request = request.map_err(Error::from)?;
            let propagation = propagation.as_ref().unwrap_or(&DEFAULT_PROPAGATION);
            if retry.is_none() && OperationScope::current().is_none() {
                // The common case, one attempt with nothing to record, written out flat:
                // the request is handed to reqwest before the first await, so this future
                // holds reqwest's 16-byte `Pending` rather than the nested futures of
                // `call::run` (which keep a copy of the request at each level: 2 KB, copied
                // whenever the future moves). Does what `call::run` does for one attempt.
                propagation
                    .apply(&mut request, &token)
                    .map_err(Error::Cancelled)?;
                let outcome = token.run_until_cancelled(client.execute(request)).await;
                return call::settle(
                    outcome.map(|r| r.map_err(Error::from)),
                    &token,
                    Error::Cancelled,
                );
            }
            // Retries or an operation to record: the nested path, boxed so that its size is
            // not this future's.
            let mut transport = ClientTransport(&client);
            Box::pin(call::run(
                &mut transport,
                request,
                &token,
                propagation,
                retry.as_ref(),
            ))
            .await
        }
    }
}

/// Sends through a `reqwest::Client`.
struct ClientTransport<'a>(&'a reqwest::Client);

impl Transport for ClientTransport<'_> {
    type Error = Error;

    fn send(
        &mut self,
        request: reqwest::Request,
    ) -> impl Future<Output = Result<reqwest::Response, Error>> + Send + '_ {
        let pending = self.0.execute(request);
        async move { pending.await.map_err(Error::from) }
    }

    fn cancelled(cancelled: Cancelled) -> Error {
        Error::Cancelled(cancelled)
    }

    fn as_reqwest(error: &Error) -> Option<&reqwest::Error> {
        error.as_reqwest()
    }
}
