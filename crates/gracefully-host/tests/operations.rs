//! The operations registry: a bounded list of finished operations, parent links through
//! scopes, services and tracked tasks, and reasons that keep their origin.

use std::time::{Duration, Instant};

use gracefully::operation::{Operation, OperationKind};
use gracefully::{Cancelled, Reason, ReasonKind};
use gracefully_host::{Host, Operations, service_fn};

#[test]
fn the_finished_list_keeps_only_the_newest_n() {
    let operations = Operations::keeping(3);
    let scope = operations.scope();
    for i in 0..10 {
        scope
            .begin(OperationKind::Query, &format!("q{i}"), None)
            .complete();
    }
    let snapshot = operations.snapshot();
    let names: Vec<&str> = snapshot
        .finished
        .iter()
        .map(|f| f.operation.name.as_str())
        .collect();
    assert_eq!(names, ["q9", "q8", "q7"], "newest first, at most 3");
    assert!(snapshot.live.is_empty());
    assert_eq!(snapshot.started_total, 10);
}

#[test]
fn keeping_none_still_shows_live_operations() {
    let operations = Operations::keeping(0);
    let op = operations.scope().begin(OperationKind::Job, "email", None);
    assert_eq!(operations.snapshot().live.len(), 1);
    op.complete();
    let snapshot = operations.snapshot();
    assert!(snapshot.live.is_empty() && snapshot.finished.is_empty());
}

#[test]
fn live_operations_carry_their_deadline_and_new_name_and_leave_when_they_end() {
    let operations = Operations::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    let op = operations
        .scope()
        .begin(OperationKind::Request, "GET /orders/42", None);
    op.rename("GET /orders/{id}");
    op.set_deadline(Some(deadline));
    let live = &operations.snapshot().live[0];
    assert_eq!(live.name, "GET /orders/{id}");
    assert_eq!(live.deadline, Some(deadline));
    assert_eq!(live.kind, OperationKind::Request);
    let id = op.id();
    op.complete();
    let snapshot = operations.snapshot();
    assert!(snapshot.live.is_empty());
    assert_eq!(Some(snapshot.finished[0].operation.id), id);
    assert_eq!(snapshot.finished[0].outcome.as_str(), "completed");
}

#[test]
fn ids_stay_unique_when_slots_are_reused() {
    let operations = Operations::new();
    let scope = operations.scope();
    let first = scope.begin(OperationKind::Task, "a", None);
    let first_id = first.id().unwrap();
    first.complete();
    let second = scope.begin(OperationKind::Task, "b", None);
    assert_ne!(second.id().unwrap(), first_id);
    // A stale id changes nothing: the slot's new occupant keeps its name.
    operations
        .scope()
        .begin(OperationKind::Task, "c", None)
        .complete();
    second.rename("b2");
    assert_eq!(operations.snapshot().live[0].name, "b2");
}

#[tokio::test]
async fn a_cancelled_operation_keeps_its_reason_and_origin() {
    let operations = Operations::new();
    let request = operations
        .scope()
        .begin(OperationKind::Request, "GET /slow", None);
    let source = gracefully::CancellationSource::new();
    let line = line!() + 1;
    source.cancel_with(Reason::disconnected().with_message("client went away"));
    let result: Result<(), Cancelled> = source.token().check();
    request.end_with(&result);
    let snapshot = operations.snapshot();
    let reason = snapshot.finished[0].reason().expect("cancelled");
    assert_eq!(reason.kind(), ReasonKind::Disconnected);
    assert_eq!(reason.message(), Some("client went away"));
    assert!(reason.origin().file().ends_with("operations.rs"));
    assert_eq!(reason.origin().line(), line);
}

#[tokio::test]
async fn children_link_to_the_operation_they_run_under() {
    let operations = Operations::new();
    let request = operations
        .scope()
        .begin(OperationKind::Request, "GET /", None);
    request
        .scoped(async {
            let query = Operation::begin(OperationKind::Query, "orders.list", None);
            query
                .scoped(async {
                    Operation::begin(OperationKind::Outbound, "GET /stock", None).complete()
                })
                .await;
            query.complete();
        })
        .await;
    request.complete();
    let snapshot = operations.snapshot();
    let by_name = |n: &str| {
        snapshot
            .finished
            .iter()
            .find(|f| f.operation.name == n)
            .unwrap()
            .operation
            .clone()
    };
    let (req, query, call) = (
        by_name("GET /"),
        by_name("orders.list"),
        by_name("GET /stock"),
    );
    assert_eq!(req.parent, None);
    assert_eq!(query.parent, Some(req.id));
    assert_eq!(call.parent, Some(query.id));
}

