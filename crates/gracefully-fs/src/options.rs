//! [`WriteOptions`]: how a local write commits (overwrite or not, permissions, fsync, chunk
//! size, progress), and where its blocking work is accounted.

use std::fmt;
use std::fs::Permissions;
use std::sync::Arc;

use crate::error::Error;

/// The default chunk: the token is checked between chunks, so this bounds how much is
/// written after a cancellation (1 MiB: about a millisecond into the page cache).
pub const DEFAULT_CHUNK_SIZE: usize = 1024 * 1024;

/// A progress callback: bytes written to the temporary file so far.
pub(crate) type Progress = Arc<dyn Fn(u64) + Send + Sync>;

/// Options for [`write()`](crate::write), [`copy()`](crate::copy) and
/// [`FileWriter`](crate::FileWriter); `WriteOptions::new().write(...)` is the same as
/// [`write()`](crate::write).
///
/// | option | default | |
/// |---|---|---|
/// | [`overwrite`](Self::overwrite) | `true` | `false`: fail with [`Error::AlreadyExists`], atomically where the platform allows |
/// | [`permissions`](Self::permissions) | kept from the file replaced; new files as `std::fs::write` (`0o666` less the umask); a copy takes its source's | set before any data is written |
/// | [`fsync`](Self::fsync) | `true` | `false`: skip the `fsync` of the file and of the directory (still atomic against a crash of the process, not against a power loss) |
/// | [`chunk_size`](Self::chunk_size) | [`DEFAULT_CHUNK_SIZE`] (1 MiB) | the token is checked between chunks |
/// | [`on_progress`](Self::on_progress) | none | called on the blocking thread after each chunk |
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_fs::WriteOptions;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), gracefully_fs::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("state.json");
/// let token = CancellationToken::never();
/// WriteOptions::new().overwrite(false).write(&path, "{}", &token).await?;
///
/// let again = WriteOptions::new().overwrite(false).write(&path, "{}", &token).await;
/// assert!(matches!(again, Err(gracefully_fs::Error::AlreadyExists { .. })));
/// # Ok(()) }
/// ```
///
/// *Anchors:* `std::fs::OpenOptions` (a builder whose methods run the operation); .NET's
/// `File.Replace` / `FileStreamOptions`. Unlike `tempfile::NamedTempFile::persist`, the
/// default fsyncs the file and its directory.
#[derive(Clone)]
pub struct WriteOptions {
    pub(crate) overwrite: bool,
    pub(crate) permissions: Option<Permissions>,
    pub(crate) fsync: bool,
    pub(crate) chunk_size: usize,
    pub(crate) progress: Option<Progress>,
    #[cfg(feature = "host")]
    pub(crate) lifetime: Option<gracefully_host::Lifetime>,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions::new()
    }
}

impl WriteOptions {
    /// The defaults: overwrite, permissions kept, fsync on, 1 MiB chunks.
    pub fn new() -> Self {
        WriteOptions {
            overwrite: true,
            permissions: None,
            fsync: true,
            chunk_size: DEFAULT_CHUNK_SIZE,
            progress: None,
            #[cfg(feature = "host")]
            lifetime: None,
        }
    }

    /// Whether an existing destination is replaced (default `true`).
    ///
    /// With `false`, an existing destination fails the operation with
    /// [`Error::AlreadyExists`] — checked before any data is written and again, atomically,
    /// at the commit: Linux and macOS rename with `RENAME_NOREPLACE` / `RENAME_EXCL`; where
    /// the file system does not support that, the temporary file is hard-linked to the
    /// destination (which fails if it exists) and then unlinked; only where hard links are
    /// not supported either (some network and FAT file systems) is it a check followed by a
    /// rename, which a concurrent writer can race.
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// The permissions of the new file, set on the temporary file before any data is
    /// written (so a secret never sits in a file more readable than asked).
    ///
    /// Without this, the file keeps the permissions of the file it replaces; a new file gets
    /// `std::fs::write`'s (`0o666` less the umask); a copy takes its source's. Ownership is
    /// not copied: the new file belongs to the writing user.
    pub fn permissions(mut self, permissions: Permissions) -> Self {
        self.permissions = Some(permissions);
        self
    }

    /// Whether to `fsync` the file before the rename and the directory after it (default
    /// `true`). Without it the write is still atomic against a crash of the process (the
    /// destination is old or new, never a mix), but a power loss may lose it, or — on file
    /// systems that reorder metadata before data — leave an empty destination.
    pub fn fsync(mut self, fsync: bool) -> Self {
        self.fsync = fsync;
        self
    }

    /// Bytes written per chunk (default [`DEFAULT_CHUNK_SIZE`], 1 MiB); the token is checked
    /// between chunks, so after a cancellation at most one chunk is written. Must be at
    /// least 1 (the operation fails with [`Error::InvalidOptions`] otherwise). Nothing is
    /// allocated up front: a [`FileWriter`](crate::FileWriter)'s buffer grows with the data
    /// written to it, up to one chunk, so a huge chunk size (in effect, no token checks
    /// within a write) costs only the memory of the data.
    pub fn chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes;
        self
    }

    /// Calls `progress` on the blocking thread after each chunk with the bytes written to
    /// the temporary file so far. Keep it short: the next chunk waits for it.
    pub fn on_progress(mut self, progress: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Accounts the blocking work as a tracked task of this host (feature `host`) instead of
    /// [`Lifetime::current`](gracefully_host::Lifetime::current).
    #[cfg(feature = "host")]
    #[cfg_attr(docsrs, doc(cfg(feature = "host")))]
    pub fn tracked_by(mut self, lifetime: gracefully_host::Lifetime) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if self.chunk_size == 0 {
            return Err(Error::InvalidOptions(
                "chunk_size must be at least 1 byte (the default is 1 MiB)",
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for WriteOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteOptions")
            .field("overwrite", &self.overwrite)
            .field("permissions", &self.permissions)
            .field("fsync", &self.fsync)
            .field("chunk_size", &self.chunk_size)
            .field("on_progress", &self.progress.is_some())
            .finish_non_exhaustive()
    }
}
