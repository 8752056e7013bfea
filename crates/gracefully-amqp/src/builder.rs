//! [`ConsumerBuilder`]: the consumer's settings, checked once in
//! [`build`](ConsumerBuilder::build) into the [`Config`] it runs with.

use std::future::Future;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use gracefully::CancellationToken;
use lapin::BasicProperties;
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use serde::de::DeserializeOwned;

use crate::BoxError;
use crate::config::Config;
use crate::consumer::Consumer;
use crate::decode::{Decode, DecodeFn, Json, Raw};
use crate::error::{ConfigError, redact};
use crate::handler::Typed;
use crate::message::Message;
use crate::retry::{Backoff, DeadLetter, Target};

/// Settings for a [`Consumer`]; start with [`Consumer::builder`], end with
/// [`build`](Self::build). `D` is the decoder: [`Raw`] until you pick one with
/// [`decode`](Self::decode) (JSON) or [`decode_with`](Self::decode_with).
///
/// | setting | default | what it does |
/// |---|---|---|
/// | [`declare`](Self::declare) | off: the queue must exist | declare the queue (durable) if it is missing |
/// | [`queue_arguments`](Self::queue_arguments) | none | arguments for that declare (`x-queue-type`, …) |
/// | [`bind`](Self::bind) | none | bind the queue to an exchange (which must exist) |
/// | [`concurrency`](Self::concurrency) | 16 | handlers running at once |
/// | [`prefetch`](Self::prefetch) | 2 × concurrency | unacked messages the broker sends ahead (`basic.qos`) |
/// | [`max_deliveries`](Self::max_deliveries) | 5 | failed deliveries before a message is dead-lettered |
/// | [`retry_backoff`](Self::retry_backoff) | 1 s doubling to 60 s | delay before a failed message is delivered again |
/// | [`dead_letter`](Self::dead_letter) | queue `<queue>.dead` | where given-up messages go |
/// | [`reconnect_backoff`](Self::reconnect_backoff) | 100 ms doubling to 10 s, ±20% | delay between reconnect attempts |
/// | [`connect_timeout`](Self::connect_timeout) | 10 s | limit on one connection attempt |
/// | [`connection_name`](Self::connection_name) | `gracefully-amqp <queue> pid <pid>` | the name RabbitMQ shows for the connection |
///
/// *Anchors:* MassTransit's `ReceiveEndpoint(queue, e => { e.PrefetchCount = …;
/// e.ConcurrentMessageLimit = …; e.UseMessageRetry(…); })`, NServiceBus's
/// `LimitMessageProcessingConcurrencyTo` and recoverability settings. Unlike both, a
/// configuration that cannot work is refused by `build`, before anything connects.
#[must_use = "a builder does nothing until `build` is called"]
pub struct ConsumerBuilder<D = Raw> {
    url: String,
    queue: String,
    declare: bool,
    queue_arguments: FieldTable,
    bindings: Vec<(String, String)>,
    concurrency: usize,
    prefetch: Option<u32>,
    max_deliveries: u32,
    retry_backoff: Backoff,
    dead_letter: Option<DeadLetter>,
    reconnect_backoff: Backoff,
    connect_timeout: Duration,
    connection_name: Option<String>,
    decoder: D,
}

impl ConsumerBuilder<Raw> {
    pub(crate) fn new(url: String, queue: String) -> ConsumerBuilder<Raw> {
        ConsumerBuilder {
            url,
            queue,
            declare: false,
            queue_arguments: FieldTable::default(),
            bindings: Vec::new(),
            concurrency: 16,
            prefetch: None,
            max_deliveries: 5,
            retry_backoff: Backoff::default(),
            dead_letter: None,
            reconnect_backoff: Backoff::exponential(
                Duration::from_millis(100),
                Duration::from_secs(10),
            ),
            connect_timeout: Duration::from_secs(10),
            connection_name: None,
            decoder: Raw,
        }
    }
}

