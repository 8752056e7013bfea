//! Operations: the named units of work (an HTTP request, a query, an outbound call, a job, a
//! tracked task) that a registry can show live, and say why each one stopped.
//!
//! This module is the *interface* every integration crate registers through; the registry
//! itself (live operations, the last finished ones, metrics, tracing spans) is an
//! [`OperationRecorder`] that `gracefully-host` provides. It lives in the core so that crates
//! that do not depend on the host (`gracefully-sqlx`, `gracefully-reqwest`) can register too.
//!
//! ```text
//!  OperationScope ──begin(kind, name, deadline)──► Operation ──scope()──► OperationScope ─► …
//!   (a recorder + the parent's id)                   rename, set_deadline
//!   OperationScope::current()                        complete / cancelled(reason) / failed
//!   scope.scoped(future): current while polled        (dropped unfinished: Abandoned)
//! ```
//!
//! Nothing is recorded unless a recorder was installed somewhere up the chain: with none,
//! [`Operation::begin`] is one thread-local read and returns an inert handle, and every
//! method on that handle does nothing. The token tree is untouched either way: an operation
//! is not a token, and `is_cancelled`, `cancel` and child creation cost what they cost.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use std::time::Instant;
//! use gracefully::operation::{
//!     Operation, OperationId, OperationKind, OperationOutcome, OperationRecorder,
//!     OperationScope, OperationStart,
//! };
//!
//! /// A recorder that remembers how each operation ended.
//! #[derive(Default)]
//! struct Log(Mutex<Vec<(u64, Option<u64>, String, String)>>, std::sync::atomic::AtomicU64);
//!
//! impl OperationRecorder for Log {
//!     fn begin(&self, start: &OperationStart<'_>) -> OperationId {
//!         let id = self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
//!         let id = OperationId::new(id).unwrap();
//!         let parent = start.parent.map(OperationId::get);
//!         self.0.lock().unwrap().push((id.get(), parent, start.name.to_owned(), String::new()));
//!         id
//!     }
//!     fn end(&self, id: OperationId, outcome: OperationOutcome) {
//!         let mut log = self.0.lock().unwrap();
//!         let row = log.iter_mut().find(|r| r.0 == id.get()).unwrap();
//!         row.3 = outcome.as_str().to_owned();
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let log = Arc::new(Log::default());
//! let root = OperationScope::new(log.clone());
//! let request = root.begin(OperationKind::Request, "GET /orders", None);
//! // Whatever begins while the request's future is polled is its child:
//! request.scoped(async {
//!     let query = Operation::begin(OperationKind::Query, "orders.list", None);
//!     query.complete();
//! }).await;
//! request.cancelled(gracefully::Reason::disconnected());
//!
//! let log = log.0.lock().unwrap();
//! assert_eq!(log[1].1, Some(log[0].0));            // the query's parent is the request
//! assert_eq!(log[0].3, "cancelled");
//! # }
//! ```
//!
//! *Anchors:* OpenTelemetry's spans and .NET's `System.Diagnostics.Activity` (a current
//! activity, children that link to it); tracing's `Instrument`. Unlike those, an operation
//! ends with a typed outcome and the cancellation's [`Reason`] with its origin, so a
//! registry can say *why* work stopped rather than that it did.

use std::borrow::Cow;
use std::cell::Cell;
use std::error::Error;
use std::fmt;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::num::NonZeroU64;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::{Reason, find_cancelled};

/// What kind of work an operation is. Labels metrics (`kind`), so keep custom kinds few and
/// fixed.
///
/// The enum is `#[non_exhaustive]`: match it with a wildcard arm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OperationKind {
    /// An incoming HTTP request (`gracefully-axum`).
    Request,
    /// An incoming gRPC call.
    Rpc,
    /// A database statement (`gracefully-sqlx`).
    Query,
    /// A database transaction (`gracefully-sqlx`).
    Transaction,
    /// An outbound call (`gracefully-reqwest`, a gRPC client).
    Outbound,
    /// A background job.
    Job,
    /// A message from a broker (NATS, AMQP).
    Message,
    /// A host service (`gracefully-host`).
    Service,
    /// A tracked task (`gracefully-host`'s `Lifetime::spawn`).
    Task,
    /// Anything else, named by a fixed string.
    Other(&'static str),
}

