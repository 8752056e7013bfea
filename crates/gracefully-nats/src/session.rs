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
//!                │            │ drain: -NAK; disconnect: left   │ hard stop / disconnect: token fires
//!                │            ▼                                 ▼
//!                └─ arriving while draining: -NAK       Cancelled → -NAK;  abort: dropped, -NAK tried
//!                   (not sent while disconnected: left for AckWait, invariant 6)
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
//! 5. While disconnected, nothing is started: the buffer is dropped when the connection is
//!    lost, and so is every message read off the subscription until the client reports it
//!    reconnected, so no handler runs for a message whose progress cannot be sent. Their
//!    hand-backs are owed, not queued (nothing can reach the server): sent when the client
//!    reports it reconnected, or, if the run ends first, left for AckWait. So are the acks
//!    of handlers that end while disconnected (a message handled must not run again
//!    because of a short outage).
//! 6. This task never waits on a send while the connection is down, and never longer than
//!    [`SEND_WAIT`](settle::SEND_WAIT) while it is up (see [`settle::send`]): async-nats
//!    stops reading its command channel while it reconnects, and a publish into the full
//!    channel would stop this task from hearing the stop signal or polling its handlers.
//!    What is not sent is counted as left for AckWait, never as handed back.

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
use crate::settle::{self, Delivered, Sent, Shared, progress_body};
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

