//! [`Mediator`]: `send` to the one handler of a request type, `publish` to every handler
//! of a notification type; [`Sender`], a request type's pipeline resolved in advance.

use std::any::TypeId;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use gracefully::CancellationToken;

use crate::builder::{Layering, MediatorBuilder};
use crate::call::Call;
use crate::error::{Error, NoHandler};
use crate::notification::{Notification, PublishStrategy, Subscriber};
use crate::pipeline::{SharedPipeline, TypeMap};
use crate::publish::{self, PublishError};
use crate::request::Request;

/// What a built mediator holds. Written only by the builder; shared read-only after.
#[derive(Default)]
pub(crate) struct Registry {
    /// Request type → `SharedPipeline<R>`.
    pub(crate) handlers: TypeMap,
    /// Notification type → `Vec<Subscriber<N>>`.
    pub(crate) subscribers: TypeMap,
    /// For `Debug`: the request and notification type names, in registration order.
    pub(crate) request_types: Vec<&'static str>,
    pub(crate) notification_types: Vec<&'static str>,
    pub(crate) strategy: PublishStrategy,
    #[cfg(feature = "host")]
    pub(crate) lifetime: Option<gracefully_host::Lifetime>,
}

/// Sends each request to its one handler through the behaviours, and publishes each
/// notification to every handler subscribed to it — with a [`CancellationToken`] that
/// reaches every handler.
///
/// Cheap to clone (one `Arc`); `Send + Sync`, so it can be an axum state or live in a
/// `static`. Built by [`Mediator::builder`].
///
/// ```
/// use std::time::Duration;
/// use gracefully::{CancellationSource, CancellationToken};
/// use gracefully_mediator::{LoggingLayer, Mediator, Request, TimeoutLayer, handler_fn};
///
/// struct GetGreeting { name: String }
/// impl Request for GetGreeting { type Response = String; }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .layer(LoggingLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_secs(2)))
///     .handler(handler_fn(|request: GetGreeting, token: CancellationToken| async move {
///         // The token is the caller's, narrowed by the timeout: it has a deadline.
///         assert!(token.deadline().is_some());
///         token.check()?;
///         Ok::<_, gracefully::Cancelled>(format!("hello, {}", request.name))
///     }))
///     .build()
///     .unwrap();
///
/// // In a service, this is the HTTP request's token (gracefully-axum's `RequestToken`).
/// let request = CancellationSource::new();
/// let greeting = mediator.send(GetGreeting { name: "Ada".into() }, &request.token()).await;
/// assert_eq!(greeting.unwrap(), "hello, Ada");
/// # }
/// ```
///
/// *Anchors:* MediatR's `IMediator` (`Send(request, cancellationToken)`,
/// `Publish(notification, cancellationToken)`). The Rust mediators (`mediator`, `medi-rs`,
/// `brazier`, `rust_bus`) take no token and know no deadline.
#[derive(Clone)]
pub struct Mediator {
    registry: Arc<Registry>,
}

impl Mediator {
    /// A builder: behaviours, then handlers and subscriptions.
    pub fn builder() -> MediatorBuilder<tower::layer::util::Identity, Layering> {
        MediatorBuilder::new()
    }

    pub(crate) fn from_registry(registry: Registry) -> Mediator {
        Mediator {
            registry: Arc::new(registry),
        }
    }

    fn pipeline<R: Request>(&self) -> Option<&SharedPipeline<R>> {
        self.registry
            .handlers
            .get(&TypeId::of::<R>())?
            .downcast_ref::<SharedPipeline<R>>()
    }

    /// Sends `request` to its handler, through every behaviour, with `token`: the handler
    /// receives `token`, or a child of it if a behaviour narrowed it.
    ///
    /// If `token` is already cancelled, the handler is not started and the answer is
    /// [`Error::Cancelled`] with its reason. A request type without a handler answers
    /// [`Error::NoHandler`] naming it (declare request types with
    /// [`MediatorBuilder::expect`], or resolve a [`Sender`], to find out at start-up).
    ///
    /// The returned future is `'static` (it owns a clone of the token and of the
    /// pipeline), so it can be spawned.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops the handler's future wherever it is: as for any future,
    /// work between two awaits is cut. Prefer letting the token fire — the handler then
    /// stops cooperatively and its cleanup runs.
    pub fn send<R: Request>(&self, request: R, token: &CancellationToken) -> SendFuture<R> {
        if let Err(cancelled) = token.check() {
            return SendFuture::done(Error::Cancelled(cancelled));
        }
        match self.pipeline::<R>() {
            Some(pipeline) => {
                SendFuture::running(pipeline.dispatch(Call::new(request, token.clone())))
            }
            None => SendFuture::done(Error::NoHandler(NoHandler::of::<R>())),
        }
    }

    /// The pipeline of request type `R`, resolved now: a missing handler is found here,
    /// when the component that sends `R` is wired up, instead of at its first request.
    /// Sending through a `Sender` skips the lookup.
    ///
    /// # Errors
    ///
    /// [`NoHandler`] naming `R`.
    ///
    /// ```
    /// use gracefully_mediator::{Mediator, Request};
    ///
    /// struct Unhandled;
    /// impl Request for Unhandled { type Response = (); }
    ///
    /// let mediator = Mediator::builder().build().unwrap();
    /// let err = mediator.sender::<Unhandled>().unwrap_err();
    /// assert!(err.request_type().ends_with("Unhandled"));
    /// ```
    pub fn sender<R: Request>(&self) -> Result<Sender<R>, NoHandler> {
        match self.pipeline::<R>() {
            Some(pipeline) => Ok(Sender {
                pipeline: Arc::clone(pipeline),
            }),
            None => Err(NoHandler::of::<R>()),
        }
    }

