//! [`ConsumerStats`]: a consumer's counts, live, and its row of the shutdown report.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gracefully_host::ServiceContext;

/// A consumer's counts since it was built, readable while it runs (for metrics, or a
/// test) — the same numbers its row of the host's shutdown report shows. Cheap to clone;
/// every clone reads the same counters. Get one from [`Consumer::stats`](crate::Consumer::stats).
///
/// Every delivery ends in exactly one of: handled, handed back at drain, cancelled and
/// handed back, retried, dead-lettered, in flight at a disconnect, in flight at abort.
///
/// *Anchors:* none of MassTransit, NServiceBus or lapin counts what a shutdown did with
/// each message.
#[derive(Clone, Default)]
pub struct ConsumerStats {
    counters: Arc<Counters>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) handed_back_at_drain: AtomicU64,
    pub(crate) cancelled_handed_back: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) in_flight: AtomicU64,
    pub(crate) in_flight_at_disconnect: AtomicU64,
    pub(crate) in_flight_at_abort: AtomicU64,
    pub(crate) reconnects: AtomicU64,
}

/// The report row's keys, in the order they appear.
pub(crate) const HANDLED: &str = "handled";
pub(crate) const HANDED_BACK_AT_DRAIN: &str = "handed back at drain";
pub(crate) const CANCELLED_HANDED_BACK: &str = "cancelled and handed back";
pub(crate) const IN_FLIGHT_AT_ABORT: &str = "in flight at abort";
pub(crate) const RETRIED: &str = "retried";
pub(crate) const DEAD_LETTERED: &str = "dead-lettered";
pub(crate) const IN_FLIGHT_AT_DISCONNECT: &str = "in flight at disconnect";
pub(crate) const RECONNECTS: &str = "reconnects";

impl ConsumerStats {
    pub(crate) fn counters(&self) -> &Counters {
        &self.counters
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Messages whose handler succeeded and whose ack was sent.
    pub fn handled(&self) -> u64 {
        Self::get(&self.counters.handled)
    }

    /// Messages prefetched but not started when the drain began, handed back at once
    /// (`basic.nack requeue`) so another consumer gets them now.
    pub fn handed_back_at_drain(&self) -> u64 {
        Self::get(&self.counters.handed_back_at_drain)
    }

    /// Messages whose handler stopped because its token fired (the cancel phase) and that
    /// were handed back at once, without using up a delivery.
    pub fn cancelled_handed_back(&self) -> u64 {
        Self::get(&self.counters.cancelled_handed_back)
    }

    /// Failed messages sent to a retry queue (or straight back, with no backoff) — and
    /// messages whose copy the retry queue or dead-letter target refused, handed back after
    /// a pause.
    pub fn retried(&self) -> u64 {
        Self::get(&self.counters.retried)
    }

    /// Messages dead-lettered: failed on their last delivery, or undecodable.
    pub fn dead_lettered(&self) -> u64 {
        Self::get(&self.counters.dead_lettered)
    }

    /// Handlers running now.
    pub fn in_flight(&self) -> u64 {
        Self::get(&self.counters.in_flight)
    }

    /// Messages in flight when the broker connection was lost: their tokens fired with
    /// `Disconnected`, and the broker redelivers them.
    pub fn in_flight_at_disconnect(&self) -> u64 {
        Self::get(&self.counters.in_flight_at_disconnect)
    }

    /// Handlers still running when the host aborted (they ignored both the drain and their
    /// token): dropped; the broker redelivers their messages when the connection closes.
    pub fn in_flight_at_abort(&self) -> u64 {
        Self::get(&self.counters.in_flight_at_abort)
    }

    /// Connections re-established after a lost one.
    pub fn reconnects(&self) -> u64 {
        Self::get(&self.counters.reconnects)
    }

    /// Writes the counts into the service's row of the shutdown report (replacing what an
    /// earlier run of `execute` wrote: the counts are totals).
    pub(crate) fn record(&self, cx: &ServiceContext) {
        for (key, value) in [
            (HANDLED, self.handled()),
            (HANDED_BACK_AT_DRAIN, self.handed_back_at_drain()),
            (CANCELLED_HANDED_BACK, self.cancelled_handed_back()),
            (IN_FLIGHT_AT_ABORT, self.in_flight_at_abort()),
            (RETRIED, self.retried()),
            (DEAD_LETTERED, self.dead_lettered()),
            (IN_FLIGHT_AT_DISCONNECT, self.in_flight_at_disconnect()),
            (RECONNECTS, self.reconnects()),
        ] {
            cx.detail(key, value);
        }
    }
}

impl fmt::Debug for ConsumerStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerStats")
            .field("handled", &self.handled())
            .field("handed_back_at_drain", &self.handed_back_at_drain())
            .field("cancelled_handed_back", &self.cancelled_handed_back())
            .field("retried", &self.retried())
            .field("dead_lettered", &self.dead_lettered())
            .field("in_flight", &self.in_flight())
            .field("in_flight_at_disconnect", &self.in_flight_at_disconnect())
            .field("in_flight_at_abort", &self.in_flight_at_abort())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}
