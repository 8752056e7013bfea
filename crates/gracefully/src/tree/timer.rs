//! Timer queues: the one system timer thread of the process, and the queue a
//! [`ManualClock`](crate::ManualClock) fires by hand.
//!
//! A queue holds nodes *weakly* (invariant 3): firing takes a reference only if the node's
//! count is not zero. A node nobody observes any more is never kept alive by its deadline;
//! it removes its own entry (under the queue's lock) before it is freed, so the queue never
//! reads freed memory.
//!
//! The system timer is a dedicated thread, started lazily on the first armed deadline, which
//! sleeps on a condition variable until the earliest deadline (so it fires within the
//! scheduler's wake-up latency, typically well under a millisecond). Callbacks of a deadline
//! run on that thread: keep them short, as with any callback.
//!
//! This module uses `std` primitives in loom builds too: the loom models do not arm timers.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::tree::Node;
use crate::tree::deadline::fire;

/// Identifies one armed deadline in a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TimerKey {
    at: Instant,
    id: u64,
}

struct Armed {
    node: *const Node,
    origin: &'static Location<'static>,
}

// SAFETY: `node` is only dereferenced under the queue's lock (to try to take a reference)
// or through such a reference; nodes are Sync.
unsafe impl Send for Armed {}

/// Deadlines ordered by time (then by arming order).
#[derive(Default)]
pub(crate) struct Queue {
    armed: BTreeMap<TimerKey, Armed>,
    next_id: u64,
}

impl Queue {
    /// Arms a deadline; returns its key and whether it is now the earliest.
    pub(crate) fn insert(
        &mut self,
        at: Instant,
        node: *const Node,
        origin: &'static Location<'static>,
    ) -> (TimerKey, bool) {
        let key = TimerKey {
            at,
            id: self.next_id,
        };
        self.next_id += 1;
        self.armed.insert(key, Armed { node, origin });
        let earliest = self.armed.first_key_value().is_some_and(|(k, _)| *k == key);
        (key, earliest)
    }

    pub(crate) fn remove(&mut self, key: &TimerKey) {
        self.armed.remove(key);
    }

    /// Removes the earliest deadline due at `now` whose node is still alive, with a
    /// reference to that node.
    pub(crate) fn pop_due(
        &mut self,
        now: Instant,
    ) -> Option<(NonNull<Node>, &'static Location<'static>)> {
        while let Some(entry) = self.armed.first_entry() {
            if entry.key().at > now {
                return None;
            }
            let armed = entry.remove();
            // SAFETY: the entry was still in the queue and we hold the queue's lock, so the
            // node has not been freed (it disarms under this lock first, invariant 3).
            if unsafe { Node::try_acquire(armed.node) } {
                // SAFETY: non-null (it came from a NonNull when armed).
                let node = unsafe { NonNull::new_unchecked(armed.node.cast_mut()) };
                return Some((node, armed.origin));
            }
            // Count zero: the node is being freed and nobody can observe the deadline.
        }
        None
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.armed.first_key_value().map(|(k, _)| k.at)
    }

    #[cfg(test)]
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.armed.len()
    }
}

/// The process-wide timer for the system clock.
struct SystemTimer {
    queue: Mutex<SystemQueue>,
    wake: Condvar,
}

struct SystemQueue {
    queue: Queue,
    /// Whether the thread is running; retried on the next arm if spawning failed.
    started: bool,
}

fn system() -> &'static SystemTimer {
    static TIMER: OnceLock<SystemTimer> = OnceLock::new();
    TIMER.get_or_init(|| SystemTimer {
        queue: Mutex::new(SystemQueue {
            queue: Queue::default(),
            started: false,
        }),
        wake: Condvar::new(),
    })
}

fn lock(timer: &SystemTimer) -> MutexGuard<'_, SystemQueue> {
    // Nothing panics while holding this lock (callbacks run after it is released), but a
    // poisoned queue is still consistent, so recover rather than propagate.
    timer.queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Arms a deadline on the system timer.
pub(crate) fn system_arm(
    at: Instant,
    node: *const Node,
    origin: &'static Location<'static>,
) -> TimerKey {
    let timer = system();
    let mut q = lock(timer);
    let (key, earliest) = q.queue.insert(at, node, origin);
    if !q.started {
        // If the OS refuses a thread now, the deadline stays queued and the next `arm`
        // retries; there is no caller to return an error to from `with_timeout`.
        q.started = std::thread::Builder::new()
            .name("gracefully-timer".into())
            .spawn(move || run(timer))
            .is_ok();
    }
    drop(q);
    if earliest {
        timer.wake.notify_one();
    }
    key
}

/// Disarms a deadline on the system timer (a no-op if it fired already).
pub(crate) fn system_disarm(key: &TimerKey) {
    lock(system()).queue.remove(key);
}

/// The timer thread: fire what is due, then sleep until the next deadline or a new
/// earliest one.
fn run(timer: &'static SystemTimer) {
    let mut q = lock(timer);
    loop {
        let now = Instant::now();
        if let Some((node, origin)) = q.queue.pop_due(now) {
            drop(q);
            // A panicking callback must not kill the thread every deadline depends on; the
            // panic hook has already reported it.
            // SAFETY: `pop_due` gave us a reference.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { fire(node, origin) }));
            q = lock(timer);
            continue;
        }
        q = match q.queue.next_deadline() {
            Some(at) => {
                let wait = at
                    .saturating_duration_since(now)
                    .max(Duration::from_micros(1));
                timer
                    .wake
                    .wait_timeout(q, wait)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
            None => timer.wake.wait(q).unwrap_or_else(PoisonError::into_inner),
        };
    }
}
