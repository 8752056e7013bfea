//! A [`Session`]: one broker connection with the consumer's queues set up, its consuming
//! channel, a publishing channel in confirm mode (for retries and dead letters), and the
//! token its in-flight handlers hang from.
//!
//! A session is opened by the start step and again after each lost connection; when it is
//! lost, [`Session::mark_lost`] fires its token with `Disconnected` (every in-flight
//! handler's token is a child of it), and nothing sent on it afterwards can reach the
//! broker: the broker redelivers what was unacked when it noticed the connection close.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use futures_util::StreamExt;
use gracefully::{CancellationSource, CancellationToken, Reason};
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::error::Error;
use crate::retry::{Target, retry_queue_name};
use crate::stats::ConsumerStats;

/// AMQP's `NOT_FOUND` reply code.
const NOT_FOUND: u16 = 404;
/// AMQP's `PRECONDITION_FAILED` reply code (a declare whose arguments differ).
const PRECONDITION_FAILED: u16 = 406;

pub(crate) struct Session {
    pub(crate) connection: Connection,
    /// The queue consumed (for log lines).
    queue: String,
    /// Consumes, acks, nacks.
    pub(crate) channel: Channel,
    /// Publishes retries and dead letters, with confirms. Reopened if the broker closed it
    /// (a publish it refused closes only this channel, never the consuming one).
    publisher: Mutex<Option<Channel>>,
    /// Parent of every in-flight handler's token; a child of the host's hard stop.
    handlers: CancellationSource,
    lost: AtomicBool,
    /// Fired by [`Session::mark_lost`] only (unlike `handlers`, which the hard stop fires
    /// too): what an ack or nack in progress races, since lapin may never resolve one
    /// whose frame was queued on a connection that then died.
    lost_signal: CancellationSource,
    /// The task watching the connection's events ([`watch`]); aborted when the session is
    /// dropped.
    watcher: std::sync::Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Session {
    fn drop(&mut self) {
        let watcher = self
            .watcher
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(watcher) = watcher.take() {
            watcher.abort();
        }
    }
}

/// The log line of a session found lost (by the consume loop or the connection watch).
pub(crate) fn log_lost(queue: &str, in_flight: u64, why: &str) {
    tracing::warn!(
        queue = %queue,
        in_flight,
        "{why}; the in-flight handlers' tokens fire (Disconnected) and their messages will be redelivered; reconnecting"
    );
}

/// Watches `session`'s connection for an error lapin reports (the socket cut or closed, a
/// missed heartbeat, the broker closing the connection) and marks the session lost at once:
/// the in-flight handlers' tokens fire with `Disconnected` even while the consume loop is
/// not reading deliveries — with every concurrency slot held by a running handler it waits
/// for a slot, and would see the error on the delivery stream only once one frees, which a
/// handler waiting for its token never does. Ends when the session is lost or dropped.
pub(crate) fn watch(session: &Arc<Session>, stats: ConsumerStats) {
    let events = session.connection.events_listener();
    let weak = Arc::downgrade(session);
    let lost = session.lost_signal.token();
    let handle = tokio::spawn(async move {
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                _ = lost.cancelled() => return,
                event = events.next() => event,
            };
            match event {
                None => return,
                Some(lapin::Event::Error(error)) => {
                    let Some(session) = weak.upgrade() else {
                        return;
                    };
                    // lapin reports a channel the broker closed (a publish it refused closes
                    // the publishing channel, which is reopened) the same way: only a
                    // connection that is no longer connected is lost.
                    if session.connection.status().connected() {
                        continue;
                    }
                    let why = format!("the broker connection failed: {error}");
                    let in_flight = stats.in_flight();
                    if session.mark_lost(why.clone()) {
                        log_lost(&session.queue, in_flight, &why);
                    }
                    return;
                }
                Some(_) => {}
            }
        }
    });
    let mut watcher = session
        .watcher
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    *watcher = Some(handle.abort_handle());
}

/// Why a publish did not happen.
#[derive(Debug)]
pub(crate) enum PublishError {
    /// The channel or connection failed.
    Broker(lapin::Error),
    /// The broker could not route it (`basic.return`) or refused it (`basic.nack`).
    Refused(&'static str),
    /// The connection was found lost while waiting for the confirm.
    Lost,
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::Broker(e) => write!(f, "{e}"),
            PublishError::Refused(why) => f.write_str(why),
            PublishError::Lost => {
                f.write_str("the connection was lost before the broker confirmed it")
            }
        }
    }
}

