//! [`Error`]: what went wrong, named so the reader knows what would be right.

use std::error::Error as StdError;
use std::fmt;

/// An error from building or running a [`Consumer`](crate::Consumer).
///
/// Every variant says what was wrong *and* what would be right: a bad setting names the
/// builder method and its valid range, a missing stream names the stream and the server,
/// an unreachable server names the URL (its password redacted).
///
/// *Anchors:* async-nats's per-call error kinds (`ConnectError`, `GetStreamError`, …),
/// gathered here into one type whose message says what to do; .NET's
/// `OptionsValidationException` for the settings.
///
/// ```
/// use gracefully_nats::{Consumer, Error};
///
/// let err = Consumer::builder("nats://127.0.0.1:4222")
///     .stream("ORDERS")
///     .consumer("billing")
///     .concurrency(0)
///     .handler(|_msg, _token| async { Ok::<_, std::io::Error>(()) })
///     .build()
///     .unwrap_err();
/// assert!(matches!(err, Error::Config { field: "concurrency", .. }));
/// assert!(err.to_string().contains("valid: 1 ..="));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A builder setting is invalid ([`ConsumerBuilder::build`](crate::ConsumerBuilder::build)).
    Config {
        /// The builder method at fault: `"concurrency"`, `"url"`, …
        field: &'static str,
        /// What is wrong with it and what would be valid.
        message: String,
    },
    /// The server could not be reached, or refused the connection (start step).
    Connect {
        /// The URL, password redacted.
        url: String,
        /// What async-nats reported.
        source: async_nats::ConnectError,
    },
    /// The server answers but JetStream does not (not enabled, or not for this account).
    JetStreamUnavailable {
        /// The URL, password redacted.
        url: String,
        /// What the server answered.
        detail: String,
    },
    /// The stream to bind does not exist, and the builder was not told to create it.
    StreamNotFound {
        /// The stream's name.
        stream: String,
        /// The URL, password redacted.
        url: String,
    },
    /// The JetStream consumer exists but cannot be used as configured (a push consumer, or
    /// an ack policy other than explicit).
    ConsumerMismatch {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        consumer: String,
        /// What does not fit, and what would.
        message: String,
    },
    /// No stream captures the dead-letter subject, so a dead-lettered message would be lost.
    DeadLetterNotCaptured {
        /// The dead-letter subject.
        subject: String,
    },
    /// The JetStream consumer was deleted while this consumer ran.
    ConsumerDeleted {
        /// The stream's name.
        stream: String,
        /// The consumer's name.
        consumer: String,
    },
    /// A JetStream API call failed in another way.
    Api {
        /// What was being done: `"create stream ORDERS"`, …
        what: String,
        /// The error.
        source: Box<dyn StdError + Send + Sync>,
    },
}

impl Error {
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Error {
        Error::Config {
            field,
            message: message.into(),
        }
    }

    pub(crate) fn api(
        what: impl Into<String>,
        source: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Error {
        Error::Api {
            what: what.into(),
            source: source.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { field, message } => {
                write!(f, "invalid NATS consumer configuration: {field} {message}")
            }
            Error::Connect { url, source } => write!(
                f,
                "could not connect to NATS at {url}: {source}; check that nats-server runs \
                 there (with JetStream: `-js`) and that the URL and credentials are right"
            ),
            Error::JetStreamUnavailable { url, detail } => write!(
                f,
                "NATS at {url} answers but JetStream does not ({detail}); start nats-server \
                 with JetStream enabled (`-js`) or enable it for this account"
            ),
            Error::StreamNotFound { stream, url } => write!(
                f,
                "stream '{stream}' does not exist on NATS at {url}; create it (`nats stream \
                 add {stream}`), or let the consumer create it with \
                 `.create_stream(stream::Config {{ name: \"{stream}\".into(), subjects: … }})`"
            ),
            Error::ConsumerMismatch {
                stream,
                consumer,
                message,
            } => write!(
                f,
                "JetStream consumer '{consumer}' on stream '{stream}' cannot be used: {message}"
            ),
            Error::DeadLetterNotCaptured { subject } => write!(
                f,
                "no stream captures the dead-letter subject '{subject}', so dead-lettered \
                 messages would be lost; add it to a stream's subjects (e.g. a stream \
                 `DEAD_LETTERS` with subjects [\"{subject}\"])"
            ),
            Error::ConsumerDeleted { stream, consumer } => write!(
                f,
                "JetStream consumer '{consumer}' on stream '{stream}' was deleted while in use"
            ),
            Error::Api { what, source } => write!(f, "NATS JetStream: could not {what}: {source}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Connect { source, .. } => Some(source),
            Error::Api { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// `url` with any password replaced by `***`, for errors and logs. Handles the
/// comma-separated server lists async-nats accepts.
pub(crate) fn redact(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            let Some(scheme_end) = one.find("://").map(|i| i + 3) else {
                return one.to_owned();
            };
            let rest = &one[scheme_end..];
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => {
                    let userinfo = &rest[..at];
                    let user = userinfo.split(':').next().unwrap_or("");
                    let shown = if userinfo.contains(':') {
                        format!("{user}:***")
                    } else {
                        "***".to_owned() // a token alone is a secret too
                    };
                    format!("{}{shown}{}", &one[..scheme_end], &rest[at..])
                }
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn redact_hides_passwords_and_tokens_but_keeps_users_and_hosts() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(
            redact("nats://app:s3cret@host:4222"),
            "nats://app:***@host:4222"
        );
        assert_eq!(redact("nats://tok3n@host"), "nats://***@host");
        assert_eq!(
            redact("nats://a:b@h1:4222, tls://h2:4222"),
            "nats://a:***@h1:4222,tls://h2:4222"
        );
        assert_eq!(redact("localhost:4222"), "localhost:4222");
    }
}
