//! What a `send` can end in besides a response: [`Error`], and the values it carries
//! ([`Invalid`], [`NoHandler`]).

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use gracefully::{Cancelled, find_cancelled};

/// Any error, boxed: what handlers return. `?` converts every `std::error::Error + Send +
/// Sync` (and `String`, and `&str`) into it.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Why a [`send`](crate::Mediator::send) did not produce a response.
///
/// The variants keep the causes apart, because each calls for something different:
/// `Cancelled` is not a failure (nobody wants the answer any more; log it at debug, answer
/// 499/503/504), `Invalid` is the caller's mistake (answer 400), `Failed` is a genuine
/// failure (log it, maybe retry it), `NoHandler` is a wiring bug.
///
/// ```
/// use gracefully::{CancellationSource, CancellationToken, ReasonKind};
/// use gracefully_mediator::{Error, Mediator, Request, handler_fn};
///
/// struct Slow;
/// impl Request for Slow { type Response = (); }
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .handler(handler_fn(|_: Slow, token: CancellationToken| async move {
///         token.cancelled().await;
///         token.check() // Err(Cancelled) with the token's reason
///     }))
///     .build()
///     .unwrap();
///
/// let request = CancellationSource::new();
/// request.cancel();
/// match mediator.send(Slow, &request.token()).await {
///     Err(Error::Cancelled(cancelled)) => assert_eq!(cancelled.kind(), ReasonKind::Requested),
///     other => panic!("{other:?}"),
/// }
/// # }
/// ```
///
/// `gracefully::is_cancellation(&error)` is true exactly for `Error::Cancelled` (its
/// [`source`](StdError::source) is the [`Cancelled`]), so the host and the HTTP layer keep
/// it out of failure logs.
///
/// *Anchors:* MediatR lets exceptions propagate (`OperationCanceledException`,
/// `ValidationException` from FluentValidation behaviours, `InvalidOperationException` for a
/// missing handler); here they are one enum to match on.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The work stopped because its token was cancelled; the reason says why (the
    /// caller's cancellation, a behaviour's deadline, the host's shutdown). Never retried,
    /// never logged as an error.
    Cancelled(Cancelled),
    /// The request failed validation ([`Request::validate`](crate::Request::validate),
    /// checked by [`ValidateLayer`](crate::ValidateLayer)); the handler did not run.
    Invalid(Invalid),
    /// The handler failed: the error it returned.
    Failed(BoxError),
    /// No handler is registered for the request's type.
    NoHandler(NoHandler),
}

impl Error {
    /// Classifies a handler's error: a [`Cancelled`], or an error with one in its source
    /// chain, becomes [`Error::Cancelled`] (a wrapper around it is dropped; the reason is
    /// kept); anything else is [`Error::Failed`].
    pub fn from_handler(error: impl Into<BoxError>) -> Error {
        match cancellation_of(error.into()) {
            Ok(cancelled) => Error::Cancelled(cancelled),
            Err(error) => Error::Failed(error),
        }
    }

    /// Whether this is [`Error::Cancelled`].
    pub fn is_cancellation(&self) -> bool {
        matches!(self, Error::Cancelled(_))
    }

    /// The [`Cancelled`], if this is [`Error::Cancelled`].
    pub fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }

    /// The handler's error, if this is [`Error::Failed`] (to downcast it).
    pub fn as_failure(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self {
            Error::Failed(error) => Some(&**error),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(cancelled) => fmt::Display::fmt(cancelled, f),
            Error::Invalid(invalid) => fmt::Display::fmt(invalid, f),
            Error::Failed(error) => fmt::Display::fmt(error, f),
            Error::NoHandler(missing) => fmt::Display::fmt(missing, f),
        }
    }
}

impl StdError for Error {
    /// `Cancelled`: the [`Cancelled`] (so `is_cancellation` finds it). `Failed`: the
    /// handler's error's own source (the handler's error is this error's `Display`, as
    /// with a transparent wrapper). Otherwise `None`.
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            Error::Failed(error) => error.source(),
            Error::Invalid(_) | Error::NoHandler(_) => None,
        }
    }
}

impl From<Cancelled> for Error {
    fn from(cancelled: Cancelled) -> Self {
        Error::Cancelled(cancelled)
    }
}

impl From<Invalid> for Error {
    fn from(invalid: Invalid) -> Self {
        Error::Invalid(invalid)
    }
}

impl From<NoHandler> for Error {
    fn from(missing: NoHandler) -> Self {
        Error::NoHandler(missing)
    }
}

/// `Ok` with the [`Cancelled`] if `error` is one or wraps one (see
/// [`Error::from_handler`]); `Err` with the error, unchanged, otherwise.
pub(crate) fn cancellation_of(error: BoxError) -> Result<Cancelled, BoxError> {
    match error.downcast::<Cancelled>() {
        Ok(cancelled) => Ok(*cancelled),
        Err(error) => match find_cancelled(&*error) {
            Some(cancelled) => Ok(cancelled.clone()),
            None => Err(error),
        },
    }
}

