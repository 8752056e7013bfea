//! Time for deadlines: the system clock, and a [`ManualClock`] for tests.

use std::fmt;
use std::panic::Location;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::tree::Node;
use crate::tree::deadline::fire;
use crate::tree::timer::{self, Queue, TimerKey};

/// The time source a cancellation tree uses for its deadlines.
///
/// [`Clock::system()`] (the default) reads [`Instant::now`] and fires deadlines from one
/// timer thread owned by this crate — no async runtime needed. A [`ManualClock`] stands
/// still until a test advances it, so deadline logic is testable without real sleeps.
///
/// A tree uses the clock of its root: give it to
/// [`CancellationSource::with_clock`](crate::CancellationSource::with_clock), and every
/// `cancel_after`, `child_with_timeout` below it uses that clock too. (A linked source uses
/// the clock of its first parent that has one chosen.)
///
/// *Anchors:* .NET's `TimeProvider` (and `FakeTimeProvider` for tests); tokio's paused
/// test clock (`tokio::time::pause`/`advance`), which is per-runtime rather than per-tree.
#[derive(Clone, Default)]
pub struct Clock {
    kind: Kind,
}

#[derive(Clone, Default)]
enum Kind {
    #[default]
    System,
    Manual(Arc<ManualInner>),
}

impl Clock {
    /// The real clock: [`Instant::now`] and this crate's timer thread.
    pub fn system() -> Clock {
        Clock { kind: Kind::System }
    }

    /// The current time on this clock.
    pub fn now(&self) -> Instant {
        match &self.kind {
            Kind::System => Instant::now(),
            Kind::Manual(m) => m.lock().now,
        }
    }

    /// Arms a deadline for `node` (held weakly).
    pub(crate) fn arm(
        &self,
        at: Instant,
        node: *const Node,
        origin: &'static Location<'static>,
    ) -> TimerKey {
        match &self.kind {
            Kind::System => timer::system_arm(at, node, origin),
            Kind::Manual(m) => m.lock().queue.insert(at, node, origin).0,
        }
    }

    /// Disarms a deadline (a no-op if it fired already).
    pub(crate) fn disarm(&self, key: &TimerKey) {
        match &self.kind {
            Kind::System => timer::system_disarm(key),
            Kind::Manual(m) => m.lock().queue.remove(key),
        }
    }
}

impl fmt::Debug for Clock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::System => f.write_str("Clock::system()"),
            Kind::Manual(m) => f.debug_tuple("Clock::manual").field(&m.lock().now).finish(),
        }
    }
}

/// A clock that moves only when told to: deadlines in tests without real sleeps.
///
/// Deadlines on a manual clock fire synchronously, on the thread that calls
/// [`advance`](ManualClock::advance), in deadline order, before `advance` returns.
///
/// ```
/// use std::time::Duration;
/// use gracefully::{CancellationSource, ManualClock, ReasonKind};
///
/// let clock = ManualClock::new();
/// let root = CancellationSource::with_clock(&clock);
/// let request = root.token().child_with_timeout(Duration::from_secs(30));
///
/// clock.advance(Duration::from_secs(29));
/// assert!(!request.is_cancelled());
///
/// clock.advance(Duration::from_secs(1));
/// let reason = request.token().reason().unwrap();
/// assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
/// ```
///
/// *Anchors:* .NET's `FakeTimeProvider.Advance`; tokio's `time::advance` under `pause`.
#[derive(Clone)]
pub struct ManualClock {
    inner: Arc<ManualInner>,
}

struct ManualInner {
    state: Mutex<ManualState>,
}

struct ManualState {
    now: Instant,
    queue: Queue,
}

impl ManualInner {
    fn lock(&self) -> MutexGuard<'_, ManualState> {
        // Callbacks never run under this lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl ManualClock {
    /// A manual clock starting at the current real time (so its instants compare sensibly
    /// with real ones).
    pub fn new() -> ManualClock {
        ManualClock::starting_at(Instant::now())
    }

    /// A manual clock starting at `now`.
    pub fn starting_at(now: Instant) -> ManualClock {
        ManualClock {
            inner: Arc::new(ManualInner {
                state: Mutex::new(ManualState {
                    now,
                    queue: Queue::default(),
                }),
            }),
        }
    }

    /// The clock's current time.
    pub fn now(&self) -> Instant {
        self.inner.lock().now
    }

    /// Moves the clock forward by `by` (saturating at the largest representable instant)
    /// and fires, on this thread and in deadline order, every deadline now due.
    ///
    /// If a callback panics, the remaining callbacks of that cancellation still run and the
    /// panic is resumed here; deadlines due later than the panicking one stay armed and fire
    /// on the next `advance`.
    pub fn advance(&self, by: Duration) {
        {
            let mut state = self.inner.lock();
            state.now = state.now.checked_add(by).unwrap_or(state.now);
        }
        self.fire_due();
    }

    /// Sets the clock to `now` if that is later than its current time (clocks never go
    /// back), firing what is due like [`advance`](ManualClock::advance).
    pub fn advance_to(&self, now: Instant) {
        {
            let mut state = self.inner.lock();
            state.now = state.now.max(now);
        }
        self.fire_due();
    }

    /// The `Clock` handle to give to
    /// [`CancellationSource::with_clock`](crate::CancellationSource::with_clock).
    pub fn clock(&self) -> Clock {
        Clock {
            kind: Kind::Manual(self.inner.clone()),
        }
    }

    fn fire_due(&self) {
        loop {
            let due = {
                let mut state = self.inner.lock();
                let now = state.now;
                state.queue.pop_due(now)
            };
            match due {
                // SAFETY: `pop_due` gave us a reference.
                Some((node, origin)) => unsafe { fire(node, origin) },
                None => return,
            }
        }
    }

    /// Number of armed deadlines (tests only).
    #[cfg(test)]
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn armed(&self) -> usize {
        self.inner.lock().queue.len()
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        ManualClock::new()
    }
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now", &self.now())
            .finish()
    }
}

impl From<ManualClock> for Clock {
    fn from(clock: ManualClock) -> Clock {
        clock.clock()
    }
}

impl From<&ManualClock> for Clock {
    fn from(clock: &ManualClock) -> Clock {
        clock.clock()
    }
}
