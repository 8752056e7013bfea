//! # gracefully-amqp — RabbitMQ consumers that hand back unstarted messages at once
//!
//! A [`Consumer`] is a [`gracefully_host`] service that consumes one RabbitMQ queue (AMQP
//! 0-9-1, through [`lapin`]) with a concurrency limit, gives each message's handler a
//! [`CancellationToken`](gracefully::CancellationToken), and takes part in the host's
//! three-phase shutdown so that a deploy loses nothing and delays nothing:
//!
//! * **drain**: `basic.cancel`, then every message prefetched but not started is handed
//!   back at once (`basic.nack requeue`): another consumer gets it *now*, not when this
//!   process's channel closes. In-flight handlers may finish; their messages are acked.
//! * **cancel** (the host's hard stop): the in-flight tokens fire with `Shutdown`; a
//!   handler that returns its cancellation has its message handed back at once, without
//!   using up a delivery.
//! * **abort**: handlers still running are dropped and counted; the broker requeues their
//!   messages when the connection closes.
//!
//! A lost connection fires the in-flight tokens with `Disconnected` (their acks can no
//! longer reach the broker, which redelivers the messages) and the consumer reconnects with
//! backoff. Plain lapin has none of this: dropping its consumer sends `basic.cancel` but
//! the prefetched messages stay with the closing process until its channel closes, nothing
//! counts what was in flight, and a handler never hears that the connection is gone.
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully::CancellationToken;
//! use gracefully_amqp::{Backoff, Consumer, Message};
//! use gracefully_host::Host;
//!
//! #[derive(serde::Deserialize)]
//! struct Payment { account: String, cents: i64 }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let payments = Consumer::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "payments")
//!     .declare()
//!     .concurrency(8)                 // prefetch 16 unless set
//!     .max_deliveries(5)              // then to `payments.dead`, with the error in headers
//!     .retry_backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30)))
//!     .decode::<Payment>()            // JSON; undecodable bodies are dead-lettered at once
//!     .build(|message: Message<Payment>, token: CancellationToken| async move {
//!         let payment = message.payload();
//!         // Stops when the token fires: the message goes back to the queue, unharmed.
//!         token.run_until_cancelled(apply(&payment.account, payment.cents)).await??;
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     })?;
//! Host::builder().service("payments", payments).build()?.run_and_exit().await
//! # }
//! # async fn apply(_: &str, _: i64) -> Result<(), std::io::Error> { Ok(()) }
//! ```
//!
//! ## Delivery is at-least-once
//!
//! A message is acked only after its handler succeeded, so it is never lost — and may be
//! handled more than once: the process can die (or lose its connection) after the effect
//! and before the ack reaches the broker, and the broker then delivers the message again.
//! No broker setting removes this. What can be exactly once is the *effect*:
//!
//! **Recipe: deduplicate by message id in the same transaction as the effect.** Publish
//! with a `message-id`; in the handler, insert the id into a table with a unique key and
//! apply the effect in one transaction, skipping the effect when the id is already there.
//! With `gracefully-sqlx` the transaction is cancelled on the server when the token fires
//! and commits only if the body succeeded:
//!
//! ```no_run
//! # use gracefully::CancellationToken;
//! # use gracefully_amqp::{Bytes, Message};
//! # async fn handle(pool: gracefully_sqlx::PgGracefulPool, message: Message<Bytes>, token: CancellationToken)
//! # -> Result<(), gracefully_sqlx::Error> {
//! let id = message.id().expect("publishers set message-id").to_owned();
//! pool.transaction(&token, |tx, _token| Box::pin(async move {
//!     let first = sqlx::query("INSERT INTO processed (message_id) VALUES ($1) ON CONFLICT DO NOTHING")
//!         .bind(id)
//!         .execute(&mut **tx)
//!         .await?
//!         .rows_affected() == 1;
//!     if first {
//!         sqlx::query("UPDATE accounts SET balance = balance + 1").execute(&mut **tx).await?;
//!     }
//!     Ok::<_, gracefully_sqlx::Error>(())
//! }))
//! .await
//! # }
//! ```
//!
//! The `effects` example is this recipe as a program; `tests/processes.rs` runs two of
//! them on 1,000 messages, kills one mid-run (SIGTERM, then SIGKILL), and checks every
//! effect happened exactly once.
//!
//! ## What happens to a message
//!
//! | the handler… | the consumer… | report row |
//! |---|---|---|
//! | returns `Ok` | acks | handled |
//! | was never started (drain) | `basic.nack requeue` at once | handed back at drain |
//! | returns an error that [`is_cancellation`](gracefully::is_cancellation), after its token fired | `basic.nack requeue` at once; no delivery used up | cancelled and handed back |
//! | fails (any other error, a cancellation of its own such as a timeout inside it, a panic) | publishes a copy to the retry queue, then acks; after `max_deliveries`, to the dead-letter target | retried / dead-lettered |
//! | cannot get the body decoded | dead-letters at once, logs the message, the type and the error | dead-lettered |
//! | is running when the connection is lost | token fires (`Disconnected`); nothing can be sent; the broker redelivers | in flight at disconnect |
//! | is running at abort | drops it; the broker requeues when the connection closes | in flight at abort |
//!
//! Cancellation is told apart from failure the way NServiceBus does it: an error counts as
//! a cancellation only if the handler's token fired *and* the error says so. MassTransit
//! cancels its `ConsumeContext.CancellationToken` at its stop timeout but neither it nor
//! NServiceBus hands unstarted messages back early.
//!
//! ## Retries
//!
//! RabbitMQ has no delayed `basic.nack`. A failed message is retried through a *retry
//! queue*: a copy (same body, properties and `message-id`, with `x-gracefully-failures`
//! and `x-gracefully-error` set) is published, with publisher confirms, to
//! `<queue>.retry.<ms>ms`, a durable queue with that TTL (`x-message-ttl`) that
//! dead-letters expired messages back to `<queue>` through the default exchange. Only once
//! the copy is confirmed is the original acked, so a crash in between makes a duplicate,
//! never a loss. There is one retry queue per distinct delay: every message in it has the
//! same TTL, so none waits behind a longer one (RabbitMQ expires only at a queue's head —
//! the reason per-message TTLs in one shared retry queue do not work).
//!
//! Why not the alternatives: the delayed-message-exchange plugin is not installed
//! everywhere and keeps its messages on one node; quorum queues' `delivery-limit` and
//! `x-delivery-count` count *every* return, so a message handed back at a shutdown would
//! use up a delivery (the contract says it must not), and they give no delay; a
//! `basic.nack requeue` after sleeping in the handler's slot holds the message and the
//! slot for the whole backoff. The retry queues are declared at start (the consumer needs
//! the right to declare them).
//!
//! ## Queues
//!
//! At start (and at every reconnect) the consumer checks that its queue exists — or, with
//! [`ConsumerBuilder::declare`], declares it (durable) — binds it as configured (the
//! exchanges must exist), declares its retry queues and the dead-letter queue, and sets
//! the prefetch. A missing queue or exchange fails the start with an [`Error`] naming it;
//! a bad URL fails [`ConsumerBuilder::build`] with a [`ConfigError`]; an unreachable broker
//! fails the start with the URL (password removed) and the cause.
//!
//! ## Limits
//!
//! * AMQP has no "still working" signal: a handler that runs longer than the broker's
//!   `consumer_timeout` (30 min by default) has its channel closed by the broker, which
//!   redelivers its messages. Raise `consumer_timeout` for such handlers.
//! * Deliveries of one consumer are not ordered once `concurrency` > 1, and retries reorder
//!   a failed message behind later ones.
//! * TLS (`amqps://`) needs the `rustls` feature.
//!
//! ## Coming from .NET, Go or lapin
//!
//! | here | MassTransit / NServiceBus | Go amqp091 | lapin |
//! |---|---|---|---|
//! | [`Consumer`] (a host service) | receive endpoint / endpoint | `Channel.Consume` loop | `Channel::basic_consume` stream |
//! | [`concurrency`](ConsumerBuilder::concurrency), [`prefetch`](ConsumerBuilder::prefetch) | `ConcurrentMessageLimit`, `PrefetchCount` | `Qos` + goroutines | `basic_qos` + your tasks |
//! | handler token | `ConsumeContext.CancellationToken` / `context.CancellationToken` | a `context.Context` you wire | — |
//! | [`max_deliveries`](ConsumerBuilder::max_deliveries), [`Backoff`] | `UseMessageRetry` + `UseDelayedRedelivery` / recoverability | — | — |
//! | [`DeadLetter`] | `_error` queue / `error` queue | — | — |
//! | [`ConsumerStats`], the report row | — | — | — |

#![warn(missing_docs)]
// No unsafe code: the crate is lapin, tokio and the gracefully core put together.
#![forbid(unsafe_code)]

mod builder;
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

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use builder::ConsumerBuilder;
pub use consumer::Consumer;
pub use decode::{Decode, DecodeFn, Json, Raw};
pub use error::{ConfigError, Error};
pub use gracefully_host::BoxError;
pub use message::Message;
pub use retry::{Backoff, DeadLetter};
pub use stats::ConsumerStats;

/// The body type of raw messages.
pub use bytes::Bytes;
/// The lapin crate this one is built on, for the types in its API (`BasicProperties`,
/// `FieldTable`, `AMQPValue`) and for publishing.
pub use lapin;
