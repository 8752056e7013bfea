//! The abort phase on real runtimes (current-thread and multi-thread), with `run` spawned
//! as the crate's docs show (`tokio::spawn(host.run())`): what it does with stragglers
//! whose destructors block, and what it counts as aborted.
//!
//! Real time: the point is what a blocked thread does. Each runtime runs on a thread of
//! its own, so the test thread can notice a `run` that never returns (and unblock it)
//! instead of hanging.

use std::future::pending;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use gracefully::Reason;
use gracefully_host::{Host, Outcome, ShutdownReport, service_fn};
use tokio::runtime::{Builder, Runtime};

#[derive(Clone, Copy, Debug)]
enum Flavor {
    CurrentThread,
    MultiThread,
}

fn runtime(flavor: Flavor) -> Runtime {
    match flavor {
        Flavor::CurrentThread => Builder::new_current_thread().enable_all().build(),
        Flavor::MultiThread => Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build(),
    }
    .expect("tokio runtime")
}

/// Runs `body` on a fresh runtime of `flavor` on its own thread and returns its result;
/// if none comes within `limit`, calls `unstick` (so the thread can finish) and panics
/// with `stuck`.
fn on_runtime<T: Send + 'static>(
    flavor: Flavor,
    limit: Duration,
    unstick: impl FnOnce(),
    stuck: &str,
    body: impl AsyncFnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let value = runtime(flavor).block_on(body());
        let _ = tx.send(value);
    });
    match rx.recv_timeout(limit) {
        Ok(value) => {
            runner.join().expect("the runtime thread ends");
            value
        }
        Err(_) => {
            unstick();
            panic!("{flavor:?}: {stuck}");
        }
    }
}

/// Held by a straggler: its destructor blocks its thread until the test opens the gate,
/// like a destructor that joins a thread or flushes to a dead disk. Counts destructors
/// that have finished.
#[derive(Clone, Default)]
struct Gate {
    state: Arc<(Mutex<bool>, Condvar)>,
    finished: Arc<AtomicUsize>,
}

impl Gate {
    fn open(&self) {
        let (open, changed) = &*self.state;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }

    fn finished_drops(&self) -> usize {
        self.finished.load(Ordering::SeqCst)
    }

    fn guard(&self) -> BlocksInDrop {
        BlocksInDrop(self.clone())
    }
}

struct BlocksInDrop(Gate);

impl Drop for BlocksInDrop {
    fn drop(&mut self) {
        let (open, changed) = &*self.0.state;
        let guard = open.lock().unwrap();
        // Bounded only so a broken test cannot keep the process alive for good.
        let _unused = changed
            .wait_timeout_while(guard, Duration::from_secs(120), |open| !*open)
            .unwrap();
        self.0.finished.fetch_add(1, Ordering::SeqCst);
    }
}

/// A host with one service and one tracked task that ignore every token and whose
/// destructors block until the gate opens; stopped once ready. Returns the report and how
/// many of the two destructors had finished when `run` returned.
async fn run_with_blocking_stragglers(gate: Gate) -> (ShutdownReport, usize) {
    let in_service = gate.clone();
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_millis(300))
        .cancel_grace(Duration::from_millis(100))
        .service(
            "stuck-service",
            service_fn(move |_stopping, _cx| {
                let guard = in_service.guard();
                async move {
                    let _guard = guard;
                    pending::<()>().await;
                }
            }),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let guard = gate.guard();
    lifetime.spawn("stuck-task", async move {
        let _guard = guard;
        pending::<()>().await;
    });
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    lifetime.stop(Reason::shutdown().with_message("test"));
    let report = run.await.expect("run does not panic");
    (report, gate.finished_drops())
}

fn a_straggler_whose_destructor_never_returns_does_not_hold_up_run(flavor: Flavor) {
    let gate = Gate::default();
    let in_body = gate.clone();
    let unstick = gate.clone();
    let (report, finished_when_run_returned) = on_runtime(
        flavor,
        Duration::from_secs(20),
        move || unstick.open(),
        "run did not return while an aborted future's destructor blocked",
        async move || run_with_blocking_stragglers(in_body).await,
    );
    gate.open();

    assert_eq!(
        finished_when_run_returned, 0,
        "run returned while both destructors were still blocked"
    );
    for name in ["stuck-service", "stuck-task"] {
        let row = report.entry(name).unwrap();
        assert_eq!(row.outcome(), &Outcome::Aborted, "{report}");
        assert_eq!(row.still_dropping(), 1, "{report}");
    }
    let table = report.to_string();
    assert_eq!(table.matches("still dropping").count(), 2, "{table}");
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED, "{report}");
}

// Issue 9, item 1.
#[test]
fn current_thread_a_straggler_whose_destructor_never_returns_does_not_hold_up_run() {
    a_straggler_whose_destructor_never_returns_does_not_hold_up_run(Flavor::CurrentThread);
}

