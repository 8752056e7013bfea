//! Entries: callbacks, waiting futures and blocked threads attached to a node.
//!
//! An entry is one heap allocation: an [`EntryHeader`] followed by its payload (the closure
//! itself, a `Waker`, or a `Thread`), with a hand-made vtable so the node's list links thin
//! pointers. It has two owners:
//!
//! * its **handle** (a [`Registration`](crate::Registration), a waiting future, a thread in
//!   `wait`), which holds a reference to the node (invariant 6);
//! * the node's **list**, and after a cancel walk collected it, the **cancelling thread**
//!   (except a waiting future's entry, which the walk finishes at once: then only its handle).
//!
//! # State machine
//!
//! The `state` word holds a phase and three flags:
//!
//! ```text
//!  LINKED ──(walk collects it, node lock held)──► PENDING ──(canceller)──► RUNNING ──► DONE
//!    │                                              │
//!    └─(handle drop, node lock held:                └─(handle drop)──► CLAIMED
//!       unlink + free at once)                         (the handle drops the payload;
//!                                                        the callback never runs)
//!
//!  LINKED ──(walk collects a waiting future's entry and takes its waker, node lock held)──► DONE
//!
//!  flags: HANDLE  — the handle still exists
//!         QUEUED  — the canceller's pending chain still refers to the entry
//!         WAITER  — a handle on another thread waits for RUNNING to end (rule 5);
//!                   its `Thread` is in `waiter`, written before the flag is set
//! ```
//!
//! `LINKED → PENDING` (and `LINKED → DONE`) happens only under the node's lock, so a handle
//! holding that lock knows exactly whether the entry is still listed. From `PENDING`, the
//! phase is claimed with compare-and-swap by exactly one side: `PENDING → RUNNING` (the
//! canceller will run the payload) or `PENDING → CLAIMED` (the handle drops it). Whoever
//! clears the last of `HANDLE` and `QUEUED` frees the memory; every write of `DONE` clears
//! `QUEUED`, so a handle that sees `DONE` frees it at once.
//!
//! Rule 5 (a `Registration` dropped while its callback runs on another thread waits for it):
//! the handle sets `WAITER` and parks until the phase is `DONE`. A callback that drops its
//! own registration (or one of a callback further up the same thread's stack) must not wait
//! for itself: each thread keeps a chain of the entries it is running ([`running_here`]).

use std::any::Any;
use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::ManuallyDrop;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::{self, NonNull};
use std::task::Waker;

use crate::reason::Reason;
use crate::sync::{AtomicUsize, Ordering, UnsafeCell, thread};
use crate::tree::Node;

const PHASE: usize = 0b111;
const LINKED: usize = 0;
const PENDING: usize = 1;
const RUNNING: usize = 2;
const DONE: usize = 3;
const CLAIMED: usize = 4;
const HANDLE: usize = 1 << 3;
const QUEUED: usize = 1 << 4;
const WAITER: usize = 1 << 5;

/// The common prefix of every entry allocation.
#[repr(C)]
pub(crate) struct EntryHeader {
    /// Phase and flags (see the module docs).
    state: AtomicUsize,
    /// Neighbours in the node's entry list while `LINKED` (guarded by the node's lock); after
    /// collection `next` chains the canceller's pending list (owned by the canceller).
    prev: UnsafeCell<*mut EntryHeader>,
    next: UnsafeCell<*mut EntryHeader>,
    /// The thread waiting for the callback to finish; written by the handle before it sets
    /// `WAITER`, read by the canceller only after it saw `WAITER`.
    waiter: UnsafeCell<Option<thread::Thread>>,
    vtable: &'static VTable,
}

struct VTable {
    /// Consumes the payload and runs it.
    run: unsafe fn(NonNull<EntryHeader>, &Reason),
    /// Drops the payload without running it.
    drop_payload: unsafe fn(NonNull<EntryHeader>),
    /// Frees the allocation (the payload was consumed or dropped already).
    dealloc: unsafe fn(NonNull<EntryHeader>),
    /// For a waiting future's entry ([`Wake`]): moves its waker out, so the cancel walk can
    /// finish the entry while it holds the node's lock and wake the waker afterwards,
    /// without the run-phase handshake (see [`Pending::append_list`]).
    take_waker: Option<unsafe fn(NonNull<EntryHeader>) -> Waker>,
}

