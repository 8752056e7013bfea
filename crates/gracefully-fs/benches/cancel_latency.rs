//! Cancel-to-stop latency of a 1 GiB write: the time from the cancel until the blocking
//! thread stopped writing (target: at most the time of one chunk), and until the future
//! returned with the temporary file removed. Printed beside the time of one chunk, and
//! beside the anchor: `tokio::fs::write`, whose dropped future stops nothing.
//!
//! Each round starts a 1 GiB write with 1 MiB chunks and cancels it once 256 MiB are
//! written (from the async side, as a caller would). The progress callback stamps the end
//! of every chunk, so "stopped writing" is the end of the last chunk written (the thread
//! checks the token right after it, and writes nothing more).
//!
//! `cargo bench -p gracefully-fs --bench cancel_latency`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gracefully::CancellationSource;
use gracefully_fs::WriteOptions;

const GIB: usize = 1024 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;
const CANCEL_AT: u64 = 256 * 1024 * 1024;
const ROUNDS: usize = 5;

fn median(values: &mut [Duration]) -> Duration {
    values.sort();
    values[values.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = Bytes::from(vec![7u8; GIB]);
    let (mut stops, mut returns, mut chunks) = (Vec::new(), Vec::new(), Vec::new());
    println!(
        "fs cancel-to-stop, 1 GiB write, 1 MiB chunks, cancelled after 256 MiB ({ROUNDS} rounds)"
    );
    for round in 1..=ROUNDS {
        let path = dir.path().join("big");
        let stamps: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::default();
        let log = stamps.clone();
        let (reached_tx, reached_rx) = tokio::sync::oneshot::channel();
        let reached = Mutex::new(Some(reached_tx));
        let options = WriteOptions::new()
            .chunk_size(CHUNK)
            .on_progress(move |written| {
                log.lock().unwrap().push((Instant::now(), written));
                if written >= CANCEL_AT
                    && let Some(tx) = reached.lock().unwrap().take()
                {
                    let _ = tx.send(());
                }
            });
        let source = CancellationSource::new();
        let token = source.token();
        let (stop, returned, (chunk, in_flight)) = runtime.block_on(async {
            let data = data.clone();
            let write = tokio::spawn(async move { options.write(&path, data, &token).await });
            reached_rx.await.unwrap();
            let cancelled_at = Instant::now();
            source.cancel();
            let result = write.await.unwrap();
            let returned = cancelled_at.elapsed();
            assert!(result.unwrap_err().as_cancelled().is_some());
            let stamps = stamps.lock().unwrap();
            let last = stamps.last().unwrap().0;
            let stop = last.saturating_duration_since(cancelled_at);
            let after = stamps.iter().filter(|(t, _)| *t > cancelled_at).count();
            assert!(after <= 1, "{after} chunks were written after the cancel");
            // The chunk in flight at the cancel, if one was: it ended after the cancel.
            let in_flight = (after == 1).then(|| {
                let n = stamps.len();
                stamps[n - 1].0 - stamps[n - 2].0
            });
            let mut gaps: Vec<Duration> = stamps.windows(2).map(|w| w[1].0 - w[0].0).collect();
            (stop, returned, (median(&mut gaps), in_flight))
        });
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "files left behind"
        );
        let in_flight = match in_flight {
            Some(took) => format!("the end of the chunk in flight, which took {took:?}"),
            None => "no chunk in flight: the next check saw it".to_string(),
        };
        println!(
            "  round {round}: stopped writing {stop:?} after the cancel ({in_flight}); \
             future returned, temp file removed, after {returned:?}; median chunk {chunk:?}"
        );
        stops.push(stop);
        returns.push(returned);
        chunks.push(chunk);
    }
    let worst = *stops.iter().max().unwrap();
    let (stop, returned, chunk) = (
        median(&mut stops),
        median(&mut returns),
        median(&mut chunks),
    );
    println!(
        "fs cancel 1GiB: stopped writing {stop:?} after the cancel (median; worst {worst:?}), \
         one chunk {chunk:?} (median), ratio {:.2} (target <= 1); never more than the chunk in \
         flight; future returned, temp file removed: {returned:?}",
        stop.as_secs_f64() / chunk.as_secs_f64()
    );

    // The anchor: tokio::fs::write's future dropped at the same point; the write goes on.
    let path = dir.path().join("tokio");
    let (kept, size) = runtime.block_on(async {
        let task = tokio::spawn({
            let (path, data) = (path.clone(), data.clone());
            async move { tokio::fs::write(&path, &data).await }
        });
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) < CANCEL_AT {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        task.abort();
        let dropped_at = Instant::now();
        let mut last = (0, dropped_at);
        // Until the file has not grown for 200 ms.
        loop {
            let len = std::fs::metadata(&path).unwrap().len();
            if len != last.0 {
                last = (len, Instant::now());
            } else if last.1.elapsed() > Duration::from_millis(200) {
                break;
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        (last.1 - dropped_at, last.0)
    });
    println!(
        "anchor tokio::fs::write, future dropped after 256 MiB: kept writing for {kept:?}, \
         left a {} MiB file at the destination",
        size / (1024 * 1024)
    );
}
