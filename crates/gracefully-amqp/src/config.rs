//! [`Config`]: the checked settings a consumer runs with, as
//! [`ConsumerBuilder::build`](crate::ConsumerBuilder::build) makes them.

use std::time::Duration;

use lapin::types::FieldTable;
use lapin::uri::AMQPUri;

use crate::retry::{Backoff, DeadLetter};

/// The checked settings a consumer runs with.
pub(crate) struct Config {
    pub(crate) uri: AMQPUri,
    /// The URL with its password removed, for errors and logs.
    pub(crate) url_display: String,
    pub(crate) queue: String,
    pub(crate) declare: bool,
    pub(crate) queue_arguments: FieldTable,
    pub(crate) bindings: Vec<(String, String)>,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: u16,
    pub(crate) max_deliveries: u32,
    pub(crate) retry_backoff: Backoff,
    pub(crate) dead_letter: DeadLetter,
    pub(crate) reconnect_backoff: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) connection_name: String,
}

impl Config {
    /// The distinct non-zero delays of the retry queues needed for `max_deliveries`, in
    /// increasing order.
    ///
    /// Not one entry per possible failure: `max_deliveries` may be anything up to
    /// `u32::MAX`, and a list that long (tens of gigabytes) aborted the process at start.
    /// The delays never decrease and stop growing once they reach the backoff's cap, which
    /// [`Backoff::delay`] reaches after at most 32 failures; the walk stops there, so this
    /// is at most 32 entries and 32 steps whatever the settings. The delay of any later
    /// failure is the cap, computed on demand by [`Backoff::delay`] when a message fails.
    pub(crate) fn retry_delays(&self) -> Vec<Duration> {
        let cap = self.retry_backoff.delay(u32::MAX);
        let mut delays: Vec<Duration> = Vec::new();
        // Failures 1 to max_deliveries − 1 are retried; the last delivery's is dead-lettered.
        for failures in 1..self.max_deliveries {
            let delay = self.retry_backoff.delay(failures);
            if !delay.is_zero() && delays.last() != Some(&delay) {
                delays.push(delay);
            }
            if delay == cap {
                break;
            }
        }
        delays
    }
}
