//! What the host does when a service fails: [`FailurePolicy`] and [`RestartPolicy`].

use std::time::Duration;

/// What the host does when a service's `execute` fails (returns an error that is not a
/// cancellation, or panics). Set per service with
/// [`ServiceOptions::on_failure`](crate::ServiceOptions::on_failure).
///
/// A failed or timed-out *start step* always stops the host, whatever the policy: a host
/// that cannot start is not ready and never will be.
///
/// *Anchors:* .NET's `BackgroundServiceExceptionBehavior` (`StopHost`, `Ignore`) — but .NET
/// then exits 0; here a failure always makes the exit code non-zero. Erlang/OTP supervisor
/// restart intensity for [`Restart`](FailurePolicy::Restart). tokio-graceful-shutdown's
/// `ErrorAction` (`Forward`, `CatchAndLocalShutdown`) has no restart.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Stop the whole host (the default). The failure becomes the shutdown's trigger and the
    /// exit code is [`EXIT_FAILED`](crate::ShutdownReport::EXIT_FAILED).
    #[default]
    StopHost,
    /// Log the failure and keep the host running without this service. The failure still
    /// appears in the report and still makes the exit code non-zero: it is tolerated, not
    /// hidden.
    Ignore,
    /// Run `execute` again after an exponential backoff with jitter, unless the policy's
    /// intensity limit is reached — then stop the host as `StopHost` would.
    Restart(RestartPolicy),
}

/// Restarts with exponential backoff and jitter, under an intensity limit: at most
/// `max_restarts` restarts within any `window`; the failure after that stops the host.
///
/// The delay before restart *k* (counting the restarts still inside the window, from 0) is
/// `initial_backoff × 2^k`, capped at `max_backoff`, then multiplied by a random factor in
/// `[1 − jitter, 1 + jitter]` (and capped again). So delays grow while failures come
/// quickly and fall back once earlier failures leave the window.
///
/// A restart calls `execute` again on the same service value (its start and stop steps
/// are not repeated; state it keeps in `self` survives, so reset what needs resetting at
/// the top of `execute`). The service's stopping token is the same: a shutdown during the
/// backoff ends the service as cancelled instead of restarting it.
///
/// ```
/// use std::time::Duration;
/// use gracefully_host::{FailurePolicy, RestartPolicy};
///
/// let policy = FailurePolicy::Restart(
///     RestartPolicy::new()
///         .max_restarts(3)
///         .within(Duration::from_secs(60))
///         .backoff(Duration::from_millis(100), Duration::from_secs(5))
///         .jitter(0.2),
/// );
/// # let _ = policy;
/// ```
///
/// Defaults: 5 restarts within 60 s, backoff from 100 ms up to 10 s, jitter 0.2.
/// [`HostBuilder::build`](crate::HostBuilder::build) rejects a zero `max_restarts` or
/// window, an initial backoff above the maximum, and a jitter outside `0.0..1.0`.
///
/// *Anchors:* Erlang/OTP `intensity`/`period` (which restart at once, without backoff);
/// Kubernetes' CrashLoopBackOff (backoff without a limit).
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    pub(crate) max_restarts: u32,
    pub(crate) window: Duration,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) jitter: f64,
}

impl RestartPolicy {
    /// The defaults: 5 restarts within 60 s, backoff 100 ms → 10 s, jitter 0.2.
    pub fn new() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 5,
            window: Duration::from_secs(60),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            jitter: 0.2,
        }
    }

    /// At most `n` restarts within the window (at least 1).
    pub fn max_restarts(mut self, n: u32) -> Self {
        self.max_restarts = n;
        self
    }

    /// The window over which restarts are counted (more than zero).
    pub fn within(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// The first delay and the largest (`initial <= max`).
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max;
        self
    }

    /// The random spread of each delay, as a fraction (`0.0 <= jitter < 1.0`; 0 for none).
    pub fn jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter;
        self
    }

    /// A problem with these settings, as `(field, message)`.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_restarts == 0 {
            return Err((
                "max_restarts",
                "must be at least 1 (use FailurePolicy::StopHost for no restarts)".into(),
            ));
        }
        if self.window.is_zero() {
            return Err(("within", "the restart window must be longer than 0".into()));
        }
        if self.initial_backoff > self.max_backoff {
            return Err((
                "backoff",
                format!(
                    "the initial backoff ({:?}) must not exceed the maximum ({:?})",
                    self.initial_backoff, self.max_backoff
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err((
                "jitter",
                format!(
                    "must be in 0.0..1.0 (a fraction of the delay), got {}",
                    self.jitter
                ),
            ));
        }
        Ok(())
    }

    /// The delay before a restart when `recent` restarts are inside the window.
    pub(crate) fn delay(&self, recent: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(recent.min(31)))
            .min(self.max_backoff);
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        Duration::try_from_secs_f64(base.as_secs_f64() * factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_jitter_and_stop_at_the_maximum() {
        let policy = RestartPolicy::new()
            .backoff(Duration::from_millis(100), Duration::from_secs(1))
            .jitter(0.2);
        for _ in 0..200 {
            let d0 = policy.delay(0);
            let d1 = policy.delay(1);
            let d3 = policy.delay(3);
            let d9 = policy.delay(9);
            assert!(d0 >= Duration::from_millis(80) && d0 <= Duration::from_millis(120));
            assert!(d1 >= Duration::from_millis(160) && d1 <= Duration::from_millis(240));
            assert!(d3 >= Duration::from_millis(640) && d3 <= Duration::from_secs(1));
            assert!(d9 >= Duration::from_millis(800) && d9 <= Duration::from_secs(1));
        }
    }

    #[test]
    fn without_jitter_delays_are_exact_powers_of_two() {
        let policy = RestartPolicy::new()
            .backoff(Duration::from_millis(10), Duration::from_secs(60))
            .jitter(0.0);
        let delays: Vec<_> = (0..5).map(|k| policy.delay(k).as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160]);
    }

    #[test]
    fn huge_restart_counts_saturate_instead_of_overflowing() {
        let policy = RestartPolicy::new().jitter(0.0);
        assert_eq!(policy.delay(u32::MAX), policy.max_backoff);
    }
}
