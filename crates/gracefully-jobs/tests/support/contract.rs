//! The behaviour both backends must show, written once. `tests/sqlite.rs` and
//! `tests/postgres.rs` instantiate every test with `contract_tests!`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gracefully::{CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_jobs::{Backoff, CancelOutcome, Error, Job, JobState, NewJob};

use super::{Backend, Db, counter, hosted, run, until};

const SECS_10: Duration = Duration::from_secs(10);

/// Instantiates every contract test for one backend.
#[macro_export]
macro_rules! contract_tests {
    ($make:path $(, #[$attr:meta])?) => {
        $crate::contract_tests!(@each $make, [$(#[$attr])?],
            a_job_runs_once_and_ends_succeeded,
            a_duplicate_unique_key_is_a_no_op_that_returns_the_first_job,
            a_batch_enqueues_every_job_once_and_skips_duplicate_keys,
            a_job_enqueued_in_a_transaction_exists_only_if_it_commits,
            higher_priority_runs_first_and_a_delayed_job_waits_for_its_time,
            a_genuine_failure_retries_after_backoff_and_uses_an_attempt,
            a_job_out_of_attempts_is_dead_with_its_last_error,
            an_error_containing_a_nul_character_is_retried_and_dead_normally,
            a_payload_or_cancel_message_with_a_nul_character_is_handled_alike,
            a_panicking_handler_is_a_genuine_failure,
            an_undecodable_payload_goes_dead_without_calling_the_handler,
            shutdown_returns_running_jobs_at_once_without_using_an_attempt,
            jobs_that_finish_during_the_drain_succeed_and_are_counted,
            the_abort_returns_a_stuck_job_and_keeps_finished_ones_finished,
            prefetched_jobs_go_back_unstarted_at_the_drain,
            cancelling_a_running_job_fires_its_token_with_the_message_and_ends_it_cancelled,
            cancelling_a_running_job_from_another_handle_reaches_it,
            cancelling_a_waiting_job_means_it_never_runs,
            a_cancelled_job_that_is_retried_runs_and_succeeds,
            a_lost_lease_fires_the_token_and_the_stale_attempt_cannot_complete,
            a_job_reclaimed_after_its_lease_expired_runs_again_without_using_an_attempt,
            complete_in_commits_the_success_with_the_handlers_writes_exactly_once,
            complete_in_after_a_cancel_request_succeeds,
            a_dead_job_can_be_retried_with_its_attempts_reset,
            counts_and_list_show_the_states,
            a_queue_whose_name_is_not_plain_runs_its_own_jobs_in_many_batches,
            a_failure_is_written_while_fetches_follow_each_other,
            jobs_fetched_ahead_that_wait_a_whole_heartbeat_go_back_to_the_queue,
            a_job_delayed_past_any_clock_is_stored_listed_and_fetched,
            a_failure_with_an_absurd_backoff_retries_at_the_bound,
        );
    };
    (@each $make:path, $attrs:tt, $($name:ident),* $(,)?) => {
        $( $crate::contract_tests!(@one $make, $attrs, $name); )*
    };
    (@one $make:path, [$($attr:tt)*], $name:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        $($attr)*
        async fn $name() {
            support::contract::$name($make().await).await
        }
    };
}

#[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Work {
    pub n: u32,
    pub ms: u64,
}

fn work(n: u32) -> NewJob {
    NewJob::new("work", &Work { n, ms: 0 })
}

/// Sleeps `ms`, or returns `Cancelled` when the token fires.
async fn busy(ms: u64, token: &CancellationToken) -> Result<(), Cancelled> {
    token
        .run_until_cancelled(tokio::time::sleep(Duration::from_millis(ms)))
        .await
}

async fn state(b: &Backend, id: gracefully_jobs::JobId) -> JobState {
    b.jobs.get(id).await.unwrap().unwrap().state
}

async fn wait_state(b: &Backend, id: gracefully_jobs::JobId, want: JobState) {
    until(&format!("job {id} {want}"), SECS_10, || async {
        state(b, id).await == want
    })
    .await;
}

pub async fn a_job_runs_once_and_ends_succeeded(b: Backend) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let worker = b
        .jobs
        .worker("work")
        .handler(move |job: Job<Work>, _token| {
            s.lock()
                .unwrap()
                .push((job.id(), job.attempt(), *job.payload()));
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(7)).await.unwrap().id;
    wait_state(&b, id, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![(id, 1, Work { n: 7, ms: 0 })]);
    assert_eq!(counter(&report, "succeeded"), 1);
    assert_eq!(report.exit_code(), 0, "{report}");
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!((info.attempts, info.queue.as_str()), (0, "work"));
    assert!(info.finished_at.is_some());
}

pub async fn a_duplicate_unique_key_is_a_no_op_that_returns_the_first_job(b: Backend) {
    let first = b.jobs.enqueue(work(1).unique_key("k")).await.unwrap();
    let again = b.jobs.enqueue(work(2).unique_key("k")).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.id, again.id);
    // The key is per queue.
    let other = b
        .jobs
        .enqueue(NewJob::new("other", &1).unique_key("k"))
        .await
        .unwrap();
    assert!(other.created);
    let info = b.jobs.get(first.id).await.unwrap().unwrap();
    assert_eq!(
        info.payload::<Work>().unwrap().n,
        1,
        "the duplicate changed nothing"
    );
    assert_eq!(b.jobs.counts(Some("work")).await.unwrap().total(), 1);
}

pub async fn a_batch_enqueues_every_job_once_and_skips_duplicate_keys(b: Backend) {
    b.jobs.enqueue(work(0).unique_key("dup")).await.unwrap();
    let batch = (1..=2500).map(work).chain([work(9999).unique_key("dup")]);
    assert_eq!(b.jobs.enqueue_batch(batch).await.unwrap(), 2500);
    assert_eq!(b.jobs.counts(Some("work")).await.unwrap().queued, 2501);
    let done = Arc::new(Mutex::new(HashMap::<u32, u32>::new()));
    let d = Arc::clone(&done);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(32)
        .handler(move |job: Job<Work>, _token| {
            *d.lock().unwrap().entry(job.payload().n).or_default() += 1;
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    until("all done", Duration::from_secs(30), || async {
        b.jobs.counts(Some("work")).await.unwrap().succeeded == 2501
    })
    .await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    let done = done.lock().unwrap();
    assert_eq!(done.len(), 2501);
    assert!(done.values().all(|&n| n == 1), "every job ran exactly once");
}

pub async fn a_job_enqueued_in_a_transaction_exists_only_if_it_commits(b: Backend) {
    for commit in [false, true] {
        let n = u32::from(commit);
        let id = match &b.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await.unwrap();
                let id = b.jobs.enqueue_in(&mut *tx, work(n)).await.unwrap().id;
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
                id
            }
            Db::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.unwrap();
                let id = b.jobs.enqueue_in(&mut *tx, work(n)).await.unwrap().id;
                assert_eq!(b.jobs.batch_count_in(&mut tx).await, 0);
                if commit {
                    tx.commit().await.unwrap()
                } else {
                    tx.rollback().await.unwrap()
                }
                id
            }
        };
        assert_eq!(
            b.jobs.get(id).await.unwrap().is_some(),
            commit,
            "commit: {commit}"
        );
    }
    // A connection of the other database is refused with an error naming both.
    if let Db::Postgres { .. } = &b.db {
        let mut other = sqlx::SqliteConnection::connect_memory().await;
        let err = b.jobs.enqueue_in(&mut other, work(3)).await.unwrap_err();
        assert!(matches!(err, Error::WrongBackend { .. }), "{err}");
    }
}

