//! [`FileWriter`]: an `AsyncWrite` into a temporary file that becomes the destination only
//! when committed.
//!
//! The writer's half is a [`Feed`] (`feed.rs`): full chunks go over a bounded channel to
//! the blocking thread, which writes them (checking the token before each, `local/mod.rs`)
//! and commits on `Msg::Commit`. A channel closed without `Commit` — the writer was dropped
//! — discards (feed invariant 1). A cancellation while the thread waits for data wakes it
//! (`Msg::Wake` from an `on_cancel` callback), so the temporary file goes at once, not when
//! the writer is next used.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{Context, Poll};

use gracefully::{CancellationToken, Cancelled, Reason};
use tokio::io::AsyncWrite;
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::feed::{self, Feed, Msg};
use crate::local::temp::TempFile;
use crate::local::{Chunks, finish, prepare, spawner};
use crate::options::WriteOptions;

/// Full chunks queued for the blocking thread besides the one it writes and the one being
/// filled.
const QUEUED_CHUNKS: usize = 2;

fn writer_dropped() -> Reason {
    Reason::requested().with_message("the FileWriter was dropped before it was committed")
}

/// A file you stream into (`tokio::io::AsyncWrite`) that appears at its path, complete, only
/// when committed, and never half written.
///
/// Data goes to a temporary file beside the destination, written by a blocking thread that
/// checks the token between chunks. [`commit`](Self::commit) (or `AsyncWriteExt::shutdown`)
/// fsyncs it and renames it over the destination. If the token fires, the writer is
/// dropped, or [`discard`](Self::discard) is called, the temporary file is removed and the
/// destination is untouched.
///
/// ```
/// use gracefully::CancellationSource;
/// use gracefully_fs::FileWriter;
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = tempfile::tempdir()?;
/// let path = dir.path().join("export.csv");
/// let request = CancellationSource::new();
///
/// let mut out = FileWriter::create(&path, &request.token()).await?;
/// out.write_all(b"id,name\n").await?;
/// out.write_all(b"1,tea\n").await?;
/// assert!(!path.exists());                  // nothing visible before the commit
/// out.commit().await?;                       // fsync, rename, fsync the directory
/// assert_eq!(std::fs::read(&path)?, b"id,name\n1,tea\n");
///
/// // Cancelled half way: the file is never there.
/// let other = dir.path().join("other.csv");
/// let mut out = FileWriter::create(&other, &request.token()).await?;
/// out.write_all(b"id,name\n").await?;
/// request.cancel();
/// assert!(gracefully::is_cancellation(&out.write_all(b"2,coffee\n").await.unwrap_err()));
/// drop(out);
/// assert!(!other.exists());
/// # Ok(()) }
/// ```
///
/// Errors from the `AsyncWrite` methods are `io::Error`s wrapping this crate's
/// [`Error`](crate::Error) (`get_ref`); a cancellation has kind `Other` (not `Interrupted`, which tokio retries) and
/// [`gracefully::is_cancellation`] recognises it. After an error, every later call returns
/// it again; the write is over.
///
/// `poll_flush` hands the buffered data to the blocking thread; nothing is visible at the
/// destination before the commit, whatever is flushed.
///
/// *Anchors:* `tokio::fs::File` (whose writes continue after a drop and leave a partial
/// file); `tempfile::NamedTempFile` + `persist` (synchronous, no fsync); the
/// `atomic-write-file` crate's `AtomicWriteFile` (synchronous, no token); .NET's
/// `FileStream` has no commit step at all.
pub struct FileWriter {
    feed: Feed<u64>,
}