impl Session {
    /// Connects and sets up the queues (see the crate docs, "Queues"). Bounded by the
    /// connect timeout for the connection itself.
    pub(crate) async fn open(
        config: &Config,
        hard_stop: &CancellationToken,
    ) -> Result<Session, Error> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(config.connection_name.as_str()));
        let connecting = Connection::connect_uri(config.uri.clone(), properties);
        let connection = match tokio::time::timeout(config.connect_timeout, connecting).await {
            Ok(Ok(connection)) => connection,
            Ok(Err(source)) => {
                return Err(Error::Connect {
                    url: config.url_display.clone(),
                    source,
                });
            }
            Err(_) => {
                return Err(Error::ConnectTimeout {
                    url: config.url_display.clone(),
                    after: config.connect_timeout,
                });
            }
        };
        let setup = Setup {
            connection: &connection,
            config,
        };
        let channel = setup.channel("opening a channel").await?;
        setup.queues(&channel).await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await
            .map_err(|source| Error::Setup {
                step: format!("setting the prefetch to {}", config.prefetch),
                source,
            })?;
        let publisher = setup.publisher().await?;
        Ok(Session {
            connection,
            channel,
            publisher: Mutex::new(Some(publisher)),
            handlers: hard_stop.child(),
            lost: AtomicBool::new(false),
            lost_signal: CancellationSource::new(),
            watcher: std::sync::Mutex::new(None),
            queue: config.queue.clone(),
        })
    }

    /// A token for one message's handler: a child of this session's, so it fires at hard
    /// stop (`Shutdown`) or when this connection is lost (`Disconnected`).
    pub(crate) fn handler_token(&self) -> CancellationSource {
        self.handlers.token().child()
    }

    /// Records that the connection is gone and fires every in-flight handler's token with
    /// `Disconnected`. Returns whether this call did it.
    pub(crate) fn mark_lost(&self, why: String) -> bool {
        if self.lost.swap(true, Ordering::AcqRel) {
            return false;
        }
        let reason = Reason::disconnected().with_message(why);
        self.lost_signal.cancel_with(reason.clone());
        self.handlers.cancel_with(reason);
        true
    }

    /// `settling` (an ack or a nack), or `None` if the connection is found lost first.
    /// A settle on a connection that died after it was sent can wait for ever in lapin;
    /// the connection watch ([`watch`]) marks the session lost, which ends the wait.
    pub(crate) async fn unless_lost<T>(&self, settling: impl Future<Output = T>) -> Option<T> {
        self.lost_signal
            .token()
            .run_until_cancelled(settling)
            .await
            .ok()
    }

    /// Fires when the session is marked lost (by the consume loop or the connection watch).
    pub(crate) fn lost_token(&self) -> CancellationToken {
        self.lost_signal.token()
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// Publishes `body` with `properties` to `exchange`/`routing_key`, mandatory, and
    /// waits for the broker's confirm. Only a confirmed, routed publish is `Ok`.
    pub(crate) async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        self.unless_lost(self.publish_confirmed(exchange, routing_key, body, properties))
            .await
            .unwrap_or(Err(PublishError::Lost))
    }

    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let channel = self.publisher_channel().await?;
        let confirm = channel
            .basic_publish(
                ShortString::from(exchange),
                ShortString::from(routing_key),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                properties,
            )
            .await
            .map_err(PublishError::Broker)?
            .await
            .map_err(PublishError::Broker)?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(PublishError::Refused(
                "the broker could not route it (no queue bound for that routing key)",
            )),
            Confirmation::Nack(_) => Err(PublishError::Refused(
                "the broker refused it (basic.nack: it could not store it)",
            )),
            Confirmation::NotRequested => Ok(()),
        }
    }

    /// The publishing channel, reopened if the broker closed it.
    async fn publisher_channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.publisher.lock().await;
        if let Some(channel) = slot.as_ref().filter(|c| c.status().connected()) {
            return Ok(channel.clone());
        }
        let channel = self
            .connection
            .create_channel()
            .await
            .map_err(PublishError::Broker)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(PublishError::Broker)?;
        *slot = Some(channel.clone());
        Ok(channel)
    }

    /// Closes the channels and the connection politely (code 200). Errors are ignored: a
    /// connection that is already gone is closed enough.
    pub(crate) async fn close(&self) {
        if self.is_lost() {
            return;
        }
        let close = async {
            let _ = self
                .channel
                .close(200, ShortString::from("consumer stopped"))
                .await;
            let _ = self
                .connection
                .close(200, ShortString::from("consumer stopped"))
                .await;
        };
        // Bounded: a broker that stopped answering must not hold up the stop step.
        let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
    }
}

impl Session {
    /// After a loss: closes the connection if it is somehow still open (only the channel
    /// failed, or the broker cancelled the consumer), so the broker requeues what this
    /// session had unacked. Bounded, errors ignored.
    pub(crate) async fn close_after_loss(&self) {
        let closing = self.connection.close(
            200,
            ShortString::from("consumer lost its channel; reconnecting"),
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), closing).await;
    }
}

