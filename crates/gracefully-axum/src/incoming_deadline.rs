//! Incoming deadlines: the caller's remaining budget, read from a request header, narrows
//! the request token's deadline ([`IncomingDeadlines`], [`BudgetFormat`]).
//!
//! Read once per request in `dispatch` (before any layer runs), as one pass over the
//! request's headers: a request that carries none of the configured headers pays for a
//! length test per header it has, nothing more (see `IncomingDeadlines::budget`).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config_error::{ConfigError, MAX_DURATION, check_duration};

/// `grpc-timeout`: the budget a gRPC client sends with every call that has a deadline
/// (`300m`, `2S`, `1500000u`; [`BudgetFormat::GrpcTimeout`]).
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// `x-envoy-expected-rq-timeout-ms`: the budget Envoy tells the service behind it, in whole
/// milliseconds ([`BudgetFormat::Milliseconds`]).
pub const ENVOY_EXPECTED_RQ_TIMEOUT_MS: &str = "x-envoy-expected-rq-timeout-ms";

/// `x-request-timeout-ms`: the budget `gracefully-reqwest` sends (its
/// `REQUEST_TIMEOUT_HEADER`), in whole milliseconds ([`BudgetFormat::Milliseconds`]).
pub const REQUEST_TIMEOUT_MS: &str = "x-request-timeout-ms";

/// The default [transit allowance](IncomingDeadlines::transit_allowance) kept back from a
/// `grpc-timeout`: 5 ms, as `gracefully-reqwest` keeps back from the budget it sends.
const DEFAULT_TRANSIT_ALLOWANCE: Duration = Duration::from_millis(5);

/// How a header spells a budget.
///
/// ```
/// use std::time::Duration;
/// use gracefully_axum::BudgetFormat;
///
/// assert_eq!(BudgetFormat::GrpcTimeout.parse(b"300m"), Some(Duration::from_millis(300)));
/// assert_eq!(BudgetFormat::GrpcTimeout.parse(b"2S"), Some(Duration::from_secs(2)));
/// assert_eq!(BudgetFormat::Milliseconds.parse(b"1500"), Some(Duration::from_millis(1500)));
/// assert_eq!(BudgetFormat::Milliseconds.parse(b"1.5s"), None); // malformed
///
/// // And back: the largest value that does not exceed the budget.
/// assert_eq!(BudgetFormat::GrpcTimeout.encode(Duration::from_millis(300)), "300000u");
/// assert_eq!(BudgetFormat::Milliseconds.encode(Duration::from_micros(2_999)), "2");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BudgetFormat {
    /// A whole number of milliseconds, ASCII digits only: `1500`. (`x-request-timeout-ms`,
    /// `x-envoy-expected-rq-timeout-ms`.)
    Milliseconds,
    /// gRPC's `TimeoutValue TimeoutUnit`: one to eight ASCII digits, then `H` (hours), `M`
    /// (minutes), `S` (seconds), `m` (milliseconds), `u` (microseconds) or `n`
    /// (nanoseconds): `300m`. (The gRPC over HTTP/2 protocol's `grpc-timeout`.)
    GrpcTimeout,
}

/// The most digits gRPC allows in a `grpc-timeout` value.
const GRPC_MAX_DIGITS: usize = 8;

impl BudgetFormat {
    /// The budget `value` spells, or `None` if it is malformed. Whatever the value says,
    /// the budget returned is at most one day (what the server's timeouts accept too).
    pub fn parse(self, value: &[u8]) -> Option<Duration> {
        Some(self.parse_exact(value)?.min(MAX_DURATION))
    }

