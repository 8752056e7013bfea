//! Local files: [`write()`](crate::write), [`copy()`](crate::copy), [`FileWriter`], and the
//! blocking sequence they share.
//!
//! The sequence, on a blocking thread (`job.rs`), with the token checked at each `check`:
//!
//! ```text
//! check → prepare (destination, directory, permissions, no-clobber pre-check)
//!       → create + lock the temp file beside the destination (local/temp.rs)
//!       → { check → write one chunk → progress }*
//!       → check → fsync file → check
//!       → rename over the destination (local/commit.rs)        ← the commit point
//!       → fsync directory
//! ```
//!
//! Everything before the rename leaves the destination untouched, and any exit before it
//! (cancellation, error, panic) drops the `TempFile`, which removes the temporary file (temp
//! invariant 4). The rename is atomic, so a reader — or a crash — sees the old content or
//! the new, never a mix.

mod commit;
mod copy;
mod leftovers;
pub(crate) mod temp;
mod writer;

use std::ffi::OsString;
use std::fs::{self, FileType, Permissions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use gracefully::{CancellationToken, Reason};

use crate::error::{Error, Step};
use crate::job::Spawner;
use crate::options::WriteOptions;
use temp::TempFile;

pub(crate) use copy::copy;
pub use leftovers::{Leftovers, remove_leftovers};
pub use writer::FileWriter;

/// The reason a dropped future gives its write.
fn future_dropped() -> Reason {
    Reason::requested().with_message("the write's future was dropped before it finished")
}

pub(crate) fn spawner(options: &WriteOptions) -> Spawner {
    #[cfg(feature = "host")]
    return Spawner::new(options.lifetime.clone());
    #[cfg(not(feature = "host"))]
    {
        let _ = options;
        Spawner::new()
    }
}

pub(crate) async fn write(
    options: &WriteOptions,
    path: &Path,
    contents: Bytes,
    token: &CancellationToken,
) -> Result<(), Error> {
    options.validate()?;
    let dest = path.to_path_buf();
    let name = || format!("fs write {}", path.display());
    let options = options.clone();
    let job = spawner(&options).blocking(name, token, future_dropped, move |token| {
        atomic_write(&dest, &options, &token, None, |chunks| {
            for chunk in contents.chunks(options.chunk_size) {
                chunks.write(chunk)?;
            }
            Ok(())
        })
    });
    job.await.map(drop)
}

/// The destination, as found before writing.
pub(crate) struct Target {
    pub(crate) dest: PathBuf,
    pub(crate) dir: PathBuf,
    name: OsString,
    permissions: Option<Permissions>,
}

/// Looks at the destination: its directory and name, the permissions the new file gets
/// (explicit, else `inherited` — a copy's source's — else the replaced file's), and the
/// no-clobber pre-check.
pub(crate) fn prepare(
    dest: &Path,
    options: &WriteOptions,
    inherited: Option<Permissions>,
) -> Result<Target, Error> {
    let invalid = |message: &'static str| {
        Error::io(
            Step::Prepare,
            dest,
            io::Error::new(io::ErrorKind::InvalidInput, message),
        )
    };
    let name = dest.file_name().ok_or_else(|| {
        invalid("the destination has no file name (it is a root or ends in `..`)")
    })?;
    let dir = match dest.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let existing = match fs::symlink_metadata(dest) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(Step::Prepare, dest, e)),
    };
    if let Some(meta) = &existing {
        // Only a regular file is replaced (and a symbolic link, which the rename replaces
        // rather than follows). Anything else — a directory, or a FIFO, device or socket
        // that something else reads from — would silently become a regular file.
        let kind = meta.file_type();
        if !kind.is_file() && !kind.is_symlink() {
            return Err(not_a_regular_file(Step::Prepare, dest, "destination", kind));
        }
        if !options.overwrite {
            return Err(Error::AlreadyExists {
                path: dest.to_path_buf(),
            });
        }
    }
    let replaced = existing
        .filter(|meta| meta.is_file())
        .map(|meta| meta.permissions());
    Ok(Target {
        dest: dest.to_path_buf(),
        dir,
        name: name.to_os_string(),
        permissions: options.permissions.clone().or(inherited).or(replaced),
    })
}

