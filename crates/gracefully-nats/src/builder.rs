//! [`ConsumerBuilder`] and the validation behind [`Error::Config`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_nats::jetstream::{consumer::pull, stream};
use async_nats::{ConnectOptions, ServerAddr};
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::backoff::Backoff;
use crate::consumer::Consumer;
use crate::decode::{Decode, DecodeFn, Json, Raw};
use crate::error::Error;
use crate::handler::Handler;
use crate::settings::{Settings, StreamSpec};

/// The most handlers a consumer may run at once.
const MAX_CONCURRENCY: usize = 100_000;

/// A handler not chosen yet: the builder's state before
/// [`handler`](ConsumerBuilder::handler); `build` needs a handler.
#[derive(Clone, Copy, Debug)]
pub struct NoHandler;

/// Builds a [`Consumer`]: where to consume from, how many messages at once, what happens to
/// failures, how payloads decode, and the handler. Made by [`Consumer::builder`].
///
/// ```
/// use std::time::Duration;
/// use async_nats::jetstream::{consumer::pull, stream};
/// use gracefully::CancellationToken;
/// use gracefully_nats::{Backoff, Consumer, Message};
///
/// #[derive(serde::Deserialize)]
/// struct Order { item: String }
///
/// async fn handle(order: Message<Order>, token: CancellationToken) -> Result<(), std::io::Error> {
///     let _ = (order, token);
///     Ok(())
/// }
///
/// let consumer = Consumer::builder("nats://127.0.0.1:4222")
///     .create_stream(stream::Config {                   // or .stream("ORDERS") to bind only
///         name: "ORDERS".into(),
///         subjects: vec!["orders.>".into()],
///         ..Default::default()
///     })
///     .consumer("billing")                              // durable; created if missing
///     .consumer_config(pull::Config {                   // used when creating it
///         filter_subject: "orders.created".into(),
///         ack_wait: Duration::from_secs(30),
///         ..Default::default()
///     })
///     .concurrency(32)                                  // handlers at once; prefetch 32 more
///     .max_deliveries(5)
///     .backoff(Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60)))
///     .dead_letter("orders.dead")                       // a stream must capture it
///     .decode::<Order>()                                // JSON; without it: raw Bytes
///     .handler(handle)
///     .build()
///     .expect("valid configuration");
/// # let _ = consumer;
/// ```
///
/// Nothing touches the network until the host starts the consumer: `build` checks only the
/// settings (the URL's syntax included); the start step connects and binds.
///
/// *Anchors:* MassTransit's `ReceiveEndpoint(…, e => { e.ConcurrentMessageLimit = …;
/// e.PrefetchCount = …; e.UseMessageRetry(…) })`; nats.go's `jetstream.ConsumerConfig` plus
/// the `PullMaxMessages` option of `Consume`. Unlike nats.go, the consumer's JetStream
/// settings (`consumer_config`) only apply when it is created; an existing consumer is
/// bound as it is.
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConsumerBuilder<D = Raw, H = NoHandler> {
    draft: Draft,
    decoder: D,
    handler: H,
}

/// The settings as given, not yet checked: everything but the decoder and the handler.
/// (No `Debug`: the URL may carry a password.)
struct Draft {
    url: String,
    connect_options: Option<ConnectOptions>,
    stream: Option<StreamSpec>,
    consumer: Option<String>,
    consumer_config: pull::Config,
    concurrency: usize,
    prefetch: Option<usize>,
    max_deliveries: u64,
    backoff: Backoff,
    dead_letter: Option<String>,
}

impl Consumer<(), ()> {
    /// A builder for a consumer of the NATS server(s) at `url` (`nats://host:port`, several
    /// separated by commas; `tls://` for TLS). (Defined beside the builder, so the consumer
    /// does not import it back.)
    pub fn builder(url: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder::new(url.into())
    }
}

impl ConsumerBuilder {
    fn new(url: String) -> ConsumerBuilder {
        ConsumerBuilder {
            draft: Draft {
                url,
                connect_options: None,
                stream: None,
                consumer: None,
                consumer_config: pull::Config::default(),
                concurrency: 16,
                prefetch: None,
                max_deliveries: 5,
                backoff: Backoff::default(),
                dead_letter: None,
            },
            decoder: Raw,
            handler: NoHandler,
        }
    }
}

