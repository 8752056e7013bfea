//! [`RetryPolicy`]: which outcomes are retried and how long to wait between attempts. The
//! loop that applies it, bounded by the token, is in `src/call.rs`.

use std::time::{Duration, SystemTime};

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{HeaderMap, Method, StatusCode};

use crate::error::ConfigError;

/// Retries of an outbound call, bounded by its token: exponential backoff with jitter, never
/// sleeping past the deadline, never after a cancellation, idempotent methods only unless
/// told otherwise.
///
/// Attach it with [`GracefulRequest::retry`](crate::GracefulRequest::retry) or
/// [`GracefulMiddleware::retry`](crate::GracefulMiddleware::retry). After each attempt:
///
/// 1. **Cancelled?** If the token fired (or its deadline passed) the call ends with
///    [`Error::Cancelled`](crate::Error::Cancelled) at once — during an attempt (which is
///    aborted) or during the wait before the next one (which ends the wait at once).
/// 2. **Retryable?** Only these outcomes, and only for idempotent methods (`GET`, `HEAD`,
///    `OPTIONS`, `TRACE`, `PUT`, `DELETE`; others with
///    [`retry_any_method`](Self::retry_any_method)):
///    * a response with a status in the retry set (default `429`, `502`, `503`, `504`;
///      [`retry_on_status`](Self::retry_on_status));
///    * a connection error: the connection could not be made, or broke before a response
///      arrived (refused, reset, closed early; [`retry_connection_errors`](Self::retry_connection_errors));
///    * an attempt that ran out its [`attempt_timeout`](Self::attempt_timeout).
///
///    Anything else is returned as it is.
/// 3. **Attempts left?** At most [`max_retries`](Self::max_retries) retries (default 2, so 3
///    attempts). When they are used up the last outcome is returned as it is: the `503`
///    response, or the connection error.
/// 4. **Wait.** The next delay of the backoff: `min_delay`, then × `factor` each retry, at
///    most `max_delay` (defaults 100 ms, × 2, 10 s); with jitter (default on) each wait is
///    drawn from `[d, 2d)`. A `Retry-After` header on a retried response (seconds or an
///    HTTP date) lengthens the wait to what it asks; one asking for more than `max_delay` is
///    not waited for: that response is returned.
/// 5. **Does the next attempt fit?** If the token has a deadline and the next attempt could
///    not start before it — the wait plus the [transit allowance](crate::DeadlinePropagation::transit_allowance)
///    plus 1 ms is not less than the time left — the call stops *now*, without sleeping, with
///    `Cancelled` of kind [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) (its
///    message names the last outcome; a last error is its source).
///
/// Each attempt sends a clone of the request (`reqwest::Request::try_clone`); a request whose
/// body is a stream cannot be cloned and is sent once. Each attempt carries its own budget
/// in the deadline header: the time left then (or of its attempt timeout, if shorter).
///
/// ```
/// use std::time::Duration;
/// use gracefully_reqwest::RetryPolicy;
/// use reqwest::StatusCode;
///
/// let policy = RetryPolicy::default()
///     .max_retries(4)
///     .backoff(Duration::from_millis(50), Duration::from_secs(2))
///     .attempt_timeout(Duration::from_millis(800))        // a hung attempt is retried too
///     .retry_on_status([StatusCode::SERVICE_UNAVAILABLE]); // only 503
/// assert!(policy.validate().is_ok());
/// ```
///
/// *Anchors:* Polly's retry strategy inside an outer timeout (`AddRetry` +
/// `AddTimeout`, .NET's standard resilience handler), and the hand-written Go loop that
/// `select`s on `ctx.Done()` while it sleeps. Where it differs: the deadline is the token's,
/// shared with everything else the caller does, not a timeout of the retry's own; a wait
/// that would cross the deadline is never begun (Polly sleeps and is then cancelled); and
/// non-idempotent requests are not retried unless asked (Polly retries whatever it is
/// given).
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    max_retries: u32,
    min_delay: Duration,
    max_delay: Duration,
    factor: f32,
    jitter: bool,
    statuses: StatusSet,
    connection_errors: bool,
    any_method: bool,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    /// 2 retries; backoff from 100 ms, × 2, at most 10 s, with jitter; retry `429`, `502`,
    /// `503`, `504` and connection errors; idempotent methods only; no attempt timeout.
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            factor: 2.0,
            jitter: true,
            statuses: StatusSet::of(&[429, 502, 503, 504]),
            connection_errors: true,
            any_method: false,
            attempt_timeout: None,
        }
    }
}

