//! [`Error`]: what a call made with a token returns when it does not produce a response,
//! with cancellation kept apart from failures; and [`ConfigError`] for a retry policy that
//! cannot work.

use std::borrow::Cow;
use std::fmt;

use gracefully::Cancelled;

/// The error of a call sent with [`GracefulRequest::send`](crate::GracefulRequest::send).
///
/// Cancellation is its own variant: when the token fires (or its deadline passes, or the
/// budget left is too small to send), the error is [`Error::Cancelled`] with the token's
/// [`Reason`](gracefully::Reason) — never a `reqwest::Error` that merely says "timed out".
/// Its [`source`](std::error::Error::source) is the [`Cancelled`], so
/// [`gracefully::is_cancellation`] recognises it anywhere in a chain of errors, and so does
/// the gracefully HTTP server when a handler returns it.
///
/// Reading the body of a response after the token fired fails with a `reqwest::Error`
/// (reqwest reports every body error as its own), whose source chain holds the `Cancelled`:
/// test those with [`gracefully::is_cancellation`] or [`gracefully::find_cancelled`] too.
///
/// *Anchors:* .NET throws `TaskCanceledException` (an `OperationCanceledException`) from
/// `HttpClient.SendAsync` when the token fires, and `HttpRequestException` otherwise; Go's
/// `client.Do` returns an error wrapping `ctx.Err()` (`context.Canceled` or
/// `context.DeadlineExceeded`) once the request's context is done. We do the same: once the
/// token has fired, the outcome is `Cancelled`, whatever error the transport saw.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The token fired, its deadline passed, or too little of its budget was left to send
    /// the request ([`DeadlinePropagation`](crate::DeadlinePropagation)). A request in flight
    /// was aborted (HTTP/1.1: its connection closed; HTTP/2: its stream reset); nothing is
    /// retried after this.
    Cancelled(Cancelled),
    /// reqwest reported an error: the request could not be built (a bad URL), the
    /// connection failed, the server broke the exchange, a timeout the caller set passed.
    Request(reqwest::Error),
    /// The [`RetryPolicy`](crate::RetryPolicy) cannot work; nothing was sent.
    Config(ConfigError),
}

impl Error {
    /// Whether this is [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled(_))
    }

    /// The [`Cancelled`] (and through it the [`Reason`](gracefully::Reason)) if this is
    /// [`Error::Cancelled`].
    pub fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }

    /// The reqwest error, if this is [`Error::Request`].
    pub fn as_reqwest(&self) -> Option<&reqwest::Error> {
        match self {
            Error::Request(error) => Some(error),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(cancelled) => fmt::Display::fmt(cancelled, f),
            Error::Request(error) => write!(f, "request failed: {error}"),
            Error::Config(error) => fmt::Display::fmt(error, f),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            Error::Request(error) => Some(error),
            Error::Config(error) => Some(error),
        }
    }
}

impl From<Cancelled> for Error {
    fn from(cancelled: Cancelled) -> Self {
        Error::Cancelled(cancelled)
    }
}

impl From<reqwest::Error> for Error {
    /// A reqwest error that carries a [`Cancelled`] in its source chain (a body read after
    /// the token fired) becomes [`Error::Cancelled`]; any other becomes [`Error::Request`].
    fn from(error: reqwest::Error) -> Self {
        match gracefully::find_cancelled(&error) {
            Some(cancelled) => Error::Cancelled(cancelled.clone()),
            None => Error::Request(error),
        }
    }
}

impl From<ConfigError> for Error {
    fn from(error: ConfigError) -> Self {
        Error::Config(error)
    }
}

impl From<Error> for std::io::Error {
    /// For body readers that speak `io::Error`: a cancellation becomes kind `Interrupted`, a
    /// timeout `TimedOut`, anything else `Other`; the [`Error`] is kept inside (so
    /// [`gracefully::is_cancellation`] still finds a `Cancelled`).
    fn from(error: Error) -> Self {
        let kind = match &error {
            Error::Cancelled(_) => std::io::ErrorKind::Interrupted,
            Error::Request(e) if e.is_timeout() => std::io::ErrorKind::TimedOut,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, error)
    }
}

/// A [`RetryPolicy`](crate::RetryPolicy) setting that cannot work, naming the setting and
/// the valid range. Returned by [`RetryPolicy::validate`](crate::RetryPolicy::validate), and
/// as [`Error::Config`] by a call made with the policy (before anything is sent).
///
/// *Anchors:* .NET's `OptionsValidationException` for resilience options; the host's
/// `ConfigError`, which names the field and the valid range the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    problem: Cow<'static, str>,
}

impl ConfigError {
    pub(crate) fn new(field: &'static str, problem: impl Into<Cow<'static, str>>) -> Self {
        ConfigError {
            field,
            problem: problem.into(),
        }
    }

    /// The setting that is wrong (`"factor"`, `"max_delay"`, …).
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid retry policy: {} {}", self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}
