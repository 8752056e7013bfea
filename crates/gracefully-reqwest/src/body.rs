//! The response body that ends when the token fires: [`guard`] puts a [`TokenBody`] inside
//! an ordinary `reqwest::Response`, so every way of reading it (`chunk`, `bytes`, `text`,
//! `json`, `bytes_stream`) stops, and the connection closes, once the token is cancelled.
//!
//! Two paths close the connection, and together they cover a reader that is waiting and one
//! that is not:
//!
//! * **The callback.** A registration on the token takes the inner body out of its slot and
//!   drops it on the cancelling thread. hyper closes an HTTP/1.1 connection whose response
//!   body is dropped unread (it cannot be reused) and resets an HTTP/2 stream. So a response
//!   held while the caller awaits something else does not keep its connection open — as Go's
//!   transport, which closes the connection when the request's context is done, read or not.
//! * **The reader.** A poll that finds the token cancelled (checked first, and by a waiter
//!   registered whenever the inner body is pending) drops the inner body itself and reports
//!   the cancellation once; later polls report the end.
//!
//! The callback only ever `try_lock`s the slot, so it never blocks the canceller. If the lock
//! is taken, a reader is inside `poll_frame` at that moment; the core marks every token
//! cancelled before it runs any callback (`crates/gracefully/src/lib.rs`, rule 4), so that
//! reader, once its inner poll returns, sees the cancellation through its waiter or its next
//! check and drops the body itself.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::task::{Context, Poll};

use bytes::Bytes;
use gracefully::{CancellationToken, Cancelled, Registration, WaitForCancellationOwned};
use http_body::{Body, Frame, SizeHint};
use reqwest::ResponseBuilderExt;

use crate::deadline;

type BoxError = Box<dyn StdError + Send + Sync>;

/// The inner body, shared with the token's callback; `None` once dropped.
type Slot = Mutex<Option<reqwest::Body>>;

/// `response` with its body replaced by a [`TokenBody`] watching `token`. Status, version,
/// headers, extensions (the remote address among them) and URL are kept.
pub(crate) fn guard(response: reqwest::Response, token: CancellationToken) -> reqwest::Response {
    let url = response.url().clone();
    let (parts, body) = http::Response::<reqwest::Body>::from(response).into_parts();
    // reqwest keeps a response's URL in a private extension that only `ResponseBuilderExt`
    // can set, so the response is rebuilt with a builder that is handed the original parts
    // first: the URL then goes into the response's own extensions (no second map made and
    // merged).
    let mut builder = http::Response::builder()
        .status(parts.status)
        .version(parts.version);
    if let Some(headers) = builder.headers_mut() {
        *headers = parts.headers;
    }
    if let Some(extensions) = builder.extensions_mut() {
        *extensions = parts.extensions;
    }
    let body = reqwest::Body::wrap(TokenBody::new(body, token));
    let response = builder
        .url(url)
        .body(body)
        .expect("a builder given a valid response's status, version and headers is valid");
    reqwest::Response::from(response)
}

/// A response body raced against a token (see the module docs).
pub(crate) struct TokenBody {
    slot: Arc<Slot>,
    token: CancellationToken,
    /// Registered the first time the inner body is pending; wakes the reader on cancel.
    waiter: Option<WaitForCancellationOwned>,
    /// Drops the inner body when the token fires (the callback holds its own `Arc` of the
    /// slot).
    _close_on_cancel: Registration,
    /// The cancellation was reported; every later poll ends the stream.
    reported: bool,
}

impl TokenBody {
    fn new(body: reqwest::Body, token: CancellationToken) -> Self {
        let slot = Arc::new(Mutex::new(Some(body)));
        let for_callback = Arc::clone(&slot);
        let registration = token.on_cancel(move |_reason| {
            let body = match for_callback.try_lock() {
                Ok(mut guard) => guard.take(),
                Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner().take(),
                // A reader holds the lock: it drops the body itself (module docs).
                Err(TryLockError::WouldBlock) => None,
            };
            drop(body);
        });
        TokenBody {
            slot,
            token,
            waiter: None,
            _close_on_cancel: registration,
            reported: false,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<reqwest::Body>> {
        // A panic inside the inner body's poll leaves nothing half-updated in the slot.
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops the inner body (closing its connection) and reports `cancelled`, once.
    #[cold]
    fn stop(&mut self, cancelled: Cancelled) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let body = self.lock().take();
        drop(body);
        self.waiter = None;
        self.reported = true;
        Poll::Ready(Some(Err(Box::new(cancelled))))
    }
}

impl Body for TokenBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // `TokenBody` is `Unpin`: every field is.
        let this = self.get_mut();
        if this.reported {
            return Poll::Ready(None);
        }
        if let Some(reason) = this.token.reason() {
            return this.stop(Cancelled::new(reason));
        }
        let polled = match this.lock().as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            // Taken by the callback, so the token has fired (it is the only other taker).
            None => Poll::Pending,
        };
        match polled {
            Poll::Ready(Some(Err(error))) => match deadline::cancellation(&this.token) {
                // reqwest's own timer (set to the token's deadline by `set_request_timeout`)
                // may end the body a moment before the token's timer fires; report the
                // deadline, not "timed out".
                Some(cancelled) => this.stop(cancelled),
                None => Poll::Ready(Some(Err(Box::new(error)))),
            },
            Poll::Ready(other) => Poll::Ready(other.map(|frame| frame.map_err(Into::into))),
            Poll::Pending => {
                let token = &this.token;
                let waiter = this
                    .waiter
                    .get_or_insert_with(|| token.clone().cancelled_owned());
                match Pin::new(waiter).poll(cx) {
                    Poll::Ready(reason) => this.stop(Cancelled::new(reason)),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body taken by the callback is *not* at its end: its reader must still be told
        // it was cut short, so it polls once more and gets the cancellation.
        self.reported || self.lock().as_ref().is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        match self.lock().as_ref() {
            Some(body) if !self.reported => body.size_hint(),
            _ => SizeHint::default(),
        }
    }
}
