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
        assert!(Instant::now() < deadline, "temporary files left behind: {left:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `len` bytes of a pattern that differs per `seed`, so a mix of two contents is visible.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}
