//! A node of the cancellation tree, its lock, and its life cycle (creation, linking,
//! reference counting, unlinking).

use std::panic::Location;
use std::ptr::{self, NonNull};
use std::time::Instant;

use crate::clock::Clock;
use crate::reason::{Reason, ReasonInner};
use crate::sync::{AtomicPtr, AtomicUsize, Ordering, UnsafeCell, fence, spin_loop, thread};
use crate::tree::entry::EntryHeader;
use crate::tree::timer::TimerKey;

/// Bit 0 of the state word: the node's lock (invariant 1).
pub(crate) const LOCKED: usize = 1;

/// One node of the tree. Exactly eight words (64 bytes) in a normal build; see the
/// `node_is_64_bytes` test and the `versus` benchmark's heap figures.
///
/// `repr(C)` with `state` first: `CancellationToken::is_cancelled` reads the state word
/// through the token's pointer without knowing whether it points to a node.
#[repr(C)]
pub(crate) struct Node {
    /// Reason pointer | [`LOCKED`]. Invariant 1.
    state: AtomicPtr<ReasonInner>,
    /// Handles, registrations and children. Invariant 3.
    refs: AtomicUsize,
    /// The primary parent (null for a root). Immutable; we hold a reference to it.
    pub(crate) parent: *const Node,
    /// Our membership in the primary parent's child list. Guarded by the parent's lock.
    prev: UnsafeCell<Elem>,
    /// See `prev`.
    next: UnsafeCell<Elem>,
    /// Head of our child list (newest first). Guarded by our lock.
    first_child: UnsafeCell<Elem>,
    /// Head of our entry list (newest first). Guarded by our lock.
    entries: UnsafeCell<*mut EntryHeader>,
    /// Rarely needed data (deadline, clock, further parents); null for most nodes. Guarded by
    /// our lock; freed with the node.
    extra: UnsafeCell<*mut Extra>,
}

/// What only some nodes need, kept out of [`Node`] so that every node stays 64 bytes.
#[derive(Default)]
pub(crate) struct Extra {
    /// Our own deadline (ancestors' are found by walking up) and the call that set it.
    pub(crate) deadline: Option<(Instant, &'static Location<'static>)>,
    /// The clock of the tree below this node, if it was chosen here (`with_clock`).
    pub(crate) clock: Option<Clock>,
    /// Our armed timer, in the given clock's queue.
    pub(crate) timer: Option<(Clock, TimerKey)>,
    /// Parents beyond the primary one, each with the link that puts us in its child list.
    /// Written before the node is shared; immutable afterwards.
    pub(crate) more_parents: Vec<(*const Node, *mut ExtLink)>,
}

impl Extra {
    /// Moves `extra` to the heap (a cached block: see `tree/alloc.rs`), for a node's
    /// `extra` pointer; [`from_raw`](Extra::from_raw) takes it back.
    pub(crate) fn into_raw(extra: Extra) -> *mut Extra {
        crate::tree::alloc::new(extra).as_ptr()
    }

    /// Takes back an `Extra` made by [`into_raw`](Extra::into_raw); it is freed when the
    /// returned guard is dropped.
    ///
    /// # Safety
    ///
    /// `extra` came from `into_raw`, and nothing else uses it afterwards.
    pub(crate) unsafe fn from_raw(extra: *mut Extra) -> OwnedExtra {
        // SAFETY: non-null: it came from `into_raw` (caller).
        OwnedExtra(unsafe { NonNull::new_unchecked(extra) })
    }
}

/// An `Extra` taken back from a node (or not yet given to one), freed on drop.
pub(crate) struct OwnedExtra(NonNull<Extra>);

impl OwnedExtra {
    /// Gives the `Extra` away as a node's pointer (the inverse of [`Extra::from_raw`]).
    pub(crate) fn into_raw(self) -> *mut Extra {
        let ptr = self.0.as_ptr();
        std::mem::forget(self);
        ptr
    }
}

impl std::ops::Deref for OwnedExtra {
    type Target = Extra;
    fn deref(&self) -> &Extra {
        // SAFETY: ours alone, alive until we drop it (`Extra::from_raw`).
        unsafe { self.0.as_ref() }
    }
}

