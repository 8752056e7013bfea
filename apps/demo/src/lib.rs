//! The demo service: an orders API that ties the gracefully crates together.
//!
//! * [`gracefully_host`] runs the services — the database pool, the HTTP server, the
//!   fulfilment workers and a statistics job — and shuts them down in three phases with a
//!   report.
//! * [`gracefully_axum`] serves the API; every request has a token that fires when the
//!   client leaves, when the route's timeout or the caller's propagated deadline passes,
//!   or at the hard stop.
//! * [`gracefully_mediator`] carries each use case from the HTTP handler to its handler,
//!   with the request's token, through logging, validation and retry behaviours.
//! * [`gracefully_sqlx`] runs the queries on SQLite (the embedded default, no server
//!   needed) or PostgreSQL (`--database postgres://…`): a cancelled query stops inside the
//!   database, and an order is written in a transaction that commits only if nothing was
//!   cancelled.
//! * [`gracefully_reqwest`] makes the fulfilment's call to the shipping service with the
//!   job's token: its deadline travels in a header.
//!
//! Endpoints: `GET /` (this list), `POST /orders` (`{"item": "tea", "quantity": 2}`),
//! `GET /orders`, `GET /orders/{id}`, `GET /report?rows=N` (a deliberately slow query:
//! leave with Ctrl-C on curl, and the database stops), `GET /events` (Server-Sent Events
//! of new orders; they end when the drain begins), `POST /shipping`, `GET /healthz`,
//! `GET /readyz`.

#![warn(missing_docs)]

mod api;
mod db;
mod fulfil;
mod orders;

use std::net::SocketAddr;
use std::time::Duration;

use gracefully_host::{EarlySignals, Host, Operations, ServiceOptions, ShutdownReport, service_fn};

pub use api::{AppState, router};

/// The workspace README's examples (they use every crate), compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
pub use db::{Database, FULFILMENT, Fulfil, Fulfilment, Order, OrderView};
pub use fulfil::FULFILMENT_DEADLINE;
pub use orders::{CreateOrder, GetOrder, ListOrders, SlowReport, mediator};

/// Command-line configuration.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "demo",
    about = "The gracefully demo service: an orders API on SQLite or PostgreSQL."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub listen: SocketAddr,
    /// The admin listener: the live operations page (`/operations`, `/operations.json`)
    /// and Prometheus `/metrics`. Keep it private (never the public address).
    #[arg(long, default_value = "127.0.0.1:3001")]
    pub admin: SocketAddr,
    /// Database URL: `sqlite://demo.db?mode=rwc` (the default, no server needed; a plain
    /// file name works too, and a missing file is created) or `postgres://user@host/db`
    /// (many instances then share the jobs).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://demo.db?mode=rwc"
    )]
    pub database: String,
    /// The whole shutdown's budget, in seconds.
    #[arg(long, default_value_t = 30)]
    pub shutdown_timeout: u64,
    /// The cancel phase's share of it, in seconds.
    #[arg(long, default_value_t = 5)]
    pub cancel_grace: u64,
    /// Seconds between the stop request and the drain (readiness already fails).
    #[arg(long, default_value_t = 0)]
    pub pre_stop_delay: u64,
    /// The `/report` route's timeout, in seconds (its query is interrupted, the answer is 504).
    #[arg(long, default_value_t = 10)]
    pub report_timeout: u64,
    /// How many `/report` queries may run at once; more are refused at once with 503 and
    /// `Retry-After` (each holds a database connection for as long as it counts).
    #[arg(long, default_value_t = 2)]
    pub max_reports: usize,
    /// The shipping service the fulfilment jobs call (default: this instance's own
    /// `/shipping`, on a loopback listener of its own that outlives the jobs worker).
    #[arg(long)]
    pub shipping_url: Option<String>,
    /// How long this instance's `/shipping` takes, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub shipping_delay_ms: u64,
    /// Fulfilment jobs run at once.
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Seconds a fulfilment job's lease lasts without renewal: how soon another worker
    /// takes over the jobs of an instance that crashed (renewed every third of it).
    #[arg(long, default_value_t = 30)]
    pub job_lease: u64,
    /// Install SIGINT/SIGTERM/SIGQUIT/SIGHUP handlers (tests turn this off).
    #[arg(skip = true)]
    pub handle_signals: bool,
}

