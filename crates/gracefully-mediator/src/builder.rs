//! [`MediatorBuilder`]: behaviours first, then handlers and subscriptions, then `build`,
//! which checks the registrations.
//!
//! The builder's second type parameter is its stage. In [`Layering`] it accepts
//! behaviours; the first handler moves it to [`Registering`], where `layer` no longer
//! exists. So every behaviour wraps every handler, by construction — axum's
//! `Router::layer`, which wraps only the routes added before it, is the mistake this rules
//! out at compile time:
//!
//! ```compile_fail
//! use gracefully_mediator::{LoggingLayer, Mediator, Request, handler_fn};
//!
//! struct Ping;
//! impl Request for Ping { type Response = (); }
//!
//! Mediator::builder()
//!     .handler(handler_fn(|_: Ping, _token| async { Ok::<_, gracefully_mediator::BoxError>(()) }))
//!     .layer(LoggingLayer::new()); // no `layer` once handlers are registered
//! ```

use std::any::TypeId;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use tower::layer::util::{Identity, Stack};
use tower::{Layer, ServiceBuilder};

use crate::mediator::{Mediator, Registry};
use crate::notification::{Notification, NotificationHandler, PublishStrategy, Subscriber};
use crate::pipeline::{Erased, HandlerService, PipelineService, SharedPipeline};
use crate::request::{Request, RequestHandler};

/// Builder stage of a [`MediatorBuilder`] that still accepts behaviours
/// ([`layer`](MediatorBuilder::layer)).
#[derive(Debug)]
pub enum Layering {}

/// Builder stage of a [`MediatorBuilder`] once a handler is registered: no more
/// behaviours, so that each one wraps every handler.
#[derive(Debug)]
pub enum Registering {}

