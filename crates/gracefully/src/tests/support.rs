//! Test utilities: a per-thread counting allocator, a counting waker, a minimal executor.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};

/// Counts bytes and allocations made *by the current thread* (tests run in parallel, so a
/// global count would include other tests' work).
pub(crate) struct CountingAllocator;

std::thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
    static FREED: Cell<usize> = const { Cell::new(0) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to `System`; the counters are thread-local `Cell`s with const
// initialisers (no allocation, no re-entrancy).
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size()));
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let _ = FREED.try_with(|f| f.set(f.get() + layout.size()));
        // SAFETY: forwarded.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size));
        let _ = FREED.try_with(|f| f.set(f.get() + layout.size()));
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
        // SAFETY: forwarded.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// A snapshot of this thread's allocation counters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Heap {
    pub(crate) allocated: usize,
    pub(crate) freed: usize,
    pub(crate) allocations: usize,
}

impl Heap {
    /// A snapshot taken after this thread's block cache is emptied, so that it counts only
    /// memory really held.
    pub(crate) fn settled() -> Heap {
        crate::tree::alloc::flush_thread_cache();
        Heap::now()
    }

    pub(crate) fn now() -> Heap {
        Heap {
            allocated: ALLOCATED.with(|a| a.get()),
            freed: FREED.with(|f| f.get()),
            allocations: ALLOCATIONS.with(|a| a.get()),
        }
    }

    /// Bytes held now (with this thread's block cache emptied) minus bytes held at `self`.
    pub(crate) fn live_bytes_since(self) -> isize {
        crate::tree::alloc::flush_thread_cache();
        let now = Heap::now();
        (now.allocated - self.allocated) as isize - (now.freed - self.freed) as isize
    }

    pub(crate) fn allocations_since(self) -> usize {
        Heap::now().allocations - self.allocations
    }
}

/// A waker that counts its wakes.
#[derive(Default)]
pub(crate) struct CountingWaker {
    pub(crate) wakes: AtomicUsize,
}

impl Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
    }
}

impl CountingWaker {
    pub(crate) fn new() -> (Arc<CountingWaker>, Waker) {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        (counter, waker)
    }

    pub(crate) fn count(&self) -> usize {
        self.wakes.load(Ordering::SeqCst)
    }
}

/// Polls a future once with `waker`.
pub(crate) fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
    std::pin::Pin::new(future).poll(&mut Context::from_waker(waker))
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Runs a future to completion on this thread (no runtime: proves the futures need none).
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        std::thread::park();
    }
}
