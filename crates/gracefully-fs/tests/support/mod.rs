//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Waits (up to 10 s) until `dir` holds none of this crate's temporary files; fails
/// otherwise. For cleanups done by a blocking thread after a future was dropped: they happen
/// at the thread's next chunk, not synchronously with the drop.
pub async fn no_temp_files_eventually(dir: &Path) {
    gracefully_test::eventually(
        "no temporary file is left",
        Duration::from_secs(10),
        async || temp_files(dir).is_empty(),
    )
    .await;
}

/// `len` bytes of a pattern that differs per `seed`, so a mix of two contents is visible.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
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
