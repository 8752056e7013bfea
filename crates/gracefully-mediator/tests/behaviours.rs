//! Behaviours: registration order, narrowing the token (never detaching), the timeout's
//! reason, validation, and what the logging behaviour records.

mod support;

use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use gracefully::{
    CancellationSource, CancellationToken, Cancelled, ManualClock, Reason, ReasonKind,
};
use gracefully_mediator::{
    BoxError, Call, Error, Invalid, LoggingLayer, Mediator, Request, TimeoutLayer, ValidateLayer,
    handler_fn,
};
use support::{RecordLayer, Trail, capture, within};
use tower::{Layer, Service};
use tracing::Level;

struct Ping;
impl Request for Ping {
    type Response = &'static str;
}

struct Echo(u32);
impl Request for Echo {
    type Response = u32;
}

#[tokio::test]
async fn behaviours_wrap_every_handler_in_registration_order_first_outermost() {
    let trail = Trail::default();
    let layer = |name| RecordLayer {
        name,
        trail: trail.clone(),
    };
    let (in_ping, in_echo) = (trail.clone(), trail.clone());
    let mediator = Mediator::builder()
        .layer(layer("first"))
        .layer(layer("second"))
        .layer(layer("third"))
        .handler(handler_fn(move |_: Ping, _t| {
            in_ping.push("ping handler");
            async { Ok::<_, BoxError>("pong") }
        }))
        .handler(handler_fn(move |n: Echo, _t| {
            in_echo.push("echo handler");
            async move { Ok::<_, BoxError>(n.0) }
        }))
        .build()
        .unwrap();

    let never = CancellationToken::never();
    mediator.send(Ping, &never).await.unwrap();
    let expected = |handler: &str| {
        [
            "first in",
            "second in",
            "third in",
            handler,
            "third out",
            "second out",
            "first out",
        ]
        .map(String::from)
        .to_vec()
    };
    assert_eq!(trail.take(), expected("ping handler"));
    // Every handler, not only the first registered.
    mediator.send(Echo(3), &never).await.unwrap();
    assert_eq!(trail.take(), expected("echo handler"));
}

/// A behaviour that narrows the token and keeps the narrowed scope's source, so the test
/// can cancel the rest of the pipeline on its own.
#[derive(Clone)]
struct Narrowing<S> {
    inner: S,
    how: How,
    scopes: Arc<Mutex<Vec<CancellationSource>>>,
}

#[derive(Clone)]
enum How {
    Child,
    Timeout(Duration),
    Linked(CancellationToken),
}

#[derive(Clone)]
struct NarrowingLayer {
    how: How,
    scopes: Arc<Mutex<Vec<CancellationSource>>>,
}

impl<S> Layer<S> for NarrowingLayer {
    type Service = Narrowing<S>;
    fn layer(&self, inner: S) -> Narrowing<S> {
        Narrowing {
            inner,
            how: self.how.clone(),
            scopes: self.scopes.clone(),
        }
    }
}

impl<S, R> Service<Call<R>> for Narrowing<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error>,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut call: Call<R>) -> S::Future {
        let scope = match &self.how {
            How::Child => call.narrow(),
            How::Timeout(timeout) => call.narrow_with_timeout(*timeout),
            How::Linked(also) => call.narrow_linked(also),
        };
        self.scopes.lock().unwrap().push(scope);
        self.inner.call(call)
    }
}

/// A mediator whose `Ping` handler waits for its token and answers with the reason.
fn waiting_mediator(how: How, scopes: Arc<Mutex<Vec<CancellationSource>>>) -> Mediator {
    Mediator::builder()
        .layer(NarrowingLayer { how, scopes })
        .handler(handler_fn(|_: Ping, token: CancellationToken| async move {
            Err::<&'static str, _>(Cancelled::new(token.cancelled().await))
        }))
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_behaviour_can_narrow_the_token_and_cancel_only_the_rest_of_the_pipeline() {
    let scopes = Arc::new(Mutex::new(Vec::new()));
    let mediator = waiting_mediator(How::Child, scopes.clone());
    let caller = CancellationSource::new();
    let send = tokio::spawn(mediator.send(Ping, &caller.token()));
    while scopes.lock().unwrap().is_empty() {
        tokio::task::yield_now().await;
    }
    // The behaviour cancels its narrowed scope: the handler stops with that reason …
    scopes.lock().unwrap()[0].cancel_with(Reason::failed("circuit open"));
    let err = within(send).await.unwrap().unwrap_err();
    assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Failed);
    // … and the caller's token is untouched: a narrowed scope cannot cancel its caller.
    assert!(!caller.is_cancelled());
}

