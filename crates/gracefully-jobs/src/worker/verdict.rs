//! How an attempt ended, from the handler's result and why its token fired (if it did).
//! A pure function, so every row of the handler table is unit-tested.

use gracefully::{Reason, ReasonKind};
use gracefully_host::BoxError;

/// What the worker writes for a finished attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `succeeded`.
    Succeed,
    /// The handler already wrote the success in its transaction; check that it committed
    /// (a fenced `interrupt` changes nothing if it did, and returns the job if it did not).
    CompletedInTx,
    /// The shutdown stopped it: back in the queue, no attempt used.
    Interrupt,
    /// A cancel request stopped it: `cancelled`, with the error text.
    Cancelled(String),
    /// A genuine failure: `retrying` or `dead`, with the error text.
    Fail(String),
}

/// The handler's result: its own, or the panic of its task.
pub(crate) type Ended = Result<Result<(), BoxError>, String>;

/// Decides. `reason` is why the job's token fired, if it did. Every write is fenced
/// (store #1), so an attempt that lost its lease to another worker changes nothing
/// whatever the verdict; one that lost it only because the database could not be reached
/// still completes, or goes back to the queue at once.
pub(crate) fn verdict(ended: Ended, reason: Option<Reason>, completed_in_tx: bool) -> Verdict {
    let error = match ended {
        Ok(Ok(())) if completed_in_tx => return Verdict::CompletedInTx,
        Ok(Ok(())) => return Verdict::Succeed,
        Ok(Err(e)) => error_text(&*e),
        Err(panic) => format!("the handler panicked: {panic}"),
    };
    let error = crate::store::without_nul(error);
    match reason.as_ref().map(Reason::kind) {
        // The hard stop, or the worker for a lost lease (the only Failed it fires).
        Some(ReasonKind::Shutdown | ReasonKind::Failed) => Verdict::Interrupt,
        Some(ReasonKind::Requested) => Verdict::Cancelled(error),
        // Any other kind came from elsewhere (the handler's own deadline): a genuine failure.
        _ => Verdict::Fail(error),
    }
}

/// An error with its sources, `a: b: c`, at most 4 KiB.
pub(crate) fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    let mut depth = 0;
    while let Some(s) = source {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
        depth += 1;
        if depth > 16 {
            break;
        }
    }
    if text.len() > 4096 {
        let mut cut = 4096;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use gracefully::Cancelled;

    fn err(msg: &str) -> Ended {
        Ok(Err(msg.into()))
    }

    fn cancelled(reason: Reason) -> Ended {
        Ok(Err(Box::new(Cancelled::new(reason))))
    }

    #[test]
    fn ok_succeeds_whatever_fired_the_token() {
        assert_eq!(verdict(Ok(Ok(())), None, false), Verdict::Succeed);
        assert_eq!(
            verdict(Ok(Ok(())), Some(Reason::shutdown()), false),
            Verdict::Succeed
        );
        assert_eq!(
            verdict(Ok(Ok(())), Some(Reason::requested()), false),
            Verdict::Succeed
        );
    }

    #[test]
    fn ok_after_completing_in_the_transaction_is_checked_not_written_again() {
        assert_eq!(verdict(Ok(Ok(())), None, true), Verdict::CompletedInTx);
    }

    #[test]
    fn a_handler_stopped_by_the_shutdown_is_interrupted_without_using_an_attempt() {
        assert_eq!(
            verdict(
                cancelled(Reason::shutdown()),
                Some(Reason::shutdown()),
                false
            ),
            Verdict::Interrupt
        );
        // Also when the error it returns does not say it was a cancellation.
        assert_eq!(
            verdict(err("connection reset"), Some(Reason::shutdown()), false),
            Verdict::Interrupt
        );
    }

    #[test]
    fn a_handler_stopped_by_a_cancel_request_is_cancelled_not_retried() {
        let r = Reason::requested().with_message("customer withdrew");
        match verdict(cancelled(r.clone()), Some(r), false) {
            Verdict::Cancelled(text) => assert!(text.contains("customer withdrew"), "{text}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cancellation_by_the_handlers_own_deadline_is_a_genuine_failure() {
        let v = verdict(cancelled(Reason::deadline_exceeded()), None, false);
        assert!(matches!(v, Verdict::Fail(_)), "{v:?}");
    }

    #[test]
    fn errors_and_panics_are_genuine_failures_with_their_text() {
        assert_eq!(
            verdict(err("boom"), None, false),
            Verdict::Fail("boom".into())
        );
        assert_eq!(
            verdict(Err("oops".into()), None, false),
            Verdict::Fail("the handler panicked: oops".into())
        );
    }

    #[test]
    fn an_attempt_stopped_for_a_lost_lease_is_returned_by_a_fenced_write() {
        let lost = Reason::failed("lease lost");
        assert_eq!(
            verdict(err("stopped"), Some(lost), false),
            Verdict::Interrupt
        );
    }
}
