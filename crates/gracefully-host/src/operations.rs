//! [`Operations`]: the host's registry of operations — what runs now, and why recent work
//! stopped — with a Prometheus-style count and a tracing span per operation.
//!
//! Invariants:
//!
//! 1. An operation is in exactly one shard's `live` slab from `begin` to `end`; its id names
//!    the shard, the slot and the slot's generation, so an id that outlived its operation
//!    (a stale `rename`) never touches the slot's next occupant.
//! 2. `end` moves the record from its shard's live slab to the same shard's `finished`
//!    list under that one lock, so a snapshot (which takes the shards' locks one at a time,
//!    never two at once) sees each operation exactly once: live or finished.
//! 3. Each shard's `finished` holds at most `keep_finished` records, newest at the back;
//!    the oldest is dropped (outside the lock) when a new one arrives. The newest
//!    `keep_finished` of the whole registry are among the shards' lists, which a snapshot
//!    merges: memory is bounded by `keep_finished` records per shard (shards: twice the
//!    CPUs, at most 64).
//! 4. Each shard counts cancellations under at most [`CANCELLATION_SERIES`] distinct
//!    (kind, name, reason) keys; a cancellation that would add one more is counted under
//!    the name [`OTHER_NAME`]. Names come from outside (an unmatched request's path, an
//!    unknown gRPC method), so without the bound a client cancelling requests to made-up
//!    paths would grow the map, and the `/metrics` page, without end.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

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
/// the reason (with its origin) if they were cancelled. Cheap to clone (one reference count).
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
    registry: Arc<Registry>,
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
    shards: Box<[Mutex<Shard>]>,
    keep_finished: usize,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// The last `keep_finished` operations that ended in this shard, newest at the back
    /// (invariant 3).
    finished: VecDeque<Finished>,
    /// Recently used names, shared by the operations that carry them (most operations
    /// repeat a few names: routes, query labels), so beginning one rarely allocates.
    names: Vec<Arc<str>>,
    /// Where the next name not found in `names` goes (round robin over `NAME_CACHE`).
    next_name: usize,
    /// Counts for the metrics, kept here under the lock `begin` and `end` take anyway
    /// (published by [`Operations::export_metrics`]): operations begun, by kind …
    started: Vec<(OperationKind, u64)>,
    /// … ended, by kind and outcome (indexed by [`outcome_index`]) …
    ended: Vec<(OperationKind, [u64; OUTCOMES.len()])>,
    /// … and cancelled, by kind, name and reason kind.
    cancellations: HashMap<(OperationKind, Arc<str>, ReasonKind), u64>,
}

/// How many names each shard keeps for reuse.
const NAME_CACHE: usize = 32;

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

struct Slot {
    /// Bumped each time the slot is taken: part of the id (invariant 1).
    generation: u32,
    live: Option<LiveRecord>,
}

/// An operation as the registry holds it (the name shared, see `Shard::names`).
#[derive(Clone)]
struct Record {
    id: OperationId,
    parent: Option<OperationId>,
    kind: OperationKind,
    name: Arc<str>,
    started: Instant,
    deadline: Option<Instant>,
}

impl Record {
    fn public(&self) -> OperationRecord {
        OperationRecord {
            id: self.id,
            parent: self.parent,
            kind: self.kind,
            name: self.name.to_string(),
            started: self.started,
            deadline: self.deadline,
        }
    }
}

struct LiveRecord {
    record: Record,
    /// `None` when nothing listens (dropping even a disabled `Span` costs some 60
    /// instructions).
    span: Option<tracing::Span>,
}

struct Finished {
    record: Record,
    ended: Instant,
    outcome: OperationOutcome,
}

impl Operations {
    /// A registry keeping the last [`DEFAULT_KEEP_FINISHED`] (200) finished operations.
    pub fn new() -> Operations {
        Operations::keeping(DEFAULT_KEEP_FINISHED)
    }

