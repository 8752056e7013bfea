//! Object storage through the [`object_store`] crate (S3, GCS, Azure, local, memory): a
//! put or upload made with a token leaves either the complete object or nothing — and a
//! cancelled multipart upload is aborted **on the server**, not left billing for its parts
//! until a lifecycle rule removes them.
//!
//! ```
//! use std::sync::Arc;
//! use gracefully::CancellationSource;
//! use gracefully_fs::object::{self, ObjectWriter};
//! use object_store::{ObjectStore, ObjectStoreExt, memory::InMemory, path::Path};
//! use tokio::io::AsyncWriteExt;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
//! let request = CancellationSource::new();
//!
//! object::put(Arc::clone(&store), &Path::from("a.txt"), "hello", &request.token()).await?;
//!
//! let mut upload = ObjectWriter::create(Arc::clone(&store), &Path::from("b.bin"), &request.token());
//! upload.write_all(&[7; 1000]).await?;
//! request.cancel(); // the client left: the upload is aborted, no object appears
//! assert!(upload.commit().await.unwrap_err().as_cancelled().is_some());
//! assert!(store.head(&Path::from("b.bin")).await.is_err());
//! # Ok(()) }
//! ```
//!
//! ## The commit point
//!
//! A single `PUT` (payloads up to [`UploadOptions::part_size`]) is one request that stores
//! the whole object or nothing; the token is checked before it starts, and once started it
//! runs to its end — cutting it off half way could leave an object the caller was told was
//! not written. A multipart upload checks the token before every part and while parts are
//! in flight; on cancellation it stops the parts in flight and sends `AbortMultipartUpload`
//! (S3; the equivalent elsewhere), then reports the cancellation. `CompleteMultipartUpload`
//! is the commit point and is likewise never cut off.
//!
//! Cancellation between parts is what bounds the latency: at most the parts in flight
//! ([`UploadOptions::concurrency`] × [`UploadOptions::part_size`]) finish or are dropped.
//!
//! Like the local writes, the work runs in a task of its own, so a dropped future cancels
//! it — and the abort still reaches the server; with the `host` feature the task is
//! tracked in the shutdown report (`object put <location>` / `object upload <location>`).
//!
//! *Anchors:* `object_store`'s own `BufWriter` / `WriteMultipart` (which need an explicit
//! `abort()` call: a dropped upload leaves its parts); the AWS SDK's transfer managers (.NET
//! `TransferUtility.UploadAsync(token)` aborts on cancellation, as here; Go's
//! `manager.Uploader` likewise, unless `LeavePartsOnError`).

mod upload;
mod writer;

use std::fmt;
use std::sync::Arc;

use gracefully::{CancellationToken, Reason};
use object_store::path::Path;
use object_store::{ObjectStore, PutMultipartOptions, PutPayload, PutResult};

use crate::error::Error;
use crate::job::Spawner;

pub use writer::ObjectWriter;

/// The default part size: 10 MiB (as `object_store`'s `BufWriter`). S3 requires every part
/// but the last to be at least 5 MiB.
pub const DEFAULT_PART_SIZE: usize = 10 * 1024 * 1024;

/// The largest part size: 5 GiB, S3's limit for a part and for a single `PUT` (an object
/// up to the part size goes as one). A larger one is refused with `Error::InvalidOptions`.
const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;

/// The default number of parts uploaded at once.
pub const DEFAULT_CONCURRENCY: usize = 4;

/// Options for [`put`] and [`ObjectWriter`].
///
/// | option | default | |
/// |---|---|---|
/// | [`part_size`](Self::part_size) | [`DEFAULT_PART_SIZE`] (10 MiB) | payloads up to it go in one `PUT`; larger ones as a multipart upload of parts this size; 1 byte to 5 GiB |
/// | [`concurrency`](Self::concurrency) | [`DEFAULT_CONCURRENCY`] (4) | parts in flight at once |
/// | [`multipart_options`](Self::multipart_options) | none | attributes, tags, extensions of the object |
#[derive(Clone, Default)]
pub struct UploadOptions {
    part_size: Option<usize>,
    concurrency: Option<usize>,
    multipart: PutMultipartOptions,
    #[cfg(feature = "host")]
    lifetime: Option<gracefully_host::Lifetime>,
}

impl UploadOptions {
    /// The defaults.
    pub fn new() -> Self {
        UploadOptions::default()
    }

    /// The part size (default [`DEFAULT_PART_SIZE`]). Must be at least 1 and at most 5 GiB
    /// (S3's largest part), else the put or `create` fails with
    /// [`Error::InvalidOptions`]; S3 needs at least 5 MiB, and some stores (R2) equal parts,
    /// which this crate always sends. An [`ObjectWriter`]'s buffer grows with the data, so
    /// a large part size costs memory only as data arrives.
    pub fn part_size(mut self, bytes: usize) -> Self {
        self.part_size = Some(bytes);
        self
    }

