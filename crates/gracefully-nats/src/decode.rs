//! Payload decoders: raw bytes (the default), JSON ([`ConsumerBuilder::decode`]), or a
//! function of your own ([`ConsumerBuilder::decode_with`]).
//!
//! A payload that does not decode never reaches the handler: it is dead-lettered at once
//! (see the crate docs, "Outcomes"), so a bad message cannot crash-loop a consumer.
//!
//! [`ConsumerBuilder::decode`]: crate::ConsumerBuilder::decode
//! [`ConsumerBuilder::decode_with`]: crate::ConsumerBuilder::decode_with

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use gracefully_host::BoxError;
use serde::de::DeserializeOwned;

/// Turns a message's payload into the value the handler gets. Implemented by [`Raw`],
/// [`Json`] and [`DecodeFn`]; chosen with the builder, not named by users as a rule.
///
/// *Anchors:* MassTransit's message deserializers (a message that cannot be deserialized
/// goes to the `_error` queue, as here to the dead letter); nats.go leaves decoding to the
/// handler.
pub trait Decode: Send + Sync + 'static {
    /// What the handler's [`Message`](crate::Message) carries.
    type Output: Send + 'static;

    /// Decodes `payload`. An error dead-letters the message at once; its text goes into the
    /// log line and the dead letter's headers.
    fn decode(&self, payload: &Bytes) -> Result<Self::Output, BoxError>;
}

/// The payload as it came: [`Bytes`] (no copy). The builder's default.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Decode for Raw {
    type Output = Bytes;

    fn decode(&self, payload: &Bytes) -> Result<Bytes, BoxError> {
        Ok(payload.clone())
    }
}

/// The payload as JSON, deserialized with serde into `T`.
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Json<T> {
    pub(crate) fn new() -> Json<T> {
        Json(PhantomData)
    }
}

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

impl<T: DeserializeOwned + Send + 'static> Decode for Json<T> {
    type Output = T;

    fn decode(&self, payload: &Bytes) -> Result<T, BoxError> {
        serde_json::from_slice(payload)
            .map_err(|e| format!("not valid JSON for {}: {e}", std::any::type_name::<T>()).into())
    }
}

/// A decoder made from a function (protobuf, MessagePack, …).
pub struct DecodeFn<F>(pub(crate) F);

impl<F> fmt::Debug for DecodeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DecodeFn")
    }
}

impl<T, E, F> Decode for DecodeFn<F>
where
    F: Fn(&Bytes) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    type Output = T;

    fn decode(&self, payload: &Bytes) -> Result<T, BoxError> {
        (self.0)(payload).map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u32,
    }

    #[test]
    fn json_decodes_a_valid_payload_and_names_the_type_when_it_cannot() {
        let json = Json::<Order>::new();
        assert_eq!(
            json.decode(&Bytes::from_static(br#"{"id":7}"#)).unwrap(),
            Order { id: 7 }
        );
        let err = json
            .decode(&Bytes::from_static(b"\xff not json"))
            .unwrap_err();
        assert!(err.to_string().contains("not valid JSON for"), "{err}");
        assert!(err.to_string().contains("Order"), "{err}");
    }

    #[test]
    fn raw_hands_over_the_same_bytes() {
        let payload = Bytes::from_static(b"abc");
        let out = Raw.decode(&payload).unwrap();
        assert_eq!(out.as_ptr(), payload.as_ptr());
    }
}