impl OperationKind {
    /// A short lowercase name: `request`, `rpc`, `query`, `transaction`, `outbound`, `job`,
    /// `message`, `service`, `task`, or the custom name.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Request => "request",
            OperationKind::Rpc => "rpc",
            OperationKind::Query => "query",
            OperationKind::Transaction => "transaction",
            OperationKind::Outbound => "outbound",
            OperationKind::Job => "job",
            OperationKind::Message => "message",
            OperationKind::Service => "service",
            OperationKind::Task => "task",
            OperationKind::Other(name) => name,
        }
    }
}

impl fmt::Display for OperationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An operation's identity within its recorder, chosen by the recorder. Never zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperationId(NonZeroU64);

impl OperationId {
    /// `None` for 0.
    pub const fn new(id: u64) -> Option<OperationId> {
        match NonZeroU64::new(id) {
            Some(id) => Some(OperationId(id)),
            None => None,
        }
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for OperationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a recorder is told when an operation begins.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct OperationStart<'a> {
    /// What kind of work.
    pub kind: OperationKind,
    /// Its name: the route, the query's label, the job's type, the task's name. Copy it if
    /// you keep it.
    pub name: &'a str,
    /// The operation it runs under, if any (in the same recorder).
    pub parent: Option<OperationId>,
    /// When its token will fire at the latest (`token.deadline()`), if it has a deadline.
    pub deadline: Option<Instant>,
}

/// How an operation ended.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum OperationOutcome {
    /// It did its work.
    Completed,
    /// It stopped because it was cancelled; the reason says why and where it was fired.
    Cancelled(Reason),
    /// A genuine failure (an error that is not a cancellation, a panic), with its message.
    Failed(Cow<'static, str>),
    /// Its handle was dropped before it said how it ended: its future was dropped (an
    /// aborted task, a connection that broke, a request dropped on disconnect).
    Abandoned,
}

impl OperationOutcome {
    /// A short lowercase name: `completed`, `cancelled`, `failed`, `abandoned`.
    pub fn as_str(&self) -> &'static str {
        match self {
            OperationOutcome::Completed => "completed",
            OperationOutcome::Cancelled(_) => "cancelled",
            OperationOutcome::Failed(_) => "failed",
            OperationOutcome::Abandoned => "abandoned",
        }
    }

    /// The outcome a `Result` stands for: `Ok` completed; an error that
    /// [is a cancellation](crate::is_cancellation) cancelled with its reason; any other
    /// error failed, with its message.
    pub fn of<T, E: Error + 'static>(result: &Result<T, E>) -> OperationOutcome {
        match result {
            Ok(_) => OperationOutcome::Completed,
            Err(error) => match find_cancelled(error) {
                Some(cancelled) => OperationOutcome::Cancelled(cancelled.reason().clone()),
                None => OperationOutcome::Failed(Cow::Owned(error.to_string())),
            },
        }
    }
}

/// Where operations are recorded: implemented by a registry (`gracefully-host`'s
/// `Operations`). Integration crates never call it directly; they use [`Operation`] and
/// [`OperationScope`].
///
/// Every method is called on the thread doing the work, inline: keep each one short, never
/// block, never panic. `end` is called exactly once for every id `begin` returned.
pub trait OperationRecorder: Send + Sync + 'static {
    /// An operation began; returns its id.
    fn begin(&self, start: &OperationStart<'_>) -> OperationId;

    /// The operation's name became known or more precise (an HTTP request's matched
    /// route). Default: ignored.
    fn rename(&self, id: OperationId, name: &str) {
        let _ = (id, name);
    }

    /// The operation's deadline became known or moved (earlier). Default: ignored.
    fn set_deadline(&self, id: OperationId, deadline: Option<Instant>) {
        let _ = (id, deadline);
    }

    /// The operation ended.
    fn end(&self, id: OperationId, outcome: OperationOutcome);
}

/// Where new operations go: a recorder, and the operation they run under (none for a root).
/// Cheap to clone (a copy for a [static](Self::new_static) recorder, one reference count
/// otherwise).
///
/// Get one from a registry (a root scope), from an operation ([`Operation::scope`]: its
/// children), or from the code around you ([`OperationScope::current`]).
#[derive(Clone)]
pub struct OperationScope {
    recorder: Recorder,
    parent: Option<OperationId>,
}

