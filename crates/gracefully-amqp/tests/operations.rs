//! Each message is an operation (`OperationKind::Message`) under the consumer's service,
//! named by its queue, ending completed or cancelled with the token's reason; what the
//! handler begins runs under it. Against a real RabbitMQ (`AMQP_URL`).

mod support;

use std::time::Duration;

use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_amqp::{Bytes, Consumer, Message};
use gracefully_host::Operations;
use gracefully_test::{RunningHost, eventually, test_host};
use support::{Broker, amqp_url, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs RabbitMQ: set AMQP_URL"]
async fn each_message_is_an_operation_under_the_consumer_ending_with_the_tokens_reason() {
    let broker = Broker::new().await;
    let queue = unique("operations");
    broker.queue(&queue).await;
    broker.forget_derived(&queue, &[1000, 2000, 4000, 8000]);
    broker.publish(&queue, "m0", b"{}").await;
    broker.publish(&queue, "m1", b"{}").await;

    let consumer = Consumer::builder(amqp_url(), &queue)
        .concurrency(2)
        .build(
            |message: Message<Bytes>, token: CancellationToken| async move {
                // Begun inside the handler: a child of the message's operation.
                Operation::begin(OperationKind::Query, "inside", None).complete();
                if message.id() == Some("m0") {
                    return Ok(());
                }
                token
                    .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                    .await
            },
        )
        .unwrap();
    let operations = Operations::new();
    let host = test_host()
        .shutdown_timeout(Duration::from_secs(3))
        .cancel_grace(Duration::from_secs(2))
        .operations(operations.clone())
        .service("orders", consumer)
        .build()
        .unwrap();
    let running = RunningHost::start(host).await.unwrap();
    eventually(
        "one message handled, one in flight",
        Duration::from_secs(20),
        async || {
            let snapshot = operations.snapshot();
            snapshot.live.iter().any(|o| o.name == queue)
                && snapshot.finished.iter().any(|f| f.operation.name == queue)
        },
    )
    .await;
    let report = running.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");

    let snapshot = operations.snapshot();
    let service = snapshot
        .finished
        .iter()
        .find(|f| f.operation.kind == OperationKind::Service && f.operation.name == "orders")
        .expect("the consumer's service operation");
    let messages: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Message)
        .collect();
    assert_eq!(messages.len(), 2, "{:?}", snapshot.finished);
    for message in &messages {
        assert_eq!(message.operation.name, queue);
        assert_eq!(message.operation.parent, Some(service.operation.id));
        let inside = snapshot
            .finished
            .iter()
            .filter(|f| f.operation.name == "inside")
            .filter(|f| f.operation.parent == Some(message.operation.id))
            .count();
        assert_eq!(inside, 1, "the handler's work runs under its message");
    }
    let (cancelled, handled) = (messages[0], messages[1]); // newest first
    assert_eq!(handled.outcome.as_str(), "completed");
    let reason = cancelled
        .reason()
        .expect("cancelled with the token's reason");
    assert_eq!(reason.kind(), ReasonKind::Shutdown);
}
