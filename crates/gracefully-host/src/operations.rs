//! [`Operations`]: the host's registry of operations — what runs now, and why recent work
//! stopped — with a Prometheus-style count and a tracing span per operation.
//!
//! Invariants:
//!
//! 1. An operation is in exactly one shard's slab of slots (marked `live`) from `begin` to
//!    `end`; its id names the shard, the slot and the slot's generation, so an id that
//!    outlived its operation (a stale `rename`) never touches the slot's next occupant.
//! 2. `end` marks the operation's slot finished and pushes the slot's index onto the same
//!    shard's `finished` ring under that one lock (the record stays where it is, written
//!    once), so a snapshot (which takes the shards' locks one at a time, never two at once)
//!    sees each operation exactly once: live or finished.
//! 3. Each shard's `finished` ring holds at most `keep_finished` slot indices; once it is
//!    full, a new one takes the oldest one's place and the oldest slot goes back to the free
//!    list (what it holds — a reason, a message, a long name — is dropped then, outside
//!    the lock; with `keep_finished` 0 an outcome is never kept).
//!    The newest `keep_finished` of the whole registry are among the shards' rings, which a
//!    snapshot merges: memory is bounded by `keep_finished` records per shard (shards:
//!    twice the CPUs rounded up to a power of two, at most 64) plus the slots, as many as
//!    operations ever ran at once in the shard.
//! 4. Each shard counts cancellations under at most [`CANCELLATION_SERIES`] distinct
//!    (kind, name, reason) keys; a cancellation that would add one more is counted under
//!    the name [`OTHER_NAME`]. Names come from outside (an unmatched request's path, an
//!    unknown gRPC method), so without the bound a client cancelling requests to made-up
//!    paths would grow the map, and the `/metrics` page, without end.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;

use gracefully::operation::{
    OperationId, OperationKind, OperationOutcome, OperationRecorder, OperationScope, OperationStart,
};
use gracefully::{Reason, ReasonKind};

use crate::outcome::Outcome;

/// How many finished operations [`Operations::new`] keeps.
pub const DEFAULT_KEEP_FINISHED: usize = 200;

/// Slots per shard are numbered in 26 bits; the shard in 6; the generation in the high 32.
const SHARD_BITS: u32 = 6;
const SLOT_BITS: u32 = 26;
const MAX_SHARDS: usize = 1 << SHARD_BITS;

/// The host's registry of operations: every HTTP request, query, outbound call, message,
/// job, service and tracked task registers while it runs (through
/// [`gracefully::operation`]), and the last finished ones are kept with how they ended and
/// the reason (with its origin) if they were cancelled. Cheap to clone (one reference
/// count; operations themselves hold a plain reference: see [`keeping`](Self::keeping)).
///
/// Opt-in: install it with [`HostBuilder::operations`](crate::HostBuilder::operations); the
/// host's services and tracked tasks then register, and so does everything that begins
/// while they run (`gracefully-axum`'s requests, `gracefully-sqlx`'s queries,
/// `gracefully-reqwest`'s calls), each under the operation it runs in. `gracefully-axum`
/// serves it as a live page and JSON.
///
/// Each operation also
///
/// * is counted for the `metrics` facade, published by [`export_metrics`](Self::export_metrics)
///   (which `gracefully-axum`'s `/metrics` route calls):
///   `gracefully_operations_started_total{kind}`,
///   `gracefully_operations_ended_total{kind, outcome}`, and
///   `gracefully_cancellations_total{kind, name, reason}` (`name`: the route, for requests;
///   bounded: past [`CANCELLATION_SERIES`] distinct series per shard, further names are
///   counted as [`OTHER_NAME`], so made-up paths cannot grow it without end);
/// * is a `tracing` span named `operation` at `DEBUG` (`kind`, `name`, `id`, `parent`),
///   which records `outcome`, `reason` and `origin` when it ends. The end is logged in that
///   span: a cancellation at `DEBUG` with its reason, never as an error; a genuine failure
///   at `ERROR`.
///
/// ```
/// use gracefully::operation::{Operation, OperationKind};
/// use gracefully_host::Operations;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let operations = Operations::new();
/// let request = operations.scope().begin(OperationKind::Request, "GET /orders", None);
/// request.scoped(async {
///     Operation::begin(OperationKind::Query, "orders.list", None).complete();
/// }).await;
///
/// let now = operations.snapshot();
/// assert_eq!(now.live.len(), 1);                         // the request still runs
/// assert_eq!(now.finished[0].operation.parent, request.id()); // the query ran under it
/// request.cancelled(gracefully::Reason::disconnected());
/// assert_eq!(operations.snapshot().finished[0].outcome.as_str(), "cancelled");
/// # }
/// ```
///
/// *Anchors:* .NET's `Activity` listeners and ASP.NET Core's request metrics; Go's
/// `x/net/trace` live request pages (`/debug/requests`), which show what runs but never why
/// it stopped. tokio-console shows tasks, not operations or reasons.
#[derive(Clone)]
pub struct Operations {
    /// Leaked: see [`Operations::keeping`].
    registry: &'static Registry,
    /// Shared by the clones; the last one's drop releases what the registry holds.
    _owner: Arc<Owner>,
}

