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
    /// The distinct non-zero delays of the retry queues needed for `max_deliveries`.
    pub(crate) fn retry_delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_deliveries)
            .map(|failures| self.retry_backoff.delay(failures))
            .filter(|d| !d.is_zero())
            .collect();
        delays.dedup();
        delays
    }
}