/// Little helpers the contract needs on `Jobs`, for the tests only.
trait TestExt {
    async fn batch_count_in(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> u64;
}

impl TestExt for gracefully_jobs::Jobs {
    /// Enqueues an empty batch in `tx` (must be a no-op).
    async fn batch_count_in(&self, tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> u64 {
        self.enqueue_batch_in(&mut **tx, std::iter::empty())
            .await
            .unwrap()
    }
}

trait ConnectMemory {
    async fn connect_memory() -> sqlx::SqliteConnection;
}

impl ConnectMemory for sqlx::SqliteConnection {
    async fn connect_memory() -> sqlx::SqliteConnection {
        use sqlx::Connection;
        sqlx::SqliteConnection::connect("sqlite::memory:")
            .await
            .unwrap()
    }
}

pub async fn higher_priority_runs_first_and_a_delayed_job_waits_for_its_time(b: Backend) {
    // Before the enqueue: the delay counts from it, and the three enqueues after it can
    // take a while on a loaded machine.
    let started = Instant::now();
    let delayed = b
        .jobs
        .enqueue(work(0).delay(Duration::from_millis(700)))
        .await
        .unwrap()
        .id;
    b.jobs.enqueue(work(1).priority(-5)).await.unwrap();
    b.jobs.enqueue(work(2)).await.unwrap();
    b.jobs.enqueue(work(3).priority(5)).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let o = Arc::clone(&order);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(1)
        .handler(move |job: Job<Work>, _token| {
            o.lock().unwrap().push((job.payload().n, started.elapsed()));
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    wait_state(&b, delayed, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    let order = order.lock().unwrap();
    let ns: Vec<u32> = order.iter().map(|(n, _)| *n).collect();
    assert_eq!(ns, vec![3, 2, 1, 0]);
    assert!(
        order[3].1 >= Duration::from_millis(600),
        "the delayed job ran at {:?}",
        order[3].1
    );
}

pub async fn a_genuine_failure_retries_after_backoff_and_uses_an_attempt(b: Backend) {
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&attempts);
    let worker = b
        .jobs
        .worker("work")
        .backoff(
            Backoff::exponential(Duration::from_millis(50), Duration::from_millis(50)).jitter(0.0),
        )
        .handler(move |job: Job<Work>, _token| {
            a.lock().unwrap().push(job.attempt());
            let fail = job.attempt() < 3;
            async move {
                if fail {
                    Err(std::io::Error::other("flaky"))
                } else {
                    Ok(())
                }
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2, 3]);
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 2);
    assert_eq!(info.last_error.as_deref(), Some("flaky"));
    assert_eq!(counter(&report, "retried"), 2);
}

pub async fn a_job_out_of_attempts_is_dead_with_its_last_error(b: Backend) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let worker = b
        .jobs
        .worker("work")
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .handler(move |job: Job<Work>, _token| {
            c.fetch_add(1, Ordering::SeqCst);
            let attempt = job.attempt();
            async move { Err::<(), _>(format!("failure {attempt}")) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1).max_attempts(3)).await.unwrap().id;
    wait_state(&b, id, JobState::Dead).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(
        (info.attempts, info.last_error.as_deref()),
        (3, Some("failure 3"))
    );
    assert_eq!(
        (counter(&report, "retried"), counter(&report, "dead")),
        (2, 1)
    );
}

/// PostgreSQL refuses NUL in text: the ending is written without it, and the worker's
/// later endings are not blocked behind it.
pub async fn an_error_containing_a_nul_character_is_retried_and_dead_normally(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .handler(move |job: Job<Work>, _token| {
            let (n, attempt) = (job.payload().n, job.attempt());
            async move {
                if n == 1 {
                    Err::<(), _>(format!("bad\0byte {attempt}"))
                } else {
                    Ok(())
                }
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1).max_attempts(2)).await.unwrap().id;
    wait_state(&b, id, JobState::Dead).await;
    let later = b.jobs.enqueue(work(2)).await.unwrap().id;
    wait_state(&b, later, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(
        (info.attempts, info.last_error.as_deref()),
        (2, Some("badbyte 2"))
    );
}

pub async fn a_payload_or_cancel_message_with_a_nul_character_is_handled_alike(b: Backend) {
    let err = b
        .jobs
        .enqueue(NewJob::new("work", &"a\0b"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Payload { .. }), "{err}");
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    assert_eq!(
        b.jobs.cancel(id, "no\0pe").await.unwrap(),
        CancelOutcome::Cancelled
    );
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(info.state, JobState::Cancelled);
}

pub async fn a_panicking_handler_is_a_genuine_failure(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .handler(|_job: Job<Work>, _token| async {
            if true {
                panic!("deliberate panic in a test handler");
            }
            Ok::<_, Error>(())
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1).max_attempts(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Dead).await;
    lifetime.stop(Reason::shutdown());
    assert_eq!(
        report.await.unwrap().exit_code(),
        0,
        "a job's panic does not fail the worker"
    );
    let error = b.jobs.get(id).await.unwrap().unwrap().last_error.unwrap();
    assert!(error.contains("deliberate panic"), "{error}");
}

pub async fn an_undecodable_payload_goes_dead_without_calling_the_handler(b: Backend) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let worker = b
        .jobs
        .worker("work")
        .handler(move |_job: Job<Work>, _token| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let bad = b
        .jobs
        .enqueue(NewJob::new("work", &"not a Work"))
        .await
        .unwrap()
        .id;
    let good = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, bad, JobState::Dead).await;
    wait_state(&b, good, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "only the good job reached the handler"
    );
    let info = b.jobs.get(bad).await.unwrap().unwrap();
    let error = info.last_error.unwrap();
    assert!(
        error.contains("does not decode") && error.contains("Work"),
        "{error}"
    );
    assert_eq!(info.attempts, 0);
}

pub async fn shutdown_returns_running_jobs_at_once_without_using_an_attempt(b: Backend) {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let r = Arc::clone(&reasons);
    let started = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&started);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(4)
        .handler(move |_job: Job<Work>, token: CancellationToken| {
            let r = Arc::clone(&r);
            s.fetch_add(1, Ordering::SeqCst);
            async move {
                let result = busy(60_000, &token).await;
                r.lock().unwrap().push(token.reason().map(|r| r.kind()));
                result
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, Duration::from_secs(1));
    let report = run(host);
    b.jobs.enqueue_batch((1..=3).map(work)).await.unwrap();
    until("3 handlers running", SECS_10, || async {
        started.load(Ordering::SeqCst) == 3
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(
        *reasons.lock().unwrap(),
        vec![Some(ReasonKind::Shutdown); 3]
    );
    assert_eq!(counter(&report, "interrupted and returned"), 3, "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    for job in b.jobs.list(Some("work"), None, 10).await.unwrap() {
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Interrupted, 0),
            "{job:?}"
        );
        assert!(job.run_at <= std::time::SystemTime::now(), "due at once");
    }
    // Another worker takes them at once, as their first attempt still.
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&attempts);
    let worker = b
        .jobs
        .worker("work")
        .handler(move |job: Job<Work>, _token| {
            a.lock().unwrap().push(job.attempt());
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    until("all succeeded", Duration::from_secs(5), || async {
        b.jobs.counts(None).await.unwrap().succeeded == 3
    })
    .await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![1, 1, 1]);
}

pub async fn jobs_that_finish_during_the_drain_succeed_and_are_counted(b: Backend) {
    let started = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&started);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(2)
        .handler(move |job: Job<Work>, token: CancellationToken| {
            s.fetch_add(1, Ordering::SeqCst);
            async move { busy(job.payload().ms, &token).await }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    b.jobs
        .enqueue_batch((1..=2).map(|n| NewJob::new("work", &Work { n, ms: 300 })))
        .await
        .unwrap();
    b.jobs
        .enqueue(NewJob::new("work", &Work { n: 3, ms: 0 }).delay(Duration::from_secs(1)))
        .await
        .unwrap();
    until("2 handlers running", SECS_10, || async {
        started.load(Ordering::SeqCst) == 2
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(counter(&report, "finished during drain"), 2, "{report}");
    assert_eq!(counter(&report, "succeeded"), 2);
    let counts = b.jobs.counts(None).await.unwrap();
    assert_eq!(
        (counts.succeeded, counts.queued),
        (2, 1),
        "nothing new was fetched in the drain"
    );
}

pub async fn the_abort_returns_a_stuck_job_and_keeps_finished_ones_finished(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .concurrency(4)
        .handler(|job: Job<Work>, _token| async move {
            // Ignores its token: only the abort stops it.
            tokio::time::sleep(Duration::from_millis(job.payload().ms)).await;
            Ok::<_, Error>(())
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, Duration::from_millis(400));
    let report = run(host);
    let done = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, done, JobState::Succeeded).await;
    let stuck = b
        .jobs
        .enqueue(NewJob::new("work", &Work { n: 2, ms: 60_000 }))
        .await
        .unwrap()
        .id;
    wait_state(&b, stuck, JobState::Running).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(counter(&report, "aborted"), 1, "{report}");
    wait_state(&b, stuck, JobState::Interrupted).await;
    let info = b.jobs.get(stuck).await.unwrap().unwrap();
    assert_eq!(info.attempts, 0, "an abort uses no attempt");
    assert_eq!(state(&b, done).await, JobState::Succeeded);
}

pub async fn prefetched_jobs_go_back_unstarted_at_the_drain(b: Backend) {
    let started = Arc::new(AtomicU32::new(0));
    let s = Arc::clone(&started);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(1)
        .prefetch(3)
        .handler(move |_job: Job<Work>, token: CancellationToken| {
            s.fetch_add(1, Ordering::SeqCst);
            async move { busy(60_000, &token).await }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, Duration::from_secs(1));
    let report = run(host);
    b.jobs.enqueue_batch((1..=4).map(work)).await.unwrap();
    until("1 running, 3 fetched ahead", SECS_10, || async {
        started.load(Ordering::SeqCst) == 1 && b.jobs.counts(None).await.unwrap().running == 4
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the fetched-ahead jobs never started"
    );
    assert_eq!(counter(&report, "returned unstarted"), 3, "{report}");
    assert_eq!(counter(&report, "interrupted and returned"), 1, "{report}");
    for job in b.jobs.list(None, None, 10).await.unwrap() {
        assert_eq!(
            (job.state, job.attempts),
            (JobState::Interrupted, 0),
            "{job:?}"
        );
    }
}

/// A worker whose handler waits for its token and reports the reason.
fn waiting_worker(b: &Backend, reasons: Arc<Mutex<Vec<Reason>>>) -> gracefully_jobs::Worker {
    b.jobs
        .worker("work")
        .poll_interval(Duration::from_millis(50))
        .handler(move |_job: Job<Work>, token: CancellationToken| {
            let reasons = Arc::clone(&reasons);
            async move {
                let reason = token.cancelled().await;
                reasons.lock().unwrap().push(reason.clone());
                Err::<(), _>(Cancelled::new(reason))
            }
        })
        .build()
        .unwrap()
}

pub async fn cancelling_a_running_job_fires_its_token_with_the_message_and_ends_it_cancelled(
    b: Backend,
) {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (host, lifetime) = hosted(waiting_worker(&b, Arc::clone(&reasons)), SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Running).await;
    assert_eq!(
        b.jobs.cancel(id, "customer withdrew").await.unwrap(),
        CancelOutcome::Requested
    );
    wait_state(&b, id, JobState::Cancelled).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    let reasons = reasons.lock().unwrap().clone();
    assert_eq!(reasons.len(), 1);
    assert_eq!(
        (reasons[0].kind(), reasons[0].message()),
        (ReasonKind::Requested, Some("customer withdrew"))
    );
    assert_eq!(counter(&report, "cancelled"), 1);
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(
        (info.attempts, info.cancel_message.as_deref()),
        (0, Some("customer withdrew"))
    );
    assert_eq!(
        b.jobs.cancel(id, "again").await.unwrap(),
        CancelOutcome::AlreadyFinished(JobState::Cancelled)
    );
}

pub async fn cancelling_a_running_job_from_another_handle_reaches_it(b: Backend) {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let (host, lifetime) = hosted(waiting_worker(&b, Arc::clone(&reasons)), SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Running).await;
    let other = b.other_handle().await;
    let sent = Instant::now();
    assert_eq!(
        other.cancel(id, "from elsewhere").await.unwrap(),
        CancelOutcome::Requested
    );
    until("token fired", Duration::from_secs(5), || async {
        !reasons.lock().unwrap().is_empty()
    })
    .await;
    eprintln!(
        "cancel from another handle reached the handler in {:?}",
        sent.elapsed()
    );
    wait_state(&b, id, JobState::Cancelled).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    assert_eq!(reasons.lock().unwrap()[0].message(), Some("from elsewhere"));
}

pub async fn cancelling_a_waiting_job_means_it_never_runs(b: Backend) {
    let id = b
        .jobs
        .enqueue(work(1).delay(Duration::from_millis(300)))
        .await
        .unwrap()
        .id;
    assert_eq!(
        b.jobs.cancel(id, "not needed").await.unwrap(),
        CancelOutcome::Cancelled
    );
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let worker = b
        .jobs
        .worker("work")
        .handler(move |_job: Job<Work>, _token| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    tokio::time::sleep(Duration::from_millis(600)).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(state(&b, id).await, JobState::Cancelled);
    let missing = gracefully_jobs::JobId::from(i64::MAX);
    assert_eq!(
        b.jobs.cancel(missing, "x").await.unwrap(),
        CancelOutcome::NotFound
    );
}

/// The cancel of the first attempt (heard by this process's listener on PostgreSQL after
/// the attempt ended, too) must not reach the attempt after a `retry`.
pub async fn a_cancelled_job_that_is_retried_runs_and_succeeds(b: Backend) {
    let calls = Arc::new(AtomicU32::new(0));
    let c = Arc::clone(&calls);
    let worker = b
        .jobs
        .worker("work")
        .poll_interval(Duration::from_millis(50))
        .handler(move |_job: Job<Work>, token: CancellationToken| {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if first {
                    // Waits for the cancel.
                    Err(Cancelled::new(token.cancelled().await))
                } else {
                    busy(300, &token).await
                }
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Running).await;
    assert_eq!(
        b.jobs.cancel(id, "first time").await.unwrap(),
        CancelOutcome::Requested
    );
    wait_state(&b, id, JobState::Cancelled).await;
    // Let every notification of the cancel arrive before the retry.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(b.jobs.retry(id).await.unwrap());
    wait_state(&b, id, JobState::Succeeded).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
}

pub async fn a_lost_lease_fires_the_token_and_the_stale_attempt_cannot_complete(b: Backend) {
    // The first attempt waits for its token, then tries to complete anyway.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let pool = b.db_handle();
    let worker = b
        .jobs
        .worker("work")
        .lease(Duration::from_millis(400))
        .heartbeat(Duration::from_millis(100))
        .handler(move |job: Job<Work>, token: CancellationToken| {
            let s = Arc::clone(&s);
            let pool = pool.clone();
            async move {
                if job.attempt() == 1 && s.lock().unwrap().is_empty() {
                    let reason = token.cancelled().await;
                    let completed = pool.complete(&job).await;
                    s.lock().unwrap().push((reason.kind(), completed));
                    return Err::<(), Error>(Error::LeaseLost { id: job.id() });
                }
                s.lock().unwrap().push((ReasonKind::Requested, Ok(())));
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Running).await;
    // Another worker takes the job over: its fencing number moves on.
    b.exec(&format!(
        "UPDATE {{jobs}} SET run = run + 1 WHERE id = {id}"
    ))
    .await;
    until("the stale attempt saw it", SECS_10, || async {
        !seen.lock().unwrap().is_empty()
    })
    .await;
    let (kind, completed) = seen.lock().unwrap().remove(0);
    assert_eq!(kind, ReasonKind::Failed);
    assert!(
        matches!(completed, Err(Error::LeaseLost { .. })),
        "{completed:?}"
    );
    assert_eq!(
        state(&b, id).await,
        JobState::Running,
        "the stale attempt changed nothing"
    );
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(counter(&report, "lease lost"), 1, "{report}");
}

pub async fn a_job_reclaimed_after_its_lease_expired_runs_again_without_using_an_attempt(
    b: Backend,
) {
    // A worker "died" holding the job: it is running under a lease that has expired.
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    b.exec(&format!(
        "UPDATE {{jobs}} SET state = 'running', run = 1, lease_until = 1000, worker = 'dead one' WHERE id = {id}"
    ))
    .await;
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let a = Arc::clone(&attempts);
    let worker = b
        .jobs
        .worker("work")
        .lease(Duration::from_millis(300))
        .heartbeat(Duration::from_millis(50))
        .handler(move |job: Job<Work>, _token| {
            a.lock().unwrap().push(job.attempt());
            async { Ok::<_, Error>(()) }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    wait_state(&b, id, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(*attempts.lock().unwrap(), vec![1]);
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!((info.attempts, info.lease_losses), (0, 1));
    assert_eq!(counter(&report, "reclaimed"), 1);
}

pub async fn complete_in_commits_the_success_with_the_handlers_writes_exactly_once(b: Backend) {
    let pool = b.db_handle();
    let worker = b
        .jobs
        .worker("work")
        .concurrency(8)
        .handler(move |job: Job<Work>, _token| {
            let pool = pool.clone();
            async move { pool.effect_and_complete(&job, job.payload().n == 3).await }
        })
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            Duration::from_millis(10),
        ))
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    b.jobs.enqueue_batch((1..=20).map(work)).await.unwrap();
    until("all succeeded", SECS_10, || async {
        b.jobs.counts(None).await.unwrap().succeeded == 20
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(
        b.count("SELECT count(*) FROM {effects}").await,
        20,
        "one effect per job: {report}"
    );
    assert_eq!(
        b.count("SELECT count(DISTINCT job) FROM {effects}").await,
        20
    );
    assert_eq!(counter(&report, "succeeded"), 20, "{report}");
    // Job 3's first transaction rolled back after complete_in (a failed commit): it ran again.
    assert_eq!(counter(&report, "interrupted and returned"), 1, "{report}");
}

/// A cancel request leaves the job `running`: a handler that completes it in its
/// transaction anyway is not fenced (`LeaseLost` is for a lost lease only).
pub async fn complete_in_after_a_cancel_request_succeeds(b: Backend) {
    let pool = b.db_handle();
    let result = Arc::new(Mutex::new(None));
    let r = Arc::clone(&result);
    let worker = b
        .jobs
        .worker("work")
        .handler(move |job: Job<Work>, token: CancellationToken| {
            let (pool, r) = (pool.clone(), Arc::clone(&r));
            async move {
                token.cancelled().await;
                let done = pool.complete(&job).await;
                let ok = done.is_ok();
                *r.lock().unwrap() = Some(done);
                if ok {
                    Ok(())
                } else {
                    Err("complete_in failed")
                }
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Running).await;
    assert_eq!(
        b.jobs.cancel(id, "too late").await.unwrap(),
        CancelOutcome::Requested
    );
    wait_state(&b, id, JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    let done = result.lock().unwrap().take().expect("the handler ran");
    assert!(done.is_ok(), "{done:?}");
}

pub async fn a_dead_job_can_be_retried_with_its_attempts_reset(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .handler(|_job: Job<Work>, _token| async move {
            static FIRST: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);
            if FIRST.swap(false, Ordering::SeqCst) {
                Err("first time fails")
            } else {
                Ok(())
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1).max_attempts(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Dead).await;
    assert!(b.jobs.retry(id).await.unwrap());
    wait_state(&b, id, JobState::Succeeded).await;
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 0, "reset by the retry");
    assert!(
        !b.jobs.retry(id).await.unwrap(),
        "a succeeded job is not retried"
    );
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
}

pub async fn counts_and_list_show_the_states(b: Backend) {
    let a = b.jobs.enqueue(work(1)).await.unwrap().id;
    let c = b.jobs.enqueue(work(2)).await.unwrap().id;
    b.jobs.enqueue(NewJob::new("other", &3)).await.unwrap();
    b.jobs.cancel(c, "no").await.unwrap();
    let all = b.jobs.counts(None).await.unwrap();
    assert_eq!(
        (all.queued, all.cancelled, all.total(), all.pending()),
        (2, 1, 3, 2)
    );
    let work_only = b.jobs.counts(Some("work")).await.unwrap();
    assert_eq!(work_only.total(), 2);
    let listed = b
        .jobs
        .list(Some("work"), Some(JobState::Queued), 10)
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![a]);
    assert_eq!(b.jobs.list(None, None, 2).await.unwrap().len(), 2);
    assert!(
        b.jobs
            .get(gracefully_jobs::JobId::from(-1))
            .await
            .unwrap()
            .is_none()
    );
}

/// A queue name with quotes and SQL in it runs exactly its own jobs, over many fetches
/// (on SQLite each fetch after the first carries the previous batch's successes in a
/// script with the name written in as a literal).
pub async fn a_queue_whose_name_is_not_plain_runs_its_own_jobs_in_many_batches(b: Backend) {
    const QUEUE: &str = "it's \"odd\"'); DELETE FROM gracefully_jobs; --";
    const N: u32 = 500;
    let bystander = b.jobs.enqueue(work(0)).await.unwrap().id;
    let created = b
        .jobs
        .enqueue_batch((0..N).map(|n| NewJob::new(QUEUE, &n)))
        .await
        .unwrap();
    assert_eq!(created, u64::from(N));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let worker = b
        .jobs
        .worker(QUEUE)
        .handler(move |job: Job<u32>, _token| {
            s.lock().unwrap().push(*job.payload());
            async { Ok::<_, Error>(()) }
        })
        .concurrency(4)
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    until("all the odd queue's jobs succeeded", SECS_10, || async {
        b.jobs.counts(Some(QUEUE)).await.unwrap().succeeded == u64::from(N)
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(seen, (0..N).collect::<Vec<_>>(), "each job ran once");
    assert_eq!(counter(&report, "succeeded"), u64::from(N));
    assert_eq!(
        state(&b, bystander).await,
        JobState::Queued,
        "another queue's job untouched"
    );
}

/// Successes ride in the next fetch, but a failure never waits for one: while jobs
/// trickle in (every fetch finds a few, so another follows at once), a failing job's
/// failure is written within moments, its retry counted from then.
pub async fn a_failure_is_written_while_fetches_follow_each_other(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .concurrency(4)
        .handler(|job: Job<Work>, _token| {
            let fail = job.payload().n == 0 && job.attempt() == 1;
            async move {
                if fail {
                    Err(std::io::Error::other("boom"))
                } else {
                    Ok(())
                }
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let feeders: Vec<_> = (0..3)
        .map(|_| {
            let (jobs, stop) = (b.jobs.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    jobs.enqueue_batch((1..=4).map(work)).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failing = b.jobs.enqueue(work(0)).await.unwrap().id;
    let written = until("the failure written", Duration::from_secs(5), || async {
        b.jobs.get(failing).await.unwrap().unwrap().attempts >= 1
    });
    let result = tokio::time::timeout(Duration::from_secs(6), written).await;
    stop.store(true, Ordering::Relaxed);
    for f in feeders {
        f.await.unwrap();
    }
    lifetime.stop(Reason::shutdown());
    report.await.unwrap();
    result.expect("the failure was written while jobs kept arriving");
    let info = b.jobs.get(failing).await.unwrap().unwrap();
    assert_eq!(info.last_error.as_deref(), Some("boom"), "{info:?}");
}

/// A worker does not hoard: jobs it fetched ahead that waited a whole heartbeat period
/// (the handlers are slow) go back to the queue unstarted, with no attempt used, and every
/// job still runs exactly once.
pub async fn jobs_fetched_ahead_that_wait_a_whole_heartbeat_go_back_to_the_queue(b: Backend) {
    let created = b.jobs.enqueue_batch((1..=5).map(work)).await.unwrap();
    assert_eq!(created, 5);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let worker = b
        .jobs
        .worker("work")
        .concurrency(1)
        .prefetch(4)
        .heartbeat(Duration::from_millis(100))
        .lease(Duration::from_secs(2))
        .handler(move |job: Job<Work>, token| {
            s.lock().unwrap().push((job.payload().n, job.attempt()));
            async move {
                busy(300, &token).await?;
                Ok::<_, Cancelled>(())
            }
        })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    until("all five succeeded", SECS_10, || async {
        b.jobs.counts(Some("work")).await.unwrap().succeeded == 5
    })
    .await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort_unstable();
    assert_eq!(
        seen,
        (1..=5).map(|n| (n, 1)).collect::<Vec<_>>(),
        "each ran once, on its first attempt"
    );
    assert!(
        counter(&report, "returned unstarted") >= 1,
        "the jobs held ahead went back: {report}"
    );
}

/// The test's own database handle, for handlers that write in a transaction.
#[derive(Clone)]
pub enum DbHandle {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool, String),
}

impl Backend {
    pub fn db_handle(&self) -> DbHandle {
        match &self.db {
            Db::Sqlite(p) => DbHandle::Sqlite(p.clone()),
            Db::Postgres { pool, schema } => DbHandle::Postgres(pool.clone(), schema.clone()),
        }
    }
}

impl DbHandle {
    /// `complete_in` in a transaction of its own.
    pub async fn complete<T>(&self, job: &Job<T>) -> Result<(), Error> {
        match self {
            DbHandle::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                job.complete_in(&mut *tx).await?;
                tx.commit().await?;
            }
            DbHandle::Postgres(pool, _) => {
                let mut tx = pool.begin().await?;
                job.complete_in(&mut *tx).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Writes the job's effect and completes it in one transaction. With `fail_commit` on
    /// the first attempt, rolls back instead of committing (as a failed commit would) and
    /// still returns `Ok`.
    pub async fn effect_and_complete(
        &self,
        job: &Job<Work>,
        fail_commit: bool,
    ) -> Result<(), Error> {
        let id = job.id().get();
        let roll_back =
            fail_commit && job.attempt() == 1 && !FAILED_ONCE.swap(true, Ordering::SeqCst);
        match self {
            DbHandle::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("INSERT INTO effects (job, note) VALUES (?, 'done')")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                job.complete_in(&mut *tx).await?;
                if roll_back {
                    tx.rollback().await?
                } else {
                    tx.commit().await?
                }
            }
            DbHandle::Postgres(pool, schema) => {
                let mut tx = pool.begin().await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO \"{schema}\".effects (job, note) VALUES ($1, 'done')"
                )))
                .bind(id)
                .execute(&mut *tx)
                .await?;
                job.complete_in(&mut *tx).await?;
                if roll_back {
                    tx.rollback().await?
                } else {
                    tx.commit().await?
                }
            }
        }
        Ok(())
    }
}

static FAILED_ONCE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Delays and run times near `i64::MAX` ms are clamped (to `i64::MAX / 4` ms), so
/// `now + delay` stays an integer: SQLite used to store a REAL that broke `get` and `list`
/// for the whole table, PostgreSQL to refuse the enqueue (`bigint out of range`).
pub async fn a_job_delayed_past_any_clock_is_stored_listed_and_fetched(b: Backend) {
    let far = [
        work(1).delay(Duration::from_millis(i64::MAX as u64)),
        work(2).delay(Duration::MAX),
        work(3).run_at(std::time::UNIX_EPOCH + Duration::from_millis(i64::MAX as u64)),
        work(4).run_at(std::time::UNIX_EPOCH - Duration::from_millis(i64::MAX as u64)),
    ];
    let mut ids = Vec::new();
    for job in far {
        ids.push(b.jobs.enqueue(job).await.unwrap().id);
    }
    assert_eq!(
        b.jobs
            .enqueue_batch([work(5).delay(Duration::from_millis(i64::MAX as u64))])
            .await
            .unwrap(),
        1
    );
    // At most the clock plus `i64::MAX / 4` ms: far from overflowing.
    let bound = std::time::UNIX_EPOCH + Duration::from_millis(i64::MAX as u64 / 2);
    for id in &ids[..3] {
        let info = b.jobs.get(*id).await.unwrap().unwrap();
        assert_eq!(info.state, JobState::Queued);
        assert!(info.run_at <= bound, "{:?}", info.run_at);
        assert!(info.run_at > std::time::SystemTime::now() + Duration::from_secs(1 << 40));
    }
    let listed = b.jobs.list(Some("work"), None, 10).await.unwrap();
    assert_eq!(listed.len(), 5);
    assert_eq!(
        b.count("SELECT count(*) FROM {jobs} WHERE run_at > 0")
            .await,
        4
    );
    // The job due in the far past runs; the others wait.
    let worker = b
        .jobs
        .worker("work")
        .handler(|_job: Job<Work>, _token| async { Ok::<_, Error>(()) })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    wait_state(&b, ids[3], JobState::Succeeded).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(counter(&report, "succeeded"), 1, "{report}");
    assert_eq!(b.jobs.counts(Some("work")).await.unwrap().queued, 4);
}

/// A backoff of `Duration::MAX` used to panic in `Backoff::delay`; it is capped, and the
/// job waits, retrying, until the bound.
pub async fn a_failure_with_an_absurd_backoff_retries_at_the_bound(b: Backend) {
    let worker = b
        .jobs
        .worker("work")
        .backoff(Backoff::exponential(Duration::MAX, Duration::MAX).jitter(0.0))
        .handler(|_job: Job<Work>, _token| async { Err::<(), _>(std::io::Error::other("once")) })
        .build()
        .unwrap();
    let (host, lifetime) = hosted(worker, SECS_10);
    let report = run(host);
    let id = b.jobs.enqueue(work(1)).await.unwrap().id;
    wait_state(&b, id, JobState::Retrying).await;
    lifetime.stop(Reason::shutdown());
    let report = report.await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let info = b.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(info.attempts, 1);
    assert!(info.run_at > std::time::SystemTime::now() + Duration::from_secs(1 << 40));
    assert!(info.run_at <= std::time::UNIX_EPOCH + Duration::from_millis(i64::MAX as u64 / 2));
    assert_eq!(b.jobs.list(Some("work"), None, 10).await.unwrap().len(), 1);
}
