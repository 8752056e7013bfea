//! Real processes, real signals: two consumer processes (the `effects` example) share a
//! queue of 1,000 messages whose effects are deduplicated in PostgreSQL; one is sent
//! SIGTERM (or SIGKILL) mid-run. Every message's effect happens exactly once; after
//! SIGTERM the messages the first process had prefetched reach the second one at once.
//!
//! Ignored by default; CI runs them with `AMQP_URL` and `DATABASE_URL` set. The examples
//! are built by `cargo test`; when missing (`cargo test --test processes`), the test builds
//! them first.

#![cfg(unix)]

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use gracefully_amqp::lapin::BasicProperties;
use gracefully_amqp::lapin::options::BasicPublishOptions;
use sqlx::postgres::PgPoolOptions;
// Table names are made by the test itself (a fixed prefix and the pid).
use sqlx::{AssertSqlSafe, PgPool, Row};
use support::{Broker, amqp_url, database_url, unique};

const MESSAGES: usize = 1000;

/// The example binary `name`, next to this test's `deps/` directory.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(|p| p.parent())
        .expect("target directory")
        .join("examples");
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "gracefully-amqp", "--examples"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the examples failed");
        });
    }
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// A consumer process, its stdout collected.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    out: Arc<Mutex<String>>,
}

impl Proc {
    fn start(queue: &str, table: &str, name: &str) -> Proc {
        let mut child = Command::new(example("effects"))
            .env("AMQP_URL", amqp_url())
            .env("DATABASE_URL", database_url())
            .env("EFFECTS_QUEUE", queue)
            .env("EFFECTS_TABLE", table)
            .env("EFFECTS_NAME", name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let (tx, lines) = mpsc::channel();
        let out = Arc::new(Mutex::new(String::new()));
        let all = Arc::clone(&out);
        let stdout = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&line);
                all.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let proc = Proc { child, lines, out };
        let ready = proc.lines.recv_timeout(Duration::from_secs(60));
        assert_eq!(ready.as_deref(), Ok("ready"), "{name} did not start");
        proc
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill failed");
    }

    /// Waits for the exit; returns its code (`None` if killed by a signal) and stdout.
    fn wait(mut self, within: Duration) -> (Option<i32>, String) {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(50));
                return (status.code(), self.out.lock().unwrap().clone());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the process did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Scenario {
    broker: Broker,
    db: PgPool,
    queue: String,
    table: String,
}

impl Scenario {
    async fn new(test: &str) -> Scenario {
        let broker = Broker::new().await;
        let queue = unique(test);
        broker.queue(&queue).await;
        broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
        let table = format!("ga_{test}_{}", std::process::id());
        let db = PgPoolOptions::new()
            .max_connections(2)
            .connect(&database_url())
            .await
            .expect("connect to DATABASE_URL");
        for sql in [
            format!("DROP TABLE IF EXISTS {table}_processed, {table}_account, {table}_deliveries"),
            format!(
                "CREATE TABLE {table}_processed (message_id text PRIMARY KEY, consumer text NOT NULL)"
            ),
            format!("CREATE TABLE {table}_account (balance bigint NOT NULL)"),
            format!("INSERT INTO {table}_account VALUES (0)"),
            format!(
                "CREATE TABLE {table}_deliveries (message_id text NOT NULL, consumer text NOT NULL, \
                 redelivered boolean NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ),
        ] {
            sqlx::query(AssertSqlSafe(sql)).execute(&db).await.unwrap();
        }
        // 1,000 messages, confirms awaited together.
        let mut confirms = Vec::with_capacity(MESSAGES);
        for i in 0..MESSAGES {
            confirms.push(
                broker
                    .channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        b"{}",
                        BasicProperties::default().with_message_id(format!("m{i:04}").into()),
                    )
                    .await
                    .unwrap(),
            );
        }
        for confirm in confirms {
            assert!(confirm.await.unwrap().is_ack());
        }
        Scenario {
            broker,
            db,
            queue,
            table,
        }
    }

    async fn scalar(&self, sql: &str) -> i64 {
        sqlx::query(AssertSqlSafe(sql.replace("{t}", &self.table)))
            .fetch_one(&self.db)
            .await
            .unwrap()
            .get(0)
    }

    async fn processed(&self) -> i64 {
        self.scalar("SELECT count(*) FROM {t}_processed").await
    }

    async fn wait_for_processed(&self, n: i64, within: Duration) {
        let deadline = Instant::now() + within;
        while self.processed().await < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} processed after {within:?}",
                self.processed().await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every message's effect exactly once: 1,000 ids recorded, balance 1,000.
    async fn assert_exactly_once(&self) {
        assert_eq!(self.processed().await, MESSAGES as i64);
        assert_eq!(
            self.scalar("SELECT balance FROM {t}_account").await,
            MESSAGES as i64,
            "an effect happened twice (or not at all)"
        );
        let distinct = self
            .scalar("SELECT count(DISTINCT message_id) FROM {t}_deliveries")
            .await;
        assert_eq!(distinct, MESSAGES as i64, "a message was never delivered");
        assert_eq!(
            self.broker.ready(&self.queue).await,
            0,
            "messages left behind"
        );
    }