/// Why the demo could not start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Builds the host (without running it): opens the database and binds the listener.
/// Returns the host and the address it will serve on.
pub async fn build(config: &Config) -> Result<(Host, SocketAddr), StartError> {
    build_with(config, None).await
}

/// [`build`], the host handling the signals through `signals` (taken before the start-up
/// work) if given.
async fn build_with(
    config: &Config,
    signals: Option<EarlySignals>,
) -> Result<(Host, SocketAddr), StartError> {
    // The flags' own ranges, named as the user typed them (the crates name their fields).
    if !(1..=10_000).contains(&config.workers) {
        return Err(StartError(format!(
            "bad configuration: --workers must be from 1 to 10000, got {}",
            config.workers
        )));
    }
    if !(1..=86_400).contains(&config.job_lease) {
        return Err(StartError(format!(
            "bad configuration: --job-lease must be from 1 to 86400 seconds, got {}",
            config.job_lease
        )));
    }
    if !(1..=86_400).contains(&config.report_timeout) {
        return Err(StartError(format!(
            "bad configuration: --report-timeout must be from 1 to 86400 seconds, got {}",
            config.report_timeout
        )));
    }
    if !(1..=1_000).contains(&config.max_reports) {
        return Err(StartError(format!(
            "bad configuration: --max-reports must be from 1 to 1000, got {}",
            config.max_reports
        )));
    }
    if !(1..=86_400).contains(&config.shutdown_timeout) {
        return Err(StartError(format!(
            "bad configuration: --shutdown-timeout must be from 1 to 86400 seconds, got {}",
            config.shutdown_timeout
        )));
    }
    if config.cancel_grace >= config.shutdown_timeout {
        return Err(StartError(format!(
            "bad configuration: --cancel-grace ({} s) must be shorter than --shutdown-timeout \
             ({} s): the drain gets the rest",
            config.cancel_grace, config.shutdown_timeout
        )));
    }
    if config.pre_stop_delay > 86_400 {
        return Err(StartError(format!(
            "bad configuration: --pre-stop-delay must be at most 86400 seconds, got {}",
            config.pre_stop_delay
        )));
    }
    // The host checks this too, but only once the database is open (creating its file
    // and tables, or waiting out a slow server) and naming its own field: say it first,
    // in the flags' names.
    if config.pre_stop_delay > config.shutdown_timeout - config.cancel_grace {
        return Err(StartError(format!(
            "bad configuration: --pre-stop-delay ({} s) must leave the cancel phase its time: \
             at most --shutdown-timeout ({} s) minus --cancel-grace ({} s)",
            config.pre_stop_delay, config.shutdown_timeout, config.cancel_grace
        )));
    }
    if config.shipping_delay_ms > 86_400_000 {
        return Err(StartError(format!(
            "bad configuration: --shipping-delay-ms must be at most 86400000, got {}",
            config.shipping_delay_ms
        )));
    }
    if let Some(url) = &config.shipping_url {
        shipping_url_ok(url).map_err(|why| {
            StartError(format!("bad configuration: --shipping-url `{url}`: {why}"))
        })?;
    }
    let database = Database::open(&config.database)
        .await
        .map_err(|e| StartError(format!("cannot open the database: {e}")))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| StartError(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(format!("cannot read the listening address: {e}")))?;
    let admin_listener = tokio::net::TcpListener::bind(config.admin)
        .await
        .map_err(|e| StartError(format!("cannot listen on {} (--admin): {e}", config.admin)))?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|e| StartError(format!("cannot read the admin address: {e}")))?;
    let operations = Operations::new();
    let admin = gracefully_axum::admin::admin_server(admin_listener, &operations)
        .map_err(|e| StartError(format!("cannot serve /metrics: {e}")))?;
    let mediator = mediator(&database).map_err(|e| StartError(format!("bad wiring: {e}")))?;
    let state = AppState {
        mediator,
        db: database.clone(),
        shipping_delay: Duration::from_millis(config.shipping_delay_ms),
    };
    let app = router(
        state.clone(),
        Duration::from_secs(config.report_timeout),
        config.max_reports,
    );
    let stats_db = database.clone();
    // The fulfilment jobs call this instance's own shipping service on a listener of its
    // own (loopback, a port of the system's choosing), not through the public one: the
    // worker depends on the service it calls, and a service is told to stop only once
    // what depends on it has ended. Through the public listener that held the whole public
    // API out of its drain (keep-alive connections kept, new ones accepted) for as long
    // as a job ran, and the hard stop then cut its requests mid-way with 503s and resets.
    let (shipping_url, shipping) = match &config.shipping_url {
        Some(url) => (url.clone(), None),
        None => {
            let listener = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))
                .await
                .map_err(|e| StartError(format!("cannot listen for the shipping service: {e}")))?;
            let at = listener.local_addr().map_err(|e| {
                StartError(format!("cannot read the shipping service's address: {e}"))
            })?;
            let server =
                gracefully_axum::HttpServer::new(listener, api::shipping_router(state.clone()))
                    .request_timeout(Duration::from_secs(30));
            (format!("http://{at}/shipping"), Some(server))
        }
    };
    let worker = fulfil::worker(
        &database,
        shipping_url,
        config.workers,
        Duration::from_secs(config.job_lease),
    )
    .map_err(|e| StartError(format!("bad configuration: {e}")))?;
    tracing::info!(database = database.backend(), "database open");
    tracing::info!(
        "operations page on http://{admin_addr}/operations, metrics on http://{admin_addr}/metrics"
    );
    let host = Host::builder().handle_signals(config.handle_signals);
    let host = match signals {
        Some(signals) => host.signals(signals),
        None => host,
    };
    let on_database = || ServiceOptions::new().depends_on(["database"]);
    let host = host
        // `main` prints the report it gets back: once.
        .log_report(false)
        .shutdown_timeout(Duration::from_secs(config.shutdown_timeout))
        .cancel_grace(Duration::from_secs(config.cancel_grace))
        .pre_stop_delay(Duration::from_secs(config.pre_stop_delay))
        .operations(operations)
        // The admin listener first: it starts first and stops last, so the page and the
        // metrics show the whole shutdown.
        .service("admin", admin)
        // Everything below depends on it: it starts first and stops once they all ended,
        // so in-flight requests and jobs keep their database.
        .service("database", database)
        // Depends on the database only: it drains as soon as the drain begins, whatever
        // jobs still run.
        .service_with(
            "http",
            gracefully_axum::HttpServer::new(listener, app)
                .request_timeout(Duration::from_secs(30)),
            on_database(),
        );
    let host = match shipping {
        // The worker stops before the shipping service it calls: the jobs still running
        // at the drain reach it.
        Some(shipping) => host
            .service_with("shipping", shipping, on_database())
            .service_with(
                "fulfilment",
                worker,
                ServiceOptions::new().depends_on(["database", "shipping"]),
            ),
        None => host.service_with("fulfilment", worker, on_database()),
    };
    host.service_with(
        "stats",
        service_fn(move |stopping, _cx| {
            let db = stats_db.clone();
            async move { db::log_stats_until(db, stopping).await }
        }),
        on_database(),
    )
    .build()
    .map(|host| (host, addr))
    .map_err(|e| StartError(format!("bad configuration: {e}")))
}

