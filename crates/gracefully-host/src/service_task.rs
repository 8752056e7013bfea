//! One service's life, in its own tokio task: wait for dependencies → start step →
//! `execute` under the failure policy → stop step.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use gracefully::{CancellationSource, CancellationToken, Reason, is_cancellation};
use tokio::time::Instant;

use crate::context::ServiceContext;
use crate::lifetime::Lifetime;
use crate::outcome::{Outcome, outcome_of, panicked};
use crate::phase::Phase;
use crate::policy::{FailurePolicy, RestartPolicy};
use crate::service::ErasedService;

/// Everything one service task needs.
pub(crate) struct ServiceRun {
    pub(crate) name: Cow<'static, str>,
    pub(crate) service: Box<dyn ErasedService>,
    pub(crate) cx: ServiceContext,
    pub(crate) policy: FailurePolicy,
    pub(crate) startup_timeout: Duration,
    /// The `started` tokens of the services this one depends on.
    pub(crate) dependencies: Vec<CancellationToken>,
    /// Fired when this service's start step finished (its dependents wait for it).
    pub(crate) started: CancellationSource,
    pub(crate) lifetime: Lifetime,
}

/// How a service task ended.
pub(crate) struct ServiceEnd {
    pub(crate) outcome: Outcome,
    pub(crate) phase: Phase,
    pub(crate) at: Instant,
    pub(crate) restarts: u32,
}

impl ServiceEnd {
    pub(crate) fn now(lifetime: &Lifetime, outcome: Outcome, restarts: u32) -> ServiceEnd {
        ServiceEnd {
            outcome,
            phase: lifetime.timeline().end_phase(),
            at: Instant::now(),
            restarts,
        }
    }
}

impl ServiceRun {
    /// The whole life, step by step; each step below says how it can end it early.
    pub(crate) async fn run(mut self) -> ServiceEnd {
        if !dependencies_started(&self.lifetime, &self.dependencies).await {
            self.cx
                .detail("note", "not started: the host was already stopping");
            tracing::info!("not started: the host was already stopping");
            return ServiceEnd::now(&self.lifetime, Outcome::Cancelled, 0);
        }
        if let Err(end) = self.start_step().await {
            return end;
        }
        self.started.cancel();
        self.lifetime.timeline().service_started();
        tracing::debug!("started");
        // Firing `started` may have woken a dependent into this worker's LIFO slot, which
        // other workers cannot steal; yield so it runs before `execute` can block us.
        tokio::task::yield_now().await;

        let executed = self.execute_under_policy().await;
        let outcome = self.stop_step(executed.outcome).await;
        match &outcome {
            Outcome::Failed(_) => {} // logged where it happened
            other => tracing::info!(outcome = other.as_str(), "stopped"),
        }
        match (executed.failed_at, &outcome) {
            (Some((phase, at)), Outcome::Failed(_)) => ServiceEnd {
                outcome,
                phase,
                at,
                restarts: executed.restarts,
            },
            _ => ServiceEnd::now(&self.lifetime, outcome, executed.restarts),
        }
    }