/// Releases the registry's records when the last [`Operations`] handle goes (its shell
/// stays: operations still running may end into it, and find nothing).
struct Owner(&'static Registry);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// One operation, as a [snapshot](Operations::snapshot) shows it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OperationRecord {
    /// Its id (unique within the registry).
    pub id: OperationId,
    /// The operation it ran under, if any (which may have ended already).
    pub parent: Option<OperationId>,
    /// What kind of work.
    pub kind: OperationKind,
    /// The route, query label, job type or task name.
    pub name: String,
    /// When it began.
    pub started: Instant,
    /// When its token fires at the latest, if it has a deadline.
    pub deadline: Option<Instant>,
}

/// A finished operation, as a [snapshot](Operations::snapshot) shows it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FinishedOperation {
    /// The operation.
    pub operation: OperationRecord,
    /// When it ended.
    pub ended: Instant,
    /// How: completed, cancelled (with the reason and its origin), failed, abandoned.
    pub outcome: OperationOutcome,
}

impl FinishedOperation {
    /// The reason it was cancelled, if it was.
    pub fn reason(&self) -> Option<&Reason> {
        match &self.outcome {
            OperationOutcome::Cancelled(reason) => Some(reason),
            _ => None,
        }
    }
}

/// What the registry holds at one instant: see [`Operations::snapshot`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct OperationsSnapshot {
    /// When it was taken.
    pub at: Instant,
    /// The operations running now, oldest first.
    pub live: Vec<OperationRecord>,
    /// The last finished ones, newest first (at most the registry's `keep_finished`).
    pub finished: Vec<FinishedOperation>,
    /// Operations begun since the registry was made.
    pub started_total: u64,
}

struct Registry {
    /// Padded so that two threads working in neighbouring shards never share a cache line.
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    keep_finished: usize,
    /// Operations are timed with the CPU's time-stamp counter (quanta): a reading costs
    /// about 12 ns on the 2-vCPU VM where `Instant::now()` costs 30
    /// (`benches/operations.rs` prints both), and an operation reads it twice. Readings
    /// become `Instant`s only when a snapshot is taken ([`Epoch`]). Where the counter is
    /// not usable, quanta falls back to the OS clock.
    clock: quanta::Clock,
}

struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The slots of the last `keep_finished` operations that ended in this shard
    /// (invariant 3): a ring, `next_finished` the oldest once it is full.
    finished: Vec<u32>,
    next_finished: usize,
    /// Counts for the metrics, kept here under the lock `end` takes anyway (published by
    /// [`Operations::export_metrics`]; operations begun are those ended plus those live):
    /// operations ended, by kind and outcome (indexed by [`outcome_index`]) …
    ended: Counts<[u64; OUTCOMES.len()]>,
    /// … and cancelled, by kind, reason kind and name (`series` of them in all: invariant 4).
    cancellations: HashMap<(OperationKind, ReasonKind), HashMap<Arc<str>, u64>>,
    series: usize,
    /// The generation a new slot starts from: at or above every generation this shard
    /// gave out (so invariant 1 holds across [`Shard::forget_finished`]).
    generation_floor: u32,
}

impl Shard {
    fn new() -> Shard {
        Shard {
            slots: Vec::new(),
            free: Vec::new(),
            finished: Vec::new(),
            next_finished: 0,
            ended: Counts::default(),
            cancellations: HashMap::new(),
            series: 0,
            generation_floor: 0,
        }
    }

