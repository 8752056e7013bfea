//! The commit point: the temporary file takes the destination's name, atomically, with or
//! without replacing what is there; then the directory is fsynced.

use std::fs::{self, File};
use std::io;
use std::path::Path;

use crate::error::{Error, Step};
use crate::local::temp::TempFile;

/// Renames `temp` over `dest` (or, without `overwrite`, only if `dest` does not exist).
/// After `Ok`, the destination has the new content.
pub(crate) fn rename(temp: TempFile, dest: &Path, overwrite: bool) -> Result<(), Error> {
    if overwrite {
        fs::rename(temp.path(), dest).map_err(|e| Error::io(Step::Rename, dest, e))?;
        temp.committed();
        return Ok(());
    }
    match rename_noreplace(temp.path(), dest) {
        Ok(()) => {
            temp.committed();
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
            path: dest.to_path_buf(),
        }),
        Err(e) if unsupported(&e) => link_then_unlink(temp, dest),
        Err(e) => Err(Error::io(Step::Rename, dest, e)),
    }
}

/// `renameat2(RENAME_NOREPLACE)` (Linux) / `renameatx_np(RENAME_EXCL)` (macOS): one atomic
/// step that fails with `EEXIST` if the destination exists.
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE).map_err(io::Error::from)
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn rename_noreplace(_from: &Path, _to: &Path) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `error` says the file system (or the kernel) cannot do this kind of rename or
/// link, as opposed to a real failure: `EINVAL` (no `RENAME_NOREPLACE` on this file
/// system), `ENOSYS` (old kernel), `EOPNOTSUPP`/`ENOTSUP`, and `EPERM` (file systems without
/// hard links: FAT, some FUSE; a real permission problem then fails the rename instead).
#[cfg(any(target_os = "linux", target_os = "android", target_vendor = "apple"))]
fn unsupported(error: &io::Error) -> bool {
    use rustix::io::Errno;
    const UNSUPPORTED: [Errno; 5] = [
        Errno::INVAL,
        Errno::NOSYS,
        Errno::OPNOTSUPP,
        Errno::NOTSUP, // the same number as OPNOTSUPP on Linux, not on macOS
        Errno::PERM,
    ];
    error.kind() == io::ErrorKind::Unsupported
        || Errno::from_io_error(error).is_some_and(|errno| UNSUPPORTED.contains(&errno))
}

#[cfg(not(any(target_os = "linux", target_os = "android", target_vendor = "apple")))]
fn unsupported(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Unsupported
}

/// No-clobber where `RENAME_NOREPLACE` is not available: `link` fails if the destination
/// exists; then the temporary name is removed. Where hard links are not supported either,
/// a check followed by a rename (a concurrent writer can race it; documented on
/// `WriteOptions::overwrite`).
fn link_then_unlink(temp: TempFile, dest: &Path) -> Result<(), Error> {
    match fs::hard_link(temp.path(), dest) {
        // `temp` drops here and removes its name, as on any other path (temp invariant 4):
        // the content lives on under `dest`.
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
            path: dest.to_path_buf(),
        }),
        Err(e) if unsupported(&e) => {
            if fs::symlink_metadata(dest).is_ok() {
                return Err(Error::AlreadyExists {
                    path: dest.to_path_buf(),
                });
            }
            fs::rename(temp.path(), dest).map_err(|e| Error::io(Step::Rename, dest, e))?;
            temp.committed();
            Ok(())
        }
        Err(e) => Err(Error::io(Step::Rename, dest, e)),
    }
}

/// `fsync` of a directory, so a rename in it survives a power loss. A no-op where
/// directories cannot be opened (Windows).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    #[cfg(unix)]
    {
        let result = File::open(dir).and_then(|d| d.sync_all());
        result.map_err(|e| Error::io(Step::SyncDirectory, dir, e))
    }
    #[cfg(not(unix))]
    {
        let _ = (dir, File::open);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_with(dir: &Path, content: &[u8]) -> TempFile {
        let options = crate::options::WriteOptions::new();
        let target = crate::local::prepare(&dir.join("dest"), &options, None).unwrap();
        let temp = TempFile::create(&target).unwrap();
        std::io::Write::write_all(&mut temp.file(), content).unwrap();
        temp
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_noreplace_rename_refuses_an_existing_destination_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        fs::write(&dest, b"theirs").unwrap();
        let err = rename(temp_with(dir.path(), b"ours"), &dest, false).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"theirs");
        assert_eq!(
            names(dir.path()),
            ["dest"],
            "the refused temp file was removed on drop"
        );
    }

    #[test]
    fn the_link_fallback_commits_once_and_refuses_an_existing_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("dest");
        link_then_unlink(temp_with(dir.path(), b"first"), &dest).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["dest"], "the temporary name is gone");

        let err = link_then_unlink(temp_with(dir.path(), b"second"), &dest).unwrap_err();
        assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"first");
        assert_eq!(names(dir.path()), ["dest"]);
    }

    #[test]
    fn a_real_failure_is_not_mistaken_for_an_unsupported_operation() {
        assert!(unsupported(&io::Error::from(io::ErrorKind::Unsupported)));
        assert!(!unsupported(&io::Error::from(io::ErrorKind::NotFound)));
        assert!(!unsupported(&io::Error::from(io::ErrorKind::AlreadyExists)));
    }
}
