//! Deadlines: setting a node's own deadline, arming its timer, and finding the earliest
//! deadline that can cancel a node through any of its ancestors.

use std::panic::Location;
use std::ptr::NonNull;
use std::time::Instant;

use crate::clock::Clock;
use crate::reason::{Reason, ReasonKind};
use crate::tree::node::{Extra, Node, OwnedExtra};

/// Visits `node` and every ancestor (each once per path; diamonds are rare), calling `f`
/// with each node's `Extra` under that node's lock. Stops early when `f` returns `false`.
/// Locks one node at a time (invariant 2). Follows primary parents directly; only the
/// further parents of linked sources (rare) are queued, so a plain chain allocates nothing.
fn for_each_ancestor_extra(node: &Node, mut f: impl FnMut(&Extra) -> bool) {
    let mut more: Vec<*const Node> = Vec::new();
    let mut cur: *const Node = node;
    loop {
        // SAFETY: `node` is alive (caller's handle); every parent of a live node has it in
        // its non-empty child list, which holds a reference to the parent (invariant 3), so
        // every ancestor reached this way is alive too.
        let n = unsafe { &*cur };
        let guard = n.lock();
        let extra = guard.extra();
        let mut keep_going = true;
        if !extra.is_null() {
            // SAFETY: `extra` is guarded by the lock we hold.
            let extra = unsafe { &*extra };
            keep_going = f(extra);
            more.extend(extra.more_parents.iter().map(|&(parent, _)| parent));
        }
        drop(guard);
        if !keep_going {
            return;
        }
        if !n.parent.is_null() {
            cur = n.parent;
            continue;
        }
        match more.pop() {
            Some(next) => cur = next,
            None => return,
        }
    }
}

/// What `node`'s ancestry (itself included) says about time, gathered in one walk: the
/// clock chosen nearest to it (primary parents first), and the earliest deadline.
pub(crate) fn ancestry(node: &Node) -> (Option<Clock>, Option<Instant>) {
    let mut clock: Option<Clock> = None;
    let mut earliest: Option<Instant> = None;
    for_each_ancestor_extra(node, |extra| {
        if clock.is_none() {
            clock.clone_from(&extra.clock);
        }
        if let Some((at, _)) = extra.deadline {
            earliest = Some(earliest.map_or(at, |e| e.min(at)));
        }
        true
    });
    (clock, earliest)
}

/// The earliest deadline that can cancel `node`: its own and every ancestor's.
pub(crate) fn effective_deadline(node: &Node) -> Option<Instant> {
    let mut best: Option<Instant> = None;
    for_each_ancestor_extra(node, |extra| {
        if let Some((at, _)) = extra.deadline {
            best = Some(best.map_or(at, |b| b.min(at)));
        }
        true
    });
    best
}

/// Sets `node`'s deadline to `timeout` from now on its tree's clock (see [`set_deadline`]).
/// One walk of the ancestry and one reading of the clock.
pub(crate) fn set_timeout(
    node: NonNull<Node>,
    timeout: std::time::Duration,
    origin: &'static Location<'static>,
) {
    // SAFETY: the caller's handle keeps the node alive.
    let n = unsafe { node.as_ref() };
    if n.is_cancelled() {
        return;
    }
    let (clock, earliest) = ancestry(n);
    let clock = clock.unwrap_or_default();
    let now = clock.now();
    // A timeout too large for an `Instant` sets no deadline.
    if let Some(at) = now.checked_add(timeout) {
        arm(node, &clock, now, at, earliest, origin);
    }
}

/// A new child of `parent` (as [`Node::new_child`]) with its deadline `timeout` from now on
/// its tree's clock: the same as `new_child` and then [`set_timeout`], in one walk of the
/// ancestry (the parent's: the child has no deadline or clock of its own yet) and with the
/// child's `Extra` made before it is linked. A child born cancelled (its parent was) keeps
/// no deadline, as `set_timeout` would have left it.
pub(crate) fn new_child_with_timeout(
    parent: NonNull<Node>,
    timeout: std::time::Duration,
    origin: &'static Location<'static>,
) -> NonNull<Node> {
    // SAFETY: the caller holds a reference to the parent.
    let (clock, earliest) = ancestry(unsafe { parent.as_ref() });
    let clock = clock.unwrap_or_default();
    let now = clock.now();
    // A timeout too large for an `Instant` sets no deadline.
    let Some(at) = now.checked_add(timeout) else {
        return Node::new_child(parent);
    };
    let extra = Extra::into_raw(Extra {
        deadline: Some((at, origin)),
        ..Extra::default()
    });
    let child = Node::new_child_with(parent, extra);
    // SAFETY: we hold the child's only handle.
    let guard = unsafe { child.as_ref() }.lock();
    if guard.is_cancelled() {
        // SAFETY: the child's own `Extra`, guarded by the lock we hold.
        unsafe { (*extra).deadline = None };
    } else if at <= now {
        // Born past its deadline: cancelled at once, and it still reports that deadline
        // (`deadline()`; `time_left()` zero), as a node whose timer fired does — not "no
        // deadline", which code that turns the time left into a database timeout would
        // read as unbounded.
        drop(guard);
        // SAFETY: we hold the child's only reference.
        unsafe { child.as_ref() }.cancel(Reason::at(ReasonKind::DeadlineExceeded, origin));
        return child;
    } else if earliest.is_none_or(|e| e > at) {
        // Not covered by an earlier deadline above (see `arm`). Node lock, then the
        // queue's lock (invariant 2); the queue holds the node weakly.
        let key = clock.arm(at, child.as_ptr(), origin);
        // SAFETY: as above.
        unsafe { (*extra).timer = Some((clock, key)) };
    }
    drop(guard);
    child
}

