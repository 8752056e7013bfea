//! Signals sent to this very process (`kill(getpid(), …)`). Their own test binary: once a
//! handler is installed it stays for the process, and every host that listens hears every
//! signal, so these tests take turns (`SERIAL`) and raise a signal only once their host is
//! ready (its handlers are installed by then).

#![cfg(unix)]

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::{Host, ShutdownReport, service_fn};
use tokio::task::JoinHandle;

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
        let lifetime = host.lifetime();
        let mut run = tokio::spawn(host.run());
        until_started(lifetime.started(), &mut run).await;

        send_to_self(libc::SIGTERM);
        let report = report_of(run).await;
        assert_eq!(report.trigger().message(), Some("SIGTERM"), "{report}");
        assert_eq!(report.exit_code(), 0, "{report}");
    });
}
