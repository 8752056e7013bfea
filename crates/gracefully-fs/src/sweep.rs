//! [`LeftoverSweep`]: [`remove_leftovers`](crate::remove_leftovers) as the start step of a
//! host service (feature `host`), so the sweep runs at host start and its counts appear in
//! the shutdown report.

use std::io;
use std::path::PathBuf;

use gracefully_host::{BackgroundService, BoxError, ServiceContext};

use crate::error::Error;
use crate::local::remove_leftovers;

/// A host service whose start step removes this crate's leftover temporary files under the
/// given directories (see [`remove_leftovers`](crate::remove_leftovers)), before the
/// services registered after it start; then it waits for the shutdown. Its row of the shutdown report counts what it
/// removed (`temp files removed`, `bytes removed`, `in use, left`).
///
/// ```
/// use gracefully_fs::LeftoverSweep;
/// use gracefully_host::Host;
///
/// # let dir = tempfile::tempdir().unwrap();
/// let host = Host::builder()
///     .service("fs-sweep", LeftoverSweep::new([dir.path()])) // first: runs before the writers
///     // .service("api", …)
///     .build()
///     .unwrap();
/// # let _ = host;
/// ```
///
/// A directory that does not exist is skipped (nothing to sweep); one that cannot be read
/// fails the start step, so the host does not start on a data directory it cannot use.
/// Files it could not remove are logged and counted (`errors`), without failing the start.
///
/// *Anchors:* .NET's `IHostedService.StartAsync` doing startup cleanup by hand.
#[derive(Debug, Clone)]
pub struct LeftoverSweep {
    dirs: Vec<PathBuf>,
}

impl LeftoverSweep {
    /// A sweep of `dirs` (each with its subdirectories).
    pub fn new<I>(dirs: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<PathBuf>,
    {
        LeftoverSweep {
            dirs: dirs.into_iter().map(Into::into).collect(),
        }
    }
}

impl BackgroundService for LeftoverSweep {
    async fn start(&mut self, cx: &ServiceContext) -> Result<(), BoxError> {
        let dirs = self.dirs.clone();
        let swept = tokio::task::spawn_blocking(move || {
            let mut found = Vec::new();
            for dir in dirs {
                match remove_leftovers(&dir) {
                    Ok(leftovers) => found.push(leftovers),
                    Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(found)
        })
        .await??;
        for leftovers in swept {
            for path in &leftovers.removed {
                tracing::info!(path = %path.display(), "removed a temporary file left by a crash");
            }
            for error in &leftovers.errors {
                tracing::warn!(%error, "could not sweep a leftover temporary file");
            }
            cx.count("temp files removed", leftovers.removed.len() as u64);
            cx.count("bytes removed", leftovers.bytes);
            cx.count("in use, left", leftovers.in_use.len() as u64);
            cx.count("errors", leftovers.errors.len() as u64);
        }
        Ok(())
    }
}