impl<D> ConsumerBuilder<D> {
    /// Declare the queue (durable, with [`queue_arguments`](Self::queue_arguments)) if it
    /// does not exist. Without this, a missing queue fails the start with
    /// [`Error::QueueNotFound`](crate::Error::QueueNotFound), naming it. An existing queue
    /// is used as it is, whatever its arguments.
    pub fn declare(mut self) -> Self {
        self.declare = true;
        self
    }

    /// Arguments for declaring the queue, e.g. `x-queue-type: quorum`.
    pub fn queue_arguments(mut self, arguments: FieldTable) -> Self {
        self.queue_arguments = arguments;
        self
    }

    /// Bind the queue to `exchange` with `routing_key` at every (re)connect. The exchange
    /// must exist; a missing one fails the start, naming it. May be called several times.
    pub fn bind(mut self, exchange: impl Into<String>, routing_key: impl Into<String>) -> Self {
        self.bindings.push((exchange.into(), routing_key.into()));
        self
    }

    /// How many handlers run at once (1 to 65,535; default 16). The prefetch is sized from
    /// it unless set with [`prefetch`](Self::prefetch).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// How many unacked messages the broker may send ahead (`basic.qos` prefetch count;
    /// default twice the concurrency, so a handler that finishes finds its next message
    /// already here). At least the concurrency, at most 65,535. The messages beyond the
    /// running handlers are the ones handed back at drain.
    pub fn prefetch(mut self, n: u32) -> Self {
        self.prefetch = Some(n);
        self
    }