#[tokio::test]
async fn a_narrowed_token_still_fires_with_the_callers_cancellation_whichever_way_it_was_narrowed()
{
    for how in [
        How::Child,
        How::Timeout(Duration::from_secs(3600)),
        // Linked to a token that never fires: the caller's stays a parent.
        How::Linked(CancellationToken::never()),
        How::Linked(CancellationSource::new().token()),
    ] {
        let scopes = Arc::new(Mutex::new(Vec::new()));
        let mediator = waiting_mediator(how, scopes.clone());
        let caller = CancellationSource::new();
        let send = tokio::spawn(mediator.send(Ping, &caller.token()));
        while scopes.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        // The behaviour drops its scope's source: that neither cancels nor detaches.
        scopes.lock().unwrap().clear();
        caller.cancel_with(Reason::shutdown().with_message("SIGTERM"));
        let err = within(send).await.unwrap().unwrap_err();
        let cancelled = err
            .as_cancelled()
            .expect("the caller's cancellation reached the handler");
        assert_eq!(*cancelled, Cancelled::new(caller.token().reason().unwrap()));
        assert_eq!(cancelled.reason().message(), Some("SIGTERM"));
    }
}

#[tokio::test]
async fn timeout_narrows_the_token_and_the_handler_stops_with_deadline_exceeded() {
    // On a manual clock: the deadline is exactly 5 s after the call, and fires when the
    // clock gets there, not before.
    let clock = ManualClock::new();
    let root = CancellationSource::with_clock(&clock);
    // The caller has a deadline of its own, an hour away: the behaviour's is sooner.
    let caller = root.token().child_with_timeout(Duration::from_secs(3600));
    let seen = Arc::new(Mutex::new(None));
    let slot = seen.clone();
    let mediator = Mediator::builder()
        .layer(TimeoutLayer::new(Duration::from_secs(5)))
        .handler(handler_fn(move |_: Ping, token: CancellationToken| {
            *slot.lock().unwrap() = Some(token.clone());
            async move { Err::<&'static str, _>(Cancelled::new(token.cancelled().await)) }
        }))
        .build()
        .unwrap();

    let send = tokio::spawn(mediator.send(Ping, &caller.token()));
    let token = loop {
        if let Some(token) = seen.lock().unwrap().clone() {
            break token;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(token.deadline(), Some(clock.now() + Duration::from_secs(5)));
    assert_eq!(
        caller.token().deadline(),
        Some(clock.now() + Duration::from_secs(3600)),
        "the caller's own token is not changed"
    );

    clock.advance(Duration::from_millis(4999));
    assert!(!token.is_cancelled());
    clock.advance(Duration::from_millis(1));
    let err = within(send).await.unwrap().unwrap_err();
    let cancelled = err.as_cancelled().unwrap();
    assert_eq!(cancelled.kind(), ReasonKind::DeadlineExceeded);
    assert!(
        cancelled.reason().origin().file().ends_with("timeout.rs"),
        "the origin names the timeout behaviour: {}",
        cancelled.reason().origin()
    );
    assert!(!caller.is_cancelled());
}

#[tokio::test]
async fn timeout_keeps_an_earlier_deadline_of_the_caller() {
    let mediator = Mediator::builder()
        .layer(TimeoutLayer::new(Duration::from_secs(3600)))
        .handler(handler_fn(|_: Ping, token: CancellationToken| async move {
            token.cancelled().await;
            token.check().map(|()| "unreachable")
        }))
        .build()
        .unwrap();
    let caller = CancellationSource::with_timeout(Duration::from_millis(20));
    let err = within(mediator.send(Ping, &caller.token()))
        .await
        .unwrap_err();
    assert_eq!(
        err.as_cancelled().unwrap().kind(),
        ReasonKind::DeadlineExceeded
    );
    // The caller's deadline fired (its own source reports it), not the hour-long one.
    assert!(caller.is_cancelled());
}

#[derive(Debug)]
struct CreateOrder {
    item: String,
    quantity: u32,
}
impl Request for CreateOrder {
    type Response = u64;
    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::new();
        if self.item.is_empty() {
            invalid.add("item", "must not be empty");
        }
        if self.quantity == 0 {
            invalid.add("quantity", "must be at least 1");
        }
        invalid.into_result()
    }
}

#[tokio::test]
async fn validation_rejects_an_invalid_request_before_its_handler_runs_naming_every_problem() {
    let trail = Trail::default();
    let in_handler = trail.clone();
    let mediator = Mediator::builder()
        .layer(ValidateLayer::new())
        .handler(handler_fn(move |order: CreateOrder, _t| {
            in_handler.push("handler");
            async move { Ok::<_, BoxError>(u64::from(order.quantity)) }
        }))
        .build()
        .unwrap();
    let never = CancellationToken::never();

    let err = mediator
        .send(
            CreateOrder {
                item: String::new(),
                quantity: 0,
            },
            &never,
        )
        .await
        .unwrap_err();
    let Error::Invalid(invalid) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        invalid.request_type(),
        Some(std::any::type_name::<CreateOrder>())
    );
    assert_eq!(
        invalid.problems().collect::<Vec<_>>(),
        [
            (Some("item"), "must not be empty"),
            (Some("quantity"), "must be at least 1")
        ]
    );
    assert!(trail.take().is_empty(), "the handler did not run");

    let ok = mediator
        .send(
            CreateOrder {
                item: "tea".into(),
                quantity: 2,
            },
            &never,
        )
        .await;
    assert_eq!(ok.unwrap(), 2);
    assert_eq!(trail.take(), ["handler"]);
}

#[test]
fn logging_records_a_cancellation_at_debug_with_its_reason_and_never_as_an_error() {
    let (subscriber, events) = capture();
    let _default = tracing::subscriber::set_default(subscriber);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mediator = Mediator::builder()
        .layer(LoggingLayer::new())
        .handler(handler_fn(|n: Echo, token: CancellationToken| async move {
            match n.0 {
                0 => Ok(0),
                1 => Err::<u32, BoxError>(Box::new(Cancelled::new(token.cancelled().await))),
                _ => Err("disk full".into()),
            }
        }))
        .build()
        .unwrap();

    runtime.block_on(async {
        let caller = CancellationSource::new();
        let send = mediator.send(Echo(1), &caller.token());
        caller.cancel_with(Reason::disconnected().with_message("client left"));
        assert!(send.await.unwrap_err().is_cancellation());
        mediator
            .send(Echo(0), &CancellationToken::never())
            .await
            .unwrap();
        mediator
            .send(Echo(2), &CancellationToken::never())
            .await
            .unwrap_err();
    });

    let cancelled = events.with_message("request cancelled");
    assert_eq!(cancelled.len(), 1, "{:?}", events.all());
    assert_eq!(cancelled[0].level, Level::DEBUG);
    let reason = cancelled[0].field("reason").unwrap();
    assert!(
        reason.starts_with("client disconnected: client left"),
        "{reason}"
    );
    assert!(cancelled[0].field("elapsed").is_some());
    assert_eq!(
        cancelled[0].field("request"),
        Some(std::any::type_name::<Echo>())
    );

    let handled = events.with_message("request handled");
    assert_eq!(handled.len(), 1);
    assert_eq!(handled[0].level, Level::DEBUG);
    assert!(handled[0].field("elapsed").is_some());

    // The only error is the genuine failure.
    let errors: Vec<_> = events
        .all()
        .into_iter()
        .filter(|e| e.level == Level::ERROR)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].message, "request failed");
    assert_eq!(errors[0].field("error"), Some("disk full"));
}

#[test]
fn logging_records_an_invalid_request_at_info() {
    let (subscriber, events) = capture();
    let _default = tracing::subscriber::set_default(subscriber);
    let mediator = Mediator::builder()
        .layer(LoggingLayer::new())
        .layer(ValidateLayer::new())
        .handler(handler_fn(|_: CreateOrder, _t| async {
            Ok::<_, BoxError>(1)
        }))
        .build()
        .unwrap();
    let send = mediator.send(
        CreateOrder {
            item: String::new(),
            quantity: 1,
        },
        &CancellationToken::never(),
    );
    // Nothing here awaits anything: one poll finishes it.
    let result = futures_util::FutureExt::now_or_never(send).expect("ready at once");
    assert!(matches!(result, Err(Error::Invalid(_))));
    let invalid = events.with_message("request invalid");
    assert_eq!(invalid.len(), 1);
    assert_eq!(invalid[0].level, Level::INFO);
    assert!(
        invalid[0]
            .field("problems")
            .unwrap()
            .contains("item: must not be empty")
    );
}
