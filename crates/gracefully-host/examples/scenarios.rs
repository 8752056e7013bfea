//! Failure scenarios for the process tests (`tests/process.rs`); also a quick way to see
//! the failure policies at work.
//!
//! ```sh
//! cargo run -p gracefully-host --example scenarios -- fail     # a service fails: exit 1
//! cargo run -p gracefully-host --example scenarios -- restart  # restarts with growing delays,
//!                                                              # gives up at the limit: exit 1
//! cargo run -p gracefully-host --example scenarios -- slow-start          # 3 s of start-up work
//!                                  # raced against EarlySignals: Ctrl-C then stops it at once
//! cargo run -p gracefully-host --example scenarios -- slow-start-unraced  # the same work not
//!                                  # raced: the host stops as soon as it has started
//! ```

use std::time::{Duration, Instant};

use gracefully_host::{
    BoxError, EarlySignals, FailurePolicy, Host, RestartPolicy, ServiceOptions, service_fn,
};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let scenario = std::env::args().nth(1).unwrap_or_default();
    // Start-up work before the host exists (a database connection, migrations), with the
    // signals taken from the first line.
    let early = match scenario.as_str() {
        "slow-start" | "slow-start-unraced" => {
            let signals = EarlySignals::install().expect("signal handlers");
            println!("starting");
            let work = tokio::time::sleep(Duration::from_secs(3));
            if scenario == "slow-start" {
                let stop = signals.received();
                tokio::select! {
                    () = work => {}
                    reason = stop.cancelled() => {
                        println!("stopped while starting: {reason}");
                        std::process::exit(0);
                    }
                }
            } else {
                work.await;
            }
            Some(signals)
        }
        _ => None,
    };
    let honouring = service_fn(|stopping, _cx| async move {
        stopping.cancelled().await;
    });
    let builder = Host::builder().service("steady-worker", honouring);

    let builder = match scenario.as_str() {
        "fail" => builder.service(
            "payments",
            service_fn(|_stopping, _cx| async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err::<(), BoxError>("database unreachable".into())
            }),
        ),
        "restart" => {
            let start = Instant::now();
            let mut attempt = 0;
            let flaky = service_fn(move |_stopping, _cx| {
                attempt += 1;
                println!("attempt {attempt} at {} ms", start.elapsed().as_millis());
                async { Err::<(), BoxError>("connection refused".into()) }
            });
            let policy = RestartPolicy::new()
                .max_restarts(3)
                .within(Duration::from_secs(30))
                .backoff(Duration::from_millis(100), Duration::from_secs(5))
                .jitter(0.2);
            builder.service_with(
                "flaky",
                flaky,
                ServiceOptions::new().on_failure(FailurePolicy::Restart(policy)),
            )
        }
        "slow-start" | "slow-start-unraced" => builder,
        other => {
            eprintln!(
                "unknown scenario {other:?}; use `fail`, `restart`, `slow-start` or \
                 `slow-start-unraced`"
            );
            std::process::exit(64);
        }
    };
    let builder = match early {
        Some(signals) => builder.signals(signals),
        None => builder,
    };
    let host = builder.build().expect("valid configuration");
    let report = host.run().await;
    println!("{report}");
    std::process::exit(report.exit_code());
}