#[repr(C)]
struct Entry<P> {
    header: EntryHeader,
    payload: UnsafeCell<ManuallyDrop<P>>,
}

/// What an entry does when its node is cancelled.
pub(crate) trait Payload: Send + 'static {
    /// Set only by [`Wake`] (a waker needs only waking: no reason, no order), so that the
    /// vtable's `take_waker` can only ever cast an `Entry<Wake>`.
    const TAKE_WAKER: Option<unsafe fn(NonNull<EntryHeader>) -> Waker> = None;
    fn run(self, reason: &Reason);
}

/// A user callback (`on_cancel`).
pub(crate) struct Callback<F>(pub(crate) F);

impl<F: FnOnce(&Reason) + Send + 'static> Payload for Callback<F> {
    fn run(self, reason: &Reason) {
        (self.0)(reason)
    }
}

/// A waiting future's waker (`cancelled()`).
pub(crate) struct Wake(pub(crate) Waker);

impl Payload for Wake {
    const TAKE_WAKER: Option<unsafe fn(NonNull<EntryHeader>) -> Waker> = Some(take_waker);
    /// Not reached: the cancel walk takes wakers out of their entries (`take_waker`). Kept
    /// correct rather than `unreachable!`.
    fn run(self, _: &Reason) {
        self.0.wake()
    }
}

/// A thread blocked in `wait` / `wait_timeout`.
pub(crate) struct Unpark(pub(crate) thread::Thread);

impl Payload for Unpark {
    fn run(self, _: &Reason) {
        self.0.unpark()
    }
}

struct Vt<P>(PhantomData<P>);

impl<P: Payload> Vt<P> {
    const VTABLE: VTable = VTable {
        run: run_payload::<P>,
        drop_payload: drop_payload::<P>,
        dealloc: dealloc::<P>,
        take_waker: P::TAKE_WAKER,
    };
}

/// # Safety
///
/// `h` points to a live `Entry<Wake>` whose payload is still there, and the caller has sole
/// access to it (the node's lock, while the entry is `LINKED`).
unsafe fn take_waker(h: NonNull<EntryHeader>) -> Waker {
    // SAFETY: caller; only `Wake` sets `TAKE_WAKER`, so this is an `Entry<Wake>`.
    unsafe { take_payload::<Wake>(h) }.0
}

/// # Safety
///
/// `h` points to a live `Entry<P>` whose payload was neither taken nor dropped.
unsafe fn run_payload<P: Payload>(h: NonNull<EntryHeader>, reason: &Reason) {
    // SAFETY: caller; the phase machine gives us sole access to the payload.
    let payload = unsafe { take_payload::<P>(h) };
    payload.run(reason);
}

/// # Safety
///
/// As for [`run_payload`].
unsafe fn drop_payload<P: Payload>(h: NonNull<EntryHeader>) {
    // SAFETY: caller.
    drop(unsafe { take_payload::<P>(h) });
}

/// # Safety
///
/// `h` points to a live `Entry<P>` allocated by [`alloc`]; its payload is gone.
unsafe fn dealloc<P: Payload>(h: NonNull<EntryHeader>) {
    // SAFETY: allocated as an Entry<P> by `alloc::new` in `alloc` (repr(C): the header is at
    // offset 0, and the pointer carries the provenance of the whole allocation). The payload
    // is ManuallyDrop, so only the header (its `waiter`) is dropped here.
    unsafe { crate::tree::alloc::delete(h.cast::<Entry<P>>()) };
}

/// Moves the payload out of an entry.
///
/// # Safety
///
/// `h` points to a live `Entry<P>` whose payload is still there, and nobody else accesses
/// the payload (the phase machine decides who does).
pub(crate) unsafe fn take_payload<P: Payload>(h: NonNull<EntryHeader>) -> P {
    let entry = h.cast::<Entry<P>>();
    // SAFETY: caller.
    unsafe {
        (*entry.as_ptr())
            .payload
            .with_mut(|p| ManuallyDrop::take(&mut *p))
    }
}