#[tokio::test]
async fn services_and_tracked_tasks_register_with_the_hosts_registry() {
    let operations = Operations::new();
    let host = Host::builder()
        .handle_signals(false)
        .operations(operations.clone())
        .service(
            "worker",
            service_fn(|stopping, cx| async move {
                // Begun inside the service: its child.
                Operation::begin(OperationKind::Job, "nightly", None).complete();
                // A tracked task spawned by the service: its child too, cancelled at hard stop.
                let hard_stop = cx.hard_stop();
                cx.spawn("flush", async move {
                    let reason = hard_stop.cancelled().await;
                    Err::<(), _>(Cancelled::new(reason))
                });
                stopping.cancelled().await;
            }),
        )
        .shutdown_timeout(Duration::from_secs(2))
        .cancel_grace(Duration::from_secs(1))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    // Wait until the task runs (it is spawned by the service after it started).
    for _ in 0..200 {
        if operations.snapshot().live.iter().any(|o| o.name == "flush") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let live = operations.snapshot().live;
    let service = live
        .iter()
        .find(|o| o.name == "worker")
        .expect("service live");
    assert_eq!(service.kind, OperationKind::Service);
    let task = live.iter().find(|o| o.name == "flush").expect("task live");
    assert_eq!(task.kind, OperationKind::Task);
    assert_eq!(task.parent, Some(service.id));

    lifetime.stop(Reason::shutdown().with_message("test"));
    let report = run.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let snapshot = operations.snapshot();
    assert!(snapshot.live.is_empty(), "{:?}", snapshot.live);
    let job = snapshot
        .finished
        .iter()
        .find(|f| f.operation.name == "nightly")
        .unwrap();
    assert_eq!(job.operation.parent, Some(service.id));
    let flush = snapshot
        .finished
        .iter()
        .find(|f| f.operation.name == "flush")
        .unwrap();
    assert_eq!(flush.reason().map(Reason::kind), Some(ReasonKind::Shutdown));
    let worker = snapshot
        .finished
        .iter()
        .find(|f| f.operation.name == "worker")
        .unwrap();
    assert_eq!(worker.outcome.as_str(), "completed");
}

/// A `metrics` recorder that keeps each counter's last absolute value by its full key.
#[derive(Default)]
struct Counters(std::sync::Mutex<std::collections::HashMap<String, u64>>);

struct CounterCell(std::sync::Arc<Counters>, String);

impl metrics::CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        *(self.0)
            .0
            .lock()
            .unwrap()
            .entry(self.1.clone())
            .or_default() += value;
    }
    fn absolute(&self, value: u64) {
        (self.0).0.lock().unwrap().insert(self.1.clone(), value);
    }
}

struct Recorder(std::sync::Arc<Counters>);

