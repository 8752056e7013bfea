//! What a job is and where it stands: [`JobId`], [`JobState`], [`JobInfo`],
//! [`StateCounts`], [`CancelOutcome`].

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;

/// A job's id: assigned by the database at enqueue, unique within one job store.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    /// The id as stored.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for JobId {
    fn from(id: i64) -> Self {
        JobId(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a job stands. The states keep causes apart:
///
/// ```text
///            enqueue
///               │
///   ┌──────▶ queued ◀──────── retry (a dead or cancelled job, by hand)
///   │           │ fetched by a worker (lease taken)
///   │           ▼
///   │        running ──── Ok ──────────────────────────────▶ succeeded
///   │        │  │  │ └── cancel request (token: Requested) ─▶ cancelled
///   │        │  │  └──── genuine failure, attempts left ───▶ retrying ─┐ (after backoff)
///   │        │  └─────── genuine failure, none left,        ▶ dead       │
///   │        │           or a payload that does not decode               │
///   │        └────────── shutdown (token: Shutdown), or lease            │
///   │                    expired (worker died) ───────────▶ interrupted ─┤ (at once; no attempt used)
///   └────────────────────────────────────────────────────────────────────┘
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting for its run time or a free worker.
    Queued,
    /// A worker holds its lease and runs it.
    Running,
    /// The handler succeeded. Final.
    Succeeded,
    /// The handler failed (a genuine error or a panic) and attempts are left; it runs again
    /// after a backoff.
    Retrying,
    /// Attempts exhausted, the payload no longer decodes, or its lease was lost too many
    /// times; the last error is kept. Final until [`Jobs::retry`](crate::Jobs::retry).
    Dead,
    /// Cancelled by request ([`Jobs::cancel`](crate::Jobs::cancel)). Final until
    /// [`Jobs::retry`](crate::Jobs::retry).
    Cancelled,
    /// Stopped by a shutdown, or reclaimed after its worker's lease expired: back in the
    /// queue at once, without using up an attempt.
    Interrupted,
}

impl JobState {
    /// Every state, in the order of [`StateCounts`].
    pub const ALL: [JobState; 7] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Retrying,
        JobState::Dead,
        JobState::Cancelled,
        JobState::Interrupted,
    ];

    /// The name stored in the database (`queued`, `running`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Retrying => "retrying",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
            JobState::Interrupted => "interrupted",
        }
    }

    /// The state of a stored name.
    pub fn parse(name: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job will not run again by itself (succeeded, dead, cancelled).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job as stored: what [`Jobs::get`](crate::Jobs::get) and [`Jobs::list`](crate::Jobs::list)
/// return.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its queue.
    pub queue: String,
    /// Where it stands.
    pub state: JobState,
    /// Its payload, as JSON text ([`JobInfo::payload`] decodes it).
    pub payload_json: String,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts used up by genuine failures (a shutdown or a lost lease uses none).
    pub attempts: u32,
    /// Genuine failures allowed before it is dead.
    pub max_attempts: u32,
    /// How many times its lease expired with a worker that died holding it.
    pub lease_losses: u32,
    /// When it is (or was) due to run.
    pub run_at: SystemTime,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// When it reached a final state.
    pub finished_at: Option<SystemTime>,
    /// The error of the last failed attempt (or why it is dead).
    pub last_error: Option<String>,
    /// The canceller's message, once cancelling was requested.
    pub cancel_message: Option<String>,
    /// Its unique key, if it was enqueued with one.
    pub unique_key: Option<String>,
}

impl JobInfo {
    /// Decodes the payload.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.payload_json)
    }
}

/// How many jobs are in each state ([`Jobs::counts`](crate::Jobs::counts)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StateCounts {
    /// [`JobState::Queued`].
    pub queued: u64,
    /// [`JobState::Running`].
    pub running: u64,
    /// [`JobState::Succeeded`].
    pub succeeded: u64,
    /// [`JobState::Retrying`].
    pub retrying: u64,
    /// [`JobState::Dead`].
    pub dead: u64,
    /// [`JobState::Cancelled`].
    pub cancelled: u64,
    /// [`JobState::Interrupted`].
    pub interrupted: u64,
}

impl StateCounts {
    /// The count of one state.
    pub fn get(&self, state: JobState) -> u64 {
        match state {
            JobState::Queued => self.queued,
            JobState::Running => self.running,
            JobState::Succeeded => self.succeeded,
            JobState::Retrying => self.retrying,
            JobState::Dead => self.dead,
            JobState::Cancelled => self.cancelled,
            JobState::Interrupted => self.interrupted,
        }
    }

    pub(crate) fn add(&mut self, state: JobState, n: u64) {
        let slot = match state {
            JobState::Queued => &mut self.queued,
            JobState::Running => &mut self.running,
            JobState::Succeeded => &mut self.succeeded,
            JobState::Retrying => &mut self.retrying,
            JobState::Dead => &mut self.dead,
            JobState::Cancelled => &mut self.cancelled,
            JobState::Interrupted => &mut self.interrupted,
        };
        *slot += n;
    }

    /// All jobs.
    pub fn total(&self) -> u64 {
        JobState::ALL.into_iter().map(|s| self.get(s)).sum()
    }

    /// Jobs not in a final state (queued, running, retrying, interrupted).
    pub fn pending(&self) -> u64 {
        self.queued + self.running + self.retrying + self.interrupted
    }
}

/// What [`Jobs::cancel`](crate::Jobs::cancel) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CancelOutcome {
    /// The job was waiting (queued, retrying, interrupted): it is now cancelled and will
    /// not run.
    Cancelled,
    /// The job is running: the request was recorded and sent to its worker, whose token
    /// fires with [`ReasonKind::Requested`](gracefully::ReasonKind::Requested) and the
    /// message. It ends as cancelled once its handler returns (or as succeeded if it
    /// finishes anyway).
    Requested,
    /// The job had already reached this final state; nothing changed.
    AlreadyFinished(JobState),
    /// No job has this id.
    NotFound,
}

/// Milliseconds since the Unix epoch, as stored, to a time.
pub(crate) fn from_millis(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

/// A time to milliseconds since the Unix epoch (saturating).
pub(crate) fn to_millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_round_trips_through_its_stored_name() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("nope"), None);
    }

    #[test]
    fn millis_round_trip_before_and_after_the_epoch() {
        for ms in [-1_500, 0, 1_700_000_000_123] {
            assert_eq!(to_millis(from_millis(ms)), ms);
        }
    }
}