/// Whether `url` can be the shipping service's: an absolute `http` or `https` URL with a
/// host.
fn shipping_url_ok(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme must be http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("it names no host".into());
    }
    Ok(())
}

/// Runs the demo until it is shut down; returns the host's shutdown report, or `None` if a
/// signal stopped it while it was starting (opening the database, which may take long),
/// before it served anything.
pub async fn run(config: Config) -> Result<Option<ShutdownReport>, StartError> {
    // The signals first: one that arrives during the start-up stops it there (without them
    // it would take the default action, exit 143 with no word).
    let signals = if config.handle_signals {
        let signals = EarlySignals::install()
            .map_err(|e| StartError(format!("cannot install the signal handlers: {e}")))?;
        Some(signals)
    } else {
        None
    };
    let stop = signals.as_ref().map(EarlySignals::received);
    let building = build_with(&config, signals);
    let (host, addr) = match stop {
        Some(stop) => tokio::select! {
            built = building => built?,
            reason = stop.cancelled() => {
                tracing::info!(%reason, "stopped while starting, before serving anything");
                return Ok(None);
            }
        },
        None => building.await?,
    };
    // Announce only once the host has started: its signal handlers are installed by then,
    // so an orchestrator's SIGTERM sent right after this line drains instead of killing.
    let started = host.lifetime().started();
    let run = host.run();
    tokio::pin!(run);
    tokio::select! {
        report = &mut run => return Ok(Some(report)),
        _ = started.cancelled() => tracing::info!("demo listening on http://{addr}"),
    }
    Ok(Some(run.await))
}
