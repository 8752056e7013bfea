//! [`Handler`]: what a consumer calls for each message.

use std::future::Future;

use gracefully::CancellationToken;
use gracefully_host::BoxError;

use crate::message::Message;

/// What a [`Consumer`](crate::Consumer) calls for each message:
/// `async fn(Message<T>, CancellationToken) -> Result<(), E>`, with any error type that
/// converts into a boxed error. Implemented for every such closure or function; you do not
/// implement it yourself.
///
/// The outcome decides what happens to the message (see the crate docs, "Outcomes"):
/// `Ok` acks it; an error that [is a cancellation](gracefully::is_cancellation) *while the
/// token has fired* hands it back at once; any other error, or a panic, is a failure that
/// is retried with backoff and dead-lettered after the maximum deliveries.
///
/// *Anchors:* MassTransit's `IConsumer<T>.Consume(ConsumeContext<T>)` with its
/// `CancellationToken`; nats.go's `jetstream.MessageHandler` (no token, acks by hand).
pub trait Handler<T>: Send + Sync + 'static {
    /// The handler's error.
    type Error: Into<BoxError> + Send;
    /// The handler's future.
    type Future: Future<Output = Result<(), Self::Error>> + Send + 'static;

    /// Handles one message; `token` fires at the host's hard stop (`Shutdown`) or when the
    /// connection to NATS is lost (`Disconnected`).
    fn call(&self, message: Message<T>, token: CancellationToken) -> Self::Future;
}

impl<T, F, Fut, E> Handler<T> for F
where
    F: Fn(Message<T>, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: Into<BoxError> + Send,
{
    type Error = E;
    type Future = Fut;

    fn call(&self, message: Message<T>, token: CancellationToken) -> Fut {
        self(message, token)
    }
}
