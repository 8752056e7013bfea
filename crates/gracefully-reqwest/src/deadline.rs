//! The deadline of an outbound call: the token's remaining time bounds the request and
//! travels downstream in a header ([`DeadlinePropagation`], [`REQUEST_TIMEOUT_HEADER`]).

use std::time::Duration;

use gracefully::{CancellationToken, Cancelled, Reason};
use http::header::Entry;
use http::{HeaderName, HeaderValue};

/// The header that carries the caller's remaining budget downstream, in whole milliseconds
/// (`x-request-timeout-ms: 1234`). The default of [`DeadlinePropagation`].
///
/// The value is the token's remaining time minus a small
/// [transit allowance](DeadlinePropagation::transit_allowance), rounded down: always at least
/// 1 and never more than the time the caller will still wait. A callee that reads it (the
/// gracefully HTTP server reads this same header as an incoming deadline) gives up no later
/// than its caller, so no service in a chain works on an answer nobody will read.
///
/// ```
/// use gracefully_reqwest::REQUEST_TIMEOUT_HEADER;
/// # let headers = http::HeaderMap::new();
/// // Server side: the caller's budget, if it sent one.
/// let budget_ms: Option<u64> = headers
///     .get(REQUEST_TIMEOUT_HEADER)
///     .and_then(|v| v.to_str().ok()?.parse().ok());
/// # assert_eq!(budget_ms, None);
/// ```
///
/// *Anchors:* gRPC's `grpc-timeout` (which Go's and .NET's gRPC clients fill from the
/// context's deadline); Envoy's `x-envoy-expected-rq-timeout-ms`, which has the same
/// meaning and format (select it with [`DeadlinePropagation::header`]). Go's `net/http` and
/// .NET's `HttpClient` send no deadline at all.
pub const REQUEST_TIMEOUT_HEADER: &str = "x-request-timeout-ms";

/// The default [transit allowance](DeadlinePropagation::transit_allowance): 5 ms — a few
/// network hops inside one data centre, both ways, with room for scheduling.
///
/// *Anchors:* gRPC (Go, .NET) sends the full time left and keeps no allowance, so a callee
/// may still be working when its caller's deadline passes; Finagle's deadline propagation
/// does the same. The allowance makes the callee give up first, so its answer (a 504, say)
/// still reaches a caller that is listening.
pub const DEFAULT_TRANSIT_ALLOWANCE: Duration = Duration::from_millis(5);

/// How an outbound call hands its token's deadline on: the header it sends downstream, and
/// whether reqwest's own timeout is set too.
///
/// For a token with a [deadline](CancellationToken::deadline), before each attempt:
///
/// 1. **Budget.** `budget = time_left − transit_allowance`, in whole milliseconds, rounded
///    down. If that is zero (or the time left is shorter than the allowance) the request is
///    **not sent**: the call fails at once with [`ReasonKind::DeadlineExceeded`]. A callee
///    is never told it has zero or a negative amount of time.
/// 2. **Timeout.** The request times out at the token's deadline: the token's own timer
///    (the one the core arms for that deadline) fires it, and the request is aborted with
///    `DeadlineExceeded`. reqwest's per-request `timeout` is left as the caller set it,
///    unless [`set_request_timeout(true)`](Self::set_request_timeout): then it becomes the
///    full time left (or stays the caller's, if that is shorter).
/// 3. **Header.** The budget is sent in the header ([`REQUEST_TIMEOUT_HEADER`] unless
///    changed). A value the caller already put in that header is kept if it is smaller.
///
/// A token without a deadline sends no header (and sets no timeout).
///
/// ```
/// use std::time::Duration;
/// use gracefully_reqwest::DeadlinePropagation;
/// use http::HeaderName;
///
/// // Behind Envoy: tell it (and the service behind it) the budget, with 20 ms for two hops.
/// let envoy = DeadlinePropagation::default()
///     .header(HeaderName::from_static("x-envoy-expected-rq-timeout-ms"))
///     .transit_allowance(Duration::from_millis(20));
/// assert_eq!(envoy.header_name().unwrap(), "x-envoy-expected-rq-timeout-ms");
///
/// // A third-party API that must not see our internals: the deadline, but no header.
/// let private = DeadlinePropagation::default().no_header();
/// assert!(private.header_name().is_none());
/// ```
///
/// *Anchors:* what Go's gRPC client does with `ctx.Deadline()` (and .NET's with
/// `EnableCallContextPropagation`), for plain HTTP. Go's `http.NewRequestWithContext` and
/// .NET's `HttpClient.SendAsync(request, token)` stop waiting at the deadline but tell the
/// server nothing.
///
/// [`ReasonKind::DeadlineExceeded`]: gracefully::ReasonKind::DeadlineExceeded
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadlinePropagation {
    header: Option<HeaderName>,
    transit_allowance: Duration,
    request_timeout: bool,
}

