//! One delivery, from decoding to its end: decode → handler → ack, hand back, retry later,
//! or dead-letter. This is the future a consumer runs for each message it starts (see the
//! crate docs, "Outcomes", for the rules it applies).

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::AckKind;
use async_nats::{Client, HeaderMap, Subject};
use bytes::Bytes;
use futures_util::FutureExt;
use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationToken, Reason, is_cancellation};
use gracefully_host::{BoxError, panic_message};

use crate::backoff::Backoff;
use crate::counts::Settled;
use crate::decode::Decode;
use crate::handler::Handler;
use crate::message::{Delivery, MSG_ID_HEADER, Message};

/// Headers a dead letter carries besides the original's.
pub(crate) const ERROR_HEADER: &str = "Gracefully-Error";
const STREAM_HEADER: &str = "Gracefully-Stream";
const CONSUMER_HEADER: &str = "Gracefully-Consumer";
const SUBJECT_HEADER: &str = "Gracefully-Subject";
const SEQUENCE_HEADER: &str = "Gracefully-Stream-Sequence";
const DELIVERIES_HEADER: &str = "Gracefully-Deliveries";
const ORIGINAL_MSG_ID_HEADER: &str = "Gracefully-Original-Msg-Id";

/// The longest error text put into a dead letter's header.
const MAX_ERROR_HEADER: usize = 1024;

/// What every in-flight message of a consumer shares.
pub(crate) struct Shared<D, H> {
    pub(crate) client: Client,
    pub(crate) jetstream: async_nats::jetstream::Context,
    pub(crate) stream: Arc<str>,
    pub(crate) consumer: Arc<str>,
    /// `stream/consumer`: the name of each message's operation (bounded: one per consumer).
    pub(crate) operation: Box<str>,
    pub(crate) max_deliveries: u64,
    pub(crate) backoff: Backoff,
    pub(crate) dead_letter: Option<String>,
    pub(crate) decoder: D,
    pub(crate) handler: H,
}

/// A delivery taken off the subscription.
pub(crate) struct Delivered {
    pub(crate) message: async_nats::Message,
    pub(crate) reply: Subject,
    pub(crate) delivery: Delivery,
}

/// Runs one delivery to its end and says how it ended, and what the consumer is to send
/// for it: an ack, or a `-NAK` with or without delay (`None` when the dead-letter path
/// already terminated or handed it back). Never fails: every outcome, a panic included,
/// settles the message one way or another. The common acks are sent by the caller, not
/// awaited here, which keeps this future — one per message — small.
///
/// # Cancel safety
///
/// Dropped only in the host's abort phase (with the consumer); the message is then handed
/// back by the consumer's drop, or redelivered after AckWait.
pub(crate) async fn process<D, H>(
    shared: Arc<Shared<D, H>>,
    delivered: Delivered,
    token: CancellationToken,
) -> (Settled, Option<AckKind>)
where
    D: Decode,
    H: Handler<D::Output>,
{
    let Delivered {
        message,
        reply,
        delivery,
    } = delivered;
    // An operation under the consumer's service (the session polls this future in the
    // service's scope); inert without a registry.
    let op = Operation::begin(OperationKind::Message, &shared.operation, token.deadline());
    // A decoder that panics (one of `decode_with`) makes the message undecodable, not the
    // consumer fail.
    let decoded =
        std::panic::catch_unwind(AssertUnwindSafe(|| shared.decoder.decode(&message.payload)))
            .unwrap_or_else(|panic| {
                Err(format!("the decoder panicked: {}", panic_message(&*panic)).into())
            });
    let payload = match decoded {
        Ok(payload) => payload,
        Err(error) => {
            let why = format!("undecodable payload: {error}");
            op.failed(&why);
            tracing::error!(
                stream = %shared.stream,
                sequence = delivery.stream_sequence,
                subject = %message.subject,
                error = %why,
                "message cannot be decoded: dead-lettering it at once (it is never retried)"
            );
            let copy = Original::of(&message);
            // Boxed: the rare path stays out of every message's future.
            let settled = Box::pin(dead_letter(&shared, copy, &reply, delivery, why)).await;
            return (settled, None);
        }
    };
    // A dead letter needs the original; copy it (headers are a map) only when this
    // delivery is the last one allowed, so a failure would dead-letter it.
    let last_chance = delivery.delivered >= shared.max_deliveries;
    let copy = last_chance.then(|| Original::of(&message));

    let message = Message::new(payload, message, Arc::clone(&shared.stream), delivery);
    // A panic is caught both in the call (a closure's synchronous part, before it returns
    // its future) and in the future: either way a failure of this message alone.
    // Run in the operation's scope, so what the handler begins (a query) is its child.
    let outcome = op
        .scoped(async {
            match std::panic::catch_unwind(AssertUnwindSafe(|| {
                shared.handler.call(message, token.clone())
            })) {
                Ok(future) => AssertUnwindSafe(future).catch_unwind().await,
                Err(panic) => Err(panic),
            }
        })
        .await;
    let error: BoxError = match outcome {
        Ok(Ok(())) => {
            op.complete();
            return (Settled::Handled, Some(AckKind::Ack));
        }
        Ok(Err(error)) => error.into(),
        Err(panic) => format!("handler panicked: {}", panic_message(&*panic)).into(),
    };
    // A cancellation counts as one only if *our* token fired: a handler's own timeout
    // (a cancellation too) is a failure, retried with backoff like any other, so that a
    // message that always times out cannot come back at once for ever.
    if token.is_cancelled() && is_cancellation(&*error) {
        op.cancelled(token.reason().unwrap_or_else(Reason::requested));
        tracing::debug!(
            stream = %shared.stream,
            sequence = delivery.stream_sequence,
            reason = ?token.reason().map(|r| r.to_string()),
            "handler cancelled: handing the message back"
        );
        return (Settled::CancelledHandedBack, Some(AckKind::Nak(None)));
    }
    op.failed(&error);
    if let Some(copy) = copy {
        let why = format!(
            "handler failed on delivery {} of at most {}: {error}",
            delivery.delivered, shared.max_deliveries
        );
        tracing::error!(
            stream = %shared.stream,
            sequence = delivery.stream_sequence,
            error = %why,
            "handler failed on the last delivery allowed: dead-lettering the message"
        );
        let settled = Box::pin(dead_letter(&shared, copy, &reply, delivery, why)).await;
        return (settled, None);
    }
    let delay = shared.backoff.delay(delivery.delivered);
    tracing::warn!(
        stream = %shared.stream,
        sequence = delivery.stream_sequence,
        delivery = delivery.delivered,
        max_deliveries = shared.max_deliveries,
        retry_in_ms = delay.as_millis() as u64,
        %error,
        "handler failed: the message will be delivered again after a backoff"
    );
    (Settled::Retried, Some(AckKind::Nak(Some(delay))))
}

