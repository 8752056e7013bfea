//! One run of a consumer's `execute`: the task that pulls, starts handlers, signals
//! progress, and walks the shutdown contract (`docs/architecture.md`, "The shutdown
//! contract": drain, cancel, abort).
//!
//! Everything happens on this one task: messages come off the subscription into `buffer`,
//! start as [`InFlight`] futures in `running` (polled here, like
//! `StreamExt::for_each_concurrent`); when one ends, this task sends its ack or `-NAK` (a
//! dead letter is sent by the future itself). The task owns every count, so none needs an
//! atomic.
//!
//! ```text
//!            pull request                   start (free slot)            handler returns
//!  server ───────────────► buffer ────────────────────────► running ───────────────────► settled
//!                │            │ drain / disconnect: -NAK        │ hard stop / disconnect: token fires
//!                │            ▼                                 ▼
//!                └─ arriving while draining: -NAK       Cancelled → -NAK;  abort: dropped, -NAK tried
//! ```
//!
//! Invariants:
//!
//! 1. Once draining, nothing is pulled and nothing is started. Every message in `buffer`,
//!    and every one still arriving from pull requests sent before the drain, is handed back
//!    (`-NAK`) as soon as the subscription is closed — not earlier, or JetStream would
//!    deliver it straight back into this consumer's own open requests.
//! 2. Messages held (buffered + running) are signalled as in progress (`+WPI`) every
//!    quarter AckWait, and only while their token has not fired.
//! 3. A draining consumer closes its subscription when no pull request is outstanding (so
//!    nothing can be on its way), or else after [`QUIET`] without a delivery, and at the
//!    latest [`MAX_DRAIN_WAIT`] after the drain began (the server drops requests whose
//!    reply subject lost interest; a delivery already on its way is read and handed back).
//! 4. A run ends normally only when draining, with the subscription closed, nothing
//!    buffered and nothing running; dropped before that (the abort phase), it hands back
//!    what it holds, as far as the connection takes it without waiting.
//! 5. While disconnected, nothing is started: the buffer is handed back when the connection
//!    is lost, and so is every message read off the subscription until the client reports
//!    it reconnected, so no handler runs for a message whose progress cannot be sent.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::{Event, Subject, Subscriber};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use gracefully::{CancellationSource, CancellationToken, Reason};
use gracefully_host::ServiceContext;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::time::{Instant, MissedTickBehavior, sleep_until};

use crate::counts::{Counts, Settled};
use crate::decode::Decode;
use crate::error::Error;
use crate::handler::Handler;
use crate::message::Delivery;
use crate::pulls::Pulls;
use crate::settle::{self, Delivered, Shared, progress_body};
use crate::setup::{Bound, Control};
use crate::status::{Inbox, classify};

/// How long a draining consumer waits without a delivery before it closes its
/// subscription while pull requests are still outstanding (invariant 3).
const QUIET: Duration = Duration::from_millis(20);

/// The longest a draining consumer keeps its subscription open for outstanding pull
/// requests (invariant 3).
const MAX_DRAIN_WAIT: Duration = Duration::from_millis(200);

/// How many ready messages or completions are taken per wake-up.
const BATCH: usize = 64;

/// A message started: its handler's future, and what progress and the final ack need.
struct InFlight {
    reply: Subject,
    token: CancellationToken,
    /// When it was received or last signalled as in progress.
    signalled: Instant,
    future: Pin<Box<dyn Future<Output = (Settled, Option<AckKind>)> + Send>>,
}

impl Future for InFlight {
    /// How it ended, what to send for it, and where.
    type Output = (Settled, Option<AckKind>, Subject);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.future
            .as_mut()
            .poll(cx)
            .map(|(settled, ack)| (settled, ack, self.reply.clone()))
    }
}

/// A message received, not started.
struct Held {
    delivered: Delivered,
    signalled: Instant,
}

/// A drain under way: the subscription's closing deadlines (invariant 3).
#[derive(Clone, Copy, Debug)]
struct Drain {
    quiet_until: Instant,
    give_up_at: Instant,
}

impl Drain {
    fn close_at(&self) -> Instant {
        self.quiet_until.min(self.give_up_at)
    }
}