    /// [`parse`](Self::parse) without the one-day cap: the budget exactly as `value` spells
    /// it (saturating), to compare it with another — a caller's `48H` is more than 30 hours
    /// left, though both read as a day once capped.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracefully_axum::BudgetFormat;
    /// assert_eq!(BudgetFormat::GrpcTimeout.parse_exact(b"48H"), Some(Duration::from_secs(48 * 3600)));
    /// assert_eq!(BudgetFormat::GrpcTimeout.parse(b"48H"), Some(Duration::from_secs(24 * 3600)));
    /// ```
    pub fn parse_exact(self, value: &[u8]) -> Option<Duration> {
        let budget = match self {
            BudgetFormat::Milliseconds => Duration::from_millis(digits(value)?),
            BudgetFormat::GrpcTimeout => {
                let (unit, number) = value.split_last()?;
                if number.len() > GRPC_MAX_DIGITS {
                    return None;
                }
                let n = digits(number)?;
                match unit {
                    b'H' => Duration::from_secs(n.saturating_mul(3600)),
                    b'M' => Duration::from_secs(n.saturating_mul(60)),
                    b'S' => Duration::from_secs(n),
                    b'm' => Duration::from_millis(n),
                    b'u' => Duration::from_micros(n),
                    b'n' => Duration::from_nanos(n),
                    _ => return None,
                }
            }
        };
        Some(budget)
    }

    /// `budget` in this format, rounded down (a callee is never told it has more time than
    /// it has): whole milliseconds; for gRPC, the finest unit whose value fits in eight
    /// digits.
    ///
    /// The value is marked [sensitive](HeaderValue::set_sensitive), which over HTTP/2 makes
    /// HPACK send it as a literal never indexed (RFC 7541 §6.2.3): a budget differs on every
    /// request, so indexing it is pure cost — each new value is looked up among the earlier
    /// ones and inserted into both peers' header tables, where it evicts entries that do
    /// repeat (the content type, the user agent). Measured on a loopback gRPC call: about
    /// 8,000 instructions of HPACK work per call saved (`benches/grpc_instructions.sh` in
    /// gracefully-tonic). HTTP/1 ignores the mark.
    pub fn encode(self, budget: Duration) -> HeaderValue {
        let mut value = self.encode_value(budget);
        value.set_sensitive(true);
        value
    }

    fn encode_value(self, budget: Duration) -> HeaderValue {
        match self {
            BudgetFormat::Milliseconds => {
                HeaderValue::from(u64::try_from(budget.as_millis()).unwrap_or(u64::MAX))
            }
            BudgetFormat::GrpcTimeout => {
                const LIMIT: u128 = 100_000_000; // eight digits
                let nanos = budget.as_nanos();
                let (value, unit) = [
                    (1, 'n'),
                    (1_000, 'u'),
                    (1_000_000, 'm'),
                    (1_000_000_000, 'S'),
                    (60_000_000_000, 'M'),
                    (3_600_000_000_000, 'H'),
                ]
                .into_iter()
                .map(|(per, unit)| (nanos / per, unit))
                .find(|(value, _)| *value < LIMIT)
                .unwrap_or((LIMIT - 1, 'H'));
                HeaderValue::try_from(format!("{value}{unit}"))
                    .expect("digits and a letter are a valid header value")
            }
        }
    }
}

/// The number `value` spells in ASCII digits (at least one, nothing else), saturating.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        b.is_ascii_digit()
            .then(|| n.saturating_mul(10).saturating_add(u64::from(b - b'0')))
    })
}

