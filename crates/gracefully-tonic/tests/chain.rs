//! One deadline across three real services over loopback, in one process:
//!
//! ```text
//! client ──HTTP──► A (gracefully-axum) ──HTTP, gracefully-reqwest──► B (gracefully-axum)
//!                                          ──gRPC, GracefulLayer──► C (gracefully-tonic)
//! ```
//!
//! A gets a 300 ms budget from its client; C sees what is left of it, and stops its work
//! when the budget ends or when A's client disconnects; each hop's error says why.

mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use gracefully::{CancellationToken, ReasonKind};
use gracefully_axum::{HttpCancelled, HttpServer, IncomingDeadlines, RequestToken, Shutdown};
use gracefully_reqwest::{DeadlinePropagation, RequestBuilderExt};
use gracefully_tonic::{GracefulLayer, IntoStatus, RequestExt, cancellation_of};
use support::{SOON, TestGrpcServer, WorkReply, WorkRequest, WorkerClient, WorkerServer, work};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response};

/// Kept back at each hop for the request to arrive and the answer to return: by B's HTTP
/// client from the budget it sends, by C's gRPC server from the `grpc-timeout` it receives.
/// The default is 5 ms; on a loaded 2-core CI machine a hop can take longer than that, and
/// then the caller gives up (and resets the call) just before the callee's own deadline
/// fires, so the callee reports a departed client instead of its deadline. 60 ms keeps the
/// test about behaviour.
const ALLOWANCE: Duration = Duration::from_millis(60);

/// What each hop saw.
#[derive(Debug)]
enum Seen {
    /// A's handler started: its token's deadline.
    AStarted {
        at: Instant,
        deadline: Option<Instant>,
    },
    /// How A's call to B ended: B's status, or the cancellation that stopped it.
    AEnded(Result<u16, ReasonKind>),
    /// How B's call to C ended: the gRPC code, and the cancellation it carries (if B's own
    /// token stopped it).
    BEnded(Code, Option<ReasonKind>),
    /// C's handler started: its token's deadline.
    CStarted {
        at: Instant,
        deadline: Option<Instant>,
    },
    /// C's token fired (its work stopped), for this reason.
    CStopped { kind: ReasonKind, at: Instant },
}

struct Chain {
    a: std::net::SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    /// Reports received but not asked for yet.
    backlog: Vec<Seen>,
    /// Each server's `stopping`, to end them after the test.
    servers: Vec<gracefully::CancellationSource>,
}

impl Chain {
    /// The first report (received or still to come) that `pick` accepts.
    async fn wait_for<T>(&mut self, mut pick: impl FnMut(&Seen) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|s| pick(s).is_some()) {
            return pick(&self.backlog.remove(i)).expect("picked above");
        }
        loop {
            let seen = tokio::time::timeout(SOON, self.seen.recv())
                .await
                .expect("a hop reports in time")
                .expect("the hops are alive");
            if let Some(found) = pick(&seen) {
                return found;
            }
            self.backlog.push(seen);
        }
    }

    fn stop(&self) {
        for server in &self.servers {
            server.cancel();
        }
    }
}

