//! The server side: [`GrpcServer`], tonic's routes served by `gracefully-axum`'s
//! `HttpServer`, which gives every RPC its token and drains with GOAWAY.

use std::io;
use std::net::SocketAddr;

use gracefully::CancellationToken;
use gracefully_axum::{ConfigError, HttpServer, ServerReport, Shutdown};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::routes::GrpcRoutes;

/// A gRPC server for tonic services in which every RPC has a token, and which takes part in
/// the host's three-phase shutdown (the repository's `docs/architecture.md`, "The shutdown
/// contract").
///
/// It is `gracefully-axum`'s [`HttpServer`] serving tonic's [`Routes`] — not a second
/// server: a tonic service is a tower service over HTTP/2, which that server already runs
/// with per-request tokens, stream-reset detection, a zero-loss drain, a hard stop and a
/// report row. So an RPC's token ([`RequestExt::token`](crate::RequestExt::token)) fires
/// when:
///
/// | event | reason kind | answer (with [`IntoStatus`](crate::IntoStatus)) |
/// |---|---|---|
/// | the client cancels the call (`RST_STREAM`) or its connection closes | `Disconnected` | `CANCELLED` (nobody reads it) |
/// | the call's `grpc-timeout` passes (or the server's [`request_timeout`](HttpServer::request_timeout)) | `DeadlineExceeded` | `DEADLINE_EXCEEDED` |
/// | the host's drain budget is spent (hard stop) | `Shutdown` | `UNAVAILABLE` |
///
/// and the handler runs on after a client cancel, to its end (the `Cooperative`
/// [`DisconnectPolicy`](gracefully_axum::DisconnectPolicy); tonic's own server drops it).
///
/// **Shutdown.** On `stopping`: stop accepting (connections already in the kernel's backlog
/// are served), send GOAWAY on every connection (RFC 9113 §6.8: the client learns which
/// calls will be served and opens new ones elsewhere), let every RPC in flight finish; at
/// the hard stop, RPC tokens fire with `Shutdown`; what still runs at the host's abort is
/// dropped and counted as lost. No RPC that reached an accepted connection goes
/// unanswered while the drain budget lasts. The host's report row counts each step (the
/// HTTP server's keys: `requests` are RPCs).
///
/// **Operations.** With an operations registry (`HostBuilder::operations`), each HTTP
/// request is a `Request` operation (gracefully-axum) and each RPC an `Rpc` operation under
/// it, named by its method path (`/pkg.Service/Method`), with the RPC token's deadline; the
/// handler runs in its scope (a query it makes appears under it), and it ends when the
/// handler answers: completed, cancelled with the token's reason, or failed (an error
/// status). A response stream that runs on after the handler is the request's, not the
/// RPC's. Without a registry nothing is recorded.
///
/// ```no_run
/// use gracefully_host::Host;
/// use gracefully_tonic::GrpcServer;
/// use tonic::service::Routes;
///
/// # fn greeter() -> axum::Router { axum::Router::new() }
/// # async fn main_() -> Result<(), Box<dyn std::error::Error>> {
/// // let routes = Routes::new(GreeterServer::new(MyGreeter)).add_service(…);
/// # let routes = Routes::from(greeter());
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
/// let host = Host::builder()
///     .service("grpc", GrpcServer::new(listener, routes))
///     .build()?;
/// host.run_and_exit().await;
/// # }
/// ```
///
/// The RPCs are served as tonic's `Routes` serve them (unknown methods answer
/// `UNIMPLEMENTED`); tonic's `transport::Server` settings (concurrency limits, its own
/// timeout layer, TLS) do not apply — put tower layers on the routes' router instead
/// (`Routes::into_axum_router().layer(…)`, then `Routes::from`). A handler panic answers
/// gRPC `INTERNAL` ("the handler panicked"), is counted in the report's `panicked`, and the
/// server keeps serving.
///
/// *Anchors:* tonic's `transport::Server::serve_with_shutdown`, which stops accepting but
/// never tells handlers, has no drain deadline and drops a handler whose client cancels;
/// grpc-go's `GracefulStop` (GOAWAY, wait for RPCs; `Stop` to cancel them); grpc-dotnet on
/// Kestrel (the call's token fires on client cancel, deadline and shutdown).
pub struct GrpcServer {
    http: HttpServer<GrpcRoutes>,
}

impl GrpcServer {
    /// A server for `routes` on `listener`.
    ///
    /// Each RPC's token is put in its request's extensions, where
    /// [`RequestExt::token`](crate::RequestExt::token) finds it on whatever task the handler
    /// runs; it is a child of the HTTP request's token, and also fires (`Disconnected`) when
    /// the client resets a response stream that outlives the handler (server streaming).
    pub fn new(listener: TcpListener, routes: Routes) -> Self {
        let routes = GrpcRoutes::new(routes.prepare().into_axum_router());
        GrpcServer {
            http: HttpServer::new(listener, routes),
        }
    }

    /// Changes the settings of the HTTP server underneath: its
    /// [`request_timeout`](HttpServer::request_timeout) (a deadline for calls that send
    /// none), [`incoming_deadlines`](HttpServer::incoming_deadlines) (`grpc-timeout` is read
    /// by default; a budget never extends the server's timeout),
    /// [`disconnect_policy`](HttpServer::disconnect_policy), `header_read_timeout`,
    /// `max_header_bytes`, `idle_grace`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use gracefully_tonic::GrpcServer;
    /// use tonic::service::Routes;
    ///
    /// # async fn f() -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// let server = GrpcServer::new(listener, Routes::default())
    ///     .configure(|http| http.request_timeout(Duration::from_secs(30)));
    /// assert!(server.config_error().is_none());
    /// # Ok(()) }
    /// ```
    pub fn configure(
        mut self,
        f: impl FnOnce(HttpServer<GrpcRoutes>) -> HttpServer<GrpcRoutes>,
    ) -> Self {
        self.http = f(self.http);
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The first setting given out of its valid range, if any.
    pub fn config_error(&self) -> Option<&ConfigError> {
        self.http.config_error()
    }

    /// Serves until `shutdown.stopping` fires, then drains (see the type's docs) and returns
    /// the server's report once every connection has closed.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future aborts every connection and RPC at once: that is the abort phase
    /// of a shutdown.
    pub async fn run(self, shutdown: Shutdown) -> ServerReport {
        self.http.run(shutdown).await
    }
}

/// The `gracefully-host` service: serves until the host's `stopping` fires, then drains; RPC
/// tokens are children of the host's hard stop; the drain's steps appear in the service's
/// row of the shutdown report.
impl gracefully_host::BackgroundService for GrpcServer {
    async fn execute(
        &mut self,
        stopping: CancellationToken,
        service: &gracefully_host::ServiceContext,
    ) -> Result<(), gracefully_host::BoxError> {
        self.http.execute(stopping, service).await
    }
}