/// The default, built once: a request made without
/// [`GracefulRequest::propagation`](crate::GracefulRequest::propagation) borrows it.
pub(crate) static DEFAULT_PROPAGATION: DeadlinePropagation = DeadlinePropagation {
    header: Some(HeaderName::from_static(REQUEST_TIMEOUT_HEADER)),
    transit_allowance: DEFAULT_TRANSIT_ALLOWANCE,
    request_timeout: false,
};

impl Default for DeadlinePropagation {
    /// [`REQUEST_TIMEOUT_HEADER`], with the [`DEFAULT_TRANSIT_ALLOWANCE`]; reqwest's own
    /// timeout not set.
    fn default() -> Self {
        DEFAULT_PROPAGATION.clone()
    }
}

impl DeadlinePropagation {
    /// Sends the budget in `name` instead of [`REQUEST_TIMEOUT_HEADER`] (same format: whole
    /// milliseconds).
    pub fn header(mut self, name: HeaderName) -> Self {
        self.header = Some(name);
        self
    }

    /// Sends no header; the request still ends at the deadline, and a spent budget still
    /// fails without sending.
    pub fn no_header(mut self) -> Self {
        self.header = None;
        self
    }

    /// The time kept back from the budget for the request to travel to the callee and the
    /// answer to travel back, so the callee gives up (and answers, say, 504) while its
    /// caller still listens. Default: 5 ms. Zero sends the full time left.
    pub fn transit_allowance(mut self, allowance: Duration) -> Self {
        self.transit_allowance = allowance;
        self
    }

    /// Whether reqwest's per-request `timeout` is set to the time left as well (default
    /// `false`).
    ///
    /// The token already ends the request at its deadline, so this adds a second timer for
    /// the same instant: reqwest's, which arms a tokio timer per request and wraps the body
    /// in a timeout of its own (measured: about 5,000 instructions more per loopback call,
    /// +8 %; `benches/outbound_instructions.sh`). Turn it on when something after this crate
    /// reads `reqwest::Request::timeout()` — an inner middleware that logs or forwards it.
    pub fn set_request_timeout(mut self, set: bool) -> Self {
        self.request_timeout = set;
        self
    }

    /// The header the budget is sent in, if any.
    pub fn header_name(&self) -> Option<&HeaderName> {
        self.header.as_ref()
    }

    /// The time kept back for transit.
    pub fn allowance(&self) -> Duration {
        self.transit_allowance
    }

