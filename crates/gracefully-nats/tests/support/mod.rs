//! What the tests against a real NATS server share: the URLs (a loud failure when they
//! are missing), unique names, a stream that deletes itself, publishing, consumer state,
//! and a TCP proxy whose connections a test can cut.

#![allow(dead_code)] // each test binary uses a part

pub mod effects;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull, stream};
use bytes::Bytes;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// `NATS_URL`, or a failure that says how to run these tests.
pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| {
        panic!(
            "NATS_URL is not set: this test needs a NATS server with JetStream \
             (e.g. NATS_URL=nats://127.0.0.1:4222 cargo test -p gracefully-nats -- --include-ignored)"
        )
    })
}

/// `DATABASE_URL`, or a failure that says how to run these tests.
pub fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "DATABASE_URL is not set: this test needs PostgreSQL \
             (e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres)"
        )
    })
}

/// A name no other test (or test run, or engineer) uses: `PREFIX_<pid>_<n>_<nanos>`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn connect() -> (async_nats::Client, jetstream::Context) {
    let url = nats_url();
    let client = async_nats::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("NATS at {url}: {e}"));
    let js = jetstream::new(client.clone());
    (client, js)
}

/// A stream named `name`, capturing `name.>`, deleted (with its consumers) when dropped —
/// also when the test panics.
pub struct TestStream {
    pub name: String,
    pub js: jetstream::Context,
}

impl TestStream {
    pub async fn create(prefix: &str) -> TestStream {
        let (_, js) = connect().await;
        let name = unique(prefix);
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{name}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        TestStream { name, js }
    }

    /// `name.<suffix>`.
    pub fn subject(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.name)
    }

    /// Publishes `{"n": i}` for each `i` in `range` to `name.msgs`, each with
    /// `Nats-Msg-Id: m-<i>`, and waits until the stream stored them all.
    pub async fn publish_numbers(&self, range: std::ops::Range<u32>) {
        let subject = self.subject("msgs");
        let mut acks = Vec::new();
        for i in range {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("m-{i}"));
            let payload = Bytes::from(format!(r#"{{"n":{i}}}"#));
            acks.push(
                self.js
                    .publish_with_headers(subject.clone(), headers, payload)
                    .await
                    .unwrap(),
            );
        }
        for ack in acks {
            ack.await.unwrap();
        }
    }

    pub async fn publish(&self, suffix: &str, payload: &'static [u8]) {
        self.js
            .publish(self.subject(suffix), Bytes::from_static(payload))
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A durable pull consumer `name` with `ack_wait`.
    pub async fn durable(&self, name: &str, ack_wait: Duration) {
        self.js
            .get_stream(&self.name)
            .await
            .unwrap()
            .create_consumer(pull::Config {
                durable_name: Some(name.into()),
                ack_wait,
                ..Default::default()
            })
            .await
            .unwrap();
    }

    /// Pulls up to `n` messages from consumer `name` with a plain async-nats batch request
    /// waiting at most `within` (it ends early once it has `n`), acks them, and returns their `Nats-Msg-Id`s with their delivery
    /// counts.
    pub async fn fetch_now(&self, name: &str, n: usize, within: Duration) -> Vec<(String, i64)> {
        use futures_util::StreamExt;
        let consumer: jetstream::consumer::PullConsumer = self
            .js
            .get_stream(&self.name)
            .await
            .unwrap()
            .get_consumer(name)
            .await
            .unwrap();
        let mut batch = consumer
            .batch()
            .max_messages(n)
            .expires(within)
            .messages()
            .await
            .unwrap();
        let mut got = Vec::new();
        while let Some(message) = batch.next().await {
            let message = message.unwrap();
            let id = message
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Msg-Id"))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            got.push((id, message.info().unwrap().delivered));
            message.ack().await.unwrap();
        }
        got
    }

    pub async fn consumer_info(&self, name: &str) -> jetstream::consumer::Info {
        self.js
            .get_stream(&self.name)
            .await
            .unwrap()
            .consumer_info(name)
            .await
            .unwrap()
    }
}

impl Drop for TestStream {
    fn drop(&mut self) {
        let (js, name) = (self.js.clone(), self.name.clone());
        // Async cleanup from a destructor: on a thread of its own, with a runtime of its
        // own, so it works whether or not the test's runtime is still there.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(5), js.delete_stream(&name)).await;
            });
        })
        .join();
    }
}

/// A TCP proxy on 127.0.0.1 in front of the NATS server: clients connect to
/// [`url`](Self::url); [`cut`](Self::cut) closes every connection it carries (the server
/// keeps running, and new connections are accepted as before).
pub struct Proxy {
    pub url: String,
    connections: Arc<Mutex<Vec<AbortHandle>>>,
    accept: AbortHandle,
    /// While set, connections are accepted and closed at once (see [`Proxy::pause`]).
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    pub async fn start() -> Proxy {
        let upstream = nats_url()
            .trim_start_matches("nats://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let connections: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let list = Arc::clone(&connections);
        let paused: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let refusing = Arc::clone(&paused);
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if refusing.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let upstream = upstream.clone();
                let task = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                list.lock().unwrap().push(task.abort_handle());
            }
        })
        .abort_handle();
        Proxy {
            url,
            connections,
            accept,
            paused,
        }
    }

    /// Until [`resume`](Self::resume): every new connection is closed at once (an outage
    /// the client keeps trying to reconnect through).
    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Ends a [`pause`](Self::pause).
    pub fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops accepting: from now on a client cannot reconnect (the server keeps running).
    pub fn refuse(&self) {
        self.accept.abort();
    }

    /// Closes every connection carried so far; returns how many there were.
    pub fn cut(&self) -> usize {
        let handles = std::mem::take(&mut *self.connections.lock().unwrap());
        let n = handles.iter().filter(|h| !h.is_finished()).count();
        for handle in handles {
            handle.abort();
        }
        n
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// The value recorded under `key` in `row`'s details, as a number.
pub fn count(report: &gracefully_host::ShutdownReport, row: &str, key: &str) -> u64 {
    report
        .entry(row)
        .unwrap_or_else(|| panic!("no row {row} in\n{report}"))
        .detail(key)
        .unwrap_or_else(|| panic!("no {key} in row {row} of\n{report}"))
        .parse()
        .unwrap()
}

/// Installs a `tracing` subscriber writing to the test's output (once per binary).
pub fn trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gracefully_nats=info,warn".into()),
        )
        .with_test_writer()
        .try_init();
}
