//! [`Error`]: what can go wrong when enqueuing, inspecting or configuring jobs.

use std::fmt;

use crate::state::JobId;

/// An error from this crate. Cancellation of a *handler* is not an error here: it is an
/// outcome of the job (see [`JobState`](crate::JobState)).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An option was out of range; names the option and the valid range.
    Config {
        /// The option, as its builder method is called (`concurrency`, `lease`, …;
        /// `max_connections` for a PostgreSQL pool too small for a worker).
        option: &'static str,
        /// What was wrong and what would be right.
        message: String,
    },
    /// A payload could not be serialized to JSON at enqueue, or its JSON contains the NUL
    /// character (`\u0000`, refused on both backends: PostgreSQL's `jsonb` cannot store it).
    Payload {
        /// The queue the job was for.
        queue: String,
        /// serde_json's error.
        source: serde_json::Error,
    },
    /// The database failed (unreachable, a constraint, a bad schema …).
    Database(sqlx::Error),
    /// A connection of one database was given to a [`Jobs`](crate::Jobs) of the other
    /// (`enqueue_in` with a SQLite connection on PostgreSQL jobs, or the reverse).
    WrongBackend {
        /// The backend of the [`Jobs`](crate::Jobs).
        jobs: &'static str,
        /// The backend of the connection given.
        connection: &'static str,
    },
    /// The attempt no longer holds the job: its lease expired and the job was reclaimed
    /// (or another worker took it over). It cannot complete the job (fencing); roll back
    /// the transaction. (A cancel request is not this: the job stays `running`, and
    /// completing it still succeeds.)
    LeaseLost {
        /// The job.
        id: JobId,
    },
}

impl Error {
    pub(crate) fn config(option: &'static str, message: impl Into<String>) -> Error {
        Error::Config {
            option,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { option, message } => write!(f, "invalid `{option}`: {message}"),
            Error::Payload { queue, source } => {
                write!(
                    f,
                    "the payload for queue `{queue}` does not serialize to JSON: {source}"
                )
            }
            Error::Database(e) => write!(f, "job database error: {e}"),
            Error::WrongBackend { jobs, connection } => write!(
                f,
                "these jobs are stored in {jobs}, but a {connection} connection was given"
            ),
            Error::LeaseLost { id } => write!(
                f,
                "job {id}: this attempt lost its lease (the job was reclaimed, taken over or \
                 cancelled) and cannot complete it"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Payload { source, .. } => Some(source),
            Error::Database(e) => Some(e),
            _ => None,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::Database(e)
    }
}
