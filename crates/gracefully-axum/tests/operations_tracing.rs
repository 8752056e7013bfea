//! Each operation is a `tracing` span that records how it ended; a cancellation is logged
//! at DEBUG with its reason, never as an error. (A binary of its own: the subscriber is
//! thread-local and the test runs on one thread.)

mod support;

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use gracefully::Reason;
use support::admin::{eventually, slow_app, start};
use support::{SOON, send_raw};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};

#[derive(Default)]
struct Fields(FieldMap);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

/// A span's or an event's fields, by name, as text.
type FieldMap = HashMap<String, String>;

/// Every `operation` span's fields (as last recorded), and every event's level and fields.
#[derive(Clone, Default)]
struct Seen {
    spans: Arc<Mutex<HashMap<u64, FieldMap>>>,
    events: Arc<Mutex<Vec<(Level, FieldMap)>>>,
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>>
    tracing_subscriber::Layer<S> for Seen
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "operation" {
            let mut fields = Fields::default();
            attrs.record(&mut fields);
            self.spans.lock().unwrap().insert(id.into_u64(), fields.0);
        }
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(span) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            let mut fields = Fields::default();
            values.record(&mut fields);
            span.extend(fields.0);
        }
    }
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields.0));
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_operation_span_records_its_reason_and_a_cancellation_is_logged_at_debug() {
    let seen = Seen::default();
    let subscriber = tracing_subscriber::registry().with(seen.clone());
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = start(slow_app()).await;
    let client = send_raw(server.addr, b"GET /slow/3 HTTP/1.1\r\nhost: t\r\n\r\n").await;
    let ops = server.operations.clone();
    eventually("the request to run", || {
        ops.snapshot()
            .live
            .iter()
            .any(|o| o.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;
    drop(client);
    eventually("the request to end", || {
        ops.snapshot()
            .finished
            .iter()
            .any(|f| f.operation.name == "GET /slow/{id}")
            .then_some(())
    })
    .await;

    let spans = seen.spans.lock().unwrap().clone();
    let request = spans
        .values()
        .find(|f| f.get("name").map(String::as_str) == Some("GET /slow/{id}"))
        .expect("a span for the request, renamed to its route");
    assert_eq!(request["kind"], "request");
    assert_eq!(request["outcome"], "cancelled");
    assert!(
        request["reason"].starts_with("client disconnected"),
        "{request:?}"
    );
    assert!(
        request["origin"].contains("request_future.rs"),
        "{request:?}"
    );

    let events = seen.events.lock().unwrap().clone();
    let logged = events
        .iter()
        .find(|(_, f)| {
            f.get("message")
                .is_some_and(|m| m.contains("operation cancelled"))
                && f.get("name").is_some_and(|n| n == "GET /slow/{id}")
        })
        .expect("the cancellation is logged");
    assert_eq!(logged.0, Level::DEBUG);
    assert!(
        events.iter().all(|(level, _)| *level != Level::ERROR),
        "no cancellation is an error: {events:?}"
    );

    server.lifetime.stop(Reason::shutdown());
    let report = tokio::time::timeout(SOON, server.run)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(report.exit_code(), 0, "{report}");
}
