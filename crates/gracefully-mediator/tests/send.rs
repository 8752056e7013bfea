//! `send`: dispatch to the one handler of a request type, the token reaching it, the
//! errors of a missing or duplicated handler.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gracefully::{CancellationSource, CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_mediator::{
    BoxError, BuildProblem, Error, LoggingLayer, Mediator, Request, RequestHandler, RetryLayer,
    ValidateLayer, handler_fn,
};

#[derive(Clone, Debug, PartialEq)]
struct GetOrder {
    id: u64,
}
impl Request for GetOrder {
    type Response = String;
}

#[derive(Debug)]
struct PlaceOrder {
    item: &'static str,
}
impl Request for PlaceOrder {
    type Response = u64;
}

struct Unhandled;
impl Request for Unhandled {
    type Response = ();
}

struct GetOrderHandler;
impl RequestHandler<GetOrder> for GetOrderHandler {
    async fn handle(
        &self,
        request: GetOrder,
        token: CancellationToken,
    ) -> Result<String, BoxError> {
        token.check()?;
        Ok(format!("order {}", request.id))
    }
}

struct PlaceOrderHandler;
impl RequestHandler<PlaceOrder> for PlaceOrderHandler {
    async fn handle(
        &self,
        request: PlaceOrder,
        _token: CancellationToken,
    ) -> Result<u64, BoxError> {
        Ok(request.item.len() as u64)
    }
}

fn never() -> CancellationToken {
    CancellationToken::never()
}

#[tokio::test]
async fn send_dispatches_each_request_to_the_handler_of_its_type() {
    let mediator = Mediator::builder()
        .handler(GetOrderHandler)
        .handler(PlaceOrderHandler)
        .build()
        .unwrap();
    assert_eq!(
        mediator.send(GetOrder { id: 7 }, &never()).await.unwrap(),
        "order 7"
    );
    assert_eq!(
        mediator
            .send(PlaceOrder { item: "teapot" }, &never())
            .await
            .unwrap(),
        6
    );
}

#[tokio::test]
async fn send_without_a_handler_is_an_error_naming_the_request_type() {
    let mediator = Mediator::builder()
        .handler(GetOrderHandler)
        .build()
        .unwrap();
    let err = mediator.send(Unhandled, &never()).await.unwrap_err();
    let Error::NoHandler(missing) = &err else {
        panic!("expected NoHandler, got {err:?}")
    };
    assert_eq!(missing.request_type(), std::any::type_name::<Unhandled>());
    let text = err.to_string();
    assert!(text.contains("send::Unhandled"), "{text}");
    assert!(
        text.contains("MediatorBuilder::handler"),
        "says what would be right: {text}"
    );
}

#[tokio::test]
async fn sender_finds_a_missing_handler_when_resolved_not_at_the_first_send() {
    let mediator = Mediator::builder()
        .handler(GetOrderHandler)
        .build()
        .unwrap();
    let missing = mediator.sender::<Unhandled>().unwrap_err();
    assert_eq!(missing.request_type(), std::any::type_name::<Unhandled>());

    let get = mediator.sender::<GetOrder>().unwrap();
    assert_eq!(
        get.send(GetOrder { id: 1 }, &never()).await.unwrap(),
        "order 1"
    );
    // A clone sends through the same pipeline.
    assert_eq!(
        get.clone()
            .send(GetOrder { id: 2 }, &never())
            .await
            .unwrap(),
        "order 2"
    );
}

#[test]
fn build_rejects_two_handlers_for_one_request_type_naming_the_type_and_both_handlers() {
    let err = Mediator::builder()
        .handler(GetOrderHandler)
        .handler(handler_fn(|_: GetOrder, _t| async {
            Ok::<_, BoxError>(String::new())
        }))
        .build()
        .unwrap_err();
    let [
        BuildProblem::DuplicateHandler {
            request,
            first,
            second,
        },
    ] = err.problems()
    else {
        panic!("{err:?}")
    };
    assert_eq!(*request, std::any::type_name::<GetOrder>());
    assert!(first.ends_with("GetOrderHandler"), "{first}");
    assert!(second.contains("HandlerFn"), "{second}");
    assert!(err.to_string().contains("exactly one handler"), "{err}");
}

