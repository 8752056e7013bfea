//! The server's settings, as its setters left them (each checked by `config_error.rs`).

use std::time::Duration;

use crate::incoming_deadline::IncomingDeadlines;
use crate::policy::DisconnectPolicy;

/// The server's settings: each setter of `HttpServer` checks its value (see
/// [`ConfigError`](crate::ConfigError)).
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_grace: Duration,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) disconnect_policy: DisconnectPolicy,
    pub(crate) max_header_bytes: usize,
    pub(crate) token_in_extensions: bool,
    pub(crate) incoming_deadlines: IncomingDeadlines,
    pub(crate) record_operations: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            header_read_timeout: Duration::from_secs(10),
            idle_grace: Duration::from_secs(1),
            request_timeout: None,
            disconnect_policy: DisconnectPolicy::Cooperative,
            max_header_bytes: 64 * 1024,
            token_in_extensions: false,
            incoming_deadlines: IncomingDeadlines::default(),
            record_operations: true,
        }
    }
}
