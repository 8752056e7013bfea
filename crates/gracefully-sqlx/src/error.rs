//! [`Error`]: what a pool operation returns when it does not succeed, with cancellation kept
//! apart from failures, and connection targets shown with their password redacted.

use std::fmt;

use gracefully::{Cancelled, Reason};

/// The error of a [`GracefulPool`](crate::GracefulPool) operation.
///
/// Cancellation is its own variant, never folded into a database error: when the token fires,
/// you get [`Error::Cancelled`] carrying the token's [`Reason`], even though the server
/// reported the cancelled statement as an error (PostgreSQL `57014`, SQLite `SQLITE_INTERRUPT`).
/// Its [`source`](std::error::Error::source) is the [`Cancelled`], so
/// [`gracefully::is_cancellation`] recognises it anywhere in a chain of errors.
///
/// Connection targets in messages are shown with the password replaced by `***`.
///
/// *Anchors:* .NET throws `OperationCanceledException` from Npgsql/EF Core when the token
/// fires, and `NpgsqlException`/`PostgresException` otherwise; Go's `database/sql` returns
/// `ctx.Err()` rather than the driver's error once the context is done. We do the same: once
/// the token has fired, the outcome of the operation is `Cancelled`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The token fired (or was already cancelled) and the operation stopped. Whatever the
    /// operation was running on the server was stopped before this was returned (or, if the
    /// server did not confirm within the pool's cancellation timeout, the connection was
    /// closed), and a transaction it had open was rolled back.
    Cancelled(Cancelled),
    /// The connection options could not be parsed (a bad URL, an unknown parameter).
    Config {
        /// The URL as given, with its password redacted.
        target: String,
        /// What sqlx reported.
        source: sqlx::Error,
    },
    /// No connection could be opened: the server is unreachable, refused the credentials,
    /// or the database does not exist.
    Connect {
        /// The connection target, with its password redacted.
        target: String,
        /// What sqlx reported.
        source: sqlx::Error,
    },
    /// The database or the pool reported an error (a failed statement, a lost connection,
    /// a pool timeout).
    Database(sqlx::Error),
    /// A [`transaction`](crate::GracefulPool::transaction)'s body returned `Ok`, but the
    /// database had already aborted the transaction — a statement in it failed and the body
    /// went on (PostgreSQL `25P02`) — so it was rolled back and nothing was committed.
    /// PostgreSQL would answer the `COMMIT` of such a transaction with `ROLLBACK` and no
    /// error; pgx (`ErrTxCommitRollback`), lib/pq and pgjdbc report it as an error, as we do.
    RolledBack {
        /// What the database answered when asked before `COMMIT`.
        source: sqlx::Error,
    },
}

impl Error {
    /// `Error::Cancelled` with `reason`.
    pub(crate) fn cancelled(reason: Reason) -> Self {
        Error::Cancelled(Cancelled::new(reason))
    }

    /// Whether this is [`Error::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled(_))
    }

    /// The [`Cancelled`] (and through it the [`Reason`]) if this is [`Error::Cancelled`].
    pub fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }

    /// The sqlx error, if there is one.
    pub fn as_sqlx(&self) -> Option<&sqlx::Error> {
        match self {
            Error::Cancelled(_) => None,
            Error::Config { source, .. } | Error::Connect { source, .. } => Some(source),
            Error::Database(source) | Error::RolledBack { source } => Some(source),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(cancelled) => fmt::Display::fmt(cancelled, f),
            Error::Config { target, source } => {
                write!(f, "invalid connection options `{target}`: {}", Sqlx(source))
            }
            Error::Connect { target, source } => {
                write!(f, "cannot connect to `{target}`: {}", Sqlx(source))
            }
            Error::Database(source) => write!(f, "database error: {}", Sqlx(source)),
            Error::RolledBack { source } => write!(
                f,
                "transaction rolled back, nothing was committed: a statement in it had failed \
                 and the body returned Ok anyway ({})",
                Sqlx(source)
            ),
        }
    }
}

/// A sqlx error as a user should read it. An error the server returned shows its message,
/// its SQLSTATE code and, when the server gave them, its detail and hint — not sqlx 0.9's
/// own rendering of a PostgreSQL error, which appends the *server's C source line*
/// (`database "x" does not exist at line 948`) and drops the code, detail and hint.
struct Sqlx<'a>(&'a sqlx::Error);

impl fmt::Display for Sqlx<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sqlx::Error::Database(db) = self.0 else {
            return fmt::Display::fmt(self.0, f);
        };
        write!(f, "the database answered: {}", db.message())?;
        if let Some(code) = db.code() {
            write!(f, " (SQLSTATE {code})")?;
        }
        if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
            if let Some(detail) = pg.detail() {
                write!(f, "; detail: {detail}")?;
            }
            if let Some(hint) = pg.hint() {
                write!(f, "; hint: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            Error::Config { source, .. } | Error::Connect { source, .. } => Some(source),
            Error::Database(source) | Error::RolledBack { source } => Some(source),
        }
    }
}

impl From<Cancelled> for Error {
    fn from(cancelled: Cancelled) -> Self {
        Error::Cancelled(cancelled)
    }
}

impl From<sqlx::Error> for Error {
    /// A sqlx error that carries a [`Cancelled`] (as `sqlx::Error::Io` with a `Cancelled`
    /// inside) becomes [`Error::Cancelled`]; any other becomes [`Error::Database`].
    fn from(error: sqlx::Error) -> Self {
        match gracefully::find_cancelled(&error) {
            Some(cancelled) => Error::Cancelled(cancelled.clone()),
            None => Error::Database(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cancelled_error_is_recognised_as_cancellation() {
        let error = Error::cancelled(Reason::shutdown());
        assert!(gracefully::is_cancellation(&error));
        assert_eq!(
            error.as_cancelled().map(Cancelled::kind),
            Some(gracefully::ReasonKind::Shutdown)
        );
        let database = Error::Database(sqlx::Error::RowNotFound);
        assert!(!gracefully::is_cancellation(&database));
    }

    #[test]
    fn a_sqlx_error_carrying_cancelled_converts_back() {
        let io: std::io::Error = Cancelled::new(Reason::disconnected()).into();
        let error = Error::from(sqlx::Error::Io(io));
        assert_eq!(
            error.as_cancelled().map(Cancelled::kind),
            Some(gracefully::ReasonKind::Disconnected)
        );
    }
}
