//! `GrpcServer` as a `gracefully-host` service: a host stop drains it (GOAWAY, the RPCs in
//! flight finish), its row in the shutdown report counts each step, and the exit is clean.

mod support;

use std::time::Duration;

use gracefully::Reason;
use gracefully_host::Host;
use gracefully_tonic::{GrpcServer, IntoStatus, RequestExt};
use support::{SOON, WorkReply, WorkRequest, WorkerClient, WorkerServer, work};
use tokio::sync::mpsc;
use tonic::service::Routes;
use tonic::transport::Endpoint;
use tonic::{Request, Response};

#[tokio::test]
async fn a_host_stop_drains_the_grpc_server_and_its_report_row_counts_each_step() {
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let service = WorkerServer::new(move |request: Request<WorkRequest>| {
        let started = started_tx.clone();
        async move {
            let token = request.token();
            let _ = started.send(());
            token
                .run_until_cancelled(tokio::time::sleep(Duration::from_millis(300)))
                .await
                .into_status()?;
            Ok(Response::new(WorkReply {
                label: "finished".to_owned(),
            }))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let host = Host::builder()
        .handle_signals(false)
        .service("grpc", GrpcServer::new(listener, Routes::new(service)))
        .build()
        .unwrap();
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    tokio::time::timeout(SOON, lifetime.started().cancelled())
        .await
        .expect("the host starts");

    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = WorkerClient::new(channel);
    let call = tokio::spawn(async move { client.work(work(0, "")).await });
    tokio::time::timeout(SOON, started.recv()).await.unwrap();

    lifetime.stop(Reason::shutdown().with_message("test"));
    let reply = call.await.unwrap().expect("the RPC in flight finishes");
    assert_eq!(reply.into_inner().label, "finished");
    let report = tokio::time::timeout(SOON, run).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let row = report.entry("grpc").expect("the server's row");
    assert_eq!(
        row.detail("requests in flight at drain"),
        Some("1"),
        "{report}"
    );
    assert_eq!(row.detail("HTTP/2 GOAWAY sent"), Some("1"), "{report}");
    assert_eq!(row.detail("requests completed"), Some("1"), "{report}");
    assert_eq!(row.detail("lost (aborted)"), None, "{report}");
}
