//! Settling a delivery: turning a handler's [`Outcome`] into what the broker is told.
//!
//! | outcome | sent | counted as |
//! |---|---|---|
//! | `Done` | `basic.ack` | handled |
//! | `Cancelled` (token fired) | `basic.nack requeue` | cancelled and handed back |
//! | `Failed`, deliveries left | copy → retry queue (confirmed), then `basic.ack` | retried |
//! | a copy the broker refused | `basic.nack requeue`, after a pause | retried |
//! | `Failed` on the last delivery, `Undecodable` | copy → dead-letter target (confirmed), then `basic.ack` | dead-lettered |
//! | anything, connection lost | nothing can be sent; the broker redelivers | in flight at disconnect |
//!
//! This is the only place a message is acked (`consumer.rs`, invariant 2). The original is
//! acked only after its copy is confirmed, so a crash in between leaves a
//! duplicate, never a loss (at-least-once). A copy the broker will not take (no route, a
//! `basic.nack`) is not acked: the original is handed back after the backoff's largest
//! delay, with an error logged, so a broken dead-letter route loses nothing and does not
//! spin.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use gracefully::CancellationToken;
use lapin::Acker;
use lapin::options::{BasicAckOptions, BasicNackOptions};

use crate::BoxError;
use crate::config::Config;
use crate::handler::{Dispatch, Outcome};
use crate::headers::{self, Edit};
use crate::message::Envelope;
use crate::retry::retry_queue_name;
use crate::session::{PublishError, Session};
use crate::stats::{ConsumerStats, Counters};

/// What settling needs besides the delivery.
pub(crate) struct Settle<'a> {
    pub(crate) config: &'a Config,
    pub(crate) session: &'a Session,
    pub(crate) stats: &'a ConsumerStats,
    /// The decoder and handler, to name what a body was decoded as in log lines.
    pub(crate) dispatch: &'a dyn Dispatch,
}