/// Mutable access to a payload still in the entry (a future updating its waker).
///
/// # Safety
///
/// `h` points to a live `Entry<P>` in phase `LINKED`, and the caller holds the node's lock.
pub(crate) unsafe fn with_payload<P: Payload, R>(
    h: NonNull<EntryHeader>,
    f: impl FnOnce(&mut P) -> R,
) -> R {
    let entry = h.cast::<Entry<P>>();
    // SAFETY: caller: while LINKED, the payload is guarded by the node's lock.
    unsafe { (*entry.as_ptr()).payload.with_mut(|p| f(&mut *p)) }
}

/// Allocates an entry in phase `LINKED` with its handle flag set. Not in any list yet.
pub(crate) fn alloc<P: Payload>(payload: P) -> NonNull<EntryHeader> {
    let entry = crate::tree::alloc::new(Entry {
        header: EntryHeader {
            state: AtomicUsize::new(LINKED | HANDLE),
            prev: UnsafeCell::new(ptr::null_mut()),
            next: UnsafeCell::new(ptr::null_mut()),
            waiter: UnsafeCell::new(None),
            vtable: &Vt::<P>::VTABLE,
        },
        payload: UnsafeCell::new(ManuallyDrop::new(payload)),
    });
    // repr(C) puts the header first.
    entry.cast::<EntryHeader>()
}

/// Frees an entry that was never linked, returning its payload (used when the node turned
/// out to be cancelled already: the payload then runs inline).
///
/// # Safety
///
/// `h` came from [`alloc::<P>`](alloc) and was never linked.
pub(crate) unsafe fn unwrap_unlinked<P: Payload>(h: NonNull<EntryHeader>) -> P {
    // SAFETY: caller: nobody else knows this entry.
    unsafe {
        let payload = take_payload::<P>(h);
        dealloc::<P>(h);
        payload
    }
}

impl EntryHeader {
    /// Links `entry` at the front of the list headed by `head`.
    ///
    /// # Safety
    ///
    /// The caller holds the lock of the node owning the list; `entry` is in no list.
    pub(crate) unsafe fn link_front(entry: NonNull<EntryHeader>, head: &mut *mut EntryHeader) {
        // SAFETY: caller: the list is guarded by the lock we hold.
        unsafe {
            let e = entry.as_ref();
            e.prev.with_mut(|p| *p = ptr::null_mut());
            e.next.with_mut(|n| *n = *head);
            if let Some(old) = NonNull::new(*head) {
                old.as_ref().prev.with_mut(|p| *p = entry.as_ptr());
            }
        }
        *head = entry.as_ptr();
    }

    /// Unlinks `entry` from the list headed by `head`.
    ///
    /// # Safety
    ///
    /// The caller holds the lock of the node owning the list; `entry` is in it.
    pub(crate) unsafe fn unlink(entry: NonNull<EntryHeader>, head: &mut *mut EntryHeader) {
        // SAFETY: caller.
        unsafe {
            let e = entry.as_ref();
            let prev = e.prev.with(|p| *p);
            let next = e.next.with(|n| *n);
            match NonNull::new(prev) {
                None => *head = next,
                Some(prev) => prev.as_ref().next.with_mut(|n| *n = next),
            }
            if let Some(next) = NonNull::new(next) {
                next.as_ref().prev.with_mut(|p| *p = prev);
            }
        }
    }

    /// The next entry in the list or chain.
    ///
    /// # Safety
    ///
    /// The caller owns the list or chain `entry` is in (the node's lock, or the pending chain).
    pub(crate) unsafe fn next_of(entry: NonNull<EntryHeader>) -> *mut EntryHeader {
        // SAFETY: caller.
        unsafe { entry.as_ref().next.with(|n| *n) }
    }
}

