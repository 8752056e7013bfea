//! [`Backoff`]: how long a failed message waits before its next delivery.

use std::time::Duration;

/// How long a message whose handler failed waits before JetStream delivers it again (the
/// delay of its `-NAK`). Exponential by default, with jitter so that a burst of failures
/// does not come back as a burst.
///
/// ```
/// use std::time::Duration;
/// use gracefully_nats::Backoff;
///
/// let backoff = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60));
/// // After the 1st failure 0.5–1 s, the 2nd 1–2 s, the 3rd 2–4 s, … never above 60 s.
/// let third = backoff.delay(3);
/// assert!(third >= Duration::from_secs(2) && third <= Duration::from_secs(4));
/// assert!(backoff.delay(40) <= Duration::from_secs(60));
///
/// let fixed = Backoff::fixed(Duration::from_millis(250)).without_jitter();
/// assert_eq!(fixed.delay(7), Duration::from_millis(250));
/// ```
///
/// *Anchors:* MassTransit's `UseDelayedRedelivery(r => r.Exponential(…))`; JetStream's own
/// consumer `backoff` list applies only to AckWait expiries, not to a `-NAK`, so the
/// consumer computes the delay itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    factor: u32,
    jitter: bool,
}

impl Backoff {
    /// `first` after the first failure, doubling with each further one, at most `max`.
    /// With jitter (the default) each delay is drawn from its upper half.
    pub fn exponential(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            factor: 2,
            jitter: true,
        }
    }

    /// The same `delay` after every failure (with jitter: drawn from its upper half).
    pub fn fixed(delay: Duration) -> Backoff {
        Backoff {
            first: delay,
            max: delay,
            factor: 1,
            jitter: true,
        }
    }

    /// Exact delays, no jitter.
    pub fn without_jitter(mut self) -> Backoff {
        self.jitter = false;
        self
    }

    /// The delay after the `failures`-th failure (1-based; 0 counts as 1).
    pub fn delay(&self, failures: u64) -> Duration {
        let exponent = u32::try_from(failures.saturating_sub(1))
            .unwrap_or(u32::MAX)
            .min(40);
        let scale = self.factor.saturating_pow(exponent);
        let delay = self.first.saturating_mul(scale).min(self.max);
        if self.jitter {
            delay.mul_f64(0.5 + fastrand::f64() * 0.5)
        } else {
            delay
        }
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.first.is_zero() {
            return Err("has a first delay of 0; valid: more than 0 (default 1 s)".into());
        }
        if self.max < self.first {
            return Err(format!(
                "has a maximum ({:?}) below its first delay ({:?}); valid: max ≥ first",
                self.max, self.first
            ));
        }
        Ok(())
    }
}

impl Default for Backoff {
    /// Exponential from 1 s to 60 s, with jitter.
    fn default() -> Backoff {
        Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_doubles_up_to_the_cap_and_jitter_stays_in_the_upper_half() {
        let b = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .without_jitter();
        let delays: Vec<u128> = (1..=6).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.delay(0), Duration::from_millis(100));
        assert_eq!(b.delay(u64::MAX), Duration::from_secs(1));
        let jittered = Backoff::exponential(Duration::from_millis(100), Duration::from_secs(1));
        for _ in 0..1000 {
            let d = jittered.delay(3);
            assert!(
                d >= Duration::from_millis(200) && d <= Duration::from_millis(400),
                "{d:?}"
            );
        }
    }

    #[test]
    fn validate_names_what_would_be_valid() {
        assert!(
            Backoff::fixed(Duration::ZERO)
                .validate()
                .unwrap_err()
                .contains("more than 0")
        );
        let err = Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert!(err.contains("max ≥ first"), "{err}");
        assert!(Backoff::default().validate().is_ok());
    }
}