impl Drop for OwnedExtra {
    fn drop(&mut self) {
        // SAFETY: made by `alloc::new` in `Extra::into_raw`, used by nobody else.
        unsafe { crate::tree::alloc::delete(self.0) }
    }
}

/// A node's membership in the child list of a parent other than its primary one.
pub(crate) struct ExtLink {
    /// Guarded by the parent's lock (invariant 4).
    prev: UnsafeCell<Elem>,
    /// Guarded by the parent's lock (invariant 4).
    next: UnsafeCell<Elem>,
    /// The child this link belongs to.
    child: *const Node,
}

/// An element of a child list: either a child [`Node`] (through its embedded links, tag 0)
/// or an [`ExtLink`] (tag 1 in bit 0; both types are 8-aligned).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Elem(*mut ());

const EXT_TAG: usize = 1;

impl Elem {
    pub(crate) const NONE: Elem = Elem(ptr::null_mut());

    fn of_node(node: *const Node) -> Elem {
        Elem(node as *mut ())
    }

    fn of_ext(link: *const ExtLink) -> Elem {
        Elem((link as *mut ()).map_addr(|a| a | EXT_TAG))
    }

    pub(crate) fn is_none(self) -> bool {
        self.0.is_null()
    }

    /// The `(prev, next)` cells of this element.
    ///
    /// # Safety
    ///
    /// The element is in a child list whose owner's lock the caller holds (so it is alive).
    unsafe fn links<'a>(self) -> (&'a UnsafeCell<Elem>, &'a UnsafeCell<Elem>) {
        if self.0.addr() & EXT_TAG != 0 {
            // SAFETY: tag 1 elements are ExtLinks, alive while listed (caller).
            let link = unsafe { &*(self.0.map_addr(|a| a & !EXT_TAG) as *const ExtLink) };
            (&link.prev, &link.next)
        } else {
            // SAFETY: tag 0 elements are Nodes, alive while listed (caller).
            let node = unsafe { &*(self.0 as *const Node) };
            (&node.prev, &node.next)
        }
    }

    /// The next element of the list.
    ///
    /// # Safety
    ///
    /// As for [`links`](Elem::links).
    pub(crate) unsafe fn next(self) -> Elem {
        // SAFETY: forwarded; the cell is guarded by the lock the caller holds.
        unsafe { self.links().1.with(|n| *n) }
    }

    /// The child node this element stands for.
    ///
    /// # Safety
    ///
    /// As for [`links`](Elem::links).
    pub(crate) unsafe fn child(self) -> *const Node {
        if self.0.addr() & EXT_TAG != 0 {
            // SAFETY: see `links`; `child` is immutable.
            unsafe { (*(self.0.map_addr(|a| a & !EXT_TAG) as *const ExtLink)).child }
        } else {
            self.0 as *const Node
        }
    }
}

/// The lock on one node, held. Unlocks on drop (a `Release` store of the untagged state).
pub(crate) struct Locked<'a> {
    node: &'a Node,
    /// The reason pointer as of locking (or as set through [`Locked::set_reason`]); only the
    /// lock holder changes it (invariant 1), so it is exact while we hold the lock.
    reason: *mut ReasonInner,
}

impl Node {
    fn alloc(parent: *mut Node, extra: *mut Extra) -> NonNull<Node> {
        #[cfg(test)]
        crate::tree::debug::node_allocated();
        crate::tree::alloc::new(Node {
            state: AtomicPtr::new(ptr::null_mut()),
            refs: AtomicUsize::new(1),
            parent: parent.cast_const(),
            prev: UnsafeCell::new(Elem::NONE),
            next: UnsafeCell::new(Elem::NONE),
            first_child: UnsafeCell::new(Elem::NONE),
            entries: UnsafeCell::new(ptr::null_mut()),
            extra: UnsafeCell::new(extra),
        })
    }

    /// A new root node with one reference (for the caller's handle).
    pub(crate) fn new_root(extra: Option<Extra>) -> NonNull<Node> {
        Node::alloc(
            ptr::null_mut(),
            extra.map_or(ptr::null_mut(), Extra::into_raw),
        )
    }

