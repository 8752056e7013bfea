//! Unit tests. They live inside the crate so they can see the tree's internals (child
//! lists, reference counts, live-node counts). Built with `--cfg loom`, only the loom
//! models are compiled: everything else would use loom primitives outside a model.

#[cfg(not(loom))]
mod support;

#[cfg(not(loom))]
mod callbacks;
#[cfg(not(loom))]
mod deadlines;
#[cfg(not(loom))]
mod futures;
#[cfg(not(loom))]
mod memory;
#[cfg(not(loom))]
mod model;
#[cfg(not(loom))]
mod operations;
#[cfg(not(loom))]
mod semantics;

#[cfg(loom)]
mod loom;