/// A recorder, held by the scopes and operations that record in it.
#[derive(Clone)]
enum Recorder {
    /// One that lives as long as the process: copied, no reference count touched (an
    /// atomic increment and decrement per operation otherwise, on a cache line every
    /// worker thread shares).
    Static(&'static dyn OperationRecorder),
    Shared(Arc<dyn OperationRecorder>),
}

impl Recorder {
    #[inline]
    fn get(&self) -> &dyn OperationRecorder {
        match self {
            Recorder::Static(recorder) => *recorder,
            Recorder::Shared(recorder) => &**recorder,
        }
    }
}

thread_local! {
    /// The scope of the innermost [`Scoped`] future this thread is polling. Moved in and
    /// out by `Scoped::poll` (no reference count is touched on the way).
    ///
    /// `ManuallyDrop`: no destructor is registered for it, so an access is a plain
    /// thread-local read (one with a destructor checks whether it was registered or already
    /// destroyed, every time), and it stays usable while other thread-locals are torn down
    /// (a runtime dropping its tasks). It holds a scope only while a future is polled, so a
    /// thread never ends holding one; if it did, the scope would be leaked, never freed
    /// twice.
    static CURRENT: ManuallyDrop<Cell<Option<OperationScope>>> =
        const { ManuallyDrop::new(Cell::new(None)) };
    /// What `CURRENT` holds, in a form read with one `Cell::get`: whether there is a scope
    /// at all (code outside any — every caller, when no registry is installed — reads only
    /// this), and for a `'static` recorder the scope itself, so that beginning an operation
    /// moves nothing in or out of `CURRENT`. Kept equal by `swap_current`.
    static CURRENT_AT_A_GLANCE: Cell<Glance> = const { Cell::new(Glance::None) };
}

#[derive(Clone, Copy)]
enum Glance {
    None,
    /// A scope of a `'static` recorder: the recorder and the parent.
    Static(&'static dyn OperationRecorder, Option<OperationId>),
    /// A scope of a shared recorder: look in `CURRENT`.
    Shared,
}

/// Makes `scope` current; returns the one that was.
#[inline]
fn swap_current(scope: Option<OperationScope>) -> Option<OperationScope> {
    let glance = match &scope {
        None => Glance::None,
        Some(OperationScope {
            recorder: Recorder::Static(recorder),
            parent,
        }) => Glance::Static(*recorder, *parent),
        Some(_) => Glance::Shared,
    };
    CURRENT_AT_A_GLANCE.with(|at_a_glance| at_a_glance.set(glance));
    CURRENT.with(|c| c.replace(scope))
}

#[inline]
fn glance() -> Glance {
    CURRENT_AT_A_GLANCE.with(Cell::get)
}

impl OperationScope {
    /// A root scope of `recorder`: operations begun in it have no parent.
    pub fn new(recorder: Arc<dyn OperationRecorder>) -> OperationScope {
        OperationScope {
            recorder: Recorder::Shared(recorder),
            parent: None,
        }
    }

    /// A root scope of a recorder that lives as long as the process (a leaked one, as
    /// `gracefully-host`'s `Operations` is): the scopes and operations made from it copy a
    /// reference instead of counting one, so beginning and ending an operation touch no
    /// shared atomic. (The `metrics` crate's global recorder is `'static` for the same
    /// reason.)
    pub fn new_static(recorder: &'static dyn OperationRecorder) -> OperationScope {
        OperationScope {
            recorder: Recorder::Static(recorder),
            parent: None,
        }
    }

    /// The scope of the code running now: set while a [`Scoped`] future is polled on this
    /// thread (a request's handler and whatever it awaits, a tracked task, a service). `None`
    /// outside any, and always when no registry is installed.
    pub fn current() -> Option<OperationScope> {
        match glance() {
            Glance::None => return None,
            Glance::Static(recorder, parent) => {
                return Some(OperationScope {
                    recorder: Recorder::Static(recorder),
                    parent,
                });
            }
            Glance::Shared => {}
        }
        CURRENT.with(|current| {
            let scope = current.take();
            let copy = scope.clone();
            current.set(scope);
            copy
        })
    }

