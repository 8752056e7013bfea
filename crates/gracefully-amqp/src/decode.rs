//! Decoders: how a message body becomes the handler's payload. [`Json`] (serde JSON, what
//! [`decode::<T>()`](crate::ConsumerBuilder::decode) picks), [`Raw`] (the bytes, the
//! builder's starting point) and [`DecodeFn`] (your own function).

use std::fmt;
use std::marker::PhantomData;

use bytes::Bytes;
use lapin::BasicProperties;
use serde::de::DeserializeOwned;

use crate::BoxError;

/// Turns a message body into a payload. A body it rejects is *undecodable*: the message is
/// dead-lettered at once (retrying cannot fix it) with a log line naming the message, the
/// type and the error.
///
/// Implemented by [`Json`], [`Raw`] and [`DecodeFn`]; implement it for other formats.
///
/// *Anchors:* MassTransit's serializers and NServiceBus's `IMessageSerializer`; both move
/// a message they cannot deserialize to the error queue at once, as this does.
pub trait Decode: Send + Sync + 'static {
    /// The payload type handlers receive.
    type Output: Send + 'static;

    /// Decodes one body. Runs on the message's own task, before the handler.
    fn decode(&self, body: &Bytes, properties: &BasicProperties) -> Result<Self::Output, BoxError>;

    /// What it decodes into, for log lines and errors (`JSON as my_app::Order`).
    fn describe(&self) -> String;
}

/// serde JSON into `T`: what [`decode::<T>()`](crate::ConsumerBuilder::decode) picks.
/// The content type is not checked (publishers often leave it unset).
pub struct Json<T>(PhantomData<fn() -> T>);

impl<T> Json<T> {
    pub(crate) fn new() -> Json<T> {
        Json(PhantomData)
    }
}

impl<T: DeserializeOwned + Send + 'static> Decode for Json<T> {
    type Output = T;

    fn decode(&self, body: &Bytes, _: &BasicProperties) -> Result<T, BoxError> {
        serde_json::from_slice(body).map_err(Into::into)
    }

    fn describe(&self) -> String {
        format!("JSON as {}", std::any::type_name::<T>())
    }
}

impl<T> fmt::Debug for Json<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Json<{}>", std::any::type_name::<T>())
    }
}

/// The body as it came ([`Bytes`]: cloning it copies nothing). Never fails.
#[derive(Clone, Copy, Debug, Default)]
pub struct Raw;

impl Decode for Raw {
    type Output = Bytes;

    fn decode(&self, body: &Bytes, _: &BasicProperties) -> Result<Bytes, BoxError> {
        Ok(body.clone())
    }

    fn describe(&self) -> String {
        "raw bytes".to_owned()
    }
}

/// Your own decoding function, from [`decode_with`](crate::ConsumerBuilder::decode_with).
pub struct DecodeFn<F> {
    f: F,
    name: &'static str,
}

impl<F> DecodeFn<F> {
    pub(crate) fn new(f: F, name: &'static str) -> DecodeFn<F> {
        DecodeFn { f, name }
    }
}

impl<T, E, F> Decode for DecodeFn<F>
where
    F: Fn(&Bytes, &BasicProperties) -> Result<T, E> + Send + Sync + 'static,
    T: Send + 'static,
    E: Into<BoxError>,
{
    type Output = T;

    fn decode(&self, body: &Bytes, properties: &BasicProperties) -> Result<T, BoxError> {
        (self.f)(body, properties).map_err(Into::into)
    }

    fn describe(&self) -> String {
        format!("{} (decode_with)", self.name)
    }
}

impl<F> fmt::Debug for DecodeFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DecodeFn<{}>", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Order {
        id: u64,
    }

    #[test]
    fn json_decodes_into_the_type_and_rejects_what_does_not_fit() {
        let json = Json::<Order>::new();
        let props = BasicProperties::default();
        assert_eq!(
            json.decode(&Bytes::from_static(br#"{"id":7}"#), &props)
                .unwrap(),
            Order { id: 7 }
        );
        let err = json
            .decode(&Bytes::from_static(b"not json"), &props)
            .unwrap_err();
        assert!(err.to_string().contains("expected"), "{err}");
        assert!(json.describe().ends_with("Order"), "{}", json.describe());
    }

    #[test]
    fn raw_hands_over_the_same_bytes() {
        let body = Bytes::from_static(b"\xff\x00");
        let out = Raw.decode(&body, &BasicProperties::default()).unwrap();
        assert_eq!(out.as_ptr(), body.as_ptr());
    }

    #[test]
    fn a_decode_function_sees_the_properties() {
        let d = DecodeFn::new(
            |body: &Bytes, props: &BasicProperties| -> Result<String, String> {
                match props.content_type().as_ref().map(|c| c.as_str()) {
                    Some("text/plain") => Ok(String::from_utf8_lossy(body).into_owned()),
                    other => Err(format!("unsupported content type {other:?}")),
                }
            },
            "text",
        );
        let plain = BasicProperties::default().with_content_type("text/plain".into());
        assert_eq!(d.decode(&Bytes::from_static(b"hi"), &plain).unwrap(), "hi");
        assert!(
            d.decode(&Bytes::from_static(b"hi"), &BasicProperties::default())
                .is_err()
        );
    }
}
