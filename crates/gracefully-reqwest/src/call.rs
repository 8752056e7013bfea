//! One outbound call made with a token: the attempt (deadline applied, send raced against the
//! token, body guarded) and the retry loop around it. Shared by the extension trait
//! (`src/send.rs`) and the middleware (`src/middleware.rs`) through [`Transport`].

use std::future::Future;
use std::time::{Duration, SystemTime};

use gracefully::operation::{OperationKind, OperationScope};
use gracefully::{CancellationSource, CancellationToken, Cancelled, Reason};

use crate::body;
use crate::deadline::{self, DeadlinePropagation};
use crate::retry::{self, RetryPolicy};

/// Where an attempt's request goes: a `reqwest::Client`, or the rest of a middleware stack.
pub(crate) trait Transport: Send {
    /// What the caller gets back on failure.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Sends one request. Dropping the future aborts it (reqwest closes an HTTP/1.1
    /// connection whose response future is dropped, and resets an HTTP/2 stream).
    fn send(
        &mut self,
        request: reqwest::Request,
    ) -> impl Future<Output = Result<reqwest::Response, Self::Error>> + Send + '_;

    /// The error for a cancellation.
    fn cancelled(cancelled: Cancelled) -> Self::Error;

    /// The reqwest error inside `error`, if any (to classify it for a retry).
    fn as_reqwest(error: &Self::Error) -> Option<&reqwest::Error>;
}

/// Sends `request` with `token`: once, or under `policy` (whose attempt timeout bounds even
/// a request it may not retry).
///
/// Inside a recorded operation (see `gracefully::operation`), the call is an operation of
/// kind `Outbound` under it, named `METHOD scheme://host:port` (the origin only, so that
/// metric labels stay bounded), from the send until the response's head arrived (or the
/// call failed or was cancelled; retries included).
pub(crate) async fn run<T: Transport>(
    transport: &mut T,
    request: reqwest::Request,
    token: &CancellationToken,
    propagation: &DeadlinePropagation,
    policy: Option<&RetryPolicy>,
) -> Result<reqwest::Response, T::Error> {
    let Some(scope) = OperationScope::current() else {
        return run_unrecorded(transport, request, token, propagation, policy).await;
    };
    let url = request.url();
    let name = format!(
        "{} {}",
        request.method(),
        url.origin().ascii_serialization()
    );
    let op = scope.begin(OperationKind::Outbound, &name, token.deadline());
    let result = op
        .scoped(run_unrecorded(
            transport,
            request,
            token,
            propagation,
            policy,
        ))
        .await;
    op.end_with(&result);
    result
}

/// [`run`], without registering an operation.
async fn run_unrecorded<T: Transport>(
    transport: &mut T,
    request: reqwest::Request,
    token: &CancellationToken,
    propagation: &DeadlinePropagation,
    policy: Option<&RetryPolicy>,
) -> Result<reqwest::Response, T::Error> {
    match policy {
        // Boxed: the retry loop's state (an attempt, a timer, the backoff) is several times
        // the size of one attempt's, and every call without retries would otherwise carry
        // (and move) it. A retried call can afford the allocation.
        Some(policy) => {
            Box::pin(with_retries(transport, request, token, propagation, policy)).await
        }
        None => once(transport, request, token, propagation).await,
    }
}

/// One attempt, no retry: the common path, kept free of the retry loop's state.
async fn once<T: Transport>(
    transport: &mut T,
    mut request: reqwest::Request,
    token: &CancellationToken,
    propagation: &DeadlinePropagation,
) -> Result<reqwest::Response, T::Error> {
    propagation
        .apply(&mut request, token)
        .map_err(T::cancelled)?;
    let outcome = token.run_until_cancelled(transport.send(request)).await;
    settle(outcome, token, T::cancelled)
}

/// What one attempt raced against `token` comes to: the response with its body guarded, or
/// the error — the token's cancellation (made into the caller's error by `cancelled`) if it
/// fired or its deadline passed, whatever error the transport saw. Shared by [`once`] and the
/// extension trait's flat path (`src/send.rs`).
pub(crate) fn settle<E>(
    outcome: Result<Result<reqwest::Response, E>, Cancelled>,
    token: &CancellationToken,
    cancelled: fn(Cancelled) -> E,
) -> Result<reqwest::Response, E> {
    match outcome {
        Ok(Ok(response)) => Ok(body::guard(response, token.clone())),
        Ok(Err(error)) => Err(match deadline::cancellation(token) {
            Some(reason) => cancelled(reason),
            None => error,
        }),
        Err(reason) => Err(cancelled(reason)),
    }
}

/// What an attempt that may be retried ended with.
enum Retryable<E> {
    /// A response with a retried status, and the token its body is to watch if it is the
    /// one returned.
    Response(reqwest::Response, CancellationToken),
    Error(E),
    /// The attempt's own timeout passed (not the caller's token).
    TimedOut(Cancelled),
}