impl metrics::Recorder for Recorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        metrics::Counter::from_arc(std::sync::Arc::new(CounterCell(self.0.clone(), name)))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn cancellations_under_made_up_names_are_counted_in_bounded_series() {
    let operations = Operations::new();
    let scope = operations.scope();
    // A client cancelling requests to 10,000 different paths (no route names them).
    const PATHS: usize = 10_000;
    for i in 0..PATHS {
        scope
            .begin(OperationKind::Request, &format!("GET /made-up/{i}"), None)
            .cancelled(Reason::disconnected());
    }
    // And one real route, cancelled after the bound was reached: still counted.
    scope
        .begin(OperationKind::Request, "GET /orders/{id}", None)
        .cancelled(Reason::disconnected());
    let counters = std::sync::Arc::new(Counters::default());
    metrics::with_local_recorder(&Recorder(counters.clone()), || operations.export_metrics());
    let counters = counters.0.lock().unwrap();
    let series: Vec<(&String, &u64)> = counters
        .iter()
        .filter(|(k, _)| k.starts_with("gracefully_cancellations_total"))
        .collect();
    // This test runs on one thread, so everything lands in one shard.
    assert!(
        series.len() <= gracefully_host::CANCELLATION_SERIES + 1,
        "{} series",
        series.len()
    );
    let total: u64 = series.iter().map(|(_, n)| **n).sum();
    assert_eq!(total, PATHS as u64 + 1, "no cancellation goes uncounted");
    let other = format!(
        "gracefully_cancellations_total{{kind=request,name={},reason=disconnected}}",
        gracefully_host::OTHER_NAME
    );
    assert_eq!(
        counters.get(&other),
        Some(&(PATHS as u64 + 1 - gracefully_host::CANCELLATION_SERIES as u64)),
        "{series:?}"
    );
    assert_eq!(
        counters.get("gracefully_operations_ended_total{kind=request,outcome=cancelled}"),
        Some(&(PATHS as u64 + 1))
    );
}

#[test]
fn dropping_the_last_handle_releases_what_the_registry_recorded() {
    use std::sync::atomic::Ordering;

    let operations = Operations::new();
    let other_handle = operations.clone();
    let scope = operations.scope();
    let running = scope.begin(OperationKind::Job, "still running", None);
    let dropped = cancel_with_flag(&scope, "cancelled");

    drop(operations);
    assert!(
        !dropped.load(Ordering::SeqCst),
        "another handle still holds it"
    );
    let snapshot = other_handle.snapshot();
    assert_eq!(snapshot.finished.len(), 1);
    assert_eq!(snapshot.live.len(), 1);
    drop(snapshot);

    drop(other_handle);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the finished operation's reason is released with the last handle"
    );
    // What still runs ends normally, and a scope still held keeps working; neither panics,
    // and ids stay unique.
    let late = scope.begin(OperationKind::Query, "late", None);
    assert_ne!(late.id(), running.id());
    late.rename("renamed");
    late.set_deadline(Some(Instant::now()));
    late.complete();
    running.complete();
}

/// A source that sets its flag when dropped.
#[derive(Debug)]
struct DropFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl std::fmt::Display for DropFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("drop flag")
    }
}

impl std::error::Error for DropFlag {}

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

fn cancel_with_flag(
    scope: &gracefully::operation::OperationScope,
    name: &str,
) -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    scope
        .begin(OperationKind::Query, name, None)
        .cancelled(Reason::requested().with_source(DropFlag(std::sync::Arc::clone(&flag))));
    flag
}

#[test]
fn an_evicted_or_unkept_outcome_is_dropped_at_once() {
    use std::sync::atomic::Ordering;
    // Kept none: the reason is not held at all.
    let none = Operations::keeping(0);
    let flag = cancel_with_flag(&none.scope(), "unkept");
    assert!(flag.load(Ordering::SeqCst), "keeping(0) holds no reason");

    // Kept one: the reason goes when a newer operation takes its place in the list, not
    // when its slot is next taken.
    let one = Operations::keeping(1);
    let scope = one.scope();
    let flag = cancel_with_flag(&scope, "evicted");
    assert!(!flag.load(Ordering::SeqCst), "still the last finished");
    scope.begin(OperationKind::Query, "newer", None).complete();
    assert!(
        flag.load(Ordering::SeqCst),
        "evicted from the list: released"
    );
    assert_eq!(one.snapshot().finished[0].operation.name, "newer");
}

#[test]
fn ids_stay_unique_across_the_release_of_the_last_handle() {
    use std::collections::HashSet;
    let operations = Operations::keeping(4);
    let scope = operations.scope();
    let mut ids = HashSet::new();
    for i in 0..10 {
        let op = scope.begin(OperationKind::Query, &format!("q{i}"), None);
        assert!(ids.insert(op.id()));
        op.complete();
    }
    drop(operations); // nothing live: every shard's slab goes
    for i in 0..10 {
        let op = scope.begin(OperationKind::Query, &format!("after{i}"), None);
        assert!(
            ids.insert(op.id()),
            "an id given out before the release came back"
        );
        op.complete();
    }
}
