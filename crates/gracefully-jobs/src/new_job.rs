//! [`NewJob`]: a job to enqueue, with its options.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::Error;
use crate::state::to_millis;

/// The attempts a job gets unless [`NewJob::max_attempts`] says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 25;

/// The longest delay, and the farthest run time either side of the epoch, in milliseconds
/// (about 73 million years): longer ones are clamped to it. The database adds its clock to
/// a delay (`now + delay`) and subtracts it from a run time (when the next job is due), so
/// a value near `i64::MAX` would overflow there — SQLite then stores a REAL that `get` and
/// `list` cannot read back, and PostgreSQL fails the enqueue with `bigint out of range`. A
/// quarter of `i64::MAX` leaves room for any clock. Retry delays ([`Backoff`](crate::Backoff))
/// are capped at the same bound.
pub(crate) const MAX_DELAY_MS: i64 = i64::MAX / 4;

/// The longest [`unique_key`](NewJob::unique_key), in bytes. PostgreSQL's unique index
/// refuses keys over about 2.7 KB (`index row requires … bytes`) while SQLite takes any
/// length; one bound for both, so that a key accepted by one backend is accepted by the
/// other, with room left for the queue name in the same index entry.
pub(crate) const MAX_UNIQUE_KEY_BYTES: usize = 1024;

/// The longest queue name, in bytes.
const MAX_QUEUE_BYTES: usize = 128;

/// A job to enqueue: a queue name, a payload serialized to JSON, and options.
///
/// ```
/// use std::time::Duration;
/// use gracefully_jobs::NewJob;
///
/// #[derive(serde::Serialize)]
/// struct SendReceipt { order: u64 }
///
/// let job = NewJob::new("receipts", &SendReceipt { order: 42 })
///     .delay(Duration::from_secs(5))      // not before 5 s from now (database clock)
///     .priority(10)                       // higher runs first (default 0)
///     .max_attempts(5)                    // genuine failures allowed (default 25)
///     .unique_key("receipt-42");          // enqueuing this key again on this queue is a no-op
/// # let _ = job;
/// ```
///
/// *Anchors:* River's `InsertOpts` (`ScheduledAt`, `Priority`, `MaxAttempts`, `UniqueOpts`),
/// graphile-worker's `add_job` spec (`run_at`, `priority`, `max_attempts`, `job_key`).
#[derive(Debug)]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) payload: Result<String, serde_json::Error>,
    pub(crate) priority: i32,
    pub(crate) run_at_ms: Option<i64>,
    pub(crate) delay_ms: i64,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
}

impl NewJob {
    /// A job for `queue` with `payload`, due now. Serialization errors are reported by
    /// the enqueue call ([`Error::Payload`]).
    pub fn new<T: Serialize + ?Sized>(queue: impl Into<String>, payload: &T) -> NewJob {
        NewJob {
            queue: queue.into(),
            payload: serde_json::to_string(payload),
            priority: 0,
            run_at_ms: None,
            delay_ms: 0,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
        }
    }

    /// Not before `at` (replaces a [`delay`](Self::delay)). A time more than about 73
    /// million years from the epoch is clamped to that (see the delay's bound).
    pub fn run_at(mut self, at: SystemTime) -> NewJob {
        self.run_at_ms = Some(to_millis(at).clamp(-MAX_DELAY_MS, MAX_DELAY_MS));
        self.delay_ms = 0;
        self
    }

    /// Not before `delay` from the enqueue, by the database's clock (replaces a
    /// [`run_at`](Self::run_at)). At most about 73 million years: a longer delay is
    /// clamped to that, so the database's `now + delay` cannot overflow.
    pub fn delay(mut self, delay: Duration) -> NewJob {
        self.delay_ms = i64::try_from(delay.as_millis())
            .unwrap_or(MAX_DELAY_MS)
            .min(MAX_DELAY_MS);
        self.run_at_ms = None;
        self
    }

    /// Higher runs first among due jobs of a queue (default 0; may be negative).
    pub fn priority(mut self, priority: i32) -> NewJob {
        self.priority = priority;
        self
    }

    /// Attempts (genuine failures) before the job is dead; at least 1 (default
    /// [`DEFAULT_MAX_ATTEMPTS`]). A shutdown or a lost lease never uses one up.
    pub fn max_attempts(mut self, attempts: u32) -> NewJob {
        self.max_attempts = attempts;
        self
    }

