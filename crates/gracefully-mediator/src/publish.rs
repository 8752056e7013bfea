//! Publishing a notification to its handlers (sequentially or concurrently), and the
//! aggregate [`PublishError`] that keeps failures and cancellations apart.

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt;
use futures_util::future::join_all;
use gracefully::{CancellationToken, Cancelled};

use crate::error::{BoxError, Panicked, cancellation_of};
use crate::notification::{Notification, PublishStrategy, Subscriber};

/// How one handler ended.
enum HandlerEnd {
    Completed,
    Cancelled(Cancelled),
    Failed(BoxError),
}

/// Runs one handler with its own child of `token`, catching a panic.
async fn run_one<N: Notification>(
    subscriber: &Subscriber<N>,
    notification: &N,
    token: &CancellationToken,
) -> HandlerEnd {
    // Each handler its own child (docs/architecture.md, "The shutdown contract", rule 1
    // applies through the publisher's token): the publisher's cancellation reaches all of
    // them; dropping the child's source here does not cancel it.
    let child = token.child().token();
    let run = subscriber.handler.handle(notification, child);
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(Ok(())) => HandlerEnd::Completed,
        Ok(Err(error)) => match cancellation_of(error) {
            Ok(cancelled) => HandlerEnd::Cancelled(cancelled),
            Err(error) => HandlerEnd::Failed(error),
        },
        Err(panic) => HandlerEnd::Failed(Box::new(Panicked::new(&*panic))),
    }
}

/// Publishes `notification` to `subscribers` with `strategy`; see
/// [`Mediator::publish_with`](crate::Mediator::publish_with).
pub(crate) async fn publish<N: Notification>(
    subscribers: &[Subscriber<N>],
    notification: &N,
    token: &CancellationToken,
    strategy: PublishStrategy,
    notification_type: &'static str,
) -> Result<(), PublishError> {
    let ends: Vec<HandlerEnd> = match strategy {
        PublishStrategy::Sequential => {
            let mut ends = Vec::with_capacity(subscribers.len());
            for subscriber in subscribers {
                // Not started once the publisher's token fired: counted as cancelled.
                let end = match token.check() {
                    Err(cancelled) => HandlerEnd::Cancelled(cancelled),
                    Ok(()) => run_one(subscriber, notification, token).await,
                };
                ends.push(end);
            }
            ends
        }
        PublishStrategy::Concurrent => {
            if let Err(cancelled) = token.check() {
                subscribers
                    .iter()
                    .map(|_| HandlerEnd::Cancelled(cancelled.clone()))
                    .collect()
            } else {
                join_all(
                    subscribers
                        .iter()
                        .map(|subscriber| run_one(subscriber, notification, token)),
                )
                .await
            }
        }
    };

    let mut error = PublishError {
        notification: notification_type,
        handlers: subscribers.len(),
        failures: Vec::new(),
        cancellations: Vec::new(),
    };
    for (subscriber, end) in subscribers.iter().zip(ends) {
        match end {
            HandlerEnd::Completed => {}
            HandlerEnd::Cancelled(cancelled) => error.cancellations.push(HandlerCancelled {
                handler: subscriber.name.clone(),
                cancelled,
            }),
            HandlerEnd::Failed(failure) => error.failures.push(HandlerFailed {
                handler: subscriber.name.clone(),
                error: failure,
            }),
        }
    }
    tracing::debug!(
        notification = notification_type,
        handlers = error.handlers,
        failed = error.failures.len(),
        cancelled = error.cancellations.len(),
        "notification published"
    );
    if error.failures.is_empty() && error.cancellations.is_empty() {
        Ok(())
    } else {
        Err(error)
    }
}

