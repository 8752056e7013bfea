//! One service's life, in its own tokio task: wait for dependencies → start step →
//! `execute` under the failure policy → stop step.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use gracefully::{CancellationSource, CancellationToken, Reason, is_cancellation};
use tokio::time::Instant;

use crate::lifetime::Lifetime;
use crate::outcome::{Outcome, outcome_of, panicked};
use crate::policy::{FailurePolicy, RestartPolicy};
use crate::report::Phase;
use crate::service::{ErasedService, ServiceContext};

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
            phase: lifetime.shared.end_phase(),
            at: Instant::now(),
            restarts,
        }
    }
}

impl ServiceRun {
    pub(crate) async fn run(self) -> ServiceEnd {
        let ServiceRun {
            name,
            mut service,
            cx,
            policy,
            startup_timeout,
            dependencies,
            started,
            lifetime,
        } = self;
        let stop_requested = lifetime.stop_requested();

        // 1. Dependencies first. A stop request before they are up means: do not start.
        for dependency in &dependencies {
            tokio::select! {
                biased;
                _ = stop_requested.cancelled() => break,
                _ = dependency.cancelled() => {}
            }
        }
        if stop_requested.is_cancelled() {
            cx.detail("note", "not started: the host was already stopping");
            tracing::info!("not started: the host was already stopping");
            return ServiceEnd::now(&lifetime, Outcome::Cancelled, 0);
        }

        // 2. The start step, bounded by the startup timeout. Any failure stops the host.
        let start = tokio::time::timeout(
            startup_timeout,
            AssertUnwindSafe(service.start(&cx)).catch_unwind(),
        )
        .await;
        let start_failure = match start {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(error))) if is_cancellation(&*error) => {
                cx.detail("note", "start step cancelled");
                tracing::info!(%error, "start step cancelled");
                return ServiceEnd::now(&lifetime, Outcome::Cancelled, 0);
            }
            Ok(Ok(Err(error))) => Some(format!("start step failed: {error}")),
            Ok(Err(panic)) => Some(format!("start step {}", panicked(&*panic))),
            Err(_) => Some(format!("start step timed out after {startup_timeout:?}")),
        };
        if let Some(error) = start_failure {
            tracing::error!(%error, "service could not start; stopping the host");
            let end = ServiceEnd::now(&lifetime, Outcome::Failed(error.clone()), 0);
            lifetime.stop(
                Reason::failed(error).with_message(format!("service '{name}' could not start")),
            );
            return end;
        }
        started.cancel();
        lifetime.shared.service_started();
        tracing::debug!("started");
        // Firing `started` may have woken a dependent into this worker's LIFO slot, which
        // other workers cannot steal; yield so it runs before `execute` can block us.
        tokio::task::yield_now().await;

        // 3. The work, under the failure policy.
        let mut restarts = 0u32;
        // When and in which phase the service failed: its row reports the failure, not
        // the stop step that ran after it.
        let mut failed_at: Option<(Phase, Instant)> = None;
        let mut history: VecDeque<Instant> = VecDeque::new();
        let mut outcome = loop {
            let result = AssertUnwindSafe(service.execute(cx.stopping(), &cx))
                .catch_unwind()
                .await;
            let outcome = match result {
                Ok(result) => outcome_of(result),
                Err(panic) => Outcome::Failed(panicked(&*panic)),
            };
            let Outcome::Failed(error) = &outcome else {
                break outcome;
            };
            failed_at = Some((lifetime.shared.end_phase(), Instant::now()));
            match &policy {
                FailurePolicy::Ignore => {
                    tracing::error!(%error, "service failed; its failure policy ignores it: the host keeps running without it");
                    break outcome;
                }
                FailurePolicy::Restart(restart) if !cx.stopping().is_cancelled() => {
                    match wait_to_restart(restart, &mut history, &name, error, &cx).await {
                        Restart::Now => {
                            restarts += 1;
                            tracing::info!(restart = restarts, "restarting");
                        }
                        Restart::GiveUp(message) => {
                            tracing::error!(%error, "{message}; stopping the host");
                            lifetime.stop(Reason::failed(error.clone()).with_message(message));
                            break outcome;
                        }
                        Restart::Stopping => {
                            cx.detail(
                                "note",
                                format!(
                                    "restart abandoned, the host is stopping (last error: {error})"
                                ),
                            );
                            break Outcome::Cancelled;
                        }
                    }
                }
                // `StopHost`, or a restart policy once the host is stopping anyway.
                _ => {
                    tracing::error!(%error, "service failed; stopping the host");
                    lifetime.stop(
                        Reason::failed(error.clone())
                            .with_message(format!("service '{name}' failed")),
                    );
                    break outcome;
                }
            }
        };

        // 4. The stop step.
        let stop = AssertUnwindSafe(service.stop(&cx)).catch_unwind().await;
        let stop_failure = match stop {
            Ok(Ok(())) => None,
            Ok(Err(error)) if is_cancellation(&*error) => None,
            Ok(Err(error)) => Some(format!("stop step failed: {error}")),
            Err(panic) => Some(format!("stop step {}", panicked(&*panic))),
        };
        if let Some(error) = stop_failure {
            tracing::error!(%error, "stop step failed");
            if policy != FailurePolicy::Ignore {
                lifetime.stop(
                    Reason::failed(error.clone()).with_message(format!("service '{name}' failed")),
                );
            }
            if outcome.is_clean() {
                outcome = Outcome::Failed(error);
            } else {
                cx.detail("stop step", error);
            }
        }
        match &outcome {
            Outcome::Failed(_) => {} // logged where it happened
            other => tracing::info!(outcome = other.as_str(), "stopped"),
        }
        match (failed_at, &outcome) {
            (Some((phase, at)), Outcome::Failed(_)) => ServiceEnd {
                outcome,
                phase,
                at,
                restarts,
            },
            _ => ServiceEnd::now(&lifetime, outcome, restarts),
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
