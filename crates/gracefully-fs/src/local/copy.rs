//! [`copy()`](crate::copy): the source checked before it is opened, then copied chunk by
//! chunk — in the kernel where it can be — with every failure named on its own side.
//!
//! Two rules, each closing a defect:
//!
//! 1. **Only a regular file is a source.** Opening a FIFO blocks until a writer comes, and
//!    reading a FIFO, a terminal or a socket can block for ever. The blocking thread would
//!    sit inside that system call, where the token cannot reach it (it is checked between
//!    chunks), and the runtime's shutdown would wait for the thread without end. So the
//!    source is looked at (following symbolic links) *before* it is opened, and anything
//!    but a regular file is refused.
//! 2. **A failure names the side that failed.** A read error names the source
//!    ([`Step::Read`]); a write error names the temporary file ([`Step::Write`]) — a full
//!    disk at the destination is not the source's fault. The kernel's copy
//!    (`copy_file_range`) does both in one call and cannot say which side failed, so on any
//!    failure the copy goes on through user space, where it can: a failed
//!    `copy_file_range` copied nothing, so the read and write pick up exactly where it
//!    stopped.

use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::path::Path;

use gracefully::CancellationToken;

use super::{Chunks, atomic_write, future_dropped, not_a_regular_file, spawner};
use crate::error::{Error, Step};
use crate::local::temp::TempFile;
use crate::options::WriteOptions;

/// The largest buffer of the copy through user space (the chunk size, if smaller).
const USER_BUFFER: usize = 128 * 1024;

pub(crate) async fn copy(
    options: &WriteOptions,
    from: &Path,
    to: &Path,
    token: &CancellationToken,
) -> Result<u64, Error> {
    options.validate()?;
    let (source, dest) = (from.to_path_buf(), to.to_path_buf());
    let name = || format!("fs copy {} -> {}", from.display(), to.display());
    let options = options.clone();
    let job = spawner(&options).blocking(name, token, future_dropped, move |token| {
        token.check()?;
        let (file, meta) = open_source(&source)?;
        atomic_write(
            &dest,
            &options,
            &token,
            Some(meta.permissions()),
            |chunks| {
                let mut from = Source::new(&file, &source, options.chunk_size);
                while chunks.copy_from(&mut from)? > 0 {}
                Ok(())
            },
        )
    });
    job.await
}

/// Opens the source of a copy, refusing anything but a regular file (rule 1).
fn open_source(source: &Path) -> Result<(File, Metadata), Error> {
    let read_error = |e| Error::io(Step::Read, source, e);
    let regular = |meta: Metadata| {
        if meta.is_file() {
            Ok(meta)
        } else {
            Err(not_a_regular_file(
                Step::Read,
                source,
                "source",
                meta.file_type(),
            ))
        }
    };
    // Before opening: the open of a FIFO is itself what blocks.
    regular(fs::metadata(source).map_err(read_error)?)?;
    let file = File::open(source).map_err(read_error)?;
    // And again on what was opened, in case the name was replaced in between (a FIFO
    // swapped in exactly then still blocks the open: that race is not closed).
    let meta = regular(file.metadata().map_err(read_error)?)?;
    Ok((file, meta))
}

/// The source of a copy, read in the kernel while that works and through a buffer after.
pub(crate) struct Source<'a> {
    file: &'a File,
    path: &'a Path,
    /// Whether the next piece goes through `copy_file_range`. Cleared for good at its
    /// first failure (rule 2), and when it reports the end of the source, which is then
    /// confirmed by a read: on some virtual file systems (procfs, sysfs) it returns 0
    /// before the end, as std's `io::copy` also guards against.
    in_kernel: bool,
    /// The buffer of the copy through user space: allocated at its first use, of
    /// `buffer_size` bytes.
    buffer: Vec<u8>,
    buffer_size: usize,
}

impl<'a> Source<'a> {
    pub(crate) fn new(file: &'a File, path: &'a Path, chunk_size: usize) -> Self {
        Source {
            file,
            path,
            in_kernel: cfg!(any(target_os = "linux", target_os = "android")),
            buffer: Vec::new(),
            buffer_size: chunk_size.clamp(1, USER_BUFFER),
        }
    }

    /// Copies up to `limit` bytes to `temp`; fewer only at the end of the source. Returns
    /// the bytes copied.
    fn copy_to(&mut self, temp: &TempFile, limit: u64) -> Result<u64, Error> {
        let mut copied = 0;
        while copied < limit {
            let want = limit - copied;
            let n = match self
                .in_kernel
                .then(|| self.copy_in_kernel(temp, want))
                .flatten()
            {
                Some(n) => n,
                None => {
                    self.in_kernel = false;
                    self.through_user_space(temp, want)?
                }
            };
            if n == 0 {
                break;
            }
            copied += n;
        }
        Ok(copied)
    }

