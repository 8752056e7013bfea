//! A load generator that classifies every request it sends, for the zero-loss tests and the
//! drain benchmark (which includes this file by path).
//!
//! Each client keeps one keep-alive connection and sends its next request as soon as the
//! previous answer arrived; after an answer with `Connection: close` (or once HTTP/2 sent
//! GOAWAY) it connects again. A request is:
//!
//! * **answered** — a whole response arrived;
//! * **partial** — some of a response arrived, then the connection ended;
//! * **lost** — it was written on an accepted connection and not one response byte came
//!   back (the connection ended: EOF or reset);
//! * not counted — the connection was refused (the listener is closed: expected once the
//!   drain began), or the write itself failed (the request never reached the server).
//!
//! A client stops when a connection is refused or when `deadline` passes.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What one or more clients saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub answered: u64,
    pub partial: u64,
    pub lost: u64,
    /// Answers that carried `Connection: close` (HTTP/1.1).
    pub told_to_close: u64,
}

impl Tally {
    pub fn add(&mut self, other: Tally) {
        self.answered += other.answered;
        self.partial += other.partial;
        self.lost += other.lost;
        self.told_to_close += other.told_to_close;
    }

    /// Requests that reached an accepted connection.
    pub fn sent(&self) -> u64 {
        self.answered + self.partial + self.lost
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} sent: {} answered ({} with Connection: close), {} partial, {} lost",
            self.sent(),
            self.answered,
            self.told_to_close,
            self.partial,
            self.lost
        )
    }
}

enum Exchange {
    Answered { close: bool },
    Partial,
    Lost,
    NotSent,
}

/// Reads one response with a `content-length` body.
async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Exchange {
    if stream.write_all(request).await.is_err() {
        return Exchange::NotSent;
    }
    let mut data = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf)).await;
        let n = match read {
            Ok(Ok(n)) if n > 0 => n,
            // EOF, reset, or no answer in 20 s: the exchange ended without a whole answer.
            _ => {
                return if data.is_empty() {
                    Exchange::Lost
                } else {
                    Exchange::Partial
                };
            }
        };
        data.extend_from_slice(&buf[..n]);
        let Some(head_end) = find(&data, b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        if data.len() >= head_end + 4 + length {
            let close = head.lines().any(|l| l == "connection: close");
            return Exchange::Answered { close };
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One HTTP/1.1 keep-alive client looping `GET path`.
pub async fn http1_client(addr: SocketAddr, path: &str, deadline: Instant) -> Tally {
    let request = format!("GET {path} HTTP/1.1\r\nhost: loader\r\n\r\n").into_bytes();
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let Ok(mut stream) = TcpStream::connect(addr).await else {
            break; // refused: the server stopped accepting
        };
        let _ = stream.set_nodelay(true);
        while Instant::now() < deadline {
            match exchange(&mut stream, &request).await {
                Exchange::Answered { close } => {
                    tally.answered += 1;
                    if close {
                        tally.told_to_close += 1;
                        break;
                    }
                }
                Exchange::Partial => {
                    tally.partial += 1;
                    break;
                }
                Exchange::Lost => {
                    tally.lost += 1;
                    break;
                }
                Exchange::NotSent => break,
            }
        }
    }
    tally
}

/// `clients` HTTP/1.1 keep-alive clients at once.
pub async fn http1_load(addr: SocketAddr, path: &str, clients: usize, deadline: Instant) -> Tally {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let path = path.to_string();
        tasks.push(tokio::spawn(async move {
            http1_client(addr, &path, deadline).await
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(task.await.expect("a loader client panicked"));
    }
    tally
}

/// One HTTP/2 client (one connection at a time, reqwest's) looping `GET path`.
pub async fn http2_client(url: String, deadline: Instant) -> Tally {
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an HTTP/2 client");
    let mut tally = Tally::default();
    while Instant::now() < deadline {
        let response = tokio::time::timeout(Duration::from_secs(20), client.get(&url).send()).await;
        match response {
            Ok(Ok(response)) => match response.bytes().await {
                Ok(_) => tally.answered += 1,
                Err(_) => {
                    tally.partial += 1;
                }
            },
            // Refused: the listener is closed. (A stream the server never processed —
            // above GOAWAY's last stream id — is retried by the client on a new
            // connection, which is then refused.)
            Ok(Err(error)) if error.is_connect() => break,
            Ok(Err(_)) | Err(_) => tally.lost += 1,
        }
    }
    tally
}

/// `clients` HTTP/2 clients at once.
pub async fn http2_load(addr: SocketAddr, path: &str, clients: usize, deadline: Instant) -> Tally {
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let url = format!("http://{addr}{path}");
        tasks.push(tokio::spawn(http2_client(url, deadline)));
    }
    let mut tally = Tally::default();
    for task in tasks {
        tally.add(task.await.expect("a loader client panicked"));
    }
    tally
}
