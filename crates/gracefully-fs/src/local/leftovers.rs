//! [`remove_leftovers`]: startup hygiene after a crash.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Step};
use crate::local::temp::is_temp_name;

/// What [`remove_leftovers`] found.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct Leftovers {
    /// Temporary files removed: left by a process that died mid-write.
    pub removed: Vec<PathBuf>,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Temporary files left alone because a live writer holds them (in this process or
    /// another).
    pub in_use: Vec<PathBuf>,
    /// Subdirectories or files that could not be looked at or removed; the sweep went on
    /// without them.
    pub errors: Vec<Error>,
}

/// Removes this crate's temporary files left under `dir` (and its subdirectories; symbolic
/// links are not followed) by a process that died mid-write — SIGKILL, OOM kill, power
/// loss. Call it at startup, before the host runs, for each directory the service writes
/// to.
///
/// Only files named like this crate's temporary files are touched
/// (`.<name>.<16 hex digits>.gracefully-fs.tmp`), and of those only the ones no live writer
/// holds: every writer keeps an exclusive lock (`flock`) on its temporary file, which the
/// kernel releases when the process dies, and the sweep removes a file only while it holds
/// that lock itself. So it is safe while writes run, in this process or in another one
/// sharing the directory (on network file systems, as far as they honour `flock`).
///
/// Blocking: call it before the async runtime starts, or through `spawn_blocking`.
///
/// A temporary file the sweep can open neither for reading nor for writing (mode `0o000`,
/// or another user's file without permission for this one) cannot be checked for a live
/// writer's lock: it is left in place and reported in [`Leftovers::errors`]. A write-only
/// one (`0o200`) is checked and removed like any other.
///
/// Returns an error only if `dir` itself cannot be read; problems further down are
/// collected in [`Leftovers::errors`].
///
/// ```
/// # fn main() -> Result<(), gracefully_fs::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let data_dir = dir.path();
/// let swept = gracefully_fs::remove_leftovers(data_dir)?;
/// for path in &swept.removed {
///     eprintln!("removed a temporary file left by a crash: {}", path.display());
/// }
/// # Ok(()) }
/// ```
///
/// *Anchors:* none in .NET, Go or tokio: files left by `tempfile` or by hand-written
/// write-then-rename code stay until someone notices.
pub fn remove_leftovers(dir: impl AsRef<Path>) -> Result<Leftovers, Error> {
    let dir = dir.as_ref();
    let mut found = Leftovers::default();
    let mut pending = vec![dir.to_path_buf()];
    let mut top = true;
    while let Some(current) = pending.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(e) if top => return Err(Error::io(Step::ScanLeftovers, &current, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => {
                found
                    .errors
                    .push(Error::io(Step::ScanLeftovers, &current, e));
                continue;
            }
        };
        top = false;
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    found
                        .errors
                        .push(Error::io(Step::ScanLeftovers, &current, e));
                    continue;
                }
            };
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file() && is_temp_name(&entry.file_name()) {
                remove_one(entry.path(), &mut found);
            }
        }
    }
    Ok(found)
}

/// Opens `path` in a mode that lets the sweep take its lock: read-only, else write-only.
///
/// `flock` works on a descriptor opened either way, and a writer's temporary file may be
/// write-only (`permissions(0o200)` is applied to it before any data is written), which a
/// read-only open cannot open unless the sweep runs as root. A file that can be opened
/// neither way (mode `0o000`, or another user's) cannot be checked for a live writer, so
/// it is left in place and reported.
fn open_for_lock(path: &Path) -> io::Result<File> {
    open_for_lock_with(path, |path, write| {
        OpenOptions::new().read(!write).write(write).open(path)
    })
}

/// [`open_for_lock`] with the opening passed in (`write`: write-only, else read-only), so
/// that the fallback can be tested where permission bits do not bind (as root).
fn open_for_lock_with(
    path: &Path,
    open: impl Fn(&Path, bool) -> io::Result<File>,
) -> io::Result<File> {
    match open(path, false) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        read => return read,
    }
    open(path, true).map_err(|e| {
        if e.kind() != io::ErrorKind::PermissionDenied {
            return e;
        }
        io::Error::new(
            e.kind(),
            format!(
                "it can be opened neither for reading nor for writing ({e}), so whether a \
                 live writer holds it cannot be checked; left in place"
            ),
        )
    })
}

/// Removes `path` if no live writer holds its lock (temp invariant 2 in `local/temp.rs`).
fn remove_one(path: PathBuf, found: &mut Leftovers) {
    let file = match open_for_lock(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return, // its writer finished
        Err(e) => {
            found.errors.push(Error::io(Step::RemoveLeftover, &path, e));
            return;
        }
    };
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            found.in_use.push(path);
            return;
        }
        Err(TryLockError::Error(e)) => {
            found.errors.push(Error::io(Step::RemoveLeftover, &path, e));
            return;
        }
    }
    let bytes = file.metadata().map(|m| m.len()).unwrap_or(0);
    // Still holding the lock: a writer that created this name cannot have claimed it
    // (temp invariant 3 makes it start over with a new name).
    match fs::remove_file(&path) {
        Ok(()) => {
            found.bytes += bytes;
            found.removed.push(path);
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => found.errors.push(Error::io(Step::RemoveLeftover, &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An opener that refuses `refused` modes as permission bits would for a non-root
    /// owner, and records the modes asked for.
    fn opener(
        refused: &'static [bool],
        asked: &std::cell::RefCell<Vec<bool>>,
    ) -> impl Fn(&Path, bool) -> io::Result<File> {
        move |path, write| {
            asked.borrow_mut().push(write);
            if refused.contains(&write) {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            OpenOptions::new().read(!write).write(write).open(path)
        }
    }

    #[test]
    fn a_write_only_file_is_opened_for_writing_after_the_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".w.0123456789abcdef.gracefully-fs.tmp");
        fs::write(&path, b"x").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let file = open_for_lock_with(&path, opener(&[false], &asked)).unwrap();
        assert_eq!(*asked.borrow(), [false, true]);
        file.try_lock().unwrap(); // a write-only descriptor takes the lock
    }

    #[test]
    fn a_readable_file_is_opened_read_only_without_trying_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".r.0123456789abcdef.gracefully-fs.tmp");
        fs::write(&path, b"x").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        open_for_lock_with(&path, opener(&[true], &asked)).unwrap();
        assert_eq!(*asked.borrow(), [false]);
    }

    #[test]
    fn a_file_that_opens_neither_way_is_an_error_saying_it_is_left_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".n.0123456789abcdef.gracefully-fs.tmp");
        fs::write(&path, b"x").unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let err = open_for_lock_with(&path, opener(&[false, true], &asked)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        assert!(err.to_string().contains("left in place"), "{err}");
    }

    #[test]
    fn a_missing_file_is_not_found_without_trying_to_write() {
        let dir = tempfile::tempdir().unwrap();
        let asked = std::cell::RefCell::new(Vec::new());
        let err = open_for_lock_with(&dir.path().join("gone"), opener(&[], &asked)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        assert_eq!(*asked.borrow(), [false]);
    }
}