    /// Frees the slots of the finished operations and empties the freed slots; what was in
    /// them is returned, to be dropped outside the lock. With nothing live, the slab itself
    /// goes (the counts stay).
    fn forget_finished(&mut self) -> Vec<Slot> {
        self.finished.clear();
        self.next_finished = 0;
        if self.slots.iter().all(|slot| !slot.live) {
            self.generation_floor = self
                .slots
                .iter()
                .map(|slot| slot.generation)
                .fold(self.generation_floor, u32::max);
            self.free = Vec::new();
            return std::mem::take(&mut self.slots);
        }
        self.free.clear();
        let mut emptied = Vec::new();
        for (index, slot) in self.slots.iter_mut().enumerate() {
            if !slot.live {
                self.free.push(index as u32);
                emptied.push(std::mem::replace(slot, Slot::vacant(slot.generation)));
            }
        }
        emptied
    }
}

/// Counts a cancellation in `cancellations` (`series` of them in all: invariant 4).
#[cold]
#[inline(never)]
fn count_cancellation(
    cancellations: &mut HashMap<(OperationKind, ReasonKind), HashMap<Arc<str>, u64>>,
    series: &mut usize,
    kind: OperationKind,
    name: &str,
    reason: ReasonKind,
) {
    let by_name = cancellations.entry((kind, reason)).or_default();
    if let Some(n) = by_name.get_mut(name) {
        *n += 1;
        return;
    }
    let name = if *series < CANCELLATION_SERIES {
        name
    } else if let Some(n) = by_name.get_mut(OTHER_NAME) {
        *n += 1;
        return;
    } else {
        // One more series would be unbounded growth: count it as other.
        OTHER_NAME
    };
    by_name.insert(Arc::from(name), 1);
    *series += 1;
}

/// Counts by operation kind: the built-in kinds in an array (no search on the hot path),
/// custom ones in a short list.
struct Counts<T> {
    builtin: [T; BUILTIN_KINDS.len()],
    custom: Vec<(OperationKind, T)>,
}

/// The kinds with a slot of their own in [`Counts`], in [`builtin_index`] order.
const BUILTIN_KINDS: [OperationKind; 9] = [
    OperationKind::Request,
    OperationKind::Rpc,
    OperationKind::Query,
    OperationKind::Transaction,
    OperationKind::Outbound,
    OperationKind::Job,
    OperationKind::Message,
    OperationKind::Service,
    OperationKind::Task,
];

fn builtin_index(kind: OperationKind) -> Option<usize> {
    Some(match kind {
        OperationKind::Request => 0,
        OperationKind::Rpc => 1,
        OperationKind::Query => 2,
        OperationKind::Transaction => 3,
        OperationKind::Outbound => 4,
        OperationKind::Job => 5,
        OperationKind::Message => 6,
        OperationKind::Service => 7,
        OperationKind::Task => 8,
        _ => return None,
    })
}

impl<T: Copy + Default> Default for Counts<T> {
    fn default() -> Self {
        Counts {
            builtin: [T::default(); BUILTIN_KINDS.len()],
            custom: Vec::new(),
        }
    }
}

impl<T: Copy + Default> Counts<T> {
    fn get_mut(&mut self, kind: OperationKind) -> &mut T {
        match builtin_index(kind) {
            Some(i) => &mut self.builtin[i],
            None => count_of(&mut self.custom, kind, T::default()),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (OperationKind, &T)> {
        BUILTIN_KINDS
            .iter()
            .copied()
            .zip(&self.builtin)
            .chain(self.custom.iter().map(|(kind, n)| (*kind, n)))
    }
}

/// How many distinct (kind, name, reason) cancellation counts each shard keeps
/// (invariant 4): far more than an application's routes × reasons, few enough that the
/// whole registry's `/metrics` page stays small (at most 64 shards × this many series).
pub const CANCELLATION_SERIES: usize = 256;

/// The name cancellations are counted under once a shard has [`CANCELLATION_SERIES`]
/// distinct keys (invariant 4).
pub const OTHER_NAME: &str = "(other)";

/// The outcomes counted, in [`outcome_index`] order.
const OUTCOMES: [&str; 4] = ["completed", "cancelled", "failed", "abandoned"];

fn outcome_index(outcome: &OperationOutcome) -> usize {
    match outcome {
        OperationOutcome::Completed => 0,
        OperationOutcome::Cancelled(_) => 1,
        OperationOutcome::Failed(_) => 2,
        _ => 3,
    }
}

/// A place for one operation, live or among the last finished. Written in place, field by
/// field: an operation's record is never copied or moved on its way from live to
/// finished (building the ~130-byte record elsewhere and moving it in cost more than the
/// rest of `begin`: the copies stall on store forwarding; `benches/operations.rs`).
impl Slot {
    fn vacant(generation: u32) -> Slot {
        Slot {
            generation,
            live: false,
            record: Record::vacant(),
            span: None,
            ended: 0,
            outcome: OperationOutcome::Abandoned,
        }
    }
}

struct Slot {
    /// Bumped each time the slot is taken: part of the id (invariant 1).
    generation: u32,
    /// Whether it holds a live operation. (A finished one's slot is found through the
    /// ring; a freed one's through the free list.)
    live: bool,
    record: Record,
    /// `None` when nothing listens (dropping even a disabled `Span` costs some 60
    /// instructions).
    span: Option<tracing::Span>,
    /// When it ended (a raw clock reading), if it did.
    ended: u64,
    /// How it ended, if it did.
    outcome: OperationOutcome,
}

/// Names up to this many bytes are kept inline (most routes, query labels and job types),
/// so beginning or renaming an operation does not allocate. (`compact_str` and `smol_str`
/// inline 24 bytes, too few for many routes: `GET /customers/{id}/orders` is 26.)
const INLINE_NAME: usize = 62;

/// An operation's name, copied: inline when short, shared when long.
#[derive(Clone)]
enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Shared(Arc<str>),
}

impl Name {
    fn new(name: &str) -> Name {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Name::Inline {
                len: name.len() as u8,
                bytes,
            }
        } else {
            Name::Shared(Arc::from(name))
        }
    }