    /// The operation new operations run under, if any.
    pub fn parent(&self) -> Option<OperationId> {
        self.parent
    }

    /// Renames the operation new operations run under (nothing for a root scope): for a
    /// layer that learns the name late, as an HTTP router learns a request's route.
    pub fn rename_parent(&self, name: &str) {
        if let Some(id) = self.parent {
            self.recorder.get().rename(id, name);
        }
    }

    /// Begins an operation in this scope. `deadline` is when its token fires at the latest
    /// (`token.deadline()`).
    pub fn begin(&self, kind: OperationKind, name: &str, deadline: Option<Instant>) -> Operation {
        begin_in(self.recorder.clone(), self.parent, kind, name, deadline)
    }

    /// `future`, polled with this scope [current](Self::current): what it begins while it
    /// runs (on this task) runs under this scope's operation.
    ///
    /// A task it spawns does not inherit the scope (as with tracing's spans): take
    /// [`current`](Self::current) before spawning and wrap the task's future too.
    pub fn scoped<F: Future>(self, future: F) -> Scoped<F> {
        Scoped {
            future,
            scope: Some(self),
        }
    }

    /// Runs `f` with this scope [current](Self::current): for synchronous code.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        let _restore = Restore(swap_current(Some(self.clone())));
        f()
    }
}

/// Begins an operation in `recorder`, under `parent`.
#[inline]
fn begin_in(
    recorder: Recorder,
    parent: Option<OperationId>,
    kind: OperationKind,
    name: &str,
    deadline: Option<Instant>,
) -> Operation {
    let id = recorder.get().begin(&OperationStart {
        kind,
        name,
        parent,
        deadline,
    });
    Operation {
        live: Some(Live { recorder, id }),
    }
}

impl fmt::Debug for OperationScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OperationScope")
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

/// Puts the previous scope back when dropped (also when the code in between panics).
struct Restore(Option<OperationScope>);

impl Drop for Restore {
    fn drop(&mut self) {
        swap_current(self.0.take());
    }
}

/// A future polled with an [`OperationScope`] current. Made by [`OperationScope::scoped`].
///
/// # Cancel safety
///
/// As cancel safe as the inner future.
#[must_use = "futures do nothing unless polled"]
pub struct Scoped<F> {
    future: F,
    /// `None` only while `poll` has moved it into the thread-local.
    scope: Option<OperationScope>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `future` is structurally pinned: it is never moved out of `self` and no
        // `&mut F` is handed out; `Scoped` is `Unpin` only if `F` is. `scope` is not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        if this.scope.is_none() {
            // An inert operation's future: nothing to make current, so nothing is paid
            // (whatever scope is current stays so).
            // SAFETY: see above.
            return unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx);
        }
        // Move our scope in, and the previous one out; a guard moves both back, also if
        // the inner poll panics.
        struct Swap<'a> {
            slot: &'a mut Option<OperationScope>,
            previous: Option<OperationScope>,
        }
        impl Drop for Swap<'_> {
            fn drop(&mut self) {
                *self.slot = swap_current(self.previous.take());
            }
        }
        let previous = swap_current(this.scope.take());
        let _swap = Swap {
            slot: &mut this.scope,
            previous,
        };
        // SAFETY: see above.
        unsafe { Pin::new_unchecked(&mut this.future) }.poll(cx)
    }
}

impl<F> fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scoped")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

struct Live {
    recorder: Recorder,
    id: OperationId,
}

/// One operation in flight: its handle tells the recorder how it ends. Inert (every method
/// does nothing) when no recorder is installed.
///
/// End it with [`complete`](Self::complete), [`cancelled`](Self::cancelled),
/// [`failed`](Self::failed) or [`end_with`](Self::end_with); dropped before that, it ends
/// [`Abandoned`](OperationOutcome::Abandoned) (its future was dropped).
///
/// An integration crate adds itself in a few lines:
///
/// ```
/// use gracefully::operation::{Operation, OperationKind};
/// use gracefully::{CancellationToken, Cancelled};
///
/// async fn publish(token: &CancellationToken, subject: &str) -> Result<(), Cancelled> {
///     // A child of whatever runs now (the request being served), if a registry records.
///     let op = Operation::begin(OperationKind::Outbound, subject, token.deadline());
///     let result = token.run_until_cancelled(async { /* the work */ }).await;
///     op.end_with(&result);
///     result
/// }
/// ```
#[must_use = "an operation ends (Abandoned) when its handle is dropped"]
pub struct Operation {
    /// `None`: inert (no recorder), or already ended.
    live: Option<Live>,
}

