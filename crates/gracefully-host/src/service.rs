//! Background services: the [`BackgroundService`] trait, its closure form
//! [`service_fn`], the [`ServiceContext`] each gets, and per-service [`ServiceOptions`].

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gracefully::CancellationToken;

use crate::lifetime::Lifetime;
use crate::outcome::{BoxError, TaskOutput};
use crate::policy::FailurePolicy;

/// A long-running unit of work run by the [`Host`](crate::Host): a consumer, a poller, a
/// server. Each service runs in its own tokio task.
///
/// Its life: [`start`](Self::start) (optional; bind a port, run migrations — bounded by the
/// startup timeout; the host is ready once every start step finished) →
/// [`execute`](Self::execute) (the work, until `stopping` fires) → [`stop`](Self::stop)
/// (optional; release what `start` acquired). Write the methods as `async fn`.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_host::{BackgroundService, BoxError, Host, ServiceContext};
///
/// struct Ticker;
///
/// impl BackgroundService for Ticker {
///     async fn execute(&mut self, stopping: CancellationToken, cx: &ServiceContext) -> Result<(), BoxError> {
///         let mut ticks = 0u64;
///         while !stopping.is_cancelled() {
///             tokio::select! {
///                 _ = stopping.cancelled() => break,
///                 _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => ticks += 1,
///             }
///         }
///         cx.count("ticks", ticks); // appears in this service's row of the report
///         Ok(())
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let host = Host::builder().handle_signals(false).service("ticker", Ticker).build().unwrap();
/// let lifetime = host.lifetime();
/// tokio::spawn(async move {
///     tokio::time::sleep(std::time::Duration::from_secs(10)).await;
///     lifetime.stop(gracefully::Reason::shutdown().with_message("enough"));
/// });
/// let report = host.run().await;
/// assert_eq!(report.entry("ticker").unwrap().detail("ticks"), Some("10"));
/// assert_eq!(report.exit_code(), 0);
/// # }
/// ```
///
/// # The stopping token
///
/// `stopping` is this service's own token. It fires in the drain phase — services stop in
/// the reverse of their start order, so it fires once every service that depends on this
/// one has ended — and at the latest when the host's hard stop fires. Its reason has
/// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown). Returning `Ok(())`, or a
/// [`Cancelled`](gracefully::Cancelled) error (`stopping.check()?`), is a clean stop;
/// any other error, or a panic, is a failure handled by the service's
/// [`FailurePolicy`].
///
/// # Blocking
///
/// Blocking code before the first `.await` (or anywhere) blocks only this service's task:
/// the others start and run (on a multi-thread runtime). The host yields after a start
/// step so a blocking `execute` cannot hold back a service that waited for it. Blocking
/// for long is still best moved to `tokio::task::spawn_blocking`.
///
/// *Anchors:* .NET's `BackgroundService.ExecuteAsync(stoppingToken)` plus
/// `IHostedService.StartAsync`/`StopAsync`; unlike .NET, a synchronous prefix of `execute`
/// does not block the host's startup, and a failure is never silently swallowed.
/// tokio-graceful-shutdown's `IntoSubsystem` (no start step, no readiness).
pub trait BackgroundService: Send + 'static {
    /// The start step. The host is ready (`Lifetime::started` fires) only once every
    /// service's start step has returned `Ok`. An error, a panic, or running past the
    /// startup timeout stops the host, whatever the failure policy. The default does
    /// nothing.
    ///
    /// # Cancel safety
    ///
    /// The host drops this future if it runs past the startup timeout, or if the host is
    /// aborted while it runs.
    fn start(&mut self, cx: &ServiceContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }

    /// The work. Return when `stopping` fires. Called again after a failure under a
    /// [restart policy](crate::RestartPolicy). The default waits for `stopping` (a service
    /// made only of start and stop steps, like .NET's `IHostedService`).
    ///
    /// # Cancel safety
    ///
    /// The host never drops this future early except in the abort phase (the service
    /// ignored both `stopping` and the hard stop until the shutdown timeout).
    fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = cx;
        async move {
            stopping.cancelled().await;
            Ok(())
        }
    }

    /// The stop step, run after `execute` returned (whatever it returned) if `start`
    /// succeeded: close what `start` opened. Bounded by the shutdown phases like the rest.
    /// An error is recorded as a failure. The default does nothing.
    ///
    /// # Cancel safety
    ///
    /// Dropped only in the abort phase.
    fn stop(&mut self, cx: &ServiceContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        let _ = cx;
        async { Ok(()) }
    }
}

/// A service from a closure: `service_fn(|stopping, cx| async move { … })`. The closure is
/// called for each run of `execute` (again after a restart), with the service's stopping
/// token and an owned [`ServiceContext`]. Its future may return `()` or a `Result`.
///
/// ```
/// use gracefully_host::{Host, service_fn};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let host = Host::builder()
///     .handle_signals(false)
///     .service("heartbeat", service_fn(|stopping, _cx| async move {
///         while stopping.run_until_cancelled(tokio::time::sleep(std::time::Duration::from_secs(5))).await.is_ok() {
///             tracing::info!("still alive");
///         }
///     }))
///     .build()
///     .unwrap();
/// # let lifetime = host.lifetime();
/// # tokio::spawn(async move { lifetime.started().cancelled().await; lifetime.stop(gracefully::Reason::shutdown()); });
/// # assert_eq!(host.run().await.exit_code(), 0);
/// # }
/// ```
///
/// *Anchors:* tower's `service_fn`; tokio-graceful-shutdown's `SubsystemBuilder::new(name,
/// async_fn)`.
pub fn service_fn<F, Fut>(f: F) -> ServiceFn<F>
where
    F: FnMut(CancellationToken, ServiceContext) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutput,
{
    ServiceFn { f }
}

