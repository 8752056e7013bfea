//! Write throughput against the plain way with the same durability, in the same run:
//!
//! - `gracefully`: `gracefully_fs::write` (temp file, 1 MiB chunks checked against a token
//!   on a blocking thread, fsync, rename, directory fsync);
//! - `std+fsync+rename`: `File::create` + `write_all` (what `std::fs::write` does) +
//!   `File::sync_all` + `fs::rename` + directory fsync, called directly on the async thread
//!   (the anchor with the same durability; the target is a ratio ≥ 0.9);
//! - `tokio::fs::write`: for reference only (no fsync, no rename: neither durable nor
//!   atomic).
//!
//! Runs are interleaved (one of each in turn, gracefully and std alternating which goes
//! first) and the median time per write is reported,
//! as MB/s (10^6 bytes per second). Files live in a temporary directory under the system
//! temp dir (`TMPDIR` to move it), removed at the end.
//!
//! `cargo bench -p gracefully-fs --bench throughput` (add `-- 4KiB` to run one size).

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gracefully::CancellationToken;

const SIZES: [(&str, usize, usize); 3] = [
    ("4KiB", 4 * 1024, 200),
    ("1MiB", 1024 * 1024, 60),
    ("256MiB", 256 * 1024 * 1024, 12),
];

fn std_fsync_rename(dir: &Path, dest: &Path, data: &[u8]) {
    let temp = dir.join(".std.tmp");
    let mut file = File::create(&temp).unwrap();
    file.write_all(data).unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::rename(&temp, dest).unwrap();
    File::open(dir).unwrap().sync_all().unwrap();
}

fn median(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn mb_per_s(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn main() {
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = CancellationToken::never();
    println!(
        "fs write throughput (median of interleaved runs; files in {})",
        dir.path().display()
    );
    for (name, size, runs) in SIZES {
        if filter.as_deref().is_some_and(|f| f != name) {
            continue;
        }
        let data = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<u8>>());
        let (ours, theirs, tokio_dest) = (
            dir.path().join(format!("gracefully-{name}")),
            dir.path().join(format!("std-{name}")),
            dir.path().join(format!("tokio-{name}")),
        );
        let (mut g, mut s, mut t) = (Vec::new(), Vec::new(), Vec::new());
        runtime.block_on(async {
            // One warm-up round each (page cache, blocking pool threads).
            for round in 0..=runs {
                // Alternate which goes first: the first write of a round pays for whatever
                // the previous round left to the kernel (write-back, freeing the old file).
                let mut gracefully = Duration::ZERO;
                let mut std = Duration::ZERO;
                for first in [round % 2 == 0, round % 2 != 0] {
                    let start = Instant::now();
                    if first {
                        gracefully_fs::write(&ours, data.clone(), &token)
                            .await
                            .unwrap();
                        gracefully = start.elapsed();
                    } else {
                        std_fsync_rename(dir.path(), &theirs, &data);
                        std = start.elapsed();
                    }
                }

                let start = Instant::now();
                tokio::fs::write(&tokio_dest, &data).await.unwrap();
                let tokio = start.elapsed();
                // Untimed: flush tokio's dirty pages now, or their write-back would compete
                // with (and slow) the next round's fsyncs.
                File::open(&tokio_dest).unwrap().sync_all().unwrap();
                if round > 0 {
                    g.push(gracefully);
                    s.push(std);
                    t.push(tokio);
                }
            }
        });
        // Paired: the ratio of each round's two runs, then the median of those (robust to
        // the machine's load drifting between rounds).
        let mut ratios: Vec<f64> = s
            .iter()
            .zip(&g)
            .map(|(s, g)| s.as_secs_f64() / g.as_secs_f64())
            .collect();
        ratios.sort_by(f64::total_cmp);
        let paired = ratios[ratios.len() / 2];
        let (g, s, t) = (median(&mut g), median(&mut s), median(&mut t));
        println!(
            "fs write {name}: gracefully {:.1} MB/s, std+fsync+rename {:.1} MB/s, ratio {:.2} \
             (median of per-round ratios {paired:.2}); tokio::fs::write (no fsync, not atomic) \
             {:.1} MB/s  [medians of {runs}: {:?} / {:?} / {:?}]",
            mb_per_s(size, g),
            mb_per_s(size, s),
            s.as_secs_f64() / g.as_secs_f64(),
            mb_per_s(size, t),
            g,
            s,
            t,
        );
        for path in [&ours, &theirs, &tokio_dest] {
            let _ = fs::remove_file(path);
        }
    }
}
