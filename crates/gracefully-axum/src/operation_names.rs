//! [`OperationNameLayer`]: names each request's operation after the route it matched.

use std::task::{Context, Poll};

use axum::extract::MatchedPath;
use gracefully::operation::OperationScope;
use tower::{Layer, Service};

/// Names each request's operation `METHOD /route/{param}` — the route it matched rather
/// than its path — so the operations page groups alike requests and the metrics'
/// `name` label stays bounded (`/orders/{id}`, not one label per order).
///
/// Add it with [`Router::layer`](axum::Router::layer) *after* the routes (axum applies
/// such layers to each route, where the matched path is known). Without it a request's
/// operation is named by its path. It does nothing when no operation is recorded.
///
/// ```
/// use axum::{Router, routing::get};
/// use gracefully_axum::OperationNameLayer;
///
/// let app: Router = Router::new()
///     .route("/orders/{id}", get(|| async { "order" }))
///     .layer(OperationNameLayer::new()); // operations named `GET /orders/{id}`
/// ```
///
/// *Anchors:* ASP.NET Core names its request activity after the endpoint's route template
/// (`http.route`); OpenTelemetry's `http.route` attribute.
#[derive(Debug, Clone, Copy, Default)]
pub struct OperationNameLayer {
    _private: (),
}

impl OperationNameLayer {
    /// The layer.
    pub fn new() -> Self {
        OperationNameLayer { _private: () }
    }
}

impl<S> Layer<S> for OperationNameLayer {
    type Service = OperationName<S>;
    fn layer(&self, inner: S) -> OperationName<S> {
        OperationName { inner }
    }
}

/// The service [`OperationNameLayer`] makes.
#[derive(Debug, Clone)]
pub struct OperationName<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for OperationName<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> S::Future {
        // The request's scope is current while the server polls its future, which is when
        // `call` runs; its parent is the request's operation.
        if let Some(route) = request.extensions().get::<MatchedPath>()
            && let Some(scope) = OperationScope::current()
        {
            let (method, route) = (request.method().as_str(), route.as_str());
            // On the stack when it fits (most routes): no allocation per request.
            let mut name = arrayvec::ArrayString::<128>::new();
            if name.try_push_str(method).is_ok()
                && name.try_push(' ').is_ok()
                && name.try_push_str(route).is_ok()
            {
                scope.rename_parent(&name);
            } else {
                scope.rename_parent(&format!("{method} {route}"));
            }
        }
        self.inner.call(request)
    }
}