/// Some handlers of a published notification did not complete: how many there were, which
/// failed (and with what), which were cancelled (and why) — failures and cancellations
/// kept apart.
///
/// Its [`source`](StdError::source) is the first failure, or — if every handler that did
/// not complete was cancelled — the first [`Cancelled`]: so
/// [`gracefully::is_cancellation`] is true exactly when nothing failed, and code that
/// keeps cancellations out of failure logs treats a publish the same way.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Mediator, Notification, notification_fn};
///
/// struct OrderPlaced;
/// impl Notification for OrderPlaced {}
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let mediator = Mediator::builder()
///     .subscribe(notification_fn("mail", |_: &OrderPlaced, _t| async { Err::<(), _>("smtp down") }))
///     .subscribe(notification_fn("audit", |_: &OrderPlaced, _t| async { Ok::<_, gracefully_mediator::BoxError>(()) }))
///     .subscribe(notification_fn("search", |_: &OrderPlaced, token: CancellationToken| async move {
///         Err::<(), _>(gracefully::Cancelled::new(gracefully::Reason::deadline_exceeded()))
///     }))
///     .build()
///     .unwrap();
///
/// let err = mediator.publish(OrderPlaced, &CancellationToken::never()).await.unwrap_err();
/// assert_eq!((err.handlers(), err.failed(), err.cancelled()), (3, 1, 1));
/// assert_eq!(err.failures().next().unwrap().handler(), "mail");
/// assert_eq!(err.cancellations().next().unwrap().handler(), "search");
/// assert!(!gracefully::is_cancellation(&err)); // a genuine failure is among them
/// # }
/// ```
///
/// *Anchors:* .NET's `AggregateException` (from MediatR's `TaskWhenAllPublisher`), which
/// lumps `OperationCanceledException`s in with failures; MediatR #82 and #328 (users
/// asking for every handler to run and the errors to be aggregated).
#[derive(Debug)]
pub struct PublishError {
    notification: &'static str,
    handlers: usize,
    failures: Vec<HandlerFailed>,
    cancellations: Vec<HandlerCancelled>,
}

impl PublishError {
    /// The notification's type name.
    pub fn notification_type(&self) -> &'static str {
        self.notification
    }

    /// How many handlers the notification had.
    pub fn handlers(&self) -> usize {
        self.handlers
    }

    /// How many failed (returned an error that is not a cancellation, or panicked).
    pub fn failed(&self) -> usize {
        self.failures.len()
    }

    /// How many were cancelled (returned a cancellation, or were not started because the
    /// publisher's token had fired).
    pub fn cancelled(&self) -> usize {
        self.cancellations.len()
    }

    /// The failed handlers, in subscription order.
    pub fn failures(&self) -> impl Iterator<Item = &HandlerFailed> {
        self.failures.iter()
    }

    /// The cancelled handlers, in subscription order.
    pub fn cancellations(&self) -> impl Iterator<Item = &HandlerCancelled> {
        self.cancellations.iter()
    }
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "publishing `{}`: {} of {} handlers failed, {} cancelled",
            self.notification,
            self.failures.len(),
            self.handlers,
            self.cancellations.len()
        )?;
        let mut separator = " (";
        for failed in &self.failures {
            write!(
                f,
                "{separator}`{}` failed: {}",
                failed.handler, failed.error
            )?;
            separator = "; ";
        }
        for cancelled in &self.cancellations {
            write!(
                f,
                "{separator}`{}` cancelled: {}",
                cancelled.handler,
                cancelled.cancelled.reason()
            )?;
            separator = "; ";
        }
        if separator == "; " {
            f.write_str(")")?;
        }
        Ok(())
    }
}

impl StdError for PublishError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self.failures.first() {
            Some(failed) => Some(&*failed.error),
            None => self
                .cancellations
                .first()
                .map(|c| &c.cancelled as &(dyn StdError + 'static)),
        }
    }
}

/// A handler that failed, in a [`PublishError`].
#[derive(Debug)]
pub struct HandlerFailed {
    handler: Cow<'static, str>,
    error: BoxError,
}

impl HandlerFailed {
    /// The handler's [name](crate::NotificationHandler::name).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Its error ([`Panicked`] if it panicked).
    pub fn error(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }
}

/// A handler that was cancelled, in a [`PublishError`].
#[derive(Debug)]
pub struct HandlerCancelled {
    handler: Cow<'static, str>,
    cancelled: Cancelled,
}

impl HandlerCancelled {
    /// The handler's [name](crate::NotificationHandler::name).
    pub fn handler(&self) -> &str {
        &self.handler
    }

    /// Why it was cancelled.
    pub fn cancelled(&self) -> &Cancelled {
        &self.cancelled
    }
}
