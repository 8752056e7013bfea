//! Test-only instrumentation: a per-thread count of live nodes, so tests can check that
//! nodes are freed exactly when nothing observes them (rule 6).

use std::cell::Cell;

std::thread_local! {
    static LIVE_NODES: Cell<isize> = const { Cell::new(0) };
}

pub(crate) fn node_allocated() {
    LIVE_NODES.with(|n| n.set(n.get() + 1));
}

pub(crate) fn node_freed() {
    LIVE_NODES.with(|n| n.set(n.get() - 1));
}

/// Nodes allocated minus nodes freed on this thread.
pub(crate) fn live_nodes() -> isize {
    LIVE_NODES.with(|n| n.get())
}
