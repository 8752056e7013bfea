//! Bad input that needs no server: invalid settings are refused by `build` with the field
//! and the valid range; an unreachable broker fails the start step with the URL in the
//! error (and never panics, never hangs).

use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use gracefully::Reason;
use gracefully_host::Outcome;
use gracefully_nats::{Backoff, Consumer, ConsumerBuilder, Error};
use gracefully_test::{RunningHost, test_host};

fn ok_handler(
    _m: gracefully_nats::Message<bytes::Bytes>,
    _t: gracefully::CancellationToken,
) -> std::future::Ready<Result<(), std::io::Error>> {
    std::future::ready(Ok(()))
}

fn base(url: &str) -> ConsumerBuilder {
    Consumer::builder(url).stream("ORDERS").consumer("billing")
}

fn config_error(result: Result<impl std::fmt::Debug, Error>) -> (&'static str, String) {
    match result.unwrap_err() {
        e @ Error::Config { field, .. } => (field, e.to_string()),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[test]
fn build_refuses_each_invalid_setting_naming_the_field_and_what_is_valid() {
    let url = "nats://127.0.0.1:4222";
    let cases: Vec<(&str, Result<_, Error>, &str)> = vec![
        (
            "url",
            Consumer::builder("")
                .stream("S")
                .consumer("c")
                .handler(ok_handler)
                .build(),
            "nats://127.0.0.1:4222",
        ),
        (
            "url",
            Consumer::builder("nats://host:notaport")
                .stream("S")
                .consumer("c")
                .handler(ok_handler)
                .build(),
            "expected nats://host:port",
        ),
        (
            "stream",
            Consumer::builder(url)
                .consumer("c")
                .handler(ok_handler)
                .build(),
            ".create_stream(config)",
        ),
        (
            "stream",
            Consumer::builder(url)
                .stream("BAD.NAME")
                .consumer("c")
                .handler(ok_handler)
                .build(),
            "without '.'",
        ),
        (
            "consumer",
            Consumer::builder(url)
                .stream("S")
                .handler(ok_handler)
                .build(),
            ".consumer(name)",
        ),
        (
            "consumer",
            Consumer::builder(url)
                .stream("S")
                .consumer("has space")
                .handler(ok_handler)
                .build(),
            "whitespace",
        ),
        (
            "concurrency",
            base(url).concurrency(0).handler(ok_handler).build(),
            "valid: 1 ..= 100000",
        ),
        (
            "prefetch",
            base(url).prefetch(1_000_000).handler(ok_handler).build(),
            "valid: 0 ..= 100000",
        ),
        (
            "max_deliveries",
            base(url).max_deliveries(0).handler(ok_handler).build(),
            "at least 1",
        ),
        (
            "backoff",
            base(url)
                .backoff(Backoff::fixed(Duration::ZERO))
                .handler(ok_handler)
                .build(),
            "more than 0",
        ),
        (
            "dead_letter",
            base(url)
                .dead_letter("orders.*")
                .handler(ok_handler)
                .build(),
            "without wildcards",
        ),
        (
            "consumer_config",
            base(url)
                .consumer_config(pull::Config {
                    durable_name: Some("other".into()),
                    ..Default::default()
                })
                .handler(ok_handler)
                .build(),
            "make them equal",
        ),
    ];
    for (field, result, hint) in cases {
        let (got, message) = config_error(result);
        assert_eq!(got, field, "{message}");
        assert!(
            message.contains(hint),
            "{field}: {message:?} should mention {hint:?}"
        );
    }
}

#[test]
fn passwords_never_appear_in_errors() {
    let (_, message) = config_error(
        Consumer::builder("nats://app:s3cret@host:notaport")
            .stream("S")
            .consumer("c")
            .handler(ok_handler)
            .build(),
    );
    assert!(!message.contains("s3cret"), "{message}");
    assert!(message.contains("app:***"), "{message}");
}

#[tokio::test]
async fn an_unreachable_broker_fails_the_start_step_with_the_url_and_stops_the_host() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let consumer = base(&url).handler(ok_handler).build().unwrap();
    let host = test_host().service("orders", consumer).build().unwrap();
    let running = RunningHost::start(host).await.unwrap();
    assert!(!running.lifetime().is_ready());
    let report = running.stop(Reason::shutdown()).await.unwrap();
    let row = report.entry("orders").unwrap();
    let Outcome::Failed(error) = row.outcome() else {
        panic!("the start step should have failed:\n{report}");
    };
    assert!(error.contains("could not connect to NATS at"), "{error}");
    assert!(error.contains(&url), "{error}");
    assert!(error.contains("nats-server"), "{error}");
    assert_eq!(report.exit_code(), 1);
}