#[test]
fn build_lists_every_expected_request_type_left_without_a_handler() {
    let err = Mediator::builder()
        .handler(GetOrderHandler)
        .expect::<GetOrder>()
        .expect::<PlaceOrder>()
        .expect::<Unhandled>()
        .expect::<Unhandled>() // declared twice: reported once
        .build()
        .unwrap_err();
    let missing: Vec<&str> = err
        .problems()
        .iter()
        .map(|p| match p {
            BuildProblem::MissingHandler { request } => *request,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        missing,
        [
            std::any::type_name::<PlaceOrder>(),
            std::any::type_name::<Unhandled>()
        ]
    );
    let text = err.to_string();
    assert!(
        text.contains("send::PlaceOrder") && text.contains("send::Unhandled"),
        "{text}"
    );
}

#[test]
fn build_succeeds_when_every_expected_request_type_has_a_handler() {
    let mediator = Mediator::builder()
        .handler(GetOrderHandler)
        .expect::<GetOrder>()
        .build()
        .unwrap();
    assert!(format!("{mediator:?}").contains("GetOrder"));
}

#[tokio::test]
async fn the_handler_receives_the_callers_token_through_every_behaviour() {
    // Behaviours that do not narrow: the handler's token is the caller's, so it has the
    // caller's deadline and sees the caller's own cancellation (the same firing:
    // `Cancelled` compares reasons by identity).
    let seen_deadline = Arc::new(Mutex::new(None));
    let slot = seen_deadline.clone();
    let mediator = Mediator::builder()
        .layer(LoggingLayer::new())
        .layer(ValidateLayer::new())
        .layer(RetryLayer::new(3))
        .handler(handler_fn(move |_: GetOrder, token: CancellationToken| {
            *slot.lock().unwrap() = Some(token.deadline());
            async move { Err::<String, _>(Cancelled::new(token.cancelled().await)) }
        }))
        .build()
        .unwrap();

    let caller = CancellationSource::with_timeout(Duration::from_secs(3600));
    let send = tokio::spawn(mediator.send(GetOrder { id: 1 }, &caller.token()));
    tokio::task::yield_now().await;
    caller.cancel_with(Reason::disconnected().with_message("client left"));

    let err = support::within(send).await.unwrap().unwrap_err();
    assert_eq!(
        *seen_deadline.lock().unwrap(),
        Some(caller.token().deadline())
    );
    let cancelled = err.as_cancelled().expect("a cancellation");
    assert_eq!(cancelled.kind(), ReasonKind::Disconnected);
    assert_eq!(cancelled.reason().message(), Some("client left"));
    assert_eq!(*cancelled, Cancelled::new(caller.token().reason().unwrap()));
    assert!(gracefully::is_cancellation(&err));
}

#[tokio::test]
async fn an_already_cancelled_token_answers_cancelled_without_starting_the_handler() {
    let started = Arc::new(AtomicBool::new(false));
    let seen = started.clone();
    let mediator = Mediator::builder()
        .handler(handler_fn(move |_: GetOrder, _t| {
            seen.store(true, Ordering::SeqCst);
            async { Ok::<_, BoxError>(String::new()) }
        }))
        .build()
        .unwrap();
    let caller = CancellationSource::new();
    caller.cancel_with(Reason::shutdown());
    let err = mediator
        .send(GetOrder { id: 1 }, &caller.token())
        .await
        .unwrap_err();
    assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Shutdown);
    assert!(!started.load(Ordering::SeqCst));
}

#[derive(Debug)]
struct QueryFailed(Cancelled);
impl std::fmt::Display for QueryFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("query failed")
    }
}
impl std::error::Error for QueryFailed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[tokio::test]
async fn a_handler_error_that_wraps_a_cancellation_is_a_cancellation_and_others_are_failures() {
    let mediator = Mediator::builder()
        .handler(handler_fn(|request: GetOrder, _t| async move {
            match request.id {
                1 => Err::<String, BoxError>(Box::new(QueryFailed(Cancelled::new(
                    Reason::deadline_exceeded(),
                )))),
                _ => Err("disk full".into()),
            }
        }))
        .build()
        .unwrap();
    let wrapped = mediator
        .send(GetOrder { id: 1 }, &never())
        .await
        .unwrap_err();
    assert_eq!(
        wrapped.as_cancelled().unwrap().kind(),
        ReasonKind::DeadlineExceeded
    );

    let failed = mediator
        .send(GetOrder { id: 2 }, &never())
        .await
        .unwrap_err();
    assert!(matches!(failed, Error::Failed(_)));
    assert_eq!(failed.to_string(), "disk full");
    assert!(!gracefully::is_cancellation(&failed));
}

#[tokio::test]
async fn the_send_future_is_static_and_send_so_it_can_be_spawned() {
    let mediator = Mediator::builder()
        .handler(GetOrderHandler)
        .build()
        .unwrap();
    let token = CancellationSource::new();
    let future = mediator.send(GetOrder { id: 3 }, &token.token());
    drop(mediator); // the future owns what it needs
    drop(token);
    assert_eq!(tokio::spawn(future).await.unwrap().unwrap(), "order 3");
}