    /// 2. The start step, bounded by the startup timeout. Any failure stops the host,
    ///    whatever the failure policy; `Err` is how the service ended then.
    async fn start_step(&mut self) -> Result<(), ServiceEnd> {
        let startup_timeout = self.startup_timeout;
        let start = tokio::time::timeout(
            startup_timeout,
            AssertUnwindSafe(self.service.start(&self.cx)).catch_unwind(),
        )
        .await;
        let error = match start {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(error))) if is_cancellation(&*error) => {
                self.cx.detail("note", "start step cancelled");
                tracing::info!(%error, "start step cancelled");
                return Err(ServiceEnd::now(&self.lifetime, Outcome::Cancelled, 0));
            }
            Ok(Ok(Err(error))) => format!("start step failed: {error}"),
            Ok(Err(panic)) => format!("start step {}", panicked(&*panic)),
            Err(_) => format!("start step timed out after {startup_timeout:?}"),
        };
        tracing::error!(%error, "service could not start; stopping the host");
        let end = ServiceEnd::now(&self.lifetime, Outcome::Failed(error.clone()), 0);
        self.lifetime.stop(
            Reason::failed(error).with_message(format!("service '{}' could not start", self.name)),
        );
        Err(end)
    }

    /// 3. The work, under the failure policy: restarted after a failure while the policy
    ///    allows, else the failure stops the host (unless ignored).
    async fn execute_under_policy(&mut self) -> Executed {
        let mut restarts = 0u32;
        let mut history: VecDeque<Instant> = VecDeque::new();
        loop {
            let result = AssertUnwindSafe(self.service.execute(self.cx.stopping(), &self.cx))
                .catch_unwind()
                .await;
            let outcome = match result {
                Ok(result) => outcome_of(result),
                Err(panic) => Outcome::Failed(panicked(&*panic)),
            };
            let Outcome::Failed(error) = &outcome else {
                return Executed::new(outcome, None, restarts);
            };
            // The service's row reports the failure, not the stop step that runs after it.
            let failed_at = Some((self.lifetime.timeline().end_phase(), Instant::now()));
            let restart = match &self.policy {
                FailurePolicy::Restart(policy) if !self.cx.stopping().is_cancelled() => {
                    wait_to_restart(policy, &mut history, &self.name, error, &self.cx).await
                }
                FailurePolicy::Ignore => {
                    tracing::error!(%error, "service failed; its failure policy ignores it: the host keeps running without it");
                    return Executed::new(outcome, failed_at, restarts);
                }
                // `StopHost`, or a restart policy once the host is stopping anyway.
                _ => {
                    tracing::error!(%error, "service failed; stopping the host");
                    self.lifetime.stop(
                        Reason::failed(error.clone())
                            .with_message(format!("service '{}' failed", self.name)),
                    );
                    return Executed::new(outcome, failed_at, restarts);
                }
            };
            match restart {
                Restart::Now => {
                    restarts += 1;
                    tracing::info!(restart = restarts, "restarting");
                }
                Restart::GiveUp(message) => {
                    tracing::error!(%error, "{message}; stopping the host");
                    self.lifetime
                        .stop(Reason::failed(error.clone()).with_message(message));
                    return Executed::new(outcome, failed_at, restarts);
                }
                Restart::Stopping => {
                    self.cx.detail(
                        "note",
                        format!("restart abandoned, the host is stopping (last error: {error})"),
                    );
                    return Executed::new(Outcome::Cancelled, failed_at, restarts);
                }
            }
        }
    }

    /// 4. The stop step, after `execute` returned whatever it returned. A failure here is
    ///    the service's outcome if it had ended cleanly, else a detail of its row.
    async fn stop_step(&mut self, outcome: Outcome) -> Outcome {
        let stop = AssertUnwindSafe(self.service.stop(&self.cx))
            .catch_unwind()
            .await;
        let error = match stop {
            Ok(Ok(())) => return outcome,
            Ok(Err(error)) if is_cancellation(&*error) => return outcome,
            Ok(Err(error)) => format!("stop step failed: {error}"),
            Err(panic) => format!("stop step {}", panicked(&*panic)),
        };
        tracing::error!(%error, "stop step failed");
        if self.policy != FailurePolicy::Ignore {
            self.lifetime.stop(
                Reason::failed(error.clone())
                    .with_message(format!("service '{}' failed", self.name)),
            );
        }
        if outcome.is_clean() {
            Outcome::Failed(error)
        } else {
            self.cx.detail("stop step", error);
            outcome
        }
    }
}

/// 1. Waits for the services this one depends on to finish their start steps. `false` if
///    a stop was requested first: then this one does not start.
async fn dependencies_started(lifetime: &Lifetime, dependencies: &[CancellationToken]) -> bool {
    let stop_requested = lifetime.stop_requested();
    for dependency in dependencies {
        tokio::select! {
            biased;
            _ = stop_requested.cancelled() => return false,
            _ = dependency.cancelled() => {}
        }
    }
    !stop_requested.is_cancelled()
}

/// How `execute` ended under the failure policy.
struct Executed {
    outcome: Outcome,
    /// When and in which phase it last failed.
    failed_at: Option<(Phase, Instant)>,
    restarts: u32,
}

impl Executed {
    fn new(outcome: Outcome, failed_at: Option<(Phase, Instant)>, restarts: u32) -> Executed {
        Executed {
            outcome,
            failed_at,
            restarts,
        }
    }
}

enum Restart {
    Now,
    GiveUp(String),
    Stopping,
}

/// Applies the intensity limit, then waits out the backoff (unless the service is told to
/// stop meanwhile).
async fn wait_to_restart(
    policy: &RestartPolicy,
    history: &mut VecDeque<Instant>,
    name: &str,
    error: &str,
    cx: &ServiceContext,
) -> Restart {
    let now = Instant::now();
    while history
        .front()
        .is_some_and(|&at| now.duration_since(at) >= policy.window)
    {
        history.pop_front();
    }
    let recent = u32::try_from(history.len()).unwrap_or(u32::MAX);
    if recent >= policy.max_restarts {
        return Restart::GiveUp(format!(
            "service '{name}' failed after {recent} restarts within {:?}; giving up",
            policy.window
        ));
    }
    let delay = policy.delay(recent);
    tracing::warn!(
        %error,
        "service failed; restarting in {} ms (restart {} of at most {} within {:?})",
        delay.as_millis(),
        recent + 1,
        policy.max_restarts,
        policy.window
    );
    let stopping = cx.stopping();
    tokio::select! {
        _ = tokio::time::sleep(delay) => {
            history.push_back(Instant::now());
            Restart::Now
        }
        _ = stopping.cancelled() => Restart::Stopping,
    }
}