/// What a dead letter is made of.
struct Original {
    subject: Subject,
    headers: Option<HeaderMap>,
    payload: Bytes,
}

impl Original {
    fn of(message: &async_nats::Message) -> Original {
        Original {
            subject: message.subject.clone(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
        }
    }
}

/// Publishes the message to the dead-letter subject (waiting for the stream that captures
/// it to store it), then terminates it in its own stream. Without a dead-letter subject,
/// only terminates it. If the dead letter cannot be stored, the message is handed back with
/// a backoff instead, so it is never lost.
async fn dead_letter<D, H>(
    shared: &Shared<D, H>,
    copy: Original,
    reply: &Subject,
    delivery: Delivery,
    why: String,
) -> Settled {
    let Some(subject) = &shared.dead_letter else {
        tracing::error!(
            stream = %shared.stream,
            sequence = delivery.stream_sequence,
            "no dead-letter subject configured: terminating the message (+TERM); it stays in \
             its stream but is not delivered again"
        );
        settle(&shared.client, reply, AckKind::Term, SEND_WAIT).await;
        return Settled::DeadLettered;
    };
    let mut headers = copy.headers.unwrap_or_default();
    if let Some(id) = headers.get(MSG_ID_HEADER).map(|v| v.as_str().to_owned()) {
        headers.insert(ORIGINAL_MSG_ID_HEADER, header_value(&id));
    }
    // Idempotent: if the +TERM below is lost and the message dead-lettered again, the
    // dead-letter stream drops the copy within its duplicate window.
    headers.insert(
        MSG_ID_HEADER,
        header_value(&format!(
            "dead:{}:{}",
            shared.stream, delivery.stream_sequence
        )),
    );
    headers.insert(ERROR_HEADER, header_value(&why));
    headers.insert(STREAM_HEADER, header_value(&shared.stream));
    headers.insert(CONSUMER_HEADER, header_value(&shared.consumer));
    headers.insert(SUBJECT_HEADER, header_value(&copy.subject));
    headers.insert(SEQUENCE_HEADER, delivery.stream_sequence.to_string());
    headers.insert(DELIVERIES_HEADER, delivery.delivered.to_string());
    let stored = match shared
        .jetstream
        .publish_with_headers(subject.clone(), headers, copy.payload)
        .await
    {
        Ok(ack) => ack.await.map(|_| ()).map_err(BoxError::from),
        Err(error) => Err(error.into()),
    };
    match stored {
        Ok(()) => {
            settle(&shared.client, reply, AckKind::Term, SEND_WAIT).await;
            Settled::DeadLettered
        }
        Err(error) => {
            let delay = shared.backoff.delay(delivery.delivered);
            tracing::error!(
                stream = %shared.stream,
                sequence = delivery.stream_sequence,
                dead_letter = %subject,
                %error,
                "could not store the dead letter: handing the message back, to be dead-lettered \
                 again after a backoff"
            );
            settle(&shared.client, reply, AckKind::Nak(Some(delay)), SEND_WAIT).await;
            Settled::Retried
        }
    }
}

/// The longest a send waits for room in the client's command channel while the connection
/// is up. async-nats's `publish` waits for that room without limit; once the connection is
/// stuck (and before the client has noticed), that would stop the consumer's one task from
/// reading its stop signal or polling its handlers. Past this, the send is given up: an ack
/// or hand-back that is not sent only means JetStream redelivers after AckWait.
pub(crate) const SEND_WAIT: Duration = Duration::from_secs(1);

/// What became of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sent {
    /// Queued on a connected client: it goes out with the client's next write.
    Queued,
    /// Not sent: the connection is down (or the client closed). Nothing was queued, so
    /// nothing piles up in the client's command channel while it reconnects.
    Down,
    /// Not sent: the client's command channel stayed full for the whole wait.
    Full,
}

