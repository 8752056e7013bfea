//! Cancellation at every chunk boundary and at every poll: the destination is the old
//! content or the complete new content, never a mix, and no temporary file remains.

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracefully::{CancellationSource, CancellationToken, Reason, ReasonKind};
use gracefully_fs::{Error, WriteOptions};
use gracefully_test::{Outcome, Run, Walk, cancel_at_every_await};
use support::{content, no_temp_files_eventually, temp_files};
use tokio::io::AsyncWriteExt;

const CHUNK: usize = 4096;
const CHUNKS: usize = 9; // the last one partial
const LEN: usize = (CHUNKS - 1) * CHUNK + 100;

/// Options that cancel `source` once `after` bytes are written, and record every progress
/// report (to prove nothing more was written after the cancel).
fn cancelling_after(
    after: u64,
    source: &Arc<CancellationSource>,
) -> (WriteOptions, Arc<Mutex<Vec<u64>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (log, source) = (seen.clone(), source.clone());
    let options = WriteOptions::new()
        .chunk_size(CHUNK)
        .on_progress(move |written| {
            log.lock().unwrap().push(written);
            if written >= after {
                source
                    .cancel_with(Reason::requested().with_message("cancelled at a chunk boundary"));
            }
        });
    (options, seen)
}

/// The byte counts after each chunk.
fn boundaries() -> Vec<u64> {
    (1..=CHUNKS as u64)
        .map(|k| (k * CHUNK as u64).min(LEN as u64))
        .collect()
}

fn assert_cancelled_at_boundary(
    result: Result<impl std::fmt::Debug, Error>,
    seen: &[u64],
    at: u64,
) {
    let err = result.expect_err("the write should have been cancelled");
    let cancelled = err
        .as_cancelled()
        .unwrap_or_else(|| panic!("not a cancellation: {err}"));
    assert_eq!(cancelled.kind(), ReasonKind::Requested);
    assert_eq!(
        cancelled.reason().message(),
        Some("cancelled at a chunk boundary")
    );
    assert_eq!(
        seen.last().copied(),
        Some(at),
        "a chunk was written after the cancellation: {seen:?}"
    );
}

fn assert_old(dir: &Path, path: &Path, old: &[u8]) {
    assert_eq!(std::fs::read(path).unwrap(), old, "the destination changed");
    assert!(temp_files(dir).is_empty(), "{:?}", temp_files(dir));
}

#[tokio::test]
async fn write_cancelled_at_every_chunk_boundary_keeps_the_old_content_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let (old, new) = (content(LEN / 2, 1), content(LEN, 2));
    std::fs::write(&path, &old).unwrap();
    for at in boundaries() {
        let source = Arc::new(CancellationSource::new());
        let (options, seen) = cancelling_after(at, &source);
        let result = options.write(&path, new.clone(), &source.token()).await;
        assert_cancelled_at_boundary(result, &seen.lock().unwrap(), at);
        assert_old(dir.path(), &path, &old);
    }
    // And uncancelled, it is the complete new content.
    gracefully_fs::write(&path, new.clone(), &CancellationToken::never())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), new);
}

#[tokio::test]
async fn copy_cancelled_at_every_chunk_boundary_keeps_the_old_content_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let (from, path) = (dir.path().join("from"), dir.path().join("dest"));
    let old = content(LEN / 3, 1);
    std::fs::write(&from, content(LEN, 2)).unwrap();
    std::fs::write(&path, &old).unwrap();
    for at in boundaries() {
        let source = Arc::new(CancellationSource::new());
        let (options, seen) = cancelling_after(at, &source);
        let result = options.copy(&from, &path, &source.token()).await;
        assert_cancelled_at_boundary(result, &seen.lock().unwrap(), at);
        assert_old(dir.path(), &path, &old);
    }
}

#[tokio::test]
async fn writer_cancelled_at_every_chunk_boundary_keeps_the_old_content_and_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let (old, new) = (content(10, 1), content(LEN, 2));
    std::fs::write(&path, &old).unwrap();
    for at in boundaries() {
        let source = Arc::new(CancellationSource::new());
        let (options, seen) = cancelling_after(at, &source);
        let mut writer = options.create(&path, &source.token()).await.unwrap();
        // Writes may fail once the thread has seen the cancellation; the commit says why.
        let _ = writer.write_all(&new).await;
        let result = writer.commit().await;
        assert_cancelled_at_boundary(result, &seen.lock().unwrap(), at);
        assert_old(dir.path(), &path, &old);
    }
}

