//! Object storage without a server: an in-memory store wrapped to record every multipart
//! call, so the tests see that a cancelled upload is aborted (not merely abandoned) and
//! that no object appears.

mod support;

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use gracefully::{CancellationSource, CancellationToken, Reason, ReasonKind};
use gracefully_fs::object::{self, UploadOptions};
use gracefully_test::{Outcome, Walk, cancel_at_every_await};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use tokio::io::AsyncWriteExt;

/// Called with the part number (1-based) as each part upload starts.
type PartHook = Box<dyn Fn(usize) + Send>;

/// A store and what it saw.
type Recorded = (Arc<dyn ObjectStore>, Arc<Calls>);

/// What the store saw.
#[derive(Default)]
struct Calls {
    puts: AtomicUsize,
    started: AtomicUsize,
    parts: AtomicUsize,
    completed: AtomicUsize,
    aborted: AtomicUsize,
    on_part: Mutex<Option<PartHook>>,
    /// Called while the multipart upload is being started (before the store answers).
    on_start: Mutex<Option<PartHook>>,
    /// Fail this part number.
    fail_part: AtomicUsize,
}

/// An `InMemory` store that records multipart calls.
struct Recording {
    inner: InMemory,
    calls: Arc<Calls>,
}

impl fmt::Debug for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recording")
    }
}

impl fmt::Display for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Recording")
    }
}

struct RecordingUpload {
    inner: Box<dyn MultipartUpload>,
    calls: Arc<Calls>,
}

impl fmt::Debug for RecordingUpload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordingUpload")
    }
}

