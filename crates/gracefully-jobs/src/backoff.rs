//! [`Backoff`]: how long a failed job waits before its next attempt.

use std::time::Duration;

/// Exponential backoff with jitter for retries after genuine failures: attempt `n`
/// (1-based) waits `initial × 2^(n−1)`, capped at `max`, then scaled by a random factor in
/// `[1 − jitter, 1]` so that jobs that failed together do not retry together.
///
/// The default: 1 s initial, 1 h cap, jitter 0.5 — attempts wait about 1 s, 2 s, 4 s, …
///
/// *Anchors:* River's default retry policy (attempt⁴ seconds with 10 % jitter);
/// graphile-worker's `exp(min(attempts, 10))` seconds; AWS's "full jitter".
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(3600),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// Backoff from `initial`, doubling per attempt, capped at `max`, with the default
    /// jitter (0.5).
    pub fn exponential(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            jitter: 0.5,
        }
    }

    /// The random share taken off each delay, from 0 (none) to 1; clamped into `[0, 1]`.
    pub fn jitter(mut self, jitter: f64) -> Backoff {
        self.jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self
    }

    /// The delay after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let factor = 1.0 - self.jitter * fastrand::f64();
        base.mul_f64(factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_jitter_only_shortens() {
        let b =
            Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1)).jitter(0.0);
        assert_eq!(b.delay(1), Duration::from_millis(100));
        assert_eq!(b.delay(2), Duration::from_millis(200));
        assert_eq!(b.delay(4), Duration::from_millis(800));
        assert_eq!(b.delay(5), Duration::from_secs(1));
        assert_eq!(b.delay(500), Duration::from_secs(1));
        let j = b.jitter(0.5);
        for n in 1..10 {
            let d = j.delay(n);
            assert!(d <= b.delay(n) && d >= b.delay(n) / 2, "{d:?}");
        }
    }
}