    async fn cleanup(&self) {
        let sql = format!(
            "DROP TABLE IF EXISTS {t}_processed, {t}_account, {t}_deliveries",
            t = self.table
        );
        sqlx::query(AssertSqlSafe(sql))
            .execute(&self.db)
            .await
            .unwrap();
    }
}

fn stat(out: &str, key: &str) -> u64 {
    let line = out
        .lines()
        .find(|l| l.starts_with("stats "))
        .unwrap_or_else(|| panic!("no stats line in:\n{out}"));
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and PostgreSQL: set AMQP_URL and DATABASE_URL"]
async fn sigterm_mid_run_hands_unstarted_messages_to_the_other_consumer_at_once_and_every_effect_happens_once()
 {
    let s = Scenario::new("sigterm").await;
    let a = Proc::start(&s.queue, &s.table, "a");
    let b = Proc::start(&s.queue, &s.table, "b");
    s.wait_for_processed(300, Duration::from_secs(60)).await;

    let sigterm_wall = SystemTime::now();
    a.signal(libc::SIGTERM);
    let (code, out) = tokio::task::spawn_blocking(move || a.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, Some(0), "a did not stop cleanly:\n{out}");
    println!("process a's output after SIGTERM:\n{out}");
    let handed_back = stat(&out, "handed_back_at_drain");
    let handled_by_a = stat(&out, "handled");

    s.wait_for_processed(MESSAGES as i64, Duration::from_secs(120))
        .await;
    b.signal(libc::SIGTERM);
    let (code_b, out_b) = tokio::task::spawn_blocking(move || b.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code_b, Some(0), "b did not stop cleanly:\n{out_b}");
    s.assert_exactly_once().await;

    // The handed-back messages: redelivered, and (after a SIGTERM) only those.
    let since = sigterm_wall
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT message_id, extract(epoch FROM at)::float8 - $1 FROM {}_deliveries \
         WHERE consumer = 'b' AND redelivered ORDER BY at",
        s.table
    )))
    .bind(since)
    .fetch_all(&s.db)
    .await
    .unwrap();
    assert_eq!(
        rows.len() as u64,
        handed_back,
        "the messages a handed back reached b (and no other message was redelivered)"
    );
    assert!(
        handed_back >= 1,
        "a had nothing prefetched at SIGTERM?\n{out}"
    );
    let latest_ms = rows
        .iter()
        .map(|r| r.get::<f64, _>(1) * 1000.0)
        .fold(0.0, f64::max);
    let duplicates = s
        .scalar("SELECT count(*) - count(DISTINCT message_id) FROM {t}_deliveries")
        .await;
    println!(
        "amqp sigterm: a handled {handled_by_a} and handed back {handed_back} unstarted messages at drain; \
         the last of them started on b {latest_ms:.1} ms after SIGTERM (target < 100 ms; a plain lapin \
         consumer hands them back only when its channel closes, or at the broker's consumer timeout); \
         {duplicates} duplicate deliveries; balance {MESSAGES}"
    );
    assert!(
        latest_ms < 5000.0,
        "handed-back messages took {latest_ms} ms to reach the other consumer"
    );
    s.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ and PostgreSQL: set AMQP_URL and DATABASE_URL"]
async fn sigkill_mid_run_loses_nothing_and_redelivered_messages_take_effect_once() {
    let s = Scenario::new("sigkill").await;
    let a = Proc::start(&s.queue, &s.table, "a");
    let b = Proc::start(&s.queue, &s.table, "b");
    s.wait_for_processed(300, Duration::from_secs(60)).await;
    a.signal(libc::SIGKILL);
    let (code, _) = tokio::task::spawn_blocking(move || a.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code, None, "killed by the signal");

    s.wait_for_processed(MESSAGES as i64, Duration::from_secs(120))
        .await;
    b.signal(libc::SIGTERM);
    let (code_b, out_b) = tokio::task::spawn_blocking(move || b.wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(code_b, Some(0), "b did not stop cleanly:\n{out_b}");
    s.assert_exactly_once().await;
    let redelivered = s
        .scalar("SELECT count(*) FROM {t}_deliveries WHERE consumer = 'b' AND redelivered")
        .await;
    let duplicates = s
        .scalar("SELECT count(*) - count(DISTINCT message_id) FROM {t}_deliveries")
        .await;
    assert!(
        redelivered >= 1,
        "a's unacked messages were redelivered to b"
    );
    println!(
        "amqp sigkill: {redelivered} of a's unacked messages redelivered to b, {duplicates} delivered twice, \
         every effect once (balance {MESSAGES})"
    );
    s.cleanup().await;
}