impl Settle<'_> {
    fn counters(&self) -> &Counters {
        self.stats.counters()
    }

    fn count(&self, pick: impl Fn(&Counters) -> &AtomicU64) {
        ConsumerStats::add(pick(self.counters()), 1);
    }

    /// Settles one delivery. Never fails: what cannot be sent is left to the broker's
    /// redelivery, and counted.
    pub(crate) async fn settle(
        &self,
        envelope: &Envelope,
        acker: &Acker,
        outcome: Outcome,
        token: &CancellationToken,
    ) {
        if self.session.is_lost() {
            self.lost(envelope, "the handler ended");
            return;
        }
        match outcome {
            Outcome::Done => {
                if self.ack(envelope, acker).await {
                    self.count(|c| &c.handled);
                }
            }
            Outcome::Cancelled(error) => {
                tracing::debug!(
                    queue = %self.config.queue,
                    message_id = envelope.id().unwrap_or(""),
                    reason = %error,
                    "handler cancelled; message handed back"
                );
                if self.nack_requeue(envelope, acker).await {
                    self.count(|c| &c.cancelled_handed_back);
                }
            }
            Outcome::Failed(error) => self.failed(envelope, acker, error, token).await,
            Outcome::Undecodable(error) => {
                let text = headers::error_text(&*error);
                tracing::error!(
                    queue = %self.config.queue,
                    message_id = envelope.id().unwrap_or(""),
                    routing_key = envelope.first_routing_key(),
                    error = %text,
                    "message could not be decoded as {}; dead-lettering it to {} at once (retrying cannot fix a body)",
                    self.dispatch.describe(),
                    self.config.dead_letter,
                );
                self.dead_letter(envelope, acker, &text, "undecodable", token)
                    .await;
            }
        }
    }

    async fn failed(
        &self,
        envelope: &Envelope,
        acker: &Acker,
        error: BoxError,
        token: &CancellationToken,
    ) {
        let text = headers::error_text(&*error);
        let failures = envelope.failures.saturating_add(1);
        if failures >= self.config.max_deliveries {
            tracing::error!(
                queue = %self.config.queue,
                message_id = envelope.id().unwrap_or(""),
                deliveries = failures,
                error = %text,
                "handler failed on the message's last delivery; dead-lettering it to {}",
                self.config.dead_letter,
            );
            self.dead_letter(envelope, acker, &text, "failed", token)
                .await;
            return;
        }
        let delay = self.config.retry_backoff.delay(failures);
        tracing::warn!(
            queue = %self.config.queue,
            message_id = envelope.id().unwrap_or(""),
            delivery = failures,
            max_deliveries = self.config.max_deliveries,
            retry_in = ?delay,
            error = %text,
            "handler failed; the message will be retried"
        );
        let routing_key = if delay.is_zero() {
            self.config.queue.clone()
        } else {
            retry_queue_name(&self.config.queue, delay)
        };
        let properties = Edit::of(&envelope.properties)
            .int(headers::FAILURES, failures)
            .text(headers::ERROR, &text)
            .text_once(headers::EXCHANGE, envelope.exchange.as_str())
            .text_once(headers::ROUTING_KEY, envelope.routing_key.as_str())
            .apply(&envelope.properties);
        match self
            .session
            .publish("", &routing_key, &envelope.body, properties)
            .await
        {
            Ok(()) => {
                if self.ack(envelope, acker).await {
                    self.count(|c| &c.retried);
                }
            }
            Err(error) => {
                self.copy_refused(
                    envelope,
                    acker,
                    &format!("retry queue `{routing_key}`"),
                    error,
                    token,
                )
                .await;
            }
        }
    }

    async fn dead_letter(
        &self,
        envelope: &Envelope,
        acker: &Acker,
        error: &str,
        kind: &str,
        token: &CancellationToken,
    ) {
        let properties = Edit::of(&envelope.properties)
            .text(headers::ERROR, error)
            .text(headers::ERROR_KIND, kind)
            .int(headers::DELIVERIES, envelope.delivery_count())
            .text(headers::QUEUE, &self.config.queue)
            .text_once(headers::EXCHANGE, envelope.exchange.as_str())
            .text_once(headers::ROUTING_KEY, envelope.routing_key.as_str())
            .apply(&envelope.properties);
        let (exchange, routing_key) = self.config.dead_letter.address();
        match self
            .session
            .publish(exchange, routing_key, &envelope.body, properties)
            .await
        {
            Ok(()) => {
                if self.ack(envelope, acker).await {
                    self.count(|c| &c.dead_lettered);
                }
            }
            Err(error) => {
                let target = self.config.dead_letter.to_string();
                self.copy_refused(envelope, acker, &target, error, token)
                    .await;
            }
        }
    }

    /// The copy for a retry or a dead letter was not confirmed. Keep the original: hand it
    /// back, after a pause so a broken route does not spin (cut short if the token fires).
    async fn copy_refused(
        &self,
        envelope: &Envelope,
        acker: &Acker,
        target: &str,
        error: PublishError,
        token: &CancellationToken,
    ) {
        if self.session.is_lost() {
            self.lost(envelope, "publishing its copy");
            return;
        }
        let pause = self
            .config
            .retry_backoff
            .delay(u32::MAX)
            .max(Duration::from_secs(1));
        tracing::error!(
            queue = %self.config.queue,
            message_id = envelope.id().unwrap_or(""),
            error = %error,
            "could not publish the message's copy to {target}; the message is kept and handed back in {pause:?}"
        );
        let _ = token.run_until_cancelled(tokio::time::sleep(pause)).await;
        if self.nack_requeue(envelope, acker).await {
            self.count(|c| &c.retried);
        }
    }

    /// Acks; `false` (counted as lost) if the ack could not be sent.
    async fn ack(&self, envelope: &Envelope, acker: &Acker) -> bool {
        match self
            .session
            .unless_lost(acker.ack(BasicAckOptions::default()))
            .await
        {
            Some(Ok(_)) => true,
            Some(Err(error)) => {
                self.unsent(envelope, "ack", &error);
                false
            }
            None => {
                self.lost(envelope, "ack");
                false
            }
        }
    }

    /// Hands the message back (`basic.nack requeue`); `false` if it could not be sent.
    async fn nack_requeue(&self, envelope: &Envelope, acker: &Acker) -> bool {
        let options = BasicNackOptions {
            multiple: false,
            requeue: true,
        };
        match self.session.unless_lost(acker.nack(options)).await {
            Some(Ok(_)) => true,
            Some(Err(error)) => {
                self.unsent(envelope, "nack", &error);
                false
            }
            None => {
                self.lost(envelope, "nack");
                false
            }
        }
    }

    fn unsent(&self, envelope: &Envelope, what: &str, error: &lapin::Error) {
        self.session
            .mark_lost(format!("the {what} of a message failed: {error}"));
        self.lost(envelope, what);
    }

    fn lost(&self, envelope: &Envelope, when: &str) {
        tracing::info!(
            queue = %self.config.queue,
            message_id = envelope.id().unwrap_or(""),
            "the broker connection was lost before the message was settled ({when}); the broker redelivers it"
        );
        self.count(|c| &c.in_flight_at_disconnect);
    }
}
