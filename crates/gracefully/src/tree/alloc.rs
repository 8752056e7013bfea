//! A per-thread cache of 64-byte blocks for nodes and entries.
//!
//! Why not just `Box`: a tree node is exactly 64 bytes, and most entries (a waker, a
//! thread, a callback capturing up to three words) fit in 64 bytes too. Creating a child or
//! registering a callback is otherwise a handful of atomic operations around one
//! `malloc`/`free` pair, and that pair is the larger part of the cost (measured 16–22 ns
//! with glibc on the benchmark machine, against ~3 ns per atomic read-modify-write). A
//! thread-local free list turns it into two thread-local pointer swaps.
//!
//! * Blocks come from, and finally go back to, the global allocator (`Layout` 64 × 8), so
//!   a user's allocator still sees every byte we hold.
//! * Each thread keeps at most [`MAX_CACHED`] blocks (4 KiB); more are freed at once. The
//!   cache is freed when its thread exits. A block freed on another thread than the one
//!   that allocated it simply joins that thread's cache.
//! * During thread teardown (after the cache is gone) we fall back to the global allocator.
//! * loom builds use the global allocator directly (the cache is not what they model).

use std::alloc::{Layout, alloc, dealloc, handle_alloc_error};
#[cfg(not(loom))]
use std::cell::Cell;
use std::ptr::NonNull;

/// The size and alignment of a cached block.
pub(crate) const BLOCK: Layout = match Layout::from_size_align(64, 8) {
    Ok(layout) => layout,
    Err(_) => panic!("64 × 8 is a valid layout"),
};

/// At most this many free blocks are kept per thread.
#[cfg(not(loom))]
const MAX_CACHED: usize = 64;

/// Whether values of type `T` are allocated as cached blocks.
pub(crate) const fn fits<T>() -> bool {
    size_of::<T>() <= BLOCK.size() && align_of::<T>() <= BLOCK.align() && size_of::<T>() > 0
}

#[cfg(not(loom))]
struct Cache {
    /// Singly linked through the first word of each free block.
    head: Cell<*mut u8>,
    len: Cell<usize>,
}

#[cfg(not(loom))]
impl Drop for Cache {
    fn drop(&mut self) {
        let mut block = self.head.get();
        while !block.is_null() {
            // SAFETY: every block in the list is a free BLOCK allocation whose first word
            // links to the next one.
            unsafe {
                let next = block.cast::<*mut u8>().read();
                dealloc(block, BLOCK);
                block = next;
            }
        }
    }
}

#[cfg(not(loom))]
std::thread_local! {
    static CACHE: Cache = const {
        Cache {
            head: Cell::new(std::ptr::null_mut()),
            len: Cell::new(0),
        }
    };
}

/// A block of [`BLOCK`] layout, from this thread's cache or the global allocator.
#[inline]
pub(crate) fn alloc_block() -> NonNull<u8> {
    #[cfg(not(loom))]
    {
        let cached = CACHE
            .try_with(|cache| {
                let block = cache.head.get();
                if !block.is_null() {
                    // SAFETY: a free block's first word links to the next free block.
                    cache.head.set(unsafe { block.cast::<*mut u8>().read() });
                    cache.len.set(cache.len.get() - 1);
                }
                block
            })
            .unwrap_or(std::ptr::null_mut());
        if let Some(block) = NonNull::new(cached) {
            return block;
        }
    }
    // SAFETY: BLOCK has a non-zero size.
    let block = unsafe { alloc(BLOCK) };
    match NonNull::new(block) {
        Some(block) => block,
        None => handle_alloc_error(BLOCK),
    }
}

/// Returns a block to this thread's cache, or to the global allocator if the cache is full
/// (or gone).
///
/// # Safety
///
/// `block` came from [`alloc_block`], is not used afterwards, and holds no value that still
/// needs dropping.
#[inline]
pub(crate) unsafe fn free_block(block: NonNull<u8>) {
    #[cfg(not(loom))]
    {
        let kept = CACHE
            .try_with(|cache| {
                if cache.len.get() >= MAX_CACHED {
                    return false;
                }
                // SAFETY: the block is ours and at least one word large and aligned.
                unsafe { block.as_ptr().cast::<*mut u8>().write(cache.head.get()) };
                cache.head.set(block.as_ptr());
                cache.len.set(cache.len.get() + 1);
                true
            })
            .unwrap_or(false);
        if kept {
            return;
        }
    }
    // SAFETY: allocated with BLOCK by the global allocator (caller).
    unsafe { dealloc(block.as_ptr(), BLOCK) }
}

/// Moves `value` to the heap: a cached block if it fits, else a `Box`.
#[inline]
pub(crate) fn new<T>(value: T) -> NonNull<T> {
    if fits::<T>() {
        let block = alloc_block().cast::<T>();
        // SAFETY: the block is large and aligned enough for T (`fits`) and unused.
        unsafe { block.as_ptr().write(value) };
        block
    } else {
        NonNull::from(Box::leak(Box::new(value)))
    }
}

/// Drops the value at `ptr` and frees its memory.
///
/// # Safety
///
/// `ptr` came from [`new::<T>`](new) and is not used afterwards.
#[inline]
pub(crate) unsafe fn delete<T>(ptr: NonNull<T>) {
    if fits::<T>() {
        // SAFETY: caller: a live T in a block of ours; dropped, then the block is free.
        unsafe {
            std::ptr::drop_in_place(ptr.as_ptr());
            free_block(ptr.cast());
        }
    } else {
        // SAFETY: caller: made by `Box::new` in `new`.
        drop(unsafe { Box::from_raw(ptr.as_ptr()) });
    }
}

/// Frees every block cached by this thread (tests only: so heap counts show what is really
/// held).
#[cfg(all(test, not(loom)))]
pub(crate) fn flush_thread_cache() {
    let _ = CACHE.try_with(|cache| {
        let mut block = cache.head.replace(std::ptr::null_mut());
        cache.len.set(0);
        while !block.is_null() {
            // SAFETY: as in `Cache::drop`.
            unsafe {
                let next = block.cast::<*mut u8>().read();
                dealloc(block, BLOCK);
                block = next;
            }
        }
    });
}
