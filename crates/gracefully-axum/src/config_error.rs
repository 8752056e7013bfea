//! [`ConfigError`], the error naming a setting of the server that is out of range, and the
//! checks its setters make.

use std::fmt;
use std::time::Duration;

/// The longest timeout or grace accepted: one day (longer is a mistake, not a setting).
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);

/// A setting of [`HttpServer`](crate::HttpServer) out of its valid range: names the setting
/// and says what would be valid, as `gracefully_host::ConfigError` does for the host.
///
/// Each setter checks its value; the first problem is kept and reported when the server is
/// started ([`HttpServer::run`](crate::HttpServer::run) serves nothing and logs it; as a
/// host service the server fails with it, so the host exits non-zero), and can be asked
/// for earlier with [`HttpServer::config_error`](crate::HttpServer::config_error).
///
/// ```
/// use std::time::Duration;
/// use axum::Router;
/// use gracefully_axum::HttpServer;
///
/// # async fn f() -> std::io::Result<()> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = HttpServer::new(listener, Router::new()).header_read_timeout(Duration::ZERO);
/// let error = server.config_error().unwrap();
/// assert_eq!(error.field(), "header_read_timeout");
/// assert!(error.to_string().contains("valid: more than 0"));
/// # Ok(()) }
/// ```
///
/// (`gracefully_host::ConfigError` cannot be made outside the host crate, so this crate has
/// its own of the same shape.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
    message: String,
}

impl ConfigError {
    /// The setting at fault: `"header_read_timeout"`, `"idle_grace"`, …
    pub fn field(&self) -> &str {
        self.field
    }

    /// What is wrong with it and what would be valid.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid HTTP server configuration: {} {}",
            self.field, self.message
        )
    }
}

impl std::error::Error for ConfigError {}

/// Checks a duration setting: `0 < value <= one day`, or `0 <= value` when `zero_ok`.
pub(crate) fn check_duration(
    field: &'static str,
    value: Duration,
    zero_ok: bool,
    default: &str,
) -> Result<(), ConfigError> {
    if (value.is_zero() && !zero_ok) || value > MAX_DURATION {
        let low = if zero_ok { "0 or more" } else { "more than 0" };
        return Err(ConfigError {
            field,
            message: format!(
                "is {value:?}; valid: {low} and at most {MAX_DURATION:?} (default {default})"
            ),
        });
    }
    Ok(())
}

/// Checks `max_header_bytes`: at least 1 KiB (a request line and a host header) and at
/// most what HTTP/2's header-list setting can carry.
pub(crate) fn check_header_bytes(value: usize) -> Result<(), ConfigError> {
    if !(1024..=u32::MAX as usize).contains(&value) {
        return Err(ConfigError {
            field: "max_header_bytes",
            message: format!("is {value}; valid: 1024 ..= {} (default 64 KiB)", u32::MAX),
        });
    }
    Ok(())
}
