//! `write`, `copy` and `FileWriter` without cancellation: what lands at the destination,
//! with which permissions, and the errors for bad input.

#![cfg(unix)] // permissions are checked as Unix modes

mod support;

use std::os::unix::fs::PermissionsExt;

use gracefully::{CancellationSource, CancellationToken, ReasonKind, is_cancellation};
use gracefully_fs::{Error, FileWriter, Step, WriteOptions};
use support::{content, temp_files};
use tokio::io::AsyncWriteExt;

fn never() -> CancellationToken {
    CancellationToken::never()
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

#[tokio::test]
async fn write_creates_the_file_with_the_content_and_leaves_no_temp_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.bin");
    let data = content(3 * 1024 * 1024 + 17, 1); // several chunks and a partial one
    gracefully_fs::write(&path, data.clone(), &never())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn write_replaces_an_existing_file_and_keeps_its_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, b"old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    gracefully_fs::write(&path, "new", &never()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn explicit_permissions_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("script.sh");
    WriteOptions::new()
        .permissions(std::fs::Permissions::from_mode(0o750))
        .write(&path, "#!/bin/sh\n", &never())
        .await
        .unwrap();
    assert_eq!(mode(&path), 0o750);
}

#[tokio::test]
async fn a_new_file_gets_the_permissions_std_fs_write_would_give() {
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = (dir.path().join("ours"), dir.path().join("theirs"));
    gracefully_fs::write(&ours, "x", &never()).await.unwrap();
    std::fs::write(&theirs, "x").unwrap();
    assert_eq!(mode(&ours), mode(&theirs));
}

#[tokio::test]
async fn write_without_fsync_still_writes_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cache");
    WriteOptions::new()
        .fsync(false)
        .write(&path, "cached", &never())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"cached");
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn no_clobber_refuses_an_existing_destination_and_leaves_it_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("once");
    let options = WriteOptions::new().overwrite(false);
    options.write(&path, "first", &never()).await.unwrap();
    let err = options.write(&path, "second", &never()).await.unwrap_err();
    assert!(
        matches!(&err, Error::AlreadyExists { path: p } if *p == path),
        "{err}"
    );
    assert!(err.to_string().contains("overwrite(false)"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"first");
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn no_clobber_is_checked_atomically_at_the_rename() {
    // The destination appears while the write runs (after the pre-check): the rename must
    // still refuse to replace it.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raced");
    let racer = path.clone();
    let err = WriteOptions::new()
        .overwrite(false)
        .chunk_size(4)
        .on_progress(move |written| {
            if written == 4 {
                std::fs::write(&racer, b"the other writer").unwrap();
            }
        })
        .write(&path, "ours, in chunks", &never())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"the other writer");
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_the_step_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/file");
    let err = gracefully_fs::write(&path, "x", &never())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some(Step::CreateTemp), "{err}");
    // The destination, not the random temporary name the caller never chose.
    assert!(
        matches!(&err, Error::Io { path: p, .. } if *p == path),
        "{err}"
    );
    assert!(!err.to_string().contains(".gracefully-fs.tmp"), "{err}");
    assert!(err.to_string().contains("no/such/dir"), "{err}");
    assert!(!err.committed());
    assert!(!is_cancellation(&err));
}

/// Makes a FIFO at `path` with mkfifo(1) (std has no mkfifo, and the crate forbids unsafe).
fn mkfifo(path: &std::path::Path) {
    let status = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .expect("mkfifo(1) runs");
    assert!(status.success(), "mkfifo {}", path.display());
}

#[tokio::test]
async fn a_fifo_or_socket_as_destination_is_refused_and_left_in_place() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    mkfifo(&fifo);
    let socket = dir.path().join("socket");
    let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    for (path, what) in [(&fifo, "is a FIFO"), (&socket, "is a socket")] {
        let err = gracefully_fs::write(path, "x", &never()).await.unwrap_err();
        assert_eq!(err.step(), Some(Step::Prepare), "{err}");
        let message = err.to_string();
        assert!(message.contains(what), "{message}");
        assert!(message.contains("not a regular file"), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        let err = FileWriter::create(path, &never()).await.unwrap_err();
        assert_eq!(err.step(), Some(Step::Prepare), "{err}");
    }
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    assert!(
        std::fs::symlink_metadata(&socket)
            .unwrap()
            .file_type()
            .is_socket()
    );
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn a_huge_chunk_size_costs_nothing_until_data_arrives() {
    // 64 TiB: reserving it up front aborted the process.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge-chunks");
    let mut writer = WriteOptions::new()
        .chunk_size(1 << 46)
        .create(&path, &never())
        .await
        .unwrap();
    writer.write_all(b"hello").await.unwrap();
    writer.write_all(b", world").await.unwrap();
    assert_eq!(writer.commit().await.unwrap(), 12);
    assert_eq!(std::fs::read(&path).unwrap(), b"hello, world");

    WriteOptions::new()
        .chunk_size(usize::MAX)
        .write(&path, "again", &never())
        .await
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"again");
}

#[tokio::test]
async fn a_directory_as_destination_is_refused_before_writing() {
    let dir = tempfile::tempdir().unwrap();
    let err = gracefully_fs::write(dir.path(), "x", &never())
        .await
        .unwrap_err();
    assert_eq!(err.step(), Some(Step::Prepare), "{err}");
    assert!(err.to_string().contains("is a directory"), "{err}");
}

#[tokio::test]
async fn a_zero_chunk_size_is_refused_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let err = WriteOptions::new()
        .chunk_size(0)
        .write(dir.path().join("f"), "x", &never())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidOptions(_)));
    assert!(err.to_string().contains("at least 1 byte"), "{err}");
}