/// A hand-back not sendable while the connection was down (invariant 5).
struct Owed {
    reply: Subject,
    /// Its handler was cancelled (counted as `cancelled and handed back` once sent), rather
    /// than never started (`handed back at disconnect`).
    cancelled: bool,
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
    /// A send waited [`SEND_WAIT`](settle::SEND_WAIT) in vain: until the next tick (or a
    /// reconnect), sends only go out if the client has room at once (invariant 6).
    stalled: bool,
    /// Hand-backs owed while disconnected (invariant 5): sent once reconnected.
    owed: Vec<Owed>,
    /// The acks (and `+TERM`s, delayed `-NAK`s) of handlers that ended while disconnected,
    /// already counted: sent once reconnected (invariant 5), so a short outage does not
    /// make JetStream redeliver — and a handler run again — a message already handled.
    owed_settles: Vec<(Subject, bytes::Bytes)>,
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
            stalled: false,
            owed: Vec::new(),
            owed_settles: Vec::new(),
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
                _ = tick.tick() => self.on_tick().await?,
                _ = &mut wake, if wake_at.is_some() => { wake_at = None; }
            }
        }
        self.done = true;
        // Owed hand-backs never sent: the client did not reconnect in time.
        for owed in std::mem::take(&mut self.owed) {
            self.warn_if_stranded(&owed.reply, false);
            self.counts.left_for_ack_wait += 1;
        }
        if self.connected {
            // The hand-backs and acks are written; wait until the server has them.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.client.flush()).await;
        }
        Ok(())
    }

    /// A handler's message settled: send its ack or `-NAK`, and count it. A cancelled
    /// handler's message counts as handed back only if its `-NAK` was sent.
    async fn settled(&mut self, (settled, ack, reply): (Settled, Option<AckKind>, Subject)) {
        let sent = match ack {
            Some(kind) => {
                let body = settle::settle_body(kind);
                let sent = self.send(reply.clone(), body.clone()).await;
                if !sent && !self.connected && settled != Settled::CancelledHandedBack {
                    self.owed_settles.push((reply.clone(), body));
                }
                sent
            }
            None => true,
        };
        if settled == Settled::CancelledHandedBack && !sent {
            if self.connected {
                // The client would not take it in time (invariant 6).
                self.warn_if_stranded(&reply, false);
                self.counts.left_for_ack_wait += 1;
            } else {
                self.owed.push(Owed {
                    reply,
                    cancelled: true,
                });
            }
            return;
        }
        if settled == Settled::CancelledHandedBack {
            self.warn_if_stranded(&reply, true);
        }
        self.counts.settled(settled);
    }

    /// How long a send may wait for room in the client (invariant 6).
    fn send_wait(&self) -> Duration {
        if self.connected && !self.stalled {
            settle::SEND_WAIT
        } else {
            Duration::ZERO
        }
    }

    /// Sends `body` to `subject` (an ack subject) as [`settle::send`] does, within this
    /// task's wait (invariant 6); whether it was queued on a connected client.
    async fn send(&mut self, subject: Subject, body: bytes::Bytes) -> bool {
        let wait = self.send_wait();
        match settle::send(&self.shared.client, subject, body, wait).await {
            settle::Sent::Queued => true,
            settle::Sent::Down => false,
            settle::Sent::Full => {
                if !wait.is_zero() {
                    self.stalled = true;
                    tracing::warn!(
                        waited_ms = wait.as_millis() as u64,
                        "the NATS client's command channel stayed full (the connection is \
                         stuck?): sending only what it takes at once for now; what is not sent \
                         is redelivered after AckWait"
                    );
                }
                false
            }
        }
    }

    /// Warns when a message handed back (`sent`) or left for AckWait is on the consumer's
    /// last delivery (its `max_deliver`): JetStream will not deliver it again, and it was
    /// not dead-lettered either. The start step makes this rare (it demands a
    /// `max_deliver` above `max_deliveries`); a message handed back at every shutdown can
    /// still get there.
    fn warn_if_stranded(&self, reply: &Subject, sent: bool) {
        warn_if_stranded(self.bound, &self.shared.stream, reply, sent);
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
        // Invariant 6: bounded, like every send of this task.
        let publish = self.shared.client.publish_with_reply(
            self.pull_subject.clone(),
            self.inbox.clone(),
            request,
        );
        match tokio::time::timeout(self.send_wait(), tokio::task::unconstrained(publish)).await {
            Ok(Ok(())) => self.pulls.sent(batch, now),
            Ok(Err(error)) => {
                tracing::debug!(%error, "could not send a pull request (the client is closed)");
                self.pulls.rejected(now);
            }
            Err(_) => {
                tracing::debug!(
                    "could not send a pull request (the client's command channel is full)"
                );
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
                self.stalled = false;
                self.last_heard = Instant::now();
                self.pay_owed().await;
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

    /// Sends the hand-backs owed since the connection was lost (invariant 5); what the
    /// client does not take in time is left for AckWait.
    async fn pay_owed(&mut self) {
        for (reply, body) in std::mem::take(&mut self.owed_settles) {
            if !self.send(reply, body).await {
                tracing::debug!(
                    "an ack owed since the outage could not be sent; JetStream redelivers the message after AckWait"
                );
            }
        }
        for owed in std::mem::take(&mut self.owed) {
            let sent = self
                .send(owed.reply.clone(), settle::settle_body(AckKind::Nak(None)))
                .await;
            self.warn_if_stranded(&owed.reply, sent);
            match (sent, owed.cancelled) {
                (true, true) => self.counts.cancelled_handed_back += 1,
                (true, false) => self.counts.handed_back_at_disconnect += 1,
                (false, _) => self.counts.left_for_ack_wait += 1,
            }
        }
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
    /// is closed (invariant 1). Counts what was sent as handed back, the rest (the
    /// connection is down, invariant 6) as left for AckWait.
    async fn hand_back_buffer(&mut self) {
        while let Some(held) = self.buffer.pop_front() {
            let reply = held.delivered.reply;
            let sent = self
                .send(reply.clone(), settle::settle_body(AckKind::Nak(None)))
                .await;
            self.warn_if_stranded(&reply, sent);
            if sent {
                self.counts.handed_back_at_drain += 1;
            } else {
                self.counts.left_for_ack_wait += 1;
            }
        }
    }

    /// Invariant 3.
    async fn close_subscription_when_safe(&mut self) {
        let (Some(drain), Some(subscription)) = (self.draining, self.subscription.as_mut()) else {
            return;
        };
        if self.closing {
            return;
        }
        // Invariant 6: bounded. Given up, the subscription is dropped, which unsubscribes
        // if the client has room.
        let wait = if self.connected && !self.stalled {
            settle::SEND_WAIT
        } else {
            Duration::ZERO
        };
        if self.pulls.outstanding() == 0 {
            // Nothing asked for is still to come: close at once.
            let _ = tokio::time::timeout(wait, subscription.unsubscribe()).await;
            self.subscription = None;
        } else if Instant::now() >= drain.close_at() {
            // Requests wait on an idle stream. Unsubscribing makes the server drop them;
            // read what was already sent until the subscription ends.
            self.closing = true;
            if !matches!(
                tokio::time::timeout(wait, subscription.drain()).await,
                Ok(Ok(()))
            ) {
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
            unstarted = self.buffer.len(),
            "lost the connection to NATS: firing the in-flight handlers' tokens (Disconnected), \
             dropping the unstarted messages (JetStream redelivers them after AckWait); \
             reconnecting"
        );
        let fresh = self.cx.hard_stop().child();
        let old = std::mem::replace(&mut self.epoch, fresh);
        old.cancel_with(Reason::disconnected().with_message(
            "lost the connection to NATS: progress and acks cannot reach it, and the message may \
             be delivered again",
        ));
        // Invariant 5: owed, not queued. Nothing can reach the server now, and queued in
        // the client they would fill its command channel (and stop this task) in a long
        // outage (invariant 6). Sent on reconnect; else JetStream redelivers after AckWait.
        for held in std::mem::take(&mut self.buffer) {
            self.owed.push(Owed {
                reply: held.delivered.reply,
                cancelled: false,
            });
        }
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
            // client reported it back: never started on a connection that may not carry its
            // progress. Its hand-back is owed (invariant 5), sent on reconnect.
            self.owed.push(Owed {
                reply,
                cancelled: false,
            });
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
    async fn on_tick(&mut self) -> Result<(), Error> {
        let now = Instant::now();
        if self.pulls.sweep(self.last_heard, now) {
            // The server answers a pull request for a deleted consumer with a `409 Consumer
            // Deleted` only if the request was waiting when it was deleted; one sent after
            // is never answered. So when requests go unanswered, ask whether it still
            // exists (bounded like a send: invariant 6).
            if self.connected
                && self.draining.is_none()
                && consumer_deleted(
                    self.shared.jetstream.clone(),
                    self.shared.stream.to_string(),
                    self.shared.consumer.to_string(),
                )
                .await
            {
                return Err(Error::ConsumerDeleted {
                    stream: self.shared.stream.to_string(),
                    consumer: self.shared.consumer.to_string(),
                });
            }
            tracing::debug!("forgot pull requests the server did not answer; pulling again");
        }
        // Invariant 6: a stalled client is given another full wait once per tick.
        self.stalled = false;
        if !self.connected {
            return Ok(());
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
            // Not sent: the message's AckWait may run out, and JetStream redeliver it.
            self.send(reply, progress_body()).await;
        }
        Ok(())
    }
}

/// Whether the server says `consumer` (or its `stream`) no longer exists. Unsure (no
/// answer within [`SEND_WAIT`](settle::SEND_WAIT), another error) is `false`. (Owned
/// arguments: the session is not `Sync`, and is borrowed by nothing across this wait.)
async fn consumer_deleted(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
) -> bool {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::{ConsumerInfoErrorKind, GetStreamErrorKind};
    let lookup = async move {
        match js.get_stream(&stream).await {
            Ok(stream) => matches!(
                stream.consumer_info(&consumer).await,
                Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound
            ),
            Err(e) => matches!(
                e.kind(),
                GetStreamErrorKind::JetStream(js) if js.error_code() == ErrorCode::STREAM_NOT_FOUND
            ),
        }
    };
    tokio::time::timeout(settle::SEND_WAIT, lookup)
        .await
        .unwrap_or(false)
}

impl<D: Decode, H: Handler<D::Output>> Drop for Session<'_, D, H> {
    fn drop(&mut self) {
        if !self.done {
            // Invariant 4: dropped mid-run, so the abort phase (or an error) ended it. Hand
            // back what the client takes at once (invariant 6: nothing waits here), and
            // count what was sent as handed back, the rest as left for AckWait.
            let in_flight = self.running.len() as u64;
            let unstarted = self.buffer.len();
            self.counts.in_flight_at_abort += in_flight;
            let client = &self.shared.client;
            let connected = self.connected;
            let nak = || settle::settle_body(AckKind::Nak(None));
            let mut queued = 0usize;
            for reply in self.running.iter().map(|f| &f.reply) {
                let sent =
                    connected && settle::try_send(client, reply.clone(), nak()) == Sent::Queued;
                warn_if_stranded(self.bound, &self.shared.stream, reply, sent);
                queued += usize::from(sent);
            }
            for owed in &self.owed {
                let reply = &owed.reply;
                let sent =
                    connected && settle::try_send(client, reply.clone(), nak()) == Sent::Queued;
                warn_if_stranded(self.bound, &self.shared.stream, reply, sent);
                queued += usize::from(sent);
                if sent && owed.cancelled {
                    self.counts.cancelled_handed_back += 1;
                } else if sent {
                    self.counts.handed_back_at_disconnect += 1;
                } else {
                    self.counts.left_for_ack_wait += 1;
                }
            }
            for held in &self.buffer {
                let reply = &held.delivered.reply;
                let sent =
                    connected && settle::try_send(client, reply.clone(), nak()) == Sent::Queued;
                warn_if_stranded(self.bound, &self.shared.stream, reply, sent);
                queued += usize::from(sent);
                if sent {
                    self.counts.handed_back_at_drain += 1;
                } else {
                    self.counts.left_for_ack_wait += 1;
                }
            }
            if in_flight > 0 || unstarted > 0 {
                tracing::warn!(
                    in_flight,
                    unstarted,
                    handed_back = queued,
                    "consumer stopped with messages in hand: handed back what the connection \
                     took at once; the rest come back after AckWait"
                );
            }
            if queued > 0 {
                flush_on_drop(&self.runtime, self.shared.client.clone());
            }
        }
        self.counts.record(self.cx);
    }
}

/// Flushes the hand-backs of a destructor: on the consumer's runtime (a client's writes
/// need its connection task, and the connection closes once the last client handle is
/// gone, so the task keeps one until the server confirmed). Waits for it briefly only
/// where blocking is harmless: outside any runtime, as on the host's dropper thread.
fn flush_on_drop(runtime: &tokio::runtime::Handle, client: async_nats::Client) {
    let (done, finished) = std::sync::mpsc::channel::<()>();
    runtime.spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
        let _ = done.send(());
    });
    if tokio::runtime::Handle::try_current().is_err() {
        let _ = finished.recv_timeout(Duration::from_millis(150));
    }
}

/// See [`Session::warn_if_stranded`].
fn warn_if_stranded(bound: &Bound, stream: &str, reply: &Subject, sent: bool) {
    let Some(max_deliver) = bound.max_deliver else {
        return;
    };
    let Some(delivery) = Delivery::parse(reply) else {
        return;
    };
    if delivery.delivered >= max_deliver {
        tracing::warn!(
            stream,
            sequence = delivery.stream_sequence,
            delivery = delivery.delivered,
            max_deliver,
            handed_back = sent,
            "a message not handled is on the consumer's last delivery (its max_deliver): \
             JetStream will not deliver it again, and it was not dead-lettered; it stays in \
             its stream (raise the consumer's max_deliver, or set it to -1)"
        );
    }
}

/// The next message of the subscription; `None` if it ended. Only polled while there is one.
async fn next_message(subscription: &mut Option<Subscriber>) -> Option<async_nats::Message> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}
