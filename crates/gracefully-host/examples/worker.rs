//! A worker process with two background services, shut down by Ctrl-C (or SIGTERM) and
//! printing the shutdown report.
//!
//! ```sh
//! cargo run -p gracefully-host --example worker              # Ctrl-C: clean stop, exit 0
//! cargo run -p gracefully-host --example worker -- --stubborn # one service ignores its token:
//!                                                             # aborted at the timeout, exit 2
//! ```
//!
//! Options (the tests use them to keep budgets short): `--shutdown-timeout SECS`
//! (default 30), `--cancel-grace SECS` (default 5). Press Ctrl-C twice to abort at once
//! (exit 3).

use std::io::IsTerminal;
use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::{BackgroundService, BoxError, Host, ServiceContext, service_fn};

/// Polls a queue every 200 ms and handles each message with a token that fires at the
/// hard stop; stops polling as soon as its stopping token fires.
struct QueueConsumer;

impl BackgroundService for QueueConsumer {
    async fn execute(
        &mut self,
        stopping: CancellationToken,
        cx: &ServiceContext,
    ) -> Result<(), BoxError> {
        let mut handled = 0u64;
        while stopping
            .run_until_cancelled(tokio::time::sleep(Duration::from_millis(200)))
            .await
            .is_ok()
        {
            // In-flight work gets a child of the hard-stop token: it may finish during the
            // drain, and is cancelled when the drain budget is spent.
            let message = cx.hard_stop().child();
            if message
                .token()
                .run_until_cancelled(tokio::time::sleep(Duration::from_millis(20)))
                .await
                .is_ok()
            {
                handled += 1;
            }
        }
        cx.count("messages handled", handled);
        Ok(())
    }
}

/// Reports metrics every second. With `--stubborn` it ignores every token, as badly
/// written services do, so the host has to abort it at the shutdown timeout.
fn metrics_reporter(stubborn: bool) -> impl BackgroundService {
    service_fn(move |stopping: CancellationToken, _cx| async move {
        loop {
            if !stubborn && stopping.is_cancelled() {
                return;
            }
            let tick = tokio::time::sleep(Duration::from_secs(1));
            if stubborn {
                tick.await;
            } else if stopping.run_until_cancelled(tick).await.is_err() {
                return;
            }
            tracing::debug!("metrics reported");
        }
    })
}

fn seconds_option(args: &[String], name: &str, default: f64) -> Duration {
    let value = args
        .iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<f64>());
    match value {
        None => Duration::from_secs_f64(default),
        Some(Ok(secs)) if secs.is_finite() && secs >= 0.0 => Duration::from_secs_f64(secs),
        Some(_) => {
            eprintln!("{name} takes a number of seconds");
            std::process::exit(64);
        }
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let stubborn = args.iter().any(|a| a == "--stubborn");

    let host = Host::builder()
        .shutdown_timeout(seconds_option(&args, "--shutdown-timeout", 30.0))
        .cancel_grace(seconds_option(&args, "--cancel-grace", 5.0))
        .service("queue-consumer", QueueConsumer)
        .service("metrics-reporter", metrics_reporter(stubborn))
        .build();
    let host = match host {
        Ok(host) => host,
        Err(error) => {
            eprintln!("{error}");
            std::process::exit(64);
        }
    };

    let lifetime = host.lifetime();
    tokio::spawn(async move {
        lifetime.started().cancelled().await;
        println!("ready (pid {}); press Ctrl-C to stop", std::process::id());
    });

    let report = host.run().await;
    println!("{report}");
    std::process::exit(report.exit_code());
}
