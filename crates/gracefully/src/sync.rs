//! The one place that chooses the synchronisation primitives.
//!
//! Normal builds use `std`. Built with `RUSTFLAGS="--cfg loom"`, every atomic, cell,
//! thread-local and park/unpark the cancellation tree uses comes from [loom], which explores
//! the interleavings of `tests/loom.rs` exhaustively (bounded by `LOOM_MAX_PREEMPTIONS`).
//!
//! The timer thread (`tree/timer.rs`) deliberately uses `std` primitives in both builds: it
//! is not part of the loom models, which drive deadlines through the tree directly.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(loom))]
mod imp {
    pub(crate) use std::hint::spin_loop;
    pub(crate) use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering, fence};
    pub(crate) use std::thread::park_timeout;
    pub(crate) mod thread {
        pub(crate) use std::thread::{Thread, current, park, yield_now};
    }

    /// `std::cell::UnsafeCell` with loom's closure-based API, so the tree code is written
    /// once for both builds.
    #[derive(Debug)]
    #[repr(transparent)]
    pub(crate) struct UnsafeCell<T: ?Sized>(std::cell::UnsafeCell<T>);

    impl<T> UnsafeCell<T> {
        #[inline(always)]
        pub(crate) const fn new(value: T) -> Self {
            Self(std::cell::UnsafeCell::new(value))
        }
    }

    impl<T: ?Sized> UnsafeCell<T> {
        /// Shared access; the caller upholds the aliasing rules documented at the field.
        #[inline(always)]
        pub(crate) fn with<R>(&self, f: impl FnOnce(*const T) -> R) -> R {
            f(self.0.get())
        }

        /// Exclusive access; the caller upholds the aliasing rules documented at the field.
        #[inline(always)]
        pub(crate) fn with_mut<R>(&self, f: impl FnOnce(*mut T) -> R) -> R {
            f(self.0.get())
        }
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::cell::UnsafeCell;
    pub(crate) use loom::hint::spin_loop;
    pub(crate) use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering, fence};
    pub(crate) mod thread {
        pub(crate) use loom::thread::{Thread, current, park, yield_now};
    }

    /// loom has no timed park and no time; the loom models never wait with a timeout.
    pub(crate) fn park_timeout(_: std::time::Duration) {
        loom::thread::yield_now();
    }
}

pub(crate) use imp::*;
