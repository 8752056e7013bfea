//! [`Consumer`]: the host service — connect, consume within the concurrency limit, and
//! the shutdown steps of `docs/architecture.md`, "The shutdown contract": at drain
//! `basic.cancel` and hand back what was prefetched but not started; in-flight handlers may
//! finish; at hard stop their tokens fire; at abort they are dropped and counted.
//!
//! ```text
//! start ─► Session::open ─► execute: ┌────────── consume ◄──────────┐
//!                                    │ slot free? take a delivery,  │ lost: tokens fire
//!                                    │ spawn its handler + settle   │ (Disconnected),
//!                                    └─┬───────────────┬────────────┘ reconnect w/ backoff
//!                              stopping│               └─► Session lost ─┘
//!                                      ▼
//!             drain: basic.cancel, nack(requeue) every unstarted delivery
//!                      ▼
//!             wait for in-flight handlers (hard stop fires their tokens) ─► close
//! ```
//!
//! Invariants (cited below by number):
//!
//! 1. A delivery leaves lapin's buffer only once a concurrency slot is held for it, and then
//!    its handler starts at once. So every delivery still in the buffer at drain was never
//!    started, and handing all of them back never hands back work in progress.
//! 2. A message is acked only by its own task, after its handler returned `Ok` or after its
//!    retry or dead-letter copy was confirmed; nothing else acks. So no message is acked
//!    unhandled, and an ack lost with the connection means a redelivery, never a loss.
//! 3. Every handler token descends from its session's token, which descends from the hard
//!    stop: hard stop fires them all with `Shutdown`, a lost session with `Disconnected`.
//! 4. The in-flight count goes up before a task is spawned and down when it ends or is
//!    dropped; `Run::drop` reads it before dropping (aborting) the tasks, so at abort it is
//!    the number of handlers that were still running.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use gracefully::operation::{Operation, OperationKind, OperationScope};
use gracefully::{CancellationToken, Reason};
use gracefully_host::{BackgroundService, ServiceContext};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use crate::BoxError;
use crate::builder::ConsumerBuilder;
use crate::config::Config;
use crate::decode::Raw;
use crate::handler::{Dispatch, Outcome};
use crate::message::Envelope;
use crate::session::Session;
use crate::settle::Settle;
use crate::stats::ConsumerStats;

/// How long the drain waits for the broker to confirm `basic.cancel` and for the
/// prefetched messages to be handed back. Past it, what is left goes back to the queue
/// when the connection closes.
const HAND_BACK_LIMIT: Duration = Duration::from_secs(5);

/// A RabbitMQ consumer run as a [`gracefully_host`] service: messages from one queue,
/// handled concurrently by your `async fn(Message<T>, CancellationToken)`, with the
/// shutdown contract of the crate docs (unstarted messages handed back at once, in-flight
/// ones finished or cancelled and handed back, nothing lost).
///
/// ```no_run
/// use gracefully::CancellationToken;
/// use gracefully_amqp::{Consumer, Message};
/// use gracefully_host::Host;
///
/// #[derive(serde::Deserialize)]
/// struct Order { id: u64 }
///
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let orders = Consumer::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "orders")
///     .declare()          // create the queue if it is missing
///     .concurrency(8)     // 8 handlers at once; prefetch 16
///     .max_deliveries(5)  // then dead-lettered to `orders.dead`
///     .decode::<Order>()  // JSON
///     .build(|message: Message<Order>, token: CancellationToken| async move {
///         // token: a child of the host's hard stop; also fires if the connection is lost
///         token.run_until_cancelled(charge(message.payload().id)).await?;
///         Ok::<_, gracefully::Cancelled>(())
///     })?;
/// let stats = orders.stats();
/// let host = Host::builder().service("orders", orders).build()?;
/// let report = host.run().await; // SIGTERM → drain → cancel → abort → report
/// println!("{report}\nhandled {}", stats.handled());
/// # Ok(()) }
/// # async fn charge(_: u64) {}
/// ```
///
/// # Lifecycle
///
/// * **start** (the host's start step): connect, check or declare the queue, bind it,
///   declare the retry queues and the dead-letter queue, set the prefetch. A bad URL, an
///   unreachable broker, a missing queue or exchange fail here with an [`Error`](crate::Error)
///   that names them, and the host does not start.
/// * **execute**: consume; each delivery, when a concurrency slot is free, gets its own task
///   and token and is [settled](crate#what-happens-to-a-message) when its handler returns.
///   A lost connection fires the in-flight tokens with `Disconnected` and reconnects with
///   backoff; a reconnect that finds the setup impossible (queue deleted) ends `execute`
///   with that error.
/// * **drain** (`stopping`): `basic.cancel`, then every delivery prefetched but not started
///   is handed back (`basic.nack requeue`) at once; in-flight handlers continue.
/// * **cancel** (hard stop): in-flight tokens fire with `Shutdown`; a handler that returns
///   its cancellation has its message handed back.
/// * **abort**: handlers still running are dropped and counted; the broker requeues their
///   messages when the connection closes.
///
/// *Anchors:* MassTransit's receive endpoint and NServiceBus's endpoint (a hosted service
/// with a concurrency limit; neither hands back prefetched messages at stop, MassTransit
/// cancels `ConsumeContext.CancellationToken` after its stop timeout); lapin's `Consumer`
/// stream (no drain step, no count of in-flight messages, prefetched messages dropped);
/// Go's amqp091 `Channel.Consume` + `Cancel`.
pub struct Consumer {
    shared: Arc<Shared>,
    /// Opened by the start step, taken by `execute`.
    session: Option<Arc<Session>>,
}