impl FileWriter {
    /// Creates the temporary file for `path` (with default [`WriteOptions`]) and returns a
    /// writer into it. Fails at once if the temporary file cannot be created (a missing
    /// directory, no permission), or if `path` is a directory.
    ///
    /// Must be called from within a tokio runtime.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future (or the writer) removes the temporary file: the blocking thread
    /// does it as soon as it sees the cancellation.
    pub async fn create(
        path: impl AsRef<Path>,
        token: &CancellationToken,
    ) -> Result<FileWriter, Error> {
        FileWriter::create_with(&WriteOptions::new(), path.as_ref(), token).await
    }

    pub(crate) async fn create_with(
        options: &WriteOptions,
        path: &Path,
        token: &CancellationToken,
    ) -> Result<FileWriter, Error> {
        options.validate()?;
        let (tx, rx) = feed::channel(QUEUED_CHUNKS);
        let wake = tx.downgrade();
        let (opened_tx, opened_rx) = oneshot::channel();
        let dest = path.to_path_buf();
        let name = || format!("fs writer {}", path.display());
        let options_owned = options.clone();
        let mut job = spawner(options).blocking(name, token, writer_dropped, move |token| {
            let options = options_owned;
            // A cancellation while the thread waits for data wakes it.
            let _wake = token.on_cancel(move |_| {
                if let Some(tx) = wake.upgrade() {
                    let _ = tx.try_send(Msg::Wake);
                }
            });
            token.check()?;
            let target = prepare(&dest, &options, None)?;
            let temp = TempFile::create(&target)?;
            let _ = opened_tx.send(());
            let written = receive(rx, &temp, &options, &token)?;
            finish(temp, &target, &options, &token)?;
            Ok(written)
        });
        if opened_rx.await.is_err() {
            // The thread ended before the file was open: it says why.
            let error = (&mut job).await.err();
            return Err(error.unwrap_or_else(|| Error::Cancelled(Cancelled::new(writer_dropped()))));
        }
        Ok(FileWriter {
            feed: Feed::new(job, tx, options.chunk_size, true, writer_dropped),
        })
    }

    /// Ends the write: the remaining data is written, the file fsynced and renamed over the
    /// destination, the directory fsynced. Returns the bytes written. The same as
    /// `AsyncWriteExt::shutdown`, with this crate's error and the byte count.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves drops the writer, which cancels the write —
    /// unless its thread had already passed its last check before the rename, in which case
    /// the commit completes.
    pub async fn commit(mut self) -> Result<u64, Error> {
        poll_fn(|cx| self.feed.poll_commit(cx)).await
    }

    /// Abandons the write and waits until the temporary file is removed. The destination
    /// is untouched (unless a commit had already begun through `shutdown`, which may then
    /// have completed).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the removal to the blocking thread, which does it at once.
    pub async fn discard(self) {
        let reason = Reason::requested().with_message("the FileWriter was discarded");
        self.feed.discard(reason).await;
    }

    /// The token the writer observes: a child of the one it was created with, also
    /// cancelled when the writer is dropped.
    pub fn token(&self) -> &CancellationToken {
        self.feed.token()
    }
}

/// The thread's loop: write each chunk until `Commit`; a closed channel means the writer
/// was dropped. Returns the bytes written.
fn receive(
    mut rx: mpsc::Receiver<Msg>,
    temp: &TempFile,
    options: &WriteOptions,
    token: &CancellationToken,
) -> Result<u64, Error> {
    let mut chunks = Chunks::new(temp, options, token);
    loop {
        match rx.blocking_recv() {
            Some(Msg::Chunk(chunk)) => chunks.write(&chunk)?,
            Some(Msg::Wake) => token.check()?,
            Some(Msg::Commit) => return Ok(chunks.written()),
            None => {
                token.check()?;
                return Err(Error::Cancelled(Cancelled::new(writer_dropped())));
            }
        }
    }
}

impl AsyncWrite for FileWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().feed.poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().feed.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().feed.poll_shutdown(cx)
    }
}

impl fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileWriter")
            .field("state", &self.feed.state_name())
            .field("buffered", &self.feed.buffered())
            .finish_non_exhaustive()
    }
}