    /// Publishes `notification` to every handler subscribed to its type, with the
    /// builder's [`PublishStrategy`] (sequential unless set); see
    /// [`publish_with`](Self::publish_with).
    ///
    /// # Errors
    ///
    /// [`PublishError`] if any handler failed or was cancelled.
    ///
    /// # Cancel safety
    ///
    /// As [`publish_with`](Self::publish_with).
    pub async fn publish<N: Notification>(
        &self,
        notification: N,
        token: &CancellationToken,
    ) -> Result<(), PublishError> {
        self.publish_with(notification, token, self.registry.strategy)
            .await
    }

    /// Publishes `notification` to every handler subscribed to its type, with `strategy`.
    /// Each handler gets its own child of `token`; every handler runs to its end whatever
    /// the others do (a panic is caught and counted as a failure), and the result
    /// aggregates the failures and the cancellations apart. No subscriber: `Ok(())`.
    ///
    /// # Errors
    ///
    /// [`PublishError`], which counts the handlers that failed and those cancelled, and
    /// names each.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future drops every handler still running (none runs on in the
    /// background). To let handlers outlive the caller, publish
    /// detached (`publish_detached`, feature `host`).
    pub async fn publish_with<N: Notification>(
        &self,
        notification: N,
        token: &CancellationToken,
        strategy: PublishStrategy,
    ) -> Result<(), PublishError> {
        publish::publish(
            self.subscribers::<N>(),
            &notification,
            token,
            strategy,
            std::any::type_name::<N>(),
        )
        .await
    }

    pub(crate) fn subscribers<N: Notification>(&self) -> &[Subscriber<N>] {
        self.registry
            .subscribers
            .get(&TypeId::of::<N>())
            .and_then(|list| list.downcast_ref::<Vec<Subscriber<N>>>())
            .map_or(&[], Vec::as_slice)
    }

    #[cfg(feature = "host")]
    pub(crate) fn lifetime(&self) -> Option<gracefully_host::Lifetime> {
        self.registry
            .lifetime
            .clone()
            .or_else(gracefully_host::Lifetime::current)
    }
}

impl fmt::Debug for Mediator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mediator")
            .field("requests", &self.registry.request_types)
            .field("notifications", &self.registry.notification_types)
            .field("strategy", &self.registry.strategy)
            .finish()
    }
}

/// The pipeline of one request type, resolved in advance by [`Mediator::sender`]: `send`
/// cannot meet a missing handler and skips the lookup.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Mediator, Request, Sender, handler_fn};
///
/// struct Ping;
/// impl Request for Ping { type Response = &'static str; }
///
/// struct Monitor { ping: Sender<Ping> } // wired once, at start-up
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .handler(handler_fn(|_: Ping, _t| async { Ok::<_, gracefully_mediator::BoxError>("pong") }))
///     .build()
///     .unwrap();
/// let monitor = Monitor { ping: mediator.sender().expect("Ping has a handler") };
/// assert_eq!(monitor.ping.send(Ping, &CancellationToken::never()).await.unwrap(), "pong");
/// # }
/// ```
pub struct Sender<R: Request> {
    pipeline: SharedPipeline<R>,
}

impl<R: Request> Sender<R> {
    /// As [`Mediator::send`].
    ///
    /// # Cancel safety
    ///
    /// As [`Mediator::send`].
    pub fn send(&self, request: R, token: &CancellationToken) -> SendFuture<R> {
        if let Err(cancelled) = token.check() {
            return SendFuture::done(Error::Cancelled(cancelled));
        }
        SendFuture::running(self.pipeline.dispatch(Call::new(request, token.clone())))
    }
}

impl<R: Request> Clone for Sender<R> {
    fn clone(&self) -> Self {
        Sender {
            pipeline: Arc::clone(&self.pipeline),
        }
    }
}

impl<R: Request> fmt::Debug for Sender<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("request", &std::any::type_name::<R>())
            .finish()
    }
}

/// The future of [`Mediator::send`] and [`Sender::send`]: the response, or an [`Error`].
///
/// `'static` and `Send`.
///
/// # Cancel safety
///
/// Dropping it drops the handler's future (see [`Mediator::send`]).
#[must_use = "futures do nothing unless awaited"]
pub struct SendFuture<R: Request> {
    state: SendState<R>,
}

enum SendState<R: Request> {
    Running(BoxFuture<'static, Result<R::Response, Error>>),
    /// Answered without running the pipeline (`None` once taken).
    Done(Option<Error>),
}

impl<R: Request> SendFuture<R> {
    fn running(future: BoxFuture<'static, Result<R::Response, Error>>) -> Self {
        SendFuture {
            state: SendState::Running(future),
        }
    }

    fn done(error: Error) -> Self {
        SendFuture {
            state: SendState::Done(Some(error)),
        }
    }
}

impl<R: Request> Future for SendFuture<R> {
    type Output = Result<R::Response, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // `SendFuture` is `Unpin`: both states are (a boxed future, an `Option`).
        match &mut self.get_mut().state {
            SendState::Running(future) => future.as_mut().poll(cx),
            SendState::Done(error) => match error.take() {
                Some(error) => Poll::Ready(Err(error)),
                None => panic!("SendFuture polled after it completed"),
            },
        }
    }
}

impl<R: Request> fmt::Debug for SendFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendFuture")
            .field("request", &std::any::type_name::<R>())
            .finish_non_exhaustive()
    }
}
