//! Failure scenarios for the process tests (`tests/process.rs`); also a quick way to see
//! the failure policies at work.
//!
//! ```sh
//! cargo run -p gracefully-host --example scenarios -- fail     # a service fails: exit 1
//! cargo run -p gracefully-host --example scenarios -- restart  # restarts with growing delays,
//!                                                              # gives up at the limit: exit 1
//! ```

use std::time::{Duration, Instant};

use gracefully_host::{BoxError, FailurePolicy, Host, RestartPolicy, ServiceOptions, service_fn};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let scenario = std::env::args().nth(1).unwrap_or_default();
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
        other => {
            eprintln!("unknown scenario {other:?}; use `fail` or `restart`");
            std::process::exit(64);
        }
    };
    let host = builder.build().expect("valid configuration");
    let report = host.run().await;
    println!("{report}");
    std::process::exit(report.exit_code());
}
