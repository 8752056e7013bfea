//! Watching a connection's socket for a departed client while a handler runs, without
//! touching hyper's reads.
//!
//! **The crate's one module with `unsafe`** (the crate denies it everywhere else). hyper
//! owns the connection's `TcpStream`; to look at the socket while hyper owns it, this
//! module borrows the descriptor by number (`BorrowedFd::borrow_raw`), which the compiler
//! cannot check: the SAFETY comments say why the descriptor is open and is that socket. No
//! crate does this for us: tokio's `TcpStream` lends its descriptor only to whoever holds
//! the stream, and hyper holds it.
//!
//! hyper owns the `TcpStream` (exactly as under `axum::serve`). When an HTTP/1 handler is
//! first pending, the connection duplicates the socket's descriptor once (`dup`) and
//! registers the duplicate with the runtime separately: its readiness is its own, so
//! waiting on it and clearing it never steals a wake-up from hyper. A look is a
//! non-consuming `recv(MSG_PEEK)`: end of stream or an error means the client is gone;
//! bytes mean it is there (an unread body, or a pipelined request). A request that answers
//! within its first poll never gets here, and costs nothing.
//!
//! Elsewhere than Unix nothing is watched ([`Monitor::SUPPORTED`] is `false`): hyper then
//! keeps its own behaviour (dropping the handler when it notices the client is gone).

/// What a look at an otherwise idle socket shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Peek {
    /// The client closed its side (end of stream) or reset the connection: it is gone.
    Gone,
    /// Bytes are waiting (an unread request body, or a pipelined request): the client is
    /// there, but we cannot see past them.
    Data,
}

#[cfg(unix)]
mod imp {
    use std::future::Future;
    use std::mem::MaybeUninit;
    use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
    use std::sync::{Arc, Mutex, PoisonError};

    use socket2::Socket;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;
    use tokio::net::TcpStream;

    use super::Peek;

    /// A connection's watcher.
    pub(crate) struct Monitor {
        /// hyper's socket. Only duplicated while the connection runs (see `watch`).
        fd: RawFd,
        /// The duplicate, made on first need; `Err(())` once closed.
        dup: Mutex<Result<Option<Arc<AsyncFd<Socket>>>, ()>>,
    }

    impl Monitor {
        /// Whether this platform can watch (HTTP/1's `half_close` follows it).
        pub(crate) const SUPPORTED: bool = true;

        pub(crate) fn new(stream: &TcpStream) -> Self {
            Monitor {
                fd: stream.as_raw_fd(),
                dup: Mutex::new(Ok(None)),
            }
        }

        /// A future that waits until the socket shows something, or `None` if the
        /// connection is closed (or the duplicate could not be made: then nothing is
        /// watched, and the request runs as if its client stayed).
        pub(crate) fn watch(&self) -> Option<impl Future<Output = Peek> + Send + 'static> {
            let socket = {
                let mut dup = self.dup.lock().unwrap_or_else(PoisonError::into_inner);
                let slot = dup.as_mut().ok()?;
                if slot.is_none() {
                    // SAFETY: `fd` is the socket of the `TcpStream` hyper owns; `watch` is
                    // only called from a request future, which hyper polls only while the
                    // connection and its stream live, and `close` (after the connection is
                    // dropped) makes every later call return before this point, under this
                    // same lock.
                    let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
                    let owned = borrowed.try_clone_to_owned().ok()?;
                    // The duplicate shares the non-blocking file status of the original.
                    let socket = Socket::from(owned);
                    // SAFETY: the `Socket` owns its descriptor (our duplicate), which stays
                    // open and the same for as long as the `AsyncFd` owns the `Socket`.
                    let registered =
                        unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
                    *slot = Some(Arc::new(registered.ok()?));
                }
                slot.clone()?
            };
            Some(async move {
                let mut byte = [MaybeUninit::<u8>::uninit(); 1];
                loop {
                    let Ok(mut ready) = socket.readable().await else {
                        return Peek::Gone;
                    };
                    // `try_io` clears the duplicate's readiness if the peek would block.
                    match ready.try_io(|socket| socket.get_ref().peek(&mut byte)) {
                        Ok(Ok(0)) | Ok(Err(_)) => return Peek::Gone,
                        // Linux hands out queued bytes before a reset's ECONNRESET (and
                        // before a FIN's end of stream): a peek alone would see "data" for
                        // ever. The readiness the runtime recorded for the socket tells: a
                        // reset or a FIN marks it read-closed (EPOLLHUP/EPOLLRDHUP), an
                        // error (EPOLLERR), and neither mark is ever cleared.
                        Ok(Ok(_)) => {
                            let seen = ready.ready();
                            return if seen.is_read_closed() || seen.is_error() {
                                Peek::Gone
                            } else {
                                Peek::Data
                            };
                        }
                        Err(_would_block) => continue,
                    }
                }
            })
        }

        /// Whether bytes wait in the socket that hyper has not read (a request on its
        /// way): a non-blocking peek at hyper's own socket. `false` once closed.
        pub(crate) fn bytes_waiting(&self) -> bool {
            let dup = self.dup.lock().unwrap_or_else(PoisonError::into_inner);
            if dup.is_err() {
                return false;
            }
            // SAFETY: as in `watch`: `fd` is the socket of the `TcpStream` hyper owns, and
            // `close` (called once the connection is dropped) has not run — we hold its lock
            // and it is not closed — so the descriptor is open and is that socket.
            let borrowed = unsafe { BorrowedFd::borrow_raw(self.fd) };
            let mut byte = [MaybeUninit::<u8>::uninit(); 1];
            // hyper's socket is non-blocking: nothing waiting is `WouldBlock`.
            matches!(socket2::SockRef::from(&borrowed).peek(&mut byte), Ok(n) if n > 0)
        }

        /// Closes the duplicate (so it does not keep the socket open once hyper closed
        /// its own) and refuses to make another.
        pub(crate) fn close(&self) {
            let taken = std::mem::replace(
                &mut *self.dup.lock().unwrap_or_else(PoisonError::into_inner),
                Err(()),
            );
            drop(taken);
        }
    }
}

#[cfg(not(unix))]
mod imp {
    use tokio::net::TcpStream;

    use super::Peek;

    /// No watching on this platform.
    pub(crate) struct Monitor;

    impl Monitor {
        pub(crate) const SUPPORTED: bool = false;

        pub(crate) fn new(_: &TcpStream) -> Self {
            Monitor
        }

        pub(crate) fn watch(&self) -> Option<std::future::Ready<Peek>> {
            None
        }

        pub(crate) fn bytes_waiting(&self) -> bool {
            false
        }

        pub(crate) fn close(&self) {}
    }
}

pub(crate) use imp::Monitor;
