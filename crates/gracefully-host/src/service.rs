//! Background services: the [`BackgroundService`] trait, its closure form
//! [`service_fn`], and the boxed form the host keeps them in.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use gracefully::CancellationToken;

use crate::context::ServiceContext;
use crate::outcome::{BoxError, TaskOutput};

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
/// `stopping` is this service's own token. Services stop in the reverse of their start
/// order: it fires once every service that depends on this one has ended — in the drain,
/// or in the cancel phase if they were still running then — and at the latest at the
/// abort. So a database pool stays open while the worker that depends on it, interrupted by
/// the hard stop, records how its jobs ended. (Unlike .NET's `StopAsync`, which stops
/// hosted services in reverse order only until the shutdown timeout.) To react to the hard
/// stop itself, read [`ServiceContext::hard_stop`](crate::ServiceContext::hard_stop). Its reason has
/// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown). Returning `Ok(())`, or a
/// [`Cancelled`](gracefully::Cancelled) error (`stopping.check()?`), is a clean stop;
/// any other error, or a panic, is a failure handled by the service's
/// [`FailurePolicy`](crate::FailurePolicy).
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