    /// A long name, taken out (leaving an empty one): to drop it outside a lock.
    fn take_long(&mut self) -> Option<Name> {
        match self {
            Name::Shared(_) => Some(std::mem::replace(self, Name::empty())),
            Name::Inline { .. } => None,
        }
    }

    fn empty() -> Name {
        Name::Inline {
            len: 0,
            bytes: [0; INLINE_NAME],
        }
    }

    /// Becomes `name`, in place when both are short.
    #[inline]
    fn set(&mut self, name: &str) {
        match self {
            Name::Inline { len, bytes } if name.len() <= INLINE_NAME => {
                copy_short(&mut bytes[..name.len()], name.as_bytes());
                *len = name.len() as u8;
            }
            _ => self.set_long(name),
        }
    }

    /// `set` for a long name, or in place of one (out of line: rare).
    #[cold]
    #[inline(never)]
    fn set_long(&mut self, name: &str) {
        *self = Name::new(name);
    }

    fn as_str(&self) -> &str {
        match self {
            // Whole `str`s are copied in, so this is valid UTF-8 (checked here, where names
            // are read — for a snapshot or a log line — rather than on the hot path).
            Name::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..usize::from(*len)]).unwrap_or_default()
            }
            Name::Shared(name) => name,
        }
    }
}

/// `to.copy_from_slice(from)` for the short names operations carry: two overlapping
/// fixed-size copies (a move each) where `copy_from_slice` would call `memcpy` for a
/// length known only at run time.
#[inline]
fn copy_short(to: &mut [u8], from: &[u8]) {
    let n = from.len();
    debug_assert_eq!(to.len(), n);
    if n >= 16 {
        to[..16].copy_from_slice(&from[..16]);
        to[n - 16..].copy_from_slice(&from[n - 16..]);
        if n > 32 {
            to[16..n - 16].copy_from_slice(&from[16..n - 16]);
        }
    } else if n >= 8 {
        to[..8].copy_from_slice(&from[..8]);
        to[n - 8..].copy_from_slice(&from[n - 8..]);
    } else {
        for (to, from) in to.iter_mut().zip(from) {
            *to = *from;
        }
    }
}

/// An operation as the registry holds it: its times are raw clock readings.
#[derive(Clone)]
struct Record {
    id: OperationId,
    parent: Option<OperationId>,
    kind: OperationKind,
    name: Name,
    started: u64,
    deadline: Option<Instant>,
}

impl Record {
    fn vacant() -> Record {
        Record {
            id: OperationId::new(u64::MAX).expect("non-zero"),
            parent: None,
            kind: OperationKind::Task,
            name: Name::empty(),
            started: 0,
            deadline: None,
        }
    }

    fn public(&self, epoch: &Epoch<'_>) -> OperationRecord {
        OperationRecord {
            id: self.id,
            parent: self.parent,
            kind: self.kind,
            name: self.name.as_str().to_owned(),
            started: epoch.instant(self.started),
            deadline: self.deadline,
        }
    }
}

/// Turns the registry's raw clock readings into `Instant`s: one reading of each clock,
/// taken together.
struct Epoch<'a> {
    clock: &'a quanta::Clock,
    raw: u64,
    at: Instant,
}

