//! The cancel walk (invariant 5).

use crate::reason::{Reason, ReasonInner};
use crate::tree::entry::Pending;
use crate::tree::node::{Elem, Locked, Node};

impl Node {
    /// Cancels this node and every descendant with `reason`, then runs their callbacks.
    ///
    /// Returns `false` at once, without waiting, if the node is already cancelled (the first
    /// cancel wins, rule 1). When it returns `true`, every node it cancelled reports
    /// cancelled and every callback of those nodes has run (rule 2). A descendant that was
    /// cancelled concurrently by another ancestor's walk is skipped with its subtree; its
    /// callbacks run on that walk's thread.
    pub(crate) fn cancel(&self, reason: Reason) -> bool {
        let Some(mut root) = self.lock_unless_cancelled() else {
            return false;
        };
        let raw = reason.into_raw();
        // The root takes the reference `reason` carried.
        root.set_reason(raw);
        let mut pending = Pending::new();
        let first = root.first_child();
        if !first.is_none() {
            let mut refs = ReasonRefs { raw, reserved: 0 };
            walk(&root, first, &mut refs, &mut pending);
            if refs.reserved != 0 {
                // SAFETY: the root still holds its reference, so this cannot free the reason.
                unsafe { Reason::unreserve_raw(raw, refs.reserved) };
            }
        }
        // The root finishes last (post-order).
        // SAFETY: taken under the root's lock, which we hold.
        unsafe { pending.append_list(root.take_entries()) };
        drop(root);

        if !pending.is_empty() {
            // SAFETY: our node holds a reference to its reason for its whole life, and the
            // caller's handle keeps the node alive.
            let reason = unsafe { Reason::clone_from_raw(raw) };
            pending.run(&reason);
        }
        true
    }
}

/// Marks the subtree below the (locked, marked) root in pre-order, holding the locks of the
/// current path (invariant 5), and collects each marked node's entries into `pending` when
/// the node is finished (post-order).
///
/// Post-order makes "descendants before ancestors" hold for a DAG too: if a linked node was
/// reached (and finished) through one parent, every other parent finishes after it.
fn walk<'a>(_root: &Locked<'a>, first: Elem, refs: &mut ReasonRefs, pending: &mut Pending) {
    // The path below the root: each locked node with a cursor to its next unvisited child.
    // (It allocates under the root's lock, only for nodes with grandchildren; the only other
    // allocation of a walk is `pending`'s list of wakers.)
    let mut path: Vec<(Locked<'a>, Elem)> = Vec::new();
    let mut root_cursor = first;
    loop {
        let cursor = match path.last_mut() {
            Some((_, cursor)) => cursor,
            None => &mut root_cursor,
        };
        if cursor.is_none() {
            match path.pop() {
                // Finished a node: collect its entries, then unlock it.
                Some((guard, _)) => {
                    // SAFETY: taken under its lock, which we hold until `guard` drops.
                    unsafe { pending.append_list(guard.take_entries()) };
                    drop(guard);
                    continue;
                }
                // The root's children are done; the caller finishes the root.
                None => return,
            }
        }
        let elem = *cursor;
        // SAFETY: `elem` is listed in the child list of the node whose lock we hold (the
        // last of `path`, or the root), so it and its child are alive.
        let child: &'a Node = unsafe {
            *cursor = elem.next();
            &*elem.child()
        };
        // Parent before child (invariant 2). If it is cancelled already (a linked node
        // reached through another parent, or a node born cancelled), skip its subtree: it was
        // or is being handled by whoever cancelled it.
        let Some(mut guard) = child.lock_unless_cancelled() else {
            continue;
        };
        // Each node takes its own reference to the reason.
        guard.set_reason(refs.take());
        let grandchild = guard.first_child();
        if grandchild.is_none() {
            // A leaf is finished at once.
            // SAFETY: taken under the child's lock, which we hold.
            unsafe { pending.append_list(guard.take_entries()) };
            drop(guard);
        } else {
            path.push((guard, grandchild));
        }
    }
}

/// References to the fired reason, reserved a batch at a time: one atomic operation per 64
/// marked nodes instead of one per node. Unused ones are given back when the walk ends.
struct ReasonRefs {
    raw: *const ReasonInner,
    reserved: usize,
}

impl ReasonRefs {
    const BATCH: usize = 64;

    /// One reference for a newly marked node.
    fn take(&mut self) -> *const ReasonInner {
        if self.reserved == 0 {
            // SAFETY: the root holds a reference until it is freed, and it is alive (the
            // canceller's handle).
            unsafe { Reason::add_raw(self.raw, Self::BATCH) };
            self.reserved = Self::BATCH;
        }
        self.reserved -= 1;
        self.raw
    }
}
