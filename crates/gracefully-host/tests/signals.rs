//! Signals sent to this very process (`kill(getpid(), …)`). Their own test binary: once a
//! handler is installed it stays for the process, and every host that listens hears every
//! signal, so these tests take turns (`SERIAL`) and raise a signal only once their host is
//! ready (its handlers are installed by then).

#![cfg(unix)]

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gracefully::{CancellationToken, Registration};
use gracefully_host::{Host, ShutdownReport, service_fn};
use support::Captured;
use tokio::task::JoinHandle;

mod support;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn send_to_self(signal: libc::c_int) {
    // SAFETY: getpid(2) and kill(2) have no memory-safety preconditions; the process
    // handles `signal` (the host installed its handlers before it became ready).
    let rc = unsafe { libc::kill(libc::getpid(), signal) };
    assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
}

fn honouring() -> impl gracefully_host::BackgroundService {
    service_fn(|stopping, _cx| async move {
        stopping.cancelled().await;
    })
}

/// Waits until the host is ready; panics (with what `run` returned) if `run` ends first.
async fn until_started(token: CancellationToken, run: &mut JoinHandle<ShutdownReport>) {
    tokio::select! {
        _ = token.cancelled() => {}
        ended = run => panic!("run ended before the host was ready: {ended:?}"),
    }
}

async fn report_of(run: JoinHandle<ShutdownReport>) -> ShutdownReport {
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run returns")
        .expect("run does not panic")
}

/// Runs `host` until it is ready, sends this process SIGTERM, and returns its report,
/// asserting the signal was its trigger and that it stopped cleanly.
async fn stopped_by_sigterm(host: Host) -> ShutdownReport {
    let lifetime = host.lifetime();
    let mut run = tokio::spawn(host.run());
    until_started(lifetime.started(), &mut run).await;
    send_to_self(libc::SIGTERM);
    let report = report_of(run).await;
    assert_eq!(report.trigger().message(), Some("SIGTERM"), "{report}");
    assert_eq!(report.exit_code(), 0, "{report}");
    report
}

// Issue 9, item 2.
#[test]
fn a_second_signal_during_the_pre_stop_delay_still_fires_every_token_in_order() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let host = Host::builder()
            .pre_stop_delay(Duration::from_secs(30))
            .shutdown_timeout(Duration::from_secs(60))
            .service("svc", honouring())
            .build()
            .unwrap();
        let lifetime = host.lifetime();
        let fired = Arc::new(Mutex::new(Vec::new()));
        // Callbacks run on the thread that fires the token, in firing order.
        let _registrations: Vec<Registration> = [
            ("started", lifetime.started()),
            ("stop requested", lifetime.stop_requested()),
            ("stopping", lifetime.stopping()),
            ("hard stop", lifetime.hard_stop()),
            ("stopped", lifetime.stopped()),
        ]
        .into_iter()
        .map(|(name, token)| {
            let fired = Arc::clone(&fired);
            token.on_cancel(move |_| fired.lock().unwrap().push(name))
        })
        .collect();
        let mut run = tokio::spawn(host.run());
        until_started(lifetime.started(), &mut run).await;
        // A token's callbacks run after its waiters are woken: wait for ours too, so the
        // record below is in firing order.
        while !fired.lock().unwrap().contains(&"started") {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }

        send_to_self(libc::SIGTERM);
        lifetime.stop_requested().cancelled().await;
        send_to_self(libc::SIGTERM); // during the 30 s pre-stop delay
        let report = report_of(run).await;

        assert_eq!(
            *fired.lock().unwrap(),
            [
                "started",
                "stop requested",
                "stopping",
                "hard stop",
                "stopped"
            ],
            "{report}"
        );
        assert!(report.forced(), "{report}");
        assert_eq!(report.exit_code(), ShutdownReport::EXIT_FORCED);
    });
}

// Issue 9, item 6.
#[test]
fn signals_are_handled_on_a_runtime_without_the_io_driver() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time() // and not `enable_io`
        .build()
        .unwrap();
    runtime.block_on(async {
        let host = Host::builder()
            .handle_signals(true)
            .service("svc", honouring())
            .build()
            .unwrap();
        stopped_by_sigterm(host).await;
    });
}

/// Signals taken before the host existed and handed to it: a signal stops the host (with
/// the signal as its trigger), and their `received` token fires too.
#[test]
fn early_signals_handed_to_the_host_stop_it() {
    let _serial = serial();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let signals = gracefully_host::EarlySignals::install().unwrap();
        let received = signals.received();
        let host = Host::builder()
            .signals(signals)
            .service("svc", honouring())
            .build()
            .unwrap();
        stopped_by_sigterm(host).await;
        let reason = received.reason().expect("received fired");
        assert_eq!(reason.message(), Some("SIGTERM"));
    });
}

/// `EarlySignals` held but not handed to a host that installs handlers of its own would act
/// on their own (a second signal exits the process): the host says so.
#[test]
fn a_host_warns_when_early_signals_are_held_but_not_handed_to_it() {
    let _serial = serial();
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let held = gracefully_host::EarlySignals::install().unwrap();
        let host = Host::builder()
            .handle_signals(true)
            .service("svc", honouring())
            .build()
            .unwrap();
        let lifetime = host.lifetime();
        let stopper = lifetime.clone();
        let (report, ()) = tokio::join!(host.run(), async move {
            stopper.started().cancelled().await;
            stopper.stop(gracefully::Reason::shutdown().with_message("test"));
        });
        assert_eq!(report.exit_code(), 0, "{report}");
        drop(held);
    });
    let logs = captured.text();
    assert!(
        logs.contains("EarlySignals are held but were not handed to this host"),
        "{logs}"
    );
}
