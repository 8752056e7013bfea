//! # gracefully-reqwest — outbound HTTP that stops when the token fires
//!
//! A call made with a [`CancellationToken`](gracefully::CancellationToken) is aborted when
//! the token fires — the request in flight, the connection under it, the response body being
//! read — and fails with an error that carries the token's [`Reason`](gracefully::Reason)
//! and that [`gracefully::is_cancellation`] recognises. The token's remaining time is the
//! request's timeout and travels downstream in a header, so the service you call gives up
//! when you stop waiting. Retries stay inside the same deadline.
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully::{CancellationSource, ReasonKind};
//! use gracefully_reqwest::{Error, RequestBuilderExt, RetryPolicy};
//!
//! # async fn f() -> Result<(), Error> {
//! let client = reqwest::Client::new();
//! // An incoming request with 300 ms left (in a handler: its request token).
//! let request = CancellationSource::with_timeout(Duration::from_millis(300));
//!
//! let result = client
//!     .get("http://inventory.internal/items/42")
//!     .with_token(&request.token())           // x-request-timeout-ms: 295 (300 − 5 ms transit)
//!     .retry(RetryPolicy::default())          // 502/503/504/429 and connection errors, GET only
//!     .send()
//!     .await;
//! match result {
//!     Ok(response) => println!("{}", response.text().await?),
//!     // The budget ran out: the request was aborted and its connection closed.
//!     Err(Error::Cancelled(c)) if c.kind() == ReasonKind::DeadlineExceeded => {}
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
//!
//! ## What happens when
//!
//! | moment | what the call does |
//! |---|---|
//! | before sending | a cancelled token, or less than the transit allowance + 1 ms left: fail with [`Error::Cancelled`], send nothing |
//! | sending | header [`REQUEST_TIMEOUT_HEADER`] = time left − allowance, whole ms ([`DeadlinePropagation`]); the token's deadline is the request's timeout |
//! | waiting for the response | the token fires: the request future is dropped, the HTTP/1.1 connection closed (HTTP/2: stream reset); [`Error::Cancelled`] with the token's reason |
//! | reading the body | the token fires: the body is dropped from the token's callback (closing the connection even if nothing reads), and the read in progress or the next fails with a `reqwest::Error` whose source chain holds the `Cancelled` |
//! | between retries | the token fires: the wait ends at once; a wait that would cross the deadline is never begun ([`RetryPolicy`]) |
//!
//! ## Two ways in
//!
//! * **A plain `reqwest::Client`:** [`RequestBuilderExt::with_token`] on any
//!   `RequestBuilder`, then [`GracefulRequest::send`].
//! * **A `reqwest-middleware` stack** (feature `middleware`, on by default):
//!   [`GracefulMiddleware`] in the stack, [`MiddlewareRequestExt::with_token`] on each
//!   request.
//!
//! Both return an ordinary `reqwest::Response`; only its body is wrapped.
//!
//! ## Coming from .NET or Go
//!
//! | | .NET | Go | gracefully-reqwest |
//! |---|---|---|---|
//! | send with a token | `HttpClient.SendAsync(request, token)` | `http.NewRequestWithContext(ctx, …)` + `client.Do` | `builder.with_token(&token).send()` |
//! | the error | `TaskCanceledException` | `ctx.Err()` wrapped in `*url.Error` | [`Error::Cancelled`] with the [`Reason`](gracefully::Reason) |
//! | body after cancel | aborted while `SendAsync` buffers it; stream reads take their own token | reads fail, connection closed | reads fail, connection closed, even if not reading |
//! | deadline downstream | — (gRPC only: `EnableCallContextPropagation`) | — (gRPC only: `grpc-timeout`) | [`REQUEST_TIMEOUT_HEADER`], configurable |
//! | retries | Polly `AddRetry` inside `AddTimeout` | hand-written loop with `select` on `ctx.Done()` | [`RetryPolicy`]: bounded by the token's deadline, idempotent only by default |
//!
//! ## Features
//!
//! * `middleware` (default): [`GracefulMiddleware`] and [`MiddlewareRequestExt`], on
//!   `reqwest-middleware` 0.5 (the line built on reqwest 0.13).

// No unsafe code: the crate composes reqwest, hyper's body trait and the core's tokens.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod body;
mod call;
mod deadline;
mod error;
#[cfg(feature = "middleware")]
mod middleware;
mod retry;
mod send;

pub use deadline::{DEFAULT_TRANSIT_ALLOWANCE, DeadlinePropagation, REQUEST_TIMEOUT_HEADER};
pub use error::{ConfigError, Error};
#[cfg(feature = "middleware")]
pub use middleware::{GracefulMiddleware, MiddlewareRequestExt};
pub use retry::RetryPolicy;
pub use send::{GracefulRequest, RequestBuilderExt};

/// The README's examples, compiled as doctests so they stay true.
#[cfg(all(doctest, feature = "middleware"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
