//! The demo service end to end: real HTTP, real SQLite, the real host.

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use gracefully::Reason;
use gracefully_host::{Lifetime, ShutdownReport};

const SOON: Duration = Duration::from_secs(10);

struct Demo {
    base: String,
    lifetime: Lifetime,
    run: tokio::task::JoinHandle<ShutdownReport>,
    _dir: tempfile::TempDir,
}

async fn start(extra: &[&str]) -> Demo {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/demo.db?mode=rwc", dir.path().display());
    let mut args = vec![
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--database",
        url.as_str(),
    ];
    args.extend_from_slice(extra);
    let mut config = demo::Config::parse_from(args);
    config.handle_signals = false;
    let (host, addr) = demo::build(&config).await.expect("the demo starts");
    let lifetime = host.lifetime();
    let run = tokio::spawn(host.run());
    tokio::time::timeout(SOON, lifetime.started().cancelled())
        .await
        .unwrap();
    Demo {
        base: format!("http://{addr}"),
        lifetime,
        run,
        _dir: dir,
    }
}

impl Demo {
    async fn stop(self) -> ShutdownReport {
        self.lifetime.stop(Reason::shutdown().with_message("test"));
        tokio::time::timeout(SOON, self.run).await.unwrap().unwrap()
    }
}

#[tokio::test]
async fn orders_are_created_listed_and_validated() {
    let demo = start(&[]).await;
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "tea", "quantity": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let order: serde_json::Value = created.json().await.unwrap();
    assert_eq!(order["item"], "tea");

    let bad = client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "tea", "quantity": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let message = bad.text().await.unwrap();
    assert!(message.contains("quantity"), "{message}");
    assert!(
        !message.contains("::"),
        "names the field, not a Rust type: {message}"
    );

    // Characters, not bytes: 100 euro signs (300 bytes) are a valid item.
    let euros = client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "€".repeat(100), "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(euros.status(), 201);
    let too_long = client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "€".repeat(101), "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(too_long.status(), 422);
    for control in ["tea\u{0}", "\u{1b}[31mred", "two\nlines"] {
        let refused = client
            .post(format!("{}/orders", demo.base))
            .json(&serde_json::json!({"item": control, "quantity": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 422, "{control:?}");
        let message = refused.text().await.unwrap();
        assert!(message.contains("control characters"), "{message}");
    }

    // A body declared far over the limit is refused at once, before any of it is read
    // (it used to wait for the body until the route timed out, then answer 504).
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = demo.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                b"POST /orders HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n\
                  content-length: 99999999999\r\n\r\n{}",
            )
            .await
            .unwrap();
        let mut answer = vec![0u8; 1024];
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut answer))
            .await
            .expect("answered before the body")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    }

    let missing = client
        .get(format!("{}/no/such/thing", demo.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(
        missing.text().await.unwrap().contains("/no/such/thing"),
        "a 404 says what was not found"
    );

    let listed: serde_json::Value = client
        .get(format!("{}/orders", demo.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    let report = demo.stop().await;
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn a_client_leaving_a_slow_query_stops_it_inside_sqlite_and_shutdown_is_immediate() {
    let demo = start(&[]).await;
    // Minutes of work for SQLite; the client gives up after 300 ms.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let gave_up = client
        .get(format!("{}/report?rows=5000000000", demo.base))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client gave up");
    tokio::time::sleep(Duration::from_millis(100)).await;

    // If SQLite were still counting, the drain would wait for that request (up to the
    // 30 s shutdown timeout) and the host would abort it. It stopped: the host is done at once.
    let stopping = Instant::now();
    let report = demo.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(5), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    let http = report.entry("http").unwrap();
    assert_eq!(http.detail("clients left (499)"), Some("1"), "{report}");
}

#[tokio::test]
async fn a_malformed_order_id_is_refused_with_400_and_never_echoed_raw() {
    let demo = start(&[]).await;
    for (path, shown) in [
        ("1%00", r#""1\0""#),
        ("%1B%5B31mred", r#""\u{1b}[31mred""#),
        ("abc", r#""abc""#),
    ] {
        let answer = reqwest::get(format!("{}/orders/{path}", demo.base))
            .await
            .unwrap();
        assert_eq!(answer.status(), 400, "{path}");
        let body = answer.text().await.unwrap();
        assert!(
            !body.chars().any(|c| c.is_control() && c != '\n'),
            "{path}: {body:?}"
        );
        assert!(body.contains(shown), "{path}: {body:?}");
    }
    let long = "9".repeat(5000);
    let answer = reqwest::get(format!("{}/orders/{long}", demo.base))
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(
        answer.text().await.unwrap().len() < 200,
        "the id is cut short"
    );
    let report = demo.stop().await;
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn reports_over_the_limit_are_refused_at_once_and_orders_still_get_a_connection() {
    let demo = start(&["--max-reports", "1"]).await;
    // One report counting for minutes; its client gives up after a few seconds.
    let slow_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(4))
        .build()
        .unwrap();
    let slow_url = format!("{}/report?rows=5000000000", demo.base);
    let slow = tokio::spawn(async move { slow_client.get(slow_url).send().await });

    // Once it runs, another report is refused at once, saying when to come back.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + SOON;
    let refused = loop {
        let asked = Instant::now();
        let answer = client
            .get(format!("{}/report?rows=1000", demo.base))
            .send()
            .await
            .unwrap();
        if answer.status() == 503 {
            assert!(asked.elapsed() < Duration::from_secs(1), "refused at once");
            break answer;
        }
        // The slow one has not reached its handler yet: this small one ran instead.
        assert_eq!(answer.status(), 200);
        assert!(
            Instant::now() < deadline,
            "the second report was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(refused.headers()["retry-after"], "1");
    assert!(refused.text().await.unwrap().contains("try again"));

    // Meanwhile an order still gets a connection and commits promptly.
    let asked = Instant::now();
    let created = client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "tea", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );

    // The slow report's client leaves: its query stops, and the next report runs.
    assert!(
        slow.await.unwrap().is_err(),
        "the slow report's client gave up"
    );
    let deadline = Instant::now() + SOON;
    loop {
        let answer = client
            .get(format!("{}/report?rows=1000", demo.base))
            .send()
            .await
            .unwrap();
        if answer.status() == 200 {
            assert_eq!(answer.text().await.unwrap(), "counted 1000 rows\n");
            break;
        }
        assert_eq!(answer.status(), 503);
        assert!(Instant::now() < deadline, "the limit was never given back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = demo.stop().await;
    assert_eq!(report.exit_code(), 0, "{report}");
}

#[tokio::test]
async fn the_report_route_times_out_cooperatively_with_504() {
    let demo = start(&["--report-timeout", "1"]).await;
    let fast = reqwest::get(format!("{}/report?rows=1000", demo.base))
        .await
        .unwrap();
    assert_eq!(fast.text().await.unwrap(), "counted 1000 rows\n");

    // Minutes of counting: the route's 1 s deadline interrupts it inside SQLite.
    let started = Instant::now();
    let slow = reqwest::get(format!("{}/report?rows=5000000000", demo.base))
        .await
        .unwrap();
    assert_eq!(slow.status(), 504);
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(1) && took < SOON, "{took:?}");
    let report = demo.stop().await;
    assert_eq!(
        report.entry("http").unwrap().detail("timed out (504)"),
        Some("1"),
        "{report}"
    );
}

#[tokio::test]
async fn an_event_stream_of_new_orders_ends_when_the_drain_begins() {
    let demo = start(&[]).await;
    let events = reqwest::get(format!("{}/events", demo.base)).await.unwrap();
    assert_eq!(events.status(), 200);
    let mut body = events.bytes_stream();
    let client = reqwest::Client::new();
    client
        .post(format!("{}/orders", demo.base))
        .json(&serde_json::json!({"item": "coffee", "quantity": 1}))
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(SOON, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains("coffee"));

    let lifetime = demo.lifetime.clone();
    lifetime.stop(Reason::shutdown());
    // The stream ends cleanly.
    while let Some(chunk) = tokio::time::timeout(SOON, body.next()).await.unwrap() {
        chunk.unwrap();
    }
    let report = tokio::time::timeout(SOON, demo.run).await.unwrap().unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    assert_eq!(
        report.entry("http").unwrap().detail("SSE streams ended"),
        Some("1"),
        "{report}"
    );
}

#[tokio::test]
async fn a_bad_database_url_is_a_clear_error_not_a_panic() {
    let config = demo::Config::parse_from([
        "demo",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
        "--database",
        "postgres://nobody:secret@127.0.0.1:1/x",
    ]);
    let error = demo::build(&config).await.expect_err("it fails");
    let text = error.to_string();
    assert!(text.starts_with("cannot open the database"), "{text}");
    assert!(!text.contains("secret"), "the password is redacted: {text}");
}
