//! The writing half shared by [`FileWriter`](crate::FileWriter) and `ObjectWriter`: a chunk
//! buffer that `AsyncWrite` fills, a bounded channel to the job that writes the chunks, and
//! the commit handshake.
//!
//! Invariants (cited as "feed invariant N"):
//!
//! 1. **Only the writer's end closes the channel.** The job reads until [`Msg::Commit`]; a
//!    channel that closes without it means the writer was dropped, and the job discards.
//! 2. **Chunks are full except the last.** Unless the job accepts partial chunks on flush
//!    (`flush_partial`), every `Chunk` holds exactly `chunk_size` bytes except the one sent
//!    just before `Commit` (multipart stores need equal parts).
//! 3. **An error ends the feed.** Once the job has failed, the feed keeps its error and
//!    every later call returns it.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use gracefully::{CancellationToken, Cancelled, Reason};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::error::Error;
use crate::job::Job;

/// The smallest buffer the feed allocates (unless the chunk is smaller): small writes do
/// not each reallocate.
const MIN_BUFFER: usize = 8 * 1024;

/// What a writer sends its job.
pub(crate) enum Msg {
    /// The next chunk (feed invariant 2).
    Chunk(Bytes),
    /// No more data: commit.
    Commit,
    /// The token fired: look at it now (for a job that blocks on the channel).
    Wake,
}

/// The channel from a feed to its job, with room for `queued` messages.
pub(crate) fn channel(queued: usize) -> (mpsc::Sender<Msg>, mpsc::Receiver<Msg>) {
    mpsc::channel(queued)
}

pub(crate) struct Feed<T> {
    /// Declared first so it drops first: the job's token fires (with the `dropped` reason)
    /// while the channel is still open, so the job sees the reason.
    job: Job<T>,
    tx: PollSender<Msg>,
    /// Grows with the data up to `chunk_size` (see `grow_for`).
    buf: BytesMut,
    chunk_size: usize,
    /// Whether a full chunk has been sent: from then on a chunk is reserved whole.
    sent_full_chunk: bool,
    flush_partial: bool,
    dropped: fn() -> Reason,
    state: State<T>,
}

enum State<T> {
    /// Taking data.
    Open,
    /// `Commit` sent; waiting for the job's result.
    Committing,
    /// Over: committed, or failed (feed invariant 3).
    Done(Result<T, Error>),
}

impl<T: Clone> Feed<T> {
    pub(crate) fn new(
        job: Job<T>,
        tx: mpsc::Sender<Msg>,
        chunk_size: usize,
        flush_partial: bool,
        dropped: fn() -> Reason,
    ) -> Self {
        Feed {
            job,
            tx: PollSender::new(tx),
            buf: BytesMut::new(),
            chunk_size,
            sent_full_chunk: false,
            flush_partial,
            dropped,
            state: State::Open,
        }
    }

    pub(crate) fn token(&self) -> &CancellationToken {
        self.job.token()
    }

    /// Cancels the job with `reason` and waits for it to end (and clean up).
    pub(crate) async fn discard(self, reason: Reason) {
        self.job.cancel_with(reason);
        let Feed { job, tx, .. } = self;
        drop(tx);
        let _ = job.await;
    }

    pub(crate) fn buffered(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match &self.state {
            State::Open => "open",
            State::Committing => "committing",
            State::Done(Ok(_)) => "committed",
            State::Done(Err(_)) => "failed",
        }
    }

    /// Sends the buffered bytes to the job, if any.
    fn poll_send_buf(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if self.buf.is_empty() {
            return Poll::Ready(Ok(()));
        }
        self.poll_send(cx, Msg::Chunk(Bytes::new()))
    }

    /// Sends `msg` (for `Chunk`, the buffer's content) once the channel has room.
    fn poll_send(&mut self, cx: &mut Context<'_>, msg: Msg) -> Poll<Result<(), Error>> {
        if ready!(self.tx.poll_reserve(cx)).is_err() {
            return self.poll_failure(cx).map(Err);
        }
        let msg = match msg {
            Msg::Chunk(_) => Msg::Chunk(self.buf.split().freeze()),
            other => other,
        };
        if self.tx.send_item(msg).is_err() {
            return self.poll_failure(cx).map(Err);
        }
        Poll::Ready(Ok(()))
    }