/// What the consumer's tasks share.
struct Shared {
    config: Arc<Config>,
    dispatch: Arc<dyn Dispatch>,
    stats: ConsumerStats,
}

impl Consumer {
    /// Starts a builder for a consumer of `queue` on the broker at `url`
    /// (`amqp://user:password@host:5672/vhost`, the vhost `/` written `%2f`).
    pub fn builder(url: impl Into<String>, queue: impl Into<String>) -> ConsumerBuilder<Raw> {
        ConsumerBuilder::new(url.into(), queue.into())
    }

    pub(crate) fn new(config: Arc<Config>, dispatch: Arc<dyn Dispatch>) -> Consumer {
        Consumer {
            shared: Arc::new(Shared {
                config,
                dispatch,
                stats: ConsumerStats::default(),
            }),
            session: None,
        }
    }

    /// The consumer's counts, live (see [`ConsumerStats`]).
    pub fn stats(&self) -> ConsumerStats {
        self.shared.stats.clone()
    }

    /// The queue it consumes.
    pub fn queue(&self) -> &str {
        &self.shared.config.queue
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &Config {
        &self.shared.config
    }
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.shared.config;
        f.debug_struct("Consumer")
            .field("url", &config.url_display)
            .field("queue", &config.queue)
            .field("concurrency", &config.concurrency)
            .field("prefetch", &config.prefetch)
            .field("decode", &self.shared.dispatch.describe())
            .finish_non_exhaustive()
    }
}

impl BackgroundService for Consumer {
    fn start(&mut self, cx: &ServiceContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        let hard_stop = cx.hard_stop();
        async move {
            let config = &self.shared.config;
            let session = Session::open(config, &hard_stop).await?;
            tracing::info!(
                queue = %config.queue,
                url = %config.url_display,
                concurrency = config.concurrency,
                prefetch = config.prefetch,
                "consumer connected"
            );
            let session = Arc::new(session);
            crate::session::watch(&session, self.shared.stats.clone());
            self.session = Some(session);
            Ok(())
        }
    }

    fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> impl Future<Output = Result<(), BoxError>> + Send {
        let mut run = Run::new(Arc::clone(&self.shared), cx.clone());
        let mut session = self.session.take();
        async move {
            loop {
                let current = match session.take() {
                    Some(current) => current,
                    None => match run.reconnect(&stopping).await? {
                        Some(current) => current,
                        None => break, // stopping while disconnected: nothing to drain
                    },
                };
                if run.consume(&current, &stopping).await {
                    run.finish_in_flight().await;
                    current.close().await;
                    return Ok(());
                }
                // Lost: the in-flight tokens fired; make sure the broker takes the
                // messages back even if only the channel (not the socket) failed.
                current.close_after_loss().await;
            }
            run.finish_in_flight().await;
            Ok(())
        }
    }

    fn stop(&mut self, _cx: &ServiceContext) -> impl Future<Output = Result<(), BoxError>> + Send {
        let session = self.session.take();
        async move {
            // Only if `execute` never ran: it closes its own sessions.
            if let Some(session) = session {
                session.close().await;
            }
            Ok(())
        }
    }
}

/// One run of `execute`: the in-flight tasks and the concurrency slots. Dropping it —
/// at the end, or when the host aborts the service — writes the counts into the report
/// row, and counts the handlers still running then as in flight at abort.
struct Run {
    shared: Arc<Shared>,
    cx: ServiceContext,
    in_flight: JoinSet<()>,
    slots: Arc<Semaphore>,
    reconnect_attempts: u32,
}

