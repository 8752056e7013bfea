//! [`GuardedBody`]: a request body whose reads end when the request's token fires.
//!
//! A handler waiting in an extractor (`Json`, `Bytes`, `String`) for a body the client
//! sends slowly, or never, does not look at its token: without this, a stalled upload runs
//! past the route's timeout and past the hard stop, to the abort (the request lost, the
//! exit non-zero), and one such client makes every shutdown spend its whole budget.
//!
//! The guard costs nothing while the body's bytes are there when asked for: it looks for
//! the token only once a read would wait, and then through the request's context (current
//! while the server polls the handler). When the token fires during such a wait, the read
//! fails with the [`Cancelled`] error and the context remembers that the body was cut; the
//! server then answers as for any cancellation (504 for a deadline, 503 with
//! `Connection: close` at shutdown, nothing for a client that left), in place of the
//! extractor's 400 (`request_future::request_outcome`).
//!
//! Once the drain has begun, a body that stalls — no byte for the server's idle grace — is
//! cut the same way (the request's token fires with `Shutdown`, the answer is 503 with
//! `Connection: close`), as a request head stalled mid-way already is: otherwise one client
//! that stops sending mid-upload holds every shutdown until the hard stop.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use gracefully::{Cancelled, Reason, WaitForCancellationOwned};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::policy::DisconnectPolicy;
use crate::request::with_current;

/// Whether a failed body read means the client left: an HTTP/1 message cut short (the
/// connection closed or was reset mid-body), or an HTTP/2 stream the client reset (or whose
/// connection broke).
fn client_left(error: &hyper::Error) -> bool {
    if error.is_incomplete_message() {
        return true;
    }
    std::iter::successors(std::error::Error::source(error), |e| e.source()).any(|cause| {
        if let Some(h2) = cause.downcast_ref::<h2::Error>() {
            return (h2.is_reset() && h2.is_remote()) || h2.is_io();
        }
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::BrokenPipe
                    | std::io::ErrorKind::UnexpectedEof
            )
        })
    })
}

pin_project_lite::pin_project! {
    /// hyper's body of one request, guarded by the request's token.
    pub(crate) struct GuardedBody {
        #[pin]
        inner: Incoming,
        // Made at the first read that waits (boxed: only slow bodies pay for it).
        waiter: Option<Pin<Box<WaitForCancellationOwned>>>,
        // Made at a read that waits, dropped when bytes arrive: resolves once the drain has
        // begun and then the idle grace passed with this read still waiting.
        stalled: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
        // The token fired: the body ends here.
        cut: bool,
    }
}

impl GuardedBody {
    pub(crate) fn new(inner: Incoming) -> Self {
        GuardedBody {
            inner,
            waiter: None,
            stalled: None,
            cut: false,
        }
    }
}

impl Body for GuardedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        if *this.cut {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.stalled = None; // progress: the stall is counted from the next wait
            if let Some(Err(error)) = &frame
                && client_left(error)
            {
                // The client reset the stream (HTTP/2) or closed mid-body (HTTP/1): the
                // handler's extractor is about to answer an error nobody will read. Fire
                // the token as for any departure, so that the answer becomes none and the
                // request counts as the client's leaving (`answer_for_cut_body`), not as
                // a completed 400. (Over HTTP/2 hyper looks for a reset only while the
                // handler waits; a body read that fails lets it answer first.)
                with_current(|ctx| {
                    if ctx.policy() == DisconnectPolicy::Cooperative {
                        ctx.source().cancel_with(
                            Reason::disconnected()
                                .with_message("the client left while sending the request body"),
                        );
                        ctx.mark_body_cut();
                    }
                });
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let waiter = match this.waiter {
            Some(waiter) => waiter,
            None => {
                // Read outside the server's poll of the handler (a task of the handler's
                // own): no context, no guard; the handler's token is its own business then.
                let Some(token) = with_current(|ctx| ctx.token()) else {
                    return Poll::Pending;
                };
                this.waiter.insert(Box::pin(token.cancelled_owned()))
            }
        };
        if this.stalled.is_none() {
            *this.stalled = with_current(|ctx| {
                let (stopping, grace) = (ctx.server.stopping.clone(), ctx.server.config.idle_grace);
                Box::pin(async move {
                    stopping.cancelled().await;
                    tokio::time::sleep(grace).await;
                }) as Pin<Box<dyn Future<Output = ()> + Send>>
            });
        }
        if let Some(stalled) = this.stalled.as_mut()
            && stalled.as_mut().poll(cx).is_ready()
        {
            *this.stalled = None;
            with_current(|ctx| {
                ctx.source().cancel_with(
                    gracefully::Reason::shutdown()
                        .with_message("the request body stalled while the server drained"),
                )
            });
        }
        match waiter.as_mut().poll(cx) {
            Poll::Ready(reason) => {
                *this.cut = true;
                with_current(|ctx| ctx.mark_body_cut());
                Poll::Ready(Some(Err(Box::new(Cancelled::new(reason)))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.cut || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
