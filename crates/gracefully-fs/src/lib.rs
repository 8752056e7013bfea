//! # gracefully-fs — writes that a cancellation never leaves half done
//!
//! A write, copy or upload made with a [`CancellationToken`] either completes or leaves
//! nothing behind.
//!
//! ```
//! use gracefully::{CancellationSource, ReasonKind};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), gracefully_fs::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("report.json");
//! let request = CancellationSource::new();
//!
//! gracefully_fs::write(&path, r#"{"v":1}"#, &request.token()).await?;
//!
//! request.cancel(); // the client left
//! let err = gracefully_fs::write(&path, r#"{"v":2}"#, &request.token()).await.unwrap_err();
//! assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Requested);
//! assert_eq!(std::fs::read_to_string(&path).unwrap(), r#"{"v":1}"#); // untouched
//! # Ok(()) }
//! ```
//!
//! ## Local files
//!
//! [`write()`], [`copy()`] and [`FileWriter`] (an `AsyncWrite`) write to a temporary file beside
//! the destination, on a blocking thread that checks the token **between chunks** (so the
//! work stops at the next chunk, not when — or if — the future is dropped), then fsync the
//! file, rename it over the destination, and fsync the directory. On cancellation, error,
//! panic or a dropped future, the temporary file is removed and the destination is
//! untouched; the error carries the [`Reason`](gracefully::Reason). Readers — and a crash at
//! any instant — see the old content or the new, never a mix. [`WriteOptions`] sets
//! overwrite-or-not (atomic no-clobber where the platform allows), permissions, fsync on or
//! off, the chunk size and a progress callback.
//!
//! A process killed mid-write (SIGKILL, OOM) cannot clean up; its temporary file is
//! recognisable by name, and [`remove_leftovers`] removes such files at startup — never one a
//! live writer still holds. With the `host` feature, `LeftoverSweep` runs it as the start
//! step of a host service, its counts in the shutdown report.
//!
//! | | this crate | anchor |
//! |---|---|---|
//! | cancelled write | stops at the next chunk; temp file removed; destination untouched | `tokio::fs::write`: dropping the future does not stop the blocking work (tokio#3247), a partial file stays; .NET `CopyToAsync(token)`: stops between chunks, leaves the partial destination |
//! | durability | fsync file, rename, fsync directory (default) | `tempfile::NamedTempFile::persist`: atomic, no fsync, synchronous |
//! | no-clobber | `RENAME_NOREPLACE` / `link`+`unlink`, atomic | `File::create_new` + write: atomic name, but a crash leaves a partial file |
//! | crash leftovers | [`remove_leftovers`] | none |
//!
//! ## Object storage (feature `object_store`)
//!
//! `object::put` and `object::ObjectWriter` upload through the
//! [`object_store`](https://docs.rs/object_store) crate (S3, GCS, Azure, local, memory)
//! with a token: a cancelled multipart upload is **aborted on the server** (no parts left
//! billing until a lifecycle rule), and a cancelled put leaves no object.
//!
//! ## Shutdown accounting (feature `host`)
//!
//! With the `host` feature, each write's blocking work runs as a tracked task of the
//! running [`gracefully-host`](https://docs.rs/gracefully-host) host
//! (`Lifetime::current()`, or `WriteOptions::tracked_by`): the drain and cancel phases
//! wait for it, and a write still running at the abort phase is named in the shutdown
//! report (`fs write <path>`, aborted) and cancelled. Without the feature (or without a
//! running host) the work is untracked but still stops at its next chunk when its future is
//! dropped. Give writes a token that descends from the host's hard stop
//! (docs/architecture.md, "The shutdown contract") so the cancel phase stops them.
//!
//! ## Features
//!
//! | feature | default | |
//! |---|---|---|
//! | `host` | off | account blocking work in `gracefully-host`'s shutdown report |
//! | `object_store` | off | the `object` module |
//!
//! ## Platforms
//!
//! Linux is where this is tested. The code is Unix-first (`flock`, directory fsync,
//! `RENAME_NOREPLACE` on Linux and macOS); elsewhere no-clobber falls back to `link`, and
//! directories are not fsynced (Windows cannot).
//!
//! Needs a tokio runtime (blocking threads come from `spawn_blocking`).

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]
// No unsafe code: system calls std lacks (renameat2) come from rustix's safe wrappers.
#![forbid(unsafe_code)]

mod error;
mod feed;
mod job;
mod local;
mod options;
#[cfg(feature = "host")]
mod sweep;

