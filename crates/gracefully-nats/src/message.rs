//! [`Message`]: what a handler gets — the decoded payload and the delivery's metadata —
//! and the parsing of JetStream's ack subject, where that metadata travels.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use async_nats::HeaderMap;
use async_nats::Subject;
use bytes::Bytes;

/// The header a publisher sets to name a message (JetStream deduplicates publishes by it).
pub(crate) const MSG_ID_HEADER: &str = "Nats-Msg-Id";

/// One delivery of a JetStream message, handed to the handler with its decoded payload.
///
/// ```no_run
/// use gracefully::CancellationToken;
/// use gracefully_nats::Message;
///
/// #[derive(serde::Deserialize)]
/// struct Order { item: String }
///
/// async fn handle(msg: Message<Order>, token: CancellationToken) -> Result<(), std::io::Error> {
///     tracing::info!(
///         id = msg.id(),                       // Nats-Msg-Id, or "STREAM:sequence"
///         delivery = msg.delivery_count(),     // 1 on the first delivery
///         subject = msg.subject(),
///         item = %msg.payload().item,
///         "handling"
///     );
///     Ok(())
/// }
/// ```
///
/// *Anchors:* async-nats's `jetstream::Message` with its `info()`; MassTransit's
/// `ConsumeContext<T>` (`Message`, `MessageId`, `GetRedeliveryCount()`). Unlike both, acking
/// is not the handler's job: the consumer acks, hands back or dead-letters by the handler's
/// outcome.
pub struct Message<T> {
    payload: T,
    subject: Subject,
    headers: Option<HeaderMap>,
    bytes: Bytes,
    stream: Arc<str>,
    delivery: Delivery,
    id: OnceLock<String>,
}

impl<T> Message<T> {
    pub(crate) fn new(
        payload: T,
        raw: async_nats::Message,
        stream: Arc<str>,
        delivery: Delivery,
    ) -> Message<T> {
        Message {
            payload,
            subject: raw.subject,
            headers: raw.headers,
            bytes: raw.payload,
            stream,
            delivery,
            id: OnceLock::new(),
        }
    }

    /// The decoded payload.
    pub fn payload(&self) -> &T {
        &self.payload
    }

    /// The decoded payload, mutably.
    pub fn payload_mut(&mut self) -> &mut T {
        &mut self.payload
    }

    /// The decoded payload, taking the message apart.
    pub fn into_payload(self) -> T {
        self.payload
    }

    /// A stable identity for deduplication: the publisher's `Nats-Msg-Id` header if it set
    /// one, else `"<stream>:<stream sequence>"`. The same on every redelivery of this
    /// message, to any consumer — use it as the key of the exactly-once-effects recipe
    /// (crate docs, "At-least-once delivery, and exactly-once effects").
    pub fn id(&self) -> &str {
        self.id.get_or_init(
            || match self.headers.as_ref().and_then(|h| h.get(MSG_ID_HEADER)) {
                Some(id) if !id.as_str().is_empty() => id.as_str().to_owned(),
                _ => format!("{}:{}", self.stream, self.delivery.stream_sequence),
            },
        )
    }

    /// How many times JetStream has delivered this message, this delivery included (1 the
    /// first time). Deliveries handed back at a shutdown or lost to a broken connection
    /// count too.
    pub fn delivery_count(&self) -> u64 {
        self.delivery.delivered
    }

    /// The subject it was published to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Its headers, if it has any.
    pub fn headers(&self) -> Option<&HeaderMap> {
        self.headers.as_ref()
    }

    /// The stream it is stored in.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Its sequence number in the stream (unique within the stream, never reused).
    pub fn stream_sequence(&self) -> u64 {
        self.delivery.stream_sequence
    }

    /// When it was stored in the stream.
    pub fn published(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_nanos(self.delivery.published_nanos)
    }

    /// The payload as it came, before decoding.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl<T: fmt::Debug> fmt::Debug for Message<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id())
            .field("subject", &self.subject())
            .field("delivery_count", &self.delivery_count())
            .field("payload", &self.payload)
            .finish_non_exhaustive()
    }
}

/// What JetStream's ack subject says about a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Delivery {
    /// Deliveries so far, this one included.
    pub(crate) delivered: u64,
    pub(crate) stream_sequence: u64,
    /// Nanoseconds since the Unix epoch when the message was stored.
    pub(crate) published_nanos: u64,
}

impl Delivery {
    /// Parses a JetStream ack subject (the reply subject of a delivered message):
    ///
    /// ```text
    /// v1: $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
    /// v2: $JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>.<token>
    /// ```
    ///
    /// `None` if `reply` is not one: the message was not delivered by a JetStream consumer.
    pub(crate) fn parse(reply: &str) -> Option<Delivery> {
        let mut tokens = [""; 12];
        let mut n = 0;
        for token in reply.split('.') {
            if n == tokens.len() {
                return None;
            }
            tokens[n] = token;
            n += 1;
        }
        if tokens[0] != "$JS" || tokens[1] != "ACK" {
            return None;
        }
        let numbers = match n {
            9 => &tokens[4..9],
            11 | 12 => &tokens[6..11],
            _ => return None,
        };
        Some(Delivery {
            delivered: numbers[0].parse().ok()?,
            stream_sequence: numbers[1].parse().ok()?,
            published_nanos: numbers[3].parse().ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_ack_subject_formats_and_rejects_anything_else() {
        let v1 = Delivery::parse("$JS.ACK.ORDERS.billing.3.1042.17.1700000000000000000.5").unwrap();
        assert_eq!(
            v1,
            Delivery {
                delivered: 3,
                stream_sequence: 1042,
                published_nanos: 1_700_000_000_000_000_000
            }
        );
        let v2 =
            Delivery::parse("$JS.ACK.hub.ACCHASH.ORDERS.billing.1.7.7.1700000000000000001.0.xyz")
                .unwrap();
        assert_eq!((v2.delivered, v2.stream_sequence), (1, 7));
        for bad in [
            "_INBOX.abc",
            "$JS.ACK.ORDERS.billing.x.1.1.1.1",
            "$JS.ACK.too.short",
            "$JS.API.CONSUMER.MSG.NEXT.S.C.1.2.3",
            "$JS.ACK.a.b.1.2.3.4.5.6.7.8.9.10",
        ] {
            assert_eq!(Delivery::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn id_is_the_publishers_msg_id_or_stream_and_sequence() {
        let delivery = Delivery::parse("$JS.ACK.S.c.1.42.42.0.0").unwrap();
        let raw = |headers: Option<HeaderMap>| async_nats::Message {
            subject: "s.x".into(),
            reply: None,
            payload: Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        };
        let plain = Message::new((), raw(None), Arc::from("S"), delivery);
        assert_eq!(plain.id(), "S:42");
        let mut headers = HeaderMap::new();
        headers.insert(MSG_ID_HEADER, "order-7");
        let named = Message::new((), raw(Some(headers)), Arc::from("S"), delivery);
        assert_eq!(named.id(), "order-7");
    }
}
