//! [`Operations`]: the host's registry of operations — what runs now, and why recent work
//! stopped — with a Prometheus-style count and a tracing span per operation.
//!
//! Invariants:
//!
//! 1. An operation is in exactly one shard's `live` slab from `begin` to `end`; its id names
//!    the shard, the slot and the slot's generation, so an id that outlived its operation
//!    (a stale `rename`) never touches the slot's next occupant.
//! 2. `end` takes the record out of its shard under that shard's lock, then pushes it into
//!    `finished` under the finished lock: never both locks at once, so there is no lock
//!    order to get wrong. A snapshot takes them one at a time too: an operation ending
//!    meanwhile can be missing from both lists of that one snapshot, never in both.
//! 3. `finished` holds at most `keep_finished` records, newest at the back; the oldest is
//!    dropped (outside the lock) when a new one arrives.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
/// * counts in the `metrics` facade (a no-op until a recorder such as
///   `metrics-exporter-prometheus` is installed): `gracefully_operations_started_total{kind}`,
///   `gracefully_operations_ended_total{kind, outcome}`, and
///   `gracefully_cancellations_total{kind, name, reason}` (`name`: the route, for requests);
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
    finished: Mutex<VecDeque<FinishedOperation>>,
    keep_finished: usize,
    started_total: AtomicU64,
}

#[derive(Default)]
struct Shard {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

struct Slot {
    /// Bumped each time the slot is taken: part of the id (invariant 1).
    generation: u32,
    live: Option<LiveRecord>,
}

struct LiveRecord {
    record: OperationRecord,
    span: tracing::Span,
}

impl Operations {
    /// A registry keeping the last [`DEFAULT_KEEP_FINISHED`] (200) finished operations.
    pub fn new() -> Operations {
        Operations::keeping(DEFAULT_KEEP_FINISHED)
    }

    /// A registry keeping the last `keep_finished` finished operations (0: none, only the
    /// live ones). Memory is bounded by the work running now plus this many records.
    pub fn keeping(keep_finished: usize) -> Operations {
        let shards = std::thread::available_parallelism()
            .map_or(4, |n| n.get() * 2)
            .clamp(1, MAX_SHARDS);
        Operations {
            registry: Arc::new(Registry {
                shards: (0..shards).map(|_| Mutex::default()).collect(),
                finished: Mutex::new(VecDeque::with_capacity(keep_finished.min(4096))),
                keep_finished,
                started_total: AtomicU64::new(0),
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
        for shard in self.registry.shards.iter() {
            let shard = lock(shard);
            live.extend(
                shard
                    .slots
                    .iter()
                    .filter_map(|s| s.live.as_ref().map(|l| l.record.clone())),
            );
        }
        live.sort_by_key(|r| r.started);
        let finished = lock(&self.registry.finished)
            .iter()
            .rev()
            .cloned()
            .collect();
        OperationsSnapshot {
            at: Instant::now(),
            live,
            finished,
            started_total: self.registry.started_total.load(Ordering::Relaxed),
        }
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
            .field(
                "started_total",
                &self.registry.started_total.load(Ordering::Relaxed),
            )
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
        self.started_total.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("gracefully_operations_started_total", "kind" => start.kind.as_str())
            .increment(1);
        let span = tracing::debug_span!(
            parent: None,
            "operation",
            kind = start.kind.as_str(),
            name = start.name,
            id = tracing::field::Empty,
            parent = start.parent.map(OperationId::get),
            outcome = tracing::field::Empty,
            reason = tracing::field::Empty,
            origin = tracing::field::Empty,
        );
        let record = OperationRecord {
            // Set below, once the slot is known.
            id: OperationId::new(u64::MAX).expect("non-zero"),
            parent: start.parent,
            kind: start.kind,
            name: start.name.to_owned(),
            started: Instant::now(),
            deadline: start.deadline,
        };
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
        let entry = &mut shard.slots[slot as usize];
        entry.generation = entry.generation.wrapping_add(1).max(1);
        let id = encode(index, slot, entry.generation);
        entry.live = Some(LiveRecord {
            record: OperationRecord { id, ..record },
            span,
        });
        drop(shard);
        id
    }

    fn rename(&self, id: OperationId, name: &str) {
        self.with_live(id, |live| {
            live.record.name.clear();
            live.record.name.push_str(name);
            live.span.record("name", name);
        });
    }

    fn set_deadline(&self, id: OperationId, deadline: Option<Instant>) {
        self.with_live(id, |live| live.record.deadline = deadline);
    }

    fn end(&self, id: OperationId, outcome: OperationOutcome) {
        let (shard, slot, generation) = decode(id);
        let live = {
            let Some(shard) = self.shards.get(shard) else {
                return;
            };
            let mut shard = lock(shard);
            let Some(entry) = shard.slots.get_mut(slot) else {
                return;
            };
            if entry.generation != generation {
                return;
            }
            let Some(live) = entry.live.take() else {
                return;
            };
            shard.free.push(slot as u32);
            live
        };
        let LiveRecord { record, span } = live;
        report_end(&record, &outcome, &span);
        drop(span);
        if self.keep_finished == 0 {
            return;
        }
        let finished = FinishedOperation {
            operation: record,
            ended: Instant::now(),
            outcome,
        };
        let evicted = {
            let mut list = lock(&self.finished);
            let evicted = if list.len() >= self.keep_finished {
                list.pop_front()
            } else {
                None
            };
            list.push_back(finished);
            evicted
        };
        // Invariant 3: the oldest record (its name, its reason) is freed outside the lock.
        drop(evicted);
    }
}

/// The metrics, the span's fields and the log line of an operation that ended.
fn report_end(record: &OperationRecord, outcome: &OperationOutcome, span: &tracing::Span) {
    let kind = record.kind.as_str();
    metrics::counter!(
        "gracefully_operations_ended_total",
        "kind" => kind,
        "outcome" => outcome.as_str()
    )
    .increment(1);
    span.record("id", record.id.get());
    span.record("outcome", outcome.as_str());
    let _entered = span.enter();
    match outcome {
        OperationOutcome::Cancelled(reason) => {
            metrics::counter!(
                "gracefully_cancellations_total",
                "kind" => kind,
                "name" => record.name.clone(),
                "reason" => reason_label(reason.kind())
            )
            .increment(1);
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
