//! The server side: every RPC's token fires on client cancel (`Disconnected`), at its
//! `grpc-timeout` (`DeadlineExceeded`) and at the hard stop (`Shutdown`); a handler's
//! `Cancelled` becomes the fitting status; the drain loses no RPC in flight.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gracefully::{Reason, ReasonKind};
use gracefully_tonic::{IntoStatus, RequestExt};
use support::{
    Event, SOON, TestGrpcServer, WorkReply, WorkerServer, next, waits_for_its_token, work,
};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response};

#[tokio::test]
async fn a_client_that_cancels_the_call_fires_the_handlers_token_with_disconnected() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestGrpcServer::start(WorkerServer::new(waits_for_its_token(tx))).await;
    let mut client = server.plain_client().await;
    let call = tokio::spawn(async move { client.work(work(0, "cancel me")).await });
    assert!(matches!(
        next(&mut events).await,
        Event::Started { left: None }
    ));

    // Dropping the call's future resets its HTTP/2 stream (RST_STREAM CANCEL); the
    // connection stays open.
    let cancelled_at = Instant::now();
    call.abort();
    let Event::Fired { kind, at } = next(&mut events).await else {
        panic!("expected the token to fire")
    };
    assert_eq!(kind, ReasonKind::Disconnected);
    println!(
        "gRPC client cancel (RST_STREAM) → handler's token fired after {:?}",
        at.duration_since(cancelled_at)
    );
    let report = server.stop().await;
    assert_eq!(report.client_left, 1, "{report}");
}

#[tokio::test]
async fn a_client_whose_connection_closes_mid_rpc_fires_the_handlers_token_with_disconnected() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestGrpcServer::start(WorkerServer::new(waits_for_its_token(tx))).await;
    let mut client = server.plain_client().await;
    let call = tokio::spawn(async move { client.work(work(0, "leave")).await });
    assert!(matches!(next(&mut events).await, Event::Started { .. }));

    // The task owns the only clone of the channel: aborting it closes the connection.
    let left_at = Instant::now();
    call.abort();
    let Event::Fired { kind, at } = next(&mut events).await else {
        panic!("expected the token to fire")
    };
    assert_eq!(kind, ReasonKind::Disconnected);
    println!(
        "gRPC client gone → handler's token fired after {:?}",
        at.duration_since(left_at)
    );
    server.stop().await;
}

#[tokio::test]
async fn grpc_timeout_is_the_handlers_deadline_and_fires_deadline_exceeded() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestGrpcServer::start(WorkerServer::new(waits_for_its_token(tx))).await;
    // A client that does not enforce grpc-timeout itself (tonic's `Channel` would end the
    // call at the same instant, and the server could see the reset first).
    let mut client = server.raw_client();
    let mut request = Request::new(work(0, "budget"));
    request.set_timeout(Duration::from_millis(300)); // tonic sends it as grpc-timeout
    let call = tokio::spawn(async move { client.work(request).await });

    let Event::Started { left } = next(&mut events).await else {
        panic!("expected the start")
    };
    let left = left.expect("grpc-timeout gives the token a deadline");
    assert!(left <= Duration::from_millis(300), "{left:?}");
    let Event::Fired { kind, .. } = next(&mut events).await else {
        panic!("expected the token to fire")
    };
    assert_eq!(kind, ReasonKind::DeadlineExceeded);
    let status = call.await.unwrap().expect_err("the handler gave up");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("deadline exceeded"), "{status:?}");
    let report = server.stop().await;
    assert_eq!(
        report.cancelled_deadline, 1,
        "counted as timed out: {report}"
    );
}

#[tokio::test]
async fn the_hard_stop_fires_the_token_with_shutdown_and_the_client_gets_unavailable() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestGrpcServer::start(WorkerServer::new(waits_for_its_token(tx))).await;
    let mut client = server.plain_client().await;
    let call = tokio::spawn(async move { client.work(work(0, "in flight")).await });
    assert!(matches!(next(&mut events).await, Event::Started { .. }));

    server.stopping.cancel(); // drain: the RPC in flight runs on…
    server.hard_stop.cancel_with(Reason::shutdown()); // …until the hard stop
    let Event::Fired { kind, .. } = next(&mut events).await else {
        panic!("expected the token to fire")
    };
    assert_eq!(kind, ReasonKind::Shutdown);
    let status = call.await.unwrap().expect_err("cancelled by the shutdown");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let report = tokio::time::timeout(SOON, server.task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(
        report.cancelled_shutdown, 1,
        "counted as cancelled by shutdown: {report}"
    );
    assert_eq!(
        report.drain.as_ref().map(|d| d.cancelled_at_hard_stop),
        Some(1),
        "{report}"
    );
}

