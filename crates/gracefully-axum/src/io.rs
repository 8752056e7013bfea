//! The connection's socket, shared between hyper (which reads and writes it) and the
//! request futures (which watch it for a departed client).

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A `TcpStream` behind an `Arc`, readable and writable through `&TcpStream` (tokio's
/// readiness API), so that a second party can wait for readability without stealing the
/// reader's wake-ups: `readable()` queues a separate waiter, while `poll_read_ready` uses the
/// single reader slot (which only hyper uses).
#[derive(Clone)]
pub(crate) struct SharedStream(pub(crate) Arc<TcpStream>);

impl AsyncRead for SharedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            // `recv` into the unfilled (possibly uninitialised) part; `try_io` clears the
            // readiness if it reports WouldBlock, so the next `poll_read_ready` registers
            // our waker.
            let received = self.0.try_io(Interest::READABLE, || {
                // SAFETY: `recv` only writes into the slice (it takes `MaybeUninit`), and
                // never de-initialises anything.
                socket2::SockRef::from(&*self.0).recv(unsafe { buf.unfilled_mut() })
            });
            match received {
                Ok(n) => {
                    // SAFETY: `recv` initialised the first `n` bytes of the unfilled part.
                    unsafe { buf.assume_init(n) };
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Writes go straight to the socket.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// What a look at an otherwise idle socket shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// The client closed its side (EOF) or reset the connection: it is gone.
    Gone,
    /// Bytes are waiting (an unread request body, or a pipelined request): the client is
    /// there, but we cannot see past them.
    Data,
}

impl SharedStream {
    /// Waits until the socket is readable, then looks without consuming anything.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it consumes nothing, and its readiness waiter is dropped with it.
    pub(crate) async fn watch(&self) -> Peek {
        let mut byte = [MaybeUninit::<u8>::uninit(); 1];
        loop {
            if self.0.readable().await.is_err() {
                return Peek::Gone;
            }
            // `try_io` clears the readiness only if the peek reports WouldBlock, i.e. when
            // the socket really has nothing: the reader (hyper) would find nothing either,
            // and the next edge wakes both of us.
            let peeked = self.0.try_io(Interest::READABLE, || {
                socket2::SockRef::from(&*self.0).peek(&mut byte)
            });
            match peeked {
                Ok(0) => return Peek::Gone,
                Ok(_) => return Peek::Data,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Peek::Gone,
            }
        }
    }
}