/// What one run needs from the consumer.
pub(crate) struct Parts<'a, D, H> {
    pub(crate) shared: &'a Arc<Shared<D, H>>,
    pub(crate) bound: &'a Bound,
    pub(crate) control: &'a mut UnboundedReceiver<Control>,
    pub(crate) control_tx: &'a UnboundedSender<Control>,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
}

pub(crate) struct Session<'a, D: Decode, H: Handler<D::Output>> {
    shared: &'a Arc<Shared<D, H>>,
    bound: &'a Bound,
    control: &'a mut UnboundedReceiver<Control>,
    control_tx: &'a UnboundedSender<Control>,
    cx: &'a ServiceContext,
    concurrency: usize,
    prefetch: usize,
    subscription: Option<Subscriber>,
    inbox: Subject,
    pull_subject: Subject,
    pulls: Pulls,
    buffer: VecDeque<Held>,
    running: FuturesUnordered<InFlight>,
    /// The parent of the handlers' tokens: a child of hard stop, fired and replaced when
    /// the connection is lost.
    epoch: CancellationSource,
    counts: Counts,
    connected: bool,
    /// Draining: when the subscription is to be closed (invariant 3).
    draining: Option<Drain>,
    /// The subscription was asked to drain; reading it to its end.
    closing: bool,
    last_heard: Instant,
    /// Ended normally (invariant 4).
    done: bool,
    /// The runtime the consumer runs on, for the hand-back of a drop (invariant 4).
    runtime: tokio::runtime::Handle,
}