    /// A new child of `parent`, with one reference for the caller's handle. If `parent` is
    /// cancelled the child is born cancelled with the same reason.
    ///
    /// `parent` must be a pointer with the provenance of the parent's allocation (a handle's
    /// pointer, not one made from a `&Node`): the child that empties the parent's child list
    /// releases the list's reference through it, and that may be the last one.
    pub(crate) fn new_child(parent_ptr: NonNull<Node>) -> NonNull<Node> {
        Node::new_child_with(parent_ptr, ptr::null_mut())
    }

    /// [`new_child`](Node::new_child) with its `Extra` given: `extra` is null or came from
    /// [`Extra::into_raw`], and becomes the child's.
    pub(crate) fn new_child_with(parent_ptr: NonNull<Node>, extra: *mut Extra) -> NonNull<Node> {
        // SAFETY: the caller holds a reference to the parent.
        let parent = unsafe { parent_ptr.as_ref() };
        let child = Node::alloc(parent_ptr.as_ptr(), extra);
        // SAFETY: `child` was just allocated and is not shared yet.
        let child_ref = unsafe { child.as_ref() };
        let guard = parent.lock();
        if !guard.reason.is_null() {
            // SAFETY: the parent's reason lives while the parent does (invariant 1).
            unsafe { Reason::add_raw(guard.reason, 1) };
            // Not shared yet: a plain store; our unlock of the parent publishes it.
            child_ref.state.store(guard.reason, Ordering::Relaxed);
        }
        // SAFETY: we hold the parent's lock, and the child's links are unused.
        unsafe { guard.push_child(Elem::of_node(child.as_ptr())) };
        drop(guard);
        child
    }

    /// A new node linked to every parent in `parents` (in order), with one reference for the
    /// caller's handle. Cancelled when any parent is; born cancelled with the reason of the
    /// first parent (in the order given) found cancelled while linking.
    /// As for [`new_child`](Node::new_child), the parents' pointers must carry their
    /// allocations' provenance.
    pub(crate) fn new_linked(parents: &[NonNull<Node>], clock: Option<Clock>) -> NonNull<Node> {
        let Some((primary, more)) = parents.split_first() else {
            let extra = clock.map(|clock| Extra {
                clock: Some(clock),
                ..Extra::default()
            });
            return Node::new_root(extra);
        };
        if more.is_empty() && clock.is_none() {
            return Node::new_child(*primary);
        }
        // Allocate everything before taking any lock (no allocation under a lock).
        let extra = Extra::into_raw(Extra {
            clock,
            ..Extra::default()
        });
        let node = Node::alloc(primary.as_ptr(), extra);
        let node_ptr = node.as_ptr().cast_const();
        for parent in more {
            let link = Box::into_raw(Box::new(ExtLink {
                prev: UnsafeCell::new(Elem::NONE),
                next: UnsafeCell::new(Elem::NONE),
                child: node_ptr,
            }));
            // SAFETY: `extra` is ours alone until the node is linked below.
            unsafe {
                (*extra)
                    .more_parents
                    .push((parent.as_ptr().cast_const(), link))
            };
        }
        // SAFETY: the node is alive (we hold its first reference).
        let node_ref = unsafe { node.as_ref() };

        // Primary parent: the node is not shared yet, so mark it without its lock.
        // SAFETY: the caller holds a reference to it.
        let guard = unsafe { primary.as_ref() }.lock();
        if !guard.reason.is_null() {
            // SAFETY: the parent's reason lives while the parent does (invariant 1).
            unsafe { Reason::add_raw(guard.reason, 1) };
            node_ref.state.store(guard.reason, Ordering::Relaxed);
        }
        // SAFETY: we hold the primary parent's lock; the embedded links are unused.
        unsafe { guard.push_child(Elem::of_node(node_ptr)) };
        drop(guard);

        // Further parents: the node may be visible (and being cancelled) through the primary
        // parent now, so mark it under its own lock, taken after the parent's (invariant 2).
        // SAFETY: `more_parents` is immutable once written above.
        let links = unsafe { &(*extra).more_parents };
        for &(parent, link) in links {
            // SAFETY: the caller holds a reference to each parent.
            let parent = unsafe { &*parent };
            let guard = parent.lock();
            if !guard.reason.is_null() {
                let mut own = node_ref.lock();
                if own.reason.is_null() {
                    // SAFETY: as above.
                    unsafe { Reason::add_raw(guard.reason, 1) };
                    own.set_reason(guard.reason);
                }
            }
            // SAFETY: we hold the parent's lock; `link` is unused so far.
            unsafe { guard.push_child(Elem::of_ext(link)) };
        }
        node
    }

