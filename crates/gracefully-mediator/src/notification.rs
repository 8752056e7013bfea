//! Notifications and their handlers: [`Notification`], [`NotificationHandler`],
//! [`notification_fn`], and the [`PublishStrategy`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use gracefully::CancellationToken;

use crate::error::BoxError;

/// A message for every handler subscribed to its type (none, one or many): an event.
///
/// Handlers get it by reference, so it is shared, never cloned; `Sync` because handlers
/// may run concurrently.
///
/// *Anchors:* MediatR's `INotification`.
pub trait Notification: Send + Sync + 'static {}

/// Handles one [`Notification`] type; any number may subscribe to it.
///
/// Each handler gets its own token, a child of the publisher's (or, when published
/// detached — `Mediator::publish_detached`, feature `host` — of the host's hard stop). A
/// failure of one handler does not stop the others; neither does a panic, which is caught
/// and reported as a failure ([`Panicked`](crate::Panicked)).
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{BoxError, Notification, NotificationHandler};
///
/// struct OrderPlaced { id: u64 }
/// impl Notification for OrderPlaced {}
///
/// struct SendConfirmation;
///
/// impl NotificationHandler<OrderPlaced> for SendConfirmation {
///     async fn handle(&self, event: &OrderPlaced, token: CancellationToken) -> Result<(), BoxError> {
///         token.check()?;
///         println!("mail for order {}", event.id);
///         Ok(())
///     }
/// }
/// ```
///
/// *Anchors:* MediatR's `INotificationHandler<TNotification>`.
pub trait NotificationHandler<N: Notification>: Send + Sync + 'static {
    /// Handles `notification`, honouring `token`.
    ///
    /// # Cancel safety
    ///
    /// As [`RequestHandler::handle`](crate::RequestHandler::handle): cancellation is
    /// cooperative; the publisher drops this future only if its own caller drops the
    /// publish.
    fn handle(
        &self,
        notification: &N,
        token: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// The handler's name in a [`PublishError`](crate::PublishError) and in the host's
    /// shutdown report. Defaults to the type's name without its module path.
    fn name(&self) -> Cow<'static, str> {
        Cow::Owned(short_type_name(std::any::type_name::<Self>()))
    }
}

/// A [`NotificationHandler`] named `name` from a closure or function. The closure gets the
/// notification by reference and returns a `'static` future: copy what the future needs
/// out of the notification first.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_mediator::{Notification, notification_fn};
///
/// struct OrderPlaced { id: u64 }
/// impl Notification for OrderPlaced {}
///
/// let audit = notification_fn("audit", |event: &OrderPlaced, token: CancellationToken| {
///     let id = event.id;
///     async move {
///         token.check()?;
///         println!("audit: order {id}");
///         Ok::<_, gracefully::Cancelled>(())
///     }
/// });
/// ```
pub fn notification_fn<F>(name: impl Into<Cow<'static, str>>, f: F) -> NotificationFn<F> {
    NotificationFn {
        name: name.into(),
        f,
    }
}

/// The handler made by [`notification_fn`].
#[derive(Clone)]
pub struct NotificationFn<F> {
    name: Cow<'static, str>,
    f: F,
}

impl<N, F, Fut, E> NotificationHandler<N> for NotificationFn<F>
where
    N: Notification,
    F: Fn(&N, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError>,
{
    fn handle(
        &self,
        notification: &N,
        token: CancellationToken,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let fut = (self.f)(notification, token);
        async move { fut.await.map_err(Into::into) }
    }

    fn name(&self) -> Cow<'static, str> {
        self.name.clone()
    }
}

impl<F> fmt::Debug for NotificationFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationFn")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// How [`Mediator::publish`](crate::Mediator::publish) runs the handlers of one
/// notification. In both, every handler runs to its end whatever the others do (failures
/// are isolated and aggregated), each with a child of the publisher's token.
///
/// *Anchors:* MediatR's `INotificationPublisher` implementations
/// `ForeachAwaitPublisher` (its default, which stops at the first exception) and
/// `TaskWhenAllPublisher`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PublishStrategy {
    /// One after another, in subscription order. Once the publisher's token fires, the
    /// handlers not yet started are not started (they count as cancelled). The default.
    #[default]
    Sequential,
    /// All at once, awaited together on the publishing task: their waits overlap, so the
    /// publish takes as long as the slowest handler, not the sum. They are polled by the
    /// publishing task, not spawned, so nothing outlives the publish — spawn CPU-heavy work
    /// (or publish detached — `Mediator::publish_detached`, feature `host` — where each
    /// handler is a task of its own). If the publisher's token has fired already, none is
    /// started (all count as cancelled).
    Concurrent,
}

/// A subscribed handler, type-erased: its name and the handler.
pub(crate) struct Subscriber<N> {
    pub(crate) name: Cow<'static, str>,
    pub(crate) handler: Arc<dyn ErasedNotificationHandler<N>>,
}

impl<N> Clone for Subscriber<N> {
    fn clone(&self) -> Self {
        Subscriber {
            name: self.name.clone(),
            handler: Arc::clone(&self.handler),
        }
    }
}

/// [`NotificationHandler`] with its future boxed, so handlers of one notification type
/// can share a list.
pub(crate) trait ErasedNotificationHandler<N>: Send + Sync + 'static {
    fn handle<'a>(
        &'a self,
        notification: &'a N,
        token: CancellationToken,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
}

impl<N, H> ErasedNotificationHandler<N> for H
where
    N: Notification,
    H: NotificationHandler<N>,
{
    fn handle<'a>(
        &'a self,
        notification: &'a N,
        token: CancellationToken,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(NotificationHandler::handle(self, notification, token))
    }
}

/// `std::any::type_name` without module paths: `app::mail::Send<app::Order>` →
/// `Send<Order>`.
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut segment_start = 0;
    for (i, c) in full.char_indices() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            continue;
        }
        out.push_str(last_path_segment(&full[segment_start..i]));
        out.push(c);
        segment_start = i + c.len_utf8();
    }
    out.push_str(last_path_segment(&full[segment_start..]));
    out
}

fn last_path_segment(path: &str) -> &str {
    path.rsplit("::").next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    #[test]
    fn short_type_name_drops_module_paths_also_inside_generics() {
        assert_eq!(short_type_name("app::mail::SendMail"), "SendMail");
        assert_eq!(
            short_type_name("app::Wrap<app::mail::Send, alloc::string::String>"),
            "Wrap<Send, String>"
        );
        assert_eq!(short_type_name("Plain"), "Plain");
        assert_eq!(short_type_name("&[app::Item]"), "&[Item]");
    }
}