impl<'a, D: Decode, H: Handler<D::Output>> Session<'a, D, H> {
    /// Subscribes to a fresh inbox (the pull requests' reply subject).
    pub(crate) async fn open(
        parts: Parts<'a, D, H>,
        cx: &'a ServiceContext,
    ) -> Result<Self, Error> {
        let client = &parts.shared.client;
        let inbox = Subject::from(client.new_inbox());
        let subscription = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| Error::api("subscribe to the consumer's inbox", e))?;
        let pull_subject = Subject::from(format!(
            "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
            parts.shared.stream, parts.shared.consumer
        ));
        let bound = parts.bound;
        Ok(Session {
            shared: parts.shared,
            bound,
            control: parts.control,
            control_tx: parts.control_tx,
            cx,
            concurrency: parts.concurrency,
            prefetch: parts.prefetch,
            subscription: Some(subscription),
            inbox,
            pull_subject,
            pulls: Pulls::new(bound.max_batch, bound.expires, bound.idle_heartbeat),
            buffer: VecDeque::new(),
            running: FuturesUnordered::new(),
            epoch: cx.hard_stop().child(),
            counts: Counts::default(),
            connected: true,
            draining: None,
            closing: false,
            last_heard: Instant::now(),
            done: false,
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Runs until drained (invariant 4), or until the consumer cannot go on.
    ///
    /// # Cancel safety
    ///
    /// Dropped only in the host's abort phase; `Drop` then hands back what it holds.
    pub(crate) async fn run(&mut self, stopping: &CancellationToken) -> Result<(), Error> {
        let tx = self.control_tx.clone();
        let _on_stop = stopping.on_cancel(move |_| {
            let _ = tx.send(Control::Stop);
        });
        // Invariant 2: a held message is signalled a quarter AckWait after the last time,
        // checked at least every quarter AckWait, so at most half its AckWait passes
        // unsignalled. At least every idle heartbeat too, so lost pull requests are noticed
        // within a few heartbeats however long AckWait is.
        let tick_every = (self.bound.ack_wait / 4)
            .min(self.bound.idle_heartbeat)
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval_at(Instant::now() + tick_every, tick_every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let wake = sleep_until(Instant::now());
        tokio::pin!(wake);
        let mut wake_at: Option<Instant> = None;

        loop {
            if self.draining.is_none() {
                self.start_handlers();
                self.pull().await;
            } else {
                self.close_subscription_when_safe().await;
                if self.subscription.is_none() {
                    self.hand_back_buffer().await;
                }
            }
            if self.draining.is_some()
                && self.subscription.is_none()
                && self.buffer.is_empty()
                && self.running.is_empty()
            {
                break;
            }
            let next_wake = self.next_wake();
            if next_wake != wake_at {
                if let Some(at) = next_wake {
                    wake.as_mut().reset(at);
                }
                wake_at = next_wake;
            }
            tokio::select! {
                biased;
                Some(control) = self.control.recv() => self.on_control(control).await?,
                Some(ended) = self.running.next(), if !self.running.is_empty() => {
                    self.settled(ended).await;
                    for _ in 0..BATCH {
                        match self.running.next().now_or_never() {
                            Some(Some(ended)) => self.settled(ended).await,
                            _ => break,
                        }
                    }
                }
                next = next_message(&mut self.subscription), if self.subscription.is_some() => {
                    self.on_message(next).await?;
                    for _ in 0..BATCH {
                        match next_message(&mut self.subscription).now_or_never() {
                            Some(next) => self.on_message(next).await?,
                            None => break,
                        }
                    }
                }
                _ = tick.tick() => self.on_tick().await,
                _ = &mut wake, if wake_at.is_some() => { wake_at = None; }
            }
        }
        self.done = true;
        if self.connected {
            // The hand-backs and acks are written; wait until the server has them.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.client.flush()).await;
        }
        Ok(())
    }

    /// A handler's message settled: count it, and send its ack or `-NAK`.
    async fn settled(&mut self, (settled, ack, reply): (Settled, Option<AckKind>, Subject)) {
        self.counts.settled(settled);
        if let Some(kind) = ack {
            settle::settle(&self.shared.client, &reply, kind).await;
        }
    }

    /// Starts handlers for buffered messages while slots are free.
    fn start_handlers(&mut self) {
        while self.running.len() < self.concurrency {
            let Some(held) = self.buffer.pop_front() else {
                break;
            };
            // Its own token: a child of this connection's epoch, itself a child of hard
            // stop. (No source is kept: nothing cancels one message alone; the token stays
            // linked to its parents while the handler holds it.)
            let token = self.epoch.token().child().token();
            let reply = held.delivered.reply.clone();
            let future = Box::pin(settle::process(
                Arc::clone(self.shared),
                held.delivered,
                token.clone(),
            ));
            self.running.push(InFlight {
                reply,
                token,
                signalled: held.signalled,
                future,
            });
        }
    }

    /// Sends a pull request if enough room has opened up (see [`Pulls::want`]).
    async fn pull(&mut self) {
        if !self.connected || self.subscription.is_none() {
            return;
        }
        let free = self.concurrency.saturating_sub(self.running.len());
        let limit = free + self.prefetch;
        let now = Instant::now();
        let Some(batch) = self.pulls.want(
            limit,
            self.buffer.len(),
            self.concurrency + self.prefetch,
            now,
        ) else {
            return;
        };
        let request = self.pulls.request(batch);
        match self
            .shared
            .client
            .publish_with_reply(self.pull_subject.clone(), self.inbox.clone(), request)
            .await
        {
            Ok(()) => self.pulls.sent(batch, now),
            Err(error) => {
                tracing::debug!(%error, "could not send a pull request (the client is closed)");
                self.pulls.rejected(now);
            }
        }
    }

    /// When the loop must wake without other events: a paused pull, or the drain's quiet
    /// deadline.
    fn next_wake(&self) -> Option<Instant> {
        match self.draining {
            Some(drain) if self.subscription.is_some() && !self.closing => Some(drain.close_at()),
            Some(_) => None,
            None => self.pulls.paused_until().filter(|&at| at > Instant::now()),
        }
    }

    async fn on_control(&mut self, control: Control) -> Result<(), Error> {
        match control {
            Control::Stop => self.begin_drain().await,
            Control::Connection(Event::Disconnected) => self.on_disconnect().await,
            Control::Connection(Event::Connected) => {
                if !self.connected {
                    tracing::info!("reconnected to NATS; pulling again");
                }
                self.connected = true;
                self.last_heard = Instant::now();
            }
            Control::Connection(Event::Closed) => {
                if self.draining.is_none() {
                    return Err(Error::api(
                        "keep consuming",
                        "the NATS client was closed (max_reconnects reached?)",
                    ));
                }
                self.connected = false;
                self.subscription = None;
            }
            Control::Connection(Event::LameDuckMode) => {
                tracing::warn!(
                    "the NATS server entered lame duck mode (it is shutting down); the client will move to another server"
                );
            }
            Control::Connection(Event::SlowConsumer(sid)) => {
                tracing::warn!(
                    sid,
                    "async-nats dropped messages for a slow subscription; they will be redelivered after AckWait"
                );
            }
            Control::Connection(other) => tracing::warn!(event = %other, "NATS connection event"),
        }
        Ok(())
    }

    /// Drain (invariant 1): stop pulling and starting; what is buffered is handed back
    /// once the subscription is closed.
    async fn begin_drain(&mut self) {
        if self.draining.is_some() {
            return;
        }
        tracing::info!(
            unstarted = self.buffer.len(),
            in_flight = self.running.len(),
            "draining: stopped pulling; handing back the unstarted messages, letting in-flight handlers finish"
        );
        let now = Instant::now();
        self.draining = Some(Drain {
            quiet_until: now + QUIET,
            give_up_at: now + MAX_DRAIN_WAIT,
        });
        if !self.connected {
            // The pull requests died with the connection; nothing more can arrive.
            self.subscription = None;
        }
    }

    /// Hands back (`-NAK`) every buffered message: the drain's step once the subscription
    /// is closed (invariant 1).
    async fn hand_back_buffer(&mut self) {
        self.counts.handed_back_at_drain += self.nak_buffer().await;
    }

    /// Hands back (`-NAK`) every buffered message; returns how many.
    async fn nak_buffer(&mut self) -> u64 {
        let mut n = 0;
        while let Some(held) = self.buffer.pop_front() {
            settle::settle(
                &self.shared.client,
                &held.delivered.reply,
                AckKind::Nak(None),
            )
            .await;
            n += 1;
        }
        n
    }

    /// Invariant 3.
    async fn close_subscription_when_safe(&mut self) {
        let (Some(drain), Some(subscription)) = (self.draining, self.subscription.as_mut()) else {
            return;
        };
        if self.closing {
            return;
        }
        if self.pulls.outstanding() == 0 {
            // Nothing asked for is still to come: close at once.
            let _ = subscription.unsubscribe().await;
            self.subscription = None;
        } else if Instant::now() >= drain.close_at() {
            // Requests wait on an idle stream. Unsubscribing makes the server drop them;
            // read what was already sent until the subscription ends.
            self.closing = true;
            if subscription.drain().await.is_err() {
                self.subscription = None;
            }
        }
    }

    async fn on_disconnect(&mut self) {
        if !self.connected {
            return;
        }
        self.connected = false;
        self.counts.disconnects += 1;
        tracing::warn!(
            in_flight = self.running.len(),
            handed_back = self.buffer.len(),
            "lost the connection to NATS: firing the in-flight handlers' tokens (Disconnected), \
             handing back the unstarted messages; reconnecting"
        );
        let fresh = self.cx.hard_stop().child();
        let old = std::mem::replace(&mut self.epoch, fresh);
        old.cancel_with(Reason::disconnected().with_message(
            "lost the connection to NATS: progress and acks cannot reach it, and the message may \
             be delivered again",
        ));
        // Queued by the client; sent once it has reconnected.
        self.counts.handed_back_at_disconnect += self.nak_buffer().await;
        self.pulls.reset();
        if self.draining.is_some() {
            self.subscription = None;
        }
    }

    async fn on_message(&mut self, next: Option<async_nats::Message>) -> Result<(), Error> {
        let Some(message) = next else {
            // The subscription ended: drained as asked, or the client is gone.
            self.subscription = None;
            if self.draining.is_some() {
                return Ok(());
            }
            return Err(Error::api(
                "keep consuming",
                "the subscription ended: the NATS client was closed",
            ));
        };
        let now = Instant::now();
        self.last_heard = now;
        let shared = self.shared;
        match classify(&message) {
            Inbox::Delivery => self.on_delivery(message, now).await,
            Inbox::Heartbeat => {}
            Inbox::Ended(pending) => self.pulls.ended(pending),
            Inbox::Refused(why) => {
                tracing::warn!(%why, "pull request refused; pulling again after a pause");
                self.pulls.rejected(now);
            }
            Inbox::ConsumerDeleted => {
                return Err(Error::ConsumerDeleted {
                    stream: shared.stream.to_string(),
                    consumer: shared.consumer.to_string(),
                });
            }
            Inbox::Unusable(message) => {
                return Err(Error::ConsumerMismatch {
                    stream: shared.stream.to_string(),
                    consumer: shared.consumer.to_string(),
                    message,
                });
            }
        }
        Ok(())
    }

    async fn on_delivery(&mut self, message: async_nats::Message, now: Instant) {
        self.pulls.delivered();
        let Some((reply, delivery)) = message
            .reply
            .clone()
            .and_then(|reply| Delivery::parse(&reply).map(|d| (reply, d)))
        else {
            tracing::warn!(subject = %message.subject, "ignored a message on the pull inbox that is not a JetStream delivery");
            return;
        };
        if !self.connected {
            // Read off the subscription after the connection was lost and before the
            // client reported it back: handed back like the buffer (queued; sent once the
            // client has reconnected), never started on a connection that may not carry its
            // progress. (One that came over a new connection ahead of the `Connected` event
            // is handed back needlessly: redelivered, nothing lost.)
            settle::settle(&self.shared.client, &reply, AckKind::Nak(None)).await;
            self.counts.handed_back_at_disconnect += 1;
            return;
        }
        if let Some(drain) = &mut self.draining {
            // Invariant 1: from a request sent before the drain; handed back with the
            // buffer once the subscription is closed.
            drain.quiet_until = now + QUIET;
        }
        self.buffer.push_back(Held {
            delivered: Delivered {
                message,
                reply,
                delivery,
            },
            signalled: now,
        });
    }

    /// Invariant 2, and forgetting pull requests the server lost.
    async fn on_tick(&mut self) {
        let now = Instant::now();
        if self.pulls.sweep(self.last_heard, now) {
            tracing::debug!("forgot pull requests the server did not answer; pulling again");
        }
        if !self.connected {
            return;
        }
        let due = self.bound.ack_wait / 4;
        let mut replies: Vec<Subject> = Vec::new();
        if !self.epoch.is_cancelled() {
            for held in self.buffer.iter_mut() {
                if now.saturating_duration_since(held.signalled) >= due {
                    held.signalled = now;
                    replies.push(held.delivered.reply.clone());
                }
            }
        }
        for in_flight in self.running.iter_mut() {
            if !in_flight.token.is_cancelled()
                && now.saturating_duration_since(in_flight.signalled) >= due
            {
                in_flight.signalled = now;
                replies.push(in_flight.reply.clone());
            }
        }
        for reply in replies {
            if let Err(error) = self.shared.client.publish(reply, progress_body()).await {
                tracing::debug!(%error, "could not send progress (the client is closed)");
            }
        }
    }
}

impl<D: Decode, H: Handler<D::Output>> Drop for Session<'_, D, H> {
    fn drop(&mut self) {
        if !self.done {
            // Invariant 4: dropped mid-run, so the abort phase (or an error) ended it.
            let in_flight = self.running.len() as u64;
            self.counts.in_flight_at_abort += in_flight;
            self.counts.handed_back_at_drain += self.buffer.len() as u64;
            let replies: Vec<Subject> = self
                .running
                .iter()
                .map(|f| f.reply.clone())
                .chain(self.buffer.iter().map(|h| h.delivered.reply.clone()))
                .collect();
            if !replies.is_empty() {
                tracing::warn!(
                    in_flight,
                    unstarted = self.buffer.len(),
                    "consumer stopped with messages in hand: handing them back if the                      connection takes it at once, else they come back after AckWait"
                );
                hand_back_on_drop(&self.runtime, self.shared.client.clone(), replies);
            }
        }
        self.counts.record(self.cx);
    }
}

/// Hands back `replies` from a destructor: on the consumer's runtime (a client's writes
/// need its connection task, and the connection closes once the last client handle is
/// gone, so the task keeps one until the server confirmed). Waits for it briefly only
/// where blocking is harmless: outside any runtime, as on the host's dropper thread.
fn hand_back_on_drop(
    runtime: &tokio::runtime::Handle,
    client: async_nats::Client,
    replies: Vec<Subject>,
) {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        for reply in replies {
            settle::settle(&client, &reply, AckKind::Nak(None)).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        let _ = done.send(());
    });
    if tokio::runtime::Handle::try_current().is_err() {
        let _ = finished.recv_timeout(Duration::from_millis(150));
    }
}

/// The next message of the subscription; `None` if it ended. Only polled while there is one.
async fn next_message(subscription: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}
