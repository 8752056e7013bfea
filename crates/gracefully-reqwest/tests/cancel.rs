//! A call made with a token stops when the token fires — the request, its connection (seen
//! closed from the server's side), the body being streamed — and its deadline travels in a
//! header.

mod support;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gracefully::{CancellationSource, Reason, ReasonKind, find_cancelled, is_cancellation};
use gracefully_reqwest::{DeadlinePropagation, Error, REQUEST_TIMEOUT_HEADER, RequestBuilderExt};
use support::{PATIENCE, Raw, RawServer, Seen, client, header_in};

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn stream(chunks: usize) -> Raw {
    Raw::Stream {
        chunk: "tick\n",
        every: Duration::from_millis(20),
        chunks,
    }
}

#[tokio::test]
async fn cancelling_aborts_a_stalled_request_and_the_server_sees_its_connection_close() {
    let mut server = RawServer::start(|_| Raw::Stall).await;
    let source = CancellationSource::new();
    let call = tokio::spawn({
        let token = source.token();
        let url = server.url("/slow");
        async move { client().get(url).with_token(&token).send().await }
    });
    server.request().await;

    let cancelled_at = Instant::now();
    source.cancel_with(Reason::requested().with_message("the user left"));
    let closed_at = server.closed().await;
    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call ended")
        .unwrap()
        .expect_err("the call was aborted");

    assert!(is_cancellation(&err), "{err}");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::Requested);
    assert_eq!(cancelled.reason().message(), Some("the user left"));
    eprintln!(
        "cancel -> close seen by the server: {:?}",
        closed_at.saturating_duration_since(cancelled_at)
    );
}

#[tokio::test]
async fn a_deadline_aborts_a_stalled_request_with_deadline_exceeded() {
    let mut server = RawServer::start(|_| Raw::Stall).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(300));
    let token = source.token();
    let call = client().get(server.url("/slow")).with_token(&token).send();
    let (err, closed) = tokio::join!(call, server.closed());
    let err = err.expect_err("the deadline aborted the call");
    assert_eq!(
        err.as_cancelled().expect("Error::Cancelled").kind(),
        ReasonKind::DeadlineExceeded,
        "{err}"
    );
    // The close came after the deadline, not before (the request was not dropped early).
    let deadline = token.deadline().unwrap();
    assert!(closed >= deadline, "closed {:?} early", deadline - closed);
}

#[tokio::test]
async fn with_reqwests_timeout_set_too_the_deadline_is_still_reported_as_deadline_exceeded() {
    // reqwest's own timer is armed for the same instant and may fire first; the caller
    // still sees the token's deadline, for the request and for a body read.
    let propagation = DeadlinePropagation::default().set_request_timeout(true);
    let mut server = RawServer::start(|_| Raw::Stall).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(200));
    let err = client()
        .get(server.url("/slow"))
        .with_token(&source.token())
        .propagation(propagation.clone())
        .send()
        .await
        .expect_err("the deadline aborted the call");
    assert_eq!(
        err.as_cancelled().expect("Error::Cancelled").kind(),
        ReasonKind::DeadlineExceeded,
        "{err}"
    );
    server.closed().await;

    let mut server = RawServer::start(|_| stream(500)).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(200));
    let response = client()
        .get(server.url("/events"))
        .with_token(&source.token())
        .propagation(propagation)
        .send()
        .await
        .expect("the response head arrives");
    let err = response
        .bytes()
        .await
        .expect_err("the body never ends in time");
    assert_eq!(
        find_cancelled(&err).expect("a cancellation").kind(),
        ReasonKind::DeadlineExceeded,
        "{err}"
    );
    server.closed().await;
}