    /// The job ended early (its channel closed): its result says why (feed invariant 3).
    fn poll_failure(&mut self, cx: &mut Context<'_>) -> Poll<Error> {
        let result = ready!(Pin::new(&mut self.job).poll(cx));
        let error = match result {
            Err(error) => error,
            // A job only succeeds after `Commit` (feed invariant 1).
            Ok(_) => Error::Cancelled(Cancelled::new((self.dropped)())),
        };
        self.state = State::Done(Err(error.clone()));
        Poll::Ready(error)
    }

    pub(crate) fn poll_commit(&mut self, cx: &mut Context<'_>) -> Poll<Result<T, Error>> {
        loop {
            match &self.state {
                State::Open => {
                    ready!(self.poll_send_buf(cx))?;
                    ready!(self.poll_send(cx, Msg::Commit))?;
                    self.tx.close();
                    self.state = State::Committing;
                }
                State::Committing => {
                    let result = ready!(Pin::new(&mut self.job).poll(cx));
                    self.state = State::Done(result.clone());
                    return Poll::Ready(result);
                }
                State::Done(result) => return Poll::Ready(result.clone()),
            }
        }
    }

    /// `AsyncWrite::poll_write`: buffers up to a chunk, sending full chunks to the job.
    pub(crate) fn poll_write(
        &mut self,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &self.state {
            State::Open => {}
            State::Done(Err(error)) => return Poll::Ready(Err(error.clone().into())),
            State::Committing | State::Done(Ok(_)) => {
                return Poll::Ready(Err(io::Error::other("the writer was already committed")));
            }
        }
        if let Err(cancelled) = self.job.token().check() {
            return Poll::Ready(Err(Error::Cancelled(cancelled).into()));
        }
        if self.buf.len() >= self.chunk_size {
            ready!(self.poll_send_buf(cx))?;
            self.sent_full_chunk = true;
        }
        let n = data.len().min(self.chunk_size - self.buf.len());
        self.grow_for(n);
        self.buf.extend_from_slice(&data[..n]);
        Poll::Ready(Ok(n))
    }

    /// Makes room for `n` more bytes.
    ///
    /// The first chunk's buffer grows with the data — at least twofold each time, so small
    /// writes reallocate it only a few times — and never past the chunk: reserving a whole
    /// chunk up front made a huge chunk size (`1 << 46`) abort the process at the first
    /// byte, and made a large one cost its memory before any data came. Once a full chunk
    /// has been sent, the writer has shown that it fills chunks, so each later one is
    /// reserved whole at its first byte: one allocation per chunk, as fast as before.
    fn grow_for(&mut self, n: usize) {
        let (len, capacity) = (self.buf.len(), self.buf.capacity());
        if capacity - len >= n {
            return;
        }
        let floor = if self.sent_full_chunk {
            self.chunk_size
        } else {
            MIN_BUFFER
        };
        let wanted = (len + n)
            .max(capacity.saturating_mul(2))
            .max(floor)
            .min(self.chunk_size);
        self.buf.reserve(wanted - len);
    }

    /// `AsyncWrite::poll_flush`: hands a partial chunk to the job where it accepts one.
    pub(crate) fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.state {
            State::Open if self.flush_partial => {
                ready!(self.poll_send_buf(cx))?;
                Poll::Ready(Ok(()))
            }
            State::Open | State::Committing | State::Done(Ok(_)) => Poll::Ready(Ok(())),
            State::Done(Err(error)) => Poll::Ready(Err(error.clone().into())),
        }
    }

    /// `AsyncWrite::poll_shutdown`: the commit.
    pub(crate) fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = ready!(self.poll_commit(cx));
        Poll::Ready(result.map(drop).map_err(io::Error::from))
    }
}
