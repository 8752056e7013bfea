//! A process killed with SIGKILL mid-write: the destination is intact, and the leftover
//! sweep removes the temporary file it left (while leaving a live writer's alone).
//!
//! `harness = false`: the same binary is the parent (no environment variable) and the
//! child that writes slowly until it is killed (`GRACEFULLY_FS_SIGKILL_CHILD=<path>`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_fs::{FileWriter, WriteOptions, remove_leftovers};
use tokio::io::AsyncWriteExt;

const CHILD: &str = "GRACEFULLY_FS_SIGKILL_CHILD";
const CHUNK: usize = 64 * 1024;

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    match std::env::var_os(CHILD) {
        Some(dest) => runtime.block_on(child(PathBuf::from(dest))),
        None => {
            runtime.block_on(a_process_killed_mid_write_leaves_the_destination_intact_and_a_leftover_the_sweep_removes());
            println!("1 passed, 0 failed");
        }
    }
}

/// Writes 1,000 chunks, 10 ms apart, announcing on stdout once three are on disk.
async fn child(dest: PathBuf) {
    let options = WriteOptions::new()
        .chunk_size(CHUNK)
        .on_progress(|written| {
            if written == 3 * CHUNK as u64 {
                println!("writing");
            }
            std::thread::sleep(Duration::from_millis(10));
        });
    options
        .write(&dest, vec![b'N'; 1000 * CHUNK], &CancellationToken::never())
        .await
        .unwrap();
    unreachable!("the parent kills this process long before the write ends");
}

async fn a_process_killed_mid_write_leaves_the_destination_intact_and_a_leftover_the_sweep_removes()
{
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("state.bin");
    std::fs::write(&dest, b"old content").unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD, &dest)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "writing", "the child did not start writing");
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success());

    assert_eq!(
        std::fs::read(&dest).unwrap(),
        b"old content",
        "the destination changed"
    );
    let leftovers = temp_files(dir.path());
    assert_eq!(
        leftovers.len(),
        1,
        "the killed write left its temporary file: {leftovers:?}"
    );
    assert!(std::fs::metadata(&leftovers[0]).unwrap().len() >= 3 * CHUNK as u64);

    // A live writer in the same directory, during the sweep.
    let live_dest = dir.path().join("live.bin");
    let mut live = FileWriter::create(&live_dest, &CancellationToken::never())
        .await
        .unwrap();
    live.write_all(b"live").await.unwrap();
    live.flush().await.unwrap();

    let swept = remove_leftovers(dir.path()).unwrap();
    assert_eq!(swept.removed, leftovers, "{swept:?}");
    assert_eq!(swept.in_use.len(), 1, "{swept:?}");
    assert!(!leftovers[0].exists());
    assert_eq!(std::fs::read(&dest).unwrap(), b"old content");

    live.commit().await.unwrap();
    assert_eq!(std::fs::read(&live_dest).unwrap(), b"live");
    assert!(temp_files(dir.path()).is_empty());
    println!(
        "test a_process_killed_mid_write_leaves_the_destination_intact_and_a_leftover_the_sweep_removes ... ok"
    );
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".gracefully-fs.tmp"))
        .collect()
}
