//! [`ServiceContext`]: what a service gets besides its stopping token.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use gracefully::CancellationToken;

use crate::lifetime::Lifetime;
use crate::outcome::TaskOutput;

/// What a service gets besides its stopping token: its name, the host's [`Lifetime`],
/// tracked [`spawn`](Self::spawn), and a place to record details for its row of the
/// shutdown report. Cheap to clone (one reference count).
///
/// ```
/// # use gracefully_host::{service_fn, Host};
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// let server = service_fn(|stopping, cx| async move {
///     stopping.cancelled().await;
///     // drain: close connections, let requests finish …
///     cx.count("connections closed", 12);
///     cx.count("requests finished", 340);
///     cx.detail("listener", "127.0.0.1:8080");
/// });
/// let host = Host::builder().handle_signals(false).service("http", server).build().unwrap();
/// let lifetime = host.lifetime();
/// tokio::spawn(async move {
///     lifetime.started().cancelled().await;
///     lifetime.stop(gracefully::Reason::shutdown());
/// });
/// let report = host.run().await;
/// let row = report.entry("http").unwrap();
/// assert_eq!(row.detail("requests finished"), Some("340"));
/// # }
/// ```
///
/// *Anchors:* tokio-graceful-shutdown's `SubsystemHandle`; .NET injects
/// `IHostApplicationLifetime` instead. No anchor lets a service add to a shutdown report.
#[derive(Clone)]
pub struct ServiceContext {
    inner: Arc<ContextInner>,
}

struct ContextInner {
    name: Cow<'static, str>,
    lifetime: Lifetime,
    stopping: CancellationToken,
    /// `(key, value)` in the order keys were first recorded.
    details: Mutex<Vec<(Cow<'static, str>, Detail)>>,
}

enum Detail {
    Text(String),
    Count(u64),
}

impl ServiceContext {
    pub(crate) fn new(
        name: Cow<'static, str>,
        lifetime: Lifetime,
        stopping: CancellationToken,
    ) -> ServiceContext {
        ServiceContext {
            inner: Arc::new(ContextInner {
                name,
                lifetime,
                stopping,
                details: Mutex::new(Vec::new()),
            }),
        }
    }

    /// The service's registered name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host's lifetime (phase, tokens, readiness, `stop`).
    pub fn lifetime(&self) -> &Lifetime {
        &self.inner.lifetime
    }

    /// This service's stopping token (the one `execute` receives).
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// The host's hard-stop token: the parent for this service's in-flight operations
    /// (`cx.hard_stop().child()` per request), so they are cancelled with
    /// [`ReasonKind::Shutdown`](gracefully::ReasonKind::Shutdown) when the drain budget is
    /// spent.
    pub fn hard_stop(&self) -> CancellationToken {
        self.inner.lifetime.hard_stop()
    }

    /// A tracked task: [`Lifetime::spawn`].
    pub fn spawn<F>(&self, name: impl Into<Cow<'static, str>>, task: F)
    where
        F: Future + Send + 'static,
        F::Output: TaskOutput,
    {
        self.inner.lifetime.spawn(name, task);
    }

    /// Records `value` under `key` for this service's row of the shutdown report,
    /// replacing an earlier value of that key.
    pub fn detail(&self, key: impl Into<Cow<'static, str>>, value: impl fmt::Display) {
        let key = key.into();
        let value = Detail::Text(value.to_string());
        let mut details = self.details();
        match details.iter_mut().find(|(k, _)| *k == key) {
            Some((_, slot)) => *slot = value,
            None => details.push((key, value)),
        }
    }

    /// Adds `n` to the counter `key` for this service's row of the shutdown report (a
    /// counter starts at 0). For drain steps: connections closed, requests finished …
    pub fn count(&self, key: impl Into<Cow<'static, str>>, n: u64) {
        let key = key.into();
        let mut details = self.details();
        match details.iter_mut().find(|(k, _)| *k == key) {
            Some((_, Detail::Count(c))) => *c = c.saturating_add(n),
            Some((_, slot)) => *slot = Detail::Count(n),
            None => details.push((key, Detail::Count(n))),
        }
    }

    fn details(&self) -> MutexGuard<'_, Vec<(Cow<'static, str>, Detail)>> {
        // Nothing panics while holding the lock; recover the data if it ever did.
        self.inner
            .details
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The recorded details, rendered, for the report.
    pub(crate) fn rendered_details(&self) -> Vec<(Cow<'static, str>, String)> {
        self.details()
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Detail::Text(t) => t.clone(),
                    Detail::Count(c) => c.to_string(),
                };
                (k.clone(), value)
            })
            .collect()
    }
}

impl fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceContext")
            .field("name", &self.inner.name)
            .field("stopping", &self.inner.stopping)
            .finish_non_exhaustive()
    }
}
