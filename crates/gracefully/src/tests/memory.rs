//! Rule 6 and the allocation promises: nothing leaks without ceremony; `never()` allocates
//! nothing; a node is 64 bytes.

use crate::tests::support::Heap;
use crate::tree::debug::live_nodes;
use crate::{CancellationSource, CancellationToken, ManualClock};

/// Fewer iterations under Miri, which runs ~1000× slower.
const MILLION: usize = if cfg!(miri) { 1_000 } else { 1_000_000 };

#[test]
fn never_allocates_nothing() {
    let before = Heap::settled();
    let never = CancellationToken::never();
    let clone = never.clone();
    assert!(!clone.is_cancelled());
    assert!(never.check().is_ok());
    let _default = CancellationToken::default();
    assert_eq!(before.allocations_since(), 0);
}

#[test]
fn creating_and_dropping_a_million_children_leaves_the_parent_with_no_children_and_memory_where_it_was()
 {
    let parent = CancellationSource::new();
    let token = parent.token();
    // Warm up once (lazy thread-locals, allocator caches).
    drop(token.child());
    let heap = Heap::settled();
    let nodes = live_nodes();
    for _ in 0..MILLION {
        let child = token.child();
        let child_token = child.token();
        drop(child);
        drop(child_token);
    }
    assert_eq!(token.node().unwrap().child_count(), 0);
    assert_eq!(heap.live_bytes_since(), 0, "memory where it was");
    assert_eq!(live_nodes(), nodes);
    assert_eq!(
        token.node().unwrap().ref_count(),
        2,
        "the source and this token"
    );
}

#[test]
fn children_that_are_never_cancelled_nor_dropped_explicitly_do_not_accumulate() {
    // The .NET/Go leak: linked sources and WithCancel children that are not disposed.
    let a = CancellationSource::new();
    let b = CancellationSource::new();
    let heap = Heap::settled();
    for _ in 0..MILLION / 10 {
        let linked = CancellationSource::linked([a.token(), b.token()]);
        let _ = linked.token().child().token().is_cancelled();
    }
    assert_eq!(a.token().node().unwrap().child_count(), 0);
    assert_eq!(b.token().node().unwrap().child_count(), 0);
    assert_eq!(heap.live_bytes_since(), 0);
}

#[test]
fn registrations_and_waiters_leave_no_trace_once_dropped() {
    let source = CancellationSource::new();
    let token = source.token();
    let heap = Heap::settled();
    for _ in 0..MILLION / 10 {
        let registration = token.on_cancel(|_| {});
        drop(registration);
        let _ = token.wait_timeout(std::time::Duration::ZERO);
    }
    assert_eq!(token.node().unwrap().entry_count(), 0);
    assert_eq!(heap.live_bytes_since(), 0);
}

#[test]
fn a_middle_node_lives_while_its_children_do_and_goes_with_the_last_of_them() {
    let root = CancellationSource::new();
    let nodes = live_nodes();
    let middle = root.token().child();
    let leaf = middle.token().child();
    drop(middle);
    assert_eq!(live_nodes(), nodes + 2, "the leaf keeps its parent");
    assert_eq!(root.token().node().unwrap().child_count(), 1);
    // Still a working relay:
    root.cancel();
    assert!(leaf.is_cancelled());
    drop(leaf);
    assert_eq!(live_nodes(), nodes);
    assert_eq!(root.token().node().unwrap().child_count(), 0);
}

#[test]
fn a_long_chain_is_freed_without_recursion() {
    let nodes = live_nodes();
    let mut token = CancellationSource::new().token();
    for _ in 0..if cfg!(miri) { 1_000 } else { 200_000 } {
        token = token.child().token();
    }
    // Dropping the leaf frees the whole chain, iteratively (no stack overflow).
    drop(token);
    assert_eq!(live_nodes(), nodes);
}

#[test]
fn a_long_chain_is_cancelled_without_recursion() {
    let root = CancellationSource::new();
    let mut token = root.token();
    for _ in 0..if cfg!(miri) { 1_000 } else { 200_000 } {
        token = token.child().token();
    }
    root.cancel();
    assert!(token.is_cancelled());
}

#[test]
fn cancelled_nodes_are_freed_like_any_other() {
    let nodes = live_nodes();
    {
        let root = CancellationSource::new();
        let children: Vec<_> = (0..100).map(|_| root.token().child()).collect();
        let _regs: Vec<_> = children
            .iter()
            .map(|c| c.token().on_cancel(|_| {}))
            .collect();
        root.cancel();
    }
    assert_eq!(live_nodes(), nodes);
}

#[test]
fn timeout_nodes_free_their_deadline_state() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    // Warm up: the queue keeps its (empty) root node once it has held an entry.
    drop(
        root.token()
            .child_with_timeout(std::time::Duration::from_secs(1)),
    );
    let heap = Heap::settled();
    for _ in 0..MILLION / 100 {
        drop(
            root.token()
                .child_with_timeout(std::time::Duration::from_secs(1)),
        );
    }
    assert_eq!(clock.armed(), 0);
    assert_eq!(heap.live_bytes_since(), 0);
}

#[test]
fn a_node_is_one_64_byte_allocation() {
    // On a fresh thread, so the block cache cannot serve it.
    std::thread::spawn(|| {
        let parent = CancellationSource::new();
        let token = parent.token();
        let heap = Heap::now();
        let child = token.child();
        assert_eq!(Heap::now().allocated - heap.allocated, 64);
        assert_eq!(heap.allocations_since(), 1);
        drop(child);
    })
    .join()
    .unwrap();
}

#[test]
fn the_block_cache_is_bounded_and_returns_everything() {
    let source = CancellationSource::new();
    let heap = Heap::settled();
    let children: Vec<_> = (0..1000).map(|_| source.token().child()).collect();
    drop(children);
    // At most 64 blocks stay cached on this thread; the rest went back at once.
    let cached = Heap::now().allocated as isize
        - Heap::now().freed as isize
        - (heap.allocated as isize - heap.freed as isize);
    assert!(cached <= 64 * 64, "{cached} bytes cached");
    assert_eq!(heap.live_bytes_since(), 0);
}