/// After any run: the destination is the old content or the complete new content, and
/// (once the blocking thread has seen the cancellation) no temporary file is left. Then it
/// resets the destination for the next run.
async fn old_or_new_and_no_temp_file<T: std::fmt::Debug>(
    run: &Run<Result<T, Error>>,
    dir: &Path,
    path: &Path,
    old: &[u8],
    new: &[u8],
) {
    let now = std::fs::read(path).unwrap();
    assert!(
        now == old || now == new,
        "a mix of old and new ({} bytes)",
        now.len()
    );
    match run.outcome() {
        Outcome::Completed(result) => {
            assert!(result.is_ok(), "{result:?}");
            assert_eq!(now, new);
        }
        // Cancelled before the rename (old content), or past its last check (new content).
        Outcome::TokenFired(Ok(_)) => assert_eq!(now, new),
        Outcome::TokenFired(Err(e)) => {
            assert!(e.as_cancelled().is_some(), "{e}");
            assert_eq!(now, old);
        }
        Outcome::Dropped => {}
    }
    no_temp_files_eventually(dir).await;
    std::fs::write(path, old).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_cancelled_at_every_await_leaves_old_or_complete_new_content_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let (old, new) = (content(LEN / 2, 1), content(LEN, 2));
    std::fs::write(&path, &old).unwrap();
    let options = WriteOptions::new().chunk_size(CHUNK);
    for walk in [Walk::dropping(), Walk::cooperative()] {
        let report = cancel_at_every_await(
            walk,
            async |token| options.write(&path, new.clone(), &token).await,
            async |run| old_or_new_and_no_temp_file(run, dir.path(), &path, &old, &new).await,
        )
        .await
        .unwrap();
        assert!(report.points() >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_cancelled_at_every_await_leaves_old_or_complete_new_content_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let (old, new) = (content(LEN / 2, 1), content(LEN, 2));
    std::fs::write(&path, &old).unwrap();
    let options = WriteOptions::new().chunk_size(CHUNK);
    for walk in [Walk::dropping(), Walk::cooperative()] {
        let report = cancel_at_every_await(
            walk,
            async |token| {
                let mut writer = options.create(&path, &token).await?;
                for piece in new.chunks(1000) {
                    writer.write_all(piece).await.map_err(support::fs_error)?;
                }
                writer.commit().await
            },
            async |run| old_or_new_and_no_temp_file(run, dir.path(), &path, &old, &new).await,
        )
        .await
        .unwrap();
        assert!(
            report.points() >= 3,
            "only {} cancel points",
            report.points()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_write_future_stops_its_blocking_thread_at_the_next_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let written = Arc::new(AtomicU64::new(0));
    let progress = written.clone();
    // 100 chunks of 20 ms each: two seconds of work if nothing stops it.
    let options = WriteOptions::new().chunk_size(CHUNK).on_progress(move |n| {
        progress.store(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
    });
    let task = tokio::spawn(async move {
        options
            .write(&path, vec![0u8; 100 * CHUNK], &CancellationToken::never())
            .await
    });
    while written.load(Ordering::SeqCst) < 3 * CHUNK as u64 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    task.abort(); // drops the future
    let at_drop = written.load(Ordering::SeqCst);
    no_temp_files_eventually(dir.path()).await;
    let last = written.load(Ordering::SeqCst);
    assert!(
        last <= at_drop + CHUNK as u64,
        "the thread wrote {} more bytes after the drop",
        last - at_drop
    );
    assert!(!dir.path().join("dest").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_writer_whose_token_fires_removes_its_temp_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dest");
    let source = CancellationSource::new();
    let mut writer = gracefully_fs::FileWriter::create(&path, &source.token())
        .await
        .unwrap();
    writer.write_all(b"some data").await.unwrap();
    writer.flush().await.unwrap();
    assert_eq!(temp_files(dir.path()).len(), 1);
    source.cancel_with(Reason::deadline_exceeded());
    // Nobody touches the writer: the thread wakes on the cancellation and cleans up.
    no_temp_files_eventually(dir.path()).await;
    let err = writer.write_all(b"more").await.unwrap_err();
    assert!(gracefully::is_cancellation(&err), "{err}");
    let err = writer.commit().await.unwrap_err();
    assert_eq!(
        err.as_cancelled().unwrap().kind(),
        ReasonKind::DeadlineExceeded
    );
    assert!(!path.exists());
}
