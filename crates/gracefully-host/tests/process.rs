//! Real processes, real signals: runs this crate's example binaries (`worker`,
//! `scenarios`), sends them signals with `kill(2)`, and checks exit codes, timings and the
//! printed report.
//!
//! `cargo test` builds the examples before running tests; when they are missing (say,
//! `cargo test --test process`), the test builds them first.

#![cfg(unix)]

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// The example binary `name`, next to this test's `deps/` directory.
fn example(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = std::env::current_exe()
        .expect("test binary path")
        .parent() // deps/
        .and_then(|p| p.parent()) // debug/
        .expect("target directory")
        .join("examples");
    let path = dir.join(name);
    if !path.exists() {
        BUILT.get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .args(["build", "-p", "gracefully-host", "--examples"])
                .status()
                .expect("run cargo build");
            assert!(status.success(), "building the examples failed");
        });
    }
    assert!(path.exists(), "{} not built", path.display());
    path
}

/// A running example process whose output is collected as it comes.
struct Proc {
    child: Child,
    stdout: Receiver<String>,
    stdout_all: Arc<Mutex<String>>,
    stderr_all: Arc<Mutex<String>>,
}

impl Proc {
    fn start(example_name: &str, args: &[&str]) -> Proc {
        let mut child = Command::new(example(example_name))
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the example");
        let (tx, rx) = mpsc::channel();
        let stdout_all = Arc::new(Mutex::new(String::new()));
        let stderr_all = Arc::new(Mutex::new(String::new()));
        let out = BufReader::new(child.stdout.take().unwrap());
        let all = Arc::clone(&stdout_all);
        thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                all.lock().unwrap().push_str(&line);
                all.lock().unwrap().push('\n');
                let _ = tx.send(line);
            }
        });
        let mut err = child.stderr.take().unwrap();
        let all = Arc::clone(&stderr_all);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                all.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            child,
            stdout: rx,
            stdout_all,
            stderr_all,
        }
    }

    /// Waits for a stdout line containing `needle`.
    fn wait_for_stdout(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!(
                    "no stdout line with {needle:?}; stderr:\n{}",
                    self.stderr_all.lock().unwrap()
                ),
            }
        }
    }

    /// Waits until stderr contains `needle`.
    fn wait_for_stderr(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.stderr_all.lock().unwrap().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no stderr output with {needle:?}:\n{}",
                self.stderr_all.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) has no memory-safety preconditions; `pid` is our own child,
        // which we have not reaped yet, so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, signal) };
        assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
    }

    /// Waits for the process to exit (killing it after `limit`); returns its status, how
    /// long it took, and everything it printed.
    fn wait(mut self, limit: Duration) -> (ExitStatus, Duration, String, String) {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "still running after {limit:?}; stderr:\n{}",
                    self.stderr_all.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(5));
        };
        let elapsed = start.elapsed();
        // Let the reader threads drain the pipes.
        thread::sleep(Duration::from_millis(50));
        let stdout = self.stdout_all.lock().unwrap().clone();
        let stderr = self.stderr_all.lock().unwrap().clone();
        (status, elapsed, stdout, stderr)
    }
}

/// The report's line for `name`.
fn row<'a>(report: &'a str, name: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.trim_start().starts_with(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{report}"))
}

#[test]
fn sigterm_stops_services_that_honour_their_token_with_exit_0_well_inside_the_drain() {
    let worker = Proc::start("worker", &[]);
    worker.wait_for_stdout("ready");
    worker.signal(libc::SIGTERM);
    let (status, elapsed, stdout, _) = worker.wait(Duration::from_secs(20));

    assert_eq!(status.code(), Some(0), "{stdout}");
    // The drain budget is 25 s; honouring services end in milliseconds.
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(stdout.contains("exit code 0 (clean)"), "{stdout}");
    assert!(stdout.contains("trigger: shutdown: SIGTERM"), "{stdout}");
    for name in ["queue-consumer", "metrics-reporter"] {
        let row = row(&stdout, name);
        assert!(row.contains("drain") && row.contains("completed"), "{row}");
    }
}

#[test]
fn sigint_sigquit_and_sighup_also_stop_gracefully_and_the_report_names_the_signal() {
    for (signal, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGQUIT, "SIGQUIT"),
        // A closed terminal: without a handler it would kill the process, no drain.
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let worker = Proc::start("worker", &[]);
        worker.wait_for_stdout("ready");
        worker.signal(signal);
        let (status, _, stdout, _) = worker.wait(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "{name}: {stdout}");
        assert!(
            stdout.contains(&format!("trigger: shutdown: {name}")),
            "{stdout}"
        );
    }
}

