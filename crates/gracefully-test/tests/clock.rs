//! `advance_to_deadline`: jumps exactly to a token's deadline on a manual clock, and says so
//! when it cannot.

use std::time::Duration;

use gracefully::{CancellationSource, ReasonKind};
use gracefully_test::{DeadlineError, ManualClock, advance_to_deadline};

const SEC: Duration = Duration::from_secs(1);

#[test]
fn advance_to_deadline_fires_the_token_exactly_at_its_deadline() {
    let clock = ManualClock::new();
    let start = clock.now();
    let root = CancellationSource::with_clock(&clock);
    let request = root.token().child_with_timeout(30 * SEC);
    let query = request.token().child_with_timeout(5 * SEC);
    clock.advance(SEC);

    assert_eq!(advance_to_deadline(&clock, &query.token()), Ok(4 * SEC));
    assert_eq!(clock.now(), start + 5 * SEC);
    let reason = query.token().reason().expect("the deadline fired");
    assert_eq!(reason.kind(), ReasonKind::DeadlineExceeded);
    assert!(!request.is_cancelled(), "its parent's deadline is later");
}

#[test]
fn the_nearest_deadline_is_an_ancestors_when_it_is_earlier() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let request = root.token().child_with_timeout(2 * SEC);
    let query = request.token().child_with_timeout(60 * SEC);

    assert_eq!(advance_to_deadline(&clock, &query.token()), Ok(2 * SEC));
    assert!(request.is_cancelled() && query.is_cancelled());
}

#[test]
fn a_passed_deadline_moves_the_clock_by_nothing() {
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    let request = root.token().child_with_timeout(SEC);
    clock.advance(3 * SEC);
    let now = clock.now();

    assert_eq!(
        advance_to_deadline(&clock, &request.token()),
        Ok(Duration::ZERO)
    );
    assert_eq!(clock.now(), now);
}

#[test]
fn a_token_without_a_deadline_is_an_error_and_the_clock_stays() {
    let clock = ManualClock::new();
    let now = clock.now();
    let root = CancellationSource::with_clock(&clock);

    let error = advance_to_deadline(&clock, &root.token()).unwrap_err();
    assert_eq!(error, DeadlineError::NoDeadline);
    assert!(error.to_string().contains("child_with_timeout"), "{error}");
    assert_eq!(clock.now(), now);
}

#[test]
fn a_token_on_the_system_clock_is_an_error_not_a_silent_no_op() {
    let clock = ManualClock::new();
    let now = clock.now();
    let forgot = CancellationSource::new(); // not `with_clock(&clock)`
    let request = forgot.token().child_with_timeout(3600 * SEC);

    let error = advance_to_deadline(&clock, &request.token()).unwrap_err();
    assert_eq!(error, DeadlineError::OtherClock);
    assert!(
        error
            .to_string()
            .contains("CancellationSource::with_clock(&clock)"),
        "{error}"
    );
    assert!(!request.is_cancelled());
    assert_eq!(clock.now(), now, "the manual clock was not moved");
}
