//! Publishing: every handler runs, sequentially or concurrently, each with a child of the
//! publisher's token; failures and cancellations aggregated apart.

mod support;

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use gracefully::{CancellationSource, CancellationToken, Cancelled, Reason, ReasonKind};
use gracefully_mediator::{
    BoxError, Mediator, Notification, NotificationHandler, Panicked, PublishStrategy,
    notification_fn,
};
use support::Trail;

struct OrderPlaced {
    id: u64,
}
impl Notification for OrderPlaced {}

fn never() -> CancellationToken {
    CancellationToken::never()
}

/// A handler that records its start and end, yielding in between.
fn recording(name: &'static str, trail: &Trail) -> impl NotificationHandler<OrderPlaced> {
    let trail = trail.clone();
    notification_fn(name, move |event: &OrderPlaced, _token| {
        let (trail, id) = (trail.clone(), event.id);
        async move {
            trail.push(format!("{name} start {id}"));
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            trail.push(format!("{name} end"));
            Ok::<_, BoxError>(())
        }
    })
}

#[tokio::test]
async fn publish_runs_every_subscribed_handler_in_subscription_order() {
    let trail = Trail::default();
    let mediator = Mediator::builder()
        .subscribe(recording("a", &trail))
        .subscribe(recording("b", &trail))
        .subscribe(recording("c", &trail))
        .build()
        .unwrap();
    mediator
        .publish(OrderPlaced { id: 9 }, &never())
        .await
        .unwrap();
    // Sequential (the default): one after another, no overlap.
    assert_eq!(
        trail.take(),
        [
            "a start 9",
            "a end",
            "b start 9",
            "b end",
            "c start 9",
            "c end"
        ]
    );
}

#[tokio::test]
async fn concurrent_publish_runs_the_handlers_at_once_so_their_waits_overlap() {
    let trail = Trail::default();
    let mediator = Mediator::builder()
        .subscribe(recording("a", &trail))
        .subscribe(recording("b", &trail))
        .publish_strategy(PublishStrategy::Concurrent)
        .build()
        .unwrap();
    mediator
        .publish(OrderPlaced { id: 1 }, &never())
        .await
        .unwrap();
    let trail = trail.take();
    // Both started before either ended.
    assert_eq!(&trail[..2], ["a start 1", "b start 1"], "{trail:?}");
    assert_eq!(trail.len(), 4);

    // Handlers that need each other to be running: only a concurrent publish finishes.
    let barrier = Arc::new(tokio::sync::Barrier::new(3));
    let waiter = |name: &'static str| {
        let barrier = barrier.clone();
        notification_fn(name, move |_: &OrderPlaced, _t| {
            let barrier = barrier.clone();
            async move {
                barrier.wait().await;
                Ok::<_, BoxError>(())
            }
        })
    };
    let mediator = Mediator::builder()
        .subscribe(waiter("x"))
        .subscribe(waiter("y"))
        .subscribe(waiter("z"))
        .build()
        .unwrap();
    let token = never();
    let concurrent =
        mediator.publish_with(OrderPlaced { id: 2 }, &token, PublishStrategy::Concurrent);
    tokio::time::timeout(Duration::from_secs(30), concurrent)
        .await
        .expect("all three ran at once")
        .unwrap();
}