/// Builds a [`Mediator`]: behaviours ([`layer`](Self::layer)), then handlers
/// ([`handler`](Self::handler)), subscriptions ([`subscribe`](Self::subscribe)), and
/// [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{
///     LoggingLayer, Mediator, Notification, Request, RetryLayer, TimeoutLayer, ValidateLayer,
///     handler_fn, notification_fn,
/// };
///
/// struct PlaceOrder { item: String }
/// impl Request for PlaceOrder { type Response = u64; }
///
/// struct OrderPlaced { id: u64 }
/// impl Notification for OrderPlaced {}
///
/// let mediator = Mediator::builder()
///     // Behaviours, outermost first: each request is logged, validated, given 10 s
///     // (all attempts together), and retried if it is safe to retry.
///     .layer(LoggingLayer::new())
///     .layer(ValidateLayer::new())
///     .layer(TimeoutLayer::new(Duration::from_secs(10)))
///     .layer(RetryLayer::new(2))
///     .handler(handler_fn(|order: PlaceOrder, token: CancellationToken| async move {
///         token.check()?;
///         Ok::<_, gracefully::Cancelled>(order.item.len() as u64)
///     }))
///     .subscribe(notification_fn("mail", |_: &OrderPlaced, _token| async {
///         Ok::<_, gracefully_mediator::BoxError>(())
///     }))
///     .expect::<PlaceOrder>() // checked by build(): a missing handler fails here, not at the first send
///     .build()
///     .expect("every request has one handler");
/// # drop(mediator);
/// ```
///
/// *Anchors:* `services.AddMediatR(cfg => cfg.AddBehavior(...)...)` in MediatR, where
/// behaviours run in registration order too; tower's `ServiceBuilder` (which this wraps:
/// `layer(a).layer(b)` makes `a` the outer one).
pub struct MediatorBuilder<L, Stage = Layering> {
    stack: ServiceBuilder<L>,
    registry: Registry,
    /// For duplicate detection: request type → the first handler's type name.
    handler_types: HashMap<TypeId, &'static str>,
    /// Declared with `expect`: checked by `build`.
    expected: Vec<(TypeId, &'static str)>,
    problems: Vec<BuildProblem>,
    _stage: PhantomData<fn() -> Stage>,
}

impl MediatorBuilder<Identity, Layering> {
    pub(crate) fn new() -> Self {
        MediatorBuilder {
            stack: ServiceBuilder::new(),
            registry: Registry::default(),
            handler_types: HashMap::new(),
            expected: Vec::new(),
            problems: Vec::new(),
            _stage: PhantomData,
        }
    }
}

impl<L> MediatorBuilder<L, Layering> {
    /// Adds a behaviour: a tower [`Layer`] that will wrap every request handler. The
    /// first added is the outermost (it sees each request first and its response last),
    /// as with tower's `ServiceBuilder`.
    ///
    /// A layer works here if it wraps any `Service<Call<R>>` for every request type `R`,
    /// with [`Error`](crate::Error) as the error type: the built-in ones, one of your own
    /// (see [`Call`](crate::Call)), or a generic tower layer that keeps the inner error
    /// type (tower's `ConcurrencyLimitLayer`, for one).
    pub fn layer<T>(self, layer: T) -> MediatorBuilder<Stack<T, L>, Layering> {
        MediatorBuilder {
            stack: self.stack.layer(layer),
            registry: self.registry,
            handler_types: self.handler_types,
            expected: self.expected,
            problems: self.problems,
            _stage: PhantomData,
        }
    }
}

impl<L, Stage> MediatorBuilder<L, Stage> {
    /// Registers `handler` as *the* handler of request type `R`, wrapped in every behaviour
    /// added so far (and no behaviour can be added after it). A second handler for the
    /// same `R` is a [`BuildProblem::DuplicateHandler`] at [`build`](Self::build).
    ///
    /// `R` is inferred from the handler when it handles one request type; a type that
    /// handles several is registered once per type: `.handler::<GetOrder, _>(orders.clone())`.
    pub fn handler<R, H>(mut self, handler: H) -> MediatorBuilder<L, Registering>
    where
        R: Request,
        H: RequestHandler<R>,
        L: Layer<HandlerService<R, H>>,
        L::Service: PipelineService<R>,
    {
        let request = TypeId::of::<R>();
        let handler_type = std::any::type_name::<H>();
        match self.handler_types.get(&request) {
            Some(&first) => self.problems.push(BuildProblem::DuplicateHandler {
                request: std::any::type_name::<R>(),
                first,
                second: handler_type,
            }),
            None => {
                self.handler_types.insert(request, handler_type);
                let service = self.stack.service(HandlerService::new(handler));
                let pipeline: SharedPipeline<R> = Arc::new(Erased(service));
                self.registry.handlers.insert(request, Box::new(pipeline));
                self.registry.request_types.push(std::any::type_name::<R>());
            }
        }
        MediatorBuilder {
            stack: self.stack,
            registry: self.registry,
            handler_types: self.handler_types,
            expected: self.expected,
            problems: self.problems,
            _stage: PhantomData,
        }
    }

    /// Subscribes `handler` to notification type `N`. Handlers run in subscription order
    /// (sequentially) or all at once (concurrently), as the
    /// [`PublishStrategy`] says. Behaviours do not wrap notification handlers (as in
    /// MediatR, where pipeline behaviours are for requests).
    pub fn subscribe<N, H>(mut self, handler: H) -> Self
    where
        N: Notification,
        H: NotificationHandler<N>,
    {
        let subscriber = Subscriber::<N> {
            name: handler.name(),
            handler: Arc::new(handler),
        };
        let list = self
            .registry
            .subscribers
            .entry(TypeId::of::<N>())
            .or_insert_with(|| Box::new(Vec::<Subscriber<N>>::new()));
        match list.downcast_mut::<Vec<Subscriber<N>>>() {
            Some(list) => list.push(subscriber),
            None => unreachable!("the list under TypeId::of::<N>() holds Subscriber<N>s"),
        }
        if !self
            .registry
            .notification_types
            .contains(&std::any::type_name::<N>())
        {
            self.registry
                .notification_types
                .push(std::any::type_name::<N>());
        }
        self
    }

    /// Declares that request type `R` must have a handler: [`build`](Self::build) fails
    /// with [`BuildProblem::MissingHandler`] naming `R` if none was registered. Declare
    /// the requests your code sends, and a forgotten registration fails at start-up
    /// rather than at the first request.
    pub fn expect<R: Request>(mut self) -> Self {
        self.expected
            .push((TypeId::of::<R>(), std::any::type_name::<R>()));
        self
    }

