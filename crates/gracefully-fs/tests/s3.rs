//! Against a real S3-compatible server (CI starts `moto` in server mode and sets
//! `S3_ENDPOINT`): a cancelled multipart upload leaves no pending upload
//! (`ListMultipartUploads` is empty) and no object; a cancelled put leaves no object.
//!
//! Ignored by default; under `--include-ignored` without `S3_ENDPOINT` they fail loudly.

use std::sync::Arc;
use std::time::Duration;

use gracefully::{CancellationSource, CancellationToken, Reason, ReasonKind};
use gracefully_fs::object::{self, UploadOptions};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1024 * 1024;
/// S3's smallest part.
const PART: usize = 5 * MIB;

fn endpoint() -> String {
    std::env::var("S3_ENDPOINT").expect(
        "S3_ENDPOINT is not set: these tests need an S3-compatible server \
         (e.g. `moto_server -H 127.0.0.1 -p 5055` and S3_ENDPOINT=http://127.0.0.1:5055)",
    )
}

/// A fresh bucket on the server, and a store for it.
async fn bucket(name: &str) -> (Arc<dyn ObjectStore>, String) {
    let endpoint = endpoint();
    let bucket = format!("gracefully-fs-{name}-{:08x}", fastrand_u32());
    let created = reqwest::Client::new()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("S3 endpoint {endpoint} does not answer: {e}"));
    assert!(
        created.status().is_success(),
        "creating bucket {bucket}: {}",
        created.status()
    );
    let store = AmazonS3Builder::new()
        .with_endpoint(&endpoint)
        .with_allow_http(true)
        .with_bucket_name(&bucket)
        .with_region("us-east-1")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .build()
        .unwrap();
    (Arc::new(store), bucket)
}

fn fastrand_u32() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

/// The multipart uploads pending in `bucket` (`ListMultipartUploads`).
async fn pending_uploads(bucket: &str) -> usize {
    let body = reqwest::Client::new()
        .get(format!("{}/{bucket}?uploads", endpoint()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        body.contains("ListMultipartUploadsResult"),
        "unexpected answer: {body}"
    );
    body.matches("<Upload>").count()
}

async fn exists(store: &Arc<dyn ObjectStore>, location: &Path) -> bool {
    match store.head(location).await {
        Ok(_) => true,
        Err(object_store::Error::NotFound { .. }) => false,
        Err(e) => panic!("head failed: {e}"),
    }
}

async fn until_pending(bucket: &str) {
    for _ in 0..2000 {
        if pending_uploads(bucket).await > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the multipart upload never started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 endpoint: set S3_ENDPOINT"]
async fn a_cancelled_multipart_upload_leaves_no_pending_upload_and_no_object() {
    let (store, bucket) = bucket("writer").await;
    let location = Path::from("big.bin");
    let source = CancellationSource::new();
    let mut writer = UploadOptions::new()
        .part_size(PART)
        .create(store.clone(), &location, &source.token())
        .unwrap();
    // Two full parts: the first goes up while the second is written.
    writer.write_all(&vec![1u8; 2 * PART + 1]).await.unwrap();
    until_pending(&bucket).await; // the server holds a real multipart upload now
    source.cancel_with(Reason::requested().with_message("client left"));
    let err = writer.commit().await.unwrap_err();
    assert_eq!(
        err.as_cancelled().unwrap().kind(),
        ReasonKind::Requested,
        "{err}"
    );
    assert_eq!(
        pending_uploads(&bucket).await,
        0,
        "the upload was not aborted"
    );
    assert!(!exists(&store, &location).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 endpoint: set S3_ENDPOINT"]
async fn a_put_cancelled_mid_upload_leaves_no_object_and_no_pending_upload() {
    let (store, bucket) = bucket("put").await;
    let location = Path::from("put.bin");
    let source = CancellationSource::new();
    let put = tokio::spawn({
        let (store, location, token) = (store.clone(), location.clone(), source.token());
        async move {
            UploadOptions::new()
                .part_size(PART)
                .concurrency(1)
                .put(store, &location, vec![2u8; 10 * PART], &token)
                .await
        }
    });
    until_pending(&bucket).await;
    source.cancel();
    let err = put.await.unwrap().unwrap_err();
    assert!(err.as_cancelled().is_some(), "{err}");
    assert_eq!(
        pending_uploads(&bucket).await,
        0,
        "the upload was not aborted"
    );
    assert!(!exists(&store, &location).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 endpoint: set S3_ENDPOINT"]
async fn a_dropped_writer_aborts_its_upload_on_the_server() {
    let (store, bucket) = bucket("dropped").await;
    let location = Path::from("dropped.bin");
    let mut writer = UploadOptions::new()
        .part_size(PART)
        .create(store.clone(), &location, &CancellationToken::never())
        .unwrap();
    writer.write_all(&vec![3u8; 2 * PART + 1]).await.unwrap();
    until_pending(&bucket).await;
    drop(writer);
    for _ in 0..2000 {
        if pending_uploads(&bucket).await == 0 {
            assert!(!exists(&store, &location).await);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the dropped writer's upload is still pending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 endpoint: set S3_ENDPOINT"]
async fn uploads_and_puts_that_are_not_cancelled_store_the_whole_object() {
    let (store, bucket) = bucket("ok").await;
    let token = CancellationToken::never();
    let data: Vec<u8> = (0..2 * PART + 123).map(|i| (i % 251) as u8).collect();
    let mut writer = UploadOptions::new()
        .part_size(PART)
        .create(store.clone(), &Path::from("w.bin"), &token)
        .unwrap();
    writer.write_all(&data).await.unwrap();
    writer.commit().await.unwrap();
    let got = store
        .get(&Path::from("w.bin"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);

    object::put(store.clone(), &Path::from("p.txt"), "small", &token)
        .await
        .unwrap();
    let got = store
        .get(&Path::from("p.txt"))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(&got[..], b"small");
    assert_eq!(pending_uploads(&bucket).await, 0);
}
