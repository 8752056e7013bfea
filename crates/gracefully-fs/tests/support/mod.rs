//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// This crate's temporary files in `dir` (by the documented name shape).
pub fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with('.') && name.ends_with(".gracefully-fs.tmp")
        })
        .map(|e| e.path())
        .collect()
}

/// Waits (up to 10 s) until `dir` holds none of this crate's temporary files; panics with
/// the ones left otherwise. For cleanups done by a blocking thread after a future was
/// dropped: they happen at the thread's next chunk, not synchronously with the drop.
pub async fn no_temp_files_eventually(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = temp_files(dir);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "temporary files left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `len` bytes of a pattern that differs per `seed`, so a mix of two contents is visible.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Runs the future made by `make`, cancelling it (dropping it) after its 1st poll, then
/// after its 2nd, and so on, until it completes within `n` polls; `check(outcome, n)` runs
/// after each run (`None`: it was cancelled). Returns the number of polls it took to
/// complete.
///
/// The equivalent of `gracefully-test`'s `cancel_at_every_await`, which did not exist on
/// `main` when these tests were written; switch to it once it does.
pub async fn cancel_at_every_poll<T, Fut, C, CFut>(
    mut make: impl FnMut() -> Fut,
    mut check: C,
) -> usize
where
    Fut: std::future::Future<Output = T>,
    C: FnMut(Option<T>, usize) -> CFut,
    CFut: std::future::Future<Output = ()>,
{
    use std::task::Poll;
    for n in 1.. {
        let mut fut = Box::pin(make());
        let mut polls = 0;
        let outcome = std::future::poll_fn(|cx| {
            polls += 1;
            match fut.as_mut().poll(cx) {
                Poll::Ready(value) => Poll::Ready(Some(value)),
                Poll::Pending if polls >= n => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        drop(fut);
        let completed = outcome.is_some();
        check(outcome, n).await;
        if completed {
            return n;
        }
        assert!(n < 10_000, "the future never completed");
    }
    unreachable!()
}

/// The crate's error inside an `io::Error` from a writer's `AsyncWrite` methods.
pub fn fs_error(error: std::io::Error) -> gracefully_fs::Error {
    let inner = error
        .into_inner()
        .expect("a writer's io::Error wraps the crate's error");
    *inner
        .downcast::<gracefully_fs::Error>()
        .expect("the crate's error")
}
