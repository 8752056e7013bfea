//! `/metrics`, scraped over HTTP and parsed: the counters match what the test did. (A test
//! binary of its own, with one test: the recorder is process-wide.)

mod support;

use std::collections::HashMap;

use gracefully::Reason;
use support::admin::{eventually, slow_app, start};
use support::{SOON, read_response, send_raw, status_of};

/// Prometheus' text format, as `metric{labels} value` → value (comments skipped).
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(admin: std::net::SocketAddr) -> HashMap<String, f64> {
    let response = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    parse(&response.text().await.unwrap())
}

#[tokio::test]
async fn metrics_count_the_requests_the_cancellations_and_the_shutdown_phases() {
    let server = start(slow_app()).await;
    for _ in 0..3 {
        let mut fast = send_raw(server.addr, b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n").await;
        assert_eq!(status_of(&read_response(&mut fast).await), 200);
    }
    let gone = send_raw(server.addr, b"GET /slow/1 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let ops = server.operations.clone();
    eventually("the slow request to run", || {
        ops.snapshot()
            .live
            .iter()
            .any(|o| o.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;
    drop(gone);
    eventually("the slow request to end", || {
        ops.snapshot()
            .finished
            .iter()
            .any(|f| f.operation.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;

    let m = scrape(server.admin).await;
    let get = |k: &str| {
        m.get(k)
            .copied()
            .unwrap_or_else(|| panic!("no {k} in {m:#?}"))
    };
    assert_eq!(
        get(r#"gracefully_operations_started_total{kind="request"}"#),
        4.0
    );
    assert_eq!(
        get(r#"gracefully_operations_ended_total{kind="request",outcome="completed"}"#),
        3.0
    );
    assert_eq!(
        get(r#"gracefully_operations_ended_total{kind="request",outcome="cancelled"}"#),
        1.0
    );
    assert_eq!(
        get(
            r#"gracefully_cancellations_total{kind="request",name="GET /slow/{id}",reason="disconnected"}"#
        ),
        1.0
    );
    assert_eq!(
        get(
            r#"gracefully_cancellations_total{kind="query",name="orders.slow",reason="disconnected"}"#
        ),
        1.0
    );
    assert_eq!(get("gracefully_http_requests_lost_total"), 0.0);
    // The admin's own scrapes are not operations.
    assert_eq!(
        get(r#"gracefully_operations_started_total{kind="service"}"#),
        2.0
    );

    // Shutdown: each phase is timed. The admin server has stopped with the host, so read
    // the process's recorder directly.
    server.lifetime.stop(Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
    let handle = gracefully_axum::admin::prometheus().unwrap();
    server.operations.export_metrics();
    let m = parse(&handle.render());
    let drain = m
        .iter()
        .find(|(k, _)| {
            k.starts_with("gracefully_shutdown_phase_seconds_count")
                && k.contains(r#"phase="drain""#)
        })
        .map(|(_, v)| *v);
    assert_eq!(drain, Some(1.0), "{m:#?}");
    assert_eq!(m["gracefully_http_requests_lost_total"], 0.0);
}
