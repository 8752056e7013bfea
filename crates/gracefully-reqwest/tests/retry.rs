//! Retries bounded by the token: what is retried, how often, how long it waits, and that no
//! wait crosses the deadline or outlives a cancellation.

mod support;

use std::time::{Duration, Instant};

use gracefully::{CancellationSource, Reason, ReasonKind, is_cancellation};
use gracefully_reqwest::{Error, REQUEST_TIMEOUT_HEADER, RequestBuilderExt, RetryPolicy};
use reqwest::StatusCode;
use support::{PATIENCE, Raw, RawServer, Reply, ScriptServer, client};

/// Retries with fixed, short waits, so the tests' arithmetic is exact.
fn quick() -> RetryPolicy {
    RetryPolicy::default()
        .jitter(false)
        .backoff(Duration::from_millis(10), Duration::from_millis(10))
}

fn budget(received: &support::Received) -> u64 {
    received.headers[REQUEST_TIMEOUT_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_flaky_server_that_fails_twice_then_succeeds_gives_a_success() {
    let server = ScriptServer::start(|n| Reply::status(if n < 2 { 503 } else { 200 })).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .get(server.url("/flaky"))
        .with_token(&source.token())
        .retry(quick())
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "body");
    let received = server.received();
    assert_eq!(received.len(), 3);
    // Each attempt carried the budget left at its own start.
    let budgets: Vec<u64> = received.iter().map(budget).collect();
    assert!(budgets.windows(2).all(|w| w[1] <= w[0]), "{budgets:?}");
    assert!(budgets[0] <= 5_000 - 5, "{budgets:?}");
}

#[tokio::test]
async fn a_server_slower_than_the_budget_gets_exactly_the_attempts_that_fit() {
    // Every answer would take 10 s. Each attempt may take 200 ms, then 50 ms of backoff:
    // attempts start at about 0, 250, 500 and 750 ms; the fourth has 150 ms left of the
    // 900 ms budget and is cut by the deadline. A fifth could not start before it.
    let server = ScriptServer::start(|_| Reply::status(200).after(Duration::from_secs(10))).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(900));
    let token = source.token();
    let deadline = token.deadline().unwrap();
    let policy = RetryPolicy::default()
        .jitter(false)
        .max_retries(10)
        .backoff(Duration::from_millis(50), Duration::from_millis(50))
        .attempt_timeout(Duration::from_millis(200));
    let err = client()
        .get(server.url("/slow"))
        .with_token(&token)
        .retry(policy)
        .send()
        .await
        .expect_err("no answer fits the budget");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded, "{err}");

    let received = server.received();
    assert_eq!(received.len(), 4, "attempts: {received:?}");
    for attempt in &received {
        assert!(
            attempt.at < deadline,
            "an attempt started after the deadline"
        );
        assert!(budget(attempt) <= 200 - 5, "{}", budget(attempt));
    }
    assert!(
        budget(&received[3]) < 195,
        "the last attempt had less than its own 200 ms"
    );
}

#[tokio::test]
async fn without_an_attempt_timeout_a_slow_server_gets_one_attempt() {
    let server = ScriptServer::start(|_| Reply::status(200).after(Duration::from_secs(10))).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(300));
    let err = client()
        .get(server.url("/slow"))
        .with_token(&source.token())
        .retry(quick().max_retries(5))
        .send()
        .await
        .expect_err("no answer fits the budget");
    assert_eq!(
        err.as_cancelled().expect("Error::Cancelled").kind(),
        ReasonKind::DeadlineExceeded
    );
    assert_eq!(
        server.received().len(),
        1,
        "nothing is retried after the deadline"
    );
}

