//! The handler behind a type-erased [`Dispatch`]: decode, call, and say how it went
//! ([`Outcome`]) — the one place where cancellation is told apart from failure.

use std::error::Error;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;
use gracefully::{CancellationToken, is_cancellation};

use crate::BoxError;
use crate::decode::Decode;
use crate::message::{Envelope, Message};

/// How one delivery's handling ended; `settle.rs` turns it into an ack, a nack, a retry or
/// a dead letter.
pub(crate) enum Outcome {
    /// The handler returned `Ok`: ack.
    Done,
    /// The handler stopped because *its token fired* (an error that
    /// [`is_cancellation`] recognises, returned after the token fired): hand the message
    /// back at once without using up a delivery.
    Cancelled(BoxError),
    /// A genuine failure: an error (or a cancellation of the handler's own, with its token
    /// still alive, such as a timeout inside it) or a panic. Retry, or dead-letter.
    Failed(BoxError),
    /// The body could not be decoded: dead-letter at once.
    Undecodable(BoxError),
}

/// Tells an error from a handler apart: a cancellation only if the handler's token fired
/// and the error says so. NServiceBus draws the same line (`IsCausedBy(token)`): a
/// cancellation the handler started itself — a timeout of its own — is a failure, or a
/// handler that always times out would be handed back for ever without using a delivery.
pub(crate) fn classify(error: BoxError, token: &CancellationToken) -> Outcome {
    let error_ref: &(dyn Error + 'static) = &*error;
    if token.is_cancelled() && is_cancellation(error_ref) {
        Outcome::Cancelled(error)
    } else {
        Outcome::Failed(error)
    }
}

/// The future of one handler call.
pub(crate) type OutcomeFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A consumer's decoder and handler, behind one object-safe call.
pub(crate) trait Dispatch: Send + Sync + 'static {
    fn call(&self, envelope: Arc<Envelope>, token: CancellationToken) -> OutcomeFuture;
    fn describe(&self) -> String;
}

/// A decoder and a handler.
pub(crate) struct Typed<D, H> {
    pub(crate) decoder: D,
    pub(crate) handler: H,
}

impl<D, H, Fut, E> Dispatch for Typed<D, H>
where
    D: Decode,
    H: Fn(Message<D::Output>, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + 'static,
{
    fn call(&self, envelope: Arc<Envelope>, token: CancellationToken) -> OutcomeFuture {
        let payload = match self.decoder.decode(&envelope.body, &envelope.properties) {
            Ok(payload) => payload,
            Err(error) => return Box::pin(std::future::ready(Outcome::Undecodable(error))),
        };
        let run = (self.handler)(Message::new(payload, envelope), token.clone());
        Box::pin(async move {
            // A panic is a genuine failure of this message, not of the consumer: caught
            // here so the message is retried or dead-lettered like any other failure.
            match AssertUnwindSafe(run).catch_unwind().await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(error)) => classify(error.into(), &token),
                Err(panic) => Outcome::Failed(
                    format!(
                        "the handler panicked: {}",
                        gracefully_host::panic_message(&*panic)
                    )
                    .into(),
                ),
            }
        })
    }

    fn describe(&self) -> String {
        self.decoder.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gracefully::{CancellationSource, Cancelled, Reason};

    #[test]
    fn a_cancellation_after_the_token_fired_is_a_cancellation() {
        let source = CancellationSource::new();
        source.cancel_with(Reason::shutdown());
        let error: BoxError = Box::new(source.token().check().unwrap_err());
        assert!(matches!(
            classify(error, &source.token()),
            Outcome::Cancelled(_)
        ));
    }

    #[test]
    fn a_cancellation_of_the_handlers_own_is_a_failure() {
        let alive = CancellationSource::new();
        let own_timeout: BoxError = Box::new(Cancelled::new(Reason::deadline_exceeded()));
        assert!(matches!(
            classify(own_timeout, &alive.token()),
            Outcome::Failed(_)
        ));
    }

    #[test]
    fn another_error_after_the_token_fired_is_still_a_failure() {
        let source = CancellationSource::new();
        source.cancel_with(Reason::shutdown());
        let error: BoxError = "the card was declined".into();
        assert!(matches!(
            classify(error, &source.token()),
            Outcome::Failed(_)
        ));
    }
}
