//! The shutdown sequence, phase by phase, on tokio's paused clock: 30-second budgets run
//! instantly and timings are exact.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracefully::{CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_host::{
    BackgroundService, BoxError, EntryKind, FailurePolicy, Host, HostBuilder, Outcome, Phase,
    RestartPolicy, ServiceContext, ServiceOptions, ShutdownReport, service_fn,
};
use tokio::time::{Instant, sleep};

fn host() -> HostBuilder {
    Host::builder().handle_signals(false)
}

/// Runs `host`, stops it with `reason` once it is ready, and returns the report.
async fn run_and_stop(host: Host, reason: Reason) -> ShutdownReport {
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    lifetime.stop(reason);
    run.await.expect("run does not panic")
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// A service that ends as soon as its stopping token fires.
fn honouring() -> impl BackgroundService {
    service_fn(|stopping, _cx| async move {
        stopping.cancelled().await;
    })
}

/// A service that ignores every token.
fn stubborn() -> impl BackgroundService {
    service_fn(|_stopping, _cx| std::future::pending::<()>())
}

#[tokio::test(start_paused = true)]
async fn services_honouring_their_token_end_in_the_drain_and_the_exit_code_is_zero() {
    let host = host()
        .service("a", honouring())
        .service("b", honouring())
        .build()
        .unwrap();
    let report = run_and_stop(host, Reason::shutdown().with_message("test")).await;

    assert_eq!(report.exit_code(), 0);
    assert!(report.is_clean());
    assert_eq!(report.services().count(), 2);
    for service in report.services() {
        assert_eq!(service.phase(), Phase::Drain, "{report}");
        assert_eq!(service.outcome(), &Outcome::Completed);
        assert_eq!(service.elapsed(), Some(Duration::ZERO)); // the paused clock did not move
    }
    assert_eq!(report.phase_started(Phase::Cancel), None);
    assert_eq!(report.phase_started(Phase::Abort), None);
    assert_eq!(report.trigger().message(), Some("test"));
}

#[tokio::test(start_paused = true)]
async fn a_service_that_ignores_stopping_is_cancelled_when_the_drain_budget_is_spent() {
    // Ignores its stopping token, but honours the hard stop.
    let lazy = service_fn(|_stopping, cx: ServiceContext| async move {
        let reason = cx.hard_stop().cancelled().await;
        Err::<(), _>(Cancelled::new(reason))
    });
    let host = host()
        .shutdown_timeout(secs(30.0))
        .cancel_grace(secs(5.0))
        .service("lazy", lazy)
        .build()
        .unwrap();
    let report = run_and_stop(host, Reason::shutdown()).await;

    let lazy = report.entry("lazy").unwrap();
    assert_eq!(lazy.phase(), Phase::Cancel, "{report}");
    assert_eq!(lazy.outcome(), &Outcome::Cancelled);
    assert_eq!(lazy.elapsed(), Some(secs(25.0)));
    assert_eq!(report.phase_started(Phase::Cancel), Some(secs(25.0)));
    assert_eq!(report.exit_code(), 0, "cancelled cooperatively is clean");
}

#[tokio::test(start_paused = true)]
async fn a_straggler_is_aborted_at_the_shutdown_timeout_and_named_with_exit_code_2() {
    let host = host()
        .shutdown_timeout(secs(30.0))
        .service("polite", honouring())
        .service("stubborn", stubborn())
        .build()
        .unwrap();
    let started = Instant::now();
    let report = run_and_stop(host, Reason::shutdown()).await;

    let stubborn = report.entry("stubborn").unwrap();
    assert_eq!(stubborn.phase(), Phase::Abort);
    assert_eq!(stubborn.outcome(), &Outcome::Aborted);
    assert_eq!(stubborn.elapsed(), Some(secs(30.0)));
    // The polite one is stopped after the stubborn one (reverse order), which never ends:
    // it hears its token only at the abort, and stops there, not aborted (it stops the
    // moment it is polled).
    let polite = report.entry("polite").unwrap();
    assert_eq!(polite.phase(), Phase::Abort);
    assert_eq!(polite.outcome(), &Outcome::Completed);
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED);
    assert_eq!(report.total(), secs(30.0));
    assert_eq!(started.elapsed(), secs(30.0));
    let table = report.to_string();
    assert!(
        table.contains("stubborn") && table.contains("aborted"),
        "{table}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_pre_stop_delay_fails_readiness_at_once_and_postpones_the_drain() {
    let host = host()
        .shutdown_timeout(secs(30.0))
        .cancel_grace(secs(5.0))
        .pre_stop_delay(secs(10.0))
        .service("stubborn", stubborn())
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    assert!(lifetime.is_ready());

    lifetime.stop(Reason::shutdown());
    assert!(
        !lifetime.is_ready(),
        "readiness fails the instant the stop is requested"
    );
    assert!(lifetime.stop_requested().is_cancelled());
    sleep(secs(9.9)).await;
    assert_eq!(lifetime.phase(), Phase::PreStop);
    assert!(
        !lifetime.stopping().is_cancelled(),
        "still in the pre-stop delay"
    );
    sleep(secs(0.2)).await;
    assert_eq!(lifetime.phase(), Phase::Drain);
    assert!(lifetime.stopping().is_cancelled());

    let report = run.await.unwrap();
    // The delay counts toward the timeout: drain at 10 s, cancel at 25 s, abort at 30 s.
    assert_eq!(report.phase_started(Phase::Drain), Some(secs(10.0)));
    assert_eq!(report.phase_started(Phase::Cancel), Some(secs(25.0)));
    assert_eq!(report.phase_started(Phase::Abort), Some(secs(30.0)));
    assert_eq!(lifetime.phase(), Phase::Stopped);
    assert!(lifetime.stopped().is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn lifecycle_states_and_tokens_follow_the_phases() {
    let host = host()
        .shutdown_timeout(secs(10.0))
        .cancel_grace(secs(4.0))
        .service("stubborn", stubborn())
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    assert_eq!(lifetime.phase(), Phase::Starting);
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    assert_eq!(lifetime.phase(), Phase::Running);
    lifetime.stop(Reason::shutdown());
    lifetime.stopping().cancelled().await;
    assert_eq!(lifetime.phase(), Phase::Drain);
    assert!(!lifetime.hard_stop().is_cancelled());
    let at = Instant::now();
    lifetime.hard_stop().cancelled().await;
    assert_eq!(at.elapsed(), secs(6.0));
    assert_eq!(lifetime.phase(), Phase::Cancel);
    run.await.unwrap();
    assert_eq!(lifetime.phase(), Phase::Stopped);
}

/// Records the instant its stopping token fired, then takes `linger` to stop.
fn recorder(
    log: &Arc<Mutex<Vec<(&'static str, Instant)>>>,
    name: &'static str,
    linger: f64,
) -> impl BackgroundService {
    let log = Arc::clone(log);
    service_fn(move |stopping, _cx| {
        let log = Arc::clone(&log);
        async move {
            stopping.cancelled().await;
            log.lock().unwrap().push((name, Instant::now()));
            sleep(secs(linger)).await;
        }
    })
}

#[tokio::test(start_paused = true)]
async fn services_are_stopped_in_reverse_registration_order_one_after_another() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let host = host()
        .service("a", recorder(&log, "a", 1.0))
        .service("b", recorder(&log, "b", 1.0))
        .service("c", recorder(&log, "c", 1.0))
        .build()
        .unwrap();
    let t0 = Instant::now();
    let report = run_and_stop(host, Reason::shutdown()).await;

    let log = log.lock().unwrap();
    let order: Vec<_> = log.iter().map(|(n, _)| *n).collect();
    assert_eq!(order, ["c", "b", "a"]);
    // Each is told to stop only once the one after it has ended.
    let told: Vec<Duration> = log.iter().map(|(_, at)| *at - t0).collect();
    assert_eq!(told, [secs(0.0), secs(1.0), secs(2.0)]);
    assert_eq!(report.entry("a").unwrap().elapsed(), Some(secs(3.0)));
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(start_paused = true)]
async fn declared_dependencies_start_first_and_stop_last() {
    let started = Arc::new(Mutex::new(Vec::new()));
    let stopped = Arc::new(Mutex::new(Vec::new()));
    struct Recorded {
        name: &'static str,
        start_takes: f64,
        started: Arc<Mutex<Vec<&'static str>>>,
        stopped: Arc<Mutex<Vec<(&'static str, Instant)>>>,
    }
    impl BackgroundService for Recorded {
        async fn start(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
            sleep(secs(self.start_takes)).await;
            self.started.lock().unwrap().push(self.name);
            Ok(())
        }
        async fn execute(
            &mut self,
            stopping: CancellationToken,
            _cx: &ServiceContext,
        ) -> Result<(), BoxError> {
            stopping.cancelled().await;
            self.stopped
                .lock()
                .unwrap()
                .push((self.name, Instant::now()));
            sleep(secs(1.0)).await;
            Ok(())
        }
    }
    let svc = |name, start_takes| Recorded {
        name,
        start_takes,
        started: Arc::clone(&started),
        stopped: Arc::clone(&stopped),
    };
    // Registered "api" first, but it depends on both others.
    let host = host()
        .service_with(
            "api",
            svc("api", 0.0),
            ServiceOptions::new().depends_on(["db", "cache"]),
        )
        .service_with(
            "db",
            svc("db", 2.0),
            ServiceOptions::new().depends_on(Vec::<&str>::new()),
        )
        .service_with(
            "cache",
            svc("cache", 1.0),
            ServiceOptions::new().depends_on(Vec::<&str>::new()),
        )
        .build()
        .unwrap();
    let t0 = Instant::now();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    assert_eq!(
        t0.elapsed(),
        secs(2.0),
        "ready when the slowest start step finished"
    );
    assert_eq!(*started.lock().unwrap(), ["cache", "db", "api"]);
    let t1 = Instant::now();
    lifetime.stop(Reason::shutdown());
    run.await.unwrap();

    let stopped = stopped.lock().unwrap();
    assert_eq!(stopped[0].0, "api");
    assert_eq!(stopped[0].1 - t1, secs(0.0));
    // db and cache (independent of each other) are both told once api has ended.
    let mut rest: Vec<_> = stopped[1..].iter().map(|(n, at)| (*n, *at - t1)).collect();
    rest.sort();
    assert_eq!(rest, [("cache", secs(1.0)), ("db", secs(1.0))]);
}

#[tokio::test(start_paused = true)]
async fn the_host_is_ready_only_when_every_start_step_has_finished() {
    struct SlowStart;
    impl BackgroundService for SlowStart {
        async fn start(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
            sleep(secs(10.0)).await;
            Ok(())
        }
    }
    let host = host()
        .service_with(
            "fast",
            honouring(),
            ServiceOptions::new().depends_on(Vec::<&str>::new()),
        )
        .service_with(
            "slow",
            SlowStart,
            ServiceOptions::new().depends_on(Vec::<&str>::new()),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    sleep(secs(9.0)).await;
    assert_eq!(lifetime.phase(), Phase::Starting);
    assert!(!lifetime.is_ready());
    assert!(!lifetime.started().is_cancelled());
    sleep(secs(1.1)).await;
    assert_eq!(lifetime.phase(), Phase::Running);
    assert!(lifetime.is_ready());
    lifetime.stop(Reason::shutdown());
    assert_eq!(run.await.unwrap().exit_code(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_start_step_past_its_timeout_stops_the_host_with_exit_code_1() {
    struct NeverStarts;
    impl BackgroundService for NeverStarts {
        async fn start(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
            std::future::pending().await
        }
    }
    let host = host()
        .startup_timeout(secs(5.0))
        .service("first", honouring())
        .service("never", NeverStarts)
        .service("after", honouring())
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let report = host.run().await;

    assert!(!lifetime.started().is_cancelled(), "never ready");
    let never = report.entry("never").unwrap();
    assert_eq!(
        never.outcome(),
        &Outcome::Failed("start step timed out after 5s".into())
    );
    assert_eq!(
        report.entry("after").unwrap().outcome(),
        &Outcome::Cancelled
    );
    assert_eq!(
        report.entry("after").unwrap().detail("note"),
        Some("not started: the host was already stopping")
    );
    assert_eq!(
        report.entry("first").unwrap().outcome(),
        &Outcome::Completed
    );
    assert_eq!(report.trigger().kind(), ReasonKind::Failed);
    assert_eq!(
        report.trigger().message(),
        Some("service 'never' could not start")
    );
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
}

#[tokio::test(start_paused = true)]
async fn a_failing_service_stops_the_host_and_the_report_carries_its_error() {
    let failing = service_fn(|_stopping, _cx| async move {
        sleep(secs(3.0)).await;
        Err::<(), BoxError>("the queue went away".into())
    });
    let host = host()
        .service("worker", honouring())
        .service("failing", failing)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let report = host.run().await;

    let failing = report.entry("failing").unwrap();
    assert_eq!(
        failing.outcome(),
        &Outcome::Failed("the queue went away".into())
    );
    assert_eq!(failing.phase(), Phase::Running);
    assert_eq!(report.entry("worker").unwrap().phase(), Phase::Drain);
    assert_eq!(report.trigger().kind(), ReasonKind::Failed);
    assert_eq!(report.trigger().message(), Some("service 'failing' failed"));
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
    // In-flight work still hears a *shutdown*, naming the failure.
    let hard = lifetime.hard_stop().reason().unwrap();
    assert_eq!(hard.kind(), ReasonKind::Shutdown);
    assert!(
        hard.message().unwrap().contains("the queue went away"),
        "{hard}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_service_is_a_failure_reported_with_its_message() {
    let host = host()
        .service(
            "boom",
            service_fn(|_s, _cx| async move {
                if true {
                    panic!("index out of range");
                }
            }),
        )
        .build()
        .unwrap();
    let report = host.run().await;
    assert_eq!(
        report.entry("boom").unwrap().outcome(),
        &Outcome::Failed("panicked: index out of range".into())
    );
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
}

#[tokio::test(start_paused = true)]
async fn an_ignored_failure_keeps_the_host_running_but_still_exits_non_zero() {
    let host = host()
        .service_with(
            "flaky",
            service_fn(|_s, _cx| async { Err::<(), BoxError>("nope".into()) }),
            ServiceOptions::new().on_failure(FailurePolicy::Ignore),
        )
        .service("steady", honouring())
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    sleep(secs(60.0)).await;
    assert_eq!(
        lifetime.phase(),
        Phase::Running,
        "still running a minute later"
    );
    assert!(lifetime.is_ready());
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();
    assert_eq!(
        report.entry("flaky").unwrap().outcome(),
        &Outcome::Failed("nope".into())
    );
    assert_eq!(report.entry("flaky").unwrap().phase(), Phase::Running);
    assert_eq!(
        report.entry("steady").unwrap().outcome(),
        &Outcome::Completed
    );
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
}

#[tokio::test(start_paused = true)]
async fn restarts_back_off_exponentially_then_give_up_at_the_intensity_limit() {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&attempts);
    let flaky = service_fn(move |_stopping, _cx| {
        log.lock().unwrap().push(Instant::now());
        async { Err::<(), BoxError>("connection refused".into()) }
    });
    let policy = RestartPolicy::new()
        .max_restarts(3)
        .within(secs(60.0))
        .backoff(Duration::from_millis(100), secs(10.0))
        .jitter(0.0);
    let host = host()
        .service_with(
            "flaky",
            flaky,
            ServiceOptions::new().on_failure(FailurePolicy::Restart(policy)),
        )
        .build()
        .unwrap();
    let report = host.run().await;

    let attempts = attempts.lock().unwrap();
    assert_eq!(attempts.len(), 4, "the first run and 3 restarts");
    let gaps: Vec<u128> = attempts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(gaps, [100, 200, 400]);
    let row = report.entry("flaky").unwrap();
    assert_eq!(row.restarts(), 3);
    assert_eq!(row.outcome(), &Outcome::Failed("connection refused".into()));
    assert_eq!(report.trigger().kind(), ReasonKind::Failed);
    assert!(report.trigger().message().unwrap().contains("giving up"));
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
}

#[tokio::test(start_paused = true)]
async fn failures_spread_wider_than_the_window_never_reach_the_limit() {
    // Fails every 10 s; at most 1 restart within 5 s: never exhausted.
    let flaky = service_fn(|stopping: CancellationToken, _cx| async move {
        stopping.run_until_cancelled(sleep(secs(10.0))).await?;
        Err::<(), BoxError>("transient".into())
    });
    let policy = RestartPolicy::new()
        .max_restarts(1)
        .within(secs(5.0))
        .backoff(Duration::from_millis(100), secs(1.0))
        .jitter(0.0);
    let host = host()
        .service_with(
            "flaky",
            flaky,
            ServiceOptions::new().on_failure(FailurePolicy::Restart(policy)),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    sleep(secs(55.0)).await;
    assert_eq!(lifetime.phase(), Phase::Running);
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();
    let row = report.entry("flaky").unwrap();
    assert_eq!(row.restarts(), 5);
    assert_eq!(row.outcome(), &Outcome::Cancelled);
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(start_paused = true)]
async fn hard_stop_cascades_to_descendant_tokens_with_a_shutdown_reason_naming_the_signal() {
    let host = host().service("stubborn", stubborn()).build().unwrap();
    let lifetime = host.lifetime();
    let request = lifetime.hard_stop().child(); // an in-flight operation's token
    let report = run_and_stop(host, Reason::shutdown().with_message("SIGTERM")).await;

    let reason = request
        .token()
        .reason()
        .expect("cancelled with the hard stop");
    assert_eq!(reason.kind(), ReasonKind::Shutdown);
    assert_eq!(reason.message(), Some("SIGTERM"));
    assert_eq!(
        lifetime.stopping().reason().unwrap().message(),
        Some("SIGTERM")
    );
    assert_eq!(report.trigger().message(), Some("SIGTERM"));
}

#[tokio::test(start_paused = true)]
async fn tracked_tasks_are_waited_for_reported_and_aggregated_by_name() {
    let host = host().service("svc", honouring()).build().unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    for _ in 0..100 {
        let stopping = lifetime.stopping();
        lifetime.spawn("idle", async move {
            stopping.cancelled().await;
        });
    }
    // Work that ended before the stop: only counted.
    lifetime.spawn("quick", async {});
    sleep(secs(0.5)).await;
    // In-flight work that ignores the drain but finishes in 3 s.
    lifetime.spawn("upload", sleep(secs(3.0)));
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();

    let idle = report.entry("idle").unwrap();
    assert_eq!(idle.kind(), EntryKind::Task);
    assert_eq!(idle.count(), 100);
    assert_eq!(idle.phase(), Phase::Drain);
    assert_eq!(idle.outcome(), &Outcome::Completed);
    let upload = report.entry("upload").unwrap();
    assert_eq!(
        (upload.phase(), upload.elapsed()),
        (Phase::Drain, Some(secs(3.0)))
    );
    assert_eq!(report.total(), secs(3.0), "the host waited for the upload");
    assert_eq!(report.finished_before_stop().completed, 1);
    assert!(report.entry("quick").is_none());
    assert_eq!(report.exit_code(), 0);
    assert!(report.to_string().contains("idle ×100"), "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_tracked_task_that_ignores_every_token_is_aborted_and_named() {
    let host = host()
        .shutdown_timeout(secs(8.0))
        .cancel_grace(secs(2.0))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    lifetime.spawn("stuck-export", std::future::pending::<()>());
    let failing = lifetime.clone();
    lifetime.spawn("failing-task", async move {
        failing.stopping().cancelled().await;
        Err::<(), BoxError>("disk full".into())
    });
    let report = run_and_stop(host, Reason::shutdown()).await;

    let stuck = report.entry("stuck-export").unwrap();
    assert_eq!(stuck.outcome(), &Outcome::Aborted);
    assert_eq!(
        (stuck.phase(), stuck.elapsed()),
        (Phase::Abort, Some(secs(8.0)))
    );
    assert_eq!(
        report.entry("failing-task").unwrap().outcome(),
        &Outcome::Failed("disk full".into())
    );
    // A failure outranks an abort.
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED);
}

#[tokio::test(start_paused = true)]
async fn shielded_cleanup_finishes_even_when_its_caller_is_dropped() {
    let host = host().build().unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;

    let flushed = Arc::new(Mutex::new(false));
    let flag = Arc::clone(&flushed);
    let shield = lifetime.clone();
    // An untracked caller that is dropped (aborted) halfway through the cleanup.
    let caller = tokio::spawn(async move {
        shield
            .shield(async move {
                sleep(secs(2.0)).await;
                *flag.lock().unwrap() = true;
            })
            .await
    });
    sleep(secs(1.0)).await;
    caller.abort();
    assert!(caller.await.unwrap_err().is_cancelled());
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();

    assert!(*flushed.lock().unwrap(), "the cleanup ran to its end");
    let row = report
        .tasks()
        .next()
        .expect("the shielded work is a tracked task");
    assert!(row.name().starts_with("shield at "), "{}", row.name());
    assert_eq!(row.outcome(), &Outcome::Completed);
    assert_eq!(row.elapsed(), Some(secs(1.0)));
}

#[tokio::test(start_paused = true)]
async fn shielded_work_dropped_by_the_abort_reports_cancelled_to_its_caller() {
    let host = host()
        .shutdown_timeout(secs(4.0))
        .cancel_grace(secs(1.0))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    let waiting = tokio::spawn(lifetime.shield(std::future::pending::<()>()));
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();
    let err = waiting.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ReasonKind::Shutdown);
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED);
}

#[tokio::test(start_paused = true)]
async fn a_service_adds_counts_and_details_to_its_report_row() {
    let server = service_fn(|stopping, cx: ServiceContext| async move {
        stopping.cancelled().await;
        cx.count("connections closed", 3);
        cx.count("connections closed", 2);
        cx.count("requests finished", 40);
        cx.detail("listener", "127.0.0.1:8080");
    });
    let host = host().service("http", server).build().unwrap();
    let report = run_and_stop(host, Reason::shutdown()).await;
    let row = report.entry("http").unwrap();
    assert_eq!(row.detail("connections closed"), Some("5"));
    assert_eq!(row.detail("requests finished"), Some("40"));
    assert_eq!(row.detail("listener"), Some("127.0.0.1:8080"));
    let keys: Vec<&str> = row.details().iter().map(|(k, _)| k.as_ref()).collect();
    assert_eq!(
        keys,
        ["connections closed", "requests finished", "listener"]
    );
    assert!(
        report.to_string().contains("connections closed: 5"),
        "{report}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_host_whose_services_have_all_finished_stops_by_itself() {
    let host = host()
        .service("batch", service_fn(|_s, _cx| async {}))
        .service(
            "migrate",
            service_fn(|_s, _cx| async { Ok::<(), BoxError>(()) }),
        )
        .build()
        .unwrap();
    let report = host.run().await;
    assert_eq!(report.trigger().kind(), ReasonKind::Requested);
    assert_eq!(
        report.trigger().message(),
        Some("every service has finished")
    );
    for row in report.services() {
        assert_eq!((row.phase(), row.elapsed()), (Phase::Running, None));
        assert_eq!(row.outcome(), &Outcome::Completed);
    }
    assert_eq!(report.exit_code(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_stop_requested_before_run_starts_no_service() {
    let host = host().service("a", honouring()).build().unwrap();
    let lifetime = host.lifetime();
    assert!(lifetime.stop(Reason::shutdown()));
    assert!(
        !lifetime.stop(Reason::requested()),
        "the first request wins"
    );
    let report = host.run().await;
    assert_eq!(report.entry("a").unwrap().outcome(), &Outcome::Cancelled);
    assert!(!lifetime.started().is_cancelled());
    assert_eq!(report.trigger().kind(), ReasonKind::Shutdown);
}

// Issue 9, item 3.
#[tokio::test(start_paused = true)]
async fn a_host_stopped_while_starting_is_never_running() {
    struct SlowStart;
    impl BackgroundService for SlowStart {
        async fn start(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
            sleep(secs(10.0)).await;
            Ok(())
        }
    }
    let host = host()
        .shutdown_timeout(secs(30.0))
        .pre_stop_delay(secs(5.0))
        .service("slow", SlowStart)
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    sleep(secs(1.0)).await;
    assert_eq!(lifetime.phase(), Phase::Starting);
    lifetime.stop(Reason::shutdown());
    // Watch the state every 100 ms through the pre-stop delay and the drain.
    let mut seen = vec![lifetime.phase()];
    while !run.is_finished() {
        sleep(secs(0.1)).await;
        let state = lifetime.phase();
        if seen.last() != Some(&state) {
            seen.push(state);
        }
    }
    let report = run.await.unwrap();
    assert!(
        !seen.contains(&Phase::Running),
        "Running means every start step finished and the host was ready; seen: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&Phase::Stopped), "{seen:?}");
    assert!(!lifetime.started().is_cancelled());
    assert_eq!(report.exit_code(), 0, "{report}");
}

// Issue 9, item 4.
#[tokio::test(start_paused = true)]
async fn the_pre_stop_delay_ends_early_once_every_service_and_task_has_ended() {
    let host = host()
        .shutdown_timeout(secs(30.0))
        .pre_stop_delay(secs(10.0))
        .service("batch", service_fn(|_s, _cx| async {}))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let t0 = Instant::now();
    let report = host.run().await;

    assert_eq!(
        report.trigger().message(),
        Some("every service has finished")
    );
    assert_eq!(t0.elapsed(), Duration::ZERO, "{report}");
    assert_eq!(report.total(), Duration::ZERO, "{report}");
    assert!(lifetime.stopping().is_cancelled());
    assert_eq!(report.exit_code(), 0);
}

// Issue 9, item 4: tracked tasks count too; the delay ends when the last one ends.
#[tokio::test(start_paused = true)]
async fn the_pre_stop_delay_ends_when_the_last_tracked_task_ends() {
    let host = host()
        .shutdown_timeout(secs(30.0))
        .pre_stop_delay(secs(10.0))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    lifetime.spawn("upload", sleep(secs(3.0)));
    let report = run_and_stop(host, Reason::shutdown()).await;
    assert_eq!(report.total(), secs(3.0), "{report}");
    let upload = report.entry("upload").unwrap();
    assert_eq!(upload.phase(), Phase::PreStop);
    assert_eq!(upload.outcome(), &Outcome::Completed);
    assert_eq!(report.exit_code(), 0);
}

// Issue 9, item 5.
#[tokio::test(start_paused = true)]
async fn with_zero_drain_and_cancel_budgets_a_service_that_stops_at_once_is_not_aborted() {
    let host = host()
        .shutdown_timeout(secs(1.0))
        .pre_stop_delay(secs(1.0))
        .cancel_grace(Duration::ZERO)
        .service("a", honouring())
        .service("b", honouring())
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let tracked = lifetime.stopping();
    lifetime.spawn("idle", async move {
        tracked.cancelled().await;
    });
    let report = run_and_stop(host, Reason::shutdown()).await;

    for row in report.entries() {
        assert_ne!(row.outcome(), &Outcome::Aborted, "{report}");
    }
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(report.phase_started(Phase::Abort), None, "{report}");
}

// Issue 9, item 7.
#[tokio::test(start_paused = true)]
async fn a_tracked_task_that_panics_before_the_stop_makes_the_exit_code_1() {
    let host = host().service("svc", honouring()).build().unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    lifetime.spawn("boom", async {
        if true {
            panic!("unexpected state");
        }
    });
    sleep(secs(1.0)).await;
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();

    assert_eq!(report.finished_before_stop().failed, 1);
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED, "{report}");
    assert!(!report.is_clean());
}

// Issue 9, item 7: an error is a failure too, whenever it happens.
#[tokio::test(start_paused = true)]
async fn a_tracked_task_that_fails_before_the_stop_makes_the_exit_code_1() {
    let host = host().service("svc", honouring()).build().unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    lifetime.spawn("flush", async { Err::<(), BoxError>("disk full".into()) });
    sleep(secs(1.0)).await;
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();

    assert_eq!(report.finished_before_stop().failed, 1);
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_FAILED, "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_service_outlives_its_dependents_in_the_cancel_phase_too() {
    // A worker that ignores the drain and, interrupted at hard stop, needs 2 s more to
    // record how its work ended through the database service it depends on.
    let events: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let (db_events, worker_events) = (Arc::clone(&events), Arc::clone(&events));
    let db = service_fn(move |stopping: CancellationToken, _cx| {
        let events = Arc::clone(&db_events);
        async move {
            stopping.cancelled().await;
            events.lock().unwrap().push("db closed");
        }
    });
    let worker = service_fn(move |_stopping, cx: ServiceContext| {
        let events = Arc::clone(&worker_events);
        async move {
            cx.hard_stop().cancelled().await;
            events.lock().unwrap().push("worker interrupted");
            sleep(secs(2.0)).await; // writing the endings
            events.lock().unwrap().push("worker recorded its endings");
        }
    });
    let host = host()
        .shutdown_timeout(secs(20.0))
        .cancel_grace(secs(10.0))
        .service("db", db)
        .service_with("worker", worker, ServiceOptions::new().depends_on(["db"]))
        .build()
        .unwrap();
    let report = run_and_stop(host, Reason::shutdown()).await;

    assert_eq!(
        *events.lock().unwrap(),
        [
            "worker interrupted",
            "worker recorded its endings",
            "db closed"
        ],
        "{report}"
    );
    let worker = report.entry("worker").unwrap();
    assert_eq!(worker.phase(), Phase::Cancel);
    assert_eq!(worker.elapsed(), Some(secs(12.0)));
    let db = report.entry("db").unwrap();
    assert_eq!(db.phase(), Phase::Cancel);
    assert_eq!(db.outcome(), &Outcome::Completed);
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(start_paused = true)]
async fn a_service_whose_dependent_is_stuck_hears_its_stop_at_the_abort() {
    let slot: Arc<Mutex<Option<CancellationToken>>> = Arc::default();
    let keep = Arc::clone(&slot);
    let db = service_fn(move |stopping: CancellationToken, _cx| {
        *keep.lock().unwrap() = Some(stopping);
        std::future::pending::<()>()
    });
    let host = host()
        .shutdown_timeout(secs(10.0))
        .cancel_grace(secs(5.0))
        .service("db", db)
        .service_with(
            "stuck",
            stubborn(),
            ServiceOptions::new().depends_on(["db"]),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    let db_stopping = loop {
        if let Some(token) = slot.lock().unwrap().clone() {
            break token;
        }
        sleep(secs(0.001)).await;
    };
    lifetime.stop(Reason::shutdown());
    sleep(secs(7.0)).await; // in the cancel phase: hard stop fired, "stuck" still runs
    assert_eq!(lifetime.phase(), Phase::Cancel);
    assert!(lifetime.hard_stop().is_cancelled());
    assert!(
        !db_stopping.is_cancelled(),
        "db is not told to stop while its dependent still runs"
    );
    let report = run.await.unwrap();
    assert_eq!(report.exit_code(), ShutdownReport::EXIT_ABORTED, "{report}");
    assert_eq!(
        db_stopping.reason().map(|r| r.kind()),
        Some(ReasonKind::Shutdown),
        "told at the abort at the latest"
    );
    assert_eq!(report.entry("stuck").unwrap().outcome(), &Outcome::Aborted);
}

/// A library with a runtime of its own spawns a tracked task, takes its answer and drops its
/// runtime at once. The task runs on the host's runtime, so it still finishes and records its
/// end: the shutdown does not wait for it, and nothing is reported aborted. (Spawned on the
/// library's runtime, it was dropped unrecorded with it, and the host waited its whole budget
/// for a task that no longer existed: exit code 2.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_task_spawned_from_a_runtime_that_is_then_dropped_still_records_its_end() {
    let host = host().shutdown_timeout(secs(5.0)).build().unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    lifetime.started().cancelled().await;
    let from_library = lifetime.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let answer = runtime.block_on(async move {
            let (tx, rx) = tokio::sync::oneshot::channel();
            from_library.spawn("library write", async move {
                let _ = tx.send(42);
                // Work after the answer (closing a file, say): still to run when the
                // library's runtime is dropped.
                tokio::time::sleep(Duration::from_millis(50)).await;
            });
            rx.await.unwrap()
        });
        assert_eq!(answer, 42);
        drop(runtime);
    })
    .join()
    .unwrap();
    let stopped = Instant::now();
    lifetime.stop(Reason::shutdown());
    let report = run.await.unwrap();
    assert!(
        stopped.elapsed() < Duration::from_secs(2),
        "the host did not wait for a task that had gone: {report}"
    );
    assert_eq!(report.exit_code(), 0, "{report}");
    let completed = report.finished_before_stop().completed
        + report.entry("library write").map_or(0, |e| {
            (e.outcome() == &Outcome::Completed) as u64 * e.count() as u64
        });
    assert_eq!(completed, 1, "{report}");
}