/// What a file type is, for an error about a file that should have been a regular one.
pub(crate) fn describe(kind: FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_char_device() {
            return "a character device";
        }
        if kind.is_block_device() {
            return "a block device";
        }
        if kind.is_socket() {
            return "a socket";
        }
    }
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// The error for a `role` ("destination", "source") at `path` that is `kind`, not a
/// regular file: "the destination is a FIFO, not a regular file".
pub(crate) fn not_a_regular_file(step: Step, path: &Path, role: &str, kind: FileType) -> Error {
    let error_kind = if kind.is_dir() {
        io::ErrorKind::IsADirectory
    } else {
        io::ErrorKind::InvalidInput
    };
    let message = format!("the {role} is {}, not a regular file", describe(kind));
    Error::io(step, path, io::Error::new(error_kind, message))
}

/// The blocking sequence of the module docs; `fill` writes the data through [`Chunks`].
/// Returns the bytes written.
pub(crate) fn atomic_write(
    dest: &Path,
    options: &WriteOptions,
    token: &CancellationToken,
    inherited: Option<Permissions>,
    fill: impl FnOnce(&mut Chunks<'_>) -> Result<(), Error>,
) -> Result<u64, Error> {
    token.check()?;
    let target = prepare(dest, options, inherited)?;
    let temp = TempFile::create(&target)?;
    let written = {
        let mut chunks = Chunks::new(&temp, options, token);
        fill(&mut chunks)?;
        chunks.written
    };
    finish(temp, &target, options, token)?;
    Ok(written)
}

/// From the last chunk to the end: check, fsync, check, rename, fsync the directory.
pub(crate) fn finish(
    temp: TempFile,
    target: &Target,
    options: &WriteOptions,
    token: &CancellationToken,
) -> Result<(), Error> {
    token.check()?;
    if options.fsync {
        temp.file()
            .sync_all()
            .map_err(|e| Error::io(Step::SyncFile, temp.path(), e))?;
        // The fsync of a large file can take a while: a cancellation during it still wins.
        token.check()?;
    }
    commit::rename(temp, &target.dest, options.overwrite)?;
    if options.fsync {
        commit::sync_dir(&target.dir)?;
    }
    Ok(())
}

/// Writes chunks to the temporary file, checking the token before each one and reporting
/// progress after it.
pub(crate) struct Chunks<'a> {
    temp: &'a TempFile,
    token: &'a CancellationToken,
    chunk_size: usize,
    progress: Option<&'a (dyn Fn(u64) + Send + Sync)>,
    written: u64,
}

impl<'a> Chunks<'a> {
    pub(crate) fn new(
        temp: &'a TempFile,
        options: &'a WriteOptions,
        token: &'a CancellationToken,
    ) -> Self {
        Chunks {
            temp,
            token,
            chunk_size: options.chunk_size,
            progress: options.progress.as_deref(),
            written: 0,
        }
    }

    /// Writes one chunk (the caller keeps it at most `chunk_size`).
    pub(crate) fn write(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.token.check()?;
        let mut file = self.temp.file();
        file.write_all(chunk)
            .map_err(|e| Error::io(Step::Write, self.temp.path(), e))?;
        self.advance(chunk.len() as u64);
        Ok(())
    }

    fn advance(&mut self, bytes: u64) {
        if bytes == 0 {
            return;
        }
        self.written += bytes;
        if let Some(progress) = self.progress {
            progress(self.written);
        }
    }

    pub(crate) fn written(&self) -> u64 {
        self.written
    }
}

/// The local operations, as methods of their options (here, beside what they call, so that
/// the options do not depend on the files that read them).
impl WriteOptions {
    /// [`write()`](crate::write) with these options.
    ///
    /// # Cancel safety
    ///
    /// See [`write()`](crate::write): dropping the future cancels the write, whose blocking
    /// thread removes the temporary file at its next chunk.
    pub async fn write(
        &self,
        path: impl AsRef<Path>,
        contents: impl Into<Bytes>,
        token: &CancellationToken,
    ) -> Result<(), Error> {
        write(self, path.as_ref(), contents.into(), token).await
    }

    /// [`copy()`](crate::copy) with these options.
    ///
    /// # Cancel safety
    ///
    /// See [`copy()`](crate::copy).
    pub async fn copy(
        &self,
        from: impl AsRef<Path>,
        to: impl AsRef<Path>,
        token: &CancellationToken,
    ) -> Result<u64, Error> {
        copy(self, from.as_ref(), to.as_ref(), token).await
    }

    /// [`FileWriter::create`] with these options.
    ///
    /// # Cancel safety
    ///
    /// See [`FileWriter::create`].
    pub async fn create(
        &self,
        path: impl AsRef<Path>,
        token: &CancellationToken,
    ) -> Result<FileWriter, Error> {
        FileWriter::create_with(self, path.as_ref(), token).await
    }
}