#[tokio::test]
async fn publish_runs_every_handler_and_aggregates_failures_and_cancellations_apart() {
    for strategy in [PublishStrategy::Sequential, PublishStrategy::Concurrent] {
        let trail = Trail::default();
        let mediator = Mediator::builder()
            .subscribe(notification_fn("mail", |_: &OrderPlaced, _t| async {
                Err::<(), _>("smtp down")
            }))
            .subscribe(recording("audit", &trail))
            .subscribe(notification_fn("search", |_: &OrderPlaced, _t| async {
                Err::<(), _>(Cancelled::new(
                    Reason::deadline_exceeded().with_message("index slow"),
                ))
            }))
            .subscribe(notification_fn("stock", |_: &OrderPlaced, _t| async {
                Err::<(), _>("warehouse offline")
            }))
            .build()
            .unwrap();
        let err = mediator
            .publish_with(OrderPlaced { id: 4 }, &never(), strategy)
            .await
            .unwrap_err();

        assert_eq!(err.handlers(), 4, "{strategy:?}");
        assert_eq!(err.failed(), 2);
        assert_eq!(err.cancelled(), 1);
        let failed: Vec<_> = err
            .failures()
            .map(|f| (f.handler(), f.error().to_string()))
            .collect();
        assert_eq!(
            failed,
            [
                ("mail", "smtp down".to_owned()),
                ("stock", "warehouse offline".to_owned())
            ]
        );
        let cancelled: Vec<_> = err
            .cancellations()
            .map(|c| (c.handler(), c.cancelled().kind()))
            .collect();
        assert_eq!(cancelled, [("search", ReasonKind::DeadlineExceeded)]);
        // The handler between the failures still ran to its end.
        assert_eq!(trail.take(), ["audit start 4", "audit end"]);

        let text = err.to_string();
        assert!(
            text.contains("2 of 4 handlers failed, 1 cancelled"),
            "{text}"
        );
        assert!(text.contains("`mail` failed: smtp down"), "{text}");
        assert!(
            text.contains("`search` cancelled: deadline exceeded: index slow"),
            "{text}"
        );
        // A genuine failure is among them: not a cancellation; the source is the first one.
        assert!(!gracefully::is_cancellation(&err));
        assert_eq!(err.source().unwrap().to_string(), "smtp down");
    }
}

#[tokio::test]
async fn a_publish_where_handlers_were_only_cancelled_is_a_cancellation() {
    let mediator = Mediator::builder()
        .subscribe(notification_fn(
            "a",
            |_: &OrderPlaced, token: CancellationToken| async move { token.check() },
        ))
        .subscribe(notification_fn("b", |_: &OrderPlaced, _t| async {
            Ok::<_, BoxError>(())
        }))
        .build()
        .unwrap();
    let publisher = CancellationSource::new();
    publisher.cancel_with(Reason::shutdown());
    let err = mediator
        .publish(OrderPlaced { id: 1 }, &publisher.token())
        .await
        .unwrap_err();
    assert_eq!((err.failed(), err.cancelled()), (0, 2));
    assert!(gracefully::is_cancellation(&err));
}

#[tokio::test]
async fn a_panicking_handler_is_a_failure_and_the_other_handlers_still_run() {
    for strategy in [PublishStrategy::Sequential, PublishStrategy::Concurrent] {
        let trail = Trail::default();
        let mediator = Mediator::builder()
            .subscribe(notification_fn("boom", |event: &OrderPlaced, _t| {
                let id = event.id;
                async move {
                    if id > 0 {
                        panic!("order {id} exploded");
                    }
                    Ok::<_, BoxError>(())
                }
            }))
            .subscribe(recording("after", &trail))
            .build()
            .unwrap();
        let err = mediator
            .publish_with(OrderPlaced { id: 5 }, &never(), strategy)
            .await
            .unwrap_err();
        let failure = err.failures().next().unwrap();
        assert_eq!(failure.handler(), "boom");
        let panicked = failure
            .error()
            .downcast_ref::<Panicked>()
            .expect("a Panicked");
        assert_eq!(panicked.message(), "order 5 exploded");
        assert_eq!(trail.take(), ["after start 5", "after end"]);
    }
}

