//! A small gRPC service for the tests and the benchmark, written by hand instead of generated
//! by `tonic-build` from a `.proto` file: code generation needs `protoc`, which neither a
//! fresh machine nor CI has. What `tonic-build` would generate for
//!
//! ```proto
//! package test;
//! message WorkRequest { uint64 millis = 1; string label = 2; }
//! message WorkReply   { string label = 1; }
//! message Tick        { uint64 n = 1; }
//! service Worker {
//!   rpc Work(WorkRequest) returns (WorkReply);
//!   rpc Ticks(WorkRequest) returns (stream Tick);
//! }
//! ```
//!
//! with the handlers as closures (each test supplies its own), and the message types
//! derived with `prost`.

#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use tonic::codegen::{Body, Bytes, StdError, http};
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkRequest {
    #[prost(uint64, tag = "1")]
    pub millis: u64,
    #[prost(string, tag = "2")]
    pub label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct WorkReply {
    #[prost(string, tag = "1")]
    pub label: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Tick {
    #[prost(uint64, tag = "1")]
    pub n: u64,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
pub type TickStream = Pin<Box<dyn Stream<Item = Result<Tick, Status>> + Send + 'static>>;
type WorkFn =
    dyn Fn(Request<WorkRequest>) -> BoxFuture<Result<Response<WorkReply>, Status>> + Send + Sync;
type TicksFn =
    dyn Fn(Request<WorkRequest>) -> BoxFuture<Result<Response<TickStream>, Status>> + Send + Sync;

/// The server side: `Work` and `Ticks` answered by the closures given.
#[derive(Clone)]
pub struct WorkerServer {
    work: Arc<WorkFn>,
    ticks: Arc<TicksFn>,
}

impl WorkerServer {
    pub fn new<W, WF>(work: W) -> Self
    where
        W: Fn(Request<WorkRequest>) -> WF + Send + Sync + 'static,
        WF: Future<Output = Result<Response<WorkReply>, Status>> + Send + 'static,
    {
        WorkerServer {
            work: Arc::new(move |request| Box::pin(work(request))),
            ticks: Arc::new(|_| Box::pin(async { Err(Status::unimplemented("Ticks")) })),
        }
    }

    pub fn with_ticks<T, TF>(mut self, ticks: T) -> Self
    where
        T: Fn(Request<WorkRequest>) -> TF + Send + Sync + 'static,
        TF: Future<Output = Result<Response<TickStream>, Status>> + Send + 'static,
    {
        self.ticks = Arc::new(move |request| Box::pin(ticks(request)));
        self
    }
}

impl tonic::server::NamedService for WorkerServer {
    const NAME: &'static str = "test.Worker";
}

struct WorkSvc(Arc<WorkFn>);

impl tonic::server::UnaryService<WorkRequest> for WorkSvc {
    type Response = WorkReply;
    type Future = BoxFuture<Result<Response<WorkReply>, Status>>;
    fn call(&mut self, request: Request<WorkRequest>) -> Self::Future {
        (self.0)(request)
    }
}

struct TicksSvc(Arc<TicksFn>);

impl tonic::server::ServerStreamingService<WorkRequest> for TicksSvc {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = BoxFuture<Result<Response<TickStream>, Status>>;
    fn call(&mut self, request: Request<WorkRequest>) -> Self::Future {
        (self.0)(request)
    }
}

impl<B> tower::Service<http::Request<B>> for WorkerServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            "/test.Worker/Work" => {
                let method = WorkSvc(self.work.clone());
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.unary(method, request).await)
                })
            }
            "/test.Worker/Ticks" => {
                let method = TicksSvc(self.ticks.clone());
                Box::pin(async move {
                    let codec = tonic_prost::ProstCodec::default();
                    let mut grpc = tonic::server::Grpc::new(codec);
                    Ok(grpc.server_streaming(method, request).await)
                })
            }
            _ => Box::pin(async { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// The client side, over any gRPC transport (a `Channel`, or one wrapped in layers).
#[derive(Clone)]
pub struct WorkerClient<T> {
    inner: tonic::client::Grpc<T>,
}

impl<T> WorkerClient<T>
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<StdError>,
    T::ResponseBody: Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as Body>::Error: Into<StdError> + Send,
{
    pub fn new(inner: T) -> Self {
        WorkerClient {
            inner: tonic::client::Grpc::new(inner),
        }
    }

    pub fn with_origin(inner: T, origin: http::Uri) -> Self {
        WorkerClient {
            inner: tonic::client::Grpc::with_origin(inner, origin),
        }
    }

    async fn ready(&mut self) -> Result<(), Status> {
        self.inner
            .ready()
            .await
            .map_err(|e| Status::unknown(format!("Service was not ready: {}", e.into())))
    }

    pub async fn work(
        &mut self,
        request: impl tonic::IntoRequest<WorkRequest>,
    ) -> Result<Response<WorkReply>, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static("/test.Worker/Work");
        self.inner.unary(request.into_request(), path, codec).await
    }

    pub async fn ticks(
        &mut self,
        request: impl tonic::IntoRequest<WorkRequest>,
    ) -> Result<Response<Streaming<Tick>>, Status> {
        self.ready().await?;
        let codec = tonic_prost::ProstCodec::default();
        let path = http::uri::PathAndQuery::from_static("/test.Worker/Ticks");
        self.inner
            .server_streaming(request.into_request(), path, codec)
            .await
    }
}
