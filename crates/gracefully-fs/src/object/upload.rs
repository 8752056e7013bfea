//! The upload job: a single `PUT`, or a multipart upload whose parts are uploaded a few at a
//! time and which is aborted on the server when it does not complete.
//!
//! Invariants (cited as "upload invariant N"):
//!
//! 1. **Every started multipart upload ends in `complete` or `abort`.**
//!    [`Uploader::abort_unless_ok`] calls [`Uploader::abort`] on every exit but a successful
//!    `complete`: cancellation, failed part, failed complete, dropped writer.
//! 2. **Requests that create state on the server are never cut off.** Starting the upload
//!    and completing it are awaited to their end, not raced against the token: a start cut
//!    off after the server created the upload would leave one we cannot name to abort; a
//!    complete cut off could leave an object we report as not written. The token is checked
//!    right before each. Part uploads *are* cut off on cancellation: the abort removes
//!    whatever parts reached the server.
//! 3. **Parts in flight are stopped before the abort**, so no part lands after it (S3's
//!    documentation warns that parts still uploading can survive an abort).

use std::sync::Arc;

use bytes::Bytes;
use gracefully::{CancellationToken, Cancelled, Reason};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, PutOptions, PutPayload, PutResult};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::error::{Error, Step};
use crate::feed::Msg;
use crate::object::UploadOptions;

/// A `put` of a whole payload: one `PUT` if it fits a part, else a multipart upload.
pub(super) async fn put(
    store: Arc<dyn ObjectStore>,
    location: Path,
    payload: PutPayload,
    options: UploadOptions,
    token: CancellationToken,
) -> Result<PutResult, Error> {
    let part_size = options.part_size_or_default();
    let mut uploader = Uploader::new(store, location, options, token);
    if payload.content_length() <= part_size {
        return uploader.single(payload).await;
    }
    let result = uploader.parts_of(payload, part_size).await;
    uploader.abort_unless_ok(result).await
}

/// The job of an [`ObjectWriter`](super::ObjectWriter): uploads the chunks it receives
/// (full parts, feed invariant 2) until `Commit`.
pub(super) async fn from_feed(
    store: Arc<dyn ObjectStore>,
    location: Path,
    options: UploadOptions,
    token: CancellationToken,
    rx: mpsc::Receiver<Msg>,
    dropped: fn() -> Reason,
) -> Result<PutResult, Error> {
    let mut uploader = Uploader::new(store, location, options, token);
    let result = uploader.feed(rx, dropped).await;
    uploader.abort_unless_ok(result).await
}

/// One object's upload.
struct Uploader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    options: UploadOptions,
    token: CancellationToken,
    /// Started lazily, by the first part.
    upload: Option<Box<dyn MultipartUpload>>,
    parts: JoinSet<object_store::Result<()>>,
}

impl Uploader {
    fn new(
        store: Arc<dyn ObjectStore>,
        location: Path,
        options: UploadOptions,
        token: CancellationToken,
    ) -> Self {
        Uploader {
            store,
            location,
            options,
            token,
            upload: None,
            parts: JoinSet::new(),
        }
    }

    /// One `PUT` of the whole object: checked, then run to its end (upload invariant 2).
    async fn single(&mut self, payload: PutPayload) -> Result<PutResult, Error> {
        self.token.check()?;
        let multipart = self.options.multipart.clone();
        let options = PutOptions {
            tags: multipart.tags,
            attributes: multipart.attributes,
            extensions: multipart.extensions,
            ..PutOptions::default()
        };
        self.store
            .put_opts(&self.location, payload, options)
            .await
            .map_err(|e| Error::store(Step::Put, &self.location, e))
    }

    /// Uploads `payload` in equal parts, sliced without copying, then completes.
    async fn parts_of(
        &mut self,
        payload: PutPayload,
        part_size: usize,
    ) -> Result<PutResult, Error> {
        let mut part = Vec::new();
        let mut filled = 0;
        for bytes in payload.iter() {
            let mut rest = bytes.clone();
            while !rest.is_empty() {
                let take = rest.len().min(part_size - filled);
                part.push(rest.split_to(take));
                filled += take;
                if filled == part_size {
                    self.part(PutPayload::from_iter(std::mem::take(&mut part)))
                        .await?;
                    filled = 0;
                }
            }
        }
        self.complete(PutPayload::from_iter(part)).await
    }