/// No handler is registered for a request type. Names the type.
///
/// Met at [`build`](crate::MediatorBuilder::build) time for types declared with
/// [`expect`](crate::MediatorBuilder::expect), at wiring time by
/// [`Mediator::sender`](crate::Mediator::sender), and otherwise by the first `send`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoHandler {
    request: &'static str,
}

impl NoHandler {
    pub(crate) fn of<R>() -> NoHandler {
        NoHandler {
            request: std::any::type_name::<R>(),
        }
    }

    /// The request's type name.
    pub fn request_type(&self) -> &'static str {
        self.request
    }
}

impl fmt::Display for NoHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "no handler for request type `{}`: register one with `MediatorBuilder::handler` \
             (and declare it with `MediatorBuilder::expect` to catch this at build time)",
            self.request
        )
    }
}

impl StdError for NoHandler {}

/// What is wrong with a request: one or more problems, each with the field it concerns
/// (if any) and a message saying what would be right.
///
/// ```
/// use gracefully_mediator::Invalid;
///
/// struct CreateOrder { item: String, quantity: u32 }
///
/// fn validate(order: &CreateOrder) -> Result<(), Invalid> {
///     let mut invalid = Invalid::new();
///     if order.item.is_empty() {
///         invalid.add("item", "must not be empty");
///     }
///     if !(1..=100).contains(&order.quantity) {
///         invalid.add("quantity", format!("must be 1 to 100, not {}", order.quantity));
///     }
///     invalid.into_result()
/// }
///
/// let err = validate(&CreateOrder { item: String::new(), quantity: 0 }).unwrap_err();
/// assert_eq!(err.problems().count(), 2);
/// assert_eq!(
///     err.to_string(),
///     "invalid request: item: must not be empty; quantity: must be 1 to 100, not 0"
/// );
/// ```
///
/// *Anchors:* FluentValidation's `ValidationException` with its `Errors` (property name,
/// message), which MediatR validation behaviours throw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Invalid {
    /// Set by `ValidateLayer` to the request's type name; empty when unknown.
    request: &'static str,
    problems: Vec<Problem>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Problem {
    field: Option<Cow<'static, str>>,
    message: Cow<'static, str>,
}

impl Invalid {
    /// No problems yet.
    pub fn new() -> Invalid {
        Invalid::default()
    }

    /// Adds a problem with `field`.
    pub fn add(
        &mut self,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) {
        self.problems.push(Problem {
            field: Some(field.into()),
            message: message.into(),
        });
    }

    /// Adds a problem with the request as a whole (no single field).
    pub fn add_general(&mut self, message: impl Into<Cow<'static, str>>) {
        self.problems.push(Problem {
            field: None,
            message: message.into(),
        });
    }

    /// [`add`](Self::add), by value: `Err(Invalid::new().with("id", "must not be 0"))`.
    pub fn with(
        mut self,
        field: impl Into<Cow<'static, str>>,
        message: impl Into<Cow<'static, str>>,
    ) -> Invalid {
        self.add(field, message);
        self
    }

    /// `Ok(())` if no problem was added, `Err(self)` otherwise.
    pub fn into_result(self) -> Result<(), Invalid> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }

    /// Whether no problem was added.
    pub fn is_empty(&self) -> bool {
        self.problems.is_empty()
    }

    /// The problems, in the order added: the field (if any) and the message.
    pub fn problems(&self) -> impl Iterator<Item = (Option<&str>, &str)> {
        self.problems
            .iter()
            .map(|p| (p.field.as_deref(), p.message.as_ref()))
    }

    /// The type name of the request that failed validation, once `ValidateLayer` has
    /// seen it.
    pub fn request_type(&self) -> Option<&'static str> {
        (!self.request.is_empty()).then_some(self.request)
    }

    pub(crate) fn for_request(mut self, request: &'static str) -> Invalid {
        self.request = request;
        self
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.request_type() {
            Some(request) => write!(f, "invalid `{request}`")?,
            None => f.write_str("invalid request")?,
        }
        if self.problems.is_empty() {
            // Only reachable if a validator returns `Err(Invalid::new())`.
            return f.write_str(": (no problem given)");
        }
        for (i, problem) in self.problems.iter().enumerate() {
            f.write_str(if i == 0 { ": " } else { "; " })?;
            if let Some(field) = &problem.field {
                write!(f, "{field}: ")?;
            }
            f.write_str(&problem.message)?;
        }
        Ok(())
    }
}

impl StdError for Invalid {}

/// A notification handler panicked; the message is the panic's (for `panic!("...")`), and
/// the other handlers ran on. Found in a [`PublishError`](crate::PublishError)'s failures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    pub(crate) fn new(payload: &(dyn std::any::Any + Send)) -> Panicked {
        // `gracefully_host::panic_message` does the same, but the host is an optional
        // dependency of this crate.
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "(a panic with a non-string payload)".to_owned()
        };
        Panicked { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panicked: {}", self.message)
    }
}

impl StdError for Panicked {}
