//! Servers the tests start on 127.0.0.1:0, and what they saw.
//!
//! * [`RawServer`]: plain TCP, for what happens to the *connection*: it reads the request
//!   head, then stalls, streams a body, or answers with fixed bytes, and reports the moment
//!   the client closes the socket (a read returning end-of-file, or an error) — measured on
//!   the server's side.
//! * [`ScriptServer`]: hyper HTTP/1.1, for what happens to *requests*: each is answered by a
//!   script (status, delay, headers) and recorded (arrival time, method, headers).

#![allow(dead_code)] // each test file uses part of it

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// How long a test waits for something that should happen at once before it fails: far
/// longer than any correct run needs, so load cannot fail a test, and short enough that a
/// broken one ends.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What a [`RawServer`] does with a connection once it has read the request head.
#[derive(Clone, Debug)]
pub enum Raw {
    /// Answers nothing; waits for the client to close.
    Stall,
    /// Sends a chunked `200` and then a `chunk` every `every`, `chunks` times, then ends the
    /// body; stops early if the client goes away.
    Stream {
        chunk: &'static str,
        every: Duration,
        chunks: usize,
    },
    /// Sends these bytes, then waits for the client to close.
    Reply(&'static str),
    /// Closes the connection at once without answering.
    Hang,
}

/// Something a [`RawServer`] saw, with when.
#[derive(Debug)]
pub enum Seen {
    /// A request head arrived on connection `conn`.
    Request {
        conn: usize,
        head: String,
        at: Instant,
    },
    /// `chunks` body chunks were written on connection `conn` (sent after each write).
    Wrote { conn: usize, chunks: usize },
    /// The client closed connection `conn`.
    Closed { conn: usize, at: Instant },
}

/// A plain-TCP server: connection `n` is handled as `behaviour(n)` says.
pub struct RawServer {
    pub addr: SocketAddr,
    pub seen: mpsc::UnboundedReceiver<Seen>,
}

impl RawServer {
    pub async fn start(behaviour: impl Fn(usize) -> Raw + Send + Sync + 'static) -> RawServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let (tx, seen) = mpsc::unbounded_channel();
        let behaviour = Arc::new(behaviour);
        tokio::spawn(async move {
            let mut conn = 0;
            while let Ok((stream, _)) = listener.accept().await {
                let behaviour = behaviour(conn);
                tokio::spawn(raw_connection(stream, conn, behaviour, tx.clone()));
                conn += 1;
            }
        });
        RawServer { addr, seen }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The next thing seen, failing the test if nothing comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Seen {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("the server saw nothing in time")
            .expect("the server task ended")
    }

    /// Waits for the next request head; returns it and when it arrived.
    pub async fn request(&mut self) -> (String, Instant) {
        loop {
            if let Seen::Request { head, at, .. } = self.next().await {
                return (head, at);
            }
        }
    }

    /// Waits until the client closes a connection; returns when the server saw it.
    pub async fn closed(&mut self) -> Instant {
        loop {
            if let Seen::Closed { at, .. } = self.next().await {
                return at;
            }
        }
    }
}

async fn raw_connection(
    mut stream: TcpStream,
    conn: usize,
    behaviour: Raw,
    seen: mpsc::UnboundedSender<Seen>,
) {
    let _ = stream.set_nodelay(true);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = seen.send(Seen::Closed {
                    conn,
                    at: Instant::now(),
                });
                return;
            }
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let _ = seen.send(Seen::Request {
        conn,
        head: String::from_utf8_lossy(&head).into_owned(),
        at: Instant::now(),
    });
    let (mut read, mut write) = stream.into_split();
    // Reports the close the moment the client's FIN (or RST) arrives.
    let watch = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            let _ = seen.send(Seen::Closed {
                conn,
                at: Instant::now(),
            });
        })
    };
    match behaviour {
        Raw::Stall => {}
        Raw::Hang => {
            watch.abort();
            drop(write);
            return;
        }
        Raw::Reply(bytes) => {
            let _ = write.write_all(bytes.as_bytes()).await;
        }
        Raw::Stream {
            chunk,
            every,
            chunks,
        } => {
            let header =
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n";
            if write.write_all(header.as_bytes()).await.is_err() {
                return;
            }
            for n in 1..=chunks {
                let frame = format!("{:x}\r\n{chunk}\r\n", chunk.len());
                if write.write_all(frame.as_bytes()).await.is_err() {
                    return;
                }
                let _ = seen.send(Seen::Wrote { conn, chunks: n });
                tokio::time::sleep(every).await;
                if watch.is_finished() {
                    return;
                }
            }
            let _ = write.write_all(b"0\r\n\r\n").await;
        }
    }
    // Keep the write half open until the client closes.
    let _ = watch.await;
    drop(write);
}

/// The value of header `name` in a raw request head.
pub fn header_in(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// How a [`ScriptServer`] answers one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    pub fn status(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).expect("a valid status"),
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// A request a [`ScriptServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub method: String,
    pub headers: http::HeaderMap,
}

/// An HTTP/1.1 server (hyper) answering request `n` (from 0) as `script(n)` says.
pub struct ScriptServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl ScriptServer {
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> ScriptServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let script = Arc::new(script);
        let log = Arc::clone(&received);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let script = Arc::clone(&script);
                let log = Arc::clone(&log);
                let service = service_fn(move |request: Request<Incoming>| {
                    let script = Arc::clone(&script);
                    let log = Arc::clone(&log);
                    async move {
                        let n = {
                            let mut log = log.lock().unwrap();
                            log.push(Received {
                                at: Instant::now(),
                                method: request.method().to_string(),
                                headers: request.headers().clone(),
                            });
                            log.len() - 1
                        };
                        let reply = script(n);
                        tokio::time::sleep(reply.delay).await;
                        let mut response = Response::new(Full::new(Bytes::from_static(b"body")));
                        *response.status_mut() = reply.status;
                        for (name, value) in reply.headers {
                            response
                                .headers_mut()
                                .insert(name, value.parse().expect("a valid header value"));
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ScriptServer { addr, received }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Every request received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A client with no proxy lookups and no connection reuse surprises: what every test uses.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("a reqwest client")
}