#[tokio::test]
async fn a_wait_that_would_cross_the_deadline_is_never_begun() {
    let server = ScriptServer::start(|_| Reply::status(503)).await;
    let source = CancellationSource::with_timeout(Duration::from_millis(500));
    let token = source.token();
    let policy = RetryPolicy::default()
        .jitter(false)
        .backoff(Duration::from_secs(2), Duration::from_secs(2));
    let err = client()
        .get(server.url("/busy"))
        .with_token(&token)
        .retry(policy)
        .send()
        .await
        .expect_err("the next attempt cannot start in time");
    // It gave up before the deadline instead of sleeping into it.
    assert!(!token.is_cancelled(), "it waited for the deadline");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded);
    let message = cancelled.reason().message().unwrap();
    assert!(
        message.contains("retry stopped") && message.contains("503"),
        "{message}"
    );
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_cancel_during_backoff_ends_the_wait_at_once() {
    let server = ScriptServer::start(|_| Reply::status(503)).await;
    let source = CancellationSource::new();
    let policy = RetryPolicy::default()
        .jitter(false)
        .backoff(Duration::from_secs(60), Duration::from_secs(60));
    let call = tokio::spawn({
        let token = source.token();
        let url = server.url("/busy");
        async move {
            client()
                .get(url)
                .with_token(&token)
                .retry(policy)
                .send()
                .await
        }
    });
    // The first attempt is answered 503; the call is now in its 60 s wait.
    let started = Instant::now();
    while server.received().is_empty() {
        assert!(started.elapsed() < PATIENCE, "no attempt arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    source.cancel_with(Reason::requested().with_message("never mind"));

    let err = tokio::time::timeout(PATIENCE, call)
        .await
        .expect("the wait ended long before its 60 s")
        .unwrap()
        .expect_err("cancelled");
    let cancelled = err.as_cancelled().expect("Error::Cancelled");
    assert_eq!(cancelled.kind(), ReasonKind::Requested);
    assert_eq!(cancelled.reason().message(), Some("never mind"));
    assert_eq!(
        server.received().len(),
        1,
        "nothing is retried after a cancellation"
    );
}

#[tokio::test]
async fn a_post_is_not_retried_by_default() {
    let server = ScriptServer::start(|_| Reply::status(503)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .post(server.url("/orders"))
        .body("{}")
        .with_token(&source.token())
        .retry(quick())
        .send()
        .await
        .expect("the 503 is returned as it is");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let received = server.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].method, "POST");
}

#[tokio::test]
async fn a_post_is_retried_when_any_method_is_allowed() {
    let server = ScriptServer::start(|n| Reply::status(if n < 1 { 503 } else { 201 })).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .post(server.url("/orders"))
        .body("{}")
        .with_token(&source.token())
        .retry(quick().retry_any_method(true))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(server.received().len(), 2);
}

#[tokio::test]
async fn a_retry_after_within_the_budget_is_waited_for() {
    let server = ScriptServer::start(|n| {
        if n == 0 {
            Reply::status(429).header("retry-after", "1")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .get(server.url("/limited"))
        .with_token(&source.token())
        // Waits of 10 ms, but a Retry-After of up to 2 s is honoured.
        .retry(quick().backoff(Duration::from_millis(10), Duration::from_secs(2)))
        .send()
        .await
        .expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let received = server.received();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried after {gap:?}, asked 1 s"
    );
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_stops_at_once_with_deadline_exceeded() {
    let server = ScriptServer::start(|_| Reply::status(429).header("retry-after", "5")).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(1));
    let token = source.token();
    let err = client()
        .get(server.url("/limited"))
        .with_token(&token)
        .retry(quick().backoff(Duration::from_millis(10), Duration::from_secs(10)))
        .send()
        .await
        .expect_err("the asked wait does not fit");
    assert!(!token.is_cancelled(), "it waited for the deadline");
    assert_eq!(
        err.as_cancelled().expect("Error::Cancelled").kind(),
        ReasonKind::DeadlineExceeded
    );
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_max_delay_returns_the_response() {
    let server = ScriptServer::start(|_| Reply::status(503).header("retry-after", "60")).await;
    let source = CancellationSource::new();
    let response = client()
        .get(server.url("/maintenance"))
        .with_token(&source.token())
        .retry(quick().backoff(Duration::from_millis(10), Duration::from_secs(1)))
        .send()
        .await
        .expect("the 503 is returned");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn connection_errors_are_retried() {
    // The first two connections are closed without an answer; the third answers.
    let server = RawServer::start(|conn| {
        if conn < 2 {
            Raw::Hang
        } else {
            Raw::Reply("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .get(server.url("/"))
        .with_token(&source.token())
        .retry(quick())
        .send()
        .await
        .expect("the third connection answers");
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn connection_errors_are_not_retried_when_turned_off() {
    let server = RawServer::start(|_| Raw::Hang).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let err = client()
        .get(server.url("/"))
        .with_token(&source.token())
        .retry(quick().retry_connection_errors(false))
        .send()
        .await
        .expect_err("the connection closed");
    assert!(!is_cancellation(&err), "{err}");
    assert!(matches!(err, Error::Request(_)), "{err}");
}

#[tokio::test]
async fn a_status_outside_the_retry_set_is_not_retried() {
    let server = ScriptServer::start(|_| Reply::status(500)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .get(server.url("/broken"))
        .with_token(&source.token())
        .retry(quick())
        .send()
        .await
        .expect("the 500 is returned");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn used_up_retries_return_the_last_response() {
    let server = ScriptServer::start(|_| Reply::status(502)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let response = client()
        .get(server.url("/down"))
        .with_token(&source.token())
        .retry(quick().max_retries(2))
        .send()
        .await
        .expect("the last 502 is returned");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(response.text().await.unwrap(), "body");
    assert_eq!(server.received().len(), 3);
}

#[tokio::test]
async fn a_request_with_a_streaming_body_is_sent_once() {
    let server = ScriptServer::start(|_| Reply::status(503)).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>("a"), Ok("b")]);
    let response = client()
        .put(server.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .with_token(&source.token())
        .retry(quick())
        .send()
        .await
        .expect("the 503 is returned");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.received().len(), 1);
}

#[tokio::test]
async fn an_invalid_policy_fails_before_sending() {
    let server = ScriptServer::start(|_| Reply::status(200)).await;
    let source = CancellationSource::new();
    let err = client()
        .get(server.url("/"))
        .with_token(&source.token())
        .retry(RetryPolicy::default().factor(0.0))
        .send()
        .await
        .expect_err("invalid");
    let Error::Config(config) = &err else {
        panic!("expected Error::Config, got {err}");
    };
    assert_eq!(config.field(), "factor");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(server.received().is_empty());
}

#[tokio::test]
async fn the_attempt_timeout_bounds_a_request_that_is_not_retried() {
    let server = ScriptServer::start(|_| Reply::status(200).after(Duration::from_secs(10))).await;
    let source = CancellationSource::with_timeout(Duration::from_secs(5));
    let token = source.token();
    let err = client()
        .post(server.url("/orders"))
        .with_token(&token)
        .retry(quick().attempt_timeout(Duration::from_millis(200)))
        .send()
        .await
        .expect_err("the attempt timed out");
    assert_eq!(
        err.as_cancelled().expect("Error::Cancelled").kind(),
        ReasonKind::DeadlineExceeded
    );
    assert!(
        !token.is_cancelled(),
        "the caller's own budget was not used up"
    );
    assert_eq!(server.received().len(), 1, "a POST is not retried");
    assert!(budget(&server.received()[0]) <= 200 - 5);
}

#[tokio::test]
async fn a_guarded_response_keeps_its_head_as_plain_reqwest_reports_it() {
    let server = ScriptServer::start(|_| Reply::status(201).header("x-kept", "yes")).await;
    let plain = client()
        .get(server.url("/head"))
        .send()
        .await
        .expect("a plain response");
    let source = CancellationSource::new();
    let guarded = client()
        .get(server.url("/head"))
        .with_token(&source.token())
        .send()
        .await
        .expect("a guarded response");
    // The body is swapped for one that watches the token; everything else is as reqwest
    // reported it: status, version, headers, the remote address (an extension) and the URL.
    assert_eq!(guarded.status(), 201);
    assert_eq!(guarded.status(), plain.status());
    assert_eq!(guarded.version(), plain.version());
    // Two responses of the server: their `Date` differs when the second boundary falls
    // between them (it did once in CI), so it is compared for presence only.
    let without_date = |headers: &reqwest::header::HeaderMap| {
        let mut headers = headers.clone();
        headers.remove(reqwest::header::DATE);
        headers
    };
    assert_eq!(
        without_date(guarded.headers()),
        without_date(plain.headers())
    );
    assert_eq!(
        guarded.headers().contains_key(reqwest::header::DATE),
        plain.headers().contains_key(reqwest::header::DATE)
    );
    assert_eq!(guarded.headers()["x-kept"], "yes");
    assert!(guarded.remote_addr().is_some());
    assert_eq!(guarded.remote_addr(), plain.remote_addr());
    assert_eq!(guarded.url(), plain.url());
    assert!(guarded.url().path().ends_with("/head"));
}