#[test]
fn a_service_ignoring_its_token_is_aborted_at_the_shutdown_timeout_named_with_exit_2() {
    let worker = Proc::start(
        "worker",
        &[
            "--stubborn",
            "--shutdown-timeout",
            "2",
            "--cancel-grace",
            "1",
        ],
    );
    worker.wait_for_stdout("ready");
    worker.signal(libc::SIGTERM);
    let (status, elapsed, stdout, stderr) = worker.wait(Duration::from_secs(20));

    assert_eq!(status.code(), Some(2), "{stdout}");
    assert!(
        elapsed >= Duration::from_secs(2),
        "aborted only at the timeout: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "but then at once: {elapsed:?}"
    );
    let straggler = row(&stdout, "metrics-reporter");
    assert!(
        straggler.contains("abort") && straggler.contains("aborted"),
        "{straggler}"
    );
    assert!(
        stdout.contains("exit code 2 (stragglers aborted)"),
        "{stdout}"
    );
    assert!(stderr.contains("aborting stragglers"), "{stderr}");
    // The polite one is stopped after the straggler (reverse order), which never ends: it
    // hears its token only at the abort (docs/architecture.md, shutdown rule 6). It then
    // usually stops before the abort reaches it (phases.rs checks that on one thread); on
    // this multi-thread runtime the abort may also win that race.
    let polite = row(&stdout, "queue-consumer");
    assert!(
        polite.contains("abort") && (polite.contains("completed") || polite.contains("aborted")),
        "{polite}"
    );
}

#[test]
fn a_second_sigterm_aborts_at_once_with_exit_3() {
    // A 30 s timeout: only the second signal can make this quick.
    let worker = Proc::start("worker", &["--stubborn"]);
    worker.wait_for_stdout("ready");
    worker.signal(libc::SIGTERM);
    worker.wait_for_stderr("SIGTERM received: shutting down gracefully");
    let second = Instant::now();
    worker.signal(libc::SIGTERM);
    let (status, _, stdout, stderr) = worker.wait(Duration::from_secs(20));

    assert_eq!(status.code(), Some(3), "{stdout}");
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "took {:?}",
        second.elapsed()
    );
    assert!(
        stderr.contains("received again: skipping to the abort"),
        "{stderr}"
    );
    assert!(
        stdout.contains("exit code 3 (forced by a second signal)"),
        "{stdout}"
    );
    let straggler = row(&stdout, "metrics-reporter");
    assert!(straggler.contains("aborted"), "{straggler}");
}

#[test]
fn a_failing_service_stops_the_host_with_exit_1_and_its_error_in_the_report() {
    let proc = Proc::start("scenarios", &["fail"]);
    let (status, elapsed, stdout, stderr) = proc.wait(Duration::from_secs(20));

    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(
        row(&stdout, "payments").contains("failed: database unreachable"),
        "{stdout}"
    );
    assert!(stdout.contains("service 'payments' failed"), "{stdout}");
    assert!(
        row(&stdout, "steady-worker").contains("completed"),
        "{stdout}"
    );
}

#[test]
fn a_restart_policy_restarts_with_growing_delays_then_gives_up_with_exit_1() {
    let proc = Proc::start("scenarios", &["restart"]);
    let (status, _, stdout, stderr) = proc.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");

    // The delays the host chose (logged) grow: 100 ms × 2^k, ±20 % jitter.
    let delays: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.split("restarting in ").nth(1))
        .map(|rest| rest.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(delays.len(), 3, "{stderr}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    // And it waited them out: each attempt came at least that long after the one before.
    let attempts: Vec<u64> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("attempt "))
        .map(|l| {
            l.split(" at ")
                .nth(1)
                .unwrap()
                .trim_end_matches(" ms")
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(attempts.len(), 4, "the first run and 3 restarts: {stdout}");
    for (k, delay) in delays.iter().enumerate() {
        assert!(
            attempts[k + 1] - attempts[k] >= *delay,
            "{attempts:?} vs {delays:?}"
        );
    }
    assert!(stderr.contains("giving up"), "{stderr}");
    assert!(row(&stdout, "flaky").contains("restarts: 3"), "{stdout}");
}

/// A signal during the program's own start-up work (before the host exists), with the
/// signals taken first thing (`EarlySignals`): raced against the work, it stops the program
/// at once and cleanly; not raced, the host stops as soon as it has started (with the
/// report); a second one exits at once, as the default action would. Without them the
/// signal's default action killed the process: exit 143, no report.
#[test]
fn a_signal_during_start_up_stops_the_program_cleanly() {
    let raced = Proc::start("scenarios", &["slow-start"]);
    raced.wait_for_stdout("starting");
    raced.signal(libc::SIGTERM);
    let (status, elapsed, stdout, stderr) = raced.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    assert!(
        stdout.contains("stopped while starting: shutdown: SIGTERM"),
        "{stdout}"
    );

    let unraced = Proc::start("scenarios", &["slow-start-unraced"]);
    unraced.wait_for_stdout("starting");
    unraced.signal(libc::SIGTERM);
    let (status, _, stdout, stderr) = unraced.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("trigger: shutdown: SIGTERM"), "{stdout}");

    let twice = Proc::start("scenarios", &["slow-start-unraced"]);
    twice.wait_for_stdout("starting");
    twice.signal(libc::SIGTERM);
    twice.wait_for_stderr("received before the host started");
    twice.signal(libc::SIGTERM);
    let (status, elapsed, stdout, stderr) = twice.wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(143), "{stdout}{stderr}");
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
}