async fn start_chain() -> Chain {
    let (tx, seen) = mpsc::unbounded_channel();
    let mut servers = Vec::new();

    // C: gRPC. Works until its token fires.
    let c = {
        let tx = tx.clone();
        let service = WorkerServer::new(move |request: Request<WorkRequest>| {
            let tx = tx.clone();
            async move {
                let token = request.token();
                let _ = tx.send(Seen::CStarted {
                    at: Instant::now(),
                    deadline: token.deadline(),
                });
                let reason = token.cancelled().await; // the "work"
                let _ = tx.send(Seen::CStopped {
                    kind: reason.kind(),
                    at: Instant::now(),
                });
                token.check().into_status()?;
                Ok(Response::new(WorkReply::default()))
            }
        });
        TestGrpcServer::start_with(service, |server| {
            server.configure(|http| {
                http.incoming_deadlines(IncomingDeadlines::default().transit_allowance(ALLOWANCE))
            })
        })
        .await
    };
    let c_channel = tower::ServiceBuilder::new()
        .layer(GracefulLayer::new().transit_allowance(ALLOWANCE))
        .service(c.channel().await);
    servers.push(c.stopping); // the server runs until stopped or the test's runtime ends

    // B: HTTP; calls C over gRPC with its request's token.
    let b = {
        let tx = tx.clone();
        let client = WorkerClient::new(c_channel);
        let app = Router::new().route(
            "/b",
            get(move |RequestToken(token): RequestToken| {
                let tx = tx.clone();
                let mut client = client.clone();
                async move {
                    let result = client
                        .work(Request::new(work(0, "from B")).with_token(&token))
                        .await;
                    match result {
                        Ok(_) => Ok((StatusCode::OK, "done")),
                        Err(status) => {
                            let cancelled = cancellation_of(&status).cloned();
                            let _ = tx.send(Seen::BEnded(
                                status.code(),
                                cancelled.as_ref().map(|c| c.kind()),
                            ));
                            match cancelled {
                                // B's own token stopped the call: say why.
                                Some(cancelled) => Err(HttpCancelled(cancelled)),
                                // C answered DEADLINE_EXCEEDED: the budget ran out.
                                None if status.code() == Code::DeadlineExceeded => {
                                    Ok((StatusCode::GATEWAY_TIMEOUT, "C ran out of time"))
                                }
                                None => Ok((StatusCode::BAD_GATEWAY, "C failed")),
                            }
                        }
                    }
                }
            }),
        );
        start_http(app, &mut servers).await
    };

    // A: HTTP; calls B with gracefully-reqwest and its request's token.
    let a = {
        let tx = tx.clone();
        let client = reqwest::Client::new();
        let b_url = format!("http://{b}/b");
        let app = Router::new().route(
            "/a",
            get(move |RequestToken(token): RequestToken| {
                let tx = tx.clone();
                let client = client.clone();
                let b_url = b_url.clone();
                async move {
                    let _ = tx.send(Seen::AStarted {
                        at: Instant::now(),
                        deadline: token.deadline(),
                    });
                    let result = call_b(&client, &b_url, &token).await;
                    let _ = tx.send(Seen::AEnded(result));
                    match result {
                        Ok(status) => Ok(StatusCode::from_u16(status).unwrap()),
                        Err(_) => Err(HttpCancelled(token.check().unwrap_err())),
                    }
                }
            }),
        );
        start_http(app, &mut servers).await
    };
    Chain {
        a,
        seen,
        backlog: Vec::new(),
        servers,
    }
}

async fn call_b(
    client: &reqwest::Client,
    url: &str,
    token: &CancellationToken,
) -> Result<u16, ReasonKind> {
    let sent = client
        .get(url)
        .with_token(token)
        .propagation(DeadlinePropagation::default().transit_allowance(ALLOWANCE))
        .send()
        .await;
    match sent {
        Ok(response) => Ok(response.status().as_u16()),
        Err(gracefully_reqwest::Error::Cancelled(cancelled)) => Err(cancelled.kind()),
        Err(other) => panic!("A's call to B failed: {other}"),
    }
}

