//! Helpers shared by the broker tests: the URL (a loud failure without it), unique queue
//! names with their cleanup, publishing, a plain lapin consumer to watch what is handed
//! back, and a TCP proxy whose connections a test can cut.

#![allow(dead_code)] // each test binary uses a different subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gracefully_amqp::lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use gracefully_amqp::lapin::types::FieldTable;
use gracefully_amqp::lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, message::BasicGetMessage,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| {
        panic!(
            "these tests need RabbitMQ: set AMQP_URL, e.g. \
             AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f"
        )
    })
}

pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL too: set DATABASE_URL, e.g. \
             DATABASE_URL=postgres://postgres@127.0.0.1:5432/test"
        )
    })
}

/// A queue name unique to this test, process and call.
pub fn unique(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "gracefully-amqp-test.{test}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn connect() -> Connection {
    Connection::connect(&amqp_url(), ConnectionProperties::default())
        .await
        .expect("connect to AMQP_URL")
}

/// A connection and channel for the test's own publishing and inspection, and the queues
/// to delete when the test ends (passed or not).
pub struct Broker {
    pub connection: Connection,
    pub channel: Channel,
    queues: Mutex<Vec<String>>,
}

impl Broker {
    pub async fn new() -> Broker {
        let connection = connect().await;
        let channel = connection.create_channel().await.expect("open a channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Broker {
            connection,
            channel,
            queues: Mutex::new(Vec::new()),
        }
    }

    /// Deletes `queue` (and anything the consumer derived from it: `.dead`, `.retry.*`,
    /// which the test names with [`Broker::forget`]) when the broker handle drops.
    pub fn forget(&self, queue: impl Into<String>) {
        self.queues.lock().unwrap().push(queue.into());
    }

    /// Forgets the queues a consumer of `queue` declares: `<queue>.dead` and a retry queue
    /// for each of `retry_delays_ms` (the default backoff's are 1000, 2000, 4000, 8000).
    pub fn forget_derived(&self, queue: &str, retry_delays_ms: &[u64]) {
        self.forget(format!("{queue}.dead"));
        for ms in retry_delays_ms {
            self.forget(format!("{queue}.retry.{ms}ms"));
        }
    }

    /// Declares a durable `queue`, deleted at the end.
    pub async fn queue(&self, queue: &str) {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare the test queue");
        self.forget(queue);
    }

    /// Publishes `body` to `queue` with message id `id`, confirmed.
    pub async fn publish(&self, queue: &str, id: &str, body: &[u8]) {
        self.channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_message_id(id.into()),
            )
            .await
            .expect("publish")
            .await
            .expect("publish confirm");
    }

    /// Messages ready in `queue` (not counting unacked ones).
    pub async fn ready(&self, queue: &str) -> u32 {
        let probe = self.connection.create_channel().await.expect("channel");
        let q = probe
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("queue exists");
        let _ = probe.close(200, "ok".into()).await;
        q.message_count()
    }

    /// Takes one message from `queue` (acked), if any.
    pub async fn get(&self, queue: &str) -> Option<BasicGetMessage> {
        let message = self
            .channel
            .basic_get(queue.into(), Default::default())
            .await
            .expect("basic.get")?;
        message
            .delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        Some(message)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap());
        if queues.is_empty() {
            return;
        }
        // A runtime of its own: this may run while the test's runtime is unwinding.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let Ok(connection) =
                    Connection::connect(&amqp_url(), ConnectionProperties::default()).await
                else {
                    return;
                };
                for queue in queues {
                    if let Ok(channel) = connection.create_channel().await {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                }
                let _ = connection.close(200, "test over".into()).await;
            });
        })
        .join()
        .unwrap();
    }
}

/// What a plain lapin consumer received: each message id with when it arrived and whether
/// the broker flagged it redelivered.
#[derive(Default)]
pub struct Received {
    pub messages: Mutex<Vec<(String, Instant, bool)>>,
    pub arrived: Notify,
}

impl Received {
    pub fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    pub fn ids(&self) -> Vec<String> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect()
    }

    /// Waits until `n` messages arrived, or `within` passed; returns whether they did.
    pub async fn wait_for(&self, n: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.arrived.notified();
            if self.count() >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() >= n;
            }
        }
    }
}

/// A plain lapin consumer on `queue` (its own connection) that acks everything and records
/// what arrived. Returns the record and the connection (drop or close it to stop).
pub async fn watcher(queue: &str, prefetch: u16) -> (Arc<Received>, Connection) {
    let connection = connect().await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let received = Arc::new(Received::default());
    let record = Arc::clone(&received);
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|s| s.to_string())
                .unwrap_or_default();
            record
                .messages
                .lock()
                .unwrap()
                .push((id, Instant::now(), delivery.redelivered));
            record.arrived.notify_waiters();
            let _ = delivery.acker.ack(BasicAckOptions::default()).await;
        }
    });
    (received, connection)
}

/// A TCP proxy in front of the broker; [`Proxy::cut`] closes every connection through it
/// at once (the client sees its socket close, as when a network path or the broker dies),
/// while new connections are still let through.
pub struct Proxy {
    pub port: u16,
    cut: Arc<Notify>,
    generation: Arc<AtomicUsize>,
}

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Notify::new());
        let generation = Arc::new(AtomicUsize::new(0));
        let target = target.to_owned();
        let (cut2, generation2) = (Arc::clone(&cut), Arc::clone(&generation));
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = target.clone();
                let cut = Arc::clone(&cut2);
                let born = generation2.load(Ordering::SeqCst);
                let generation = Arc::clone(&generation2);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    let cut_now = async {
                        loop {
                            let notified = cut.notified();
                            if generation.load(Ordering::SeqCst) != born {
                                return;
                            }
                            notified.await;
                        }
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_now => {}
                    }
                    let _ = client.shutdown().await;
                    let _ = server.shutdown().await;
                });
            }
        });
        Proxy {
            port,
            cut,
            generation,
        }
    }

    /// Closes every connection made before this call.
    pub fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// `AMQP_URL` pointed at the proxy.
    pub fn url(&self) -> String {
        let url = amqp_url();
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
        let (userinfo, after) = match rest.rsplit_once('@') {
            Some((u, a)) => (format!("{u}@"), a),
            None => (String::new(), rest),
        };
        let path = after.find('/').map(|i| &after[i..]).unwrap_or("/%2f");
        format!("amqp://{userinfo}127.0.0.1:{}{path}", self.port)
    }
}

/// `host:port` of `AMQP_URL`.
pub fn broker_address() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(&url);
    let after = rest.rsplit_once('@').map(|(_, a)| a).unwrap_or(rest);
    let hostport = after.split(['/', '?']).next().unwrap_or("127.0.0.1:5672");
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    }
}