    /// At most one job with this key on this queue, whatever its state: enqueuing it
    /// again is a no-op that returns the existing job's id. (An idempotency key: the
    /// fulfilment job of order 42 is enqueued once, however often the request is retried.)
    /// At most 1,024 bytes (UTF-8), without NUL characters: PostgreSQL's unique index
    /// cannot hold much longer keys, and SQLite is held to the same bound.
    pub fn unique_key(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }

    /// Checks the options; takes the payload out (it is used once).
    pub(crate) fn validate(&mut self) -> Result<String, Error> {
        validate_queue(&self.queue)?;
        if self.max_attempts == 0 {
            return Err(Error::config(
                "max_attempts",
                format!("job for queue `{}`: must be at least 1, got 0", self.queue),
            ));
        }
        if self.max_attempts > i32::MAX as u32 {
            return Err(Error::config(
                "max_attempts",
                format!("must be at most {}, got {}", i32::MAX, self.max_attempts),
            ));
        }
        if self.unique_key.as_deref().is_some_and(|k| k.contains('\0')) {
            return Err(Error::config(
                "unique_key",
                format!(
                    "job for queue `{}`: must not contain the NUL character (PostgreSQL cannot store it)",
                    self.queue
                ),
            ));
        }
        if let Some(key) = self.unique_key.as_deref()
            && key.len() > MAX_UNIQUE_KEY_BYTES
        {
            return Err(Error::config(
                "unique_key",
                format!(
                    "job for queue `{}`: must be at most {MAX_UNIQUE_KEY_BYTES} bytes (PostgreSQL's \
                     unique index cannot hold much longer keys), got {} bytes",
                    self.queue,
                    key.len()
                ),
            ));
        }
        let payload = std::mem::replace(&mut self.payload, Ok(String::new()));
        let payload = payload.map_err(|source| Error::Payload {
            queue: self.queue.clone(),
            source,
        })?;
        // PostgreSQL's jsonb refuses `\u0000`; SQLite would store it. Both refuse it here,
        // so that a job accepted by one backend is accepted by the other.
        if has_nul_escape(&payload) {
            return Err(Error::Payload {
                queue: self.queue.clone(),
                source: <serde_json::Error as serde::ser::Error>::custom(
                    "a string in it contains the NUL character (\\u0000), which PostgreSQL's jsonb cannot store",
                ),
            });
        }
        Ok(payload)
    }
}

/// Whether serialized JSON contains the escape `\u0000` (a NUL in a string or a key); an
/// escaped backslash followed by `u0000` (the text `\\u0000`) is not one.
fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if bytes[i + 1..].starts_with(b"u0000") {
                return true;
            }
            // Skip the escaped character (a backslash escapes exactly one).
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

/// A queue name: 1 to 128 bytes (UTF-8), none of them control characters.
pub(crate) fn validate_queue(queue: &str) -> Result<(), Error> {
    if queue.is_empty() || queue.len() > MAX_QUEUE_BYTES || queue.chars().any(char::is_control) {
        return Err(Error::config(
            "queue",
            format!(
                "a queue name has 1 to {MAX_QUEUE_BYTES} bytes (UTF-8) and no control characters, \
                 got {} bytes: {queue:?}",
                queue.len()
            ),
        ));
    }
    Ok(())
}

/// A validated job, ready for the database.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) queue: String,
    pub(crate) payload: String,
    pub(crate) priority: i32,
    pub(crate) run_at_ms: Option<i64>,
    pub(crate) delay_ms: i64,
    pub(crate) max_attempts: i32,
    pub(crate) unique_key: Option<String>,
}