#[cfg(feature = "object_store")]
#[cfg_attr(docsrs, doc(cfg(feature = "object_store")))]
pub mod object;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

use std::path::Path;

use bytes::Bytes;
use gracefully::CancellationToken;

pub use error::{Error, Step};
pub use local::{FileWriter, Leftovers, remove_leftovers};
pub use options::{DEFAULT_CHUNK_SIZE, WriteOptions};
#[cfg(feature = "host")]
#[cfg_attr(docsrs, doc(cfg(feature = "host")))]
pub use sweep::LeftoverSweep;

/// Writes `contents` to `path` so that it is either completely written or not at all
/// (with default [`WriteOptions`]: overwrite, permissions kept, fsync, 1 MiB chunks).
///
/// The data goes to a temporary file beside `path` on a blocking thread that checks `token`
/// before each chunk; then the file is fsynced, renamed over `path`, and the directory
/// fsynced. If `token` fires first (or the future is dropped, or anything fails) the
/// temporary file is removed and `path` keeps its old content (or stays absent). The
/// rename is the commit point: once the thread is past its last check before it, the write
/// completes.
///
/// `contents` is anything that converts to [`Bytes`] without copying (`Vec<u8>`, `String`,
/// `&'static str`, `Bytes`); borrowed data: `Bytes::copy_from_slice`.
///
/// ```
/// use gracefully::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), gracefully_fs::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("config.toml");
/// gracefully_fs::write(&path, "port = 8080\n", &CancellationToken::never()).await?;
/// assert_eq!(std::fs::read_to_string(&path).unwrap(), "port = 8080\n");
/// # Ok(()) }
/// ```
///
/// Must be called from within a tokio runtime.
///
/// # Cancel safety
///
/// Cancel safe in the sense that matters: dropping the future cancels the write; its
/// blocking thread stops at the next chunk and removes the temporary file (with the `host`
/// feature, as a tracked task the shutdown report can name). The destination is never left
/// half written. When the future *resolves* with a cancellation, the temporary file is
/// already gone.
///
/// *Anchors:* `tokio::fs::write` (not atomic; a dropped future does not stop it);
/// `std::fs::write`; .NET `File.WriteAllBytesAsync(path, bytes, token)` (which leaves a
/// partial file when cancelled); Go's `os.WriteFile` (no context).
pub async fn write(
    path: impl AsRef<Path>,
    contents: impl Into<Bytes>,
    token: &CancellationToken,
) -> Result<(), Error> {
    local::write(&WriteOptions::new(), path.as_ref(), contents.into(), token).await
}

/// Copies the file `from` to `to` so that `to` is either a complete copy or untouched (with
/// default [`WriteOptions`]; the copy gets `from`'s permissions, as `std::fs::copy` does).
/// Returns the bytes copied.
///
/// The same sequence as [`write()`]: a temporary file beside `to`, chunks copied on a blocking
/// thread with the token checked between them (in the kernel where it can:
/// `copy_file_range` on Linux), fsync, rename, directory fsync. Copying a file onto itself
/// leaves it as it was (where `std::fs::copy` may truncate it).
///
/// `from` must be a regular file (a symbolic link to one is followed): a FIFO, device or
/// socket is refused with a [`Step::Read`] error naming it, before it is opened — opening or
/// reading one can block inside a system call, out of the token's reach. A failed read
/// names `from` ([`Step::Read`]); a failed write, such as a full disk, the temporary file
/// beside `to` ([`Step::Write`]).
///
/// ```
/// use gracefully::CancellationToken;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), gracefully_fs::Error> {
/// # let dir = tempfile::tempdir().unwrap();
/// # let (from, to) = (dir.path().join("a"), dir.path().join("b"));
/// std::fs::write(&from, b"hello").unwrap();
/// let copied = gracefully_fs::copy(&from, &to, &CancellationToken::never()).await?;
/// assert_eq!(copied, 5);
/// # Ok(()) }
/// ```
///
/// Must be called from within a tokio runtime.
///
/// # Cancel safety
///
/// As [`write()`]: dropping the future cancels the copy at its next chunk; `to` is untouched.
///
/// *Anchors:* `tokio::fs::copy`, `std::fs::copy` (neither atomic nor cancellable); .NET
/// `Stream.CopyToAsync(dest, token)` (checks the token between buffers, leaves the partial
/// destination).
pub async fn copy(
    from: impl AsRef<Path>,
    to: impl AsRef<Path>,
    token: &CancellationToken,
) -> Result<u64, Error> {
    local::copy(&WriteOptions::new(), from.as_ref(), to.as_ref(), token).await
}