impl RetryPolicy {
    /// At most `retries` retries after the first attempt (default 2). `0` never retries.
    ///
    /// *Anchors:* Polly's `MaxRetryAttempts` (default 3 there).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The first wait (`min`) and the largest (`max`) before jitter. Defaults: 100 ms and
    /// 10 s. `max` also bounds how long a `Retry-After` is honoured. Valid: `min ≤ max`.
    ///
    /// *Anchors:* Polly's `Delay` and `MaxDelay` with `BackoffType.Exponential`; gRPC's
    /// `initialBackoff` and `maxBackoff`.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_delay = min;
        self.max_delay = max;
        self
    }

    /// How much each wait grows over the last (default 2.0). Valid: a finite number ≥ 1.
    ///
    /// *Anchors:* gRPC's `backoffMultiplier` (Polly fixes it at 2).
    pub fn factor(mut self, factor: f32) -> Self {
        self.factor = factor;
        self
    }

    /// Whether each wait is drawn at random from `[d, 2d)` rather than being exactly `d`
    /// (default `true`: callers that failed together do not retry in lock step).
    ///
    /// *Anchors:* Polly's `UseJitter` (decorrelated jitter there, which may also shorten a
    /// wait).
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// The response statuses that are retried (replacing the default `429`, `502`, `503`,
    /// `504`). An empty set retries no response.
    ///
    /// *Anchors:* Polly's `ShouldHandle` for `HttpResponseMessage` (its HTTP default is
    /// 408, 429 and 5xx; ours leaves out 500 and 501, which a retry seldom cures, and 408).
    pub fn retry_on_status(mut self, statuses: impl IntoIterator<Item = StatusCode>) -> Self {
        self.statuses = StatusSet::default();
        for status in statuses {
            self.statuses.insert(status);
        }
        self
    }

    /// Whether connection errors are retried (default `true`): the connection could not be
    /// made, or it was refused, reset or closed before a response arrived.
    ///
    /// *Anchors:* Polly's HTTP default handles `HttpRequestException`; Go's transport
    /// retries a request on a fresh connection when a reused one turned out closed.
    pub fn retry_connection_errors(mut self, retry: bool) -> Self {
        self.connection_errors = retry;
        self
    }

    /// Whether methods that are not idempotent (`POST`, `PATCH`, …) are retried too (default
    /// `false`: a `POST` whose answer was lost may have taken effect; retry it only if the
    /// server deduplicates, say by an idempotency key).
    ///
    /// *Anchors:* Go's transport retries only idempotent requests (or those with an
    /// `Idempotency-Key` header); Polly retries whatever it is given.
    pub fn retry_any_method(mut self, any: bool) -> Self {
        self.any_method = any;
        self
    }

    /// Bounds each attempt by `timeout` as well as by the token (default: no bound of its
    /// own): an attempt that runs it out is aborted and retried. Each attempt's deadline
    /// header carries the shorter of the two budgets. Valid: more than 0.
    ///
    /// The bound covers the response body too: the body of a response returned by an
    /// attempt with a timeout stops when that timeout passes. It applies to every attempt,
    /// also to the single attempt of a request that is not retried (a `POST`).
    ///
    /// *Anchors:* the attempt timeout inside Polly's retry (`AttemptTimeout` of .NET's
    /// standard resilience handler, inside its `TotalRequestTimeout` — here the token);
    /// Envoy's `per_try_timeout`.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// Checks the settings, naming the first that cannot work and its valid range. A call
    /// made with an invalid policy fails with [`Error::Config`](crate::Error::Config)
    /// before sending anything; call this at start-up to find out sooner.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracefully_reqwest::RetryPolicy;
    ///
    /// let err = RetryPolicy::default().factor(0.5).validate().unwrap_err();
    /// assert_eq!(err.field(), "factor");
    /// let err = RetryPolicy::default()
    ///     .backoff(Duration::from_secs(5), Duration::from_secs(1))
    ///     .validate()
    ///     .unwrap_err();
    /// assert_eq!(err.field(), "backoff");
    /// ```
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.factor.is_finite() || self.factor < 1.0 {
            return Err(ConfigError::new(
                "factor",
                format!(
                    "is {}; valid: a finite number ≥ 1.0 (default 2.0)",
                    self.factor
                ),
            ));
        }
        if self.min_delay > self.max_delay {
            return Err(ConfigError::new(
                "backoff",
                format!(
                    "has min {:?} above max {:?}; valid: min ≤ max (defaults 100 ms and 10 s)",
                    self.min_delay, self.max_delay
                ),
            ));
        }
        if self.attempt_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::new(
                "attempt_timeout",
                "is 0; valid: more than 0, or unset (the token alone bounds each attempt)",
            ));
        }
        Ok(())
    }

    pub(crate) fn retries(&self) -> u32 {
        self.max_retries
    }

    pub(crate) fn max_delay(&self) -> Duration {
        self.max_delay
    }

    pub(crate) fn attempt_timeout_value(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// Whether requests with `method` may be retried at all.
    pub(crate) fn allows(&self, method: &Method) -> bool {
        self.max_retries > 0 && (self.any_method || is_idempotent(method))
    }

    pub(crate) fn retries_status(&self, status: StatusCode) -> bool {
        self.statuses.contains(status)
    }

    pub(crate) fn retries_connection_errors(&self) -> bool {
        self.connection_errors
    }

    /// The waits before each retry, before `Retry-After`.
    ///
    /// The delays come from backon's `ExponentialBuilder`, a small, well-kept crate
    /// (one dependency, fastrand) whose exponential-with-jitter sequence is exactly this
    /// policy's. Its retry *loop* (`Retryable`) is not used: the loop here must end a wait
    /// when the token fires, refuse a wait that would cross the token's deadline, honour
    /// `Retry-After`, and tell an attempt's own timeout from the caller's cancellation — none
    /// of which its `when`/`adjust` hooks can express without rebuilding the loop around it.
    pub(crate) fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times();
        let builder = if self.jitter {
            builder.with_jitter()
        } else {
            builder
        };
        builder.build()
    }
}

