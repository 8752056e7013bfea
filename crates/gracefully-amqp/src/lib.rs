//! # gracefully-amqp — RabbitMQ consumers that hand back unstarted messages at once
//!
//! (Docs in progress.)

#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod config;
mod consumer;
mod decode;
mod error;
mod handler;
mod headers;
mod message;
mod retry;
mod session;
mod settle;
mod stats;

pub use config::ConsumerBuilder;
pub use consumer::Consumer;
pub use decode::{Decode, DecodeFn, Json, Raw};
pub use error::{ConfigError, Error};
pub use gracefully_host::BoxError;
pub use message::Message;
pub use retry::{Backoff, DeadLetter};
pub use stats::ConsumerStats;

/// The lapin crate this one is built on, for the types that appear in its API
/// (`BasicProperties`, `FieldTable`, `AMQPValue`) and for publishing.
pub use lapin;
/// The body type of raw messages.
pub use bytes::Bytes;