impl<E: std::error::Error + Send + Sync + 'static> Retryable<E> {
    /// The outcome as the caller gets it when it is not retried.
    fn into_result<T: Transport<Error = E>>(self) -> Result<reqwest::Response, E> {
        match self {
            Retryable::Response(response, token) => Ok(body::guard(response, token)),
            Retryable::Error(error) => Err(error),
            Retryable::TimedOut(cancelled) => Err(T::cancelled(cancelled)),
        }
    }

    /// The cancellation for a call that stops because its next attempt, `wait` from now,
    /// could not start before the deadline (`left` from now); it names this, the last
    /// outcome, and carries a last error as its source.
    #[cold]
    fn out_of_time(self, wait: Duration, left: Duration) -> Cancelled {
        let last = match &self {
            Retryable::Response(response, _) => format!("status {}", response.status()),
            // The error itself is the reason's source, which its display prints next.
            Retryable::Error(_) => "failed".to_owned(),
            Retryable::TimedOut(_) => "the attempt timed out".to_owned(),
        };
        let reason = Reason::deadline_exceeded().with_message(format!(
            "retry stopped: the next attempt, in {wait:?}, could not start before the \
             deadline ({left:?} left); last attempt: {last}"
        ));
        Cancelled::new(match self {
            Retryable::Error(error) => reason.with_source(error),
            _ => reason,
        })
    }
}

async fn with_retries<T: Transport>(
    transport: &mut T,
    request: reqwest::Request,
    token: &CancellationToken,
    propagation: &DeadlinePropagation,
    policy: &RetryPolicy,
) -> Result<reqwest::Response, T::Error> {
    let mut delays = policy.delays();
    // Not idempotent (and not allowed), or no retries: one attempt.
    let may_retry = policy.allows(request.method());
    let mut next = Some(request);
    let mut retries_done = 0u32;
    loop {
        let current = next.take().expect("an attempt always has a request");
        // A copy for the next attempt, if one may follow; the last attempt sends the
        // original. A request that cannot be cloned (a streaming body) is sent once.
        if may_retry && retries_done < policy.retries() {
            next = current.try_clone();
        }
        let retryable = match attempt(transport, current, token, propagation, policy).await {
            Outcome::Done(result) => return result,
            Outcome::Retryable(retryable) => retryable,
        };
        if next.is_none() {
            return retryable.into_result::<T>();
        }

        // The wait before the next attempt (the policy's docs, steps 4 and 5).
        let mut wait = delays.next().unwrap_or(policy.max_delay());
        if let Retryable::Response(response, _) = &retryable
            && let Some(asked) = retry::retry_after(response.headers(), SystemTime::now())
        {
            if asked > policy.max_delay() {
                return retryable.into_result::<T>();
            }
            wait = wait.max(asked);
        }
        if let Some(left) = token.time_left() {
            let needed = wait
                .saturating_add(propagation.allowance())
                .saturating_add(Duration::from_millis(1));
            if needed >= left {
                return Err(T::cancelled(retryable.out_of_time(wait, left)));
            }
        }
        // A retried response is dropped unread, which closes its connection.
        drop(retryable);
        if let Err(cancelled) = token.run_until_cancelled(tokio::time::sleep(wait)).await {
            return Err(T::cancelled(cancelled));
        }
        retries_done += 1;
    }
}

enum Outcome<E> {
    /// The call is over: return this.
    Done(Result<reqwest::Response, E>),
    /// The attempt failed in a way the policy retries.
    Retryable(Retryable<E>),
}

/// One attempt under `policy`: its own child token if the policy bounds attempts, the
/// deadline applied, the send raced against the token, the outcome classified.
async fn attempt<T: Transport>(
    transport: &mut T,
    mut request: reqwest::Request,
    token: &CancellationToken,
    propagation: &DeadlinePropagation,
    policy: &RetryPolicy,
) -> Outcome<T::Error> {
    // An attempt bounded by its own timeout watches a child of the caller's token; the
    // child's timer fires even after this source is dropped, so the body of a response it
    // returns stays bounded too.
    let bounded: Option<CancellationSource> = policy
        .attempt_timeout_value()
        .map(|timeout| token.child_with_timeout(timeout));
    let attempt_token = bounded.as_ref().map_or(token, CancellationSource::as_token);

    if let Err(cancelled) = propagation.apply(&mut request, attempt_token) {
        return Outcome::Done(Err(T::cancelled(cancelled)));
    }
    let sent = attempt_token
        .run_until_cancelled(transport.send(request))
        .await;
    // A response that is not retried is the answer, even if the token fires this instant:
    // its body watches the token and reports the cancellation when read (as Go's client
    // returns a response it has, whose body read then fails).
    let sent = match sent {
        Ok(Ok(response)) if !policy.retries_status(response.status()) => {
            return Outcome::Done(Ok(body::guard(response, attempt_token.clone())));
        }
        other => other,
    };
    // Otherwise the caller's token first: its cancellation (or passed deadline) ends the
    // call, whatever the attempt saw; nothing is retried after it.
    if let Some(cancelled) = deadline::cancellation(token) {
        return Outcome::Done(Err(T::cancelled(cancelled)));
    }
    match sent {
        Ok(Ok(response)) => {
            Outcome::Retryable(Retryable::Response(response, attempt_token.clone()))
        }
        Ok(Err(error)) => {
            if let Some(cancelled) = deadline::cancellation(attempt_token) {
                // reqwest's timer (set to the attempt's budget by `set_request_timeout`)
                // fired before the attempt token's timer did.
                return Outcome::Retryable(Retryable::TimedOut(cancelled));
            }
            let connection = T::as_reqwest(&error).is_some_and(retry::is_connection_error);
            if connection && policy.retries_connection_errors() {
                Outcome::Retryable(Retryable::Error(error))
            } else {
                Outcome::Done(Err(error))
            }
        }
        // The caller's token has not fired (checked above), so the attempt's own did.
        Err(cancelled) => Outcome::Retryable(Retryable::TimedOut(cancelled)),
    }
}
