//! Bad configuration is a `ConfigError` naming the field and the valid range — never a
//! panic later.

use std::time::Duration;

use gracefully_host::{
    FailurePolicy, Host, HostBuilder, RestartPolicy, ServiceOptions, service_fn,
};

fn noop() -> impl gracefully_host::BackgroundService {
    service_fn(|_s, _cx| async {})
}

fn error_of(builder: HostBuilder) -> (String, String) {
    let err = builder.build().expect_err("the configuration is invalid");
    (err.field().to_string(), err.to_string())
}

#[test]
fn the_defaults_are_valid() {
    assert!(Host::builder().build().is_ok());
}

#[test]
fn a_cancel_grace_longer_than_the_shutdown_timeout_is_rejected_naming_both() {
    let (field, message) = error_of(
        Host::builder()
            .shutdown_timeout(Duration::from_secs(10))
            .cancel_grace(Duration::from_secs(15)),
    );
    assert_eq!(field, "cancel_grace");
    assert!(
        message.contains("15s") && message.contains("10s"),
        "{message}"
    );
    assert!(
        message.contains("valid: 0 ..= shutdown_timeout"),
        "{message}"
    );
}

#[test]
fn a_cancel_grace_equal_to_the_timeout_is_allowed_and_skips_the_drain_budget() {
    let ok = Host::builder()
        .shutdown_timeout(Duration::from_secs(5))
        .cancel_grace(Duration::from_secs(5))
        .build();
    assert!(ok.is_ok());
}

#[test]
fn a_pre_stop_delay_that_does_not_fit_the_timeout_is_rejected() {
    let (field, message) = error_of(
        Host::builder()
            .shutdown_timeout(Duration::from_secs(30))
            .cancel_grace(Duration::from_secs(5))
            .pre_stop_delay(Duration::from_secs(26)),
    );
    assert_eq!(field, "pre_stop_delay");
    assert!(
        message.contains("valid: 0 ..= shutdown_timeout − cancel_grace (25s)"),
        "{message}"
    );
}

#[test]
fn zero_timeouts_are_rejected() {
    assert_eq!(
        error_of(Host::builder().shutdown_timeout(Duration::ZERO)).0,
        "shutdown_timeout"
    );
    assert_eq!(
        error_of(Host::builder().startup_timeout(Duration::ZERO)).0,
        "startup_timeout"
    );
    let (field, _) = error_of(Host::builder().service_with(
        "db",
        noop(),
        ServiceOptions::new().startup_timeout(Duration::ZERO),
    ));
    assert_eq!(field, "services[\"db\"].startup_timeout");
}

#[test]
fn an_absurd_shutdown_timeout_is_rejected_instead_of_overflowing_later() {
    let (field, message) = error_of(Host::builder().shutdown_timeout(Duration::MAX));
    assert_eq!(field, "shutdown_timeout");
    assert!(message.contains("at most"), "{message}");
}

#[test]
fn duplicate_and_empty_service_names_are_rejected() {
    let (field, message) = error_of(Host::builder().service("db", noop()).service("db", noop()));
    assert_eq!(field, "services[\"db\"]");
    assert!(message.contains("registered twice"), "{message}");
    assert_eq!(
        error_of(Host::builder().service("", noop())).0,
        "services[0]"
    );
}

#[test]
fn a_dependency_on_an_unknown_service_is_rejected_listing_the_known_ones() {
    let (field, message) = error_of(Host::builder().service("db", noop()).service_with(
        "api",
        noop(),
        ServiceOptions::new().depends_on(["dbb"]),
    ));
    assert_eq!(field, "services[\"api\"].depends_on");
    assert!(
        message.contains("\"dbb\"") && message.contains("registered: db, api"),
        "{message}"
    );
}

#[test]
fn a_dependency_cycle_is_rejected_showing_the_cycle() {
    let (field, message) = error_of(
        Host::builder()
            .service_with("a", noop(), ServiceOptions::new().depends_on(["c"]))
            .service_with("b", noop(), ServiceOptions::new().depends_on(["a"]))
            .service_with("c", noop(), ServiceOptions::new().depends_on(["b"])),
    );
    assert_eq!(field, "services[\"a\"].depends_on");
    assert!(message.contains("a → c → b → a"), "{message}");
    let (_, message) = error_of(Host::builder().service_with(
        "self",
        noop(),
        ServiceOptions::new().depends_on(["self"]),
    ));
    assert!(message.contains("self → self"), "{message}");
}

#[test]
fn an_invalid_restart_policy_is_rejected_naming_the_service_and_setting() {
    let restart = |policy| ServiceOptions::new().on_failure(FailurePolicy::Restart(policy));
    let cases = [
        (RestartPolicy::new().jitter(1.5), "jitter"),
        (RestartPolicy::new().jitter(f64::NAN), "jitter"),
        (RestartPolicy::new().max_restarts(0), "max_restarts"),
        (RestartPolicy::new().within(Duration::ZERO), "within"),
        (
            RestartPolicy::new().backoff(Duration::from_secs(2), Duration::from_secs(1)),
            "backoff",
        ),
    ];
    for (policy, setting) in cases {
        let (field, _) = error_of(Host::builder().service_with("q", noop(), restart(policy)));
        assert_eq!(field, format!("services[\"q\"].on_failure.{setting}"));
    }
}
