//! Feature `host`: without `tracked_by`, a write is tracked by the host that is running
//! (`Lifetime::current`). Alone in its binary: `current` is process-wide.

use std::time::Duration;

use gracefully::{CancellationToken, Reason};
use gracefully_host::{Host, Outcome};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_is_tracked_by_the_running_host_without_being_told() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tracked.bin");
    let host = Host::builder()
        .handle_signals(false)
        .shutdown_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let running = tokio::spawn(host.run());
    lifetime.started().cancelled().await; // `current` is set once the host runs
    // Still writing at the stop request (so the report keeps its own line).
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let options = gracefully_fs::WriteOptions::new()
        .chunk_size(1)
        .on_progress(move |_| {
            let _ = started_tx.send(());
            std::thread::sleep(Duration::from_millis(30));
        });
    let write = tokio::spawn({
        let path = path.clone();
        async move {
            options
                .write(&path, "abcde", &CancellationToken::never())
                .await
        }
    });
    tokio::task::spawn_blocking(move || started_rx.recv().unwrap())
        .await
        .unwrap();
    lifetime.stop(Reason::shutdown());
    let report = running.await.unwrap();
    write.await.unwrap().unwrap();
    let entry = report
        .entry(&format!("fs write {}", path.display()))
        .unwrap_or_else(|| panic!("not in the report:\n{report}"));
    assert_eq!(*entry.outcome(), Outcome::Completed);
}
