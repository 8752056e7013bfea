//! [`JobConnection`]: the connections a job can be enqueued or completed on, inside the
//! caller's own transaction.

use sqlx::{PgConnection, SqliteConnection};

/// A database connection that jobs can be enqueued on ([`Jobs::enqueue_in`](crate::Jobs::enqueue_in))
/// or completed on ([`Job::complete_in`](crate::Job::complete_in)) — usually the
/// connection of an open transaction: pass `&mut *tx` for a `sqlx::Transaction` (or
/// `&mut **tx` inside `gracefully_sqlx::GracefulPool::transaction`). Implemented for
/// `PgConnection` and `SqliteConnection`; sealed.
pub trait JobConnection: sealed::Sealed + Send {}

impl JobConnection for PgConnection {}
impl JobConnection for SqliteConnection {}

pub(crate) mod sealed {
    use sqlx::{PgConnection, SqliteConnection};

    /// A connection of either database.
    pub enum Conn<'a> {
        Postgres(&'a mut PgConnection),
        Sqlite(&'a mut SqliteConnection),
    }

    impl Conn<'_> {
        pub(crate) fn backend(&self) -> &'static str {
            match self {
                Conn::Postgres(_) => "PostgreSQL",
                Conn::Sqlite(_) => "SQLite",
            }
        }
    }

    pub trait Sealed {
        fn conn(&mut self) -> Conn<'_>;
    }

    impl Sealed for PgConnection {
        fn conn(&mut self) -> Conn<'_> {
            Conn::Postgres(self)
        }
    }

    impl Sealed for SqliteConnection {
        fn conn(&mut self) -> Conn<'_> {
            Conn::Sqlite(self)
        }
    }
}
