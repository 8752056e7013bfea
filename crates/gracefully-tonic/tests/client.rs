//! The client side: `GracefulLayer` sends a call's token deadline as `grpc-timeout` (the
//! server keeping its transit allowance back), stops the call — the
//! response future and a response stream — when the token fires, with a `Status` that is a
//! cancellation, and by default takes the token of the request it is called from.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gracefully::{CancellationSource, Reason, ReasonKind};
use gracefully_tonic::{GracefulLayer, RequestExt, cancellation_of};
use support::{
    Event, SOON, TestGrpcServer, Tick, TickStream, WorkReply, WorkRequest, WorkerClient,
    WorkerServer, next, waits_for_its_token, work,
};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

/// A `Work` handler that answers with the deadline headers it received and the time its
/// token had left, as `grpc-timeout|x-request-timeout-ms|left-ms` (the second, which
/// gracefully-reqwest sends over HTTP, must stay empty for gRPC calls).
fn echo_deadline() -> WorkerServer {
    WorkerServer::new(|request: Request<WorkRequest>| async move {
        let header = |name: &str| {
            request
                .metadata()
                .get(name)
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let left = request
            .token()
            .time_left()
            .map(|d| d.as_millis().to_string())
            .unwrap_or_default();
        Ok(Response::new(WorkReply {
            label: format!(
                "{}|{}|{left}",
                header("grpc-timeout"),
                header("x-request-timeout-ms")
            ),
        }))
    })
}

fn parts(reply: Response<WorkReply>) -> (String, String, String) {
    let label = reply.into_inner().label;
    let mut it = label.split('|').map(str::to_owned);
    (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
}

/// What `echo_deadline` saw of a call bound to a token with `time_left`, its request first
/// changed by `prepare`.
async fn sent(
    time_left: Duration,
    prepare: impl FnOnce(&mut Request<WorkRequest>),
) -> (String, String, String) {
    let server = TestGrpcServer::start(echo_deadline()).await;
    let mut client = server.client().await;
    let call = CancellationSource::with_timeout(time_left);
    let mut request = Request::new(work(0, "")).with_token(&call.token());
    prepare(&mut request);
    let seen = parts(client.work(request).await.unwrap());
    server.stop().await;
    seen
}

/// A `grpc-timeout` as sent, parsed.
fn budget(grpc_timeout: &str) -> Duration {
    gracefully_axum::BudgetFormat::GrpcTimeout
        .parse(grpc_timeout.as_bytes())
        .unwrap_or_else(|| panic!("a well-formed grpc-timeout, not {grpc_timeout:?}"))
}

#[tokio::test]
async fn the_tokens_deadline_goes_out_as_grpc_timeout_and_the_server_keeps_the_allowance_back() {
    let (grpc_timeout, second_header, left_ms) = sent(Duration::from_secs(20), |_| {}).await;
    let grpc_timeout = budget(&grpc_timeout);
    assert!(grpc_timeout <= Duration::from_secs(20), "{grpc_timeout:?}");
    assert!(grpc_timeout > Duration::from_secs(10), "{grpc_timeout:?}");
    assert_eq!(second_header, "", "one header carries the budget");
    let left_ms: u128 = left_ms.parse().expect("the server's token has a deadline");
    assert!(
        left_ms + 5 <= grpc_timeout.as_millis(),
        "the server keeps its 5 ms allowance back: {left_ms} ms left of {grpc_timeout:?}"
    );
}

#[tokio::test]
async fn a_smaller_grpc_timeout_set_by_the_caller_is_kept() {
    let (grpc_timeout, second_header, left_ms) = sent(Duration::from_secs(20), |request| {
        request.set_timeout(Duration::from_secs(3));
    })
    .await;
    assert_eq!(grpc_timeout, "3000000u");
    assert_eq!(second_header, "");
    let left_ms: u64 = left_ms.parse().unwrap();
    assert!(left_ms <= 2995, "{left_ms}");
}

#[tokio::test]
async fn a_larger_grpc_timeout_set_by_the_caller_is_replaced_by_the_time_left() {
    let (grpc_timeout, _, _) = sent(Duration::from_secs(2), |request| {
        request.set_timeout(Duration::from_secs(30));
    })
    .await;
    let grpc_timeout = budget(&grpc_timeout);
    assert!(grpc_timeout <= Duration::from_secs(2), "{grpc_timeout:?}");
}

/// Over a day left: a caller's `48H` is more than that and is replaced, though both read as
/// a day once capped (the comparison was made on capped values, so `48H` went on).
#[tokio::test]
async fn a_grpc_timeout_of_the_caller_beyond_a_day_and_the_time_left_is_replaced() {
    let (grpc_timeout, _, _) = sent(Duration::from_secs(30 * 3600), |request| {
        request
            .metadata_mut()
            .insert("grpc-timeout", "48H".parse().unwrap());
    })
    .await;
    let exact = gracefully_axum::BudgetFormat::GrpcTimeout
        .parse_exact(grpc_timeout.as_bytes())
        .unwrap();
    assert!(exact <= Duration::from_secs(30 * 3600), "{grpc_timeout}");
    assert!(exact > Duration::from_secs(29 * 3600), "{grpc_timeout}");
}

#[tokio::test]
async fn a_malformed_grpc_timeout_set_by_the_caller_is_replaced_by_the_time_left() {
    let (grpc_timeout, _, left) = sent(Duration::from_secs(2), |request| {
        request
            .metadata_mut()
            .insert("grpc-timeout", "soon".parse().unwrap());
    })
    .await;
    let grpc_timeout = budget(&grpc_timeout);
    assert!(grpc_timeout <= Duration::from_secs(2), "{grpc_timeout:?}");
    assert!(!left.is_empty(), "the server's token has the deadline");
}

#[tokio::test]
async fn a_call_without_a_token_passes_through_untouched() {
    let server = TestGrpcServer::start(echo_deadline()).await;
    let mut client = server.client().await;
    let (grpc_timeout, budget_ms, left) = parts(client.work(work(0, "")).await.unwrap());
    assert_eq!(
        (grpc_timeout.as_str(), budget_ms.as_str(), left.as_str()),
        ("", "", "")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_call_stops_when_its_token_fires_with_a_status_that_is_a_cancellation() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let server = TestGrpcServer::start(WorkerServer::new(waits_for_its_token(tx))).await;
    let mut client = server.client().await;
    let call = CancellationSource::new();
    let token = call.token();
    let pending = tokio::spawn(async move {
        client
            .work(Request::new(work(0, "")).with_token(&token))
            .await
    });
    assert!(matches!(next(&mut events).await, Event::Started { .. }));

    call.cancel_with(Reason::requested().with_message("the user pressed stop"));
    let status = tokio::time::timeout(SOON, pending)
        .await
        .expect("the call ends at once")
        .unwrap()
        .expect_err("cancelled");
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(gracefully::is_cancellation(&status), "{status:?}");
    let cancelled = cancellation_of(&status).expect("the status carries the cancellation");
    assert_eq!(cancelled.kind(), ReasonKind::Requested);
    assert_eq!(cancelled.reason().message(), Some("the user pressed stop"));

    // The stream was reset: the server's handler saw its client leave.
    let Event::Fired { kind, .. } = next(&mut events).await else {
        panic!("expected the server's token to fire")
    };
    assert_eq!(kind, ReasonKind::Disconnected);
    server.stop().await;
}

#[tokio::test]
async fn a_call_ends_at_its_deadline_with_deadline_exceeded_even_if_the_server_never_answers() {
    // A handler that ignores its token.
    let server = TestGrpcServer::start(WorkerServer::new(|_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Response::new(WorkReply::default()))
    }))
    .await;
    let mut client = server.client().await;
    let call = CancellationSource::with_timeout(Duration::from_millis(200));
    let status = tokio::time::timeout(
        SOON,
        client.work(Request::new(work(0, "")).with_token(&call.token())),
    )
    .await
    .expect("the call ends")
    .expect_err("the deadline passed");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(gracefully::is_cancellation(&status), "{status:?}");
}

#[tokio::test]
async fn a_cancelled_token_or_a_spent_budget_sends_nothing() {
    let calls = Arc::new(AtomicUsize::new(0));
    let server = TestGrpcServer::start({
        let calls = calls.clone();
        WorkerServer::new(move |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok(Response::new(WorkReply::default())) }
        })
    })
    .await;
    let mut client = server.client().await;

    let cancelled = CancellationSource::new();
    cancelled.cancel_with(Reason::shutdown());
    let status = client
        .work(Request::new(work(0, "")).with_token(&cancelled.token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        cancellation_of(&status).unwrap().kind(),
        ReasonKind::Shutdown
    );

    let spent = CancellationSource::with_timeout(Duration::from_millis(4)); // < 5 ms + 1 ms
    let status = client
        .work(Request::new(work(0, "")).with_token(&spent.token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("not sent"), "{status:?}");

    // The connection works, and neither call reached the server.
    client.work(work(0, "")).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    server.stop().await;
}

#[tokio::test]
async fn a_response_stream_stops_when_its_token_fires_and_the_server_sees_the_reset() {
    let (tx, mut events) = mpsc::unbounded_channel();
    let service = WorkerServer::new(|_| async { Ok(Response::new(WorkReply::default())) })
        .with_ticks(move |request: Request<WorkRequest>| {
            let events = tx.clone();
            async move {
                let watcher = request.token();
                tokio::spawn(async move {
                    let reason = watcher.cancelled().await;
                    let _ = events.send(Event::Fired {
                        kind: reason.kind(),
                        at: std::time::Instant::now(),
                    });
                });
                let ticks = futures_util::stream::unfold(0u64, |n| async move {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Some((Ok(Tick { n }), n + 1))
                });
                Ok(Response::new(Box::pin(ticks) as TickStream))
            }
        });
    let server = TestGrpcServer::start(service).await;
    let mut client = server.client().await;
    let call = CancellationSource::new();
    let mut stream = client
        .ticks(Request::new(work(0, "")).with_token(&call.token()))
        .await
        .unwrap()
        .into_inner();
    for expected in 0..3 {
        assert_eq!(stream.message().await.unwrap().unwrap().n, expected);
    }
    call.cancel_with(Reason::disconnected().with_message("our caller left"));
    // Messages already received may still be read; then the stream ends with the reason.
    let status = loop {
        match tokio::time::timeout(SOON, stream.message()).await.unwrap() {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(gracefully::is_cancellation(&status), "{status:?}");
    assert_eq!(
        cancellation_of(&status).map(|c| c.kind()),
        Some(ReasonKind::Disconnected)
    );
    // The stream is reset while `stream` is still held: the server's token fires.
    let Event::Fired { kind, .. } = next(&mut events).await else {
        panic!("expected the server's token to fire")
    };
    assert_eq!(kind, ReasonKind::Disconnected);
    drop(stream);
    server.stop().await;
}

/// A front server whose `Work` handler calls `back` through a `GracefulLayer` channel made
/// by `layer`, without giving a token, and answers with what `back` answered.
async fn front(back: &TestGrpcServer, layer: GracefulLayer) -> TestGrpcServer {
    let channel = tower::ServiceBuilder::new()
        .layer(layer)
        .service(back.channel().await);
    let client = WorkerClient::new(channel);
    TestGrpcServer::start(WorkerServer::new(move |_: Request<WorkRequest>| {
        let mut client = client.clone();
        async move { client.work(work(0, "")).await }
    }))
    .await
}

#[tokio::test]
async fn a_call_made_inside_a_handler_takes_the_handlers_token_by_default() {
    let back = TestGrpcServer::start(echo_deadline()).await;
    let front = front(&back, GracefulLayer::new()).await;
    let mut request = Request::new(work(0, ""));
    request.set_timeout(Duration::from_secs(20)); // the front's budget
    let (grpc_timeout, _, left) = parts(front.raw_client().work(request).await.unwrap());
    let grpc_timeout = budget(&grpc_timeout); // the front's deadline went on
    assert!(grpc_timeout <= Duration::from_secs(20), "{grpc_timeout:?}");
    assert!(!left.is_empty(), "the back's token has the deadline");
    front.stop().await;
    back.stop().await;
}

#[tokio::test]
async fn propagation_can_be_turned_off() {
    let back = TestGrpcServer::start(echo_deadline()).await;
    let front = front(&back, GracefulLayer::new().propagate_request_token(false)).await;
    let mut request = Request::new(work(0, ""));
    request.set_timeout(Duration::from_secs(20));
    let (grpc_timeout, budget_ms, left) = parts(front.raw_client().work(request).await.unwrap());
    assert_eq!(
        (grpc_timeout.as_str(), budget_ms.as_str(), left.as_str()),
        ("", "", "")
    );
    front.stop().await;
    back.stop().await;
}

#[tokio::test]
async fn a_status_from_the_server_is_passed_on_unchanged() {
    let server = TestGrpcServer::start(WorkerServer::new(|_| async {
        Err::<Response<WorkReply>, _>(Status::not_found("no such item"))
    }))
    .await;
    let mut client = server.client().await;
    let call = CancellationSource::with_timeout(Duration::from_secs(20));
    let status = client
        .work(Request::new(work(0, "")).with_token(&call.token()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(status.message(), "no such item");
    assert!(!gracefully::is_cancellation(&status));
    server.stop().await;
}

#[tokio::test]
async fn a_shorter_grpc_timeout_that_tonics_channel_enforces_ends_the_call_with_deadline_exceeded()
{
    // A handler that ignores its token: the client's own timer ends the call.
    let server = TestGrpcServer::start(WorkerServer::new(|_| async {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Response::new(WorkReply::default()))
    }))
    .await;
    let mut client = server.client().await;
    let call = CancellationSource::with_timeout(Duration::from_secs(20));
    let mut request = Request::new(work(0, "")).with_token(&call.token());
    request.set_timeout(Duration::from_millis(100)); // tonic's Channel enforces this itself
    let status = tokio::time::timeout(SOON, client.work(request))
        .await
        .expect("the call ends")
        .expect_err("its grpc-timeout passed");
    // tonic alone reports `CANCELLED` ("Timeout expired"); the layer says what happened.
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(gracefully::is_cancellation(&status), "{status:?}");
    assert!(!call.is_cancelled(), "the call's token itself is untouched");
}