#[tokio::test]
async fn a_streamed_body_stops_mid_stream_when_the_token_fires() {
    let mut server = RawServer::start(|_| stream(500)).await;
    let source = CancellationSource::new();
    let response = client()
        .get(server.url("/events"))
        .with_token(&source.token())
        .send()
        .await
        .expect("the response head arrives");
    let mut body = response.bytes_stream();
    let mut received = 0;
    while received < 3 * "tick\n".len() {
        let chunk = body.next().await.expect("more body").expect("a chunk");
        received += chunk.len();
    }

    source.cancel_with(Reason::shutdown());
    let err = body
        .next()
        .await
        .expect("the stream reports the cancellation")
        .expect_err("the stream stopped");
    assert!(is_cancellation(&err), "{err}");
    assert_eq!(
        find_cancelled(&err).unwrap().kind(),
        ReasonKind::Shutdown,
        "{err}"
    );
    assert!(
        body.next().await.is_none(),
        "the stream ends after the error"
    );

    // The server sees the connection close long before its 500 chunks are out.
    let mut written = 0;
    loop {
        match server.next().await {
            Seen::Wrote { chunks, .. } => written = chunks,
            Seen::Closed { .. } => break,
            Seen::Request { .. } => {}
        }
    }
    assert!(written < 500, "wrote all {written} chunks");
}

#[tokio::test]
async fn a_deadline_ends_a_body_read_with_deadline_exceeded() {
    let mut server = RawServer::start(|_| stream(500)).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(300));
    let response = client()
        .get(server.url("/events"))
        .with_token(&source.token())
        .send()
        .await
        .expect("the response head arrives");
    let err = response
        .bytes()
        .await
        .expect_err("the body never ends in time");
    let cancelled = find_cancelled(&err).expect("a cancellation");
    assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded, "{err}");
    // ... and `Error::from` turns it back into `Error::Cancelled`.
    assert!(Error::from(err).is_cancelled());
    server.closed().await;
}

#[tokio::test]
async fn a_response_held_unread_loses_its_connection_when_the_token_fires() {
    let mut server = RawServer::start(|_| stream(500)).await;
    let source = CancellationSource::new();
    let mut response = client()
        .get(server.url("/events"))
        .with_token(&source.token())
        .send()
        .await
        .expect("the response head arrives");
    // Nothing reads the body while the token fires: the callback drops it.
    source.cancel();
    server.closed().await;
    // A read after that reports the cancellation (the body was cut short, not complete).
    let err = response.chunk().await.expect_err("the body was cut short");
    assert!(is_cancellation(&err), "{err}");
    // The head stays readable.
    assert_eq!(response.status(), 200);
    assert!(response.url().path().ends_with("/events"));
}

#[tokio::test]
async fn a_body_read_to_its_end_before_the_cancel_is_whole() {
    let server = RawServer::start(|_| stream(3)).await;
    let source = CancellationSource::new();
    let response = client()
        .get(server.url("/events"))
        .with_token(&source.token())
        .send()
        .await
        .expect("the response head arrives");
    assert_eq!(response.content_length(), None);
    let body = response.text().await.expect("the whole body");
    assert_eq!(body, "tick\ntick\ntick\n");
    source.cancel();
}

#[tokio::test]
async fn the_deadline_header_carries_a_budget_within_the_tokens_remaining_time() {
    let mut server = RawServer::start(|_| Raw::Reply(OK)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(2));
    let token = source.token();
    let left_before_sending = token.time_left().unwrap();
    let response = client()
        .get(server.url("/"))
        .with_token(&token)
        .send()
        .await
        .expect("a response");
    assert_eq!(response.text().await.unwrap(), "ok");

    let (head, _) = server.request().await;
    let sent: u64 = header_in(&head, REQUEST_TIMEOUT_HEADER)
        .expect("the header was sent")
        .parse()
        .expect("whole milliseconds");
    let ceiling = left_before_sending.as_millis() as u64 - 5; // the default transit allowance
    assert!(
        sent >= 1 && sent <= ceiling,
        "sent {sent} ms, at most {ceiling}"
    );
    assert!(sent > 1_000, "sent {sent} ms of a 2 s budget");
}