#[tokio::test]
async fn each_handler_gets_a_child_of_the_publishers_token_that_fires_with_it() {
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let waiting = |name: &'static str| {
        let tokens = tokens.clone();
        notification_fn(name, move |_: &OrderPlaced, token: CancellationToken| {
            tokens.lock().unwrap().push(token.clone());
            async move { Err::<(), _>(Cancelled::new(token.cancelled().await)) }
        })
    };
    let mediator = Mediator::builder()
        .subscribe(waiting("a"))
        .subscribe(waiting("b"))
        .publish_strategy(PublishStrategy::Concurrent)
        .build()
        .unwrap();
    let publisher = CancellationSource::with_timeout(Duration::from_secs(3600));
    let mediator2 = mediator.clone();
    let token = publisher.token();
    let publish =
        tokio::spawn(async move { mediator2.publish(OrderPlaced { id: 1 }, &token).await });
    while tokens.lock().unwrap().len() < 2 {
        tokio::task::yield_now().await;
    }
    {
        let tokens = tokens.lock().unwrap();
        for token in tokens.iter() {
            // A descendant: it carries the publisher's deadline.
            assert_eq!(token.deadline(), publisher.token().deadline());
        }
    }
    publisher.cancel_with(Reason::requested().with_message("stop"));
    let err = support::within(publish).await.unwrap().unwrap_err();
    assert_eq!(err.cancelled(), 2);
    for cancelled in err.cancellations() {
        assert_eq!(
            *cancelled.cancelled(),
            Cancelled::new(publisher.token().reason().unwrap())
        );
    }
}

#[tokio::test]
async fn a_sequential_publish_starts_no_handler_once_the_publishers_token_fired() {
    let trail = Trail::default();
    let publisher = Arc::new(CancellationSource::new());
    let canceller = publisher.clone();
    let mediator = Mediator::builder()
        .subscribe(notification_fn("first", move |_: &OrderPlaced, _t| {
            // The first handler's work makes the publisher give up (say, its client left).
            canceller.cancel_with(Reason::disconnected());
            async { Ok::<_, BoxError>(()) }
        }))
        .subscribe(recording("second", &trail))
        .subscribe(recording("third", &trail))
        .build()
        .unwrap();
    let err = mediator
        .publish(OrderPlaced { id: 1 }, &publisher.token())
        .await
        .unwrap_err();
    assert!(
        trail.take().is_empty(),
        "no handler started after the token fired"
    );
    assert_eq!((err.failed(), err.cancelled()), (0, 2));
    let names: Vec<_> = err
        .cancellations()
        .map(|c| c.handler().to_owned())
        .collect();
    assert_eq!(names, ["second", "third"]);
    assert!(
        err.cancellations()
            .all(|c| c.cancelled().kind() == ReasonKind::Disconnected)
    );
}

#[tokio::test]
async fn publishing_a_notification_without_subscribers_is_ok() {
    let mediator = Mediator::builder().build().unwrap();
    mediator
        .publish(OrderPlaced { id: 1 }, &never())
        .await
        .unwrap();
}

struct SendConfirmation;
impl NotificationHandler<OrderPlaced> for SendConfirmation {
    async fn handle(&self, _: &OrderPlaced, _: CancellationToken) -> Result<(), BoxError> {
        Err("mailbox full".into())
    }
}

#[tokio::test]
async fn a_handler_type_is_named_by_its_type_without_the_module_path() {
    let mediator = Mediator::builder()
        .subscribe(SendConfirmation)
        .build()
        .unwrap();
    let err = mediator
        .publish(OrderPlaced { id: 1 }, &never())
        .await
        .unwrap_err();
    assert_eq!(err.failures().next().unwrap().handler(), "SendConfirmation");
}

#[tokio::test]
async fn publish_detached_without_a_host_is_an_error_naming_the_notification() {
    // No host runs in this test binary, so `Lifetime::current()` is `None` too.
    let mediator = Mediator::builder()
        .subscribe(SendConfirmation)
        .build()
        .unwrap();
    let err = mediator
        .publish_detached(OrderPlaced { id: 1 })
        .unwrap_err();
    assert_eq!(
        err.notification_type(),
        std::any::type_name::<OrderPlaced>()
    );
    assert!(
        err.to_string().contains("MediatorBuilder::lifetime"),
        "{err}"
    );
}
