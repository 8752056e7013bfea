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
use gracefully::{Cancelled, WaitForCancellationOwned};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::request::with_current;

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