#[tokio::test]
async fn a_configured_header_and_allowance_are_used() {
    let mut server = RawServer::start(|_| Raw::Reply(OK)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(2));
    let token = source.token();
    let left_before_sending = token.time_left().unwrap();
    client()
        .get(server.url("/"))
        .with_token(&token)
        .propagation(
            DeadlinePropagation::default()
                .header(http::HeaderName::from_static(
                    "x-envoy-expected-rq-timeout-ms",
                ))
                .transit_allowance(Duration::from_millis(500)),
        )
        .send()
        .await
        .expect("a response");
    let (head, _) = server.request().await;
    assert!(header_in(&head, REQUEST_TIMEOUT_HEADER).is_none());
    let sent: u64 = header_in(&head, "x-envoy-expected-rq-timeout-ms")
        .expect("the configured header was sent")
        .parse()
        .unwrap();
    assert!(
        sent <= left_before_sending.as_millis() as u64 - 500,
        "{sent}"
    );
}

#[tokio::test]
async fn a_token_without_a_deadline_sends_no_header() {
    let mut server = RawServer::start(|_| Raw::Reply(OK)).await;
    let source = CancellationSource::new();
    client()
        .get(server.url("/"))
        .with_token(&source.token())
        .send()
        .await
        .expect("a response");
    let (head, _) = server.request().await;
    assert!(header_in(&head, REQUEST_TIMEOUT_HEADER).is_none(), "{head}");
}

/// Nothing reaches the server within a while: no connection, no request.
async fn nothing_arrives(server: &mut RawServer) {
    let seen = tokio::time::timeout(Duration::from_millis(300), server.seen.recv()).await;
    assert!(seen.is_err(), "the server saw {seen:?}");
}

#[tokio::test]
async fn a_spent_budget_fails_with_deadline_exceeded_and_sends_nothing() {
    let mut server = RawServer::start(|_| Raw::Reply(OK)).await;
    // 4 ms left is less than the 5 ms transit allowance: nothing would be left to send.
    let source = CancellationSource::with_timeout(Duration::from_millis(4));
    let err = client()
        .get(server.url("/"))
        .with_token(&source.token())
        .send()
        .await
        .expect_err("not sent");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded);
    nothing_arrives(&mut server).await;
}

#[tokio::test]
async fn a_cancelled_token_sends_nothing_and_reports_its_reason() {
    let mut server = RawServer::start(|_| Raw::Reply(OK)).await;
    let source = CancellationSource::new();
    source.cancel_with(Reason::shutdown().with_message("SIGTERM"));
    let err = client()
        .get(server.url("/"))
        .with_token(&source.token())
        .send()
        .await
        .expect_err("not sent");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::Shutdown);
    assert_eq!(cancelled.reason().message(), Some("SIGTERM"));
    nothing_arrives(&mut server).await;
}

#[tokio::test]
async fn a_bad_url_is_a_request_error_not_a_cancellation() {
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let err = client()
        .get("not a url")
        .with_token(&source.token())
        .send()
        .await
        .expect_err("a bad URL");
    assert!(!is_cancellation(&err), "{err}");
    assert!(
        err.as_reqwest().expect("Error::Request").is_builder(),
        "{err}"
    );
}

#[tokio::test]
async fn a_cancellation_is_still_one_as_an_io_error() {
    let source = CancellationSource::new();
    source.cancel();
    let err = client()
        .get("http://127.0.0.1:9/")
        .with_token(&source.token())
        .send()
        .await
        .expect_err("cancelled");
    let io = std::io::Error::from(err);
    assert_eq!(io.kind(), std::io::ErrorKind::Interrupted);
    assert!(is_cancellation(&io));
}

#[test]
fn the_send_future_is_send() {
    fn assert_send<T: Send>(_: &T) {}
    let source = CancellationSource::new();
    let future = client()
        .get("http://127.0.0.1:9/")
        .with_token(&source.token())
        .send();
    assert_send(&future);
}
