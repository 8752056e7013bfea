//! `remove_leftovers`: removes this crate's temporary files left by a dead process, and
//! nothing else — not other files, not the temporary file of a live writer.

mod support;

use gracefully::CancellationToken;
use gracefully_fs::{FileWriter, remove_leftovers};
use tokio::io::AsyncWriteExt;

const LEFTOVER: &str = ".data.json.0123456789abcdef.gracefully-fs.tmp";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_removes_leftovers_recursively_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub/deeper");
    std::fs::create_dir_all(&sub).unwrap();
    let leftovers = [dir.path().join(LEFTOVER), sub.join(LEFTOVER)];
    for path in &leftovers {
        std::fs::write(path, b"half written").unwrap();
    }
    let others = [
        dir.path().join("data.json"),
        dir.path().join(".data.json.tmp"),
        dir.path()
            .join("data.json.0123456789abcdef.gracefully-fs.tmp"),
        sub.join(".x.0123456789abcdeZ.gracefully-fs.tmp"),
    ];
    for path in &others {
        std::fs::write(path, b"keep").unwrap();
    }
    let swept = remove_leftovers(dir.path()).unwrap();
    let mut removed = swept.removed.clone();
    removed.sort();
    let mut expected = leftovers.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(swept.bytes, 2 * b"half written".len() as u64);
    assert!(
        swept.in_use.is_empty() && swept.errors.is_empty(),
        "{swept:?}"
    );
    for path in &leftovers {
        assert!(!path.exists());
    }
    for path in &others {
        assert!(path.exists(), "{} was removed", path.display());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_leaves_the_temp_file_of_a_live_writer_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live");
    let mut writer = FileWriter::create(&path, &CancellationToken::never())
        .await
        .unwrap();
    writer.write_all(b"in progress").await.unwrap();
    writer.flush().await.unwrap();
    let live = support::temp_files(dir.path());
    assert_eq!(live.len(), 1);

    let swept = remove_leftovers(dir.path()).unwrap();
    assert!(swept.removed.is_empty(), "{swept:?}");
    assert_eq!(swept.in_use, live);
    assert!(live[0].exists());

    writer.commit().await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"in progress");
}

#[test]
fn sweeping_a_missing_directory_is_an_error_naming_it() {
    let err = remove_leftovers("/definitely/not/here").unwrap_err();
    assert_eq!(err.step(), Some(gracefully_fs::Step::ScanLeftovers));
    assert!(err.to_string().contains("/definitely/not/here"), "{err}");
}