    /// Uploads the chunks from `rx` until `Commit`. The last chunk received is held back,
    /// so that an object that fits one part goes as a single `PUT`, and the last part is
    /// sent just before the complete.
    async fn feed(
        &mut self,
        mut rx: mpsc::Receiver<Msg>,
        dropped: fn() -> Reason,
    ) -> Result<PutResult, Error> {
        let mut held: Option<Bytes> = None;
        loop {
            let msg = tokio::select! {
                biased;
                reason = self.token.cancelled() => return Err(Error::Cancelled(Cancelled::new(reason))),
                msg = rx.recv() => msg,
            };
            match msg {
                Some(Msg::Chunk(chunk)) => {
                    if let Some(previous) = held.replace(chunk) {
                        self.part(previous.into()).await?;
                    }
                }
                Some(Msg::Commit) => {
                    let last = PutPayload::from_iter(held);
                    return if self.upload.is_none() {
                        self.single(last).await
                    } else {
                        self.complete(last).await
                    };
                }
                Some(Msg::Wake) => {}
                // Feed invariant 1: the writer was dropped.
                None => return Err(Error::Cancelled(Cancelled::new(dropped()))),
            }
        }
    }

    /// Upload invariant 1: every exit but a successful complete aborts.
    async fn abort_unless_ok(
        &mut self,
        result: Result<PutResult, Error>,
    ) -> Result<PutResult, Error> {
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    /// Uploads one part once fewer than `concurrency` are in flight, starting the upload
    /// first if needed.
    async fn part(&mut self, data: PutPayload) -> Result<(), Error> {
        while self.parts.len() >= self.options.concurrency_or_default() {
            self.join_one().await?;
        }
        self.token.check()?;
        let upload = match &mut self.upload {
            Some(upload) => upload,
            None => {
                // Upload invariant 2: not raced against the token.
                let started = self
                    .store
                    .put_multipart_opts(&self.location, self.options.multipart.clone())
                    .await
                    .map_err(|e| Error::store(Step::StartUpload, &self.location, e))?;
                // Recorded before the check, so a cancellation during the start still
                // aborts it (upload invariant 1).
                self.upload.insert(started)
            }
        };
        self.token.check()?;
        self.parts.spawn(upload.put_part(data));
        Ok(())
    }

    /// Waits for one part in flight to finish, or for the token (which wins).
    async fn join_one(&mut self) -> Result<(), Error> {
        let joined = tokio::select! {
            biased;
            reason = self.token.cancelled() => return Err(Error::Cancelled(Cancelled::new(reason))),
            joined = self.parts.join_next() => joined,
        };
        match joined {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(Error::store(Step::UploadPart, &self.location, e)),
            Some(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Some(Err(_)) => Err(Error::Cancelled(Cancelled::new(
                Reason::shutdown().with_message("the runtime shut down mid-upload"),
            ))),
        }
    }

    /// Sends the last part (if any data), waits for every part, then completes: checked,
    /// then run to its end (upload invariant 2).
    async fn complete(&mut self, last: PutPayload) -> Result<PutResult, Error> {
        if last.content_length() > 0 {
            self.part(last).await?;
        }
        while !self.parts.is_empty() {
            self.join_one().await?;
        }
        self.token.check()?;
        let Some(upload) = &mut self.upload else {
            // No part was ever sent (an empty payload reaches here only through `single`).
            return self.single(PutPayload::default()).await;
        };
        upload
            .complete()
            .await
            .map_err(|e| Error::store(Step::CompleteUpload, &self.location, e))
    }

    /// Stops the parts in flight (upload invariant 3), then aborts the upload on the server.
    /// A failed abort is logged: the parts then stay until a lifecycle rule removes them.
    async fn abort(&mut self) {
        self.parts.abort_all();
        while self.parts.join_next().await.is_some() {}
        let Some(upload) = &mut self.upload else {
            return;
        };
        if let Err(error) = upload.abort().await {
            tracing::warn!(
                location = %self.location,
                %error,
                "could not abort the multipart upload; its parts stay until a lifecycle rule removes them"
            );
        }
    }
}
