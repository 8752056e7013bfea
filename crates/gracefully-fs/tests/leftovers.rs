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

/// Set (to a directory) in the child process that
/// `the_sweep_removes_an_unreadable_leftover_of_its_owner` starts as an unprivileged user.
const SWEEP_AS_CHILD: &str = "GRACEFULLY_FS_TEST_SWEEP_AS_CHILD";

/// An unprivileged user and group for the child process ("nobody" on most Linux systems).
const NOBODY: u32 = 65534;

/// The effective user id of this process: the owner of a file it has just created (std
/// has no `getuid`, and a test dependency on libc for one call is not worth it).
fn effective_uid(dir: &std::path::Path) -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, b"").unwrap();
    let uid = std::fs::metadata(&probe).unwrap().uid();
    std::fs::remove_file(&probe).unwrap();
    uid
}

/// The sweep over `dir` as its owner: a write-only (0200) leftover is removed, one with no
/// permission at all (0000) is reported, not removed.
fn sweep_write_only_and_no_permission_leftovers(dir: &std::path::Path) {
    let swept = remove_leftovers(dir).unwrap();
    let write_only = dir.join(".w.0123456789abcdef.gracefully-fs.tmp");
    let no_permission = dir.join(".n.0123456789abcdef.gracefully-fs.tmp");
    assert_eq!(
        swept.removed,
        std::slice::from_ref(&write_only),
        "{swept:?}"
    );
    assert!(!write_only.exists());
    assert_eq!(swept.errors.len(), 1, "{swept:?}");
    let message = swept.errors[0].to_string();
    assert!(message.contains(".n.0123456789abcdef"), "{message}");
    assert!(message.contains("left in place"), "{message}");
    assert!(no_permission.exists());
}

#[test]
#[cfg(unix)]
fn the_sweep_removes_an_unreadable_leftover_of_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;

    if let Some(dir) = std::env::var_os(SWEEP_AS_CHILD) {
        // The child, as an unprivileged owner: permission bits bind here.
        sweep_write_only_and_no_permission_leftovers(std::path::Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = effective_uid(dir.path()) == 0;
    let owner = if root {
        NOBODY
    } else {
        effective_uid(dir.path())
    };
    let write_only = dir.path().join(".w.0123456789abcdef.gracefully-fs.tmp");
    let no_permission = dir.path().join(".n.0123456789abcdef.gracefully-fs.tmp");
    for (path, mode) in [(&write_only, 0o200), (&no_permission, 0o000)] {
        std::fs::write(path, b"half written").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        if root {
            std::os::unix::fs::chown(path, Some(owner), Some(owner)).unwrap();
        }
    }
    if !root {
        sweep_write_only_and_no_permission_leftovers(dir.path());
        return;
    }
    // Root reads and writes any file whatever its mode, so run the sweep in a child
    // process (this test, alone) as an unprivileged owner of the directory and the files.
    std::os::unix::fs::chown(dir.path(), Some(owner), Some(owner)).unwrap();
    let run = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "the_sweep_removes_an_unreadable_leftover_of_its_owner",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(SWEEP_AS_CHILD, dir.path())
        .uid(owner)
        .gid(owner)
        .output();
    let output = match run {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // The test binary is not reachable by the unprivileged user (a private target
            // directory): the permission part cannot be checked on this machine.
            eprintln!("skipped: the test binary cannot run as uid {owner}: {e}");
            return;
        }
        Err(e) => panic!("could not start the child as uid {owner}: {e}"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the child failed:\n{report}");
    assert!(
        report.contains("1 passed"),
        "the child ran no test:\n{report}"
    );
    assert!(!write_only.exists());
    assert!(no_permission.exists());
}