/// Sets `node`'s deadline to `at` unless it already has an earlier one (deadlines only move
/// earlier), arming a timer in `clock`. A deadline that is already due cancels the node
/// before this returns. `origin` becomes the reason's origin when the deadline fires.
pub(crate) fn set_deadline(
    node: NonNull<Node>,
    clock: &Clock,
    at: Instant,
    origin: &'static Location<'static>,
) {
    // SAFETY: the caller's handle keeps the node alive.
    let n = unsafe { node.as_ref() };
    if n.is_cancelled() {
        return;
    }
    let earliest = effective_deadline(n);
    arm(node, clock, clock.now(), at, earliest, origin);
}

/// The common part of [`set_deadline`] and [`set_timeout`]: `now` is the clock's time and
/// `earliest` the earliest deadline of the node and its ancestors, both read before.
fn arm(
    node: NonNull<Node>,
    clock: &Clock,
    now: Instant,
    at: Instant,
    earliest: Option<Instant>,
    origin: &'static Location<'static>,
) {
    // SAFETY: the caller's handle keeps the node alive.
    let n = unsafe { node.as_ref() };
    // Already due: the deadline is recorded all the same (so the node reports it, as one
    // whose timer fired does), no timer is armed, and the node is cancelled below.
    let due = at <= now;
    // If an ancestor's deadline is no later, that ancestor cancels us first, and deadlines
    // only ever move earlier: then we record the deadline but arm no timer. (If it is our
    // own earlier deadline, we return below without changing anything.) Read before
    // locking `node` (invariant 2: never lock an ancestor while holding a descendant); a
    // stale answer only means arming a timer that turns out to be unneeded.
    let covered = earliest.is_some_and(|e| e <= at);

    // Allocate outside the lock; most nodes have no `Extra` yet. An unused one is freed
    // (through this guard) after the lock is released.
    let spare = Extra::into_raw(Extra::default());
    // SAFETY: just made, and ours until it is given to the node below.
    let mut spare = Some(unsafe { Extra::from_raw(spare) });
    let guard = n.lock();
    if guard.is_cancelled() {
        return;
    }
    let mut extra_ptr = guard.extra();
    if extra_ptr.is_null() {
        extra_ptr = spare
            .take()
            .map_or(std::ptr::null_mut(), OwnedExtra::into_raw);
        guard.set_extra(extra_ptr);
    }
    // SAFETY: guarded by the lock we hold.
    let extra = unsafe { &mut *extra_ptr };
    if let Some((earlier, earlier_origin)) = extra.deadline.filter(|(d, _)| *d <= at) {
        // An earlier deadline of its own stays. If this one is due, that one is too: the
        // node is cancelled now, in its name, rather than when its timer gets to it.
        drop(guard);
        if earlier <= now {
            n.cancel(Reason::at(ReasonKind::DeadlineExceeded, earlier_origin));
        }
        return;
    }
    extra.deadline = Some((at, origin));
    if due {
        // A timer set for a later deadline is no longer needed.
        if let Some((old_clock, old_key)) = extra.timer.take() {
            old_clock.disarm(&old_key);
        }
        drop(guard);
        n.cancel(Reason::at(ReasonKind::DeadlineExceeded, origin));
        return;
    }
    if !covered {
        // Node lock, then the queue's lock (invariant 2). The queue holds the node weakly.
        let key = clock.arm(at, node.as_ptr(), origin);
        if let Some((old_clock, old_key)) = extra.timer.replace((clock.clone(), key)) {
            old_clock.disarm(&old_key);
        }
    }
    drop(guard);
    // The clock may have passed `at` while we armed (a slow thread, or another thread
    // advancing a manual clock); the timer fires in that case, and `cancel` is idempotent.
}

/// Fires a deadline taken from a timer queue: cancels with `DeadlineExceeded` and the origin
/// of the call that set it, then drops the queue's temporary reference.
///
/// # Safety
///
/// The caller owns one reference to `node` (from `Node::try_acquire`).
pub(crate) unsafe fn fire(node: NonNull<Node>, origin: &'static Location<'static>) {
    struct Release(NonNull<Node>);
    impl Drop for Release {
        fn drop(&mut self) {
            // SAFETY: the reference the caller gave us, released even if a callback panics.
            unsafe { Node::release(self.0) }
        }
    }
    let release = Release(node);
    // SAFETY: our reference keeps the node alive.
    unsafe { release.0.as_ref() }.cancel(Reason::at(ReasonKind::DeadlineExceeded, origin));
}