impl Operation {
    /// An inert operation: records nothing.
    #[inline]
    pub const fn none() -> Operation {
        Operation { live: None }
    }

    /// Begins an operation under the [current scope](OperationScope::current); inert if
    /// there is none (no registry, or code outside any recorded operation).
    #[inline]
    pub fn begin(kind: OperationKind, name: &str, deadline: Option<Instant>) -> Operation {
        match glance() {
            Glance::None => return Operation::none(),
            Glance::Static(recorder, parent) => {
                return begin_in(Recorder::Static(recorder), parent, kind, name, deadline);
            }
            Glance::Shared => {}
        }
        CURRENT.with(|current| {
            let scope = current.take();
            let op = match &scope {
                Some(scope) => scope.begin(kind, name, deadline),
                None => Operation::none(),
            };
            current.set(scope);
            op
        })
    }

    /// Whether a recorder records this operation.
    #[inline]
    pub fn is_recording(&self) -> bool {
        self.live.is_some()
    }

    /// Its id in its recorder (`None` if inert).
    pub fn id(&self) -> Option<OperationId> {
        self.live.as_ref().map(|live| live.id)
    }

    /// The scope of its children (`None` if inert).
    pub fn scope(&self) -> Option<OperationScope> {
        self.live.as_ref().map(|live| OperationScope {
            recorder: live.recorder.clone(),
            parent: Some(live.id),
        })
    }

    /// `future`, polled with this operation's [scope](Self::scope) current: what it begins
    /// runs under this operation. If inert, `future` is polled as it is (no thread-local is
    /// touched).
    #[inline]
    pub fn scoped<F: Future>(&self, future: F) -> Scoped<F> {
        Scoped {
            future,
            scope: self.scope(),
        }
    }

    /// Gives it a better name (an HTTP request's matched route).
    pub fn rename(&self, name: &str) {
        if let Some(live) = &self.live {
            live.recorder.get().rename(live.id, name);
        }
    }

    /// Records its deadline, once known (`token.deadline()`).
    pub fn set_deadline(&self, deadline: Option<Instant>) {
        if let Some(live) = &self.live {
            live.recorder.get().set_deadline(live.id, deadline);
        }
    }

    /// Ends it with `outcome`.
    #[inline]
    pub fn end(self, outcome: OperationOutcome) {
        // Ended here, so its `Drop` (which would end it `Abandoned`) has nothing to do: skip
        // it (after `finish` the handle holds nothing to free).
        let mut this = ManuallyDrop::new(self);
        this.finish(outcome);
    }

    /// Ends it: it did its work.
    #[inline]
    pub fn complete(self) {
        self.end(OperationOutcome::Completed);
    }

    /// Ends it: it stopped because of `reason`.
    pub fn cancelled(self, reason: Reason) {
        self.end(OperationOutcome::Cancelled(reason));
    }

    /// Ends it: it failed with `message`.
    pub fn failed(self, message: impl fmt::Display) {
        if self.live.is_some() {
            self.end(OperationOutcome::Failed(Cow::Owned(message.to_string())));
        }
    }

    /// Ends it with the outcome `result` stands for ([`OperationOutcome::of`]).
    #[inline]
    pub fn end_with<T, E: Error + 'static>(self, result: &Result<T, E>) {
        if self.live.is_some() {
            self.end(OperationOutcome::of(result));
        }
    }

    #[inline]
    fn finish(&mut self, outcome: OperationOutcome) {
        // Read in place, then cleared: `take()` would copy the whole handle out first (a
        // wide load of what `begin` has just stored, which the CPU cannot forward).
        if let Some(live) = &self.live {
            live.recorder.get().end(live.id, outcome);
            self.live = None;
        }
    }
}

impl Drop for Operation {
    #[inline]
    fn drop(&mut self) {
        self.finish(OperationOutcome::Abandoned);
    }
}

impl fmt::Debug for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operation").field("id", &self.id()).finish()
    }
}

impl Default for Operation {
    fn default() -> Self {
        Operation::none()
    }
}
