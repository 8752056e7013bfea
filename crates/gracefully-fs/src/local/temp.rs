//! The temporary file beside the destination: its name, its lock, and its removal.
//!
//! Invariants (cited as "temp invariant N"):
//!
//! 1. **Recognisable by name.** A temporary file is named
//!    `.<destination name>.<16 hex digits>.gracefully-fs.tmp` ([`temp_name`]), and
//!    [`is_temp_name`] accepts exactly that shape, so the leftover sweep
//!    (`local/leftovers.rs`) removes only this crate's files.
//! 2. **Locked while alive.** The writer holds an exclusive `flock` on the file from just
//!    after creating it until it is renamed or removed; the kernel drops the lock when the
//!    process dies. The sweep removes a file only while holding its lock, so it never removes
//!    the file of a live writer (in this process or another).
//! 3. **Ours after locking.** Between `create_new` and `lock` the sweep may have removed the
//!    name (it locked first); so after locking, the writer checks that the name still leads
//!    to its file, and otherwise starts again with a new name.
//! 4. **Removed unless committed.** Dropping a [`TempFile`] that was not committed removes the
//!    name (before closing the file, so still under the lock of invariant 2): on
//!    cancellation, error and panic alike.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use crate::error::{Error, Step};
use crate::local::Target;

/// The suffix that marks this crate's temporary files (temp invariant 1).
pub(crate) const SUFFIX: &str = ".gracefully-fs.tmp";

/// Longest part of the destination's name kept in the temporary name, in bytes, so the
/// whole stays under the common 255-byte limit.
const MAX_STEM: usize = 200;

/// `.<name>.<16 hex>.gracefully-fs.tmp` (temp invariant 1).
fn temp_name(dest_name: &OsStr) -> OsString {
    let mut name = OsString::from(".");
    // A long name is shortened (at a char boundary); a long non-UTF-8 name is left out.
    if dest_name.len() <= MAX_STEM {
        name.push(dest_name);
    } else if let Some(text) = dest_name.to_str() {
        let mut end = MAX_STEM;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        name.push(&text[..end]);
    }
    name.push(format!(".{:016x}{SUFFIX}", fastrand::u64(..)));
    name
}

