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

use std::panic::{AssertUnwindSafe, Location, catch_unwind};
use std::ptr::NonNull;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::tree::Node;
use crate::tree::deadline::fire;

/// Identifies one armed deadline in a queue: its slot, and the arming's unique sequence
/// number (so a key outliving its deadline never matches a later one in the same slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TimerKey {
    slot: u32,
    seq: u64,
}

struct Slot {
    at: Instant,
    /// Unique per arming; ties on `at` fire in arming order.
    seq: u64,
    node: *const Node,
    origin: &'static Location<'static>,
    /// Index in `heap`, or `FREE`.
    heap_pos: u32,
}

const FREE: u32 = u32::MAX;

// SAFETY: `node` is only dereferenced under the queue's lock (to try to take a reference)
// or through such a reference; nodes are Sync.
unsafe impl Send for Slot {}

/// Deadlines ordered by `(at, seq)`: a binary heap of slot indices over a slab of slots, so
/// arming and disarming cost O(log n) and, once warm, no allocation. (A `BTreeMap` allocates
/// and frees a node whenever the queue goes between empty and non-empty, which is the
/// common case of a timeout created and dropped before it fires.)
#[derive(Default)]
pub(crate) struct Queue {
    slots: Vec<Slot>,
    heap: Vec<u32>,
    free: Vec<u32>,
    next_seq: u64,
}

impl Queue {
    #[inline]
    fn before(&self, a: u32, b: u32) -> bool {
        let (a, b) = (&self.slots[a as usize], &self.slots[b as usize]);
        (a.at, a.seq) < (b.at, b.seq)
    }

    #[inline]
    fn place(&mut self, pos: usize, slot: u32) {
        self.heap[pos] = slot;
        self.slots[slot as usize].heap_pos = pos as u32;
    }

    #[inline]
    fn sift_up(&mut self, mut pos: usize) {
        let slot = self.heap[pos];
        while pos > 0 {
            let parent = (pos - 1) / 2;
            if !self.before(slot, self.heap[parent]) {
                break;
            }
            self.place(pos, self.heap[parent]);
            pos = parent;
        }
        self.place(pos, slot);
    }

    #[inline]
    fn sift_down(&mut self, mut pos: usize) {
        let slot = self.heap[pos];
        let len = self.heap.len();
        loop {
            let left = 2 * pos + 1;
            if left >= len {
                break;
            }
            let right = left + 1;
            let child = if right < len && self.before(self.heap[right], self.heap[left]) {
                right
            } else {
                left
            };
            if !self.before(self.heap[child], slot) {
                break;
            }
            self.place(pos, self.heap[child]);
            pos = child;
        }
        self.place(pos, slot);
    }

    /// Removes the heap entry at `pos` and frees its slot; returns the slot's contents.
    #[inline]
    fn remove_at(&mut self, pos: usize) -> (*const Node, &'static Location<'static>) {
        let slot = self.heap[pos];
        let last = self.heap.pop().expect("non-empty");
        if pos < self.heap.len() {
            self.place(pos, last);
            self.sift_down(pos);
            let now_at = self.slots[last as usize].heap_pos as usize;
            self.sift_up(now_at);
        }
        let s = &mut self.slots[slot as usize];
        s.heap_pos = FREE;
        let taken = (s.node, s.origin);
        self.free.push(slot);
        if self.heap.is_empty() && self.slots.len() > 1024 {
            // A burst is over: give the memory back (keys stay unique through `seq`).
            self.slots = Vec::new();
            self.free = Vec::new();
            self.heap = Vec::new();
        }
        taken
    }

    /// Arms a deadline; returns its key and whether it is now the earliest.
    #[inline]
    pub(crate) fn insert(
        &mut self,
        at: Instant,
        node: *const Node,
        origin: &'static Location<'static>,
    ) -> (TimerKey, bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Slot {
            at,
            seq,
            node,
            origin,
            heap_pos: FREE,
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize] = entry;
                slot
            }
            None => {
                self.slots.push(entry);
                (self.slots.len() - 1) as u32
            }
        };
        self.heap.push(slot);
        let pos = self.heap.len() - 1;
        self.sift_up(pos);
        (TimerKey { slot, seq }, self.heap[0] == slot)
    }

    /// Disarms a deadline; a no-op if it fired (or was disarmed) already.
    #[inline]
    pub(crate) fn remove(&mut self, key: &TimerKey) {
        let Some(s) = self.slots.get(key.slot as usize) else {
            return;
        };
        if s.seq == key.seq && s.heap_pos != FREE {
            self.remove_at(s.heap_pos as usize);
        }
    }

    /// Removes the earliest deadline due at `now` whose node is still alive, with a
    /// reference to that node.
    pub(crate) fn pop_due(
        &mut self,
        now: Instant,
    ) -> Option<(NonNull<Node>, &'static Location<'static>)> {
        while let Some(&top) = self.heap.first() {
            if self.slots[top as usize].at > now {
                return None;
            }
            let (node, origin) = self.remove_at(0);
            // SAFETY: the entry was still in the queue and we hold the queue's lock, so the
            // node has not been freed (it disarms under this lock first, invariant 3).
            if unsafe { Node::try_acquire(node) } {
                // SAFETY: non-null (it came from a NonNull when armed).
                let node = unsafe { NonNull::new_unchecked(node.cast_mut()) };
                return Some((node, origin));
            }
            // Count zero: the node is being freed and nobody can observe the deadline.
        }
        None
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|&slot| self.slots[slot as usize].at)
    }

    #[cfg(test)]
    #[cfg_attr(loom, allow(dead_code))]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
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
    /// When the thread will next look at the queue on its own: `None` while it waits with
    /// no deadline. An arm only needs to wake it for an earlier deadline.
    looks_at: Option<Instant>,
}

fn system() -> &'static SystemTimer {
    static TIMER: OnceLock<SystemTimer> = OnceLock::new();
    TIMER.get_or_init(|| SystemTimer {
        queue: Mutex::new(SystemQueue {
            queue: Queue::default(),
            started: false,
            looks_at: None,
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
    let wake = earliest && q.looks_at.is_none_or(|looks_at| at < looks_at);
    if !q.started {
        // If the OS refuses a thread now, the deadline stays queued and the next `arm`
        // retries; there is no caller to return an error to from `with_timeout`.
        q.started = std::thread::Builder::new()
            .name("gracefully-timer".into())
            .spawn(move || run(timer))
            .is_ok();
    }
    drop(q);
    if wake {
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
            // Running: we look at the queue again before sleeping, so no arm must wake us.
            q.looks_at = Some(now);
            drop(q);
            // A panicking callback must not kill the thread every deadline depends on; the
            // panic hook has already reported it.
            // SAFETY: `pop_due` gave us a reference.
            let _ = catch_unwind(AssertUnwindSafe(|| unsafe { fire(node, origin) }));
            q = lock(timer);
            continue;
        }
        let next = q.queue.next_deadline();
        q.looks_at = next;
        q = match next {
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
