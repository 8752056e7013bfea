//! Per-thread caches of 64- and 128-byte blocks for nodes, entries and deadlines.
//!
//! Why not just `Box`: a tree node is exactly 64 bytes, and most entries (a waker, a
//! thread, a callback capturing up to three words) fit in 64 bytes too; a node's `Extra`
//! (a deadline, its timer, a chosen clock) fits in 128. Creating a child or registering a
//! callback is otherwise a handful of atomic operations around one `malloc`/`free` pair, and
//! that pair is the larger part of the cost (measured 16–22 ns with glibc on the benchmark
//! machine, against ~3 ns per atomic read-modify-write). A thread-local free list turns it
//! into two thread-local pointer swaps. (A general-purpose allocator crate would replace the
//! whole process's allocator, which is the application's choice, not a library's.)
//!
//! * Blocks come from, and finally go back to, the global allocator (`Layout` 64 × 8 or
//!   128 × 8), so a user's allocator still sees every byte we hold.
//! * Each thread keeps at most [`MAX_CACHED`] blocks of each size (4 KiB and 8 KiB); more
//!   are freed at once. The caches are freed when their thread exits. A block freed on
//!   another thread than the one that allocated it simply joins that thread's cache.
//! * During thread teardown (after the cache is gone) we fall back to the global allocator.
//! * loom builds use the global allocator directly (the cache is not what they model).

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
#[cfg(not(loom))]
use std::cell::Cell;
use std::ptr::NonNull;

/// The size and alignment of a small cached block.
pub(crate) const BLOCK: Layout = match Layout::from_size_align(64, 8) {
    Ok(layout) => layout,
    Err(_) => panic!("64 × 8 is a valid layout"),
};

/// The size and alignment of a large cached block.
pub(crate) const LARGE_BLOCK: Layout = match Layout::from_size_align(128, 8) {
    Ok(layout) => layout,
    Err(_) => panic!("128 × 8 is a valid layout"),
};

/// At most this many free blocks are kept per thread and size.
#[cfg(not(loom))]
const MAX_CACHED: usize = 64;

/// Which cached block, if any, holds a `T`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    Small,
    Large,
    None,
}

const fn class_of<T>() -> Class {
    let (size, align) = (size_of::<T>(), align_of::<T>());
    if size == 0 || align > BLOCK.align() {
        Class::None
    } else if size <= BLOCK.size() {
        Class::Small
    } else if size <= LARGE_BLOCK.size() {
        Class::Large
    } else {
        Class::None
    }
}

#[cfg(not(loom))]
struct Cache {
    /// Singly linked through the first word of each free block.
    head: Cell<*mut u8>,
    len: Cell<usize>,
    layout: Layout,
}

#[cfg(not(loom))]
impl Cache {
    const fn new(layout: Layout) -> Cache {
        Cache {
            head: Cell::new(std::ptr::null_mut()),
            len: Cell::new(0),
            layout,
        }
    }

    /// Frees every block in the cache.
    fn flush(&self) {
        let mut block = self.head.replace(std::ptr::null_mut());
        self.len.set(0);
        while !block.is_null() {
            // SAFETY: every block in the list is a free allocation of `layout` whose first
            // word links to the next one.
            unsafe {
                let next = block.cast::<*mut u8>().read();
                dealloc(block, self.layout);
                block = next;
            }
        }
    }
}

#[cfg(not(loom))]
impl Drop for Cache {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CACHE: Cache = const { Cache::new(BLOCK) };
    static LARGE_CACHE: Cache = const { Cache::new(LARGE_BLOCK) };
}

/// A block of `layout` (one of the two cached ones), from this thread's cache of that size
/// or the global allocator.
#[inline]
fn alloc_block(large: bool) -> NonNull<u8> {
    let layout = if large { LARGE_BLOCK } else { BLOCK };
    #[cfg(not(loom))]
    {
        let take = |cache: &Cache| {
            let block = cache.head.get();
            if !block.is_null() {
                // SAFETY: a free block's first word links to the next free block.
                cache.head.set(unsafe { block.cast::<*mut u8>().read() });
                cache.len.set(cache.len.get() - 1);
            }
            block
        };
        let cached = if large {
            LARGE_CACHE.try_with(take)
        } else {
            CACHE.try_with(take)
        }
        .unwrap_or(std::ptr::null_mut());
        if let Some(block) = NonNull::new(cached) {
            return block;
        }
    }
    // SAFETY: both layouts have a non-zero size.
    let block = unsafe { alloc(layout) };
    match NonNull::new(block) {
        Some(block) => block,
        None => handle_alloc_error(layout),
    }
}

/// Returns a block to this thread's cache of its size, or to the global allocator if that
/// cache is full (or gone).
///
/// # Safety
///
/// `block` came from [`alloc_block`] with the same `large`, is not used afterwards, and
/// holds no value that still needs dropping.
#[inline]
unsafe fn free_block(block: NonNull<u8>, large: bool) {
    #[cfg(not(loom))]
    {
        let keep = |cache: &Cache| {
            if cache.len.get() >= MAX_CACHED {
                return false;
            }
            // SAFETY: the block is ours and at least one word large and aligned.
            unsafe { block.as_ptr().cast::<*mut u8>().write(cache.head.get()) };
            cache.head.set(block.as_ptr());
            cache.len.set(cache.len.get() + 1);
            true
        };
        let kept = if large {
            LARGE_CACHE.try_with(keep)
        } else {
            CACHE.try_with(keep)
        }
        .unwrap_or(false);
        if kept {
            return;
        }
    }
    let layout = if large { LARGE_BLOCK } else { BLOCK };
    // SAFETY: allocated with `layout` by the global allocator (caller).
    unsafe { dealloc(block.as_ptr(), layout) }
}

/// Moves `value` to the heap: a cached block if it fits one, else a `Box`.
#[inline]
pub(crate) fn new<T>(value: T) -> NonNull<T> {
    let class = class_of::<T>();
    if class == Class::None {
        return NonNull::from(Box::leak(Box::new(value)));
    }
    let block = alloc_block(class == Class::Large).cast::<T>();
    // SAFETY: the block is large and aligned enough for T (`class_of`) and unused.
    unsafe { block.as_ptr().write(value) };
    block
}

/// Drops the value at `ptr` and frees its memory.
///
/// # Safety
///
/// `ptr` came from [`new::<T>`](new) and is not used afterwards.
#[inline]
pub(crate) unsafe fn delete<T>(ptr: NonNull<T>) {
    let class = class_of::<T>();
    if class == Class::None {
        // SAFETY: caller: made by `Box::new` in `new`.
        drop(unsafe { Box::from_raw(ptr.as_ptr()) });
        return;
    }
    // SAFETY: caller: a live T in a block of ours; dropped, then the block is free.
    unsafe {
        std::ptr::drop_in_place(ptr.as_ptr());
        free_block(ptr.cast(), class == Class::Large);
    }
}

/// Frees every block cached by this thread (tests only: so heap counts show what is really
/// held).
#[cfg(all(test, not(loom)))]
pub(crate) fn flush_thread_cache() {
    let _ = CACHE.try_with(Cache::flush);
    let _ = LARGE_CACHE.try_with(Cache::flush);
}