    /// How many deliveries a message whose handler keeps failing gets before it is
    /// dead-lettered (at least 1; default 5; 1 means no retries; any larger value up to
    /// `u32::MAX` works, as the delays stop growing at the backoff's cap). Deliveries handed
    /// back at shutdown, after a cancellation or a lost connection do not count.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n;
        self
    }

    /// The delay before a failed message is delivered again (see [`Backoff`]).
    pub fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// Where messages go when given up on (see [`DeadLetter`]; default the queue
    /// `<queue>.dead`).
    pub fn dead_letter(mut self, target: DeadLetter) -> Self {
        self.dead_letter = Some(target);
        self
    }

    /// The delay between attempts to reconnect after a lost connection (±20% jitter).
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.reconnect_backoff = backoff;
        self
    }

    /// The limit on one connection attempt (TCP and the AMQP handshake; default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The connection name RabbitMQ shows (`rabbitmqctl list_connections client_properties`,
    /// the management UI).
    pub fn connection_name(mut self, name: impl Into<String>) -> Self {
        self.connection_name = Some(name.into());
        self
    }

    /// Decode bodies as JSON into `T` (serde). A body that is not valid JSON for `T` is
    /// dead-lettered at once.
    pub fn decode<T: DeserializeOwned + Send + 'static>(self) -> ConsumerBuilder<Json<T>> {
        self.with_decoder(Json::new())
    }

    /// Hand handlers the raw body ([`bytes::Bytes`]); the default.
    pub fn raw(self) -> ConsumerBuilder<Raw> {
        self.with_decoder(Raw)
    }

    /// Decode bodies with `decode` (protobuf, MessagePack, a content-type switch, …). An
    /// `Err` makes the message undecodable: dead-lettered at once.
    pub fn decode_with<T, E, F>(self, decode: F) -> ConsumerBuilder<DecodeFn<F>>
    where
        F: Fn(&bytes::Bytes, &BasicProperties) -> Result<T, E> + Send + Sync + 'static,
        T: Send + 'static,
        E: Into<BoxError>,
    {
        self.with_decoder(DecodeFn::new(decode, std::any::type_name::<T>()))
    }

    /// Any other [`Decode`] implementation.
    pub fn decoder<D2: Decode>(self, decoder: D2) -> ConsumerBuilder<D2> {
        self.with_decoder(decoder)
    }

    fn with_decoder<D2>(self, decoder: D2) -> ConsumerBuilder<D2> {
        ConsumerBuilder {
            url: self.url,
            queue: self.queue,
            declare: self.declare,
            queue_arguments: self.queue_arguments,
            bindings: self.bindings,
            concurrency: self.concurrency,
            prefetch: self.prefetch,
            max_deliveries: self.max_deliveries,
            retry_backoff: self.retry_backoff,
            dead_letter: self.dead_letter,
            reconnect_backoff: self.reconnect_backoff,
            connect_timeout: self.connect_timeout,
            connection_name: self.connection_name,
            decoder,
        }
    }

    /// Checks the settings and makes the consumer, with `handler` for each message:
    /// `async fn(Message<T>, CancellationToken) -> Result<(), E>`. Register it with the
    /// host: `Host::builder().service("orders", consumer)`.
    ///
    /// What each result does: `Ok` → ack. `Err` that
    /// [is a cancellation](gracefully::is_cancellation) *after the token fired* → handed
    /// back at once (`basic.nack requeue`), no delivery used up. Any other `Err`, or a
    /// panic → retried after the backoff, dead-lettered after `max_deliveries`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the setting that cannot work: the URL does not parse,
    /// `concurrency` is 0, `prefetch` is below `concurrency`, `max_deliveries` is 0, a name
    /// or routing key (the queue's, a binding's, the dead-letter target's) is too long for
    /// AMQP or empty where that reaches nothing, the dead-letter target is the queue itself.
    pub fn build<F, Fut, E>(self, handler: F) -> Result<Consumer, ConfigError>
    where
        D: Decode,
        F: Fn(Message<D::Output>, CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + 'static,
    {
        let uri = AMQPUri::from_str(&self.url).map_err(|reason| ConfigError::Url {
            reason: format!("{}: {reason}", redact(&self.url)),
        })?;
        // Room for the longest suffix we add: `.retry.<ms>ms` (at most 27 bytes) or `.dead`.
        check_name(
            "queue",
            &self.queue,
            false,
            255 - 27,
            "1 to 228 bytes (AMQP names are at most 255, and retry queues add \
             `.retry.<ms>ms`, up to 27)",
        )?;
        // Every name and key below goes into an AMQP short string (at most 255 bytes);
        // lapin panics on a longer one, at start or, for a dead-letter key, mid-run in the
        // settle task (the message left unacked, the consumer stalling). Refused here.
        for (exchange, routing_key) in &self.bindings {
            check_name(
                "bind exchange",
                exchange,
                false,
                255,
                "1 to 255 bytes (the default exchange `` cannot be bound to)",
            )?;
            check_name(
                "bind routing key",
                routing_key,
                true,
                255,
                "at most 255 bytes (an AMQP short string)",
            )?;
        }
        if let Some(dead_letter) = &self.dead_letter {
            check_dead_letter(dead_letter, &self.queue)?;
        }
        let concurrency = check_range(
            "concurrency",
            self.concurrency as u64,
            1,
            65_535,
            "1 to 65535",
        )?;
        let prefetch = self
            .prefetch
            .map_or((concurrency.saturating_mul(2)).min(65_535), u64::from);
        let prefetch = check_range(
            "prefetch",
            prefetch,
            concurrency,
            65_535,
            "at least the concurrency and at most 65535",
        )?;
        check_range(
            "max_deliveries",
            self.max_deliveries.into(),
            1,
            u32::MAX.into(),
            "at least 1",
        )?;
        check_range(
            "connect_timeout (ms)",
            u64::try_from(self.connect_timeout.as_millis()).unwrap_or(u64::MAX),
            1,
            u64::MAX,
            "more than zero",
        )?;
        let dead_letter = self
            .dead_letter
            .unwrap_or_else(|| DeadLetter::queue(format!("{}.dead", self.queue)));
        let connection_name = self.connection_name.unwrap_or_else(|| {
            format!("gracefully-amqp {} pid {}", self.queue, std::process::id())
        });
        let config = Config {
            url_display: redact(&self.url),
            uri,
            queue: self.queue,
            declare: self.declare,
            queue_arguments: self.queue_arguments,
            bindings: self.bindings,
            concurrency: concurrency as usize,
            prefetch: u16::try_from(prefetch).unwrap_or(u16::MAX),
            max_deliveries: self.max_deliveries,
            retry_backoff: self.retry_backoff,
            dead_letter,
            reconnect_backoff: self.reconnect_backoff,
            connect_timeout: self.connect_timeout,
            connection_name,
        };
        let dispatch = Typed {
            decoder: self.decoder,
            handler,
        };
        Ok(Consumer::new(Arc::new(config), Arc::new(dispatch)))
    }
}