    /// Adds a reference. The caller already holds one (so the count is not zero).
    #[inline]
    pub(crate) fn acquire(&self) {
        // Relaxed suffices: a new reference can only be made from an existing one, whose
        // holder keeps the node alive (the same argument as `Arc::clone`).
        let old = self.refs.fetch_add(1, Ordering::Relaxed);
        if old > isize::MAX as usize {
            // Billions of leaked handles: give up like `Arc` does rather than wrap around.
            std::process::abort();
        }
    }

    /// Adds a reference unless the count is already zero (the node is being freed).
    /// Used by timer queues, which hold nodes weakly (invariant 3).
    ///
    /// # Safety
    ///
    /// `node` is not freed yet: the caller found it in a timer queue, under that queue's lock.
    pub(crate) unsafe fn try_acquire(node: *const Node) -> bool {
        // SAFETY: the caller guarantees the memory is still valid.
        let refs = unsafe { &(*node).refs };
        let mut n = refs.load(Ordering::Relaxed);
        loop {
            if n == 0 {
                return false;
            }
            match refs.compare_exchange_weak(n, n + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return true,
                Err(actual) => n = actual,
            }
        }
    }

    /// Drops a reference; the last one unlinks and frees the node (and, transitively, any
    /// parent whose last reference that was).
    ///
    /// # Safety
    ///
    /// The caller owns one reference to `node` and does not use it afterwards.
    #[inline]
    pub(crate) unsafe fn release(node: NonNull<Node>) {
        // SAFETY: we own a reference, so the node is alive.
        if unsafe { node.as_ref() }
            .refs
            .fetch_sub(1, Ordering::Release)
            != 1
        {
            return;
        }
        // Pairs with the Release decrements of every other former holder: their writes
        // happen-before the teardown (the `Arc` argument).
        fence(Ordering::Acquire);
        // SAFETY: the count reached zero; we are the one to destroy it.
        unsafe { Node::destroy(node) }
    }

