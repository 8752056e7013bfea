//! Each RPC is an operation of kind `Rpc`, named by its method path, under the HTTP
//! request's operation, ending completed or cancelled with its token's reason; what the
//! handler begins runs under it.

mod support;

use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationSource, ReasonKind};
use gracefully_axum::Shutdown;
use gracefully_host::Operations;
use gracefully_tonic::{GrpcServer, IntoStatus, RequestExt};
use support::{SOON, WorkReply, WorkerClient, WorkerServer, work};
use tonic::service::Routes;
use tonic::transport::Endpoint;
use tonic::{Request, Response};

#[tokio::test]
async fn each_rpc_is_an_operation_named_by_its_method_ending_with_the_tokens_reason() {
    let server = WorkerServer::new(|request: Request<support::WorkRequest>| {
        Box::pin(async move {
            Operation::begin(OperationKind::Query, "inside", None).complete();
            let token = request.token();
            if request.get_ref().label == "wait" {
                token.cancelled().await;
                token.check().into_status()?;
            }
            Ok(Response::new(WorkReply::default()))
        }) as support::WorkFuture
    });
    let operations = Operations::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stopping, hard_stop) = (CancellationSource::new(), CancellationSource::new());
    let run = GrpcServer::new(listener, Routes::new(server)).run(Shutdown {
        stopping: stopping.token(),
        hard_stop: hard_stop.token(),
    });
    let task = tokio::spawn(operations.scope().scoped(run));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut client = WorkerClient::new(channel.clone());
    client.work(work(0, "done")).await.unwrap();
    let mut waiting = WorkerClient::new(channel);
    let call = tokio::spawn(async move { waiting.work(work(0, "wait")).await });
    let deadline = tokio::time::Instant::now() + SOON;
    while !operations
        .snapshot()
        .live
        .iter()
        .any(|o| o.kind == OperationKind::Rpc)
    {
        assert!(tokio::time::Instant::now() < deadline, "the RPC started");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    call.abort(); // RST_STREAM: the token fires with Disconnected
    stopping.cancel();
    tokio::time::timeout(SOON, task).await.unwrap().unwrap();

    let snapshot = operations.snapshot();
    let rpcs: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Rpc)
        .collect();
    assert_eq!(rpcs.len(), 2, "{:?}", snapshot.finished);
    for rpc in &rpcs {
        assert_eq!(rpc.operation.name, "/test.Worker/Work");
        let parent = snapshot
            .finished
            .iter()
            .find(|f| Some(f.operation.id) == rpc.operation.parent)
            .expect("under the HTTP request's operation");
        assert_eq!(parent.operation.kind, OperationKind::Request);
        let inside = snapshot
            .finished
            .iter()
            .filter(|f| f.operation.name == "inside")
            .filter(|f| f.operation.parent == Some(rpc.operation.id))
            .count();
        assert_eq!(inside, 1, "the handler's work runs under its RPC");
    }
    let (cancelled, done) = (rpcs[0], rpcs[1]); // newest first
    assert_eq!(done.outcome.as_str(), "completed");
    let reason = cancelled
        .reason()
        .expect("cancelled with the token's reason");
    assert_eq!(reason.kind(), ReasonKind::Disconnected);
}

#[tokio::test]
async fn an_outbound_call_registers_under_its_caller_and_ends_with_the_tokens_reason() {
    let server = support::TestGrpcServer::start(WorkerServer::new(
        |request: Request<support::WorkRequest>| {
            Box::pin(async move {
                let token = request.token();
                if request.get_ref().label == "wait" {
                    token.cancelled().await;
                    token.check().into_status()?;
                }
                Ok(Response::new(WorkReply::default()))
            }) as support::WorkFuture
        },
    ))
    .await;
    let mut client = server.client().await;
    let operations = Operations::new();
    let caller = operations
        .scope()
        .begin(OperationKind::Request, "POST /checkout", None);
    let source = CancellationSource::with_timeout(std::time::Duration::from_secs(60));
    let token = source.token();
    caller
        .scoped(async {
            client
                .work(Request::new(work(0, "done")).with_token(&token))
                .await
                .unwrap();
            let cancel = async {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                source.cancel_with(
                    gracefully::Reason::requested().with_message("checkout abandoned"),
                );
            };
            let (result, ()) = tokio::join!(
                client.work(Request::new(work(0, "wait")).with_token(&token)),
                cancel
            );
            assert!(result.is_err());
        })
        .await;

    let snapshot = operations.snapshot();
    let calls: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Outbound)
        .collect();
    assert_eq!(calls.len(), 2, "{:?}", snapshot.finished);
    let (stopped, done) = (calls[0], calls[1]); // newest first
    for call in [stopped, done] {
        assert_eq!(call.operation.name, "/test.Worker/Work");
        assert_eq!(call.operation.parent, caller.id());
        assert!(call.operation.deadline.is_some(), "the token's deadline");
    }
    assert_eq!(done.outcome.as_str(), "completed");
    let reason = stopped.reason().expect("cancelled with the token's reason");
    assert_eq!(reason.kind(), ReasonKind::Requested);
    assert_eq!(reason.message(), Some("checkout abandoned"));
    caller.complete();
    server.stop().await;
}

/// A handler that gives up at a deadline of its own (narrower than the call's) answers
/// with that cancellation as its status: its operation ends cancelled with
/// `DeadlineExceeded`, as the server counts it — not failed.
#[tokio::test]
async fn an_rpc_stopped_by_the_handlers_own_deadline_ends_cancelled_not_failed() {
    let server = WorkerServer::new(|request: Request<support::WorkRequest>| {
        Box::pin(async move {
            let own = request
                .token()
                .child_with_timeout(std::time::Duration::from_millis(20));
            own.token()
                .run_until_cancelled(tokio::time::sleep(std::time::Duration::from_secs(10)))
                .await
                .into_status()?;
            Ok(Response::new(WorkReply::default()))
        }) as support::WorkFuture
    });
    let operations = Operations::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stopping, hard_stop) = (CancellationSource::new(), CancellationSource::new());
    let run = GrpcServer::new(listener, Routes::new(server)).run(Shutdown {
        stopping: stopping.token(),
        hard_stop: hard_stop.token(),
    });
    let task = tokio::spawn(operations.scope().scoped(run));
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = WorkerClient::new(channel)
        .work(work(0, "own deadline"))
        .await
        .expect_err("the handler gave up");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    stopping.cancel();
    tokio::time::timeout(SOON, task).await.unwrap().unwrap();
    let snapshot = operations.snapshot();
    let rpc = snapshot
        .finished
        .iter()
        .find(|f| f.operation.kind == OperationKind::Rpc)
        .expect("the RPC's operation");
    assert_eq!(rpc.outcome.as_str(), "cancelled", "{rpc:?}");
    assert_eq!(
        rpc.reason().expect("with its reason").kind(),
        ReasonKind::DeadlineExceeded
    );
}
