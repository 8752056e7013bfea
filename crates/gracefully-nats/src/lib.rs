//! # gracefully-nats — JetStream consumers that hand back unstarted messages at once
//!
//! A [`Consumer`] is a NATS JetStream pull consumer that runs as a
//! [`gracefully_host`] service and keeps the host's shutdown contract
//! (`docs/architecture.md`, "The shutdown contract"):
//!
//! | phase | what the consumer does |
//! |---|---|
//! | drain (`stopping` fires) | stops pulling; every message fetched but not started — and those still arriving from its open pull requests — is handed back (`-NAK`) as soon as those requests have ended (at once on a busy stream, after 20 ms of quiet on an idle one, 200 ms at most, so they are not delivered straight back to it): another consumer gets them now, not after AckWait; in-flight handlers may finish and are acked |
//! | cancel (hard stop fires) | the handlers' tokens fire (`Shutdown`); a handler that returns `Cancelled` has its message handed back at once |
//! | abort | what still runs is dropped; its messages are handed back if the connection takes it at once, and counted as in flight at abort |
//!
//! ```no_run
//! use std::time::Duration;
//! use gracefully::CancellationToken;
//! use gracefully_host::Host;
//! use gracefully_nats::{Consumer, Message};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: u64, item: String }
//!
//! async fn bill(order: Message<Order>, token: CancellationToken) -> Result<(), std::io::Error> {
//!     // Pass the token to what the work awaits; return its `Cancelled` when it fires.
//!     let _ = (order.payload().id, token);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() {
//!     let billing = Consumer::builder("nats://127.0.0.1:4222")
//!         .stream("ORDERS")              // must exist (or .create_stream(config))
//!         .consumer("billing")           // durable pull consumer, created if missing
//!         .concurrency(32)               // handlers at once; prefetch 32 more
//!         .max_deliveries(5)             // then dead-lettered
//!         .dead_letter("orders.dead")
//!         .decode::<Order>()             // JSON; undecodable → dead-lettered at once
//!         .handler(bill)
//!         .build()
//!         .expect("valid configuration");
//!     Host::builder()
//!         .shutdown_timeout(Duration::from_secs(30))
//!         .service("billing", billing)
//!         .build()
//!         .expect("valid configuration")
//!         .run_and_exit()
//!         .await
//! }
//! ```
//!
//! ## Outcomes
//!
//! Every delivery ends one way, decided by the handler's result — the handler never acks:
//!
//! | the handler… | the message is… | report key |
//! |---|---|---|
//! | returns `Ok(())` | acked (only now: ack after success) | `handled` |
//! | returns an error that [is a cancellation](gracefully::is_cancellation), after its token fired | handed back at once (`-NAK`, no delay) | `cancelled and handed back` |
//! | returns any other error, or panics | handed back with a delay from the [`Backoff`] (`-NAK {"delay": …}`) | `retried` |
//! | fails on delivery `max_deliveries` | dead-lettered: published to the dead-letter subject with the error in its headers, then terminated (`+TERM`) | `dead-lettered` |
//! | — the payload does not decode | dead-lettered at once, with an error log line naming stream, sequence, subject and the decoder's error; the handler never sees it | `dead-lettered` |
//!
//! A cancellation that the handler's *own* deadline caused (its token did not fire) counts
//! as a failure, so that a message that always times out backs off instead of coming back
//! at once for ever. JetStream counts deliveries, not failures: a delivery handed back at a
//! shutdown or lost to a broken connection counts toward `max_deliveries` too, so leave
//! headroom. For the same reason a consumer's own JetStream `max_deliver`, if finite, must
//! be *greater* than `max_deliveries` (the start step refuses it otherwise): JetStream
//! stops delivering at `max_deliver`, so a message handed back on that delivery would be
//! stranded — never delivered again, never dead-lettered. A message that still gets there
//! (handed back at shutdown after shutdown) is named in a warning when it is handed back.
//!
//! A dead letter carries the original payload and headers, plus `Gracefully-Error` (the
//! error, at most 1 KiB), `Gracefully-Stream`, `Gracefully-Consumer`, `Gracefully-Subject`,
//! `Gracefully-Stream-Sequence`, `Gracefully-Deliveries`, and a `Nats-Msg-Id` of
//! `dead:<stream>:<sequence>` (the original's, if any, moves to
//! `Gracefully-Original-Msg-Id`) so dead-lettering twice stores one copy. It is terminated
//! in its own stream only once the dead-letter stream has stored it; if that fails, it is
//! handed back with a backoff instead, never lost.
//!
//! ## Tokens, progress and the connection
//!
//! Each handler's token is a child of the host's hard stop. While a handler runs — and
//! while a fetched message waits for a free slot — the consumer signals progress (`+WPI`)
//! every quarter AckWait, so a handler slower than AckWait is not redelivered under it;
//! and only while the token lives: once it fired, a handler that ignores it no longer
//! keeps its message, which JetStream redelivers after AckWait.
//!
//! A lost connection fires the in-flight handlers' tokens with
//! [`ReasonKind::Disconnected`](gracefully::ReasonKind::Disconnected) (their progress
//! cannot reach the broker, and their messages may be delivered again), and pulls again
//! once async-nats has reconnected (at once, then with a backoff doubling to 4 s). Nothing
//! is queued in the client while the connection is down — async-nats does not read its
//! command channel (2048 places) while it reconnects, and a consumer waiting for room there
//! could not hear its stop. The hand-backs of the unstarted messages and of the cancelled
//! handlers are kept and sent once the client reports it reconnected; if the consumer stops
//! first, they are counted `left for AckWait` (never as handed back), and JetStream
//! redelivers them after AckWait. Acks of handlers that finish meanwhile are not sent
//! either: their messages come back after AckWait.
//!
//! ## At-least-once delivery, and exactly-once effects
//!
//! **Delivery is at-least-once.** A message is acked only after its handler succeeded,
//! but the ack can be lost (a crash, a broken connection after the handler's effect and
//! before the ack reached the server), and then the message is delivered again. The
//! contract above makes duplicates rare and waits short; it cannot make them impossible.
//! For effects that must happen exactly once, record the message's [`id`](Message::id) in
//! the same database transaction as the effect, and skip the effect if the id is already
//! there. With `gracefully-sqlx`, whose transaction commits only if the body succeeded and
//! the token did not fire:
//!
//! ```no_run
//! use gracefully::CancellationToken;
//! use gracefully_nats::Message;
//! use gracefully_sqlx::{Error, PgGracefulPool};
//!
//! #[derive(serde::Deserialize)]
//! struct Payment { account: i64, cents: i64 }
//!
//! // CREATE TABLE processed_messages (id text PRIMARY KEY);
//! async fn pay(pool: &PgGracefulPool, msg: Message<Payment>, token: CancellationToken) -> Result<(), Error> {
//!     let id = msg.id().to_owned();
//!     let Payment { account, cents } = *msg.payload();
//!     pool.transaction(&token, move |tx, _token| Box::pin(async move {
//!         let first = sqlx::query("INSERT INTO processed_messages (id) VALUES ($1) ON CONFLICT DO NOTHING")
//!             .bind(&id)
//!             .execute(&mut **tx)
//!             .await?
//!             .rows_affected() == 1;
//!         if first { // the effect, in the same transaction as the id
//!             sqlx::query("UPDATE accounts SET balance = balance + $2 WHERE id = $1")
//!                 .bind(account)
//!                 .bind(cents)
//!                 .execute(&mut **tx)
//!                 .await?;
//!         }
//!         Ok::<_, Error>(())
//!     }))
//!     .await
//! }
//! ```
//!
//! A duplicate then finds its id and changes nothing; a handler cancelled mid-transaction
//! rolls back and returns `Cancelled`, so its message is handed back and redone elsewhere.
//!
//! ## Concurrency and prefetch
//!
//! At most [`concurrency`](ConsumerBuilder::concurrency) handlers run at once, as futures
//! polled by the consumer's own task (like `StreamExt::for_each_concurrent`): no task is
//! spawned per message, which keeps the consumer as fast as a hand-written async-nats
//! loop. A handler that needs a CPU core of its own should `tokio::spawn` (or
//! `spawn_blocking`) that work and await it; a handler that blocks the thread stalls the
//! other handlers and the progress signals. The consumer fetches up to
//! [`prefetch`](ConsumerBuilder::prefetch) messages (default: the concurrency) beyond those
//! running, in pull requests of at least half of concurrency + prefetch; these are
//! the messages a drain hands back.
//!
//! ## Start-up errors
//!
//! The start step connects and binds; it fails — stopping the host with a clear error — if
//! the URL is bad ([`Error::Config`] at `build`), the server cannot be reached
//! ([`Error::Connect`], naming the URL with its password redacted), JetStream is off
//! ([`Error::JetStreamUnavailable`]), the stream does not exist and was not to be created
//! ([`Error::StreamNotFound`], naming it and how to create it), the consumer exists but is a
//! push consumer, does not ack explicitly, or has a `max_deliver` not greater than
//! `max_deliveries` ([`Error::ConsumerMismatch`]), or no stream
//! captures the dead-letter subject ([`Error::DeadLetterNotCaptured`]).
//!
//! ## Coming from .NET, Go or async-nats
//!
//! | here | .NET | Go (nats.go) | async-nats |
//! |---|---|---|---|
//! | [`Consumer`] as a host service | MassTransit receive endpoint / `BackgroundService` | `consumer.Consume(handler)` | `consumer.messages()` loop |
//! | drain hands back unstarted messages | — (nats.net: drain options since #1085) | `ConsumeContext.Drain()` (no wait for handlers) | — (dropped: AckWait) |
//! | handler token ([`Shutdown`](gracefully::ReasonKind::Shutdown), [`Disconnected`](gracefully::ReasonKind::Disconnected)) | `ConsumeContext.CancellationToken` | — | — |
//! | progress while the token lives | — | `msg.InProgress()` by hand | `AckKind::Progress` by hand |
//! | [`Backoff`], [`max_deliveries`](ConsumerBuilder::max_deliveries), dead letter | `UseMessageRetry`, `_error` queue | `NakWithDelay`, `MaxDeliver` | `AckKind::Nak(Some(d))` |
//! | [`Message::id`] for dedupe | `MessageId` | `Nats-Msg-Id` header | — |

#![warn(missing_docs)]
// No unsafe code: everything here is built on async-nats, tokio and the gracefully crates.
#![forbid(unsafe_code)]

mod backoff;
mod builder;
mod consumer;
mod counts;
mod decode;
mod error;
mod handler;
mod message;
mod pulls;
mod session;
mod settings;
mod settle;
mod setup;
mod status;

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

pub use backoff::Backoff;
pub use builder::{ConsumerBuilder, NoHandler};
pub use consumer::Consumer;
pub use decode::{Decode, DecodeFn, Json, Raw};
pub use error::Error;
pub use handler::Handler;
pub use message::Message;
