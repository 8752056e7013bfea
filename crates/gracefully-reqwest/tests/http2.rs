//! HTTP/2: a cancelled call resets its stream, so the server drops the handler, while the
//! connection, shared with other calls, stays open.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use gracefully::{CancellationSource, ReasonKind};
use gracefully_reqwest::RequestBuilderExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::PATIENCE;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Sends on its channel when dropped: the server's handler future holds one.
struct Dropped(mpsc::UnboundedSender<&'static str>);

impl Drop for Dropped {
    fn drop(&mut self) {
        let _ = self.0.send("handler dropped");
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("the server reported in time")
        .expect("the server is running")
}

#[tokio::test]
async fn a_cancelled_http2_call_resets_its_stream_and_the_server_drops_the_handler() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (connections_tx, mut connections) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = connections_tx.send(());
            let events = events_tx.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let events = events.clone();
                async move {
                    if request.uri().path() == "/slow" {
                        let _guard = Dropped(events.clone());
                        let _ = events.send("handler started");
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    let source = CancellationSource::new();
    let call = tokio::spawn({
        let client = client.clone();
        let token = source.token();
        async move {
            client
                .get(format!("http://{addr}/slow"))
                .with_token(&token)
                .send()
                .await
        }
    });
    assert_eq!(next(&mut events).await, "handler started");
    source.cancel();
    assert_eq!(next(&mut events).await, "handler dropped");
    let err = call.await.unwrap().expect_err("cancelled");
    assert_eq!(err.as_cancelled().unwrap().kind(), ReasonKind::Requested);

    // The connection was not closed: the next call reuses it.
    let response = client
        .get(format!("http://{addr}/fast"))
        .with_token(&CancellationSource::new().token())
        .send()
        .await
        .expect("a response");
    assert_eq!(response.text().await.unwrap(), "ok");
    connections.recv().await.unwrap();
    assert!(
        connections.try_recv().is_err(),
        "a second connection was opened"
    );
}
