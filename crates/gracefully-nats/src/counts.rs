//! [`Counts`]: what a consumer did with its messages, for its row of the shutdown report.

use gracefully_host::ServiceContext;

/// The report keys, in the order the row shows them.
pub(crate) const HANDLED: &str = "handled";
pub(crate) const HANDED_BACK_AT_DRAIN: &str = "handed back at drain";
pub(crate) const CANCELLED_HANDED_BACK: &str = "cancelled and handed back";
pub(crate) const IN_FLIGHT_AT_ABORT: &str = "in flight at abort";
pub(crate) const RETRIED: &str = "retried";
pub(crate) const DEAD_LETTERED: &str = "dead-lettered";
pub(crate) const DISCONNECTS: &str = "disconnects";
pub(crate) const HANDED_BACK_AT_DISCONNECT: &str = "handed back at disconnect";
pub(crate) const LEFT_FOR_ACK_WAIT: &str = "left for AckWait";

/// How one message's delivery ended (the in-flight future's output).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The handler succeeded: acked.
    Handled,
    /// The handler stopped because its token fired: handed back (`-NAK`, no delay).
    CancelledHandedBack,
    /// The handler failed: handed back with a delay (`-NAK {"delay": …}`).
    Retried,
    /// Undecodable or out of deliveries: dead-lettered and terminated.
    DeadLettered,
}

/// Counts not yet added to the service's report row. Kept by the consumer's task (no
/// atomics) and added to the row when a run of `execute` ends, however it ends.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    pub(crate) handled: u64,
    pub(crate) handed_back_at_drain: u64,
    pub(crate) cancelled_handed_back: u64,
    pub(crate) in_flight_at_abort: u64,
    pub(crate) retried: u64,
    pub(crate) dead_lettered: u64,
    pub(crate) disconnects: u64,
    pub(crate) handed_back_at_disconnect: u64,
    /// Messages to be handed back that could not be: the connection was down (or would
    /// not take them in time). Nothing was sent for them; JetStream redelivers them after
    /// AckWait. The hand-back counts above count only what was sent.
    pub(crate) left_for_ack_wait: u64,
}

impl Counts {
    pub(crate) fn settled(&mut self, settled: Settled) {
        match settled {
            Settled::Handled => self.handled += 1,
            Settled::CancelledHandedBack => self.cancelled_handed_back += 1,
            Settled::Retried => self.retried += 1,
            Settled::DeadLettered => self.dead_lettered += 1,
        }
    }

    /// Adds the counts to the report row (every key, zeros too, so every consumer's row
    /// reads the same) and starts again from zero.
    pub(crate) fn record(&mut self, cx: &ServiceContext) {
        let c = std::mem::take(self);
        for (key, n) in [
            (HANDLED, c.handled),
            (HANDED_BACK_AT_DRAIN, c.handed_back_at_drain),
            (CANCELLED_HANDED_BACK, c.cancelled_handed_back),
            (IN_FLIGHT_AT_ABORT, c.in_flight_at_abort),
            (RETRIED, c.retried),
            (DEAD_LETTERED, c.dead_lettered),
            (DISCONNECTS, c.disconnects),
            (HANDED_BACK_AT_DISCONNECT, c.handed_back_at_disconnect),
            (LEFT_FOR_ACK_WAIT, c.left_for_ack_wait),
        ] {
            cx.count(key, n);
        }
    }
}