impl<D, H> ConsumerBuilder<D, H> {
    /// Options for the connection: credentials, TLS, a client name, the reconnect delays
    /// (async-nats's default: at once, then doubling up to 4 s, for ever). The consumer
    /// replaces only the event callback: it must see disconnects, and it logs every event
    /// through `tracing`. Default: `ConnectOptions::new()` (a 5 s connection timeout).
    /// Leave `retry_on_initial_connect` off: with it, an unreachable server is reported
    /// late, as a JetStream timeout, instead of by the start step's connect error.
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.draft.connect_options = Some(options);
        self
    }

    /// Binds an existing stream. The start step fails with [`Error::StreamNotFound`],
    /// naming the stream and the server, if it does not exist.
    pub fn stream(mut self, name: impl Into<String>) -> Self {
        self.draft.stream = Some(StreamSpec::Bind(name.into()));
        self
    }

    /// Binds the stream `config.name`, creating it with `config` if it does not exist. An
    /// existing stream is used as it is (never updated).
    pub fn create_stream(mut self, config: stream::Config) -> Self {
        self.draft.stream = Some(StreamSpec::Create(Box::new(config)));
        self
    }

    /// The durable JetStream pull consumer to bind. Created (from
    /// [`consumer_config`](Self::consumer_config)) if it does not exist; an existing one
    /// must be a pull consumer with explicit acks, and its own `ack_wait` is the one
    /// progress is timed against.
    pub fn consumer(mut self, name: impl Into<String>) -> Self {
        self.draft.consumer = Some(name.into());
        self
    }

    /// The configuration the consumer is created with if it does not exist (filter
    /// subject, `ack_wait`, `max_ack_pending`, …). Its name becomes
    /// [`consumer`](Self::consumer)'s and its ack policy explicit. Default:
    /// `pull::Config::default()` (AckWait 30 s, every subject of the stream).
    pub fn consumer_config(mut self, config: pull::Config) -> Self {
        self.draft.consumer_config = config;
        self
    }

    /// How many handlers run at once. Default 16. Valid: `1 ..= 100000`. Handlers run
    /// concurrently on the consumer's task (like `StreamExt::for_each_concurrent`); see the
    /// crate docs, "Concurrency and prefetch".
    pub fn concurrency(mut self, handlers: usize) -> Self {
        self.draft.concurrency = handlers;
        self
    }

    /// How many messages the consumer may hold beyond those whose handlers run: fetched
    /// (or asked for) but not started. Default: the concurrency, so a consumer holds at
    /// most twice its concurrency. 0 asks only for what it can start at once (no
    /// buffering, so nothing to hand back at a drain, at the price of a round trip per
    /// free slot). These are the messages handed back at a drain. Valid: `0 ..= 100000`.
    pub fn prefetch(mut self, messages: usize) -> Self {
        self.draft.prefetch = Some(messages);
        self
    }

    /// After how many deliveries a message whose handler keeps failing is dead-lettered.
    /// Default 5. Valid: at least 1. JetStream counts every delivery, also one handed back
    /// at a shutdown, so leave headroom (see the crate docs, "Outcomes"). A consumer whose
    /// own JetStream `max_deliver` is finite must have it greater than this: the start
    /// step refuses one that is not, as a message handed back on its last server delivery
    /// would be stranded (never delivered again, never dead-lettered).
    pub fn max_deliveries(mut self, deliveries: u64) -> Self {
        self.draft.max_deliveries = deliveries;
        self
    }

    /// The delay before a failed message is delivered again. Default:
    /// exponential from 1 s to 60 s with jitter.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.draft.backoff = backoff;
        self
    }

    /// Where dead-lettered messages go: published to `subject` (which a stream must
    /// capture: the start step checks), with headers naming the error, then terminated in
    /// their stream. Without it, such a message is only terminated (`+TERM`) and logged.
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.draft.dead_letter = Some(subject.into());
        self
    }

    /// Decodes payloads as JSON into `T` (serde). A payload that does not decode is
    /// dead-lettered at once and never reaches the handler. Without this (or
    /// [`decode_with`](Self::decode_with)) the handler gets the raw [`Bytes`].
    pub fn decode<T: DeserializeOwned + Send + 'static>(self) -> ConsumerBuilder<Json<T>, H> {
        self.with_decoder(Json::new())
    }

    /// Decodes payloads with `decode` (protobuf, MessagePack, …); an `Err` dead-letters the
    /// message at once.
    pub fn decode_with<T, E, F>(self, decode: F) -> ConsumerBuilder<DecodeFn<F>, H>
    where
        F: Fn(&Bytes) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Into<gracefully_host::BoxError>,
    {
        self.with_decoder(DecodeFn(decode))
    }

    fn with_decoder<D2>(self, decoder: D2) -> ConsumerBuilder<D2, H> {
        ConsumerBuilder {
            draft: self.draft,
            decoder,
            handler: self.handler,
        }
    }
}

impl<D: Decode, H> ConsumerBuilder<D, H> {
    /// The handler: `async fn(Message<T>, CancellationToken) -> Result<(), E>` (see
    /// [`Handler`]).
    pub fn handler<H2: Handler<D::Output>>(self, handler: H2) -> ConsumerBuilder<D, H2> {
        ConsumerBuilder {
            draft: self.draft,
            decoder: self.decoder,
            handler,
        }
    }
}

impl<D: Decode, H: Handler<D::Output>> ConsumerBuilder<D, H> {
    /// Checks the settings and builds the consumer. Never panics and never touches the
    /// network: every problem is an [`Error::Config`] naming the builder method and what
    /// would be valid.
    pub fn build(self) -> Result<Consumer<D, H>, Error> {
        let settings = self.draft.check()?;
        Ok(Consumer::new(settings, self.decoder, self.handler))
    }
}

