//! [`Pulls`]: the bookkeeping of pull requests — how many messages are asked for and not yet
//! delivered, when to ask for more, and what the server's status messages say about
//! requests that ended.
//!
//! JetStream pull requests are fire-and-forget publishes to
//! `$JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>` with the consumer's inbox as reply
//! subject: the server delivers up to `batch` messages there, and says with a status
//! message when a request ends unfulfilled (`408` expired, `409` terminated; both carry
//! `Nats-Pending-Messages`, the part it did not fulfil). A fulfilled request ends silently.
//!
//! Invariant 1: `outstanding` never exceeds the sum of the batches in `live` (the requests
//! not known to have ended); whenever it reaches 0, every live request is fulfilled and
//! `live` is emptied.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// How long after its expiry a request still counts, waiting for its `408` (which may be
/// in flight).
const EXPIRY_GRACE: Duration = Duration::from_secs(2);

/// Pull-request bookkeeping for one subscription.
#[derive(Debug)]
pub(crate) struct Pulls {
    /// Messages asked for and not yet delivered or known lost.
    outstanding: usize,
    /// Requests not known to have ended, oldest first: when each expires, and its batch.
    live: VecDeque<(Instant, usize)>,
    /// The largest batch one request may ask for (the consumer's `max_batch`).
    max_batch: usize,
    expires: Duration,
    idle_heartbeat: Duration,
    /// No requests until then (after the server rejected one or JetStream did not answer).
    paused_until: Option<Instant>,
    /// Rejections in a row, for the pause's backoff.
    rejections: u32,
}

impl Pulls {
    pub(crate) fn new(max_batch: usize, expires: Duration, idle_heartbeat: Duration) -> Pulls {
        Pulls {
            outstanding: 0,
            live: VecDeque::new(),
            max_batch: max_batch.max(1),
            expires,
            idle_heartbeat,
            paused_until: None,
            rejections: 0,
        }
    }

    /// Messages asked for and not yet delivered.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// How many messages to ask for now, if any: the consumer may hold `limit` messages
    /// not started (free handler slots plus prefetch) and holds `buffered` of them already.
    /// Asks once half of `capacity` (concurrency plus prefetch) is missing, so requests come
    /// in batches (as async-nats's `messages()` refills at half its batch), or as soon as
    /// nothing at all is held or asked for.
    pub(crate) fn want(
        &self,
        limit: usize,
        buffered: usize,
        capacity: usize,
        now: Instant,
    ) -> Option<usize> {
        if self.paused_until.is_some_and(|until| now < until) {
            return None;
        }
        let held = buffered + self.outstanding;
        let want = limit.checked_sub(held).filter(|&w| w > 0)?;
        let threshold = (capacity / 2).max(1);
        (want >= threshold || held == 0).then(|| want.min(self.max_batch))
    }

    /// A request for `batch` messages was sent.
    pub(crate) fn sent(&mut self, batch: usize, now: Instant) {
        self.outstanding += batch;
        self.live.push_back((now + self.expires, batch));
    }