/// RFC 9110 §9.2.2: the methods whose effect is the same however often they are sent.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A set of status codes (100–999) as a bit set: `Copy`-cheap and allocation-free.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct StatusSet([u64; 16]);

impl StatusSet {
    fn of(codes: &[u16]) -> Self {
        let mut set = StatusSet::default();
        for &code in codes {
            if let Ok(status) = StatusCode::from_u16(code) {
                set.insert(status);
            }
        }
        set
    }

    fn insert(&mut self, status: StatusCode) {
        let code = usize::from(status.as_u16());
        self.0[code / 64] |= 1 << (code % 64);
    }

    fn contains(&self, status: StatusCode) -> bool {
        let code = usize::from(status.as_u16());
        self.0[code / 64] & (1 << (code % 64)) != 0
    }
}

impl std::fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set()
            .entries((100..1000).filter(|&code| {
                StatusCode::from_u16(code).is_ok_and(|status| self.contains(status))
            }))
            .finish()
    }
}

/// The wait a `Retry-After` header asks for (RFC 9110 §10.2.3: delay-seconds or an
/// HTTP-date), measured from `now`; a date in the past asks for none. `None` if absent or
/// malformed (then the backoff alone decides).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether `error` means the connection could not be made, or broke before a response
/// arrived: reqwest's connect errors, and in the source chain hyper's "closed before the
/// message completed" or an I/O error of kind refused, reset, aborted, broken pipe or
/// unexpected end.
pub(crate) fn is_connection_error(error: &reqwest::Error) -> bool {
    if error.is_connect() {
        return true;
    }
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(error);
    // Bounded, in case of a cyclic chain.
    for _ in 0..32 {
        let Some(err) = current else { break };
        if let Some(hyper) = err.downcast_ref::<hyper::Error>()
            && hyper.is_incomplete_message()
        {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        {
            return true;
        }
        current = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with_retry_after(value: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static(value));
        headers
    }

    #[test]
    fn retry_after_reads_delay_seconds() {
        let now = SystemTime::now();
        assert_eq!(
            retry_after(&with_retry_after("3"), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(&with_retry_after(" 0 "), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn retry_after_reads_an_http_date_relative_to_now() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(
            retry_after(&with_retry_after("Sun, 06 Nov 1994 08:50:07 GMT"), now),
            Some(Duration::from_secs(30))
        );
        // A date already past asks for no wait.
        assert_eq!(
            retry_after(&with_retry_after("Sun, 06 Nov 1994 08:00:00 GMT"), now),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn a_malformed_or_missing_retry_after_is_ignored() {
        let now = SystemTime::now();
        assert_eq!(retry_after(&with_retry_after("soon"), now), None);
        assert_eq!(retry_after(&with_retry_after("-5"), now), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn only_idempotent_methods_are_retried_by_default() {
        let policy = RetryPolicy::default();
        for method in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::TRACE,
            Method::PUT,
            Method::DELETE,
        ] {
            assert!(policy.allows(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::CONNECT] {
            assert!(!policy.allows(&method), "{method}");
        }
        let any = RetryPolicy::default().retry_any_method(true);
        assert!(any.allows(&Method::POST));
        assert!(!RetryPolicy::default().max_retries(0).allows(&Method::GET));
    }

    #[test]
    fn the_default_status_set_is_429_502_503_504() {
        let policy = RetryPolicy::default();
        for code in 100..1000 {
            let Ok(status) = StatusCode::from_u16(code) else {
                continue;
            };
            assert_eq!(
                policy.retries_status(status),
                matches!(code, 429 | 502 | 503 | 504),
                "{code}"
            );
        }
        let custom = RetryPolicy::default().retry_on_status([StatusCode::INTERNAL_SERVER_ERROR]);
        assert!(custom.retries_status(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!custom.retries_status(StatusCode::SERVICE_UNAVAILABLE));
        assert_eq!(format!("{:?}", custom.statuses), "{500}");
    }

    #[test]
    fn delays_grow_by_the_factor_up_to_the_max() {
        let policy = RetryPolicy::default()
            .jitter(false)
            .backoff(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<_> = policy.delays().take(5).collect();
        let ms: Vec<_> = delays.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
    }

    #[test]
    fn jittered_delays_stay_within_d_and_2d() {
        let policy =
            RetryPolicy::default().backoff(Duration::from_millis(100), Duration::from_millis(400));
        for _ in 0..100 {
            let delays: Vec<_> = policy.delays().take(4).collect();
            for (delay, base) in delays.iter().zip([100u64, 200, 400, 400]) {
                let base = Duration::from_millis(base);
                assert!(
                    *delay >= base && *delay < 2 * base,
                    "{delay:?} for {base:?}"
                );
            }
        }
    }

    #[test]
    fn invalid_settings_name_the_field_and_the_valid_range() {
        let err = RetryPolicy::default()
            .factor(f32::NAN)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "factor");
        assert!(err.to_string().contains("≥ 1.0"), "{err}");
        let err = RetryPolicy::default()
            .attempt_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "attempt_timeout");
        assert!(RetryPolicy::default().validate().is_ok());
    }
}
