//! What happens to a message whose handler failed: [`Backoff`] (when it is tried again) and
//! [`DeadLetter`] (where it goes once its deliveries are used up, or at once if it cannot be
//! decoded). The mechanism is in `settle.rs`; the queues it needs are declared in
//! `session.rs`.

use std::fmt;
use std::time::Duration;

/// How long to wait before a message whose handler failed is delivered again — and, for
/// the consumer's connection, before each reconnect attempt.
///
/// RabbitMQ has no delayed `basic.nack`, so a retry is a copy of the message published to
/// a *retry queue* with a queue-wide TTL that dead-letters back to the work queue (see the
/// crate docs, "Retries"). There is one retry queue per distinct delay, named
/// `<queue>.retry.<ms>ms`, so every message in one retry queue has the same TTL and none
/// waits behind a longer one. A zero delay republishes to the work queue itself.
///
/// ```
/// use std::time::Duration;
/// use gracefully_amqp::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_millis(500), Duration::from_secs(4));
/// assert_eq!(backoff.delay(1), Duration::from_millis(500)); // after the first failure
/// assert_eq!(backoff.delay(2), Duration::from_secs(1));
/// assert_eq!(backoff.delay(5), Duration::from_secs(4));     // capped
/// ```
///
/// *Anchors:* MassTransit's `UseDelayedRedelivery(r => r.Intervals(…))` (which needs the
/// delayed-exchange plugin; this needs none), NServiceBus's delayed retries, JetStream's
/// `-NAK` with a delay.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Doubles from `initial` after each failure, never past `max`.
    pub fn exponential(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The same delay after every failure.
    pub fn fixed(delay: Duration) -> Backoff {
        Backoff {
            initial: delay,
            max: delay,
        }
    }

    /// No delay: a failed message goes straight back to the work queue (with its failure
    /// counted, so `max_deliveries` still applies).
    pub fn none() -> Backoff {
        Backoff::fixed(Duration::ZERO)
    }

    /// The delay after the `failures`-th failure (`failures` ≥ 1; 0 is treated as 1),
    /// rounded down to whole milliseconds (the unit of RabbitMQ's TTLs) and at most
    /// [`MAX_DELAY`](Self::MAX_DELAY).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        let delay = self
            .initial
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.max)
            .min(self.max)
            .min(Backoff::MAX_DELAY);
        Duration::from_millis(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }

    /// The longest delay: 2³² − 1 ms (about 49.7 days), the largest TTL RabbitMQ takes.
    pub const MAX_DELAY: Duration = Duration::from_millis(u32::MAX as u64);

    /// The delay with ±20% jitter, for reconnects (a retry queue's TTL cannot vary per
    /// message without making later messages wait behind earlier ones).
    pub(crate) fn jittered(&self, failures: u32) -> Duration {
        self.delay(failures).mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}

impl Default for Backoff {
    /// Exponential from 1 s to 60 s: with the default 5 deliveries, retries after 1, 2, 4
    /// and 8 s.
    fn default() -> Backoff {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
    }
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.initial == self.max {
            write!(f, "Backoff::fixed({:?})", self.initial)
        } else {
            write!(
                f,
                "Backoff::exponential({:?}, {:?})",
                self.initial, self.max
            )
        }
    }
}

/// Where a message goes when it is given up on: its handler failed on its last allowed
/// delivery ([`max_deliveries`](crate::ConsumerBuilder::max_deliveries)), or its body could
/// not be decoded. It is published there (with publisher confirms) with headers naming the
/// error — `x-gracefully-error`, `x-gracefully-error-kind` (`failed` or `undecodable`),
/// `x-gracefully-deliveries`, `x-gracefully-queue` — and only then acked.
///
/// The default is the queue `<queue>.dead`, declared (durable) if missing.
///
/// ```
/// use gracefully_amqp::DeadLetter;
///
/// let parking = DeadLetter::queue("orders.parking-lot");      // declared if missing
/// let routed = DeadLetter::exchange("dead-letters", "orders"); // must exist
/// # let _ = (parking, routed);
/// ```
///
/// *Anchors:* MassTransit's `_error` queue (with `MT-Fault-*` headers), NServiceBus's
/// `error` queue (with `NServiceBus.ExceptionInfo.*` headers). RabbitMQ's own
/// dead-lettering (`x-dead-letter-exchange` with `basic.nack requeue=false`) is not used for
/// this because it cannot say *why*: it adds `x-death` with the reason `rejected`, not the
/// error.
#[derive(Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub(crate) target: Target,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A queue, published to through the default exchange; declared if missing.
    Queue(String),
    /// An exchange and routing key; the exchange must exist.
    Exchange {
        exchange: String,
        routing_key: String,
    },
}

