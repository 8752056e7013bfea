//! Shared helpers for the gRPC tests: the hand-written `Worker` service (`proto.rs`), a
//! `GrpcServer` on an ephemeral port with hand-driven shutdown signals, and channels to it.

#![allow(dead_code)]

pub mod proto;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use gracefully::{CancellationSource, ReasonKind};
use gracefully_axum::{ServerReport, Shutdown};
use gracefully_tonic::{GracefulChannel, GracefulLayer, GrpcServer, IntoStatus, RequestExt};
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tonic::service::Routes;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// hyper's pooled HTTP/2 client, as a gRPC transport.
pub type RawTransport = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic::body::Body,
>;

#[allow(unused_imports)]
pub use proto::{Tick, TickStream, WorkReply, WorkRequest, WorkerClient, WorkerServer};

/// Generous bound for "this should happen soon" waits (tests assert behaviour, not speed).
pub const SOON: Duration = Duration::from_secs(10);

pub struct TestGrpcServer {
    pub addr: SocketAddr,
    pub stopping: CancellationSource,
    pub hard_stop: CancellationSource,
    pub task: JoinHandle<ServerReport>,
}

impl TestGrpcServer {
    pub async fn start(service: WorkerServer) -> TestGrpcServer {
        Self::start_with(service, |server| server).await
    }

    /// As `start`, the server changed by `configure` first.
    pub async fn start_with(
        service: WorkerServer,
        configure: impl FnOnce(GrpcServer) -> GrpcServer,
    ) -> TestGrpcServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stopping = CancellationSource::new();
        let hard_stop = CancellationSource::new();
        let server = configure(GrpcServer::new(listener, Routes::new(service)));
        let task = tokio::spawn(server.run(Shutdown {
            stopping: stopping.token(),
            hard_stop: hard_stop.token(),
        }));
        TestGrpcServer {
            addr,
            stopping,
            hard_stop,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain tonic channel (its own HTTP/2 connection), connected.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A client through `GracefulLayer` on a connection of its own.
    pub async fn client(&self) -> WorkerClient<GracefulChannel<Channel>> {
        WorkerClient::new(
            tower::ServiceBuilder::new()
                .layer(GracefulLayer::new())
                .service(self.channel().await),
        )
    }

    /// A client over hyper's HTTP/2 client instead of tonic's `Channel`: it sends
    /// `grpc-timeout` but, unlike `Channel`, does not end the call at it itself.
    pub fn raw_client(&self) -> WorkerClient<RawTransport> {
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        WorkerClient::with_origin(client, self.url().parse().unwrap())
    }

    /// A plain tonic client on a connection of its own.
    pub async fn plain_client(&self) -> WorkerClient<Channel> {
        WorkerClient::new(self.channel().await)
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

/// What a handler made by [`waits_for_its_token`] reports.
#[derive(Debug)]
pub enum Event {
    /// It started, with this much time left (`None`: no deadline).
    Started { left: Option<Duration> },
    /// Its token fired, for this reason, at this instant.
    Fired { kind: ReasonKind, at: Instant },
}

pub type WorkFuture = Pin<Box<dyn Future<Output = Result<Response<WorkReply>, Status>> + Send>>;

/// A `Work` handler that reports its start, then waits for its token and reports the reason
/// and the instant it saw it; answers with the cancellation as a status.
pub fn waits_for_its_token(
    events: mpsc::UnboundedSender<Event>,
) -> impl Fn(Request<WorkRequest>) -> WorkFuture + Send + Sync + 'static {
    move |request| {
        let events = events.clone();
        Box::pin(async move {
            let token = request.token();
            let _ = events.send(Event::Started {
                left: token
                    .deadline()
                    .map(|d| d.saturating_duration_since(Instant::now())),
            });
            let reason = token.cancelled().await;
            let _ = events.send(Event::Fired {
                kind: reason.kind(),
                at: Instant::now(),
            });
            token.check().into_status()?;
            Ok(Response::new(WorkReply::default()))
        })
    }
}

/// The next event a handler reports (within [`SOON`]).
pub async fn next(events: &mut mpsc::UnboundedReceiver<Event>) -> Event {
    tokio::time::timeout(SOON, events.recv())
        .await
        .expect("the handler reports in time")
        .expect("the handler is alive")
}

pub fn work(millis: u64, label: &str) -> WorkRequest {
    WorkRequest {
        millis,
        label: label.to_owned(),
    }
}