    /// One `copy_file_range`: the bytes it copied, or `None` to go on through user space
    /// (it failed, or reported an end to confirm).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn copy_in_kernel(&self, temp: &TempFile, want: u64) -> Option<u64> {
        let len = usize::try_from(want).unwrap_or(usize::MAX);
        match rustix::fs::copy_file_range(self.file, None, temp.file(), None, len) {
            Ok(0) | Err(_) => None,
            Ok(n) => Some(n as u64),
        }
    }

    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn copy_in_kernel(&self, _temp: &TempFile, _want: u64) -> Option<u64> {
        None
    }

    /// One read into the buffer and its write to `temp`; each failure names its own file
    /// (rule 2). Returns the bytes copied, 0 at the end of the source.
    fn through_user_space(&mut self, temp: &TempFile, want: u64) -> Result<u64, Error> {
        if self.buffer.is_empty() {
            self.buffer = vec![0; self.buffer_size];
        }
        let take = usize::try_from(want).map_or(self.buffer.len(), |w| w.min(self.buffer.len()));
        let mut file = self.file;
        let n = loop {
            match file.read(&mut self.buffer[..take]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(Step::Read, self.path, e)),
            }
        };
        temp.file()
            .write_all(&self.buffer[..n])
            .map_err(|e| Error::io(Step::Write, temp.path(), e))?;
        Ok(n as u64)
    }
}

impl Chunks<'_> {
    /// Copies up to one chunk from `source`; returns the bytes copied, 0 at the end.
    pub(crate) fn copy_from(&mut self, source: &mut Source<'_>) -> Result<u64, Error> {
        self.token.check()?;
        let copied = source.copy_to(self.temp, self.chunk_size as u64)?;
        self.advance(copied);
        Ok(copied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::prepare;

    fn temp_in(dir: &Path) -> TempFile {
        let target = prepare(&dir.join("dest"), &WriteOptions::new(), None).unwrap();
        TempFile::create(&target).unwrap()
    }

    #[test]
    fn a_full_disk_is_a_write_error_naming_the_temporary_file_not_the_source() {
        // /dev/full fails every write with ENOSPC, as a full disk would.
        let Ok(full) = File::options().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full on this system");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("source");
        fs::write(&source_path, vec![7u8; 300_000]).unwrap();
        let source = File::open(&source_path).unwrap();
        // A name that does not exist, so dropping the TempFile removes nothing.
        let temp = TempFile::for_tests(dir.path().join("the-temporary-file"), full);
        let (options, token) = (WriteOptions::new(), CancellationToken::never());
        let mut chunks = Chunks::new(&temp, &options, &token);
        let mut from = Source::new(&source, &source_path, options.chunk_size);
        let err = chunks.copy_from(&mut from).unwrap_err();
        assert_eq!(err.step(), Some(Step::Write), "{err}");
        assert!(
            matches!(&err, Error::Io { path, .. } if path == temp.path()),
            "{err}"
        );
        let message = err.to_string();
        assert!(message.contains("the-temporary-file"), "{message}");
        assert!(!message.contains("source"), "{message}");
        assert!(message.contains("No space left"), "{message}");
    }

    #[test]
    fn a_failed_read_is_a_read_error_naming_the_source() {
        // Reading a directory fails (EISDIR) on the read side only.
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("a-directory");
        fs::create_dir(&source_path).unwrap();
        let source = File::open(&source_path).unwrap();
        let temp = temp_in(dir.path());
        let (options, token) = (WriteOptions::new(), CancellationToken::never());
        let mut chunks = Chunks::new(&temp, &options, &token);
        let mut from = Source::new(&source, &source_path, options.chunk_size);
        let err = chunks.copy_from(&mut from).unwrap_err();
        assert_eq!(err.step(), Some(Step::Read), "{err}");
        assert!(
            matches!(&err, Error::Io { path, .. } if *path == source_path),
            "{err}"
        );
    }

    #[test]
    fn the_copy_moves_every_byte_in_chunks_and_stops_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let source_path = dir.path().join("source");
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        fs::write(&source_path, &data).unwrap();
        let source = File::open(&source_path).unwrap();
        let temp = temp_in(dir.path());
        let options = WriteOptions::new().chunk_size(300_000);
        let token = CancellationToken::never();
        let mut chunks = Chunks::new(&temp, &options, &token);
        let mut from = Source::new(&source, &source_path, options.chunk_size);
        let mut sizes = Vec::new();
        loop {
            match chunks.copy_from(&mut from).unwrap() {
                0 => break,
                n => sizes.push(n),
            }
        }
        assert_eq!(sizes, [300_000, 300_000, 300_000, 100_003]);
        assert_eq!(fs::read(temp.path()).unwrap(), data);
    }
}
