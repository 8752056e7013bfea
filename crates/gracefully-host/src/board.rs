//! The supervisor's view of the services: a [`Slot`] per service, the service tasks not
//! yet joined, and the stop order — a service is told to stop once every service that
//! depends on it has ended.

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gracefully::{CancellationSource, CancellationToken, Reason};
use tokio::task::{AbortHandle, JoinError, JoinHandle};
use tokio::time::{Instant, sleep_until};

use crate::context::ServiceContext;
use crate::lifetime::Lifetime;
use crate::outcome::{Outcome, panicked};
use crate::service_task::ServiceEnd;

/// A service task's join: its index and how it ended.
type Joined = Pin<Box<dyn Future<Output = (usize, Result<ServiceEnd, JoinError>)> + Send>>;

/// How [`Board::wait`] ended.
pub(crate) enum Waited {
    /// Every service and tracked task has ended.
    AllEnded,
    /// The deadline passed first.
    Deadline,
    /// A second signal: skip to the abort.
    Forced,
}

/// One service, as the supervisor sees it.
pub(crate) struct Slot {
    pub(crate) name: Cow<'static, str>,
    pub(crate) cx: ServiceContext,
    /// This service's own stop token, fired once every service that depends on it has
    /// ended (in the drain or the cancel phase), or at the abort; not a child of hard stop
    /// (docs/architecture.md, shutdown rule 6).
    pub(crate) stop: CancellationSource,
    pub(crate) abort: AbortHandle,
    /// How it ended, once it has.
    pub(crate) end: Option<ServiceEnd>,
    /// Aborted, and not yet dropped when the report was made.
    pub(crate) still_dropping: bool,
}

pub(crate) struct Board {
    pub(crate) slots: Vec<Slot>,
    /// The service tasks not yet joined.
    pub(crate) running: FuturesUnordered<Joined>,
    /// Services whose task has not ended.
    pub(crate) live: usize,
    /// `waiting_on[d]`: how many of `d`'s dependents have not ended. `d` is told to stop
    /// when this reaches 0 during the drain.
    waiting_on: Vec<usize>,
    /// `dependencies[i]`: what `i` depends on.
    dependencies: Vec<Vec<usize>>,
    /// The reason the drain began with, once it has.
    draining: Option<Reason>,
}

impl Board {
    pub(crate) fn new(dependencies: &[Vec<usize>]) -> Board {
        let n = dependencies.len();
        let mut dependents = vec![Vec::new(); n];
        for (i, deps) in dependencies.iter().enumerate() {
            for &d in deps {
                dependents[d].push(i);
            }
        }
        Board {
            slots: Vec::with_capacity(n),
            running: FuturesUnordered::new(),
            live: n,
            waiting_on: dependents.iter().map(Vec::len).collect(),
            dependencies: dependencies.to_vec(),
            draining: None,
        }
    }

    /// Adds the next service (its index is the number added before) and its task.
    pub(crate) fn add(&mut self, slot: Slot, task: JoinHandle<ServiceEnd>) {
        let i = self.slots.len();
        self.slots.push(slot);
        self.running.push(Box::pin(async move { (i, task.await) }));
    }

    /// Records that service `i` ended (once); tells the services it depended on to stop
    /// if it was the last of their dependents and the drain has begun.
    pub(crate) fn record(&mut self, i: usize, end: ServiceEnd) {
        if self.slots[i].end.is_some() {
            return;
        }
        self.slots[i].end = Some(end);
        self.live -= 1;
        for k in 0..self.dependencies[i].len() {
            let d = self.dependencies[i][k];
            self.waiting_on[d] -= 1;
            if self.waiting_on[d] == 0
                && let Some(reason) = &self.draining
            {
                self.slots[d].stop.cancel_with(reason.clone());
            }
        }
    }

    /// Records the ends that are already in, without waiting.
    pub(crate) fn sweep(&mut self, lifetime: &Lifetime) {
        while let Some(Some((i, joined))) = self.running.next().now_or_never() {
            self.record(i, end_of(lifetime, joined));
        }
    }

    /// Tells every service that no other service waits on to stop.
    pub(crate) fn begin_drain(&mut self, reason: &Reason) {
        self.draining = Some(reason.clone());
        for (slot, waiting) in self.slots.iter().zip(&self.waiting_on) {
            if *waiting == 0 {
                slot.stop.cancel_with(reason.clone());
            }
        }
    }

    /// Tells every service to stop, whatever still depends on it (the abort).
    pub(crate) fn stop_all(&self, reason: &Reason) {
        for slot in &self.slots {
            slot.stop.cancel_with(reason.clone());
        }
    }

    /// Waits until every service and tracked task has ended, the deadline passes, or a
    /// second signal forces the abort.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: an end taken from `running` is recorded before the next await.
    pub(crate) async fn wait(
        &mut self,
        lifetime: &Lifetime,
        force: &CancellationToken,
        deadline: Instant,
    ) -> Waited {
        let tracker = &lifetime.state.tracker;
        let sleep = sleep_until(deadline);
        let mut sleep = std::pin::pin!(sleep);
        loop {
            if self.live == 0 && tracker.is_idle() {
                return Waited::AllEnded;
            }
            tokio::select! {
                biased;
                _ = force.cancelled() => return Waited::Forced,
                Some((i, joined)) = self.running.next(), if self.live > 0 => {
                    self.record(i, end_of(lifetime, joined));
                }
                _ = tracker.wait_idle(), if self.live == 0 => {}
                _ = &mut sleep => {
                    // A deadline is honoured only once the work already woken (by the
                    // token this phase fired, say) has had its turn: with a zero budget
                    // it would otherwise not have been polled yet, and work that stops the
                    // moment it is polled would be called a straggler.
                    tokio::task::yield_now().await;
                    self.sweep(lifetime);
                    return if self.live == 0 && tracker.is_idle() {
                        Waited::AllEnded
                    } else {
                        Waited::Deadline
                    };
                }
            }
        }
    }

    /// The names of what still runs, for the log.
    pub(crate) fn still_running(&self, lifetime: &Lifetime) -> String {
        let mut names: Vec<&str> = self
            .slots
            .iter()
            .filter(|s| s.end.is_none())
            .map(|s| s.name.as_ref())
            .collect();
        let tasks = lifetime.state.tracker.running_count();
        let tasks_note = format!("{tasks} tracked task(s)");
        if tasks > 0 {
            names.push(&tasks_note);
        }
        names.join(", ")
    }
}

/// A service task's end from its join result.
pub(crate) fn end_of(lifetime: &Lifetime, joined: Result<ServiceEnd, JoinError>) -> ServiceEnd {
    match joined {
        Ok(end) => end,
        // Our own code caught every panic of the service; this one escaped it (a panicking
        // `Drop`, say). Still a failure, still named.
        Err(error) if error.is_panic() => {
            let message = panicked(&*error.into_panic());
            tracing::error!(error = %message, "service task panicked");
            lifetime.stop(Reason::failed(message.clone()).with_message("a service task panicked"));
            ServiceEnd::now(lifetime, Outcome::Failed(message), 0)
        }
        Err(_) => ServiceEnd::now(lifetime, Outcome::Aborted, 0),
    }
}
