//! [`ObjectWriter`]: an `AsyncWrite` into an object that appears, complete, only when
//! committed.

use std::fmt;
use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use gracefully::{CancellationToken, Reason};
use object_store::path::Path;
use object_store::{ObjectStore, PutResult};
use tokio::io::AsyncWrite;

use crate::error::Error;
use crate::feed::{self, Feed};
use crate::object::{UploadOptions, upload};

/// Full parts queued for the upload task besides those in flight and the one being filled.
const QUEUED_PARTS: usize = 1;

fn writer_dropped() -> Reason {
    Reason::requested().with_message("the ObjectWriter was dropped before it was committed")
}

/// An object you stream into (`tokio::io::AsyncWrite`) that appears in the store, complete,
/// only when [committed](Self::commit) — never half written, and never leaving a pending
/// multipart upload behind.
///
/// Data is cut into parts of [`UploadOptions::part_size`] (10 MiB); an object that fits
/// one part goes as a single `PUT` at the commit, a larger one as a multipart upload whose
/// parts go up while you write (up to [`UploadOptions::concurrency`] at once). If the token
/// fires, the writer is dropped, or [`discard`](Self::discard) is called, the upload is
/// aborted on the server and no object appears.
///
/// ```
/// use std::sync::Arc;
/// use gracefully::CancellationToken;
/// use gracefully_fs::object::ObjectWriter;
/// use object_store::{ObjectStore, ObjectStoreExt, memory::InMemory, path::Path};
/// use tokio::io::AsyncWriteExt;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
/// let location = Path::from("exports/day.csv");
/// let mut out = ObjectWriter::create(Arc::clone(&store), &location, &CancellationToken::never());
/// out.write_all(b"id,name\n1,tea\n").await?;
/// out.commit().await?;
/// let stored = store.get(&location).await?.bytes().await?;
/// assert_eq!(&stored[..], b"id,name\n1,tea\n");
/// # Ok(()) }
/// ```
///
/// Errors from the `AsyncWrite` methods are `io::Error`s wrapping this crate's
/// [`Error`](crate::Error); a cancellation has kind `Other` (not `Interrupted`, which tokio retries) and
/// [`gracefully::is_cancellation`] recognises it. `poll_flush` does nothing (parts must be
/// whole); `poll_shutdown` commits.
///
/// *Anchors:* `object_store::buffered::BufWriter` (whose dropped upload leaves its parts on
/// S3 and GCS unless `abort` is called); .NET `TransferUtility` with a token.
pub struct ObjectWriter {
    feed: Feed<PutResult>,
}

impl ObjectWriter {
    /// A writer into the object at `location` (with default [`UploadOptions`]). Nothing is
    /// sent to the store until the first part is full, or the commit.
    ///
    /// Must be called from within a tokio runtime.
    pub fn create(
        store: Arc<dyn ObjectStore>,
        location: &Path,
        token: &CancellationToken,
    ) -> ObjectWriter {
        ObjectWriter::create_with(&UploadOptions::new(), store, location, token)
    }

    pub(crate) fn create_with(
        options: &UploadOptions,
        store: Arc<dyn ObjectStore>,
        location: &Path,
        token: &CancellationToken,
    ) -> ObjectWriter {
        let (tx, rx) = feed::channel(QUEUED_PARTS);
        let (job_options, job_location) = (options.clone(), location.clone());
        let name = || format!("object upload {location}");
        let job = options
            .spawner()
            .task(name, token, writer_dropped, move |token| {
                upload::from_feed(store, job_location, job_options, token, rx, writer_dropped)
            });
        ObjectWriter {
            feed: Feed::new(
                job,
                tx,
                options.part_size_or_default(),
                false,
                writer_dropped,
            ),
        }
    }

    /// Ends the upload: the last part is sent and the upload completed (or, for an object
    /// that fits one part, a single `PUT` made). Returns the store's result (e-tag,
    /// version). The same as `AsyncWriteExt::shutdown`, with this crate's error.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future before it resolves drops the writer, which aborts the upload —
    /// unless the completing request has already started, which then runs to its end.
    pub async fn commit(mut self) -> Result<PutResult, Error> {
        poll_fn(|cx| self.feed.poll_commit(cx)).await
    }

    /// Abandons the upload and waits until it is aborted on the server.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future leaves the abort to the upload's task, which does it at once.
    pub async fn discard(self) {
        let reason = Reason::requested().with_message("the ObjectWriter was discarded");
        self.feed.discard(reason).await;
    }

    /// The token the writer observes: a child of the one it was created with, also
    /// cancelled when the writer is dropped.
    pub fn token(&self) -> &CancellationToken {
        self.feed.token()
    }
}

impl AsyncWrite for ObjectWriter {
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

impl fmt::Debug for ObjectWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectWriter")
            .field("state", &self.feed.state_name())
            .field("buffered", &self.feed.buffered())
            .finish_non_exhaustive()
    }
}