    /// How [`Mediator::publish`] runs a notification's handlers (default:
    /// [`PublishStrategy::Sequential`]). [`Mediator::publish_with`] chooses per call.
    pub fn publish_strategy(mut self, strategy: PublishStrategy) -> Self {
        self.registry.strategy = strategy;
        self
    }

    /// The host whose tracked tasks run [detached](Mediator::publish_detached)
    /// notifications, so its shutdown drains them. Without it, `publish_detached` uses the
    /// host running at the time ([`Lifetime::current`](gracefully_host::Lifetime::current)).
    #[cfg(feature = "host")]
    pub fn lifetime(mut self, lifetime: gracefully_host::Lifetime) -> Self {
        self.registry.lifetime = Some(lifetime);
        self
    }

    /// The mediator — or every problem found, at once: two handlers for one request type,
    /// a request type declared with [`expect`](Self::expect) and left without a handler.
    ///
    /// # Errors
    ///
    /// [`BuildError`], listing each [`BuildProblem`].
    pub fn build(self) -> Result<Mediator, BuildError> {
        let mut problems = self.problems;
        for (request, name) in &self.expected {
            if !self.registry.handlers.contains_key(request)
                && !problems.iter().any(
                    |p| matches!(p, BuildProblem::MissingHandler { request } if request == name),
                )
            {
                problems.push(BuildProblem::MissingHandler { request: name });
            }
        }
        if problems.is_empty() {
            Ok(Mediator::from_registry(self.registry))
        } else {
            Err(BuildError { problems })
        }
    }
}

impl<L, Stage> fmt::Debug for MediatorBuilder<L, Stage> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediatorBuilder")
            .field("requests", &self.registry.request_types)
            .field("notifications", &self.registry.notification_types)
            .field("problems", &self.problems)
            .finish_non_exhaustive()
    }
}

/// The registrations do not make a working mediator. Lists every [`BuildProblem`].
///
/// ```
/// use gracefully_mediator::{BuildProblem, Mediator, Request, handler_fn};
///
/// struct GetOrder;
/// impl Request for GetOrder { type Response = (); }
/// struct PlaceOrder;
/// impl Request for PlaceOrder { type Response = (); }
///
/// let err = Mediator::builder()
///     .handler(handler_fn(|_: GetOrder, _t| async { Ok::<_, gracefully_mediator::BoxError>(()) }))
///     .expect::<GetOrder>()
///     .expect::<PlaceOrder>()
///     .build()
///     .unwrap_err();
/// assert!(matches!(err.problems(), [BuildProblem::MissingHandler { request }] if request.ends_with("PlaceOrder")));
/// assert!(err.to_string().contains("no handler for request type `"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildError {
    problems: Vec<BuildProblem>,
}

impl BuildError {
    /// Every problem found, in the order met.
    pub fn problems(&self) -> &[BuildProblem] {
        &self.problems
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the mediator cannot be built: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            fmt::Display::fmt(problem, f)?;
        }
        Ok(())
    }
}

impl StdError for BuildError {}

/// One thing wrong with a [`MediatorBuilder`]'s registrations.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BuildProblem {
    /// Two handlers were registered for one request type; a request has exactly one.
    DuplicateHandler {
        /// The request's type name.
        request: &'static str,
        /// The type name of the handler registered first.
        first: &'static str,
        /// The type name of the one registered again.
        second: &'static str,
    },
    /// A request type declared with [`MediatorBuilder::expect`] has no handler.
    MissingHandler {
        /// The request's type name.
        request: &'static str,
    },
}

impl fmt::Display for BuildProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildProblem::DuplicateHandler {
                request,
                first,
                second,
            } => write!(
                f,
                "two handlers for request type `{request}` (`{first}`, then `{second}`): a \
                 request has exactly one handler; register only one of them"
            ),
            BuildProblem::MissingHandler { request } => write!(
                f,
                "no handler for request type `{request}`, which was declared with `expect`: \
                 register one with `MediatorBuilder::handler`"
            ),
        }
    }
}