impl<'a> Epoch<'a> {
    fn now(clock: &'a quanta::Clock) -> Epoch<'a> {
        Epoch {
            clock,
            raw: clock.raw(),
            at: Instant::now(),
        }
    }

    fn instant(&self, raw: u64) -> Instant {
        if raw <= self.raw {
            let ago = Duration::from_nanos(self.clock.delta_as_nanos(raw, self.raw));
            self.at.checked_sub(ago).unwrap_or(self.at)
        } else {
            self.at + Duration::from_nanos(self.clock.delta_as_nanos(self.raw, raw))
        }
    }
}

impl Operations {
    /// A registry keeping the last [`DEFAULT_KEEP_FINISHED`] (200) finished operations.
    pub fn new() -> Operations {
        Operations::keeping(DEFAULT_KEEP_FINISHED)
    }

    /// A registry keeping the last `keep_finished` finished operations (0: none, only the
    /// live ones). Memory is bounded by the work running now plus `keep_finished` records
    /// per shard (the registry has twice as many shards as CPUs, rounded up to a power of
    /// two, at most 64, so that threads rarely share a lock).
    ///
    /// A registry's shell is never freed — about half a kilobyte per shard (32 KiB at
    /// most) that lives until the process exits, like the `metrics` crate's global
    /// recorder — so that every operation holds a plain reference to it instead of
    /// counting one. When the last `Operations` handle is dropped, the finished operations
    /// it kept are released (nobody can look at them any more); a [scope](Self::scope)
    /// still held keeps recording its operations' spans and log lines. Make one per host,
    /// not one per request.
    ///
    /// The first registry in a process calibrates the CPU's time-stamp counter against
    /// the OS clock (`quanta`): it spins for a moment (about a millisecond, at most
    /// 200 ms), so make it at start-up rather than on a latency-sensitive path.
    pub fn keeping(keep_finished: usize) -> Operations {
        // A power of two, so that a thread finds its shard with a mask, not a division.
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .next_power_of_two()
            .clamp(1, MAX_SHARDS);
        // Leaked, so that operations copy a reference to it rather than count one (an
        // atomic increment and decrement per operation, on one cache line for every worker
        // thread): see `OperationScope::new_static`.
        let registry: &'static Registry = Box::leak(Box::new(Registry {
            shards: (0..shards)
                .map(|_| CachePadded::new(Mutex::new(Shard::new())))
                .collect(),
            keep_finished,
            clock: quanta::Clock::new(),
        }));
        Operations {
            registry,
            _owner: Arc::new(Owner(registry)),
        }
    }

    /// How many finished operations it keeps.
    pub fn keep_finished(&self) -> usize {
        self.registry.keep_finished
    }

    /// A root scope: operations begun in it have no parent. (Inside the host's services and
    /// tracked tasks, [`Operation::begin`](gracefully::operation::Operation::begin) finds
    /// the right parent by itself.)
    pub fn scope(&self) -> OperationScope {
        OperationScope::new_static(self.registry)
    }

    /// The operations running now and the last finished ones. Takes each lock briefly, one
    /// at a time (invariant 2): the two lists may disagree about an operation ending at
    /// that instant.
    pub fn snapshot(&self) -> OperationsSnapshot {
        let mut live = Vec::new();
        let mut finished = Vec::new();
        let mut started_total = 0;
        let epoch = Epoch::now(&self.registry.clock);
        for shard in self.registry.shards.iter() {
            let shard = lock(shard);
            started_total += shard.ended.iter().flat_map(|(_, n)| n).sum::<u64>();
            started_total += shard.slots.iter().filter(|slot| slot.live).count() as u64;
            finished.extend(shard.finished.iter().map(|&entry| {
                let slot = entry & !HOLDS_MORE;
                let slot = &shard.slots[slot as usize];
                FinishedOperation {
                    operation: slot.record.public(&epoch),
                    ended: epoch.instant(slot.ended),
                    outcome: slot.outcome.clone(),
                }
            }));
            live.extend(
                shard
                    .slots
                    .iter()
                    .filter(|slot| slot.live)
                    .map(|slot| slot.record.public(&epoch)),
            );
        }
        live.sort_by_key(|r| r.started);
        // Each shard kept its own newest; the newest of all are among them.
        finished.sort_by_key(|f| std::cmp::Reverse(f.ended));
        finished.truncate(self.registry.keep_finished);
        OperationsSnapshot {
            at: Instant::now(),
            live,
            finished,
            started_total,
        }
    }
}