    /// Unlinks and frees a node whose count reached zero, then any parent this released
    /// last. Iterative, so a long chain of parents does not grow the stack.
    ///
    /// # Safety
    ///
    /// `node`'s reference count is zero and this thread observed it reach zero.
    #[cold]
    unsafe fn destroy(node: NonNull<Node>) {
        // The next node to destroy: a parent whose last reference this one held. Only nodes
        // with several parents (rare) can free more than one, and use `more`.
        let mut next = Some(node);
        let mut more: Vec<NonNull<Node>> = Vec::new();
        while let Some(node) = next.take().or_else(|| more.pop()) {
            // SAFETY: the count is zero: no handle, registration or child refers to the node
            // (invariant 3), so only parents' child lists and timer queues still reach it,
            // and both are handled below before the memory is freed.
            let n = unsafe { node.as_ref() };
            // Exclusive: `extra` is guarded by our lock, which only handle holders and walks
            // from parents take; no handles remain, and parents are unlinked first below.
            let extra = n.extra.with_mut(|e| {
                // SAFETY: see above.
                unsafe { std::mem::replace(&mut *e, ptr::null_mut()) }
            });

            // Whether we emptied the primary parent's list (and so own its reference).
            let mut emptied_parent = false;
            if !n.parent.is_null() {
                // SAFETY: the parent's non-empty list (we are in it) holds a reference to it.
                let parent = unsafe { &*n.parent };
                let guard = parent.lock();
                // SAFETY: we are listed in the parent's child list; we hold its lock.
                emptied_parent = unsafe { guard.remove_child(Elem::of_node(node.as_ptr())) };
                drop(guard);
            }
            if !extra.is_null() {
                // SAFETY: `extra` came from `Extra::into_raw` and is ours now.
                let extra = unsafe { Extra::from_raw(extra) };
                for &(parent, link) in &extra.more_parents {
                    // SAFETY: that parent's non-empty list (our link is in it) holds a
                    // reference to it.
                    let parent_ref = unsafe { &*parent };
                    let guard = parent_ref.lock();
                    // SAFETY: listed in that parent's list under its lock (invariant 4).
                    let emptied = unsafe { guard.remove_child(Elem::of_ext(link)) };
                    drop(guard);
                    // SAFETY: unlinked, so nobody else can reach the link any more.
                    drop(unsafe { Box::from_raw(link) });
                    // SAFETY: the emptied list's reference, ours to release.
                    if emptied && unsafe { Node::release_is_last(parent) } {
                        // SAFETY: non-null.
                        more.push(unsafe { NonNull::new_unchecked(parent.cast_mut()) });
                    }
                }
                if let Some((clock, key)) = &extra.timer {
                    // Under the queue's lock: after this, the timer cannot reach us.
                    clock.disarm(key);
                }
            }
            // Unlinked everywhere: no walk can hold our lock any more, so the state is final.
            let reason = n.state.load(Ordering::Acquire).map_addr(|a| a & !LOCKED);
            if !reason.is_null() {
                // SAFETY: the node's own reference to its reason (invariant 1).
                unsafe { Reason::release_raw(reason) };
            }
            let parent = n.parent;
            #[cfg(test)]
            crate::tree::debug::node_freed();
            // SAFETY: allocated by `alloc::new` in `Node::alloc`, unreachable now.
            unsafe { crate::tree::alloc::delete(node) };
            // SAFETY: the emptied list's reference to the primary parent, ours to release
            // (the list held it while we were in it, so the parent outlived our use above).
            if emptied_parent && unsafe { Node::release_is_last(parent) } {
                // SAFETY: non-null.
                next = Some(unsafe { NonNull::new_unchecked(parent.cast_mut()) });
            }
        }
    }

    /// Drops a reference and reports whether it was the last (the caller must then destroy).
    ///
    /// # Safety
    ///
    /// The caller owns one reference to `node`.
    unsafe fn release_is_last(node: *const Node) -> bool {
        // SAFETY: our reference keeps it alive.
        if unsafe { &*node }.refs.fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            true
        } else {
            false
        }
    }

    /// Whether the node is cancelled: one `Acquire` load (invariant 1).
    #[inline(always)]
    pub(crate) fn is_cancelled(&self) -> bool {
        self.state.load(Ordering::Acquire).addr() & !LOCKED != 0
    }

    /// The node's reason, if it is cancelled. Lock-free.
    #[inline]
    pub(crate) fn reason(&self) -> Option<Reason> {
        let ptr = self.state.load(Ordering::Acquire).map_addr(|a| a & !LOCKED);
        if ptr.is_null() {
            None
        } else {
            // SAFETY: invariant 1: the node holds a reference to its reason for its whole
            // life, and the caller's handle keeps the node alive.
            Some(unsafe { Reason::clone_from_raw(ptr) })
        }
    }

    /// Locks the node (spinning, then yielding; critical sections are a few pointer writes,
    /// except during a cancel walk).
    #[inline]
    pub(crate) fn lock(&self) -> Locked<'_> {
        match self.lock_inner(false) {
            Some(guard) => guard,
            // `lock_inner(false)` only returns once it holds the lock.
            None => unreachable!("lock_inner(false) always locks"),
        }
    }

    /// Locks the node unless it is (or becomes, while we wait) cancelled. Lets a losing
    /// `cancel` return at once instead of queueing behind the winner's walk.
    #[inline]
    pub(crate) fn lock_unless_cancelled(&self) -> Option<Locked<'_>> {
        self.lock_inner(true)
    }

    #[inline]
    fn lock_inner(&self, unless_cancelled: bool) -> Option<Locked<'_>> {
        // A cancel walk locks nodes that are almost always unlocked and live: it tries the
        // exchange from that value at once (a failure returns the actual value, as a load
        // would). Other lockers load first, so that waiting on a held lock only reads it.
        let mut cur = if unless_cancelled {
            ptr::null_mut()
        } else {
            self.state.load(Ordering::Relaxed)
        };
        let mut spins = 0u32;
        loop {
            if unless_cancelled && cur.addr() & !LOCKED != 0 {
                return None;
            }
            if cur.addr() & LOCKED == 0 {
                match self.state.compare_exchange_weak(
                    cur,
                    cur.map_addr(|a| a | LOCKED),
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        return Some(Locked {
                            node: self,
                            reason: cur,
                        });
                    }
                    Err(actual) => {
                        cur = actual;
                        continue;
                    }
                }
            }
            backoff(&mut spins);
            cur = self.state.load(Ordering::Relaxed);
        }
    }
}

