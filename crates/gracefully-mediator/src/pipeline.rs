//! The pipeline of one request type: the handler as the innermost tower service
//! ([`HandlerService`]), the behaviours' layers around it, and the type-erased form the
//! mediator stores per request type ([`Pipeline`], keyed in a [`TypeMap`]).

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tower::{Service, ServiceExt};

use crate::call::Call;
use crate::error::Error;
use crate::request::{Request, RequestHandler};

/// What the behaviours' layers must make of a handler: a tower service of [`Call`]s that
/// answers with the request's response or an [`Error`], can be cloned (one clone per
/// `send`, as axum clones a route per request) and shared across threads.
///
/// Every `Service<Call<R>, Response = R::Response, Error = Error>` that is `Clone + Send +
/// Sync + 'static` with a `Send` future is one: it is only a name for that bound.
pub trait PipelineService<R: Request>:
    Service<Call<R>, Response = R::Response, Error = Error, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<R, S> PipelineService<R> for S
where
    R: Request,
    S: Service<Call<R>, Response = R::Response, Error = Error, Future: Send + 'static>
        + Clone
        + Send
        + Sync
        + 'static,
{
}

/// The innermost service of a pipeline: hands the request and the call's token to the
/// handler, and classifies its error ([`Error::from_handler`]).
///
/// Always ready. Cloning it clones an `Arc` of the handler.
pub struct HandlerService<R, H> {
    handler: Arc<H>,
    _request: PhantomData<fn(R)>,
}

impl<R, H> HandlerService<R, H> {
    pub(crate) fn new(handler: H) -> Self {
        HandlerService {
            handler: Arc::new(handler),
            _request: PhantomData,
        }
    }
}

impl<R, H> Clone for HandlerService<R, H> {
    fn clone(&self) -> Self {
        HandlerService {
            handler: Arc::clone(&self.handler),
            _request: PhantomData,
        }
    }
}

impl<R, H> fmt::Debug for HandlerService<R, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerService")
            .field("request", &std::any::type_name::<R>())
            .field("handler", &std::any::type_name::<H>())
            .finish()
    }
}

impl<R, H> Service<Call<R>> for HandlerService<R, H>
where
    R: Request,
    H: RequestHandler<R>,
{
    type Response = R::Response;
    type Error = Error;
    // Boxed: the handler's future is an `impl Future` of its trait method, which has no
    // name a tower service could give as its `Future` type.
    type Future = Pin<Box<dyn Future<Output = Result<R::Response, Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call<R>) -> Self::Future {
        let handler = Arc::clone(&self.handler);
        let (request, token) = call.into_parts();
        Box::pin(async move {
            handler
                .handle(request, token)
                .await
                .map_err(Error::from_handler)
        })
    }
}

/// A request type's whole pipeline, type-erased, as the mediator stores it.
pub(crate) trait Pipeline<R: Request>: Send + Sync + 'static {
    /// Runs `call` through a clone of the pipeline (readiness first, as tower requires).
    fn dispatch(&self, call: Call<R>) -> BoxFuture<'static, Result<R::Response, Error>>;
}

/// Erases a [`PipelineService`] into a [`Pipeline`].
pub(crate) struct Erased<S>(pub(crate) S);

impl<R, S> Pipeline<R> for Erased<S>
where
    R: Request,
    S: PipelineService<R>,
{
    fn dispatch(&self, call: Call<R>) -> BoxFuture<'static, Result<R::Response, Error>> {
        // One allocation holds the service's clone and its future together.
        Box::pin(self.0.clone().oneshot(call))
    }
}

/// A shared, type-erased pipeline; what the registry stores (inside a `Box<dyn Any>`) for
/// request type `R`.
pub(crate) type SharedPipeline<R> = Arc<dyn Pipeline<R>>;

/// A map keyed by `TypeId`, values type-erased.
pub(crate) type TypeMap = HashMap<TypeId, Box<dyn Any + Send + Sync>, BuildHasherDefault<IdHasher>>;

/// A `TypeId` is already a hash: pass it through instead of hashing it again with SipHash
/// (the `http` crate's `Extensions` does the same). Bytes written another way are folded
/// in, so the hasher is correct for any key, only fastest for `TypeId`.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}
