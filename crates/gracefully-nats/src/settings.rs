//! [`Settings`]: a consumer's validated configuration, as the builder leaves it.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::ConnectOptions;
use async_nats::jetstream::{consumer::pull, stream};

use crate::backoff::Backoff;

/// The stream to bind, or to create if missing.
#[derive(Debug)]
pub(crate) enum StreamSpec {
    Bind(String),
    Create(Box<stream::Config>),
}

/// Everything [`ConsumerBuilder::build`](crate::ConsumerBuilder::build) checked.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) connect_options: ConnectOptions,
    pub(crate) stream: StreamSpec,
    pub(crate) stream_name: Arc<str>,
    pub(crate) consumer: Arc<str>,
    /// Durable name set, ack policy explicit.
    pub(crate) consumer_config: pull::Config,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    pub(crate) max_deliveries: u64,
    pub(crate) backoff: Backoff,
    pub(crate) dead_letter: Option<String>,
    /// How long a pull request waits for messages (before the consumer's `max_expires`).
    pub(crate) expires: Duration,
    /// The idle heartbeat asked of each pull request.
    pub(crate) idle_heartbeat: Duration,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("url", &crate::error::redact(&self.url))
            .field("stream", &self.stream_name)
            .field("consumer", &self.consumer)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("max_deliveries", &self.max_deliveries)
            .field("backoff", &self.backoff)
            .field("dead_letter", &self.dead_letter)
            .finish_non_exhaustive()
    }
}
