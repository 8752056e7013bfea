//! [`CountingStream`]: the connection's socket as hyper sees it, counting the bytes read
//! and telling HTTP/2 from HTTP/1 by the first of them.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::net::TcpStream;

use crate::conn_state::{ConnState, VERSION_HTTP1, VERSION_HTTP2};

/// The HTTP/2 connection preface (RFC 9113 §3.4): how a connection announces HTTP/2 before
/// any request, which is when hyper-util's `auto` server decides too.
const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The client's socket as hyper reads and writes it, counting the bytes read (for
/// `header_guard`) and telling HTTP/2 from HTTP/1 by the first bytes. Delegates
/// everything to the `TcpStream`.
pub(crate) struct CountingStream {
    inner: TcpStream,
    conn: Arc<ConnState>,
    /// How many bytes of [`HTTP2_PREFACE`] arrived so far, until the version is decided.
    preface_matched: usize,
}

impl CountingStream {
    pub(crate) fn new(inner: TcpStream, conn: Arc<ConnState>) -> Self {
        CountingStream {
            inner,
            conn,
            preface_matched: 0,
        }
    }

    /// Compares newly read bytes with the HTTP/2 preface; decides the version at the first
    /// difference (HTTP/1) or once all of it arrived (HTTP/2), as hyper-util does.
    // Cold: it runs on a connection's first reads only, and inlined it would make every read
    // set up a larger frame.
    #[cold]
    fn detect_version(&mut self, read: &[u8]) {
        let want = &HTTP2_PREFACE[self.preface_matched..];
        let n = want.len().min(read.len());
        let version = if want[..n] != read[..n] {
            VERSION_HTTP1
        } else if n == want.len() {
            VERSION_HTTP2
        } else {
            self.preface_matched += n;
            return;
        };
        self.preface_matched = HTTP2_PREFACE.len() + 1; // decided
        self.conn.version.store(version, Ordering::Release);
        self.conn.events.notify_one();
    }
}

impl tokio::io::AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            // Only this reader writes the count: a load and a store, no read-modify-write.
            let read = &self.conn.bytes_read;
            read.store(read.load(Ordering::Relaxed) + n, Ordering::Relaxed);
            if self.preface_matched <= HTTP2_PREFACE.len() {
                let this = &mut *self;
                this.detect_version(&buf.filled()[before..]);
            }
        }
        polled
    }
}

impl tokio::io::AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