/// Publishes `body` to `subject` if the connection is up, waiting at most `wait` for room
/// in the client's command channel (`Duration::ZERO`: only if there is room now).
///
/// Never waits while the connection is down: async-nats does not read its command channel
/// while it reconnects, so a publish then waits (its 2048 places once full) until the
/// connection is back — for ever, if it never is.
pub(crate) async fn send(client: &Client, subject: Subject, body: Bytes, wait: Duration) -> Sent {
    if client.connection_state() != State::Connected {
        return Sent::Down;
    }
    // Unconstrained: a publish that finds room completes at its first poll, even when the
    // task's cooperative budget is spent (else the zero wait would give up needlessly).
    // Dropping a publish that waits for room queues nothing (tokio's `Sender::send` is
    // cancel safe).
    match tokio::time::timeout(
        wait,
        tokio::task::unconstrained(client.publish(subject, body)),
    )
    .await
    {
        Ok(Ok(())) => Sent::Queued,
        Ok(Err(error)) => {
            tracing::debug!(%error, "could not send an ack/nak (the client is closed)");
            Sent::Down
        }
        Err(_) => Sent::Full,
    }
}

/// [`send`] from where nothing may wait (a destructor, maybe outside any runtime): queued
/// only if the connection is up and the command channel has room now.
pub(crate) fn try_send(client: &Client, subject: Subject, body: Bytes) -> Sent {
    if client.connection_state() != State::Connected {
        return Sent::Down;
    }
    match tokio::task::unconstrained(client.publish(subject, body)).now_or_never() {
        Some(Ok(())) => Sent::Queued,
        Some(Err(_)) => Sent::Down,
        None => Sent::Full,
    }
}

/// The body that settles a delivery as `kind`.
pub(crate) fn settle_body(kind: AckKind) -> Bytes {
    match kind {
        // An empty body is an ack: what async-nats's `ack()` sends.
        AckKind::Ack => Bytes::new(),
        other => Bytes::from(other),
    }
}

/// Sends an ack, a `-NAK` (with or without delay) or a `+TERM` for a delivery, as [`send`]
/// does: fire and forget, like async-nats's `ack()`, but never queued while the connection
/// is down, and never waiting longer than `wait`. If it is not sent, JetStream redelivers
/// after AckWait (at-least-once).
pub(crate) async fn settle(
    client: &Client,
    reply: &Subject,
    kind: AckKind,
    wait: Duration,
) -> Sent {
    send(client, reply.clone(), settle_body(kind), wait).await
}

/// `text` as a header value: no CR or LF (they would end the header), at most
/// [`MAX_ERROR_HEADER`] bytes.
fn header_value(text: &str) -> String {
    let mut value: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if value.len() > MAX_ERROR_HEADER {
        let mut end = MAX_ERROR_HEADER;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
        value.push('…');
    }
    value
}

/// The progress signal (`+WPI`) that resets a delivery's AckWait.
pub(crate) fn progress_body() -> Bytes {
    Bytes::from(AckKind::Progress)
}

#[cfg(test)]
mod tests {
    use super::header_value;

    #[test]
    fn header_values_lose_line_breaks_and_stay_short() {
        assert_eq!(header_value("a\r\nb\nc"), "a  b c");
        let long = "é".repeat(2000);
        let v = header_value(&long);
        assert!(v.len() <= super::MAX_ERROR_HEADER + '…'.len_utf8());
        assert!(v.ends_with('…'));
    }
}
