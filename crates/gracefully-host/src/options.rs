//! [`ServiceOptions`]: per-service settings.

use std::borrow::Cow;
use std::time::Duration;

use crate::policy::FailurePolicy;

/// Per-service settings for [`HostBuilder::service_with`](crate::HostBuilder::service_with):
/// failure policy, dependencies, startup timeout.
///
/// ```
/// use std::time::Duration;
/// use gracefully_host::{FailurePolicy, RestartPolicy, ServiceOptions};
///
/// let options = ServiceOptions::new()
///     .on_failure(FailurePolicy::Restart(RestartPolicy::new()))
///     .depends_on(["database"])
///     .startup_timeout(Duration::from_secs(10));
/// # let _ = options;
/// ```
#[derive(Clone, Debug, Default)]
pub struct ServiceOptions {
    pub(crate) failure_policy: FailurePolicy,
    pub(crate) depends_on: Option<Vec<Cow<'static, str>>>,
    pub(crate) startup_timeout: Option<Duration>,
}

impl ServiceOptions {
    /// The defaults: [`FailurePolicy::StopHost`], depends on the service registered just
    /// before it, the host's startup timeout.
    pub fn new() -> ServiceOptions {
        ServiceOptions::default()
    }

    /// What to do when `execute` fails.
    pub fn on_failure(mut self, policy: FailurePolicy) -> Self {
        self.failure_policy = policy;
        self
    }

    /// The services this one needs: its start step begins only after theirs finished, and
    /// it is stopped before them. Replaces the default, which is the service registered
    /// just before it (so services start in registration order and stop in reverse). An
    /// empty list means no dependencies: it starts at once and is stopped as soon as the
    /// drain begins. Names must be registered services; cycles are rejected by
    /// [`build`](crate::HostBuilder::build).
    pub fn depends_on<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<Cow<'static, str>>,
    {
        self.depends_on = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// This service's startup timeout, instead of the host's.
    pub fn startup_timeout(mut self, timeout: Duration) -> Self {
        self.startup_timeout = Some(timeout);
        self
    }
}