fn check_range(
    setting: &'static str,
    value: u64,
    min: u64,
    max: u64,
    expected: &'static str,
) -> Result<u64, ConfigError> {
    if (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::OutOfRange {
            setting,
            value,
            expected,
        })
    }
}

fn check_name(
    setting: &'static str,
    name: &str,
    empty_allowed: bool,
    max: usize,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if (name.is_empty() && !empty_allowed) || name.len() > max {
        return Err(ConfigError::Name {
            setting,
            value: name.to_owned(),
            expected,
        });
    }
    Ok(())
}

/// A dead-letter target that can work: every name fits an AMQP short string, and the
/// address reaches some queue other than the consumed one.
///
/// An empty queue name is refused: the start step's declare would make the broker invent
/// a server-named queue (a new durable one leaked at every start), and publishing to `""`
/// through the default exchange reaches no queue, so every dead letter would be handed
/// back and loop for ever. The default exchange itself (`DeadLetter::exchange("", key)`)
/// is legitimate — it routes to the queue named by the key — but then the key must not be
/// empty, for the same reason. An empty key on a named exchange is fine (a fanout, or a
/// binding with the empty key).
fn check_dead_letter(dead_letter: &DeadLetter, queue: &str) -> Result<(), ConfigError> {
    const SHORT: &str = "at most 255 bytes (an AMQP short string)";
    let reaches = match &dead_letter.target {
        Target::Queue(name) => {
            check_name(
                "dead_letter queue",
                name,
                false,
                255,
                "1 to 255 bytes (an empty name would have the broker invent a new queue at \
                 every start, which no dead letter reaches)",
            )?;
            Some(name)
        }
        Target::Exchange {
            exchange,
            routing_key,
        } => {
            check_name("dead_letter exchange", exchange, true, 255, SHORT)?;
            if exchange.is_empty() {
                check_name(
                    "dead_letter routing key",
                    routing_key,
                    false,
                    255,
                    "1 to 255 bytes with the default exchange ``, which routes by queue \
                     name: an empty key reaches no queue",
                )?;
                Some(routing_key)
            } else {
                check_name("dead_letter routing key", routing_key, true, 255, SHORT)?;
                None
            }
        }
    };
    if reaches.is_some_and(|target| target == queue) {
        return Err(ConfigError::DeadLetterToItself {
            queue: queue.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

    async fn ok(_: Message<bytes::Bytes>, _: CancellationToken) -> Result<(), BoxError> {
        Ok(())
    }

    fn build(b: ConsumerBuilder) -> Result<Consumer, ConfigError> {
        b.build(ok)
    }

    #[test]
    fn the_prefetch_defaults_to_twice_the_concurrency() {
        let c = build(Consumer::builder(URL, "q").concurrency(8)).unwrap();
        assert_eq!(c.config().prefetch, 16);
        let c = build(Consumer::builder(URL, "q").concurrency(40_000)).unwrap();
        assert_eq!(c.config().prefetch, 65_535);
    }

    #[test]
    fn settings_out_of_range_are_named_with_their_range() {
        let e = build(Consumer::builder(URL, "q").concurrency(0)).unwrap_err();
        assert_eq!(e.to_string(), "concurrency is 0; it must be 1 to 65535");
        let e = build(Consumer::builder(URL, "q").concurrency(10).prefetch(5)).unwrap_err();
        assert!(e.to_string().starts_with("prefetch is 5"), "{e}");
        let e = build(Consumer::builder(URL, "q").max_deliveries(0)).unwrap_err();
        assert!(e.to_string().starts_with("max_deliveries is 0"), "{e}");
        let e = build(Consumer::builder(URL, "")).unwrap_err();
        assert!(
            matches!(
                e,
                ConfigError::Name {
                    setting: "queue",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_bad_url_is_named_without_its_password() {
        let e = build(Consumer::builder("http://u:secret@host/", "q")).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("Invalid AMQP scheme"), "{text}");
        assert!(!text.contains("secret"), "{text}");
        assert!(
            text.contains("amqp://user:password@host:5672/vhost"),
            "{text}"
        );
        let e = build(Consumer::builder("amqp://host:notaport/", "q")).unwrap_err();
        assert!(matches!(e, ConfigError::Url { .. }), "{e}");
    }

    #[test]
    fn retry_queues_are_one_per_distinct_delay() {
        let c = build(Consumer::builder(URL, "q").max_deliveries(6).retry_backoff(
            Backoff::exponential(Duration::from_millis(100), Duration::from_millis(300)),
        ))
        .unwrap();
        assert_eq!(
            c.config().retry_delays(),
            [100, 200, 300].map(Duration::from_millis)
        );
        let c = build(Consumer::builder(URL, "q").retry_backoff(Backoff::none())).unwrap();
        assert!(c.config().retry_delays().is_empty());
        let c = build(Consumer::builder(URL, "q").max_deliveries(1)).unwrap();
        assert!(c.config().retry_delays().is_empty());
    }

    #[test]
    fn the_largest_max_deliveries_builds_and_needs_only_the_distinct_retry_delays() {
        // Used to collect one delay per possible failure (u32::MAX − 1 of them, ~64 GB)
        // at start, aborting the process.
        let c = build(Consumer::builder(URL, "q").max_deliveries(u32::MAX)).unwrap();
        assert_eq!(c.config().max_deliveries, u32::MAX);
        assert_eq!(
            c.config().retry_delays(),
            [1, 2, 4, 8, 16, 32, 60].map(Duration::from_secs)
        );
        // A backoff that never reaches its cap doubles 31 times at most, then stays put.
        let c = build(
            Consumer::builder(URL, "q")
                .max_deliveries(u32::MAX)
                .retry_backoff(Backoff::exponential(
                    Duration::from_millis(1),
                    Duration::MAX,
                )),
        )
        .unwrap();
        let delays = c.config().retry_delays();
        assert_eq!(delays.len(), 32);
        assert_eq!(delays[31], Duration::from_millis(1 << 31));
        assert_eq!(
            c.config().retry_backoff.delay(u32::MAX - 1),
            Duration::from_millis(1 << 31)
        );
        let c = build(
            Consumer::builder(URL, "q")
                .max_deliveries(u32::MAX)
                .retry_backoff(Backoff::none()),
        )
        .unwrap();
        assert!(c.config().retry_delays().is_empty());
    }

    fn name_error(b: ConsumerBuilder) -> (&'static str, String) {
        match build(b) {
            Err(e @ ConfigError::Name { setting, .. }) => (setting, e.to_string()),
            Err(e) => panic!("not a name error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn names_and_keys_longer_than_an_amqp_short_string_are_refused_naming_the_setting() {
        // lapin panics on a short string over 255 bytes: at start, or for the dead-letter
        // key in the settle task mid-run, leaving the message unacked.
        let long = "k".repeat(256);
        let max = "k".repeat(255);
        let cases = [
            (
                Consumer::builder(URL, "q").bind("amq.direct", long.as_str()),
                "bind routing key",
            ),
            (
                Consumer::builder(URL, "q").bind(long.as_str(), "rk"),
                "bind exchange",
            ),
            (
                Consumer::builder(URL, "q").dead_letter(DeadLetter::queue(long.as_str())),
                "dead_letter queue",
            ),
            (
                Consumer::builder(URL, "q").dead_letter(DeadLetter::exchange(long.as_str(), "rk")),
                "dead_letter exchange",
            ),
            (
                Consumer::builder(URL, "q")
                    .dead_letter(DeadLetter::exchange("amq.direct", long.as_str())),
                "dead_letter routing key",
            ),
            (
                Consumer::builder(URL, "q").dead_letter(DeadLetter::exchange("", long.as_str())),
                "dead_letter routing key",
            ),
            (Consumer::builder(URL, "q".repeat(229)), "queue"),
        ];
        for (b, expected) in cases {
            let (setting, text) = name_error(b);
            assert_eq!(setting, expected, "{text}");
            assert!(text.starts_with(expected), "{text}");
            assert!(text.contains(" bytes; it must be "), "{text}");
            assert!(text.contains("255") || text.contains("228"), "{text}");
        }
        // 255 bytes is the limit, not over it.
        build(
            Consumer::builder(URL, "q")
                .bind(max.as_str(), max.as_str())
                .dead_letter(DeadLetter::exchange(max.as_str(), max.as_str())),
        )
        .unwrap();
        build(Consumer::builder(URL, "q").dead_letter(DeadLetter::queue(max.as_str()))).unwrap();
        build(Consumer::builder(URL, "q".repeat(228))).unwrap();
    }

    #[test]
    fn a_dead_letter_target_that_reaches_no_queue_is_refused() {
        // An empty queue: the declare makes a server-named queue (leaked at every start)
        // and publishing to `""` reaches nothing, so each dead letter loops for ever.
        let (setting, text) =
            name_error(Consumer::builder(URL, "q").dead_letter(DeadLetter::queue("")));
        assert_eq!(setting, "dead_letter queue");
        assert!(text.starts_with("dead_letter queue is empty"), "{text}");
        // The default exchange routes by queue name: an empty key reaches nothing.
        let (setting, text) =
            name_error(Consumer::builder(URL, "q").dead_letter(DeadLetter::exchange("", "")));
        assert_eq!(setting, "dead_letter routing key");
        assert!(text.contains("default exchange"), "{text}");
        // Legitimate: the default exchange with a queue's name; a named exchange with the
        // empty key (a fanout).
        build(Consumer::builder(URL, "q").dead_letter(DeadLetter::exchange("", "q.parking")))
            .unwrap();
        build(Consumer::builder(URL, "q").dead_letter(DeadLetter::exchange("amq.fanout", "")))
            .unwrap();
        // An empty binding key is fine; the default exchange cannot be bound to.
        build(Consumer::builder(URL, "q").bind("amq.fanout", "")).unwrap();
        let (setting, _) = name_error(Consumer::builder(URL, "q").bind("", "q"));
        assert_eq!(setting, "bind exchange");
    }

    #[test]
    fn dead_lettering_to_the_consumed_queue_itself_is_refused() {
        for target in [DeadLetter::queue("q"), DeadLetter::exchange("", "q")] {
            let e = build(Consumer::builder(URL, "q").dead_letter(target)).unwrap_err();
            assert_eq!(e, ConfigError::DeadLetterToItself { queue: "q".into() });
            assert!(e.to_string().contains("`q` itself"), "{e}");
        }
    }

    #[test]
    fn the_dead_letter_queue_defaults_to_the_queue_name_dot_dead() {
        let c = build(Consumer::builder(URL, "orders")).unwrap();
        assert_eq!(c.config().dead_letter, DeadLetter::queue("orders.dead"));
    }
}