    /// Applies `token`'s deadline to `request` (the three steps in the type's docs), or says
    /// why the request must not be sent: the token is cancelled, or its budget is spent.
    pub(crate) fn apply(
        &self,
        request: &mut reqwest::Request,
        token: &CancellationToken,
    ) -> Result<(), Cancelled> {
        token.check()?;
        let Some(left) = token.time_left() else {
            return Ok(());
        };
        let budget_ms = u64::try_from(left.saturating_sub(self.transit_allowance).as_millis())
            .unwrap_or(u64::MAX);
        if budget_ms == 0 {
            return Err(self.spent(left));
        }
        if self.request_timeout {
            match request.timeout_mut() {
                Some(timeout) if *timeout <= left => {}
                slot => *slot = Some(left),
            }
        }
        if let Some(name) = &self.header {
            // Marked sensitive: HTTP/2 then sends it as a literal never indexed by HPACK (a
            // budget differs on every request; indexing it only evicts the table entries
            // that do repeat). HTTP/1 ignores the mark.
            let budget_value = || {
                let mut value = HeaderValue::from(budget_ms);
                value.set_sensitive(true);
                value
            };
            // One lookup (the name hashed once) whether or not the caller set it already.
            match request.headers_mut().entry(name) {
                Entry::Vacant(slot) => {
                    slot.insert(budget_value());
                }
                Entry::Occupied(mut set) => {
                    // Every value counts: with two, a larger second one must not go on (a
                    // callee may read the last, or all).
                    let values = set.iter().count();
                    let smallest = set
                        .iter()
                        .map(|value| value.to_str().ok()?.parse::<u64>().ok())
                        .min()
                        .flatten();
                    match smallest {
                        Some(smaller) if smaller <= budget_ms && values == 1 => {}
                        Some(smaller) if smaller <= budget_ms => {
                            let mut value = HeaderValue::from(smaller);
                            value.set_sensitive(true);
                            set.insert(value);
                        }
                        // As `HeaderMap::insert`: the one value, replacing every other.
                        _ => {
                            set.insert(budget_value());
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The error for a budget too small to send: `left` is not more than the allowance (plus
    /// the sub-millisecond rest the header cannot express).
    #[cold]
    fn spent(&self, left: Duration) -> Cancelled {
        Cancelled::new(Reason::deadline_exceeded().with_message(format!(
            "not sent: {left:?} left before the deadline, not more than the transit allowance \
             of {:?} plus 1 ms",
            self.transit_allowance
        )))
    }
}

/// The cancellation to report instead of `error`'s own outcome, if the token has fired or
/// its deadline has passed: then the operation stopped *because of* the token, whatever
/// error the transport saw (a timeout from reqwest's own timer, which `set_request_timeout`
/// sets to the same deadline and which may fire a moment before the token's timer does; a
/// connection error racing the cancel). As Go's `net/http` returns `ctx.Err()` once the context is done.
pub(crate) fn cancellation(token: &CancellationToken) -> Option<Cancelled> {
    if let Some(reason) = token.reason() {
        return Some(Cancelled::new(reason));
    }
    if token.time_left() == Some(Duration::ZERO) {
        return Some(Cancelled::new(
            Reason::deadline_exceeded().with_message("the token's deadline passed"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use gracefully::{CancellationSource, ManualClock, ReasonKind};

    fn request() -> reqwest::Request {
        reqwest::Request::new(
            reqwest::Method::GET,
            "http://127.0.0.1:9/".parse().expect("a valid URL"),
        )
    }

    fn header(request: &reqwest::Request, name: &str) -> Option<u64> {
        request.headers().get(name)?.to_str().ok()?.parse().ok()
    }

    #[test]
    fn the_header_is_the_time_left_minus_the_allowance_and_reqwests_timeout_is_left_alone() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root
            .token()
            .child_with_timeout(Duration::from_millis(1_500));
        clock.advance(Duration::from_millis(250));
        let mut request = request();
        DeadlinePropagation::default()
            .apply(&mut request, &call.token())
            .expect("budget left");
        assert_eq!(header(&request, REQUEST_TIMEOUT_HEADER), Some(1_245));
        assert_eq!(request.timeout(), None);
    }

    #[test]
    fn set_request_timeout_makes_the_time_left_reqwests_timeout() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root
            .token()
            .child_with_timeout(Duration::from_millis(1_500));
        clock.advance(Duration::from_millis(250));
        let mut request = request();
        DeadlinePropagation::default()
            .set_request_timeout(true)
            .apply(&mut request, &call.token())
            .expect("budget left");
        assert_eq!(request.timeout(), Some(&Duration::from_millis(1_250)));
        assert_eq!(header(&request, REQUEST_TIMEOUT_HEADER), Some(1_245));
    }

    #[test]
    fn the_budget_is_rounded_down_to_whole_milliseconds() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root
            .token()
            .child_with_timeout(Duration::from_micros(7_999));
        let mut request = request();
        DeadlinePropagation::default()
            .apply(&mut request, &call.token())
            .expect("budget left");
        assert_eq!(header(&request, REQUEST_TIMEOUT_HEADER), Some(2));
    }

    #[test]
    fn a_budget_not_above_the_allowance_is_not_sent() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root
            .token()
            .child_with_timeout(Duration::from_micros(5_999));
        let mut request = request();
        let err = DeadlinePropagation::default()
            .apply(&mut request, &call.token())
            .expect_err("5.999 ms left, 5 ms allowance: under 1 ms to send");
        assert_eq!(err.kind(), ReasonKind::DeadlineExceeded);
        assert!(
            err.reason().message().unwrap().contains("not sent"),
            "{err}"
        );
        assert!(request.headers().is_empty());
        assert_eq!(request.timeout(), None);
    }

    #[test]
    fn a_zero_allowance_sends_the_full_time_left() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root.token().child_with_timeout(Duration::from_millis(40));
        let mut request = request();
        DeadlinePropagation::default()
            .transit_allowance(Duration::ZERO)
            .apply(&mut request, &call.token())
            .expect("budget left");
        assert_eq!(header(&request, REQUEST_TIMEOUT_HEADER), Some(40));
    }

    #[test]
    fn a_cancelled_token_is_reported_with_its_own_reason() {
        let source = CancellationSource::new();
        source.cancel_with(Reason::shutdown().with_message("SIGTERM"));
        let err = DeadlinePropagation::default()
            .apply(&mut request(), &source.token())
            .expect_err("cancelled");
        assert_eq!(err.kind(), ReasonKind::Shutdown);
        assert_eq!(err.reason().message(), Some("SIGTERM"));
    }

    #[test]
    fn the_budget_header_is_never_indexed_by_hpack() {
        // It differs on every request: over HTTP/2 it goes as a never-indexed literal (h2
        // does so for a sensitive value) rather than churn both peers' header tables.
        let source = CancellationSource::with_timeout(Duration::from_secs(60));
        let mut request = request();
        DeadlinePropagation::default()
            .apply(&mut request, &source.token())
            .expect("budget left");
        let value = request.headers().get(REQUEST_TIMEOUT_HEADER).expect("sent");
        assert!(value.is_sensitive());
    }

    #[test]
    fn no_deadline_sets_neither_timeout_nor_header() {
        let source = CancellationSource::new();
        let mut request = request();
        DeadlinePropagation::default()
            .apply(&mut request, &source.token())
            .expect("not cancelled");
        assert_eq!(request.timeout(), None);
        assert!(request.headers().is_empty());
    }

    #[test]
    fn a_shorter_timeout_of_the_caller_is_kept() {
        let source = CancellationSource::with_timeout(Duration::from_secs(60));
        let mut request = request();
        *request.timeout_mut() = Some(Duration::from_secs(2));
        DeadlinePropagation::default()
            .set_request_timeout(true)
            .apply(&mut request, &source.token())
            .expect("budget left");
        assert_eq!(request.timeout(), Some(&Duration::from_secs(2)));
    }

    #[test]
    fn a_smaller_header_value_of_the_caller_is_kept_and_a_larger_one_replaced() {
        let source = CancellationSource::with_timeout(Duration::from_secs(60));
        let mut request = request();
        request
            .headers_mut()
            .insert(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static("100"));
        DeadlinePropagation::default()
            .apply(&mut request, &source.token())
            .expect("budget left");
        assert_eq!(header(&request, REQUEST_TIMEOUT_HEADER), Some(100));

        let mut request = self::request();
        request.headers_mut().insert(
            REQUEST_TIMEOUT_HEADER,
            HeaderValue::from_static("999999999"),
        );
        DeadlinePropagation::default()
            .apply(&mut request, &source.token())
            .expect("budget left");
        let sent = header(&request, REQUEST_TIMEOUT_HEADER).unwrap();
        assert!(sent <= 60_000, "{sent}");
    }

    /// With two values set by the caller, one value goes on: the smaller of theirs and the
    /// budget. (The first was compared alone, and a larger second one went on too.)
    #[test]
    fn of_several_header_values_of_the_caller_only_the_smallest_goes_on() {
        let source = CancellationSource::with_timeout(Duration::from_secs(60));
        for (values, expected_at_most) in [
            (["100", "9999999"], 100),
            (["9999999", "100"], 100),
            (["9999999", "8888888"], 60_000),
            (["100", "soon"], 60_000),
        ] {
            let mut request = request();
            for value in values {
                request
                    .headers_mut()
                    .append(REQUEST_TIMEOUT_HEADER, HeaderValue::from_static(value));
            }
            DeadlinePropagation::default()
                .apply(&mut request, &source.token())
                .expect("budget left");
            let sent: Vec<_> = request
                .headers()
                .get_all(REQUEST_TIMEOUT_HEADER)
                .iter()
                .collect();
            assert_eq!(sent.len(), 1, "{values:?}: {sent:?}");
            let sent = header(&request, REQUEST_TIMEOUT_HEADER).unwrap();
            assert!(sent <= expected_at_most, "{values:?}: {sent}");
            if expected_at_most == 100 {
                assert_eq!(sent, 100, "{values:?}");
            }
        }
    }

    #[test]
    fn the_header_name_is_configurable_and_can_be_left_out() {
        let source = CancellationSource::with_timeout(Duration::from_secs(60));
        let mut request = request();
        DeadlinePropagation::default()
            .header(HeaderName::from_static("x-envoy-expected-rq-timeout-ms"))
            .apply(&mut request, &source.token())
            .expect("budget left");
        assert!(header(&request, "x-envoy-expected-rq-timeout-ms").is_some());
        assert!(request.headers().get(REQUEST_TIMEOUT_HEADER).is_none());

        let mut request = self::request();
        DeadlinePropagation::default()
            .no_header()
            .apply(&mut request, &source.token())
            .expect("budget left");
        assert!(request.headers().is_empty());
    }

    #[test]
    fn a_passed_deadline_is_reported_as_deadline_exceeded() {
        let clock = ManualClock::new();
        let root = CancellationSource::with_clock(&clock);
        let call = root.token().child_with_timeout(Duration::from_millis(10));
        assert!(cancellation(&call.token()).is_none());
        clock.advance(Duration::from_millis(10));
        let cancelled = cancellation(&call.token()).expect("deadline passed");
        assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded);
    }
}