/// Which request headers may carry the caller's remaining budget, and the most budget a
/// caller may give. Set with
/// [`HttpServer::incoming_deadlines`](crate::HttpServer::incoming_deadlines).
///
/// A request that carries one narrows its token's deadline to `now + budget`: the
/// handler's [`token.deadline()`](gracefully::CancellationToken::deadline) reports it, the
/// token fires with [`DeadlineExceeded`](gracefully::ReasonKind::DeadlineExceeded) when it
/// passes (answered 504 through [`HttpCancelled`](crate::HttpCancelled)), and calls made
/// with the token (`gracefully-reqwest`, `gracefully-tonic`) hand what is left on to the next
/// service. So one budget spans a chain of services, and each gives up when its caller stops
/// waiting.
///
/// * **Narrows only.** Deadlines only move earlier: a budget longer than the route's own
///   [`TimeoutLayer`](crate::TimeoutLayer) (or the server's
///   [`request_timeout`](crate::HttpServer::request_timeout)) changes nothing.
/// * **Capped.** A budget longer than [`max`](Self::max) is cut to it (default: no cap
///   below one day, the longest timeout the server accepts).
/// * **Several headers:** the smallest budget wins (after the allowance below).
/// * **`grpc-timeout` less the transit allowance.** By gRPC's convention a `grpc-timeout`
///   is the caller's *whole* time left, and the caller (grpc-go, tonic's `Channel`,
///   `gracefully-tonic`) gives up — resetting the call — the moment it passes. So the
///   server keeps the [transit allowance](Self::transit_allowance) back (default 5 ms):
///   it gives up first, and its `DEADLINE_EXCEEDED` reaches a caller still listening,
///   instead of its token reporting a departed client a moment later. Budgets in
///   milliseconds are taken as they are (`gracefully-reqwest` keeps its allowance back
///   before it sends one).
/// * **Malformed** values (`abc`, `-5`, `300x`, a ninth digit of `grpc-timeout`) are
///   ignored with a `debug` log line naming the header; the request is served as if the
///   header were absent. Never a 400 or a 500.
///
/// **Default: on, for all three well-known headers** — [`GRPC_TIMEOUT`],
/// [`ENVOY_EXPECTED_RQ_TIMEOUT_MS`] and [`REQUEST_TIMEOUT_MS`] — because trusting them is
/// safe: a budget can only *shorten* the request it arrives on, never lengthen it or touch
/// another request, so the worst a client can do is give up on its own request early (which
/// it can do anyway, by disconnecting). The one visible effect: such requests count as
/// "timed out (504)" in the report. Turn it off with [`IncomingDeadlines::none`].
///
/// ```
/// use std::time::Duration;
/// use axum::Router;
/// use gracefully_axum::{BudgetFormat, HttpServer, IncomingDeadlines};
/// use http::HeaderName;
///
/// # async fn f() -> std::io::Result<()> {
/// let deadlines = IncomingDeadlines::default()
///     // Our gateway spells it differently…
///     .header(HeaderName::from_static("x-budget-ms"), BudgetFormat::Milliseconds)
///     // …and public clients must not reach us through Envoy's header.
///     .without(&HeaderName::from_static("x-envoy-expected-rq-timeout-ms"))
///     // No caller gets more than 30 s, whatever it sends.
///     .max(Duration::from_secs(30));
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// let server = HttpServer::new(listener, Router::new()).incoming_deadlines(deadlines);
/// # let _ = server; Ok(()) }
/// ```
///
/// *Anchors:* gRPC servers in every language turn `grpc-timeout` into the call's deadline
/// (Go's `ctx.Deadline()`, .NET's `ServerCallContext.Deadline`) — and there it may be
/// longer than the server would allow; here it never is. Envoy's
/// `x-envoy-expected-rq-timeout-ms`. ASP.NET Core and Go's `net/http` read no incoming
/// budget for plain HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingDeadlines {
    headers: Vec<(HeaderName, BudgetFormat)>,
    max: Option<Duration>,
    /// Kept back from budgets in gRPC's format.
    allowance: Duration,
    /// Bit `n` is set when a configured name is `n` bytes long (names are shorter than 64
    /// bytes; a longer one sets bit 0, which no header name matches, and is compared by
    /// name): lets `budget` skip every other header with one test.
    lengths: u64,
    /// A configured name is 64 bytes or longer, so the length filter cannot be used.
    long_name: bool,
}

impl Default for IncomingDeadlines {
    /// [`GRPC_TIMEOUT`], [`ENVOY_EXPECTED_RQ_TIMEOUT_MS`] and [`REQUEST_TIMEOUT_MS`]; no cap
    /// below one day.
    fn default() -> Self {
        IncomingDeadlines::none()
            .header(
                HeaderName::from_static(GRPC_TIMEOUT),
                BudgetFormat::GrpcTimeout,
            )
            .header(
                HeaderName::from_static(ENVOY_EXPECTED_RQ_TIMEOUT_MS),
                BudgetFormat::Milliseconds,
            )
            .header(
                HeaderName::from_static(REQUEST_TIMEOUT_MS),
                BudgetFormat::Milliseconds,
            )
    }
}

impl IncomingDeadlines {
    /// No header is read: requests get only the server's and the routes' timeouts.
    pub fn none() -> Self {
        IncomingDeadlines {
            headers: Vec::new(),
            max: None,
            allowance: DEFAULT_TRANSIT_ALLOWANCE,
            lengths: 0,
            long_name: false,
        }
    }