// Issue 9, item 1.
#[test]
fn multi_thread_a_straggler_whose_destructor_never_returns_does_not_hold_up_run() {
    a_straggler_whose_destructor_never_returns_does_not_hold_up_run(Flavor::MultiThread);
}

/// Three services and ten tracked tasks that all end as soon as they are told to, on a
/// host whose drain and cancel budgets are zero (the pre-stop delay is the whole timeout).
fn with_zero_budgets_work_that_stops_when_polled_is_not_aborted(flavor: Flavor) {
    let report = on_runtime(
        flavor,
        Duration::from_secs(20),
        || {},
        "run did not return",
        async move || {
            let honouring = || {
                service_fn(|stopping, _cx| async move {
                    stopping.cancelled().await;
                })
            };
            let host = Host::builder()
                .handle_signals(false)
                .shutdown_timeout(Duration::from_millis(200))
                .pre_stop_delay(Duration::from_millis(200))
                .cancel_grace(Duration::ZERO)
                .service("a", honouring())
                .service("b", honouring())
                .service("c", honouring())
                .build()
                .unwrap();
            let lifetime = host.lifetime();
            for _ in 0..10 {
                let stopping = lifetime.stopping();
                lifetime.spawn("idle", async move {
                    stopping.cancelled().await;
                });
            }
            let run = tokio::spawn(host.run());
            lifetime.started().cancelled().await;
            lifetime.stop(Reason::shutdown());
            run.await.expect("run does not panic")
        },
    );
    for row in report.entries() {
        assert_ne!(row.outcome(), &Outcome::Aborted, "{report}");
    }
    assert_eq!(report.exit_code(), 0, "{report}");
}

// Issue 9, item 5.
#[test]
fn current_thread_with_zero_budgets_work_that_stops_when_polled_is_not_aborted() {
    with_zero_budgets_work_that_stops_when_polled_is_not_aborted(Flavor::CurrentThread);
}

// Issue 9, item 5.
#[test]
fn multi_thread_with_zero_budgets_work_that_stops_when_polled_is_not_aborted() {
    with_zero_budgets_work_that_stops_when_polled_is_not_aborted(Flavor::MultiThread);
}

/// Holds nothing but needs the runtime when it is dropped, as a pooled database connection
/// does (it returns itself to its pool with `tokio::spawn`).
struct SpawnsInDrop(Arc<AtomicUsize>);

impl Drop for SpawnsInDrop {
    fn drop(&mut self) {
        // Panics ("must be called from the context of a Tokio runtime") if there is none.
        drop(tokio::spawn(async {}));
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Aborted work whose destructor spawns on the runtime (a pooled database connection held
/// by a service that ignored its token) is dropped in the runtime's context: no panic in
/// the dropper's thread, and the report says aborted, not panicked.
fn aborted_work_whose_destructor_spawns_is_dropped_without_a_panic(flavor: Flavor) {
    let dropped = Arc::new(AtomicUsize::new(0));
    let (in_service, in_task) = (Arc::clone(&dropped), Arc::clone(&dropped));
    let report = on_runtime(
        flavor,
        Duration::from_secs(20),
        || {},
        "run did not return",
        async move || {
            let host = Host::builder()
                .handle_signals(false)
                .shutdown_timeout(Duration::from_millis(300))
                .cancel_grace(Duration::from_millis(100))
                .service(
                    "holds-a-connection",
                    service_fn(move |_stopping, _cx| {
                        let held = SpawnsInDrop(Arc::clone(&in_service));
                        async move {
                            let _held = held;
                            pending::<()>().await;
                        }
                    }),
                )
                .build()
                .unwrap();
            let lifetime = host.lifetime();
            let held = SpawnsInDrop(in_task);
            lifetime.spawn("holds-a-connection-too", async move {
                let _held = held;
                pending::<()>().await;
            });
            let run = tokio::spawn(host.run());
            lifetime.started().cancelled().await;
            lifetime.stop(Reason::shutdown().with_message("test"));
            run.await.expect("run does not panic")
        },
    );
    // The dropper's thread drops them right after `run` returned, or just before.
    let waited = std::time::Instant::now();
    while dropped.load(Ordering::SeqCst) < 2 {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the destructors did not complete (they panicked?)"
        );
        thread::sleep(Duration::from_millis(5));
    }
    for name in ["holds-a-connection", "holds-a-connection-too"] {
        assert_eq!(
            report.entry(name).unwrap().outcome(),
            &Outcome::Aborted,
            "{report}"
        );
    }
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED, "{report}");
}

#[test]
fn current_thread_aborted_work_whose_destructor_spawns_is_dropped_without_a_panic() {
    aborted_work_whose_destructor_spawns_is_dropped_without_a_panic(Flavor::CurrentThread);
}

#[test]
fn multi_thread_aborted_work_whose_destructor_spawns_is_dropped_without_a_panic() {
    aborted_work_whose_destructor_spawns_is_dropped_without_a_panic(Flavor::MultiThread);
}