/// The entries collected by one cancel walk, to run once every lock is released
/// (invariant 5): callbacks and blocked threads singly linked through the entries' `next`
/// pointers, in run order; and the wakers of waiting futures, already taken out of their
/// entries.
pub(crate) struct Pending {
    head: *mut EntryHeader,
    tail: *mut EntryHeader,
    wakers: Vec<Waker>,
}

impl Pending {
    pub(crate) fn new() -> Self {
        Pending {
            head: ptr::null_mut(),
            tail: ptr::null_mut(),
            wakers: Vec::new(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null() && self.wakers.is_empty()
    }

    /// Collects a node's whole entry list (newest first; taken under its lock, which the
    /// caller still holds). The walk collects each node when it finishes it (post-order).
    ///
    /// * A waiting future's entry is finished here: its waker is moved out (the lock gives
    ///   us the `LINKED` payload) and the entry goes straight to `DONE` with `QUEUED` clear,
    ///   so its handle frees it. A handle always takes the node's lock before it looks at a
    ///   collected entry, so it cannot see `DONE` before we unlock. This costs no atomic
    ///   read-modify-write per waiter (the `PENDING → RUNNING → DONE` handshake costs two):
    ///   a waker needs neither the reason nor an order, and waking it cannot unregister
    ///   anything we still touch.
    /// * Every other entry is marked `PENDING` and appended to the *end* of the chain, which
    ///   gives the run order of invariant 5: every node after all its descendants, each
    ///   node's entries newest first.
    ///
    /// # Safety
    ///
    /// `list` was just taken from a node whose lock the caller holds.
    pub(crate) unsafe fn append_list(&mut self, list: *mut EntryHeader) {
        let mut cur = list;
        while let Some(entry) = NonNull::new(cur) {
            // SAFETY: the list is ours (taken under the lock); entries stay alive while
            // listed/queued because the handle cannot free them without the lock or, after
            // the store below, without clearing QUEUED (or, for DONE, before we unlock).
            let e = unsafe { entry.as_ref() };
            // SAFETY: as above.
            cur = e.next.with(|n| unsafe { *n });
            if let Some(take_waker) = e.vtable.take_waker {
                // SAFETY: LINKED until the store below, and we hold the node's lock.
                let waker = unsafe { take_waker(entry) };
                // LINKED|HANDLE → DONE|HANDLE. The handle learns of it under the lock.
                e.state.store(DONE | HANDLE, Ordering::Release);
                self.wakers.push(waker);
                continue;
            }
            // LINKED|HANDLE → PENDING|HANDLE|QUEUED. A handle in LINKED holds the lock to
            // leave, so HANDLE is set here; the handle learns of the change under the lock.
            e.state.store(PENDING | HANDLE | QUEUED, Ordering::Release);
            // SAFETY: the entry is ours to relink (collected, QUEUED).
            e.next.with_mut(|n| unsafe { *n = ptr::null_mut() });
            match NonNull::new(self.tail) {
                None => self.head = entry.as_ptr(),
                // SAFETY: the chain is ours.
                Some(tail) => unsafe { tail.as_ref() }
                    .next
                    .with_mut(|n| unsafe { *n = entry.as_ptr() }),
            }
            self.tail = entry.as_ptr();
        }
    }

    /// Runs every collected entry. All run even if some panic; the first panic is resumed
    /// after the last one ran (rule 4).
    pub(crate) fn run(self, reason: &Reason) {
        let mut panic: Option<Box<dyn Any + Send>> = None;
        // Waiting futures first: they only need to be scheduled, and their tasks can start
        // on other threads while the callbacks run here.
        for waker in self.wakers {
            if let Err(payload) = catch_unwind(AssertUnwindSafe(|| waker.wake())) {
                panic.get_or_insert(payload);
            }
        }
        let mut cur = self.head;
        while let Some(entry) = NonNull::new(cur) {
            // Read the link first: once run, the handle may free the entry.
            // SAFETY: the chain is ours (QUEUED keeps the entry alive).
            cur = unsafe { EntryHeader::next_of(entry) };
            // SAFETY: as above.
            unsafe { run_collected(entry, reason, &mut panic) };
        }
        if let Some(payload) = panic {
            std::panic::resume_unwind(payload);
        }
    }
}

/// The canceller's side of the state machine for one collected entry.
///
/// # Safety
///
/// `entry` is in this thread's pending chain (QUEUED set by us).
unsafe fn run_collected(
    entry: NonNull<EntryHeader>,
    reason: &Reason,
    panic: &mut Option<Box<dyn Any + Send>>,
) {
    // SAFETY: QUEUED keeps the allocation alive until we clear it.
    let e = unsafe { entry.as_ref() };
    // Start from the value `append_list` stored rather than a load: usually nothing has
    // changed it since, and a failed exchange returns the actual value anyway. (One fewer
    // access per entry on the cancel path; the loop is the same.)
    let mut cur = PENDING | HANDLE | QUEUED;
    let running = loop {
        match cur & PHASE {
            PENDING => match e.state.compare_exchange(
                cur,
                (cur & !PHASE) | RUNNING,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break (cur & !PHASE) | RUNNING,
                Err(actual) => cur = actual,
            },
            CLAIMED => {
                // The handle took the payload back before we ran it.
                let prev = e.state.fetch_and(!QUEUED, Ordering::AcqRel);
                if prev & HANDLE == 0 {
                    // SAFETY: both owners are gone; the payload was dropped by the handle.
                    unsafe { (e.vtable.dealloc)(entry) };
                }
                return;
            }
            _ => unreachable!("a queued entry is PENDING or CLAIMED before it runs"),
        }
    };

    let result = with_running_frame(entry, || {
        catch_unwind(AssertUnwindSafe(|| {
            // SAFETY: RUNNING gives us the payload (the handle can no longer claim it).
            unsafe { (e.vtable.run)(entry, reason) }
        }))
    });
    if let Err(payload) = result {
        panic.get_or_insert(payload);
    }

    // Again start from the value we stored; the callback or a waiting handle may have
    // changed it (HANDLE, WAITER), in which case the exchange fails and tells us.
    let mut cur = running;
    loop {
        // If a handle waits, take its Thread *before* publishing DONE: after that the
        // handle may free the entry.
        let waiter = if cur & WAITER != 0 {
            // SAFETY: written before WAITER was set (Release/Acquire on `state`), never
            // written again; the waiting handle does not free the entry before DONE.
            e.waiter.with(|w| unsafe { (*w).clone() })
        } else {
            None
        };
        let done = (cur & !(PHASE | QUEUED)) | DONE;
        match e
            .state
            .compare_exchange(cur, done, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                if cur & HANDLE == 0 {
                    // The handle went away while we ran (from inside the callback).
                    // SAFETY: both owners are gone; the payload was consumed by `run`.
                    unsafe { (e.vtable.dealloc)(entry) };
                } else if let Some(thread) = waiter {
                    thread.unpark();
                }
                return;
            }
            Err(actual) => cur = actual,
        }
    }
}

/// Releases an entry's handle: unregisters the entry if it is still listed, waits if its
/// payload is running on another thread (rule 5), and frees it if we are the last owner.
/// Returns `true` if the payload had not started and now never will.
///
/// # Safety
///
/// `entry` is an entry of `node` whose handle the caller owns (and gives up); the caller
/// keeps `node` alive for the duration of the call.
pub(crate) unsafe fn release_handle(node: &Node, entry: NonNull<EntryHeader>) -> bool {
    // SAFETY: our handle keeps the entry alive.
    let e = unsafe { entry.as_ref() };
    let guard = node.lock();
    // LINKED → PENDING (or → DONE) only happens under this lock, so this read is exact.
    if e.state.load(Ordering::Relaxed) & PHASE == LINKED {
        // SAFETY: LINKED entries are in the node's list; we hold its lock.
        unsafe { guard.remove_entry(entry) };
        drop(guard);
        // SAFETY: unlinked and never collected: we are the only owner. The payload's drop
        // (user code) runs outside the lock.
        unsafe {
            (e.vtable.drop_payload)(entry);
            (e.vtable.dealloc)(entry);
        }
        return true;
    }
    drop(guard);

    let mut cur = e.state.load(Ordering::Acquire);
    loop {
        match cur & PHASE {
            PENDING => match e.state.compare_exchange(
                cur,
                (cur & !PHASE) | CLAIMED,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // The canceller will skip it; the payload is ours to drop, at once.
                    // SAFETY: CLAIMED gives us the payload.
                    unsafe { (e.vtable.drop_payload)(entry) };
                    // SAFETY: we own the HANDLE flag.
                    unsafe { finish_handle(entry) };
                    return true;
                }
                Err(actual) => cur = actual,
            },
            RUNNING => {
                if running_here(entry) {
                    // Dropped from inside the callback (or one nested in it) on the thread
                    // that runs it: waiting would deadlock. The canceller frees it.
                    // SAFETY: we own the HANDLE flag.
                    unsafe { finish_handle(entry) };
                    return false;
                }
                if cur & WAITER == 0 {
                    e.waiter.with_mut(|w| {
                        // SAFETY: not published yet (WAITER unset), so the canceller does
                        // not read it; only this handle writes it.
                        unsafe { *w = Some(thread::current()) }
                    });
                    match e.state.compare_exchange(
                        cur,
                        cur | WAITER,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        Ok(_) => cur |= WAITER,
                        Err(actual) => {
                            cur = actual;
                            continue;
                        }
                    }
                }
                // The canceller unparks us after it publishes DONE.
                while cur & PHASE == RUNNING {
                    thread::park();
                    cur = e.state.load(Ordering::Acquire);
                }
            }
            DONE => {
                // Every write of DONE clears QUEUED: the canceller is done with the entry
                // (and `cur` was read with Acquire), so we are its last owner.
                // SAFETY: as just said; the payload was consumed by the run or the walk.
                unsafe { (e.vtable.dealloc)(entry) };
                return false;
            }
            _ => unreachable!("a collected entry's handle sees PENDING, RUNNING or DONE"),
        }
    }
}