#[tokio::test]
async fn a_write_with_a_cancelled_token_does_nothing_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never");
    let source = CancellationSource::new();
    source.cancel_with(gracefully::Reason::shutdown().with_message("SIGTERM"));
    let err = gracefully_fs::write(&path, "x", &source.token())
        .await
        .unwrap_err();
    let cancelled = err.as_cancelled().expect("a cancellation");
    assert_eq!(cancelled.kind(), ReasonKind::Shutdown);
    assert_eq!(cancelled.reason().message(), Some("SIGTERM"));
    assert!(is_cancellation(&err));
    assert!(!path.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn progress_reports_the_bytes_written_after_each_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    WriteOptions::new()
        .chunk_size(10)
        .on_progress(move |n| log.lock().unwrap().push(n))
        .write(dir.path().join("p"), vec![0u8; 25], &never())
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![10, 20, 25]);
}

#[tokio::test]
async fn copy_copies_content_and_source_permissions() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from"), dir.path().join("to"));
    let data = content(2 * 1024 * 1024 + 3, 2);
    std::fs::write(&from, &data).unwrap();
    std::fs::set_permissions(&from, std::fs::Permissions::from_mode(0o640)).unwrap();
    std::fs::write(&to, b"old").unwrap();
    let copied = gracefully_fs::copy(&from, &to, &never()).await.unwrap();
    assert_eq!(copied, data.len() as u64);
    assert_eq!(std::fs::read(&to).unwrap(), data);
    assert_eq!(mode(&to), 0o640);
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn copying_a_file_onto_itself_leaves_it_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("self");
    std::fs::write(&path, b"keep me").unwrap();
    gracefully_fs::copy(&path, &path, &never()).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

#[tokio::test]
async fn copying_a_missing_source_is_a_read_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("missing"), dir.path().join("to"));
    let err = gracefully_fs::copy(&from, &to, &never()).await.unwrap_err();
    assert_eq!(err.step(), Some(Step::Read));
    assert!(err.to_string().contains("missing"), "{err}");
    assert!(!to.exists());
}

#[tokio::test]
async fn copying_from_a_fifo_or_a_device_is_refused_up_front_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (fifo, to) = (dir.path().join("pipe"), dir.path().join("to"));
    mkfifo(&fifo);
    // Opening a FIFO blocks until a writer comes, beyond the token's reach: the copy must
    // refuse it before opening. If it does not, the test fails instead of hanging: opening
    // the FIFO read-write (which never blocks on Linux) releases the stuck thread.
    let token = never();
    let copy = gracefully_fs::copy(&fifo, &to, &token);
    let result = match tokio::time::timeout(std::time::Duration::from_secs(5), copy).await {
        Ok(result) => result,
        Err(_) => {
            let _unblock = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&fifo);
            panic!("copy from a FIFO blocked instead of being refused");
        }
    };
    let err = result.unwrap_err();
    assert_eq!(err.step(), Some(Step::Read), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("is a FIFO, not a regular file"),
        "{message}"
    );
    assert!(message.contains(&fifo.display().to_string()), "{message}");

    let err = gracefully_fs::copy("/dev/null", &to, &never())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("is a character device"), "{err}");
    assert!(err.to_string().contains("/dev/null"), "{err}");
    assert!(!to.exists());
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn copying_through_a_symlink_to_a_regular_file_works() {
    let dir = tempfile::tempdir().unwrap();
    let (from, link, to) = (
        dir.path().join("from"),
        dir.path().join("link"),
        dir.path().join("to"),
    );
    std::fs::write(&from, b"via a link").unwrap();
    std::os::unix::fs::symlink(&from, &link).unwrap();
    assert_eq!(gracefully_fs::copy(&link, &to, &never()).await.unwrap(), 10);
    assert_eq!(std::fs::read(&to).unwrap(), b"via a link");
}

#[tokio::test]
async fn writer_content_appears_only_at_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stream");
    std::fs::write(&path, b"old").unwrap();
    let mut writer = WriteOptions::new()
        .chunk_size(1000)
        .create(&path, &never())
        .await
        .unwrap();
    let data = content(10_500, 3);
    for piece in data.chunks(333) {
        writer.write_all(piece).await.unwrap();
    }
    writer.flush().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert_eq!(temp_files(dir.path()).len(), 1);
    assert_eq!(writer.commit().await.unwrap(), data.len() as u64);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn writer_shutdown_commits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copied");
    let mut writer = FileWriter::create(&path, &never()).await.unwrap();
    tokio::io::copy(&mut &b"through tokio::io::copy"[..], &mut writer)
        .await
        .unwrap();
    writer.shutdown().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"through tokio::io::copy");
    let err = writer.write_all(b"more").await.unwrap_err();
    assert!(err.to_string().contains("already committed"), "{err}");
}

#[tokio::test]
async fn writer_discard_removes_the_temp_file_and_keeps_the_old_content() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kept");
    std::fs::write(&path, b"old").unwrap();
    let mut writer = FileWriter::create(&path, &never()).await.unwrap();
    writer.write_all(&content(5000, 4)).await.unwrap();
    writer.discard().await;
    assert_eq!(std::fs::read(&path).unwrap(), b"old");
    assert!(temp_files(dir.path()).is_empty());
}

#[tokio::test]
async fn writer_create_fails_at_once_for_a_missing_directory() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope/file");
    let err = FileWriter::create(&path, &never()).await.unwrap_err();
    assert_eq!(err.step(), Some(Step::CreateTemp), "{err}");
    assert!(
        matches!(&err, Error::Io { path: p, .. } if *p == path),
        "{err}"
    );
}
