//! Shared helpers for the HTTP tests: a server on an ephemeral port with hand-driven
//! shutdown signals or run by a host, an HTTP/2 request to reset, and raw HTTP/1.1 over
//! `TcpStream`.

#![allow(dead_code)]

pub mod admin;
pub mod loader;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use gracefully::CancellationSource;
use gracefully_axum::{HttpServer, ServerReport, Shutdown};
use gracefully_host::{Host, HostBuilder, Lifetime, ShutdownReport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// Generous bound for "this should happen soon" waits (tests assert behaviour, not speed).
pub const SOON: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    pub stopping: CancellationSource,
    pub hard_stop: CancellationSource,
    pub task: JoinHandle<ServerReport>,
}

impl TestServer {
    pub async fn start(app: Router) -> TestServer {
        TestServer::start_with(app, |s| s).await
    }

    pub async fn start_with(
        app: Router,
        configure: impl FnOnce(HttpServer<Router>) -> HttpServer<Router>,
    ) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stopping = CancellationSource::new();
        let hard_stop = CancellationSource::new();
        let server = configure(HttpServer::new(listener, app));
        let task = tokio::spawn(server.run(Shutdown {
            stopping: stopping.token(),
            hard_stop: hard_stop.token(),
        }));
        TestServer {
            addr,
            stopping,
            hard_stop,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Begins the drain and waits for the server to finish.
    pub async fn stop(self) -> ServerReport {
        self.stopping.cancel();
        tokio::time::timeout(SOON, self.task)
            .await
            .expect("the server stops")
            .expect("the server task does not panic")
    }
}

/// A server on an ephemeral port run by a host as its one service, `http`.
pub struct HostedServer {
    pub addr: SocketAddr,
    pub lifetime: Lifetime,
    /// The host's run; it ends with the shutdown report.
    pub run: JoinHandle<ShutdownReport>,
}

/// Starts a host (signals not handled; set up further by `host`) that serves `app` (the
/// server set up by `server`), and waits until the host has started.
pub async fn start_hosted(
    app: Router,
    server: impl FnOnce(HttpServer<Router>) -> HttpServer<Router>,
    host: impl FnOnce(HostBuilder) -> HostBuilder,
) -> HostedServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let built = host(Host::builder().handle_signals(false))
        .service("http", server(HttpServer::new(listener, app)))
        .build()
        .unwrap();
    let lifetime = built.lifetime();
    let run = tokio::spawn(built.run());
    tokio::time::timeout(SOON, lifetime.started().cancelled())
        .await
        .expect("the host starts");
    HostedServer {
        addr,
        lifetime,
        run,
    }
}

/// A GET of `path` over HTTP/2 (prior knowledge: HTTP/2 from the first byte, as gRPC
/// clients speak), sent by a task of its own.
pub struct Http2Request {
    /// Its connection stays open until the client is dropped.
    pub client: reqwest::Client,
    pub task: JoinHandle<reqwest::Result<reqwest::Response>>,
}

impl Http2Request {
    pub fn get(server: &TestServer, path: &str) -> Http2Request {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .unwrap();
        let task = tokio::spawn(client.get(server.url(path)).send());
        Http2Request { client, task }
    }

    /// Resets the request's stream (the request future is dropped mid-flight), and returns
    /// the client, whose connection stays open.
    pub fn reset(self) -> reqwest::Client {
        self.task.abort();
        self.client
    }
}

/// Sends raw bytes on a new connection and returns it.
pub async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    stream
}

/// Reads one HTTP/1.1 response (head and, if any, a content-length body) from `stream`.
pub async fn read_response(stream: &mut TcpStream) -> String {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(SOON, stream.read(&mut buf))
            .await
            .expect("a response arrives")
            .unwrap();
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&data);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if data.len() >= head_end + 4 + length {
                break;
            }
        }
    }
    String::from_utf8_lossy(&data).into_owned()
}

/// The status code of a raw response.
pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"))
}

/// Whether the peer closed `stream` (reads EOF, or a reset) within `within`.
pub async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