async fn start_http(
    app: Router,
    servers: &mut Vec<gracefully::CancellationSource>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopping = gracefully::CancellationSource::new();
    let hard_stop = gracefully::CancellationSource::new(); // never fired here
    tokio::spawn(HttpServer::new(listener, app).run(Shutdown {
        stopping: stopping.token(),
        hard_stop: hard_stop.token(),
    }));
    servers.push(stopping);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_shrinks_at_each_hop_and_ends_every_hops_work_with_deadline_exceeded() {
    let mut chain = start_chain().await;
    let response = tokio::time::timeout(
        SOON,
        reqwest::Client::new()
            .get(format!("http://{}/a", chain.a))
            .header(gracefully_reqwest::REQUEST_TIMEOUT_HEADER, "300")
            .send(),
    )
    .await
    .expect("A answers")
    .unwrap();
    assert_eq!(
        response.status(),
        504,
        "the client hears that the budget ran out"
    );

    let (a_at, a_deadline) = chain
        .wait_for(|s| match s {
            Seen::AStarted { at, deadline } => Some((*at, *deadline)),
            _ => None,
        })
        .await;
    let a_deadline = a_deadline.expect("A's token has the client's 300 ms budget");
    assert!(a_deadline <= a_at + Duration::from_millis(300));

    let (c_at, c_deadline) = chain
        .wait_for(|s| match s {
            Seen::CStarted { at, deadline } => Some((*at, *deadline)),
            _ => None,
        })
        .await;
    let c_deadline = c_deadline.expect("C's token has what is left of the budget");
    let spent = c_at - a_at;
    let c_left = c_deadline.saturating_duration_since(c_at);
    println!("C started {spent:?} after A with {c_left:?} left of the 300 ms budget");
    assert!(
        c_left <= Duration::from_millis(300).saturating_sub(spent),
        "C sees no more than 300 ms minus the time spent ({spent:?}): {c_left:?}"
    );
    // Each hop kept its transit allowance back; the time the requests took to travel
    // (part of `spent`) is all that was added back.
    assert!(
        c_deadline + ALLOWANCE * 2 <= a_deadline + spent,
        "each hop kept the transit allowance back: C's deadline is {:?} before A's",
        a_deadline.saturating_duration_since(c_deadline)
    );

    let (c_kind, c_stopped) = chain
        .wait_for(|s| match s {
            Seen::CStopped { kind, at } => Some((*kind, *at)),
            _ => None,
        })
        .await;
    assert_eq!(
        c_kind,
        ReasonKind::DeadlineExceeded,
        "C says why it stopped"
    );
    assert!(c_stopped >= c_deadline, "C worked until its deadline");

    let b = chain
        .wait_for(|s| match s {
            Seen::BEnded(code, kind) => Some((*code, *kind)),
            _ => None,
        })
        .await;
    assert_eq!(b.0, Code::DeadlineExceeded, "B's call says why: {b:?}");
    let a = chain
        .wait_for(|s| match s {
            Seen::AEnded(result) => Some(*result),
            _ => None,
        })
        .await;
    assert!(
        matches!(a, Ok(504) | Err(ReasonKind::DeadlineExceeded)),
        "A's call says why: {a:?}"
    );
    chain.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_stops_the_work_at_every_hop_with_disconnected() {
    let mut chain = start_chain().await;
    let client = reqwest::Client::new();
    let request = tokio::spawn(client.get(format!("http://{}/a", chain.a)).send());
    chain
        .wait_for(|s| matches!(s, Seen::CStarted { .. }).then_some(()))
        .await;

    // The client gives up: its request future is dropped and its connection closed.
    let left_at = Instant::now();
    request.abort();
    drop(client);

    let a = chain
        .wait_for(|s| match s {
            Seen::AEnded(result) => Some(*result),
            _ => None,
        })
        .await;
    assert_eq!(a, Err(ReasonKind::Disconnected), "A's call says why");
    let b = chain
        .wait_for(|s| match s {
            Seen::BEnded(code, kind) => Some((*code, *kind)),
            _ => None,
        })
        .await;
    assert_eq!(
        b,
        (Code::Cancelled, Some(ReasonKind::Disconnected)),
        "B's call says why"
    );
    let (c_kind, c_stopped) = chain
        .wait_for(|s| match s {
            Seen::CStopped { kind, at } => Some((*kind, *at)),
            _ => None,
        })
        .await;
    assert_eq!(c_kind, ReasonKind::Disconnected, "C says why it stopped");
    println!(
        "client left → C's work stopped {:?} later (through A and B)",
        c_stopped - left_at
    );
    chain.stop();
}