impl Operations {
    /// Publishes the registry's counts to the `metrics` facade (a no-op until a recorder
    /// such as `metrics-exporter-prometheus` is installed), as absolute values:
    /// `gracefully_operations_started_total{kind}`,
    /// `gracefully_operations_ended_total{kind, outcome}`, and
    /// `gracefully_cancellations_total{kind, name, reason}`.
    ///
    /// The registry counts under the locks it takes anyway and publishes only when asked,
    /// so an operation costs no metrics call: call this before each scrape
    /// (`gracefully-axum`'s `/metrics` route does).
    ///
    /// The values are this registry's totals: with several registries in one process
    /// (several hosts), export one of them, or each would overwrite the other's counts.
    pub fn export_metrics(&self) {
        let mut started: Vec<(OperationKind, u64)> = Vec::new();
        let mut ended: Vec<(OperationKind, [u64; OUTCOMES.len()])> = Vec::new();
        let mut cancellations: HashMap<(OperationKind, Arc<str>, ReasonKind), u64> = HashMap::new();
        for shard in self.registry.shards.iter() {
            let shard = lock(shard);
            // Begun: ended, or running now.
            for slot in shard.slots.iter().filter(|slot| slot.live) {
                *count_of(&mut started, slot.record.kind, 0) += 1;
            }
            for (kind, by_outcome) in shard.ended.iter() {
                let n: u64 = by_outcome.iter().sum();
                if n == 0 {
                    continue;
                }
                *count_of(&mut started, kind, 0) += n;
                let total = count_of(&mut ended, kind, [0; OUTCOMES.len()]);
                for (t, n) in total.iter_mut().zip(by_outcome) {
                    *t += n;
                }
            }
            for (&(kind, reason), by_name) in &shard.cancellations {
                for (name, n) in by_name {
                    *cancellations
                        .entry((kind, Arc::clone(name), reason))
                        .or_default() += n;
                }
            }
        }
        for (kind, n) in started {
            metrics::counter!("gracefully_operations_started_total", "kind" => kind.as_str())
                .absolute(n);
        }
        for (kind, by_outcome) in ended {
            for (outcome, n) in OUTCOMES.iter().zip(by_outcome) {
                if n > 0 {
                    metrics::counter!(
                        "gracefully_operations_ended_total",
                        "kind" => kind.as_str(),
                        "outcome" => *outcome
                    )
                    .absolute(n);
                }
            }
        }
        for ((kind, name, reason), n) in cancellations {
            metrics::counter!(
                "gracefully_cancellations_total",
                "kind" => kind.as_str(),
                "name" => name.to_string(),
                "reason" => reason_label(reason)
            )
            .absolute(n);
        }
    }
}

/// The count for `kind` in a short list, added (at `zero`) if missing.
fn count_of<T>(list: &mut Vec<(OperationKind, T)>, kind: OperationKind, zero: T) -> &mut T {
    let i = match list.iter().position(|(k, _)| *k == kind) {
        Some(i) => i,
        None => {
            list.push((kind, zero));
            list.len() - 1
        }
    };
    &mut list[i].1
}

impl Default for Operations {
    fn default() -> Self {
        Operations::new()
    }
}

impl fmt::Debug for Operations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operations")
            .field("keep_finished", &self.registry.keep_finished)
            .field("shards", &self.registry.shards.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock()
}

/// The shard a thread uses: threads are spread round-robin, so concurrent `begin`s rarely
/// share a lock.
fn shard_of_this_thread(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        // `const`, so that reading it checks no lazy initialisation.
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    SHARD.with(|shard| {
        let mut index = shard.get();
        if index == usize::MAX {
            index = NEXT.fetch_add(1, Ordering::Relaxed) % MAX_SHARDS;
            shard.set(index);
        }
        // `count` is a power of two.
        index & (count - 1)
    })
}

/// Set in a `finished` ring entry (beside the slot number, below 2^26) when the slot holds
/// more than a completed outcome and a short name: a reason, a message, a long name.
const HOLDS_MORE: u32 = 1 << 31;

/// The id of an operation the registry did not record: its slot number is past any slab's
/// end, so `end`, `rename` and `set_deadline` find nothing.
const NOT_RECORDED: OperationId = match OperationId::new(u64::MAX) {
    Some(id) => id,
    None => unreachable!(),
};

fn encode(shard: usize, slot: u32, generation: u32) -> OperationId {
    let raw = (u64::from(generation) << (SLOT_BITS + SHARD_BITS))
        | (u64::from(slot) << SHARD_BITS)
        | shard as u64;
    // The generation starts at 1, so the id is never 0.
    OperationId::new(raw).expect("generation ≥ 1")
}