impl DeadLetter {
    /// The queue `name`, reached through the default exchange; declared (durable) at start
    /// if it does not exist. [`build`](crate::ConsumerBuilder::build) refuses an empty
    /// name, one over 255 bytes, and the consumed queue itself.
    pub fn queue(name: impl Into<String>) -> DeadLetter {
        DeadLetter {
            target: Target::Queue(name.into()),
        }
    }

    /// Publish to `exchange` with `routing_key`. The exchange must exist (checked at
    /// start); a message it cannot route is not acked but handed back after a delay, with
    /// an error logged, so nothing is lost to a missing binding.
    ///
    /// `exchange` may be `""`, the default exchange, which routes to the queue named
    /// `routing_key` (not declared or checked); then the key must not be empty.
    /// [`build`](crate::ConsumerBuilder::build) refuses names over 255 bytes.
    pub fn exchange(exchange: impl Into<String>, routing_key: impl Into<String>) -> DeadLetter {
        DeadLetter {
            target: Target::Exchange {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            },
        }
    }

    /// `(exchange, routing key)` to publish to.
    pub(crate) fn address(&self) -> (&str, &str) {
        match &self.target {
            Target::Queue(name) => ("", name),
            Target::Exchange {
                exchange,
                routing_key,
            } => (exchange, routing_key),
        }
    }
}

impl fmt::Debug for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Queue(name) => write!(f, "queue `{name}`"),
            Target::Exchange {
                exchange,
                routing_key,
            } => write!(f, "exchange `{exchange}` (routing key `{routing_key}`)"),
        }
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The name of the retry queue for `delay` in front of `queue`.
pub(crate) fn retry_queue_name(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_backoff_doubles_from_the_initial_delay_and_stops_at_the_cap() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_millis(1000));
        let delays: Vec<u64> = (1..=6).map(|n| b.delay(n).as_millis() as u64).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(1000));
    }

    #[test]
    fn a_huge_backoff_stops_at_the_longest_ttl_instead_of_overflowing() {
        let b = Backoff::exponential(Duration::from_secs(u64::MAX / 4), Duration::MAX);
        assert_eq!(b.delay(40), Backoff::MAX_DELAY);
        let b = Backoff::exponential(Duration::from_secs(1), Duration::MAX);
        assert_eq!(b.delay(u32::MAX), Backoff::MAX_DELAY);
    }

    #[test]
    fn delays_are_whole_milliseconds_because_ttls_are() {
        let b = Backoff::fixed(Duration::from_micros(1500));
        assert_eq!(b.delay(3), Duration::from_millis(1));
        assert_eq!(Backoff::none().delay(1), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let b = Backoff::fixed(Duration::from_millis(1000));
        for _ in 0..1000 {
            let d = b.jittered(1);
            assert!(d >= Duration::from_millis(800) && d <= Duration::from_millis(1200));
        }
    }

    #[test]
    fn retry_queues_are_named_after_their_queue_and_delay() {
        assert_eq!(
            retry_queue_name("orders", Duration::from_millis(1500)),
            "orders.retry.1500ms"
        );
    }

    #[test]
    fn a_dead_letter_queue_is_reached_through_the_default_exchange() {
        assert_eq!(DeadLetter::queue("q.dead").address(), ("", "q.dead"));
        assert_eq!(DeadLetter::exchange("dlx", "rk").address(), ("dlx", "rk"));
    }
}