    /// Also reads `name`, spelled as `format` (replacing the format if `name` was read
    /// already). To rename a header: [`without`](Self::without) the old one, then this.
    pub fn header(mut self, name: HeaderName, format: BudgetFormat) -> Self {
        match self.headers.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = format,
            None => self.headers.push((name, format)),
        }
        self.index()
    }

    /// Stops reading `name`.
    pub fn without(mut self, name: &HeaderName) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.index()
    }

    /// The most budget a caller may give: a longer one is cut to `max`. Valid: more than 0,
    /// at most a day (checked by [`HttpServer::incoming_deadlines`](crate::HttpServer::incoming_deadlines)).
    pub fn max(mut self, max: Duration) -> Self {
        self.max = Some(max);
        self
    }

    /// The time kept back from a budget in gRPC's format ([`BudgetFormat::GrpcTimeout`],
    /// the caller's whole time left), for the answer to reach the caller before it gives
    /// up: a `grpc-timeout` of 300 ms gives the request's token 295 ms by default, and one
    /// of no more than the allowance leaves no time at all (the token fires at once, and
    /// the call is answered `DEADLINE_EXCEEDED`). Zero takes `grpc-timeout` as it is, as
    /// grpc-go's server does. Valid: at most a day (checked by
    /// [`HttpServer::incoming_deadlines`](crate::HttpServer::incoming_deadlines)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracefully_axum::IncomingDeadlines;
    ///
    /// // Callers across a slow link: answer 20 ms before their deadline.
    /// let deadlines = IncomingDeadlines::default().transit_allowance(Duration::from_millis(20));
    /// assert_eq!(deadlines.allowance(), Duration::from_millis(20));
    /// ```
    ///
    /// *Anchors:* the transit allowance `gracefully-reqwest` keeps back from the budget it
    /// sends (here the sender cannot: tonic's `Channel` enforces the `grpc-timeout` it
    /// sends on itself, so a shortened one would end the call on the client first).
    pub fn transit_allowance(mut self, allowance: Duration) -> Self {
        self.allowance = allowance;
        self
    }

    /// The allowance set with [`transit_allowance`](Self::transit_allowance).
    pub fn allowance(&self) -> Duration {
        self.allowance
    }

    /// The headers read, with their formats, in the order they were added.
    pub fn headers(&self) -> impl Iterator<Item = (&HeaderName, BudgetFormat)> {
        self.headers.iter().map(|(name, format)| (name, *format))
    }

    /// The cap set with [`max`](Self::max), if any.
    pub fn max_budget(&self) -> Option<Duration> {
        self.max
    }

    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        check_duration(
            "incoming_deadlines.transit_allowance",
            self.allowance,
            true,
            "5 ms",
        )?;
        match self.max {
            Some(max) => check_duration("incoming_deadlines.max", max, false, "none"),
            None => Ok(()),
        }
    }

    fn index(mut self) -> Self {
        self.lengths = 0;
        self.long_name = false;
        for (name, _) in &self.headers {
            match name.as_str().len() {
                n @ 0..64 => self.lengths |= 1 << n,
                _ => self.long_name = true,
            }
        }
        self
    }

    /// The smallest well-formed budget among the configured headers `headers` carries
    /// (capped), or `None`.
    ///
    /// The hot path: every request comes through here. One pass over the request's header
    /// *names* with a length test each (a bit in `lengths`) beats a hash look-up per
    /// configured name; a request with none of them costs that pass and nothing else
    /// (measured with `benches/http_instructions.sh`: iterating names and values instead,
    /// through the map's cursor over repeated values, cost twice as much).
    #[inline(always)]
    pub(crate) fn budget(&self, headers: &HeaderMap) -> Option<Duration> {
        let (lengths, long_name) = (self.lengths, self.long_name);
        if lengths == 0 && !long_name {
            return None;
        }
        for name in headers.keys() {
            let len = name.as_str().len();
            if long_name || (len < 64 && (lengths >> len) & 1 != 0) {
                return self.read(headers);
            }
        }
        None
    }

    /// A header has the length of a configured name: the smallest well-formed budget among
    /// the configured headers present (the first value of each), capped.
    #[cold]
    #[inline(never)]
    fn read(&self, headers: &HeaderMap) -> Option<Duration> {
        let mut found: Option<Duration> = None;
        for (name, format) in &self.headers {
            let Some(value) = headers.get(name) else {
                continue;
            };
            match format.parse(value.as_bytes()) {
                Some(budget) => {
                    let budget = match format {
                        BudgetFormat::GrpcTimeout => budget.saturating_sub(self.allowance),
                        BudgetFormat::Milliseconds => budget,
                    };
                    let budget = self.max.map_or(budget, |max| budget.min(max));
                    found = Some(found.map_or(budget, |f| f.min(budget)));
                }
                None => tracing::debug!(
                    header = %name,
                    value = ?value,
                    "malformed incoming deadline ignored"
                ),
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn grpc_timeout_units_all_parse() {
        let f = BudgetFormat::GrpcTimeout;
        assert_eq!(f.parse(b"2H"), Some(Duration::from_secs(7200)));
        assert_eq!(f.parse(b"3M"), Some(Duration::from_secs(180)));
        assert_eq!(f.parse(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(f.parse(b"300m"), Some(Duration::from_millis(300)));
        assert_eq!(f.parse(b"1500u"), Some(Duration::from_micros(1500)));
        assert_eq!(
            f.parse(b"99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        assert_eq!(f.parse(b"0m"), Some(Duration::ZERO));
    }

    #[test]
    fn malformed_grpc_timeouts_are_rejected() {
        let f = BudgetFormat::GrpcTimeout;
        for bad in [
            &b""[..],
            b"m",
            b"300",
            b"300x",
            b"-3S",
            b"+3S",
            b"3.5S",
            b" 3S",
            b"123456789m",
        ] {
            assert_eq!(f.parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn malformed_milliseconds_are_rejected() {
        let f = BudgetFormat::Milliseconds;
        for bad in [&b""[..], b"abc", b"-5", b"+5", b"1.5", b"5ms", b"1 000"] {
            assert_eq!(f.parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(f.parse(b"0"), Some(Duration::ZERO));
    }

    #[test]
    fn a_huge_budget_is_at_most_one_day() {
        assert_eq!(
            BudgetFormat::GrpcTimeout.parse(b"99999999H"),
            Some(MAX_DURATION)
        );
        assert_eq!(
            BudgetFormat::Milliseconds.parse(b"999999999999999999999999"),
            Some(MAX_DURATION)
        );
    }

    #[test]
    fn an_encoded_budget_is_never_indexed_by_hpack() {
        // A budget differs on every request: HTTP/2 must send it as a never-indexed literal
        // (h2 does so for a sensitive value) rather than churn both peers' header tables.
        for f in [BudgetFormat::GrpcTimeout, BudgetFormat::Milliseconds] {
            assert!(f.encode(Duration::from_millis(300)).is_sensitive());
        }
    }

    #[test]
    fn encode_rounds_down_into_eight_digits() {
        let f = BudgetFormat::GrpcTimeout;
        assert_eq!(f.encode(Duration::from_nanos(99_999_999)), "99999999n");
        assert_eq!(f.encode(Duration::from_millis(300)), "300000u");
        assert_eq!(f.encode(Duration::from_micros(123_456_789)), "123456m");
        assert_eq!(f.encode(Duration::from_secs(86_400)), "86400000m");
        assert_eq!(f.encode(Duration::from_secs(400 * 86_400)), "34560000S");
        assert_eq!(f.encode(Duration::MAX), "99999999H");
        for d in [
            Duration::from_nanos(1),
            Duration::from_micros(299_999),
            Duration::from_secs(12_345_678),
        ] {
            let parsed = f.parse(f.encode(d).as_bytes()).unwrap();
            assert!(parsed <= d, "{d:?} → {parsed:?}");
        }
        assert_eq!(
            BudgetFormat::Milliseconds.encode(Duration::from_micros(2_999)),
            "2"
        );
    }

    #[test]
    fn the_smallest_of_several_budgets_wins() {
        let d = IncomingDeadlines::default();
        let h = headers(&[
            ("grpc-timeout", "2S"),
            ("x-request-timeout-ms", "700"),
            ("x-envoy-expected-rq-timeout-ms", "900"),
        ]);
        assert_eq!(d.budget(&h), Some(Duration::from_millis(700)));
    }

    #[test]
    fn a_malformed_header_does_not_hide_a_good_one() {
        let d = IncomingDeadlines::default();
        let h = headers(&[("grpc-timeout", "soon"), ("x-request-timeout-ms", "700")]);
        assert_eq!(d.budget(&h), Some(Duration::from_millis(700)));
    }

    #[test]
    fn headers_of_the_same_length_but_another_name_are_not_read() {
        // "x-request-timeout-xx" has the length of "x-request-timeout-ms".
        let d = IncomingDeadlines::default();
        let h = headers(&[("x-request-timeout-xx", "5"), ("host", "example")]);
        assert_eq!(d.budget(&h), None);
    }

    #[test]
    fn the_allowance_is_kept_back_from_grpc_timeout_only() {
        let d = IncomingDeadlines::default();
        assert_eq!(d.allowance(), DEFAULT_TRANSIT_ALLOWANCE);
        let budget = |pairs| d.budget(&headers(pairs));
        assert_eq!(
            budget(&[("grpc-timeout", "300m")]),
            Some(Duration::from_millis(295))
        );
        assert_eq!(
            budget(&[("x-request-timeout-ms", "300")]),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            budget(&[("x-envoy-expected-rq-timeout-ms", "300")]),
            Some(Duration::from_millis(300))
        );
        // No more than the allowance: no time left at all.
        assert_eq!(budget(&[("grpc-timeout", "4m")]), Some(Duration::ZERO));
        // The allowance is taken before the smallest is chosen.
        assert_eq!(
            budget(&[("grpc-timeout", "300m"), ("x-request-timeout-ms", "298")]),
            Some(Duration::from_millis(295))
        );
        let exact = IncomingDeadlines::default().transit_allowance(Duration::ZERO);
        assert_eq!(
            exact.budget(&headers(&[("grpc-timeout", "300m")])),
            Some(Duration::from_millis(300))
        );
    }

    #[test]
    fn an_allowance_longer_than_a_day_is_refused_naming_the_field() {
        let error = IncomingDeadlines::default()
            .transit_allowance(Duration::from_secs(2 * 86_400))
            .check()
            .unwrap_err();
        assert_eq!(error.field(), "incoming_deadlines.transit_allowance");
        assert!(IncomingDeadlines::default().check().is_ok());
    }

    #[test]
    fn the_cap_cuts_a_longer_budget() {
        let d = IncomingDeadlines::default().max(Duration::from_secs(1));
        let h = headers(&[("grpc-timeout", "5S")]);
        assert_eq!(d.budget(&h), Some(Duration::from_secs(1)));
    }

    #[test]
    fn headers_can_be_added_removed_and_renamed() {
        let d = IncomingDeadlines::default()
            .without(&HeaderName::from_static(REQUEST_TIMEOUT_MS))
            .header(
                HeaderName::from_static("x-budget-ms"),
                BudgetFormat::Milliseconds,
            );
        assert_eq!(d.budget(&headers(&[("x-request-timeout-ms", "5")])), None);
        assert_eq!(
            d.budget(&headers(&[("x-budget-ms", "5")])),
            Some(Duration::from_millis(5))
        );
        assert_eq!(
            IncomingDeadlines::none().budget(&headers(&[("grpc-timeout", "1S")])),
            None
        );
    }

    #[test]
    fn a_configured_name_of_64_bytes_or_more_is_still_read() {
        let long = "x-a-very-long-header-name-for-the-budget-that-goes-on-and-on-and-on";
        assert!(long.len() >= 64);
        let d = IncomingDeadlines::none()
            .header(HeaderName::from_static(long), BudgetFormat::Milliseconds);
        let mut h = HeaderMap::new();
        h.insert(HeaderName::from_static(long), HeaderValue::from_static("9"));
        assert_eq!(d.budget(&h), Some(Duration::from_millis(9)));
    }
}
