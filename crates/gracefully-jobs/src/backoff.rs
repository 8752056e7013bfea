//! [`Backoff`]: how long a failed job waits before its next attempt.

use std::time::Duration;

use crate::new_job::MAX_DELAY_MS;

/// Exponential backoff with jitter for retries after genuine failures: attempt `n`
/// (1-based) waits `initial × 2^(n−1)`, capped at `max`, then scaled by a random factor in
/// `[1 − jitter, 1]` so that jobs that failed together do not retry together.
///
/// The default: 1 s initial, 1 h cap, jitter 0.5 — attempts wait about 1 s, 2 s, 4 s, …
///
/// Any settings are accepted, and [`delay`](Backoff::delay) never panics: it saturates,
/// and never exceeds [`Backoff::MAX_DELAY`] (about 73 million years, the bound of
/// [`NewJob::delay`](crate::NewJob::delay)), so a delay always fits in `i64` milliseconds
/// and the database's `now + delay` cannot overflow.
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
    /// The longest delay [`delay`](Self::delay) returns, whatever the settings:
    /// `i64::MAX / 4` milliseconds (about 73 million years).
    pub const MAX_DELAY: Duration = Duration::from_millis(MAX_DELAY_MS as u64);

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

    /// The delay after failed attempt `attempt` (1-based; 0 is taken as 1): at most the
    /// backoff's `max` and at most [`MAX_DELAY`](Self::MAX_DELAY). Never panics.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        // Capped before the jitter: `mul_f64` panics when its result does not fit in a
        // `Duration`, which `Duration::MAX` times a factor near 1 does not.
        let base = self
            .initial
            .saturating_mul(1u32 << exp)
            .min(self.max)
            .min(Self::MAX_DELAY);
        if self.jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 - self.jitter * fastrand::f64();
        // The factor is at most 1, but float rounding must not take the delay past the cap.
        base.mul_f64(factor).min(base)
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

    #[test]
    fn extreme_settings_saturate_at_the_bound_and_never_panic() {
        let huge = Backoff::exponential(Duration::MAX, Duration::MAX);
        for jitter in [0.0, 0.5, 1.0] {
            let b = huge.jitter(jitter);
            for attempt in [0, 1, 2, 31, 32, 33, 1_000, u32::MAX] {
                let d = b.delay(attempt);
                assert!(d <= Backoff::MAX_DELAY, "{d:?}");
                // In range of the `i64` milliseconds the store writes.
                assert!(i64::try_from(d.as_millis()).is_ok(), "{d:?}");
            }
        }
        assert_eq!(huge.jitter(0.0).delay(1), Backoff::MAX_DELAY);
        let uncapped = Backoff::exponential(Duration::from_secs(1), Duration::MAX).jitter(0.0);
        assert_eq!(uncapped.delay(u32::MAX), Duration::from_secs(1 << 31));
        let zero = Backoff::exponential(Duration::ZERO, Duration::ZERO);
        assert_eq!(zero.delay(u32::MAX), Duration::ZERO);
        let nan = Backoff::exponential(Duration::MAX, Duration::MAX).jitter(f64::NAN);
        assert_eq!(nan.delay(7), Backoff::MAX_DELAY);
    }
}