/// A [`BackgroundService`] made by [`service_fn`].
pub struct ServiceFn<F> {
    f: F,
}

impl<F, Fut> BackgroundService for ServiceFn<F>
where
    F: FnMut(CancellationToken, ServiceContext) -> Fut + Send + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutput,
{
    fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let run = (self.f)(stopping, cx.clone());
        async move { run.await.into_result() }
    }
}

impl<F> fmt::Debug for ServiceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceFn").finish_non_exhaustive()
    }
}

/// What a service gets besides its stopping token: its name, the host's [`Lifetime`],
/// tracked [`spawn`](Self::spawn), and a place to record details for its row of the
/// shutdown report. Cheap to clone (one reference count).
///
/// ```
/// # use gracefully_host::{service_fn, Host};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let server = service_fn(|stopping, cx| async move {
///     stopping.cancelled().await;
///     // drain: close connections, let requests finish …
///     cx.count("connections closed", 12);
///     cx.count("requests finished", 340);
///     cx.detail("listener", "127.0.0.1:8080");
/// });
/// let host = Host::builder().handle_signals(false).service("http", server).build().unwrap();
/// let lifetime = host.lifetime();
/// tokio::spawn(async move {
///     lifetime.started().cancelled().await;
///     lifetime.stop(gracefully::Reason::shutdown());
/// });
/// let report = host.run().await;
/// let row = report.entry("http").unwrap();
/// assert_eq!(row.detail("requests finished"), Some("340"));
/// # }
/// ```
///
/// *Anchors:* tokio-graceful-shutdown's `SubsystemHandle`; .NET injects
/// `IHostApplicationLifetime` instead. No anchor lets a service add to a shutdown report.
#[derive(Clone)]
pub struct ServiceContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    name: Cow<'static, str>,
    lifetime: Lifetime,
    stopping: CancellationToken,
    /// `(key, value)` in the order keys were first recorded.
    details: Mutex<Vec<(Cow<'static, str>, Detail)>>,
}

enum Detail {
    Text(String),
    Count(u64),
}

impl ServiceContext {
    pub(crate) fn new(
        name: Cow<'static, str>,
        lifetime: Lifetime,
        stopping: CancellationToken,
    ) -> ServiceContext {
        ServiceContext {
            inner: Arc::new(ContextInner {
                name,
                lifetime,
                stopping,
                details: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The service's registered name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host's lifetime (state, tokens, readiness, `stop`).
    pub fn lifetime(&self) -> &Lifetime {
        &self.inner.lifetime
    }

    /// This service's stopping token (the one `execute` receives).
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// The host's hard-stop token: the parent for this service's in-flight operations
    /// (`cx.hard_stop().child()` per request), so they are cancelled with
    /// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown) when the drain budget is
    /// spent.
    pub fn hard_stop(&self) -> CancellationToken {
        self.inner.lifetime.hard_stop()
    }

    /// A tracked task: [`Lifetime::spawn`].
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.inner.lifetime.spawn(name, task);
    }

    /// Records `value` under `key` for this service's row of the shutdown report,
    /// replacing an earlier value of that key.
    pub fn detail(&self, key: impl Into<Cow<'static, str>>, value: impl fmt::Display) {
        let key = key.into();
        let value = Detail::Text(value.to_string());
        let mut details = self.details();
        match details.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => details.push((key, value)),
        }
    }

    /// Adds `n` to the counter `key` for this service's row of the shutdown report (a
    /// counter starts at 0). For drain steps: connections closed, requests finished …
    pub fn count(&self, key: impl Into<Cow<'static, str>>, n: u64) {
        let key = key.into();
        let mut details = self.details();
        match details.iter_mut().find(|(k, _)| *k == key) {
            Some((_, Detail::Count(c))) => *c = c.saturating_add(n),
            Some((_, slot)) => *slot = Detail::Count(n),
            None => details.push((key, Detail::Count(n))),
        }
    }

    fn details(&self) -> std::sync::MutexGuard<'_, Vec<(Cow<'static, str>, Detail)>> {
        // Nothing panics while holding the lock; recover the data if it ever did.
        self.inner
            .details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded details, rendered, for the report.
    pub(crate) fn rendered_details(&self) -> Vec<(Cow<'static, str>, String)> {
        self.details()
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Detail::Text(t) => t.clone(),
                    Detail::Count(c) => c.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

impl fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContext")
            .field("name", &self.inner.name)
            .field("stopping", &self.inner.stopping)
            .finish_non_exhaustive()
    }
}

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

/// The future of one step of an erased service.
pub(crate) type StepFuture<'a> = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send + 'a>>;

/// [`BackgroundService`] behind a `Box<dyn …>`.
pub(crate) trait ErasedService: Send {
    fn start<'a>(&'a mut self, cx: &'a ServiceContext) -> StepFuture<'a>;
    fn execute<'a>(
        &'a mut self,
        stopping: CancellationToken,
        cx: &'a ServiceContext,
    ) -> StepFuture<'a>;
    fn stop<'a>(&'a mut self, cx: &'a ServiceContext) -> StepFuture<'a>;
}

impl<S: BackgroundService> ErasedService for S {
    fn start<'a>(&'a mut self, cx: &'a ServiceContext) -> StepFuture<'a> {
        Box::pin(BackgroundService::start(self, cx))
    }

    fn execute<'a>(
        &'a mut self,
        stopping: CancellationToken,
        cx: &'a ServiceContext,
    ) -> StepFuture<'a> {
        Box::pin(BackgroundService::execute(self, stopping, cx))
    }

    fn stop<'a>(&'a mut self, cx: &'a ServiceContext) -> StepFuture<'a> {
        Box::pin(BackgroundService::stop(self, cx))
    }
}