impl Run {
    fn new(shared: Arc<Shared>, cx: ServiceContext) -> Run {
        let slots = Arc::new(Semaphore::new(shared.config.concurrency));
        Run {
            shared,
            cx,
            in_flight: JoinSet::new(),
            slots,
            reconnect_attempts: 0,
        }
    }

    fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Consumes on `session` until `stopping` fires (then drains; returns `true`) or the
    /// session is lost (returns `false`).
    async fn consume(&mut self, session: &Arc<Session>, stopping: &CancellationToken) -> bool {
        let consumer = session
            .channel
            .basic_consume(
                ShortString::from(self.config().queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await;
        let mut consumer = match consumer {
            Ok(consumer) => consumer,
            Err(error) => {
                self.lost(session, format!("basic.consume failed: {error}"));
                return false;
            }
        };
        let mut stop = pin!(stopping.cancelled());
        // Marked lost by the connection watch (`session::watch`): while every slot is held,
        // this loop reads no delivery, so the error on the delivery stream would wait.
        let lost = session.lost_token();
        let mut lost = pin!(lost.cancelled());
        loop {
            self.reap();
            // A slot first, then a delivery (invariant 1).
            let permit = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = &mut lost => return false,
                permit = Arc::clone(&self.slots).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => unreachable!("the semaphore is never closed"),
                },
            };
            let next = tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = &mut lost => return false,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => self.spawn(session, delivery, permit),
                Some(Err(error)) => {
                    self.lost(session, format!("the broker connection failed: {error}"));
                    return false;
                }
                None => {
                    self.lost(
                        session,
                        "the broker cancelled the consumer (was the queue deleted?)".to_owned(),
                    );
                    return false;
                }
            }
        }
        self.hand_back(session, consumer).await;
        true
    }

    /// Runs one delivery's handler and settles it, on a task of its own holding `permit`.
    fn spawn(&mut self, session: &Arc<Session>, delivery: Delivery, permit: OwnedSemaphorePermit) {
        let shared = Arc::clone(&self.shared);
        let session = Arc::clone(session);
        ConsumerStats::add(&shared.stats.counters().in_flight, 1);
        // The consumer's service operation (the host polls `execute` in its scope): each
        // message's operation runs under it, though on a task of its own.
        let scope = OperationScope::current();
        self.in_flight.spawn(async move {
            let _permit = permit;
            let _done = InFlight(&shared.stats);
            let source = session.handler_token(); // invariant 3
            let token = source.token();
            let op = match &scope {
                Some(scope) => scope.begin(
                    OperationKind::Message,
                    &shared.config.queue,
                    token.deadline(),
                ),
                None => Operation::none(),
            };
            let (envelope, acker) = Envelope::from_delivery(delivery);
            let envelope = Arc::new(envelope);
            // In the operation's scope: what the handler begins (a query) is its child.
            let outcome = op
                .scoped(shared.dispatch.call(Arc::clone(&envelope), token.clone()))
                .await;
            match &outcome {
                Outcome::Done => op.complete(),
                Outcome::Cancelled(_) => {
                    op.cancelled(token.reason().unwrap_or_else(Reason::requested))
                }
                Outcome::Failed(error) | Outcome::Undecodable(error) => op.failed(error),
            }
            Settle {
                config: &shared.config,
                session: &session,
                stats: &shared.stats,
                dispatch: &*shared.dispatch,
            }
            .settle(&envelope, &acker, outcome, &token)
            .await;
        });
    }

    /// Collects finished tasks so the set does not grow.
    fn reap(&mut self) {
        while let Some(joined) = self.in_flight.try_join_next() {
            report_task_panic(joined);
        }
    }

    /// The drain: stop deliveries, then hand back every delivery that was prefetched but
    /// not started, at once, so another consumer gets it now.
    async fn hand_back(&mut self, session: &Session, mut consumer: lapin::Consumer) {
        let started = Instant::now();
        let counters = self.shared.stats.counters();
        let handed_back = async {
            let mut handed_back = 0u64;
            if let Err(error) = session
                .channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await
            {
                tracing::info!(queue = %self.config().queue, %error, "basic.cancel failed at drain; the broker hands back the prefetched messages when the connection closes");
                return handed_back;
            }
            // After cancel-ok nothing more arrives: the stream yields what lapin buffered,
            // then ends. None of it was started (invariant 1).
            let mut nacks = FuturesUnordered::new();
            let mut ended = false;
            while !ended || !nacks.is_empty() {
                tokio::select! {
                    next = consumer.next(), if !ended => match next {
                        Some(Ok(delivery)) => nacks.push(async move {
                            let requeue = BasicNackOptions { multiple: false, requeue: true };
                            delivery.acker.nack(requeue).await.is_ok()
                        }),
                        Some(Err(_)) | None => ended = true,
                    },
                    Some(sent) = nacks.next(), if !nacks.is_empty() => {
                        if sent {
                            handed_back += 1;
                            ConsumerStats::add(&counters.handed_back_at_drain, 1);
                        }
                    }
                }
            }
            handed_back
        };
        let handed_back = tokio::time::timeout(HAND_BACK_LIMIT, handed_back)
            .await
            .unwrap_or_else(|_| {
                tracing::warn!(queue = %self.config().queue, "the broker did not confirm basic.cancel within {HAND_BACK_LIMIT:?}; what is still prefetched goes back when the connection closes");
                0
            });
        tracing::info!(
            queue = %self.config().queue,
            handed_back,
            in_flight = self.in_flight.len(),
            took = ?started.elapsed(),
            "draining: deliveries stopped, unstarted messages handed back; waiting for the handlers in flight"
        );
    }

    /// Waits for every in-flight handler to end and settle (the host fires their tokens
    /// at hard stop, and drops this future at abort).
    async fn finish_in_flight(&mut self) {
        while let Some(joined) = self.in_flight.join_next().await {
            report_task_panic(joined);
        }
    }

    /// Marks `session` lost (its handlers' tokens fire with `Disconnected`).
    fn lost(&self, session: &Session, why: String) {
        let in_flight = self.shared.stats.in_flight();
        if session.mark_lost(why.clone()) {
            crate::session::log_lost(&self.config().queue, in_flight, &why);
        }
    }

    /// Reconnects with backoff until it works, `stopping` fires (`None`), or the broker
    /// refuses the setup for good (an error, which ends `execute`).
    async fn reconnect(
        &mut self,
        stopping: &CancellationToken,
    ) -> Result<Option<Arc<Session>>, BoxError> {
        loop {
            self.reconnect_attempts = self.reconnect_attempts.saturating_add(1);
            let pause = self
                .config()
                .reconnect_backoff
                .jittered(self.reconnect_attempts);
            if stopping
                .run_until_cancelled(tokio::time::sleep(pause))
                .await
                .is_err()
            {
                return Ok(None);
            }
            let hard_stop = self.cx.hard_stop();
            let opening = Session::open(self.config(), &hard_stop);
            match stopping.run_until_cancelled(opening).await {
                Err(_) => return Ok(None),
                Ok(Ok(session)) => {
                    tracing::info!(
                        queue = %self.config().queue,
                        attempts = self.reconnect_attempts,
                        "consumer reconnected"
                    );
                    self.reconnect_attempts = 0;
                    ConsumerStats::add(&self.shared.stats.counters().reconnects, 1);
                    let session = Arc::new(session);
                    crate::session::watch(&session, self.shared.stats.clone());
                    return Ok(Some(session));
                }
                Ok(Err(error)) if error.is_transient() => {
                    tracing::warn!(
                        queue = %self.config().queue,
                        attempt = self.reconnect_attempts,
                        %error,
                        "reconnect failed; trying again"
                    );
                }
                Ok(Err(error)) => return Err(error.into()),
            }
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let counters = self.shared.stats.counters();
        // Invariant 4: read before the task set is dropped (which aborts the tasks); at a
        // normal end every task has been joined and this is 0.
        let still_running = counters.in_flight.load(Ordering::Acquire);
        if still_running > 0 {
            ConsumerStats::add(&counters.in_flight_at_abort, still_running);
            tracing::warn!(
                queue = %self.shared.config.queue,
                still_running,
                "handlers still running at abort are dropped; the broker redelivers their messages when the connection closes"
            );
        }
        self.shared.stats.record(&self.cx);
    }
}

/// Decrements the in-flight count when a message's task ends, or is dropped by an abort —
/// after `Run::drop` has read the count, since dropping the task set is what aborts them.
struct InFlight<'a>(&'a ConsumerStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.counters().in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A message's task panicked outside the handler (the handler's own panics are caught and
/// are failures of the message): a bug here.
fn report_task_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(error) = joined
        && error.is_panic()
    {
        tracing::error!(%error, "a message task panicked while settling its message");
    }
}
