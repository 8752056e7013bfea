//! The cancellation tree: the machinery behind the thin public handles.
//!
//! Every [`CancellationSource`](crate::CancellationSource) owns a [`Node`]; its tokens are
//! further handles to the same node. A child is linked into its parent's child list; a linked
//! source is linked into the lists of all its parents (so the "tree" is a DAG). Callbacks,
//! waiting futures and blocked threads are [entries](entry) in a node's entry list.
//!
//! # Invariants
//!
//! Code below cites these by number.
//!
//! 1. **State word.** `Node::state` holds the node's reason pointer, with the node's lock in
//!    bit 0 ([`node::LOCKED`]). The pointer part changes exactly once, from null to the reason,
//!    by the holder of the lock, with a `Release` store; it then stays until the node is freed.
//!    So `is_cancelled` is one `Acquire` load, and whoever sees the pointer may read the reason
//!    (the node owns one reference to it).
//! 2. **Lock order.** A thread that holds node locks acquires another only if that node is a
//!    descendant of every node it holds (parent before child). Parent links form a DAG, so no
//!    cycle of waits can form. The only other lock, a clock's timer queue, is acquired last
//!    (after node locks, never before one). No lock is held while user code runs: callbacks,
//!    wakers and the `Drop` of anything a user handed us run after every lock is released.
//! 3. **Reference count.** `Node::refs` counts sources and tokens, live registrations (one
//!    each), and one for the node's child list while it is non-empty: taken when the list
//!    goes from empty to non-empty, under the node's lock (whoever links a child holds a
//!    handle, so the count is not zero then); released by whoever empties it, after
//!    unlocking. So every parent of a live node is alive (the node is in its list). When the
//!    count drops to zero the node is reachable only through its parents' child lists (which
//!    the cancel walk reads under the parents' locks) and through a clock's timer queue
//!    (which holds nodes *weakly*: it takes a reference only if `refs` is non-zero). Such a
//!    node removes itself from both, under the respective locks, before it is freed.
//! 4. **Who guards what.** A node's membership in a parent's child list (its embedded
//!    `prev`/`next` for the primary parent, an [`ExtLink`](node::ExtLink) for each further
//!    parent) is guarded by *that parent's* lock. A node's `first_child`, `entries` and
//!    `extra` are guarded by its own lock. `parent` is immutable.
//! 5. **The walk.** `cancel` marks nodes in pre-order while holding the locks of the whole path
//!    from the node it cancels down to the current one. A node already marked is skipped with
//!    its subtree (someone else cancelled it). When the walk finishes a node (post-order), it
//!    moves the node's entries, still under that node's lock, to the end of one pending
//!    chain. Only after every lock is released does it run that chain: so every node's
//!    callbacks run after all its descendants' (in a DAG too: a linked node reached through
//!    one parent finishes before any other parent does), and newest first within a node.
//!    Waiting futures need no order: their wakers are taken out while their entries are
//!    collected and woken first, before the chain runs.
//! 6. **Entries.** An entry is owned jointly by its handle (`Registration`, a waiting future or
//!    thread) and, once collected, by the cancelling thread (a waiting future's entry is
//!    finished as it is collected); its state machine is described in
//!    [`entry`]. While an entry is in a node's list, its handle keeps the node alive.

pub(crate) mod alloc;
pub(crate) mod cancel;
pub(crate) mod deadline;
pub(crate) mod entry;
pub(crate) mod node;
pub(crate) mod timer;

#[cfg(test)]
pub(crate) mod debug;

pub(crate) use node::Node;