/// Whether `name` has the shape of [`temp_name`] (temp invariant 1).
pub(crate) fn is_temp_name(name: &OsStr) -> bool {
    let bytes = name.as_encoded_bytes();
    let Some(rest) = bytes.strip_suffix(SUFFIX.as_bytes()) else {
        return false;
    };
    // rest = ".<name>.<16 hex>"
    if rest.len() < 1 + 1 + 16 || rest[0] != b'.' {
        return false;
    }
    let (head, hex) = rest.split_at(rest.len() - 16);
    // Lowercase only, as `temp_name` writes them: a name with uppercase digits is not ours
    // (and the sweep must not remove a file of that shape that someone else made).
    head.ends_with(b".") && hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A locked temporary file beside a destination, removed on drop unless committed.
pub(crate) struct TempFile {
    path: PathBuf,
    /// `None` once committed or removed.
    file: Option<File>,
}

impl TempFile {
    /// Creates and locks a new temporary file beside the destination of `target`. With
    /// permissions (Unix), the file is created with `0o600` and given them before any data
    /// is written; without, it is created like `std::fs::write` creates (`0o666` less the
    /// umask).
    ///
    /// A failure to create the file is reported under the destination's path, not the
    /// temporary name: that name is random and never existed, and the caller knows the
    /// destination ("…/nope/report.json: No such file or directory", not
    /// "…/nope/.report.json.3d8f….gracefully-fs.tmp").
    pub(crate) fn create(target: &Target) -> Result<TempFile, Error> {
        let (dir, dest_name) = (&target.dir, &target.name);
        let permissions = target.permissions.as_ref();
        // Collisions (or the race of temp invariant 3) are retried with a new name.
        let mut last_error = None;
        for _ in 0..16 {
            let path = dir.join(temp_name(dest_name));
            let mut options = OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(if permissions.is_some() { 0o600 } else { 0o666 });
            }
            let file = match options.open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    last_error = Some(e);
                    continue;
                }
                Err(e) => return Err(Error::io(Step::CreateTemp, &target.dest, e)),
            };
            // Temp invariant 2. Blocks only while a sweep holds it, for an unlink.
            if let Err(e) = file.lock() {
                let _ = fs::remove_file(&path);
                return Err(Error::io(Step::CreateTemp, &path, e));
            }
            if !still_ours(&file, &path) {
                // Temp invariant 3: a sweep removed the name before we locked it.
                last_error = Some(io::Error::other("removed by a leftover sweep"));
                continue;
            }
            let temp = TempFile {
                path,
                file: Some(file),
            };
            if let Some(permissions) = permissions {
                temp.file()
                    .set_permissions(permissions.clone())
                    .map_err(|e| Error::io(Step::SetPermissions, &temp.path, e))?;
            }
            return Ok(temp);
        }
        Err(Error::io(
            Step::CreateTemp,
            &target.dest,
            last_error.unwrap_or_else(|| io::Error::other("no free temporary name")),
        ))
    }

    /// A `TempFile` over any open file, for tests that need one that fails (`/dev/full`).
    /// `path` should not exist: the drop removes it.
    #[cfg(test)]
    pub(crate) fn for_tests(path: PathBuf, file: File) -> TempFile {
        TempFile {
            path,
            file: Some(file),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&self) -> &File {
        match &self.file {
            Some(file) => file,
            None => unreachable!("the file is only taken by commit, which consumes the TempFile"),
        }
    }

    /// Marks the temporary file as committed (renamed away): the drop leaves the name alone
    /// and only closes (and so unlocks) the file.
    pub(crate) fn committed(mut self) {
        self.file = None;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // Temp invariant 4: remove the name while the file (and its lock) is still open.
        if let Some(file) = self.file.take() {
            if let Err(e) = fs::remove_file(&self.path)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(
                    path = %self.path.display(),
                    error = %e,
                    "could not remove the temporary file; gracefully_fs::remove_leftovers will"
                );
            }
            drop(file);
        }
    }
}

/// Whether `path` still names `file` (temp invariant 3).
#[cfg(unix)]
fn still_ours(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::symlink_metadata(path)) {
        (Ok(ours), Ok(named)) => ours.dev() == named.dev() && ours.ino() == named.ino(),
        _ => false,
    }
}

/// Without inode numbers, the name existing is the best check there is.
#[cfg(not(unix))]
fn still_ours(_file: &File, path: &Path) -> bool {
    path.exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_are_recognised_and_other_names_are_not() {
        for dest in [
            "a",
            "state.json",
            ".hidden",
            "x.0123456789abcdef.gracefully-fs.tmp",
        ] {
            let name = temp_name(OsStr::new(dest));
            assert!(is_temp_name(&name), "{name:?}");
        }
        for other in [
            "state.json",
            ".state.json.tmp",
            "state.0123456789abcdef.gracefully-fs.tmp", // no leading dot
            ".state.0123456789abcdeg.gracefully-fs.tmp", // not hex
            ".state.0123456789ABCDEF.gracefully-fs.tmp", // uppercase: not the shape we write
            ".state.0123456789abcdeF.gracefully-fs.tmp", // one uppercase digit
            ".state.0123456789abcde.gracefully-fs.tmp", // 15 digits
            ".state0123456789abcdef.gracefully-fs.tmp", // no dot before the digits
            ".0123456789abcdef.gracefully-fs.tmp",      // no room for the leading dot
        ] {
            assert!(!is_temp_name(OsStr::new(other)), "{other}");
        }
    }

    #[test]
    fn a_long_destination_name_gives_a_temp_name_under_255_bytes() {
        let long = "é".repeat(127); // 254 bytes
        let name = temp_name(OsStr::new(&long));
        assert!(name.len() <= 255, "{}", name.len());
        assert!(is_temp_name(&name));
    }
}