/// The steps of setting up a fresh connection.
struct Setup<'a> {
    connection: &'a Connection,
    config: &'a Config,
}

impl Setup<'_> {
    async fn channel(&self, step: &str) -> Result<Channel, Error> {
        self.connection
            .create_channel()
            .await
            .map_err(|source| Error::Setup {
                step: step.to_owned(),
                source,
            })
    }

    /// The work queue (checked, or declared if allowed), its bindings, the retry queues,
    /// and the dead-letter target.
    async fn queues(&self, channel: &Channel) -> Result<(), Error> {
        let config = self.config;
        if config.declare {
            self.ensure_queue(&config.queue, config.queue_arguments.clone())
                .await?;
        } else if !self.queue_exists(&config.queue).await? {
            return Err(Error::QueueNotFound {
                queue: config.queue.clone(),
                vhost: config.uri.vhost.clone(),
            });
        }
        for (exchange, routing_key) in &config.bindings {
            self.exchange_exists(exchange, "to bind the queue to")
                .await?;
            channel
                .queue_bind(
                    ShortString::from(config.queue.as_str()),
                    ShortString::from(exchange.as_str()),
                    ShortString::from(routing_key.as_str()),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|source| Error::Setup {
                    step: format!(
                        "binding queue `{}` to exchange `{exchange}` with routing key `{routing_key}`",
                        config.queue
                    ),
                    source,
                })?;
        }
        for delay in config.retry_delays() {
            let mut args = FieldTable::default();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(config.queue.as_str().into()),
            );
            self.ensure_queue(&retry_queue_name(&config.queue, delay), args)
                .await?;
        }
        match &config.dead_letter.target {
            Target::Queue(name) => self.ensure_queue(name, FieldTable::default()).await?,
            Target::Exchange { exchange, .. } => {
                self.exchange_exists(exchange, "the dead-letter target")
                    .await?;
            }
        }
        Ok(())
    }

    /// Declares a durable queue — or, if one of that name exists with other arguments
    /// (the broker answers `PRECONDITION_FAILED`), uses it as it is. On a channel of its
    /// own, since a refused declare closes the channel it was made on.
    async fn ensure_queue(&self, queue: &str, arguments: FieldTable) -> Result<(), Error> {
        let setup = self.channel("opening a channel").await?;
        let declared = setup
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await;
        match declared {
            Ok(_) => {
                let _ = setup.close(200, ShortString::from("declared")).await;
                Ok(())
            }
            Err(e)
                if reply_code(&e) == Some(PRECONDITION_FAILED)
                    && self.queue_exists(queue).await? =>
            {
                tracing::info!(
                    queue,
                    "the queue exists with other arguments than ours; using it as it is"
                );
                Ok(())
            }
            Err(source) => Err(Error::Setup {
                step: format!("declaring queue `{queue}`"),
                source,
            }),
        }
    }

    /// A passive declare on a channel of its own: a `NOT_FOUND` closes the channel it was
    /// asked on.
    async fn queue_exists(&self, queue: &str) -> Result<bool, Error> {
        let probe = self.channel("opening a channel").await?;
        let checked = probe
            .queue_declare(
                ShortString::from(queue),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match checked {
            Ok(_) => {
                let _ = probe.close(200, ShortString::from("checked")).await;
                Ok(true)
            }
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => Ok(false),
            Err(source) => Err(Error::Setup {
                step: format!("checking that queue `{queue}` exists"),
                source,
            }),
        }
    }

    async fn exchange_exists(&self, exchange: &str, purpose: &'static str) -> Result<(), Error> {
        if exchange.is_empty() {
            return Ok(()); // the default exchange always exists
        }
        let probe = self.channel("opening a channel").await?;
        let checked = probe
            .exchange_declare(
                ShortString::from(exchange),
                ExchangeKind::Direct, // ignored by a passive declare
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        match checked {
            Ok(()) => {
                let _ = probe.close(200, ShortString::from("checked")).await;
                Ok(())
            }
            Err(e) if reply_code(&e) == Some(NOT_FOUND) => Err(Error::ExchangeNotFound {
                exchange: exchange.to_owned(),
                vhost: self.config.uri.vhost.clone(),
                purpose,
            }),
            Err(source) => Err(Error::Setup {
                step: format!("checking that exchange `{exchange}` exists"),
                source,
            }),
        }
    }

    async fn publisher(&self) -> Result<Channel, Error> {
        let channel = self.channel("opening the publishing channel").await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|source| Error::Setup {
                step: "turning on publisher confirms".to_owned(),
                source,
            })?;
        Ok(channel)
    }
}

/// The broker's reply code, if the error is the broker's answer.
fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(e) => Some(e.get_id()),
        _ => None,
    }
}