/// Clears `HANDLE`; frees the entry if the canceller is done with it too.
///
/// # Safety
///
/// The caller owns the `HANDLE` flag and does not touch the entry afterwards.
unsafe fn finish_handle(entry: NonNull<EntryHeader>) {
    // SAFETY: the HANDLE flag keeps the entry alive until this RMW.
    let e = unsafe { entry.as_ref() };
    let vtable = e.vtable;
    let prev = e.state.fetch_and(!HANDLE, Ordering::AcqRel);
    if prev & QUEUED == 0 {
        // SAFETY: the canceller cleared QUEUED already; we are the last owner.
        unsafe { (vtable.dealloc)(entry) };
    }
}

/// A frame of the per-thread chain of entries being run (see [`running_here`]).
struct Frame {
    entry: *const EntryHeader,
    prev: *const Frame,
}

#[cfg(not(loom))]
std::thread_local! {
    static RUNNING_FRAMES: Cell<*const Frame> = const { Cell::new(ptr::null()) };
}

#[cfg(loom)]
loom::thread_local! {
    // loom's `thread_local!` has no `const { }` form.
    static RUNNING_FRAMES: Cell<*const Frame> = Cell::new(ptr::null());
}

fn with_running_frame<R>(entry: NonNull<EntryHeader>, f: impl FnOnce() -> R) -> R {
    let frame = Frame {
        entry: entry.as_ptr(),
        prev: RUNNING_FRAMES.with(|c| c.get()),
    };
    RUNNING_FRAMES.with(|c| c.set(&frame));
    // `f` catches panics, so the frame is always popped.
    let result = f();
    RUNNING_FRAMES.with(|c| c.set(frame.prev));
    result
}

/// Whether this thread is currently running `entry` (possibly further up its stack).
fn running_here(entry: NonNull<EntryHeader>) -> bool {
    let mut frame = RUNNING_FRAMES.with(|c| c.get());
    while !frame.is_null() {
        // SAFETY: frames live on this thread's stack, below the current call.
        let f = unsafe { &*frame };
        if f.entry == entry.as_ptr().cast_const() {
            return true;
        }
        frame = f.prev;
    }
    false
}
