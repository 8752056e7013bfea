//! [`Consumer`]: the host service — start step (connect and bind), execute (a
//! [`Session`]), stop step (flush and close).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::{BackgroundService, BoxError, ServiceContext};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use crate::decode::Decode;
use crate::error::redact;
use crate::handler::Handler;
use crate::session::{Parts, Session};
use crate::settings::Settings;
use crate::settle::Shared;
use crate::setup::{self, Bound, Control};

/// A JetStream pull consumer that runs as a [`gracefully_host`] service and keeps the
/// shutdown contract: at the drain it stops pulling and hands back (`-NAK`) every message
/// it fetched but did not start, so another consumer gets it at once; in-flight handlers
/// may finish and are acked; at the hard stop their tokens fire and a handler that returns
/// `Cancelled` has its message handed back. See the crate docs for the whole contract.
///
/// Build one with [`Consumer::builder`], register it with
/// [`HostBuilder::service`](gracefully_host::HostBuilder::service):
///
/// ```no_run
/// use gracefully::CancellationToken;
/// use gracefully_host::Host;
/// use gracefully_nats::{Consumer, Message};
///
/// #[derive(serde::Deserialize)]
/// struct Order { item: String }
///
/// async fn bill(order: Message<Order>, token: CancellationToken) -> Result<(), std::io::Error> {
///     let _ = (order.payload(), token); // the work; pass the token on to what it awaits
///     Ok(())
/// }
///
/// #[tokio::main]
/// async fn main() {
///     let billing = Consumer::builder("nats://127.0.0.1:4222")
///         .stream("ORDERS")
///         .consumer("billing")
///         .decode::<Order>()
///         .handler(bill)
///         .build()
///         .expect("valid configuration");
///     Host::builder()
///         .service("billing", billing)
///         .build()
///         .expect("valid configuration")
///         .run_and_exit() // SIGTERM → drain → cancel → abort → report → exit code
///         .await
/// }
/// ```
///
/// Its row of the shutdown report counts `handled`, `handed back at drain`, `cancelled
/// and handed back`, `in flight at abort`, `retried`, `dead-lettered`, `disconnects`,
/// `handed back at disconnect` and `left for AckWait`. The hand-back counts count what was
/// sent; `left for AckWait` what could not be (the connection was down), which JetStream
/// redelivers after AckWait.
///
/// *Anchors:* .NET's MassTransit receive endpoint (a consumer with a concurrency limit and
/// a prefetch, stopped by the host) and nats.net's `ConsumeAsync` with its drain options;
/// nats.go's `Consume`/`Drain` (which does not wait for in-flight handlers). async-nats's
/// `messages()` stream has no drain at all: its buffered messages wait out AckWait.
pub struct Consumer<D, H> {
    settings: Arc<Settings>,
    parts: Option<(D, H)>,
    started: Option<Started<D, H>>,
}

/// What the start step set up, kept across restarts of `execute`.
struct Started<D, H> {
    shared: Arc<Shared<D, H>>,
    bound: Bound,
    control: UnboundedReceiver<Control>,
    control_tx: UnboundedSender<Control>,
    /// `execute` has run before: bind again first (the consumer may have been deleted).
    ran: bool,
}

impl<D, H> Consumer<D, H> {
    pub(crate) fn new(settings: Settings, decoder: D, handler: H) -> Consumer<D, H> {
        Consumer {
            settings: Arc::new(settings),
            parts: Some((decoder, handler)),
            started: None,
        }
    }
}

impl<D: Decode, H: Handler<D::Output>> BackgroundService for Consumer<D, H> {
    /// Connects and binds the stream and the JetStream consumer (creating what it was
    /// configured to create). Fails — and so stops the host — with an [`Error`](crate::Error) naming the
    /// URL, stream, consumer or dead-letter subject at fault.
    ///
    /// # Cancel safety
    ///
    /// Dropped at the startup timeout; nothing is left half done (a created stream or
    /// consumer stays, and is reused at the next start).
    async fn start(&mut self, cx: &ServiceContext) -> Result<(), BoxError> {
        let settings = &self.settings;
        let (control_tx, control) = unbounded_channel();
        let client = setup::connect(settings, control_tx.clone()).await?;
        let jetstream = async_nats::jetstream::new(client.clone());
        let bound = setup::bind(settings, &jetstream).await?;
        let Some((decoder, handler)) = self.parts.take() else {
            return Err("the consumer was already started".into());
        };
        cx.detail(
            "consumer",
            format!(
                "{}/{} at {}",
                settings.stream_name,
                settings.consumer,
                redact(&settings.url)
            ),
        );
        tracing::info!(
            stream = %settings.stream_name,
            consumer = %settings.consumer,
            concurrency = settings.concurrency,
            prefetch = settings.prefetch,
            ack_wait_ms = bound.ack_wait.as_millis() as u64,
            "consuming"
        );
        self.started = Some(Started {
            shared: Arc::new(Shared {
                client,
                jetstream,
                stream: Arc::clone(&settings.stream_name),
                consumer: Arc::clone(&settings.consumer),
                operation: format!("{}/{}", settings.stream_name, settings.consumer).into(),
                max_deliveries: settings.max_deliveries,
                backoff: settings.backoff,
                dead_letter: settings.dead_letter.clone(),
                decoder,
                handler,
            }),
            bound,
            control,
            control_tx,
            ran: false,
        });
        Ok(())
    }

    /// Pulls and handles messages until `stopping` fires, then drains (see [`Consumer`]).
    ///
    /// # Cancel safety
    ///
    /// Dropped only in the abort phase: the messages it still holds are handed back where
    /// the connection takes it at once, and counted as in flight at abort.
    async fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> Result<(), BoxError> {
        let settings = Arc::clone(&self.settings);
        let Some(started) = self.started.as_mut() else {
            return Err("the consumer's start step did not run".into());
        };
        if started.ran {
            started.bound = setup::bind(&settings, &started.shared.jetstream).await?;
        }
        started.ran = true;
        let parts = Parts {
            shared: &started.shared,
            bound: &started.bound,
            control: &mut started.control,
            control_tx: &started.control_tx,
            concurrency: settings.concurrency,
            prefetch: settings.prefetch,
        };
        let mut session = Session::open(parts, cx).await?;
        session.run(&stopping).await?;
        Ok(())
    }

    /// Flushes what is still unsent (acks, hand-backs) and closes the connection.
    ///
    /// # Cancel safety
    ///
    /// Dropped only in the abort phase; the connection then closes when dropped.
    async fn stop(&mut self, _cx: &ServiceContext) -> Result<(), BoxError> {
        if let Some(started) = self.started.take() {
            let client = started.shared.client.clone();
            drop(started);
            if client.connection_state() == async_nats::connection::State::Connected {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.drain()).await;
            }
        }
        Ok(())
    }
}

impl<D, H> fmt::Debug for Consumer<D, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("settings", &self.settings)
            .field("started", &self.started.is_some())
            .finish_non_exhaustive()
    }
}
