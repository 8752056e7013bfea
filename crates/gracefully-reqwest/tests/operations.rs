//! Outbound calls as operations: under the operation that makes them, named by method and
//! origin, ending with the token's reason when cancelled.

mod support;

use std::time::Duration;

use gracefully::operation::OperationKind;
use gracefully::{CancellationSource, Reason, ReasonKind};
use gracefully_host::Operations;
use gracefully_reqwest::RequestBuilderExt;
use support::{Raw, RawServer, client};

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn an_outbound_call_registers_under_its_caller_and_ends_with_the_tokens_reason() {
    let ok = RawServer::start(|_| Raw::Reply(OK)).await;
    let stall = RawServer::start(|_| Raw::Stall).await;
    let operations = Operations::new();
    let request = operations
        .scope()
        .begin(OperationKind::Request, "GET /checkout", None);
    let source = CancellationSource::with_timeout(Duration::from_secs(60));
    let token = source.token();
    let (ok_url, stall_url) = (ok.url("/price"), stall.url("/stock"));
    request
        .scoped(async {
            let response = client()
                .get(&ok_url)
                .with_token(&token)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let cancel = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                source.cancel_with(Reason::requested().with_message("checkout abandoned"));
            };
            let (result, ()) =
                tokio::join!(client().get(&stall_url).with_token(&token).send(), cancel);
            assert!(result.unwrap_err().as_cancelled().is_some());
        })
        .await;

    let snapshot = operations.snapshot();
    let calls: Vec<_> = snapshot
        .finished
        .iter()
        .filter(|f| f.operation.kind == OperationKind::Outbound)
        .collect();
    assert_eq!(calls.len(), 2, "{:?}", snapshot.finished);
    let (stalled, priced) = (calls[0], calls[1]); // newest first
    assert_eq!(priced.operation.name, format!("GET http://{}", ok.addr));
    assert_eq!(priced.outcome.as_str(), "completed");
    assert_eq!(priced.operation.parent, request.id());
    assert!(priced.operation.deadline.is_some(), "the token's deadline");
    let reason = stalled.reason().expect("cancelled");
    assert_eq!(reason.kind(), ReasonKind::Requested);
    assert_eq!(reason.message(), Some("checkout abandoned"));
    assert_eq!(stalled.operation.parent, request.id());
    request.complete();
}