#[async_trait]
impl MultipartUpload for RecordingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let n = self.calls.parts.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(hook) = &*self.calls.on_part.lock().unwrap() {
            hook(n);
        }
        if self.calls.fail_part.load(Ordering::SeqCst) == n {
            return Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "Recording",
                    source: "injected part failure".into(),
                })
            });
        }
        let upload = self.inner.put_part(data);
        // A part takes a little while, so parts are in flight when cancellations land.
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            upload.await
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.calls.completed.fetch_add(1, Ordering::SeqCst);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.calls.aborted.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Recording {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.calls.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let n = self.calls.started.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(hook) = &*self.calls.on_start.lock().unwrap() {
            hook(n);
        }
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(RecordingUpload {
            inner,
            calls: self.calls.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn recording() -> Recorded {
    let calls = Arc::new(Calls::default());
    let store = Recording {
        inner: InMemory::new(),
        calls: calls.clone(),
    };
    (Arc::new(store), calls)
}

const PART: usize = 1024;
const PARTS: usize = 8;

fn options() -> UploadOptions {
    UploadOptions::new().part_size(PART).concurrency(2)
}

fn data(len: usize) -> Vec<u8> {
    support::content(len, 7)
}

async fn exists(store: &Arc<dyn ObjectStore>, location: &Path) -> bool {
    match store.head(location).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head failed: {e}"),
    }
}

/// Every multipart upload that started ended in exactly one complete or abort.
async fn every_upload_ended(calls: &Calls) {
    for _ in 0..2000 {
        let ended = calls.completed.load(Ordering::SeqCst) + calls.aborted.load(Ordering::SeqCst);
        if ended == calls.started.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "started {} uploads, completed {}, aborted {}",
        calls.started.load(Ordering::SeqCst),
        calls.completed.load(Ordering::SeqCst),
        calls.aborted.load(Ordering::SeqCst)
    );
}

#[tokio::test]
async fn a_small_put_is_one_request_and_a_large_one_a_completed_multipart_upload() {
    let (store, calls) = recording();
    let token = CancellationToken::never();
    object::put(store.clone(), &Path::from("small"), "tiny", &token)
        .await
        .unwrap();
    assert_eq!(calls.puts.load(Ordering::SeqCst), 1);
    assert_eq!(calls.started.load(Ordering::SeqCst), 0);

    let large = data(PARTS * PART + 10);
    options()
        .put(store.clone(), &Path::from("large"), large.clone(), &token)
        .await
        .unwrap();
    assert_eq!(calls.parts.load(Ordering::SeqCst), PARTS + 1);
    assert_eq!(calls.completed.load(Ordering::SeqCst), 1);
    let stored = store
        .get(&Path::from("large"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&stored[..], &large[..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_cancelled_at_every_part_is_aborted_and_leaves_no_object() {
    for at in 1..=PARTS + 1 {
        let (store, calls) = recording();
        let source = Arc::new(CancellationSource::new());
        let canceller = source.clone();
        *calls.on_part.lock().unwrap() = Some(Box::new(move |n| {
            if n == at {
                canceller.cancel_with(Reason::requested().with_message("at a part"));
            }
        }));
        let location = Path::from("obj");
        let result = options()
            .put(
                store.clone(),
                &location,
                data(PARTS * PART + 10),
                &source.token(),
            )
            .await;
        let err = result.expect_err("cancelled");
        assert_eq!(
            err.as_cancelled().map(|c| c.kind()),
            Some(ReasonKind::Requested),
            "{err}"
        );
        assert_eq!(
            calls.aborted.load(Ordering::SeqCst),
            1,
            "part {at}: not aborted"
        );
        assert_eq!(calls.completed.load(Ordering::SeqCst), 0);
        assert!(
            calls.parts.load(Ordering::SeqCst) <= at + 1,
            "parts kept going after the cancel"
        );
        assert!(!exists(&store, &location).await);
    }
}

#[tokio::test]
async fn a_cancellation_during_the_start_request_still_aborts_the_upload() {
    // The server has created the upload by the time its answer arrives: a cancellation
    // that lands while we wait for it must still lead to the abort.
    let (store, calls) = recording();
    let source = Arc::new(CancellationSource::new());
    let canceller = source.clone();
    *calls.on_start.lock().unwrap() = Some(Box::new(move |_| {
        canceller.cancel();
    }));
    let err = options()
        .put(
            store.clone(),
            &Path::from("s"),
            data(3 * PART),
            &source.token(),
        )
        .await
        .unwrap_err();
    assert!(err.as_cancelled().is_some(), "{err}");
    assert_eq!(calls.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        calls.aborted.load(Ordering::SeqCst),
        1,
        "the started upload was left pending"
    );
    assert_eq!(calls.parts.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_put_with_a_cancelled_token_sends_nothing() {
    let (store, calls) = recording();
    let source = CancellationSource::new();
    source.cancel();
    let err = object::put(store.clone(), &Path::from("x"), "x", &source.token())
        .await
        .unwrap_err();
    assert!(err.as_cancelled().is_some());
    assert_eq!(calls.puts.load(Ordering::SeqCst), 0);
    assert!(!exists(&store, &Path::from("x")).await);
}

/// S3's largest part (and largest single `PUT`): 5 GiB.
#[cfg(target_pointer_width = "64")]
const FIVE_GIB: usize = 5 << 30;

#[cfg(target_pointer_width = "64")]
#[tokio::test]
async fn a_part_size_above_5_gib_is_refused_naming_the_option() {
    let (store, calls) = recording();
    let too_big = UploadOptions::new().part_size(FIVE_GIB + 1);
    let err = too_big
        .put(
            store.clone(),
            &Path::from("x"),
            "x",
            &CancellationToken::never(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, gracefully_fs::Error::InvalidOptions(_)),
        "{err}"
    );
    assert!(err.to_string().contains("part_size"), "{err}");
    let err = too_big
        .create(store.clone(), &Path::from("x"), &CancellationToken::never())
        .unwrap_err();
    assert!(err.to_string().contains("part_size"), "{err}");
    assert_eq!(calls.puts.load(Ordering::SeqCst), 0);
}

#[cfg(target_pointer_width = "64")]
#[tokio::test]
async fn a_writer_with_the_largest_part_size_buffers_only_what_it_is_given() {
    let (store, calls) = recording();
    let location = Path::from("big-parts");
    let mut writer = UploadOptions::new()
        .part_size(FIVE_GIB)
        .create(store.clone(), &location, &CancellationToken::never())
        .unwrap();
    writer.write_all(b"small").await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(calls.puts.load(Ordering::SeqCst), 1);
    assert_eq!(
        &store.get(&location).await.unwrap().bytes().await.unwrap()[..],
        b"small"
    );
}

#[tokio::test]
async fn a_failed_part_aborts_the_upload_and_names_the_step() {
    let (store, calls) = recording();
    calls.fail_part.store(3, Ordering::SeqCst);
    let err = options()
        .put(
            store.clone(),
            &Path::from("f"),
            data(PARTS * PART),
            &CancellationToken::never(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some(gracefully_fs::Step::UploadPart), "{err}");
    assert!(err.to_string().contains("injected part failure"), "{err}");
    assert!(!gracefully::is_cancellation(&err));
    assert_eq!(calls.aborted.load(Ordering::SeqCst), 1);
    assert!(!exists(&store, &Path::from("f")).await);
}

#[tokio::test]
async fn a_writer_of_a_small_object_makes_one_put() {
    let (store, calls) = recording();
    let location = Path::from("w");
    let mut writer = options()
        .create(store.clone(), &location, &CancellationToken::never())
        .unwrap();
    writer.write_all(b"short").await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(calls.puts.load(Ordering::SeqCst), 1);
    assert_eq!(calls.started.load(Ordering::SeqCst), 0);
    assert_eq!(
        &store.get(&location).await.unwrap().bytes().await.unwrap()[..],
        b"short"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cancelled_at_every_part_is_aborted_and_leaves_no_object() {
    for at in 1..=PARTS {
        let (store, calls) = recording();
        let source = Arc::new(CancellationSource::new());
        let canceller = source.clone();
        *calls.on_part.lock().unwrap() = Some(Box::new(move |n| {
            if n == at {
                canceller.cancel_with(Reason::requested().with_message("at a part"));
            }
        }));
        let location = Path::from("obj");
        let mut writer = options()
            .create(store.clone(), &location, &source.token())
            .unwrap();
        let _ = writer.write_all(&data(PARTS * PART + 10)).await;
        let err = writer.commit().await.unwrap_err();
        assert!(err.as_cancelled().is_some(), "{err}");
        assert_eq!(
            calls.aborted.load(Ordering::SeqCst),
            1,
            "part {at}: not aborted"
        );
        assert_eq!(calls.completed.load(Ordering::SeqCst), 0);
        assert!(!exists(&store, &location).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_writer_aborts_its_upload() {
    let (store, calls) = recording();
    let location = Path::from("dropped");
    let mut writer = options()
        .create(store.clone(), &location, &CancellationToken::never())
        .unwrap();
    writer.write_all(&data(3 * PART)).await.unwrap();
    while calls.parts.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await; // a part is on its way
    }
    drop(writer);
    every_upload_ended(&calls).await;
    assert_eq!(calls.started.load(Ordering::SeqCst), 1);
    assert_eq!(calls.aborted.load(Ordering::SeqCst), 1);
    assert!(!exists(&store, &location).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discard_returns_after_the_upload_is_aborted() {
    let (store, calls) = recording();
    let mut writer = options()
        .create(store.clone(), &Path::from("d"), &CancellationToken::never())
        .unwrap();
    writer.write_all(&data(3 * PART)).await.unwrap();
    while calls.parts.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await; // a part is on its way
    }
    writer.discard().await;
    assert_eq!(calls.aborted.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_cancelled_at_every_await_leaves_the_complete_object_or_none_and_no_pending_upload()
 {
    let location = Path::from("walked");
    let expected = data(PARTS * PART + 10);
    for walk in [Walk::dropping(), Walk::cooperative()] {
        // A fresh store per run; the check looks at the run's own.
        let stores: Mutex<Vec<Recorded>> = Mutex::default();
        let report = cancel_at_every_await(
            walk,
            async |token| {
                let (store, calls) = recording();
                stores.lock().unwrap().push((store.clone(), calls));
                let mut writer = options().create(store, &location, &token)?;
                for piece in expected.chunks(700) {
                    writer.write_all(piece).await.map_err(support::fs_error)?;
                }
                writer.commit().await
            },
            async |run| {
                let (store, calls) = stores.lock().unwrap().last().cloned().unwrap();
                every_upload_ended(&calls).await;
                let stored = match store.get(&location).await {
                    Ok(got) => Some(got.bytes().await.unwrap()),
                    Err(object_store::Error::NotFound { .. }) => None,
                    Err(e) => panic!("{e}"),
                };
                if let Some(bytes) = &stored {
                    assert_eq!(&bytes[..], &expected[..], "a partial object");
                }
                match run.outcome() {
                    Outcome::Completed(result) => {
                        assert!(result.is_ok(), "{result:?}");
                        assert!(stored.is_some(), "completed, yet no object");
                    }
                    Outcome::TokenFired(Ok(_)) => assert!(stored.is_some()),
                    Outcome::TokenFired(Err(e)) => {
                        assert!(e.as_cancelled().is_some(), "{e}");
                        assert!(stored.is_none(), "cancelled, yet the object is there");
                    }
                    Outcome::Dropped => {}
                }
            },
        )
        .await
        .unwrap();
        assert!(
            report.points() >= 3,
            "only {} cancel points",
            report.points()
        );
    }
}
