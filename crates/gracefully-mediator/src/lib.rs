//! # gracefully-mediator — a mediator whose token reaches every handler
//!
//! Send a request to its one handler, publish a notification to all of its handlers —
//! and the caller's [`CancellationToken`](gracefully::CancellationToken) (its reason, its deadline) travels with it,
//! through every behaviour, to the handler and on to the queries and calls the handler
//! makes. The mediator of .NET's end-to-end model (`CancellationTokenSource` → token →
//! MediatR handler → EF Core query), for Rust.
//!
//! ```
//! use std::time::Duration;
//! use gracefully::{CancellationSource, CancellationToken, ReasonKind};
//! use gracefully_mediator::{
//!     Error, LoggingLayer, Mediator, Request, RetryLayer, TimeoutLayer, ValidateLayer, handler_fn,
//! };
//!
//! #[derive(Clone)]
//! struct MonthlyReport { month: u8 }
//!
//! impl Request for MonthlyReport {
//!     type Response = u64;
//!     fn clone_for_retry(&self) -> Option<Self> { Some(self.clone()) } // a query: safe to retry
//! }
//!
//! async fn count_orders(month: u8, token: &CancellationToken) -> Result<u64, gracefully::Cancelled> {
//!     // gracefully-sqlx would cancel the query on the server here; a sleep stands in.
//!     token.run_until_cancelled(tokio::time::sleep(Duration::from_secs(3))).await?;
//!     Ok(u64::from(month) * 100)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let mediator = Mediator::builder()
//!     .layer(LoggingLayer::new())                        // outermost: times the whole thing
//!     .layer(ValidateLayer::new())
//!     .layer(TimeoutLayer::new(Duration::from_secs(1)))  // narrows the caller's token
//!     .layer(RetryLayer::new(2))                          // genuine failures only
//!     .handler(handler_fn(|report: MonthlyReport, token: CancellationToken| async move {
//!         count_orders(report.month, &token).await
//!     }))
//!     .build()
//!     .unwrap();
//!
//! // The HTTP request's token in a service (its client may leave; the host may stop).
//! let request = CancellationSource::new();
//! let result = mediator.send(MonthlyReport { month: 11 }, &request.token()).await;
//!
//! // The 3 s query met the behaviour's 1 s deadline: a cancellation, not a failure —
//! // logged at debug, not retried, and the reason says which deadline.
//! match result {
//!     Err(Error::Cancelled(cancelled)) => assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded),
//!     other => panic!("{other:?}"),
//! }
//! # }
//! ```
//!
//! ## The parts
//!
//! | part | what it does |
//! |---|---|
//! | [`Mediator::send`] | the request to its one handler, through the behaviours, with the token |
//! | [`Call`] | the request and its token as they travel through the tower stack; behaviours may [narrow](Call::narrow) the token, never detach from it |
//! | [`LoggingLayer`], [`TimeoutLayer`], [`ValidateLayer`], [`RetryLayer`] | built-in behaviours (tower layers), applied in registration order to every handler |
//! | [`MediatorBuilder`] | behaviours, then handlers — a type-level stage, so every behaviour wraps every handler; [`build`](MediatorBuilder::build) rejects two handlers for one type and checks [`expect`](MediatorBuilder::expect)ed ones |
//! | [`Mediator::sender`] | a request type's pipeline resolved at start-up: a missing handler fails there |
//! | [`Mediator::publish`] | a notification to every subscribed handler, [sequentially or concurrently](PublishStrategy), each with a child token; [`PublishError`] counts failures and cancellations apart and names each handler |
//! | `Mediator::publish_detached` (feature `host`) | fire-and-forget, as tracked tasks of the host: a shutdown drains them and names any that overrun |
//!
//! ## The token
//!
//! * **It reaches the handler by itself.** The tower request type is [`Call`], which
//!   carries the token; no behaviour passes it along by hand, and none can forget to.
//! * **Behaviours narrow it, never detach from it.** A `Call` cannot be built outside
//!   this crate and its token has no setter: the only ways to change it
//!   ([`narrow`](Call::narrow), [`narrow_with_timeout`](Call::narrow_with_timeout),
//!   [`narrow_linked`](Call::narrow_linked)) make a child of the token it holds. So a
//!   caller's cancellation always reaches the handler. (MediatR 12.5's `next(token)`
//!   accepts any token, and its own timeout example passes a fresh one.)
//! * **Cancellation is an outcome, not a failure.** A handler's `Cancelled` (or an error
//!   wrapping one) becomes [`Error::Cancelled`]: logged at debug with its reason, never
//!   retried, and recognised by [`gracefully::is_cancellation`].
//!
//! ## Coming from MediatR
//!
//! | MediatR | here |
//! |---|---|
//! | `IRequest<TResponse>` | [`Request`] (`type Response`) |
//! | `IRequestHandler<TRequest, TResponse>.Handle(request, ct)` | [`RequestHandler::handle`]`(request, token)`, or [`handler_fn`] |
//! | `IMediator.Send(request, ct)` | [`Mediator::send`]`(request, &token)` |
//! | `IPipelineBehavior<TRequest, TResponse>` + `RequestHandlerDelegate next` | a tower [`Layer`](tower::Layer); `next` is the inner [`Service`](tower::Service) |
//! | `next(ct)` with another token (12.5) | [`Call::narrow`] and friends: children only |
//! | a timeout behaviour (#592, #570) | [`TimeoutLayer`] (reason `DeadlineExceeded`) |
//! | FluentValidation behaviour | [`ValidateLayer`] + [`Request::validate`] |
//! | Polly retry behaviour | [`RetryLayer`] + [`Request::clone_for_retry`] (never a cancellation, never past the deadline) |
//! | missing handler: `InvalidOperationException` at `Send` | [`Error::NoHandler`] at `send`; at start-up with [`MediatorBuilder::expect`] or [`Mediator::sender`] |
//! | `INotification`, `INotificationHandler<T>` | [`Notification`], [`NotificationHandler`], or [`notification_fn`] |
//! | `IMediator.Publish(notification, ct)` | [`Mediator::publish`]`(notification, &token)` |
//! | `ForeachAwaitPublisher`, `TaskWhenAllPublisher` | [`PublishStrategy::Sequential`], [`PublishStrategy::Concurrent`] (both run every handler; #82, #328) |
//! | `AggregateException` | [`PublishError`] (failures and cancellations apart) |
//! | `Task.Run(() => Publish(...))` (#349, #382) | `publish_detached` (tracked tasks, drained at shutdown) |
//!
//! ## Features
//!
//! * `host` (off by default): [`Mediator`]`::publish_detached` and
//!   [`MediatorBuilder`]`::lifetime`, with `gracefully-host`. Without it the crate needs only
//!   the core (`gracefully`), tower and tracing — and no async runtime: the retry backoff
//!   waits on a token's timer.

#![warn(missing_docs)]
// Nothing here needs `unsafe`: type erasure is `dyn Any` + `downcast_ref`, pin projections
// are pin-project-lite's.
#![forbid(unsafe_code)]

mod behaviour;
mod builder;
mod call;
#[cfg(feature = "host")]
mod detached;
mod error;
mod mediator;
mod notification;
mod pipeline;
mod publish;
mod request;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use behaviour::{
    Logging, LoggingFuture, LoggingLayer, Retry, RetryFuture, RetryLayer, Timeout, TimeoutLayer,
    Validate, ValidateLayer,
};
pub use builder::{BuildError, BuildProblem, Layering, MediatorBuilder, Registering};
pub use call::Call;
#[cfg(feature = "host")]
pub use detached::NoHost;
pub use error::{BoxError, Error, Invalid, NoHandler, Panicked};
pub use mediator::{Mediator, SendFuture, Sender};
pub use notification::{
    Notification, NotificationFn, NotificationHandler, PublishStrategy, notification_fn,
};
pub use pipeline::{HandlerService, PipelineService};
pub use publish::{HandlerCancelled, HandlerFailed, PublishError};
pub use request::{HandlerFn, Request, RequestHandler, handler_fn};