impl Draft {
    /// Every check of [`ConsumerBuilder::build`].
    fn check(self) -> Result<Settings, Error> {
        validate_url(&self.url)?;
        let stream = self.stream.ok_or_else(|| {
            Error::config(
                "stream",
                "is not set; call .stream(name) to bind an existing stream, or \
                 .create_stream(config) to create it if missing",
            )
        })?;
        let stream_name = match &stream {
            StreamSpec::Bind(name) => name.clone(),
            StreamSpec::Create(config) => config.name.clone(),
        };
        validate_name("stream", &stream_name)?;
        let consumer = self.consumer.ok_or_else(|| {
            Error::config(
                "consumer",
                "is not set; call .consumer(name) with the durable consumer's name",
            )
        })?;
        validate_name("consumer", &consumer)?;
        let mut consumer_config = self.consumer_config;
        for (what, name) in [
            ("durable_name", &consumer_config.durable_name),
            ("name", &consumer_config.name),
        ] {
            if let Some(name) = name
                && *name != consumer
            {
                return Err(Error::config(
                    "consumer_config",
                    format!(
                        "has {what} \"{name}\", but .consumer(..) is \"{consumer}\"; leave it \
                         unset or make them equal"
                    ),
                ));
            }
        }
        consumer_config.durable_name = Some(consumer.clone());
        consumer_config.name = None;
        consumer_config.ack_policy = async_nats::jetstream::consumer::AckPolicy::Explicit;
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(Error::config(
                "concurrency",
                format!(
                    "is {}; valid: 1 ..= {MAX_CONCURRENCY} (default 16)",
                    self.concurrency
                ),
            ));
        }
        let prefetch = self.prefetch.unwrap_or(self.concurrency);
        if prefetch > MAX_CONCURRENCY {
            return Err(Error::config(
                "prefetch",
                format!("is {prefetch}; valid: 0 ..= {MAX_CONCURRENCY} (default: the concurrency)"),
            ));
        }
        if self.max_deliveries == 0 {
            return Err(Error::config(
                "max_deliveries",
                "is 0; valid: at least 1 (default 5)",
            ));
        }
        self.backoff
            .validate()
            .map_err(|message| Error::config("backoff", message))?;
        if let Some(subject) = &self.dead_letter {
            validate_subject(subject)?;
        }
        Ok(Settings {
            url: self.url,
            connect_options: self.connect_options.unwrap_or_default(),
            stream,
            stream_name: stream_name.into(),
            consumer: consumer.into(),
            consumer_config,
            concurrency: self.concurrency,
            prefetch,
            max_deliveries: self.max_deliveries,
            backoff: self.backoff,
            dead_letter: self.dead_letter,
            expires: Duration::from_secs(30),
            idle_heartbeat: Duration::from_secs(5),
        })
    }
}

impl<D: fmt::Debug, H> fmt::Debug for ConsumerBuilder<D, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("url", &crate::error::redact(&self.draft.url))
            .field("stream", &self.draft.stream)
            .field("consumer", &self.draft.consumer)
            .field("decoder", &self.decoder)
            .finish_non_exhaustive()
    }
}

/// Every comma-separated address parses as async-nats will parse it.
fn validate_url(url: &str) -> Result<(), Error> {
    if url.trim().is_empty() {
        return Err(Error::config(
            "url",
            "is empty; expected a NATS server address such as nats://127.0.0.1:4222",
        ));
    }
    for one in url.split(',') {
        if let Err(e) = ServerAddr::from_str(one.trim()) {
            return Err(Error::config(
                "url",
                format!(
                    "'{}' is not a NATS server address ({e}); expected nats://host:port \
                     (or tls://, ws://, wss://), several separated by commas",
                    crate::error::redact(one.trim())
                ),
            ));
        }
    }
    Ok(())
}

/// A stream or consumer name: non-empty, no `.`, `*`, `>`, whitespace or path separators.
fn validate_name(field: &'static str, name: &str) -> Result<(), Error> {
    let bad = |c: char| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace();
    if name.is_empty() || name.contains(bad) {
        return Err(Error::config(
            field,
            format!(
                "is \"{name}\"; valid: a non-empty name without '.', '*', '>', '/', '\\' or \
                 whitespace"
            ),
        ));
    }
    Ok(())
}

/// A subject to publish to: dot-separated non-empty tokens, no wildcards or whitespace.
fn validate_subject(subject: &str) -> Result<(), Error> {
    let ok = !subject.is_empty()
        && subject
            .split('.')
            .all(|t| !t.is_empty() && t != "*" && t != ">" && !t.contains(char::is_whitespace));
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            "dead_letter",
            format!(
                "is \"{subject}\"; valid: a subject to publish to, dot-separated tokens without \
                 wildcards or whitespace, e.g. \"orders.dead\""
            ),
        ))
    }
}
