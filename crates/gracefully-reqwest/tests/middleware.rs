//! The `reqwest-middleware` integration: the same abort, deadline header, body guard and
//! retries as the extension trait, with the token carried in the request's extensions.

#![cfg(feature = "middleware")]

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use gracefully::{CancellationSource, Reason, ReasonKind, find_cancelled, is_cancellation};
use gracefully_reqwest::{
    GracefulMiddleware, MiddlewareRequestExt, REQUEST_TIMEOUT_HEADER, RetryPolicy,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use support::{PATIENCE, Raw, RawServer, Reply, ScriptServer, client, header_in};

fn stack(middleware: GracefulMiddleware) -> ClientWithMiddleware {
    ClientBuilder::new(client()).with(middleware).build()
}

#[tokio::test]
async fn the_middleware_aborts_a_stalled_request_and_its_error_is_a_cancellation() {
    let mut server = RawServer::start(|_| Raw::Stall).await;
    let source = CancellationSource::new();
    let call = tokio::spawn({
        let token = source.token();
        let url = server.url("/slow");
        async move {
            stack(GracefulMiddleware::new())
                .get(url)
                .with_token(&token)
                .send()
                .await
        }
    });
    server.request().await;
    source.cancel_with(Reason::disconnected());
    server.closed().await;
    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the call ended")
        .unwrap()
        .expect_err("aborted");
    assert!(is_cancellation(&err), "{err}");
    assert_eq!(
        find_cancelled(&err).unwrap().kind(),
        ReasonKind::Disconnected
    );
}

#[tokio::test]
async fn the_middleware_sends_the_deadline_header() {
    let mut server =
        RawServer::start(|_| Raw::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(3));
    let token = source.token();
    let left_before_sending = token.time_left().unwrap();
    let response = stack(GracefulMiddleware::new())
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
        .unwrap();
    assert!(
        sent >= 1 && sent <= left_before_sending.as_millis() as u64 - 5,
        "{sent}"
    );
}

#[tokio::test]
async fn a_request_without_a_token_passes_through_untouched() {
    let mut server =
        RawServer::start(|_| Raw::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")).await;
    let response = stack(GracefulMiddleware::new().retry(RetryPolicy::default()))
        .get(server.url("/"))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.text().await.unwrap(), "ok");
    let (head, _) = server.request().await;
    assert!(header_in(&head, REQUEST_TIMEOUT_HEADER).is_none(), "{head}");
}

#[tokio::test]
async fn the_middleware_retries_a_flaky_server_within_the_deadline() {
    let server = ScriptServer::start(|n| Reply::status(if n < 2 { 502 } else { 200 })).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let policy = RetryPolicy::default()
        .jitter(false)
        .backoff(Duration::from_millis(10), Duration::from_millis(10));
    let response = stack(GracefulMiddleware::new().retry(policy))
        .get(server.url("/flaky"))
        .with_token(&source.token())
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), 200);
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn a_body_through_the_middleware_stops_when_the_token_fires() {
    let mut server = RawServer::start(|_| Raw::Stream {
        chunk: "tick\n",
        every: Duration::from_millis(20),
        chunks: 500,
    })
    .await;
    let source = CancellationSource::new();
    let response = stack(GracefulMiddleware::new())
        .get(server.url("/events"))
        .with_token(&source.token())
        .send()
        .await
        .expect("the response head arrives");
    let mut body = response.bytes_stream();
    body.next().await.expect("a chunk").expect("a chunk");
    source.cancel_with(Reason::shutdown());
    let err = body
        .next()
        .await
        .expect("the stream reports the cancellation")
        .expect_err("stopped");
    assert_eq!(find_cancelled(&err).unwrap().kind(), ReasonKind::Shutdown);
    server.closed().await;
}

#[tokio::test]
async fn an_invalid_policy_in_the_middleware_fails_before_sending() {
    let server = ScriptServer::start(|_| Reply::status(200)).await;
    let source = CancellationSource::new();
    let err = stack(GracefulMiddleware::new().retry(RetryPolicy::default().factor(f32::INFINITY)))
        .get(server.url("/"))
        .with_token(&source.token())
        .send()
        .await
        .expect_err("invalid policy");
    assert!(err.to_string().contains("factor"), "{err}");
    assert!(!is_cancellation(&err));
    assert!(server.received().is_empty());
}
