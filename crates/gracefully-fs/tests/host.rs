//! Feature `host`: a write's blocking work is a tracked task of the host, so the drain
//! waits for it, the cancel phase reports it cancelled, and one still running at the abort
//! phase is named in the report — and stopped.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_fs::WriteOptions;
use gracefully_host::{Host, Outcome, Phase};
use support::no_temp_files_eventually;

const CHUNK: usize = 4096;

fn host(timeout_ms: u64, grace_ms: u64) -> Host {
    Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_millis(timeout_ms))
        .cancel_grace(Duration::from_millis(grace_ms))
        .build()
        .unwrap()
}

/// Options that sleep `ms` after each chunk and count the bytes written.
fn slow(ms: u64) -> (WriteOptions, Arc<AtomicU64>) {
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let options = WriteOptions::new().chunk_size(CHUNK).on_progress(move |n| {
        counter.store(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(ms));
    });
    (options, written)
}

async fn until_written(written: &AtomicU64) {
    while written.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_still_running_at_the_abort_phase_is_named_in_the_report_and_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stubborn.bin");
    std::fs::write(&path, b"old").unwrap();
    let host = host(600, 200);
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    let (options, written) = slow(50); // 200 chunks: 10 s
    let options = options.tracked_by(lifetime.clone());
    // A token that ignores the shutdown: only the abort phase can stop it.
    let write = tokio::spawn({
        let path = path.clone();
        async move {
            options
                .write(&path, vec![1u8; 200 * CHUNK], &CancellationToken::never())
                .await
        }
    });
    until_written(&written).await;
    lifetime.stop(Reason::shutdown().with_message("test"));
    let report = running.await.unwrap();

    let name = format!("fs write {}", path.display());
    let entry = report
        .entry(&name)
        .unwrap_or_else(|| panic!("{name} not in the report:\n{report}"));
    assert_eq!(*entry.outcome(), Outcome::Aborted, "{report}");
    assert_eq!(entry.phase(), Phase::Abort);
    assert_eq!(report.exit_code(), 2, "{report}");

    // The abort cancelled the work: the thread stops at its next chunk and cleans up.
    let err = write.await.unwrap().unwrap_err();
    let cancelled = err.as_cancelled().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(cancelled.kind(), ReasonKind::Shutdown);
    no_temp_files_eventually(dir.path()).await;
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert!(written.load(Ordering::SeqCst) < 200 * CHUNK as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_waits_for_a_write_in_flight_and_reports_it_completed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("finishes.bin");
    let host = host(10_000, 1_000);
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    let (options, written) = slow(30); // 10 chunks: 300 ms, well inside the drain
    let options = options.tracked_by(lifetime.clone());
    let token = lifetime.hard_stop().child().token();
    let write = tokio::spawn({
        let path = path.clone();
        async move { options.write(&path, vec![2u8; 10 * CHUNK], &token).await }
    });
    until_written(&written).await;
    lifetime.stop(Reason::shutdown());
    let report = running.await.unwrap();

    let entry = report
        .entry(&format!("fs write {}", path.display()))
        .expect("in the report");
    assert_eq!(*entry.outcome(), Outcome::Completed, "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    write.await.unwrap().unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), vec![2u8; 10 * CHUNK]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_cancelled_at_hard_stop_is_reported_cancelled_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cancelled.bin");
    let host = host(5_000, 4_800); // the drain lasts 200 ms
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    let (options, written) = slow(50); // 10 s unless cancelled
    let options = options.tracked_by(lifetime.clone());
    let token = lifetime.hard_stop().child().token();
    let write = tokio::spawn({
        let path = path.clone();
        async move { options.write(&path, vec![3u8; 200 * CHUNK], &token).await }
    });
    until_written(&written).await;
    lifetime.stop(Reason::shutdown());
    let report = running.await.unwrap();

    let entry = report
        .entry(&format!("fs write {}", path.display()))
        .expect("in the report");
    assert_eq!(*entry.outcome(), Outcome::Cancelled, "{report}");
    assert_eq!(entry.phase(), Phase::Cancel, "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    let err = write.await.unwrap().unwrap_err();
    assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Shutdown);
    assert!(!path.exists());
    assert!(support::temp_files(dir.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leftover_sweep_runs_at_host_start_and_counts_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let leftover = dir
        .path()
        .join(".state.bin.0123456789abcdef.gracefully-fs.tmp");
    std::fs::write(&leftover, b"left by a crash").unwrap();
    let missing = dir.path().join("not-created-yet");
    let host = Host::builder()
        .handle_signals(false)
        .service(
            "fs-sweep",
            gracefully_fs::LeftoverSweep::new([dir.path().to_path_buf(), missing]),
        )
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    lifetime.started().cancelled().await; // the start step has run
    assert!(
        !leftover.exists(),
        "the sweep did not run before the host was ready"
    );
    lifetime.stop(Reason::shutdown());
    let report = running.await.unwrap();
    let row = report.entry("fs-sweep").expect("in the report");
    assert_eq!(row.detail("temp files removed"), Some("1"), "{report}");
    assert_eq!(row.detail("bytes removed"), Some("15"), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_of_an_unreadable_path_fails_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file-not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let host = Host::builder()
        .handle_signals(false)
        .service("fs-sweep", gracefully_fs::LeftoverSweep::new([file]))
        .build()
        .unwrap();
    let report = host.run().await;
    assert_eq!(report.exit_code(), 1, "{report}");
    let row = report.entry("fs-sweep").expect("in the report");
    assert!(
        matches!(row.outcome(), Outcome::Failed(message) if message.contains("a-file-not-a-dir")),
        "{report}"
    );
}
