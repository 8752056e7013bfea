//! [`eventually`]: wait for settled state, for cleanup that runs after its caller is gone.

use std::time::Duration;

/// Waits until `probe` returns `true`, asking again after 1 ms, then 2, 4 … up to every
/// 50 ms; panics (failing the test, or the walk's check) if it is still `false` after
/// `within`.
///
/// For state that settles after a cancellation without a handle to wait on: a temporary
/// file removed by a blocking thread at its next chunk, a message handed back to the
/// broker by a task spawned on drop. Where the code offers a way to wait for its cleanup
/// (a pool's `wait_for_cleanups`), await that instead: it is exact, this is a poll.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::time::Duration;
/// use gracefully_test::eventually;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let removed = Arc::new(AtomicBool::new(false));
/// let cleanup = Arc::clone(&removed);
/// tokio::spawn(async move {
///     tokio::time::sleep(Duration::from_millis(20)).await; // the cleanup, after its caller left
///     cleanup.store(true, Ordering::SeqCst);
/// });
/// eventually("the temporary file is removed", Duration::from_secs(5), async || {
///     removed.load(Ordering::SeqCst)
/// })
/// .await;
/// # }
/// ```
///
/// Use it for state that, once reached, stays (a file gone, a row rolled back): a probe
/// that can be true for a moment and then false again proves little.
///
/// # Panics
///
/// With `"{what}: still not so after {within:?} ({n} probes)"` when `within` passes first.
/// (It is an assertion; a walk's check reports it as the check's failure, naming the point.)
///
/// # Cancel safety
///
/// Cancel safe: dropping it stops the probing; a probe in flight is dropped with it.
///
/// Waits on tokio's clock (needs the time driver): under a paused clock the intervals pass
/// at once, so the probe must settle through timers, not through real I/O.
///
/// *Anchors:* testify's `assert.Eventually` (Go), Awaitility (Java), Kotest's
/// `eventually`.
pub async fn eventually(what: &str, within: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    let mut probes = 0u32;
    loop {
        probes += 1;
        if probe().await {
            return;
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            panic!("{what}: still not so after {within:?} ({probes} probes)");
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
