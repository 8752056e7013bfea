//! What several test files share: a behaviour that records the order it runs in, and a
//! tracing subscriber that captures events.

#![allow(dead_code)] // each test binary uses a part

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use gracefully_mediator::{Call, Error, Request};
use tower::{Layer, Service};
use tracing::Level;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// `future`, or a panic after 30 s: a test whose handler waits for a cancellation that a
/// regression never delivers fails instead of hanging.
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(30), future)
        .await
        .expect("not done within 30 s: the cancellation never arrived?")
}

// ------------------------------------------------------------------ ordering recorder

/// A shared log of what ran, in order.
#[derive(Clone, Default)]
pub struct Trail(Arc<Mutex<Vec<String>>>);

impl Trail {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    pub fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// A behaviour that writes `"<name> in"` to the trail when a call enters it and
/// `"<name> out"` when the inner service's answer passes back through it.
#[derive(Clone)]
pub struct RecordLayer {
    pub name: &'static str,
    pub trail: Trail,
}

impl<S> Layer<S> for RecordLayer {
    type Service = Record<S>;
    fn layer(&self, inner: S) -> Record<S> {
        Record {
            inner,
            name: self.name,
            trail: self.trail.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Record<S> {
    inner: S,
    name: &'static str,
    trail: Trail,
}

impl<S, R> Service<Call<R>> for Record<S>
where
    S: Service<Call<R>, Response = R::Response, Error = Error>,
    S::Future: Send + 'static,
    R: Request,
{
    type Response = R::Response;
    type Error = Error;
    type Future = Pin<Box<dyn Future<Output = Result<R::Response, Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        self.trail.push(format!("{} in", self.name));
        let fut = self.inner.call(call);
        let (name, trail) = (self.name, self.trail.clone());
        Box::pin(async move {
            let result = fut.await;
            trail.push(format!("{name} out"));
            result
        })
    }
}

// -------------------------------------------------------------------- event capture

/// One captured tracing event: its level, message, and fields as text.
#[derive(Clone, Debug)]
pub struct Captured {
    pub level: Level,
    pub message: String,
    pub fields: Vec<(String, String)>,
}

impl Captured {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<Captured>>>);

impl Events {
    pub fn all(&self) -> Vec<Captured> {
        self.0.lock().unwrap().clone()
    }

    pub fn with_message(&self, message: &str) -> Vec<Captured> {
        self.all()
            .into_iter()
            .filter(|e| e.message == message)
            .collect()
    }
}

struct CaptureLayer(Events);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CaptureLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: LayerContext<'_, S>) {
        struct Fields(Vec<(String, String)>, String);
        impl Visit for Fields {
            fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.1 = format!("{value:?}");
                } else {
                    self.0.push((field.name().to_owned(), format!("{value:?}")));
                }
            }
            fn record_str(&mut self, field: &Field, value: &str) {
                if field.name() == "message" {
                    self.1 = value.to_owned();
                } else {
                    self.0.push((field.name().to_owned(), value.to_owned()));
                }
            }
        }
        let mut fields = Fields(Vec::new(), String::new());
        event.record(&mut fields);
        self.0.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            message: fields.1,
            fields: fields.0,
        });
    }
}

/// A subscriber recording every event at every level, and the events it records. Install
/// it with `tracing::subscriber::set_default` on the thread that polls the futures (a
/// current-thread runtime).
pub fn capture() -> (impl tracing::Subscriber + Send + Sync, Events) {
    let events = Events::default();
    let subscriber = tracing_subscriber::registry().with(CaptureLayer(events.clone()));
    (subscriber, events)
}
