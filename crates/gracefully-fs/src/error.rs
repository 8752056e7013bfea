//! [`Error`]: what went wrong, at which [`Step`], and whether the new content is in place.

use std::error::Error as StdError;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use gracefully::Cancelled;

/// The error of every operation in this crate.
///
/// Cancellation is its own variant, [`Error::Cancelled`], carrying the token's
/// [`Reason`](gracefully::Reason); [`gracefully::is_cancellation`] recognises it (also
/// inside an `io::Error` from [`FileWriter`](crate::FileWriter)'s `AsyncWrite` methods), so
/// it can be kept out of failure logs. Every other variant names what failed and where.
///
/// Except where [`committed`](Self::committed) says otherwise, an error means the
/// destination was not touched and the temporary file (or multipart upload) is gone.
///
/// `Clone`, so a writer can hand the same error to every later call.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Error {
    /// The token fired (or the future, writer or upload was dropped) before the commit
    /// point: nothing was written to the destination.
    Cancelled(Cancelled),
    /// [`WriteOptions::overwrite(false)`](crate::WriteOptions::overwrite) and the
    /// destination exists.
    AlreadyExists {
        /// The destination.
        path: PathBuf,
    },
    /// A file-system step failed.
    Io {
        /// What was being done.
        step: Step,
        /// The path it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: Arc<io::Error>,
    },
    /// An object-store request failed.
    #[cfg(feature = "object_store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "object_store")))]
    Store {
        /// What was being done.
        step: Step,
        /// The object's location.
        location: String,
        /// The store's error.
        source: Arc<object_store::Error>,
    },
    /// The options asked for something impossible; the message says what would be right.
    InvalidOptions(&'static str),
}

/// The step of an operation at which an [`Error`] happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Step {
    /// Looking at the destination and its directory before writing; also a destination
    /// that exists and is neither a regular file nor a symbolic link ("the destination is a
    /// FIFO, not a regular file").
    Prepare,
    /// Creating (and locking) the temporary file beside the destination. A failure to
    /// create it (a missing directory, no permission) names the destination.
    CreateTemp,
    /// Looking at, opening or reading the source of a copy; the error names the source.
    Read,
    /// Writing a chunk to the temporary file (also a copy's: a full disk at the
    /// destination); the error names the temporary file.
    Write,
    /// Copying a chunk from the source of a copy to the temporary file. No longer
    /// reported: a copy's failures name their side, [`Read`](Self::Read) (the source) or
    /// [`Write`](Self::Write) (the temporary file). Kept so that matches on it still
    /// compile.
    Copy,
    /// Setting the temporary file's permissions.
    SetPermissions,
    /// `fsync` of the temporary file.
    SyncFile,
    /// Renaming (or linking) the temporary file over the destination: the commit point.
    Rename,
    /// `fsync` of the directory, after the rename: the new content is in place, but the
    /// rename may not survive a power loss.
    SyncDirectory,
    /// Scanning a directory for leftover temporary files.
    ScanLeftovers,
    /// Removing a leftover temporary file.
    RemoveLeftover,
    /// A single `PUT` of an object.
    Put,
    /// Starting a multipart upload.
    StartUpload,
    /// Uploading one part of a multipart upload.
    UploadPart,
    /// Completing a multipart upload: the commit point.
    CompleteUpload,
}

impl Step {
    fn as_str(self) -> &'static str {
        match self {
            Step::Prepare => "prepare the write",
            Step::CreateTemp => "create the temporary file",
            Step::Read => "read the source",
            Step::Write => "write to the temporary file",
            Step::Copy => "copy from the source to the temporary file",
            Step::SetPermissions => "set the permissions",
            Step::SyncFile => "fsync the temporary file",
            Step::Rename => "rename the temporary file over the destination",
            Step::SyncDirectory => "fsync the directory after the rename",
            Step::ScanLeftovers => "scan for leftover temporary files",
            Step::RemoveLeftover => "remove a leftover temporary file",
            Step::Put => "put the object",
            Step::StartUpload => "start the multipart upload",
            Step::UploadPart => "upload a part",
            Step::CompleteUpload => "complete the multipart upload",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Error {
    pub(crate) fn io(step: Step, path: impl Into<PathBuf>, source: io::Error) -> Error {
        Error::Io {
            step,
            path: path.into(),
            source: Arc::new(source),
        }
    }

    #[cfg(feature = "object_store")]
    pub(crate) fn store(
        step: Step,
        location: &object_store::path::Path,
        source: object_store::Error,
    ) -> Error {
        Error::Store {
            step,
            location: location.to_string(),
            source: Arc::new(source),
        }
    }

    /// The cancellation, if this is one.
    pub fn as_cancelled(&self) -> Option<&Cancelled> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            _ => None,
        }
    }

    /// The step that failed, for [`Io`](Error::Io) and `Store` errors.
    pub fn step(&self) -> Option<Step> {
        match self {
            Error::Io { step, .. } => Some(*step),
            #[cfg(feature = "object_store")]
            Error::Store { step, .. } => Some(*step),
            _ => None,
        }
    }

    /// Whether the new content is in place despite the error: only when the `fsync` of the
    /// directory after the rename failed ([`Step::SyncDirectory`]). Every other error leaves
    /// the destination as it was.
    pub fn committed(&self) -> bool {
        self.step() == Some(Step::SyncDirectory)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Cancelled(cancelled) => {
                write!(f, "{cancelled}; nothing was written to the destination")
            }
            Error::AlreadyExists { path } => write!(
                f,
                "{} already exists and the write was told not to overwrite it \
                 (WriteOptions::overwrite(false)); nothing was written",
                path.display()
            ),
            Error::Io { step, path, source } => {
                write!(f, "could not {step} ({}): {source}", path.display())?;
                if *step == Step::SyncDirectory {
                    f.write_str(
                        "; the new content is in place, but its rename may not survive a power loss",
                    )?;
                }
                Ok(())
            }
            #[cfg(feature = "object_store")]
            Error::Store {
                step,
                location,
                source,
            } => write!(f, "could not {step} ({location}): {source}"),
            Error::InvalidOptions(message) => write!(f, "invalid options: {message}"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Error::Cancelled(cancelled) => Some(cancelled),
            Error::Io { source, .. } => Some(&**source),
            #[cfg(feature = "object_store")]
            Error::Store { source, .. } => Some(&**source),
            Error::AlreadyExists { .. } | Error::InvalidOptions(_) => None,
        }
    }
}

impl From<Cancelled> for Error {
    fn from(cancelled: Cancelled) -> Error {
        Error::Cancelled(cancelled)
    }
}

impl From<Error> for io::Error {
    /// An `io::Error` wrapping the [`Error`] (so `get_ref` finds it and
    /// [`gracefully::is_cancellation`] recognises a cancellation), of the kind that fits:
    /// `AlreadyExists`, `InvalidInput`, the operating system's kind for I/O errors, and
    /// [`Cancelled::io_error_kind`] for a cancellation (`TimedOut` for a deadline, `Other`
    /// otherwise — never `Interrupted`, which tokio's `write_all` and `BufWriter` retry).
    fn from(error: Error) -> io::Error {
        let kind = match &error {
            Error::Cancelled(cancelled) => cancelled.io_error_kind(),
            Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
            Error::Io { source, .. } => source.kind(),
            #[cfg(feature = "object_store")]
            Error::Store { .. } => io::ErrorKind::Other,
            Error::InvalidOptions(_) => io::ErrorKind::InvalidInput,
        };
        io::Error::new(kind, error)
    }
}
