//! The slowloris guard: one coarse timer per connection for request heads that take too
//! long, and for new connections that send nothing.

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::conn_state::{ConnState, VERSION_HTTP2};

/// Returns once a client has spent `timeout` sending a request head (slowloris): bytes
/// arrived that no request accounts for while none is in flight, or — on a new connection —
/// no request has come since the accept (a connection that sends nothing is the cheapest
/// way to hold one open). Checked on a coarse tick (a quarter of the timeout), so a
/// connection costs one timer, not one per request (hyper's own header-read timeout arms
/// and cancels a timer for every request). Idle keep-alive connections, which send nothing
/// after an answer, are not timed; nor is an HTTP/2 connection once its preface arrived.
pub(crate) async fn guard_headers(conn: &ConnState, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).max(Duration::from_millis(5)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut arriving_since: Option<tokio::time::Instant> = None;
    loop {
        let now = tick.tick().await;
        if conn.version.load(Ordering::Relaxed) == VERSION_HTTP2 {
            return std::future::pending().await;
        }
        let accounted = conn.bytes_accounted.load(Ordering::Relaxed);
        let head_arriving = conn.in_flight.load(Ordering::Acquire) == 0
            && (conn.bytes_read.load(Ordering::Relaxed) > accounted || accounted == 0);
        if !head_arriving {
            arriving_since = None;
            continue;
        }
        match arriving_since {
            None => arriving_since = Some(now),
            Some(since) if now.duration_since(since) >= timeout => return,
            Some(_) => {}
        }
    }
}
