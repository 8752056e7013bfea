//! [`Error`] (the broker refused or could not be reached) and [`ConfigError`] (the
//! builder was given something that cannot work). Both say what was wrong and what would
//! be right.

use std::error::Error as StdError;
use std::fmt;
use std::time::Duration;

/// Why a consumer could not connect to the broker or set up its queues: returned by its
/// start step (which fails the host's start), or by `execute` if a reconnect finds the
/// setup no longer possible (the queue was deleted, a permission revoked). A broker that is
/// merely unreachable *after* a successful start is not an error: the consumer reconnects
/// with backoff.
///
/// URLs in errors never contain the password.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The TCP connection or the AMQP handshake failed: broker down, wrong host or port,
    /// wrong credentials, unknown vhost.
    Connect {
        /// The URL, password removed.
        url: String,
        /// lapin's error.
        source: lapin::Error,
    },
    /// The connection did not complete within the connect timeout.
    ConnectTimeout {
        /// The URL, password removed.
        url: String,
        /// The timeout.
        after: Duration,
    },
    /// The queue to consume does not exist, and the consumer was not told to declare it.
    QueueNotFound {
        /// The queue.
        queue: String,
        /// The vhost searched.
        vhost: String,
    },
    /// An exchange the consumer needs (to bind its queue, or to dead-letter to) does not
    /// exist.
    ExchangeNotFound {
        /// The exchange.
        exchange: String,
        /// The vhost searched.
        vhost: String,
        /// What it was needed for.
        purpose: &'static str,
    },
    /// The broker refused a setup step: declaring a queue whose arguments differ from an
    /// existing one's (`PRECONDITION_FAILED`), a permission missing (`ACCESS_REFUSED`), …
    Setup {
        /// The step, with the names involved.
        step: String,
        /// lapin's error.
        source: lapin::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Connect { url, source } => write!(
                f,
                "could not connect to RabbitMQ at {url}: {source} (is the broker running, \
                 and are the host, port, credentials and vhost right? The URL's form is \
                 amqp://user:password@host:5672/vhost, with the vhost `/` written %2f)"
            ),
            Error::ConnectTimeout { url, after } => write!(
                f,
                "could not connect to RabbitMQ at {url}: no answer within {after:?} (is the \
                 host reachable, and is it an AMQP port?)"
            ),
            Error::QueueNotFound { queue, vhost } => write!(
                f,
                "the queue `{queue}` does not exist in vhost `{vhost}`: create it, or let the \
                 consumer declare it (ConsumerBuilder::declare)"
            ),
            Error::ExchangeNotFound {
                exchange,
                vhost,
                purpose,
            } => write!(
                f,
                "the exchange `{exchange}` ({purpose}) does not exist in vhost `{vhost}`: \
                 declare it before the consumer starts"
            ),
            Error::Setup { step, source } => write!(f, "{step} failed: {source}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Connect { source, .. } | Error::Setup { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    /// Whether trying again later may succeed (the broker was unreachable), as opposed to a
    /// setup the broker refuses until someone changes it.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectTimeout { .. } => true,
            Error::Setup { source, .. } => source.is_io_error() || !source.is_amqp_error(),
            Error::QueueNotFound { .. } | Error::ExchangeNotFound { .. } => false,
        }
    }
}

/// A consumer configuration that cannot work, from
/// [`ConsumerBuilder::build`](crate::ConsumerBuilder::build): names the setting, what it
/// was, and what it may be.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// The URL does not parse as an AMQP URL.
    Url {
        /// Why (lapin's parser), password removed.
        reason: String,
    },
    /// A setting is outside its range.
    OutOfRange {
        /// The setting (`concurrency`, `prefetch`, `max_deliveries`, …).
        setting: &'static str,
        /// The value given.
        value: u64,
        /// What it may be.
        expected: &'static str,
    },
    /// A name or routing key is empty where that cannot work, or too long for AMQP (a
    /// short string: at most 255 bytes, less for the queue, whose retry queues add a suffix).
    Name {
        /// Which name (`queue`, `bind exchange`, `dead_letter routing key`, …).
        setting: &'static str,
        /// The name given.
        value: String,
        /// What it may be, with the limit in bytes.
        expected: &'static str,
    },
    /// The dead-letter target is the consumed queue itself: a dead letter would be
    /// consumed again, fail or be undecodable again, and be dead-lettered again, for ever.
    DeadLetterToItself {
        /// The consumed queue.
        queue: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Url { reason } => write!(
                f,
                "the AMQP URL is not valid ({reason}); expected \
                 amqp://user:password@host:5672/vhost (amqps:// for TLS, the vhost `/` \
                 written %2f)"
            ),
            ConfigError::OutOfRange {
                setting,
                value,
                expected,
            } => write!(f, "{setting} is {value}; it must be {expected}"),
            ConfigError::Name {
                setting,
                value,
                expected,
            } if value.is_empty() => write!(f, "{setting} is empty; it must be {expected}"),
            ConfigError::Name {
                setting,
                value,
                expected,
            } => write!(
                f,
                "{setting} `{value}` is {} bytes; it must be {expected}",
                value.len()
            ),
            ConfigError::DeadLetterToItself { queue } => write!(
                f,
                "dead_letter is the consumed queue `{queue}` itself: a dead letter would be \
                 consumed and dead-lettered again, for ever; dead-letter to another queue"
            ),
        }
    }
}

impl StdError for ConfigError {}

/// `url` with its password (if any) replaced by `***`, for errors and logs.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_an_error_message() {
        assert_eq!(
            redact("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("amqps://u:p%40ss@host/v?heartbeat=5"),
            "amqps://u:***@host/v?heartbeat=5"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact("not a url"), "not a url");
    }

    #[test]
    fn a_missing_queue_is_named_with_the_way_out() {
        let e = Error::QueueNotFound {
            queue: "orders".into(),
            vhost: "/".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("`orders`") && text.contains("declare"),
            "{text}"
        );
        assert!(!e.is_transient());
    }
}
