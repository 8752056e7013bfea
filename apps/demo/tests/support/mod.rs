//! The real `demo` binary, started as an orchestrator starts it: a process with arguments
//! and environment, signals, and its output read from pipes (not a terminal).

#![allow(dead_code)] // each test file uses a part

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// A running demo process.
pub struct Demo {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin listener: `http://127.0.0.1:PORT`.
    pub admin: String,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
}

/// The database URL of a fresh SQLite file in `dir`.
pub fn sqlite_url(dir: &std::path::Path) -> String {
    format!("sqlite://{}/demo.db?mode=rwc", dir.display())
}

impl Demo {
    /// Starts `demo --listen 127.0.0.1:0 --database URL EXTRA…` and waits until it listens.
    pub fn start(database: &str, extra: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_demo"))
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(["--database", database])
            .args(extra)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the demo binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let (admin_tx, admin_rx) = mpsc::channel();
        {
            let pipe = child.stderr.take().unwrap();
            let stderr = Arc::clone(&stderr);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(at) = line.find("operations page on http://") {
                        let rest = &line[at + "operations page on ".len()..];
                        let addr = rest.split("/operations").next().unwrap().to_string();
                        let _ = admin_tx.send(addr);
                    }
                    if let Some(at) = line.find("demo listening on http://") {
                        let addr = line[at + "demo listening on ".len()..].trim().to_string();
                        let _ = tx.send(addr);
                    }
                    let mut all = stderr.lock().unwrap();
                    all.push_str(&line);
                    all.push('\n');
                }
            });
        }
        {
            let mut pipe = child.stdout.take().unwrap();
            let stdout = Arc::clone(&stdout);
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stdout
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let base = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => base,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the demo did not start listening; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        let admin = admin_rx
            .recv_timeout(Duration::from_secs(1))
            .expect("the demo logs its admin address");
        Demo {
            child,
            base,
            admin,
            stderr,
            stdout,
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` (libc's number).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid this test spawned and still owns (not yet reaped).
        let rc = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(rc, 0, "kill({}, {signal})", self.pid());
    }

    /// Waits for the process to exit (at most `limit`); returns its status, stdout and
    /// stderr.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let started = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "the demo did not exit within {limit:?}; stderr:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The pipe readers see EOF right after the exit.
        std::thread::sleep(Duration::from_millis(100));
        let stdout = self.stdout.lock().unwrap().clone();
        let stderr = self.stderr.lock().unwrap().clone();
        (status, stdout, stderr)
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `f` on a runtime of its own, on a thread of its own (callable from sync tests and
/// from inside a test's runtime alike).
pub fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

/// A fresh PostgreSQL database on the server `DATABASE_URL` names; dropped when this is.
pub struct TestDb {
    /// `DATABASE_URL`.
    pub admin_url: String,
    /// The new database's name.
    pub name: String,
    /// The new database's URL.
    pub url: String,
}

impl TestDb {
    /// Creates `demo_<tag>_<pid>_<nanos>`.
    pub fn create(tag: &str) -> TestDb {
        let admin_url = std::env::var("DATABASE_URL")
            .expect("DATABASE_URL: postgres://postgres@127.0.0.1:5432/test");
        let name = format!(
            "demo_{tag}_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let (admin, db) = (admin_url.clone(), name.clone());
        on_own_runtime(async move {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&admin).await.unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
                .execute(&mut admin)
                .await
                .unwrap();
        });
        let (base, _) = admin_url.rsplit_once('/').unwrap();
        let url = format!("{base}/{name}");
        TestDb {
            admin_url,
            name,
            url,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (admin, db) = (self.admin_url.clone(), self.name.clone());
        on_own_runtime(async move {
            use sqlx::Connection;
            if let Ok(mut admin) = sqlx::PgConnection::connect(&admin).await {
                let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        });
    }
}

/// The demo's database, read directly by a test (SQLite or PostgreSQL by URL).
pub enum Db {
    Sqlite(String),
    Postgres(String),
}

impl Db {
    pub fn connect(url: &str) -> Db {
        if url.starts_with("postgres") {
            Db::Postgres(url.to_string())
        } else {
            Db::Sqlite(url.to_string())
        }
    }

    /// The one `i64` that `sql` selects.
    pub fn scalar(&self, sql: &'static str) -> i64 {
        match self {
            Db::Sqlite(url) => {
                let url = url.clone();
                on_own_runtime(async move {
                    use sqlx::Connection;
                    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
                })
            }
            Db::Postgres(url) => {
                let url = url.clone();
                on_own_runtime(async move {
                    use sqlx::Connection;
                    let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
                    sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap()
                })
            }
        }
    }
}