#[tokio::test]
async fn shutdown_with_rpcs_in_flight_drains_them_and_loses_none() {
    const CALLS: usize = 20;
    let started = Arc::new(AtomicUsize::new(0));
    let all_started = Arc::new(tokio::sync::Notify::new());
    let service = {
        let started = started.clone();
        let all_started = all_started.clone();
        WorkerServer::new(move |request: Request<support::WorkRequest>| {
            let started = started.clone();
            let all_started = all_started.clone();
            async move {
                let token = request.token();
                if started.fetch_add(1, Ordering::SeqCst) + 1 == CALLS {
                    all_started.notify_one();
                }
                // Work that outlasts the moment the drain begins; its token is untouched
                // by the drain (it is a child of the hard stop).
                let millis = request.get_ref().millis;
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_millis(millis)))
                    .await
                    .into_status()?;
                Ok(Response::new(WorkReply {
                    label: request.into_inner().label,
                }))
            }
        })
    };
    let server = TestGrpcServer::start(service).await;
    // Half the calls share one connection (HTTP/2 streams), half have their own.
    let shared = server.plain_client().await;
    let mut calls = Vec::new();
    for i in 0..CALLS {
        let mut client = if i % 2 == 0 {
            shared.clone()
        } else {
            server.plain_client().await
        };
        calls.push(tokio::spawn(async move {
            client.work(work(300, &format!("call {i}"))).await
        }));
    }
    tokio::time::timeout(SOON, all_started.notified())
        .await
        .expect("every call reaches its handler");

    let report_task = {
        server.stopping.cancel();
        server.task
    };
    for (i, call) in calls.into_iter().enumerate() {
        let reply = call
            .await
            .unwrap()
            .unwrap_or_else(|status| panic!("call {i} lost to the drain: {status:?}"));
        assert_eq!(reply.into_inner().label, format!("call {i}"));
    }
    let report = tokio::time::timeout(SOON, report_task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.completed, CALLS as u64, "{report}");
    assert_eq!(report.lost, 0, "{report}");
    let drain = report.drain.as_ref().expect("a drain happened");
    assert_eq!(drain.requests_in_flight, CALLS as u64, "{report}");
    assert!(
        drain.goaway_sent >= 1,
        "GOAWAY on every connection: {report}"
    );
    assert!(!drain.hard_stop_reached, "{report}");
}

#[tokio::test]
async fn the_rpc_token_is_reachable_from_another_task() {
    let service = WorkerServer::new(|request: Request<support::WorkRequest>| async move {
        // The request moves to a task of its own before its token is asked for.
        let token = tokio::spawn(async move { request.token() }).await.unwrap();
        Ok(Response::new(WorkReply {
            label: token.can_be_cancelled().to_string(),
        }))
    });
    let server = TestGrpcServer::start(service).await;
    let reply = server.plain_client().await.work(work(0, "")).await.unwrap();
    assert_eq!(reply.into_inner().label, "true");
    server.stop().await;
}

#[tokio::test]
async fn a_server_streaming_handler_sees_its_client_cancel() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let service = WorkerServer::new(|_| async { Ok(Response::new(WorkReply::default())) })
        .with_ticks(move |request: Request<support::WorkRequest>| {
            let events = tx.clone();
            async move {
                let token = request.token();
                let watcher = token.clone();
                tokio::spawn(async move {
                    let reason = watcher.cancelled().await;
                    let _ = events.send(Event::Fired {
                        kind: reason.kind(),
                        at: Instant::now(),
                    });
                });
                let ticks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok(support::Tick { n }), n + 1))
                });
                Ok(Response::new(Box::pin(ticks) as support::TickStream))
            }
        });
    let server = TestGrpcServer::start(service).await;
    let mut client = server.plain_client().await;
    let mut stream = client.ticks(work(0, "")).await.unwrap().into_inner();
    for expected in 0..3 {
        assert_eq!(stream.message().await.unwrap().unwrap().n, expected);
    }
    drop(stream); // the client stops reading: RST_STREAM
    let Event::Fired { kind, .. } = next(&mut events).await else {
        panic!("expected the token to fire")
    };
    assert_eq!(kind, ReasonKind::Disconnected);
    server.stop().await;
}

#[tokio::test]
async fn a_panicking_handler_answers_grpc_internal_is_counted_and_the_server_keeps_serving() {
    let service = WorkerServer::new(|request: Request<support::WorkRequest>| async move {
        if request.get_ref().label == "panic" {
            panic!("a bug in the handler");
        }
        Ok(Response::new(WorkReply {
            label: "fine".to_owned(),
        }))
    });
    let server = TestGrpcServer::start(service).await;
    let mut client = server.plain_client().await;
    let status = client
        .work(work(0, "panic"))
        .await
        .expect_err("the handler panicked");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert_eq!(status.message(), "the handler panicked", "{status:?}");
    // The same connection goes on serving.
    let reply = client.work(work(0, "next")).await.unwrap();
    assert_eq!(reply.into_inner().label, "fine");
    let report = server.stop().await;
    assert_eq!(report.panicked, 1, "{report}");
}