    /// A registry keeping the last `keep_finished` finished operations (0: none, only the
    /// live ones). Memory is bounded by the work running now plus `keep_finished` records
    /// per shard (the registry has twice as many shards as CPUs, at most 64, so that
    /// threads rarely share a lock).
    pub fn keeping(keep_finished: usize) -> Operations {
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(1, MAX_SHARDS);
        Operations {
            registry: Arc::new(Registry {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                keep_finished,
            }),
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
        OperationScope::new(self.registry.clone())
    }

    /// The operations running now and the last finished ones. Takes each lock briefly, one
    /// at a time (invariant 2): the two lists may disagree about an operation ending at
    /// that instant.
    pub fn snapshot(&self) -> OperationsSnapshot {
        let mut live = Vec::new();
        let mut finished = Vec::new();
        let mut started_total = 0;
        for shard in self.registry.shards.iter() {
            let shard = lock(shard);
            started_total += shard.started.iter().map(|(_, n)| n).sum::<u64>();
            finished.extend(shard.finished.iter().map(|f| FinishedOperation {
                operation: f.record.public(),
                ended: f.ended,
                outcome: f.outcome.clone(),
            }));
            live.extend(
                shard
                    .slots
                    .iter()
                    .filter_map(|s| s.live.as_ref().map(|l| l.record.public())),
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
            for &(kind, n) in &shard.started {
                *count_of(&mut started, kind, 0) += n;
            }
            for (kind, by_outcome) in &shard.ended {
                let total = count_of(&mut ended, *kind, [0; OUTCOMES.len()]);
                for (t, n) in total.iter_mut().zip(by_outcome) {
                    *t += n;
                }
            }
            for (key, n) in &shard.cancellations {
                *cancellations.entry(key.clone()).or_default() += n;
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

impl Shard {
    /// `name`, shared with earlier operations of the same name when this shard has it.
    fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.names.iter().find(|n| ***n == *name) {
            return Arc::clone(found);
        }
        let name: Arc<str> = Arc::from(name);
        if self.names.len() < NAME_CACHE {
            self.names.push(Arc::clone(&name));
        } else {
            self.names[self.next_name] = Arc::clone(&name);
            self.next_name = (self.next_name + 1) % NAME_CACHE;
        }
        name
    }
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
    // Nothing panics while holding these locks; recover the data if it ever did.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The shard a thread uses: threads are spread round-robin, so concurrent `begin`s rarely
/// share a lock.
fn shard_of_this_thread(count: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    SHARD.with(|s| *s) % count
}

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
    /// The live record `id` names, if it is still live (invariant 1).
    fn with_live<R>(&self, id: OperationId, f: impl FnOnce(&mut LiveRecord) -> R) -> Option<R> {
        let (shard, slot, generation) = decode(id);
        let mut shard = lock(self.shards.get(shard)?);
        let slot = shard.slots.get_mut(slot)?;
        if slot.generation != generation {
            return None;
        }
        slot.live.as_mut().map(f)
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
        let started = Instant::now();
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
                    return OperationId::new(u64::MAX).expect("non-zero");
                };
                shard.slots.push(Slot {
                    generation: 0,
                    live: None,
                });
                slot
            }
        };
        *count_of(&mut shard.started, start.kind, 0) += 1;
        let name = shard.intern(start.name);
        let entry = &mut shard.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1).max(1);
        let id = encode(index, slot, entry.generation);
        entry.live = Some(LiveRecord {
            record: Record {
                id,
                parent: start.parent,
                kind: start.kind,
                name,
                started,
                deadline: start.deadline,
            },
            span,
        });
        drop(shard);
        id
    }

    fn rename(&self, id: OperationId, name: &str) {
        // One lock for the name and the record (a request is renamed once it is routed).
        let (shard, slot, generation) = decode(id);
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let mut shard = lock(shard);
        let name = shard.intern(name);
        let Some(entry) = shard.slots.get_mut(slot) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        if let Some(live) = entry.live.as_mut() {
            if let Some(span) = &live.span {
                span.record("name", &*name);
            }
            live.record.name = name;
        }
    }

    fn set_deadline(&self, id: OperationId, deadline: Option<Instant>) {
        self.with_live(id, |live| live.record.deadline = deadline);
    }

    fn end(&self, id: OperationId, outcome: OperationOutcome) {
        let (shard, slot, generation) = decode(id);
        let Some(shard) = self.shards.get(shard) else {
            return;
        };
        let ended = Instant::now();
        let mut shard = lock(shard);
        let Some(entry) = shard.slots.get_mut(slot) else {
            return;
        };
        if entry.generation != generation {
            return;
        }
        let Some(LiveRecord { record, span }) = entry.live.take() else {
            return;
        };
        shard.free.push(slot as u32);
        let kind = record.kind;
        count_of(&mut shard.ended, kind, [0; OUTCOMES.len()])[outcome_index(&outcome)] += 1;
        if let OperationOutcome::Cancelled(reason) = &outcome {
            let key = (kind, Arc::clone(&record.name), reason.kind());
            if let Some(n) = shard.cancellations.get_mut(&key) {
                *n += 1;
            } else if shard.cancellations.len() < CANCELLATION_SERIES {
                shard.cancellations.insert(key, 1);
            } else {
                // Invariant 4: one more series would be unbounded growth; count it as other.
                let other = (kind, Arc::from(OTHER_NAME), reason.kind());
                *shard.cancellations.entry(other).or_default() += 1;
            }
        }
        // Logged after the lock is released; copied only when something listens (a
        // subscriber at DEBUG, or the error line of a failure).
        let report = (span.is_some() || matches!(outcome, OperationOutcome::Failed(_)))
            .then(|| (record.clone(), outcome.clone()));
        let evicted = if self.keep_finished == 0 {
            None
        } else {
            let evicted = if shard.finished.len() >= self.keep_finished {
                shard.finished.pop_front()
            } else {
                None
            };
            shard.finished.push_back(Finished {
                record,
                ended,
                outcome,
            });
            evicted
        };
        drop(shard);
        // Invariant 3: the oldest record (its name, its reason) is freed outside the lock.
        drop(evicted);
        if let Some((record, outcome)) = report {
            report_end(&record, &outcome, &span.unwrap_or_else(tracing::Span::none));
        }
    }
}

/// The span's fields and the log line of an operation that ended.
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
            tracing::debug!(kind, name = %record.name, %reason, "operation cancelled");
        }
        OperationOutcome::Failed(message) => {
            tracing::error!(kind, name = %record.name, error = %message, "operation failed");
        }
        _ => {
            tracing::trace!(kind, name = %record.name, outcome = outcome.as_str(), "operation ended")
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
