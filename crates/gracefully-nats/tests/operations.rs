//! Each message is an operation (`OperationKind::Message`) under the consumer's service,
//! named `stream/consumer`, ending completed or cancelled with the token's reason; what
//! the handler begins runs under it. Against a real NATS server (`NATS_URL`).

mod support;

use std::time::Duration;

use bytes::Bytes;
use gracefully::operation::{Operation, OperationKind};
use gracefully::{CancellationToken, Reason, ReasonKind};
use gracefully_host::Operations;
use gracefully_nats::{Consumer, Message};
use gracefully_test::{RunningHost, eventually, test_host};
use support::{TestStream, nats_url, trace};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs NATS: set NATS_URL"]
async fn each_message_is_an_operation_under_the_consumer_ending_with_the_tokens_reason() {
    trace();
    let s = TestStream::create("OPS").await;
    s.durable("c", Duration::from_secs(30)).await;
    s.publish_numbers(0..2).await;

    let consumer = Consumer::builder(nats_url())
        .stream(&s.name)
        .consumer("c")
        .concurrency(2)
        .prefetch(0)
        .handler(|msg: Message<Bytes>, token: CancellationToken| async move {
            // Begun inside the handler: a child of the message's operation.
            Operation::begin(OperationKind::Query, "inside", None).complete();
            if msg.id() == "m-0" {
                return Ok(());
            }
            token
                .run_until_cancelled(tokio::time::sleep(Duration::from_secs(60)))
                .await
        })
        .build()
        .unwrap();
    let operations = Operations::new();
    let host = test_host()
        .shutdown_timeout(Duration::from_secs(3))
        .cancel_grace(Duration::from_secs(2))
        .operations(operations.clone())
        .service("c", consumer)
        .build()
        .unwrap();
    let host = RunningHost::start(host).await.unwrap();
    let name = format!("{}/c", s.name);
    eventually(
        "one message handled, one in flight",
        Duration::from_secs(10),
        async || {
            let snapshot = operations.snapshot();
            snapshot.live.iter().any(|o| o.name == name)
                && snapshot.finished.iter().any(|f| f.operation.name == name)
        },
    )
    .await;
    let report = host.stop(Reason::shutdown()).await.unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");

    let snapshot = operations.snapshot();
    let service = snapshot
        .finished
        .iter()
        .find(|f| f.operation.kind == OperationKind::Service && f.operation.name == "c")
        .expect("the consumer's service operation");
    let messages: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Message)
        .collect();
    assert_eq!(messages.len(), 2, "{:?}", snapshot.finished);
    for message in &messages {
        assert_eq!(message.operation.name, name);
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