impl Row {
    pub(crate) fn from_new(mut job: NewJob) -> Result<Row, Error> {
        let payload = job.validate()?;
        Ok(Row {
            queue: job.queue,
            payload,
            priority: job.priority,
            run_at_ms: job.run_at_ms,
            delay_ms: job.delay_ms,
            max_attempts: job.max_attempts as i32,
            unique_key: job.unique_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `err` is a configuration error naming `option`.
    #[track_caller]
    fn assert_config_error(err: &Error, option: &str) {
        assert!(
            matches!(err, Error::Config { option: o, .. } if *o == option),
            "expected an error naming {option}: {err}"
        );
    }

    #[test]
    fn zero_max_attempts_is_rejected_naming_the_option() {
        let err = Row::from_new(NewJob::new("q", &1).max_attempts(0)).unwrap_err();
        assert_config_error(&err, "max_attempts");
    }

    #[test]
    fn an_empty_queue_name_is_rejected_naming_the_option() {
        let err = Row::from_new(NewJob::new("", &1)).unwrap_err();
        assert_config_error(&err, "queue");
    }

    #[test]
    fn a_payload_with_a_nul_character_is_refused_on_both_backends() {
        let err = Row::from_new(NewJob::new("q", &"a\0b")).unwrap_err();
        assert!(matches!(err, Error::Payload { .. }), "{err}");
        assert!(err.to_string().contains("NUL"), "{err}");
        let key = std::collections::HashMap::from([("k\0", 1)]);
        assert!(Row::from_new(NewJob::new("q", &key)).is_err());
        // The text `\u0000` (an escaped backslash) is fine.
        assert!(Row::from_new(NewJob::new("q", &"\\u0000")).is_ok());
        assert!(Row::from_new(NewJob::new("q", &"\\\\")).is_ok());
        let err = Row::from_new(NewJob::new("q", &1).unique_key("a\0")).unwrap_err();
        assert_config_error(&err, "unique_key");
    }

    #[test]
    fn a_payload_that_does_not_serialize_is_an_error_not_a_panic() {
        let mut bad = std::collections::HashMap::new();
        bad.insert(vec![1u8], 1); // JSON object keys must be strings
        let err = Row::from_new(NewJob::new("q", &bad)).unwrap_err();
        assert!(matches!(err, Error::Payload { .. }), "{err}");
    }

    #[test]
    fn a_queue_name_is_measured_in_bytes_and_the_error_says_so() {
        // 43 three-byte characters: 129 bytes, 43 characters.
        let queue = "€".repeat(43);
        let err = Row::from_new(NewJob::new(queue, &1)).unwrap_err();
        assert_config_error(&err, "queue");
        assert!(err.to_string().contains("128 bytes"), "{err}");
        assert!(Row::from_new(NewJob::new("€".repeat(42), &1)).is_ok());
    }

    #[test]
    fn a_unique_key_longer_than_the_bound_is_rejected_naming_it() {
        let ok = NewJob::new("q", &1).unique_key("k".repeat(MAX_UNIQUE_KEY_BYTES));
        assert!(Row::from_new(ok).is_ok());
        let long = NewJob::new("q", &1).unique_key("k".repeat(MAX_UNIQUE_KEY_BYTES + 1));
        let err = Row::from_new(long).unwrap_err();
        assert_config_error(&err, "unique_key");
        assert!(err.to_string().contains("1024 bytes"), "{err}");
    }

    #[test]
    fn delays_and_run_times_are_clamped_far_from_overflow() {
        for d in [
            Duration::MAX,
            Duration::from_millis(i64::MAX as u64),
            Duration::from_millis(MAX_DELAY_MS as u64 + 1),
        ] {
            assert_eq!(
                NewJob::new("q", &1).delay(d).delay_ms,
                MAX_DELAY_MS,
                "{d:?}"
            );
        }
        let far = SystemTime::UNIX_EPOCH + Duration::from_millis(i64::MAX as u64);
        assert_eq!(
            NewJob::new("q", &1).run_at(far).run_at_ms,
            Some(MAX_DELAY_MS)
        );
        let before = SystemTime::UNIX_EPOCH - Duration::from_millis(i64::MAX as u64);
        assert_eq!(
            NewJob::new("q", &1).run_at(before).run_at_ms,
            Some(-MAX_DELAY_MS)
        );
    }

    #[test]
    fn run_at_and_delay_replace_each_other() {
        let job = NewJob::new("q", &1)
            .delay(Duration::from_secs(1))
            .run_at(SystemTime::UNIX_EPOCH);
        assert_eq!((job.run_at_ms, job.delay_ms), (Some(0), 0));
        let job = job.delay(Duration::from_millis(5));
        assert_eq!((job.run_at_ms, job.delay_ms), (None, 5));
    }
}