fn decode(id: OperationId) -> (usize, usize, u32) {
    let raw = id.get();
    let shard = (raw & (MAX_SHARDS as u64 - 1)) as usize;
    let slot = ((raw >> SHARD_BITS) & ((1 << SLOT_BITS) - 1)) as usize;
    let generation = (raw >> (SLOT_BITS + SHARD_BITS)) as u32;
    (shard, slot, generation)
}

impl Registry {
    /// Forgets the finished operations and what freed slots still hold (names, reasons),
    /// once the last handle is gone and nobody can look. Live operations stay, and a scope
    /// still held keeps recording (spans and log lines, into a history nobody reads). Ids
    /// stay unique: a shard emptied whole keeps its generations going.
    fn release(&self) {
        for shard in self.shards.iter() {
            let forgotten = lock(shard).forget_finished();
            drop(forgotten); // outside the lock: names, reasons, spans
        }
    }

    /// The live record `id` names, if it is still live (invariant 1).
    fn with_live<R>(
        &self,
        id: OperationId,
        f: impl FnOnce(&mut Record, &Option<tracing::Span>) -> R,
    ) -> Option<R> {
        let (shard, slot, generation) = decode(id);
        let mut shard = lock(self.shards.get(shard)?);
        let slot = shard.slots.get_mut(slot)?;
        if slot.generation != generation || !slot.live {
            return None;
        }
        Some(f(&mut slot.record, &slot.span))
    }
}

impl OperationRecorder for Registry {
    fn begin(&self, start: &OperationStart<'_>) -> OperationId {
        // With no subscriber ever set, skip the span macro (its disabled path still costs
        // some 200 instructions, measured by `benches/http_instructions.sh`).
        let span = if tracing::dispatcher::has_been_set() {
            Some(tracing::debug_span!(
                parent: None,
                "operation",
                kind = start.kind.as_str(),
                name = start.name,
                id = tracing::field::Empty,
                parent = start.parent.map(OperationId::get),
                outcome = tracing::field::Empty,
                reason = tracing::field::Empty,
                origin = tracing::field::Empty,
            ))
        } else {
            None
        };
        let span = span.filter(|span| !span.is_disabled());
        let started = self.clock.raw();
        let index = shard_of_this_thread(self.shards.len());
        let mut shard = lock(&self.shards[index]);
        let slot = match shard.free.pop() {
            Some(slot) => slot,
            None => {
                let slot = u32::try_from(shard.slots.len())
                    .ok()
                    .filter(|&s| s < (1 << SLOT_BITS));
                let Some(slot) = slot else {
                    // 67 million operations running in one shard: record no more of them.
                    drop(shard);
                    return NOT_RECORDED;
                };
                let generation = shard.generation_floor;
                shard.slots.push(Slot::vacant(generation));
                slot
            }
        };
        let entry = &mut shard.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1).max(1);
        let id = encode(index, slot, entry.generation);
        entry.live = true;
        if span.is_some() {
            // (`end` took the previous one's: nothing to drop.)
            entry.span = span;
        }
        let record = &mut entry.record;
        record.id = id;
        record.parent = start.parent;
        record.kind = start.kind;
        record.name.set(start.name);
        record.started = started;
        record.deadline = start.deadline;
        drop(shard);
        id
    }

    fn rename(&self, id: OperationId, name: &str) {
        self.with_live(id, |record, span| {
            if let Some(span) = span {
                span.record("name", name);
            }
            record.name.set(name);
        });
    }

    fn set_deadline(&self, id: OperationId, deadline: Option<Instant>) {
        self.with_live(id, |record, _| record.deadline = deadline);
    }

    fn end(&self, id: OperationId, outcome: OperationOutcome) {
        let (shard, slot, generation) = decode(id);
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let ended = self.clock.raw();
        let mut guard = lock(shard);
        let shard = &mut *guard;
        let Some(entry) = shard.slots.get_mut(slot) else {
            return;
        };
        if entry.generation != generation || !entry.live {
            return;
        }
        entry.live = false;
        // (Only its tag is read when there is none, the usual case.)
        let span = if entry.span.is_some() {
            entry.span.take()
        } else {
            None
        };
        let kind = entry.record.kind;
        shard.ended.get_mut(kind)[outcome_index(&outcome)] += 1;
        if let OperationOutcome::Cancelled(reason) = &outcome {
            count_cancellation(
                &mut shard.cancellations,
                &mut shard.series,
                kind,
                entry.record.name.as_str(),
                reason.kind(),
            );
        }
        // Logged after the lock is released; copied only when something listens (a
        // subscriber at DEBUG, or the error line of a failure).
        let report = (span.is_some() || matches!(outcome, OperationOutcome::Failed(_)))
            .then(|| copy_for_report(&entry.record, &outcome));
        entry.ended = ended;
        // Invariant 3: the slot joins the ring of the last finished; once the ring is full,
        // it takes the oldest one's place there, and that slot is freed.
        let keep = self.keep_finished;
        let (freed, unkept) = if keep == 0 {
            (slot as u32, Some(outcome))
        } else {
            // Marked if the slot will hold more than a completed outcome and a short name,
            // so that its eviction touches it (cold by then) only if there is more to drop.
            let holds_more = !matches!(outcome, OperationOutcome::Completed)
                || matches!(entry.record.name, Name::Shared(_));
            let ring_entry = slot as u32 | if holds_more { HOLDS_MORE } else { 0 };
            entry.outcome = outcome;
            if shard.finished.len() < keep {
                shard.finished.push(ring_entry);
                (u32::MAX, None)
            } else {
                let oldest =
                    std::mem::replace(&mut shard.finished[shard.next_finished], ring_entry);
                shard.next_finished += 1;
                if shard.next_finished == keep {
                    shard.next_finished = 0;
                }
                (oldest, None)
            }
        };
        let mut evicted = None;
        if freed != u32::MAX {
            let holds_more = freed & HOLDS_MORE != 0;
            let freed = freed & !HOLDS_MORE;
            if holds_more && freed != slot as u32 {
                // What the evicted operation still holds (a reason, a message, a long name)
                // goes now, not whenever its slot is taken again (dropped outside the lock).
                let old = &mut shard.slots[freed as usize];
                evicted = Some((
                    std::mem::replace(&mut old.outcome, OperationOutcome::Abandoned),
                    old.record.name.take_long(),
                ));
            }
            shard.free.push(freed);
        }
        drop(guard);
        drop(unkept);
        drop(evicted);
        if let Some((record, outcome)) = report {
            report_end(&record, &outcome, &span.unwrap_or_else(tracing::Span::none));
        }
    }
}

