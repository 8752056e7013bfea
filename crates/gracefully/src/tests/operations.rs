//! The operation interface: scopes, parents, outcomes, and an inert handle without a recorder.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use crate::operation::{
    Operation, OperationId, OperationKind, OperationOutcome, OperationRecorder, OperationScope,
    OperationStart,
};
use crate::{CancellationSource, Cancelled, Reason, ReasonKind};

#[derive(Default)]
struct Log {
    next: AtomicU64,
    rows: Mutex<Vec<Row>>,
}

#[derive(Clone, Debug)]
struct Row {
    id: u64,
    kind: OperationKind,
    name: String,
    parent: Option<u64>,
    outcome: Option<String>,
    reason: Option<ReasonKind>,
}

impl OperationRecorder for Log {
    fn begin(&self, start: &OperationStart<'_>) -> OperationId {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.rows.lock().unwrap().push(Row {
            id,
            kind: start.kind,
            name: start.name.to_owned(),
            parent: start.parent.map(OperationId::get),
            outcome: None,
            reason: None,
        });
        OperationId::new(id).unwrap()
    }

    fn rename(&self, id: OperationId, name: &str) {
        self.row(id, |r| r.name = name.to_owned());
    }

    fn end(&self, id: OperationId, outcome: OperationOutcome) {
        self.row(id, |r| {
            assert!(r.outcome.is_none(), "operation {} ended twice", r.id);
            r.outcome = Some(outcome.as_str().to_owned());
            if let OperationOutcome::Cancelled(reason) = &outcome {
                r.reason = Some(reason.kind());
            }
        });
    }
}

impl Log {
    fn row(&self, id: OperationId, f: impl FnOnce(&mut Row)) {
        let mut rows = self.rows.lock().unwrap();
        f(rows.iter_mut().find(|r| r.id == id.get()).unwrap());
    }

    fn rows(&self) -> Vec<Row> {
        self.rows.lock().unwrap().clone()
    }
}

fn poll_once<F: Future>(future: F) -> Poll<F::Output> {
    let mut future = pin!(future);
    future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn without_a_recorder_an_operation_is_inert() {
    assert!(OperationScope::current().is_none());
    let op = Operation::begin(OperationKind::Query, "q", None);
    assert!(!op.is_recording());
    assert_eq!(op.id(), None);
    assert!(op.scope().is_none());
    op.rename("r");
    op.complete();
}

#[test]
fn operations_begun_inside_a_scoped_future_are_children_of_its_operation() {
    let log = Arc::new(Log::default());
    let request = OperationScope::new(log.clone()).begin(OperationKind::Request, "GET /", None);
    let inner = request.scoped(async {
        let query = Operation::begin(OperationKind::Query, "orders.list", None);
        let nested = query.scoped(async {
            Operation::begin(OperationKind::Outbound, "GET http://x", None).complete();
        });
        let _ = poll_once(nested);
        query.complete();
    });
    assert!(poll_once(inner).is_ready());
    // Outside the scoped future, nothing is current again.
    assert!(OperationScope::current().is_none());
    request.complete();
    let rows = log.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].parent, None);
    assert_eq!(rows[1].parent, Some(rows[0].id));
    assert_eq!(rows[1].kind, OperationKind::Query);
    assert_eq!(rows[2].parent, Some(rows[1].id));
    assert!(
        rows.iter()
            .all(|r| r.outcome.as_deref() == Some("completed"))
    );
}

#[test]
fn a_dropped_operation_ends_abandoned_once() {
    let log = Arc::new(Log::default());
    let scope = OperationScope::new(log.clone());
    drop(scope.begin(OperationKind::Task, "t", None));
    let op = scope.begin(OperationKind::Task, "u", None);
    op.complete(); // ends once: the drop inside `complete` records nothing more
    let rows = log.rows();
    assert_eq!(rows[0].outcome.as_deref(), Some("abandoned"));
    assert_eq!(rows[1].outcome.as_deref(), Some("completed"));
}

#[test]
fn end_with_tells_a_cancellation_from_a_failure() {
    let log = Arc::new(Log::default());
    let scope = OperationScope::new(log.clone());
    let source = CancellationSource::new();
    source.cancel_with(Reason::disconnected());
    let cancelled: Result<(), Cancelled> = source.token().check();
    scope
        .begin(OperationKind::Request, "a", None)
        .end_with(&cancelled);
    let failed: Result<(), std::io::Error> = Err(std::io::Error::other("disk full"));
    scope
        .begin(OperationKind::Query, "b", None)
        .end_with(&failed);
    let rows = log.rows();
    assert_eq!(rows[0].outcome.as_deref(), Some("cancelled"));
    assert_eq!(rows[0].reason, Some(ReasonKind::Disconnected));
    assert_eq!(rows[1].outcome.as_deref(), Some("failed"));
}

#[test]
fn the_previous_scope_is_restored_after_a_panicking_poll() {
    let log = Arc::new(Log::default());
    let outer = OperationScope::new(log.clone()).begin(OperationKind::Request, "outer", None);
    let outer_id = outer.id();
    outer.scope().unwrap().enter(|| {
        let inner = outer
            .scope()
            .unwrap()
            .begin(OperationKind::Task, "inner", None);
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = poll_once(inner.scoped(async { panic!("deliberate: the handler panics") }));
        }));
        assert!(panicked.is_err());
        assert_eq!(OperationScope::current().unwrap().parent(), outer_id);
        inner.complete();
    });
    assert!(OperationScope::current().is_none());
}

#[test]
fn a_scope_moves_with_its_future_between_polls() {
    let log = Arc::new(Log::default());
    let op = OperationScope::new(log.clone()).begin(OperationKind::Service, "svc", None);
    let mut yielded = false;
    let future = op.scoped(std::future::poll_fn(move |cx| {
        if !yielded {
            yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(OperationScope::current().and_then(|s| s.parent()))
    }));
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(future.as_mut().poll(&mut cx).is_pending());
    assert!(OperationScope::current().is_none());
    assert_eq!(future.as_mut().poll(&mut cx), Poll::Ready(op.id()));
    op.rename("renamed");
    drop(op);
    assert_eq!(log.rows()[0].name, "renamed");
}