/// Waits a little longer each time (16, 32, … 512 pause instructions), then yields the
/// processor. A hand-written lock (rather than `std::sync::Mutex`) because it lives in the
/// spare bit of the state word: the node stays 64 bytes and `is_cancelled` stays a single
/// load of the same word.
///
/// Why not start at one pause: the lock's holds are a few nanoseconds, so a waiter that
/// retries at once takes the lock back and forth with the holder on every operation, and
/// each hand-over moves the node's cache line between cores. Waiting a little longer lets
/// the holder do its next few operations on a line it already owns. Measured with the
/// `versus` benchmark (two threads creating and dropping children of one parent, 2-vCPU
/// EPYC): 60–88 ns per operation when starting at one pause, 23–37 ns starting at 16.
#[inline]
fn backoff(spins: &mut u32) {
    #[cfg(not(loom))]
    {
        if *spins < 6 {
            for _ in 0..(16u32 << *spins) {
                spin_loop();
            }
            *spins += 1;
        } else {
            thread::yield_now();
        }
    }
    #[cfg(loom)]
    {
        let _ = spins;
        spin_loop();
        thread::yield_now();
    }
}

impl Drop for Locked<'_> {
    #[inline]
    fn drop(&mut self) {
        // Only the lock holder writes the state (invariant 1), so this is the exact value.
        self.node.state.store(self.reason, Ordering::Release);
    }
}

impl<'a> Locked<'a> {
    pub(crate) fn is_cancelled(&self) -> bool {
        !self.reason.is_null()
    }

    /// The reason, if cancelled.
    pub(crate) fn reason(&self) -> Option<Reason> {
        if self.reason.is_null() {
            None
        } else {
            // SAFETY: invariant 1.
            Some(unsafe { Reason::clone_from_raw(self.reason) })
        }
    }

    /// Marks the node cancelled. The caller transfers one reference to `reason`.
    /// `Release`, so that whoever sees the pointer also sees the reason's contents.
    pub(crate) fn set_reason(&mut self, reason: *const ReasonInner) {
        debug_assert!(self.reason.is_null(), "a node's reason is set once");
        self.reason = reason.cast_mut();
        self.node
            .state
            .store(self.reason.map_addr(|a| a | LOCKED), Ordering::Release);
    }

    pub(crate) fn first_child(&self) -> Elem {
        // SAFETY: guarded by our lock (invariant 4).
        self.node.first_child.with(|c| unsafe { *c })
    }

    pub(crate) fn extra(&self) -> *mut Extra {
        // SAFETY: guarded by our lock (invariant 4).
        self.node.extra.with(|e| unsafe { *e })
    }

    pub(crate) fn set_extra(&self, extra: *mut Extra) {
        // SAFETY: guarded by our lock (invariant 4).
        self.node.extra.with_mut(|e| unsafe { *e = extra })
    }

