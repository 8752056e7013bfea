//! The start step: connect, then bind the stream and the JetStream consumer (creating
//! what the builder said to create), and check the dead-letter subject — each failure an
//! [`Error`] that names what is missing and how to fix it.

use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, Info};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, GetStreamErrorKind};
use async_nats::{Client, Event};
use tokio::sync::mpsc::UnboundedSender;

use crate::error::{Error, redact};
use crate::settings::{Settings, StreamSpec};

/// What the consumer's task hears besides messages.
#[derive(Debug)]
pub(crate) enum Control {
    /// The service's stopping token fired: drain.
    Stop,
    /// A connection event from async-nats.
    Connection(Event),
}

/// The consumer as bound on the server.
#[derive(Clone, Debug)]
pub(crate) struct Bound {
    /// The consumer's AckWait, as the server has it.
    pub(crate) ack_wait: Duration,
    /// The largest batch a pull request may ask for.
    pub(crate) max_batch: usize,
    /// A pull request's expiry (at most the consumer's `max_expires`).
    pub(crate) expires: Duration,
    /// A pull request's idle heartbeat (below half its expiry, as the server requires).
    pub(crate) idle_heartbeat: Duration,
    /// The consumer's own `max_deliver` (`None`: unlimited): a message handed back on
    /// this delivery is never delivered again.
    pub(crate) max_deliver: Option<u64>,
}

/// Connects, with an event callback that forwards every connection event to `control`.
/// Fails at once if the server cannot be reached (no retry on the initial connect).
pub(crate) async fn connect(
    settings: &Settings,
    control: UnboundedSender<Control>,
) -> Result<Client, Error> {
    let options = settings
        .connect_options
        .clone()
        .event_callback(move |event| {
            let control = control.clone();
            async move {
                let _ = control.send(Control::Connection(event));
            }
        });
    options
        .connect(settings.url.as_str())
        .await
        .map_err(|source| Error::Connect {
            url: redact(&settings.url),
            source,
        })
}

/// Binds (or creates) the stream and the consumer, and checks the dead-letter subject.
pub(crate) async fn bind(
    settings: &Settings,
    jetstream: &async_nats::jetstream::Context,
) -> Result<Bound, Error> {
    let url = redact(&settings.url);
    let stream_name = &*settings.stream_name;
    let stream = match &settings.stream {
        StreamSpec::Bind(name) => jetstream
            .get_stream(name)
            .await
            .map_err(|e| match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Error::StreamNotFound {
                        stream: name.clone(),
                        url: url.clone(),
                    }
                }
                GetStreamErrorKind::JetStream(js) if not_enabled(js.error_code()) => {
                    Error::JetStreamUnavailable {
                        url: url.clone(),
                        detail: js.to_string(),
                    }
                }
                GetStreamErrorKind::Request if e.to_string().contains("no responders") => {
                    Error::JetStreamUnavailable {
                        url: url.clone(),
                        detail: "no responders on the JetStream API".into(),
                    }
                }
                _ => Error::api(format!("look up stream '{name}'"), e),
            })?,
        StreamSpec::Create(config) => jetstream
            .get_or_create_stream((**config).clone())
            .await
            .map_err(|e| {
                if e.to_string().contains("no responders") {
                    Error::JetStreamUnavailable {
                        url: url.clone(),
                        detail: "no responders on the JetStream API".into(),
                    }
                } else {
                    Error::api(format!("create stream '{stream_name}'"), e)
                }
            })?,
    };

    let consumer = &*settings.consumer;
    let info: Info = match stream.consumer_info(consumer).await {
        Ok(info) => info,
        Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
            let created = stream
                .create_consumer(settings.consumer_config.clone())
                .await
                .map_err(|e| {
                    Error::api(
                        format!("create consumer '{consumer}' on stream '{stream_name}'"),
                        e,
                    )
                })?;
            tracing::info!(
                stream = stream_name,
                consumer,
                "created the JetStream consumer"
            );
            created.cached_info().clone()
        }
        Err(e) => {
            return Err(Error::api(
                format!("look up consumer '{consumer}' on stream '{stream_name}'"),
                e,
            ));
        }
    };
    let mismatch = |message: String| Error::ConsumerMismatch {
        stream: stream_name.to_owned(),
        consumer: consumer.to_owned(),
        message,
    };
    if let Some(deliver_subject) = &info.config.deliver_subject {
        return Err(mismatch(format!(
            "it is a push consumer (deliver subject '{deliver_subject}'); this consumer pulls, so \
             use a pull consumer (no deliver subject) or another name"
        )));
    }
    if info.config.ack_policy != AckPolicy::Explicit {
        return Err(mismatch(format!(
            "its ack policy is {:?}; messages are acked one by one after their handler \
             succeeded, which needs AckPolicy::Explicit",
            info.config.ack_policy
        )));
    }

    // JetStream stops delivering after its own `max_deliver`. At or below ours, a message
    // would be stranded (neither delivered again nor dead-lettered): below, one that keeps
    // failing; equal, one handed back (a shutdown, a lost connection) on its last delivery
    // — it was never given the delivery on which it would be dead-lettered. So a finite
    // `max_deliver` must leave at least one delivery of headroom.
    let max_deliver = info.config.max_deliver;
    if max_deliver > 0 && u64::try_from(max_deliver).unwrap_or(0) <= settings.max_deliveries {
        let max_deliveries = settings.max_deliveries;
        let relation = if u64::try_from(max_deliver).unwrap_or(0) < max_deliveries {
            "is below"
        } else {
            "equals"
        };
        return Err(mismatch(format!(
            "its max_deliver ({max_deliver}) {relation} max_deliveries ({max_deliveries}); it \
             must be greater: JetStream stops delivering at max_deliver, so a message handed \
             back on delivery {max_deliver} (at a shutdown or a lost connection) — or, below \
             max_deliveries, failing on it — would be stranded, never delivered again nor \
             dead-lettered; set the consumer's max_deliver to -1 (or at least {}), or lower \
             max_deliveries",
            max_deliveries.saturating_add(1)
        )));
    }

    if let Some(subject) = &settings.dead_letter {
        jetstream
            .stream_by_subject(subject.clone())
            .await
            .map_err(|e| match e.kind() {
                GetStreamByNameErrorKind::NotFound => Error::DeadLetterNotCaptured {
                    subject: subject.clone(),
                },
                _ => Error::api(format!("find the stream capturing '{subject}'"), e),
            })?;
    }

    Ok(bound(settings, &info))
}

/// The pull parameters that fit the consumer's limits.
fn bound(settings: &Settings, info: &Info) -> Bound {
    let ack_wait = if info.config.ack_wait.is_zero() {
        Duration::from_secs(30) // the server's default
    } else {
        info.config.ack_wait
    };
    let max_batch = usize::try_from(info.config.max_batch)
        .ok()
        .filter(|&b| b > 0)
        .unwrap_or(usize::MAX);
    let expires = if info.config.max_expires.is_zero() {
        settings.expires
    } else {
        settings.expires.min(info.config.max_expires)
    };
    Bound {
        ack_wait,
        max_batch,
        expires,
        idle_heartbeat: settings.idle_heartbeat.min(expires / 3),
        max_deliver: u64::try_from(info.config.max_deliver)
            .ok()
            .filter(|&n| n > 0),
    }
}

fn not_enabled(code: ErrorCode) -> bool {
    code == ErrorCode::JETSTREAM_NOT_ENABLED || code == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
}