    /// A message arrived.
    pub(crate) fn delivered(&mut self) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.rejections = 0;
        if self.outstanding == 0 {
            self.live.clear(); // invariant 1
        }
    }

    /// The server ended a request with `pending` of its messages undelivered (`None`: it did
    /// not say). Requests expire in the order they were sent, so it is the oldest.
    pub(crate) fn ended(&mut self, pending: Option<usize>) {
        let oldest = self.live.pop_front();
        let lost = pending.or(oldest.map(|(_, batch)| batch)).unwrap_or(0);
        self.outstanding = self.outstanding.saturating_sub(lost);
        self.clamp();
    }

    /// The server rejected a request or JetStream did not answer: forget what was asked
    /// and pause requests, 100 ms doubling to 5 s.
    pub(crate) fn rejected(&mut self, now: Instant) {
        self.reset();
        let pause = Duration::from_millis(100)
            .saturating_mul(1 << self.rejections.min(6))
            .min(Duration::from_secs(5));
        self.rejections += 1;
        self.paused_until = Some(now + pause);
    }

    /// Forgets every request (a new connection: the old ones died with the old
    /// subscription's interest).
    pub(crate) fn reset(&mut self) {
        self.outstanding = 0;
        self.live.clear();
    }

    /// Forgets requests well past their expiry whose `408` never came; and, if requests are
    /// outstanding but neither a message nor a heartbeat was heard for three heartbeats,
    /// all of them (the server lost them: a restart, a consumer recreated). Returns whether
    /// it forgot any.
    pub(crate) fn sweep(&mut self, last_heard: Instant, now: Instant) -> bool {
        let before = self.outstanding;
        while self
            .live
            .front()
            .is_some_and(|&(expires_at, _)| expires_at + EXPIRY_GRACE < now)
        {
            self.live.pop_front();
        }
        self.clamp();
        if self.outstanding > 0
            && now.saturating_duration_since(last_heard) > 3 * self.idle_heartbeat
        {
            self.reset();
        }
        self.outstanding != before
    }

    /// When the next request may be sent, if requests are paused.
    pub(crate) fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    /// Invariant 1.
    fn clamp(&mut self) {
        let live: usize = self.live.iter().map(|&(_, batch)| batch).sum();
        self.outstanding = self.outstanding.min(live);
        if self.outstanding == 0 {
            self.live.clear();
        }
    }

    /// The body of a pull request for `batch` messages.
    pub(crate) fn request(&self, batch: usize) -> Bytes {
        Bytes::from(format!(
            r#"{{"batch":{batch},"expires":{},"idle_heartbeat":{}}}"#,
            self.expires.as_nanos(),
            self.idle_heartbeat.as_nanos()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pulls() -> Pulls {
        Pulls::new(100, Duration::from_secs(30), Duration::from_secs(5))
    }

    #[test]
    fn asks_in_batches_of_half_or_when_nothing_is_held() {
        let now = Instant::now();
        let mut p = pulls();
        // concurrency 8 + prefetch 8: nothing held, so ask for all 16.
        assert_eq!(p.want(16, 0, 16, now), Some(16));
        p.sent(16, now);
        assert_eq!(p.want(16, 0, 16, now), None);
        for _ in 0..7 {
            p.delivered();
        }
        // 7 missing: less than half (8), and something is held.
        assert_eq!(p.want(16, 7, 16, now), None);
        assert_eq!(p.want(23, 7, 16, now), None);
        assert_eq!(p.want(24, 7, 16, now), Some(8));
    }

    #[test]
    fn never_asks_for_more_than_max_batch() {
        let now = Instant::now();
        let p = Pulls::new(10, Duration::from_secs(30), Duration::from_secs(5));
        assert_eq!(p.want(64, 0, 64, now), Some(10));
    }

    #[test]
    fn an_expired_request_gives_back_what_it_did_not_deliver() {
        let now = Instant::now();
        let mut p = pulls();
        p.sent(10, now);
        p.sent(10, now);
        for _ in 0..4 {
            p.delivered();
        }
        assert_eq!(p.outstanding(), 16);
        p.ended(Some(6)); // the first request: 4 delivered, 6 pending
        assert_eq!(p.outstanding(), 10);
        p.ended(None); // the second, no header: its whole batch
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn outstanding_never_exceeds_the_live_requests_batches() {
        let now = Instant::now();
        let mut p = pulls();
        p.sent(5, now);
        p.ended(Some(50)); // a bogus header cannot make it negative
        assert_eq!(p.outstanding(), 0);
        p.sent(5, now);
        p.sent(5, now + Duration::from_secs(20));
        // the first expired long ago and its 408 was lost: forgotten, the second kept
        assert!(p.sweep(now + Duration::from_secs(33), now + Duration::from_secs(33)));
        assert_eq!(p.outstanding(), 5);
    }

    #[test]
    fn a_silent_server_makes_it_forget_its_requests() {
        let now = Instant::now();
        let mut p = pulls();
        p.sent(8, now);
        assert!(!p.sweep(now, now + Duration::from_secs(14)));
        assert!(p.sweep(now, now + Duration::from_secs(16)));
        assert_eq!(p.outstanding(), 0);
    }

    #[test]
    fn rejections_pause_requests_with_a_growing_backoff() {
        let now = Instant::now();
        let mut p = pulls();
        p.sent(8, now);
        p.rejected(now);
        assert_eq!(p.outstanding(), 0);
        assert_eq!(p.want(16, 0, 16, now), None);
        assert_eq!(
            p.want(16, 0, 16, now + Duration::from_millis(100)),
            Some(16)
        );
        p.rejected(now);
        assert_eq!(p.paused_until(), Some(now + Duration::from_millis(200)));
    }

    #[test]
    fn the_request_body_is_the_json_jetstream_expects() {
        assert_eq!(
            &pulls().request(7)[..],
            br#"{"batch":7,"expires":30000000000,"idle_heartbeat":5000000000}"#
        );
    }
}