    /// Pushes `elem` at the front of the child list, taking the list's reference to this
    /// node if the list was empty (invariant 3).
    ///
    /// # Safety
    ///
    /// `elem`'s links belong to this list (its child's primary parent is this node, or it is
    /// an `ExtLink` made for this node) and are not in any list.
    unsafe fn push_child(&self, elem: Elem) {
        let head = self.first_child();
        if head.is_none() {
            // The list's reference to this node (invariant 3). Whoever links a child holds
            // a handle to this node, so the count is not zero.
            self.node.acquire();
        }
        // SAFETY: the links of `elem` and of the current head are guarded by our lock.
        unsafe {
            let (prev, next) = elem.links();
            prev.with_mut(|p| *p = Elem::NONE);
            next.with_mut(|n| *n = head);
            if !head.is_none() {
                head.links().0.with_mut(|p| *p = elem);
            }
        }
        // SAFETY: guarded by our lock.
        self.node.first_child.with_mut(|c| unsafe { *c = elem });
    }

    /// Removes `elem` from the child list. Returns whether the list is now empty: the
    /// caller then owns the list's reference to this node and must release it, after
    /// unlocking (invariant 3).
    ///
    /// # Safety
    ///
    /// `elem` is in this node's child list.
    #[must_use = "an emptied list's reference must be released"]
    unsafe fn remove_child(&self, elem: Elem) -> bool {
        // SAFETY: `elem` and its neighbours are listed here, guarded by our lock.
        unsafe {
            let (prev_cell, next_cell) = elem.links();
            let prev = prev_cell.with(|p| *p);
            let next = next_cell.with(|n| *n);
            if prev.is_none() {
                self.node.first_child.with_mut(|c| *c = next);
            } else {
                prev.links().1.with_mut(|n| *n = next);
            }
            if !next.is_none() {
                next.links().0.with_mut(|p| *p = prev);
            }
        }
        self.first_child().is_none()
    }

    /// Takes the whole entry list (newest first), leaving it empty.
    pub(crate) fn take_entries(&self) -> *mut EntryHeader {
        // SAFETY: guarded by our lock (invariant 4).
        self.node
            .entries
            .with_mut(|e| unsafe { std::mem::replace(&mut *e, ptr::null_mut()) })
    }

    /// Pushes an entry at the front of the entry list (so callbacks run newest first).
    ///
    /// # Safety
    ///
    /// `entry` is alive and in no list.
    pub(crate) unsafe fn push_entry(&self, entry: NonNull<EntryHeader>) {
        // SAFETY: guarded by our lock (invariant 4); the entry is ours to link.
        self.node.entries.with_mut(|head| unsafe {
            EntryHeader::link_front(entry, &mut *head);
        });
    }

    /// Removes an entry from the entry list.
    ///
    /// # Safety
    ///
    /// `entry` is in this node's entry list.
    pub(crate) unsafe fn remove_entry(&self, entry: NonNull<EntryHeader>) {
        // SAFETY: guarded by our lock (invariant 4).
        self.node.entries.with_mut(|head| unsafe {
            EntryHeader::unlink(entry, &mut *head);
        });
    }
}

#[cfg(test)]
#[cfg_attr(loom, allow(dead_code))]
impl Node {
    /// Number of elements in the child list (tests only).
    pub(crate) fn child_count(&self) -> usize {
        let guard = self.lock();
        let mut n = 0;
        let mut e = guard.first_child();
        while !e.is_none() {
            n += 1;
            // SAFETY: we hold the lock; `e` is listed.
            e = unsafe { e.next() };
        }
        n
    }

    /// Current reference count (tests only).
    pub(crate) fn ref_count(&self) -> usize {
        self.refs.load(Ordering::Relaxed)
    }

    /// Number of entries in the entry list (tests only).
    pub(crate) fn entry_count(&self) -> usize {
        let guard = self.lock();
        let mut n = 0;
        // SAFETY: guarded by the lock we hold.
        let mut e = self.entries.with(|e| unsafe { *e });
        while !e.is_null() {
            n += 1;
            // SAFETY: we hold the lock; `e` is listed.
            e = unsafe { EntryHeader::next_of(NonNull::new_unchecked(e)) };
        }
        drop(guard);
        n
    }
}

#[cfg(all(test, not(loom)))]
mod layout {
    #[test]
    fn node_is_64_bytes() {
        assert_eq!(std::mem::size_of::<super::Node>(), 64);
    }
}
