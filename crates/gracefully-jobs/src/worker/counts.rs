//! The counters of a worker's row in the host's shutdown report.

use gracefully_host::ServiceContext;

/// Jobs that succeeded (in any phase).
pub(crate) const SUCCEEDED: &str = "succeeded";
/// Of those, the ones that finished after the drain began.
pub(crate) const FINISHED_DURING_DRAIN: &str = "finished during drain";
/// Stopped by the shutdown (their token fired) and put back in the queue, attempt refunded.
pub(crate) const INTERRUPTED: &str = "interrupted and returned";
/// Fetched ahead (prefetch) but not started when the drain began: returned at once.
pub(crate) const RETURNED_UNSTARTED: &str = "returned unstarted";
/// Still running at the abort: dropped, and put back if the database answered.
pub(crate) const ABORTED: &str = "aborted";
/// Genuine failures that will be retried after a backoff.
pub(crate) const RETRIED: &str = "retried";
/// Attempts exhausted or undecodable payloads.
pub(crate) const DEAD: &str = "dead";
/// Ended by a cancel request.
pub(crate) const CANCELLED: &str = "cancelled";
/// Attempts whose lease this worker lost (their token fired; they could not complete).
pub(crate) const LEASE_LOST: &str = "lease lost";
/// Jobs of other (dead) workers whose lease expired, put back by this one.
pub(crate) const RECLAIMED: &str = "reclaimed";
/// Held when the worker gave up on an unanswering database after the hard stop (run #8):
/// their endings unwritten, they go back to the queue when their leases expire.
pub(crate) const LEFT_TO_LEASE: &str = "left to their lease";

/// Every key, in the order the row shows them.
pub(crate) const ALL: [&str; 11] = [
    SUCCEEDED,
    FINISHED_DURING_DRAIN,
    INTERRUPTED,
    RETURNED_UNSTARTED,
    ABORTED,
    RETRIED,
    DEAD,
    CANCELLED,
    LEASE_LOST,
    RECLAIMED,
    LEFT_TO_LEASE,
];

/// Shows every counter (at 0) so that every worker's row reads the same.
pub(crate) fn init(cx: &ServiceContext) {
    for key in ALL {
        cx.count(key, 0);
    }
}
