//! [`Message`]: what a handler is given — the decoded payload and the delivery's metadata.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, ShortString};

use crate::headers;

/// One delivered message: the decoded payload and what the broker said about it.
///
/// `T` is what the consumer's decoder produced: your type with
/// [`decode::<T>()`](crate::ConsumerBuilder::decode) (JSON), [`Bytes`] with the raw body.
///
/// ```
/// use gracefully::CancellationToken;
/// use gracefully_amqp::Message;
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// async fn handle(message: Message<Order>, token: CancellationToken) -> Result<(), gracefully::Cancelled> {
///     token.check()?;
///     let key = message.id().unwrap_or("(no message id)"); // dedupe key for effects
///     println!("order {} ({key}), delivery {}", message.payload().id, message.delivery_count());
///     Ok(())
/// }
/// ```
///
/// *Anchors:* MassTransit's `ConsumeContext<T>` (`Message`, `MessageId`, `Headers`,
/// `GetRedeliveryCount()`), NServiceBus's message + `IMessageHandlerContext`, lapin's
/// `Delivery` (which has no delivery count: RabbitMQ only says `redelivered`).
pub struct Message<T> {
    payload: T,
    envelope: Arc<Envelope>,
}

/// The delivery without its acker: kept by the consumer (to retry or dead-letter the
/// message after the handler has consumed the [`Message`]) and shared with the message.
pub(crate) struct Envelope {
    pub(crate) body: Bytes,
    pub(crate) properties: BasicProperties,
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    pub(crate) redelivered: bool,
    /// Failed deliveries before this one (our `x-gracefully-failures` header).
    pub(crate) failures: u32,
}

impl Envelope {
    /// Takes the delivery's parts; the acker stays with the caller.
    pub(crate) fn from_delivery(delivery: Delivery) -> (Envelope, lapin::Acker) {
        let failures = headers::failures(&delivery.properties);
        let envelope = Envelope {
            body: Bytes::from(delivery.data),
            properties: delivery.properties,
            exchange: delivery.exchange,
            routing_key: delivery.routing_key,
            redelivered: delivery.redelivered,
            failures,
        };
        (envelope, delivery.acker)
    }

    /// This delivery's number: 1 for the first, counting failed deliveries only.
    pub(crate) fn delivery_count(&self) -> u32 {
        self.failures.saturating_add(1)
    }

    /// The message id property, if the publisher set one.
    pub(crate) fn id(&self) -> Option<&str> {
        self.properties
            .message_id()
            .as_ref()
            .map(ShortString::as_str)
    }

    /// The exchange the message was first published to (a retried copy arrives from the
    /// default exchange; its first exchange travels in a header).
    pub(crate) fn first_exchange(&self) -> &str {
        headers::text(&self.properties, headers::EXCHANGE).unwrap_or(self.exchange.as_str())
    }

    /// The routing key it was first published with.
    pub(crate) fn first_routing_key(&self) -> &str {
        headers::text(&self.properties, headers::ROUTING_KEY).unwrap_or(self.routing_key.as_str())
    }
}

impl<T> Message<T> {
    pub(crate) fn new(payload: T, envelope: Arc<Envelope>) -> Message<T> {
        Message { payload, envelope }
    }

    /// The decoded payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The decoded payload, by value.
    pub fn into_payload(self) -> T {
        self.payload
    }

    /// The message id (the AMQP `message-id` property), if the publisher set one. It is
    /// the key to deduplicate effects by: a redelivered message, or a retried copy, has the
    /// same id. Publish with `BasicProperties::default().with_message_id(…)`.
    pub fn id(&self) -> Option<&str> {
        self.envelope.id()
    }

    /// Which delivery this is, counting only deliveries whose handler *failed*: 1 the
    /// first time, `n + 1` after `n` failures. A message handed back at shutdown, after a
    /// cancellation or a lost connection does not use one up (it was not the message's
    /// fault). The consumer dead-letters a message once this reaches
    /// [`max_deliveries`](crate::ConsumerBuilder::max_deliveries) and the handler fails.
    pub fn delivery_count(&self) -> u32 {
        self.envelope.delivery_count()
    }

    /// Whether the broker has delivered this message before (to this or another
    /// consumer) without an ack: it was handed back, or a connection carrying it was lost.
    /// Its effect may already have happened: deduplicate by [`id`](Self::id).
    pub fn redelivered(&self) -> bool {
        self.envelope.redelivered
    }

    /// The routing key the message was published with (for a retried copy too).
    pub fn routing_key(&self) -> &str {
        self.envelope.first_routing_key()
    }

    /// The exchange the message was published to (`""` for the default exchange).
    pub fn exchange(&self) -> &str {
        self.envelope.first_exchange()
    }

    /// The message's headers (AMQP `headers` property), if any.
    pub fn headers(&self) -> Option<&FieldTable> {
        self.envelope.properties.headers().as_ref()
    }

    /// One header, by name.
    pub fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.headers()?.inner().get(name)
    }

    /// All of the message's properties (content type, correlation id, timestamp, …).
    pub fn properties(&self) -> &BasicProperties {
        &self.envelope.properties
    }

    /// The raw body, as received.
    pub fn body(&self) -> &Bytes {
        &self.envelope.body
    }
}

impl<T: fmt::Debug> fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id())
            .field("delivery_count", &self.delivery_count())
            .field("redelivered", &self.redelivered())
            .field("routing_key", &self.routing_key())
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}
