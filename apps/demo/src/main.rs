//! `cargo run -p gracefully-demo` — the demo service on its embedded default (SQLite).
//!
//! ```text
//! demo [--listen 127.0.0.1:3000] [--admin 127.0.0.1:3001]
//!      [--database sqlite://demo.db?mode=rwc | postgres://…]   (or DATABASE_URL)
//!      [--shutdown-timeout 30] [--cancel-grace 5] [--pre-stop-delay 0]
//!      [--report-timeout 10] [--max-reports 2] [--workers 4] [--job-lease 30]
//!      [--shipping-url URL] [--shipping-delay-ms 200]
//! ```
//!
//! `demo --help` describes each.
//!
//! Ctrl-C (or SIGTERM) shuts it down gracefully and prints the shutdown report; a second
//! signal aborts at once. The exit status is the report's (0 only for a clean stop). A
//! signal while it is still starting (a database that is slow to answer) stops it there,
//! exit 0; a second one then exits at once (143 for SIGTERM).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let config = demo::Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,sqlx=warn".into()),
        )
        // Colour only for a person at a terminal (and not with NO_COLOR): log files and
        // collectors get plain text.
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            say(
                std::io::stderr(),
                format_args!("demo: cannot start the async runtime: {error}"),
            );
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(demo::run(config));
    // Not the runtime's drop, which waits for every blocking task (a DNS lookup for a
    // database host that does not answer can hang): after a stop, exit soon.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(None) => {
            say(
                std::io::stderr(),
                format_args!("demo: stopped by a signal while starting, before serving anything"),
            );
            ExitCode::SUCCESS
        }
        Ok(Some(report)) => {
            // The host does not log it (`log_report(false)`): printed once, here.
            // A closed stdout (a pipe whose reader left) loses the report, not the exit code.
            say(std::io::stdout(), format_args!("{report}"));
            ExitCode::from(u8::try_from(report.exit_code()).unwrap_or(1))
        }
        Err(error) => {
            say(std::io::stderr(), format_args!("demo: {error}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes one line, ignoring a write error: `println!` panics on a closed pipe, which
/// turned the report's exit code into 101 and a backtrace.
fn say(mut to: impl Write, line: std::fmt::Arguments<'_>) {
    let _ = writeln!(to, "{line}").and_then(|()| to.flush());
}
