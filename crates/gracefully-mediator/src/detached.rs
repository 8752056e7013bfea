//! Fire-and-forget publishing as tracked tasks of the host (feature `host`):
//! [`Mediator::publish_detached`].

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::mediator::Mediator;
use crate::notification::{Notification, short_type_name};

impl Mediator {
    /// Publishes `notification` without waiting: each subscribed handler runs as a
    /// *tracked task* of the host ([`Lifetime::spawn`](gracefully_host::Lifetime::spawn)),
    /// so the caller returns at once, and a shutdown drains them like any in-flight work.
    ///
    /// Each handler's token is a child of the host's **hard stop** — not of the caller's
    /// token, which usually ends with the caller's request (the mail must still go out when
    /// the client that placed the order hangs up). So, per the shutdown contract
    /// (docs/architecture.md, "The shutdown contract"): during the drain the handlers run
    /// on and may finish; in the cancel phase their tokens fire with
    /// [`Shutdown`](gracefully::ReasonKind::Shutdown); a handler still running at the
    /// abort is dropped and **named in the shutdown report** — as `"<handler>
    /// (<notification>)"`, e.g. `SendConfirmation (OrderPlaced)`, one line per name and
    /// outcome with a count. A failure is logged by the host as it happens and counted in
    /// the report; a cancellation is counted apart, never as a failure.
    ///
    /// The handlers run concurrently (each is a task), whatever the
    /// [`PublishStrategy`](crate::PublishStrategy). The host used is the one given to
    /// [`MediatorBuilder::lifetime`](crate::MediatorBuilder::lifetime), else the one
    /// running now ([`Lifetime::current`](gracefully_host::Lifetime::current)).
    ///
    /// Must be called from within a tokio runtime.
    ///
    /// # Errors
    ///
    /// [`NoHost`] if there is no host to track the tasks (nothing is spawned: running them
    /// untracked would be the very fire-and-forget MediatR users are warned against).
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracefully::{CancellationToken, Reason};
    /// use gracefully_host::Outcome;
    /// use gracefully_mediator::{Mediator, Notification, notification_fn};
    /// use gracefully_test::{RunningHost, test_host};
    ///
    /// struct OrderPlaced;
    /// impl Notification for OrderPlaced {}
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let host = test_host().build().unwrap();
    /// let mediator = Mediator::builder()
    ///     .subscribe(notification_fn("send-mail", |_: &OrderPlaced, token: CancellationToken| async move {
    ///         // a slow mail server; stops if the host's cancel phase comes first
    ///         token.run_until_cancelled(tokio::time::sleep(Duration::from_millis(50))).await
    ///     }))
    ///     .lifetime(host.lifetime())
    ///     .build()
    ///     .unwrap();
    /// let running = RunningHost::start(host).await.unwrap();
    ///
    /// mediator.publish_detached(OrderPlaced).unwrap(); // returns at once
    ///
    /// // The shutdown waits for the mail (its drain phase), and says so.
    /// let report = running.stop(Reason::shutdown()).await.unwrap();
    /// let mail = report.entry("send-mail (OrderPlaced)").unwrap();
    /// assert_eq!(mail.outcome(), &Outcome::Completed);
    /// # }
    /// ```
    ///
    /// *Anchors:* MediatR #349 and #382 (fire-and-forget publishing; `Task.Run` escapes the
    /// request's DI scope and the host's shutdown, which then neither waits for it nor
    /// reports it); tokio-util's `TaskTracker` (no names, no report).
    pub fn publish_detached<N: Notification>(&self, notification: N) -> Result<(), NoHost> {
        let lifetime = self.lifetime().ok_or(NoHost {
            notification: std::any::type_name::<N>(),
        })?;
        let subscribers = self.subscribers::<N>();
        if subscribers.is_empty() {
            return Ok(());
        }
        let notification = Arc::new(notification);
        let notification_name = short_type_name(std::any::type_name::<N>());
        for subscriber in subscribers {
            // docs/architecture.md, "The shutdown contract", rule 1: a child of hard stop,
            // so the drain lets it finish and only the cancel phase fires it.
            let token = lifetime.hard_stop().child().token();
            let subscriber = subscriber.clone();
            let notification = Arc::clone(&notification);
            let name = format!("{} ({notification_name})", subscriber.name);
            lifetime.spawn(name, async move {
                let result = subscriber.handler.handle(&notification, token).await;
                if let Err(error) = &result
                    && gracefully::is_cancellation(&**error)
                {
                    // Rule 2: an outcome, not an error (the host counts it as cancelled).
                    tracing::debug!(
                        notification = std::any::type_name::<N>(),
                        handler = %subscriber.name,
                        %error,
                        "detached notification handler cancelled"
                    );
                }
                result
            });
        }
        Ok(())
    }
}

/// [`Mediator::publish_detached`] found no host to run the handlers as tracked tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoHost {
    notification: &'static str,
}

impl NoHost {
    /// The notification's type name.
    pub fn notification_type(&self) -> &'static str {
        self.notification
    }
}

impl fmt::Display for NoHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot publish `{}` detached: no host to run its handlers as tracked tasks; give \
             the builder one with `MediatorBuilder::lifetime(host.lifetime())`, or publish \
             while `Host::run` runs",
            self.notification
        )
    }
}

impl StdError for NoHost {}
