//! The operations page in a real browser (Debian's Chromium, driven over WebDriver by
//! `chromedriver`): the live tree shows a running request counting down to its deadline;
//! when its client leaves, the same page — without a reload — moves it to the finished list
//! as `Disconnected`, with its origin. Saves a screenshot (`target/tmp/operations-page.png`,
//! and wherever `OPERATIONS_SCREENSHOT` says).
//!
//! Skipped, loudly, only when Chromium is not installed and `CI` is not set; CI installs it
//! (`.ci/run`), so there the test always runs.

mod support;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::admin::{eventually, slow_app, start};
use support::{SOON, read_response, send_raw, status_of};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// `chromedriver`, ended when dropped.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
    session: Option<String>,
}

impl Driver {
    async fn start() -> Driver {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // In a process group of its own, so that the browsers it starts end with it.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let mut driver = Driver {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            session: None,
        };
        driver.wait_ready().await;
        driver
    }

    async fn wait_ready(&mut self) {
        let deadline = tokio::time::Instant::now() + SOON;
        loop {
            if let Ok(response) = self.http.get(format!("{}/status", self.base)).send().await
                && let Ok(status) = serde_json::from_str::<Value>(&response.text().await.unwrap())
                && status["value"]["ready"] == true
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver never got ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.expect("chromedriver answers");
        let status = response.status();
        let value: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {value}");
        value["value"].clone()
    }

    async fn open_session(&mut self) {
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1500,620"]
            }
        }}});
        let value = self
            .call(reqwest::Method::POST, "/session", Some(capabilities))
            .await;
        self.session = Some(value["sessionId"].as_str().unwrap().to_owned());
    }

    fn session(&self) -> String {
        format!("/session/{}", self.session.as_deref().unwrap())
    }

    async fn go(&self, url: &str) {
        self.call(
            reqwest::Method::POST,
            &format!("{}/url", self.session()),
            Some(json!({"url": url})),
        )
        .await;
    }

    /// What the page shows: its live operations and finished ones, read from the DOM.
    async fn shown(&self) -> Value {
        let script = r#"
            const live = [...document.querySelectorAll('#live li.op')].map(li => ({
                name: li.dataset.name, kind: li.dataset.kind,
                left: li.querySelector(':scope > .row > .left').textContent,
                parent: li.parentElement.closest('li.op')?.dataset.name ?? null }));
            const finished = [...document.querySelectorAll('#finished tr.finished')].map(tr => ({
                name: tr.children[2].textContent, outcome: tr.dataset.outcome,
                reason: tr.dataset.reason, text: tr.innerText }));
            return { live, finished };"#;
        self.call(
            reqwest::Method::POST,
            &format!("{}/execute/sync", self.session()),
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    async fn screenshot(&self) -> Vec<u8> {
        let value = self
            .call(
                reqwest::Method::GET,
                &format!("{}/screenshot", self.session()),
                None,
            )
            .await;
        base64_decode(value.as_str().unwrap())
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Ends the driver and the browsers it started (its process group): killing the
        // driver alone left Chromium running after the test.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Standard base64 (the WebDriver screenshot encoding), without a dependency for it.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let bytes: Vec<u8> = text
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= u32::from(value(c)) << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

/// Milliseconds in a countdown such as `29.4 s left` or `850 ms left`.
fn millis_left(text: &str) -> f64 {
    let text = text.trim_end_matches(" left");
    if let Some(ms) = text.strip_suffix(" ms") {
        return ms.parse().unwrap();
    }
    if let Some(s) = text.strip_suffix(" s") {
        return s.parse::<f64>().unwrap() * 1000.0;
    }
    panic!("not a countdown: {text}");
}

fn chromium_present() -> bool {
    std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_a_running_request_counting_down_then_finished_as_disconnected() {
    if !chromium_present() {
        assert!(
            std::env::var_os("CI").is_none(),
            "Chromium and chromedriver must be installed in CI (.ci/run installs them)"
        );
        eprintln!(
            "SKIPPED: {CHROMIUM} or {CHROMEDRIVER} is missing; `apt-get install chromium chromium-driver` to run this browser test"
        );
        return;
    }
    let server = start(slow_app()).await;
    for _ in 0..2 {
        let mut fast = send_raw(server.addr, b"GET /fast HTTP/1.1\r\nhost: t\r\n\r\n").await;
        assert_eq!(status_of(&read_response(&mut fast).await), 200);
    }
    let _stays = send_raw(server.addr, b"GET /slow/1 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let leaves = send_raw(server.addr, b"GET /slow/2 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let ops = server.operations.clone();
    eventually("both slow requests to run", || {
        let live = ops.snapshot().live;
        (live.iter().filter(|o| o.name == "GET /slow/{id}").count() == 2).then_some(())
    })
    .await;

    let mut driver = Driver::start().await;
    driver.open_session().await;
    driver
        .go(&format!("http://{}/operations", server.admin))
        .await;

    // The live tree: both requests, each under the server with its query under it, and a
    // deadline counting down.
    let shown = wait_for(&driver, "the live requests", |shown| {
        let live = shown["live"].as_array()?;
        let requests: Vec<&Value> = live
            .iter()
            .filter(|o| o["name"] == "GET /slow/{id}")
            .collect();
        (requests.len() == 2).then(|| requests[0].clone())
    })
    .await;
    assert_eq!(shown["kind"], "request");
    assert_eq!(
        shown["parent"], "http",
        "the request sits under the server in the tree"
    );
    let first = millis_left(shown["left"].as_str().unwrap());
    assert!(first > 0.0 && first <= 30_000.0, "{shown}");
    let later = wait_for(&driver, "the countdown to move", |shown| {
        let left = shown["live"]
            .as_array()?
            .iter()
            .find(|o| o["name"] == "GET /slow/{id}")?["left"]
            .as_str()?
            .to_owned();
        let left = millis_left(&left);
        (left < first).then_some(left)
    })
    .await;
    assert!(later < first);
    let snapshot = driver.shown().await;
    let query = snapshot["live"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "orders.slow")
        .expect("the query shows");
    assert_eq!(
        query["parent"], "GET /slow/{id}",
        "the query sits under its request"
    );

    // The client of /slow/2 leaves: the page moves its request to the finished list.
    drop(leaves);
    let finished = wait_for(&driver, "the request to finish as Disconnected", |shown| {
        shown["finished"]
            .as_array()?
            .iter()
            .find(|f| f["name"] == "GET /slow/{id}")
            .cloned()
    })
    .await;
    assert_eq!(finished["outcome"], "cancelled", "{finished}");
    assert_eq!(finished["reason"], "Disconnected", "{finished}");
    let text = finished["text"].as_str().unwrap();
    assert!(
        text.contains("request_future.rs"),
        "the origin shows: {text}"
    );
    let shown = driver.shown().await;
    let still = shown["live"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["name"] == "GET /slow/{id}")
        .count();
    assert_eq!(still, 1, "one request still runs: {shown}");

    // Let the countdown tick once more, then keep the picture.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = driver.screenshot().await;
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "a PNG");
    let mut paths = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("operations-page.png")];
    if let Some(path) = std::env::var_os("OPERATIONS_SCREENSHOT") {
        paths.push(PathBuf::from(path));
    }
    for path in &paths {
        std::fs::write(path, &png).unwrap();
        eprintln!("screenshot: {}", path.display());
    }
    drop(driver);
    server.lifetime.stop(gracefully::Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}

/// Reads the page until `f` finds what it looks for.
async fn wait_for<T>(driver: &Driver, what: &str, f: impl Fn(&Value) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let shown = driver.shown().await;
        if let Some(found) = f(&shown) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {what}: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