    /// Parts uploaded at once (default [`DEFAULT_CONCURRENCY`]); at least 1.
    pub fn concurrency(mut self, parts: usize) -> Self {
        self.concurrency = Some(parts);
        self
    }

    /// The object's attributes, tags and extensions (used for the single `PUT` too).
    pub fn multipart_options(mut self, options: PutMultipartOptions) -> Self {
        self.multipart = options;
        self
    }

    /// Accounts the upload as a tracked task of this host (feature `host`) instead of
    /// [`Lifetime::current`](gracefully_host::Lifetime::current).
    #[cfg(feature = "host")]
    #[cfg_attr(docsrs, doc(cfg(feature = "host")))]
    pub fn tracked_by(mut self, lifetime: gracefully_host::Lifetime) -> Self {
        self.lifetime = Some(lifetime);
        self
    }

    pub(crate) fn part_size_or_default(&self) -> usize {
        self.part_size.unwrap_or(DEFAULT_PART_SIZE)
    }

    pub(crate) fn concurrency_or_default(&self) -> usize {
        self.concurrency.unwrap_or(DEFAULT_CONCURRENCY)
    }

    fn validate(&self) -> Result<(), Error> {
        if self.part_size == Some(0) {
            return Err(Error::InvalidOptions(
                "part_size must be at least 1 byte (the default is 10 MiB; S3 needs 5 MiB)",
            ));
        }
        // u64: 5 GiB does not fit a 32-bit usize, where no part can exceed it anyway.
        if self
            .part_size
            .is_some_and(|size| size as u64 > MAX_PART_SIZE)
        {
            return Err(Error::InvalidOptions(
                "part_size must be at most 5 GiB (S3's largest part and largest single PUT; \
                 the default is 10 MiB)",
            ));
        }
        if self.concurrency == Some(0) {
            return Err(Error::InvalidOptions(
                "concurrency must be at least 1 part (the default is 4)",
            ));
        }
        Ok(())
    }

    pub(crate) fn spawner(&self) -> Spawner {
        #[cfg(feature = "host")]
        return Spawner::new(self.lifetime.clone());
        #[cfg(not(feature = "host"))]
        Spawner::new()
    }

    /// [`put`] with these options.
    ///
    /// # Cancel safety
    ///
    /// See [`put`].
    pub async fn put(
        &self,
        store: Arc<dyn ObjectStore>,
        location: &Path,
        payload: impl Into<PutPayload>,
        token: &CancellationToken,
    ) -> Result<PutResult, Error> {
        self.validate()?;
        let payload = payload.into();
        let (options, job_location) = (self.clone(), location.clone());
        let name = || format!("object put {location}");
        let job = self.spawner().task(name, token, put_dropped, move |token| {
            upload::put(store, job_location, payload, options, token)
        });
        job.await
    }

    /// [`ObjectWriter::create`] with these options; fails only for invalid options.
    pub fn create(
        &self,
        store: Arc<dyn ObjectStore>,
        location: &Path,
        token: &CancellationToken,
    ) -> Result<ObjectWriter, Error> {
        self.validate()?;
        Ok(ObjectWriter::create_with(self, store, location, token))
    }
}

impl fmt::Debug for UploadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UploadOptions")
            .field("part_size", &self.part_size_or_default())
            .field("concurrency", &self.concurrency_or_default())
            .finish_non_exhaustive()
    }
}

fn put_dropped() -> Reason {
    Reason::requested().with_message("the put's future was dropped before it finished")
}

/// Stores `payload` at `location` — all of it, or (cancelled, failed) nothing.
///
/// Up to [`UploadOptions::part_size`] (10 MiB) it is one `PUT`, which starts only if the
/// token has not fired and then runs to its end (the commit point). Larger payloads go as a
/// multipart upload: the token is checked between parts, and a cancellation aborts the
/// upload on the server, so neither an object nor pending parts remain.
///
/// Must be called from within a tokio runtime.
///
/// # Cancel safety
///
/// Dropping the future cancels the put like the token would: a multipart upload is aborted
/// on the server (by its own task, which outlives the future); a single `PUT` that has
/// already started completes.
///
/// *Anchors:* `ObjectStore::put` (no token: a dropped future may or may not have stored the
/// object); .NET `TransferUtility.UploadAsync(request, token)`.
pub async fn put(
    store: Arc<dyn ObjectStore>,
    location: &Path,
    payload: impl Into<PutPayload>,
    token: &CancellationToken,
) -> Result<PutResult, Error> {
    UploadOptions::new()
        .put(store, location, payload, token)
        .await
}