/// What `report_end` needs, copied under the lock (out of line: only when something
/// listens, or for a failure).
#[cold]
#[inline(never)]
fn copy_for_report(record: &Record, outcome: &OperationOutcome) -> (Record, OperationOutcome) {
    (record.clone(), outcome.clone())
}

/// The span's fields and the log line of an operation that ended.
#[cold]
#[inline(never)]
fn report_end(record: &Record, outcome: &OperationOutcome, span: &tracing::Span) {
    let kind = record.kind.as_str();
    span.record("id", record.id.get());
    span.record("outcome", outcome.as_str());
    let _entered = span.enter();
    match outcome {
        OperationOutcome::Cancelled(reason) => {
            span.record("reason", tracing::field::display(reason));
            span.record("origin", tracing::field::display(reason.origin()));
            // A cancellation is an outcome, not an error (docs/architecture.md, rule 2).
            tracing::debug!(kind, name = record.name.as_str(), %reason, "operation cancelled");
        }
        OperationOutcome::Failed(message) => {
            tracing::error!(kind, name = record.name.as_str(), error = %message, "operation failed");
        }
        _ => {
            tracing::trace!(
                kind,
                name = record.name.as_str(),
                outcome = outcome.as_str(),
                "operation ended"
            )
        }
    }
}

/// A reason kind as a metrics label: lowercase, no spaces.
pub(crate) fn reason_label(kind: ReasonKind) -> &'static str {
    match kind {
        ReasonKind::Requested => "requested",
        ReasonKind::DeadlineExceeded => "deadline_exceeded",
        ReasonKind::Shutdown => "shutdown",
        ReasonKind::Disconnected => "disconnected",
        ReasonKind::Failed => "failed",
        _ => "other",
    }
}

/// The operation outcome of a service or tracked task that ended with `outcome`; `reason`:
/// why it was cancelled, if known.
pub(crate) fn operation_outcome(outcome: &Outcome, reason: Option<Reason>) -> OperationOutcome {
    match outcome {
        Outcome::Completed => OperationOutcome::Completed,
        Outcome::Cancelled => {
            OperationOutcome::Cancelled(reason.unwrap_or_else(|| {
                Reason::requested().with_message("cancelled (reason not known)")
            }))
        }
        Outcome::Failed(message) => OperationOutcome::Failed(message.clone().into()),
        _ => OperationOutcome::Abandoned,
    }
}
