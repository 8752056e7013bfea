//! The HTTP API.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::stream;
use gracefully_axum::{
    Drain, OperationNameLayer, RequestToken, TimeoutLayer, cancelled_response, health_routes,
};
use serde::Deserialize;
use tokio::sync::Semaphore;

use gracefully_mediator::{Error as MediatorError, Mediator};

use crate::db::{Database, Order, OrderView};
use crate::orders::{CreateOrder, GetOrder, ListOrders, SlowReport};

/// What the routes share: the mediator (every use case goes through it) and the database
/// (for `/events` and the shipping service's side).
#[derive(Clone)]
pub struct AppState {
    /// The use cases.
    pub mediator: Mediator,
    /// The database.
    pub db: Database,
    /// How long `/shipping` takes to ship (a stand-in for a partner's API).
    pub shipping_delay: Duration,
}

/// The demo's routes (including `/healthz` and `/readyz`); `/report` times out after
/// `report_timeout`, and at most `max_reports` of them run at once.
pub fn router(state: AppState, report_timeout: Duration, max_reports: usize) -> Router {
    let report = Router::new()
        .route("/report", get(slow_report))
        // A cooperative timeout: the query is stopped in the database and the answer is 504.
        .layer(TimeoutLayer::new(report_timeout))
        // Checked first (the outer layer): a refused report never starts its clock.
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Semaphore::new(max_reports)),
            one_of_few_reports,
        ));
    Router::new()
        .route("/", get(index))
        .route("/orders", get(list_orders).post(create_order))
        .route("/orders/{id}", get(get_order))
        .route("/shipping", post(ship))
        .route("/events", get(events))
        .merge(report)
        .with_state(state)
        // Each request's operation is named by its route (`GET /orders/{id}`).
        .layer(OperationNameLayer::new())
        .merge(health_routes())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_declared_oversize))
}

/// The shipping service alone, for this instance's internal shipping listener (the one its
/// fulfilment jobs call by default; see `build_with`).
pub fn shipping_router(state: AppState) -> Router {
    Router::new()
        .route("/shipping", post(ship))
        .with_state(state)
        .layer(OperationNameLayer::new())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// 503 at once, with `Retry-After`, while the most reports allowed are running: each holds
/// a database connection for as long as it counts, and without a limit a burst of them
/// took every connection of the pool (an order then waited seconds for one). Refusing at
/// once rather than queueing: a report's client would rather retry than wait behind others
/// for an answer it may no longer want. (tower's `ConcurrencyLimit` queues; with
/// `LoadShed` in front it refuses, but answers an error this would still have to turn into
/// a response.)
async fn one_of_few_reports(
    State(limit): State<Arc<Semaphore>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match Arc::clone(&limit).try_acquire_owned() {
        Ok(permit) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, "1")],
            "the most reports allowed at once are running; try again shortly\n",
        )
            .into_response(),
    }
}

/// The largest request body accepted (axum's default, stated): an order is a few dozen
/// bytes.
const MAX_BODY: usize = 2 * 1024 * 1024;

/// 413 at once for a body whose declared length is over [`MAX_BODY`], before any of it is
/// read: without this the limit is found only as the body arrives, and a client that
/// declares 100 GB and sends two bytes holds its handler until the route's timeout (504).
/// (tower-http's `RequestBodyLimitLayer` checks the same header; it is not a dependency of
/// the workspace, and these few lines also say in the answer what the limit is.)
async fn refuse_declared_oversize(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > MAX_BODY as u64 => (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {len} bytes; at most {MAX_BODY} are accepted\n"),
        )
            .into_response(),
        _ => next.run(request).await,
    }
}

/// Any path the API does not have: 404, saying so.
async fn not_found(uri: axum::http::Uri) -> (StatusCode, String) {
    (
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}; GET / lists them\n", uri.path()),
    )
}

async fn index() -> &'static str {
    "gracefully demo: an orders API\n\
     \n\
     POST /orders          {\"item\": \"tea\", \"quantity\": 2}  (one transaction, with its fulfilment job)\n\
     GET  /orders          the latest 100 orders\n\
     GET  /orders/{id}     one order, its fulfilment job's state and its tracking code\n\
     GET  /report?rows=N   a slow query (try rows=100000000, then leave with Ctrl-C)\n\
     GET  /events          new orders as Server-Sent Events (end when the drain begins)\n\
     POST /shipping        {\"order_id\": 1}  the shipping service the fulfilment jobs call\n\
     GET  /healthz, /readyz\n"
}

/// What the API answers on failure.
#[derive(Debug)]
enum ApiError {
    /// The request's token fired: 499 (client left), 504 (timeout) or 503 (shutdown).
    Cancelled(gracefully::Cancelled),
    /// The request itself was wrong: 422.
    Invalid(String),
    /// The request could not even be read as one (a malformed path): 400.
    BadRequest(String),
    /// No such order.
    NotFound,
    /// The database could not be reached or dropped the connection: 503, retry later.
    Unavailable(String),
    /// Something failed (logged; the client gets a generic message).
    Failed(String),
}

impl From<MediatorError> for ApiError {
    fn from(error: MediatorError) -> Self {
        match error {
            MediatorError::Cancelled(cancelled) => ApiError::Cancelled(cancelled),
            // What the client sent that was wrong, field by field (the mediator's own
            // message also names the Rust request type, which is for the logs).
            MediatorError::Invalid(invalid) => ApiError::Invalid(format!(
                "invalid request: {}",
                invalid
                    .problems()
                    .map(|(field, message)| match field {
                        Some(field) => format!("{field}: {message}"),
                        None => message.to_owned(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            other => {
                let unavailable = other
                    .as_failure()
                    .and_then(|e| e.downcast_ref::<gracefully_sqlx::Error>())
                    .is_some_and(database_unavailable);
                if unavailable {
                    ApiError::Unavailable(other.to_string())
                } else {
                    ApiError::Failed(other.to_string())
                }
            }
        }
    }
}

impl From<gracefully_sqlx::Error> for ApiError {
    fn from(error: gracefully_sqlx::Error) -> Self {
        match error {
            gracefully_sqlx::Error::Cancelled(cancelled) => ApiError::Cancelled(cancelled),
            other if database_unavailable(&other) => ApiError::Unavailable(other.to_string()),
            other => ApiError::Failed(other.to_string()),
        }
    }
}

/// Whether `error` says the database could not be reached or dropped the connection (a
/// restart, a failover, a terminated backend) rather than that the request was wrong: the
/// client may retry, so the answer is 503 with `Retry-After`, not 500.
fn database_unavailable(error: &gracefully_sqlx::Error) -> bool {
    use gracefully_sqlx::Error;
    let source = match error {
        Error::Connect { .. } => return true,
        Error::Database(source) => source,
        _ => return false,
    };
    match source {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // PostgreSQL: connection exceptions (08…), insufficient resources (53…: too
            // many connections, out of memory, disk full), the server shutting down or a
            // backend terminated (57P01–57P03).
            code.starts_with("08")
                || code.starts_with("53")
                || matches!(&*code, "57P01" | "57P02" | "57P03")
        }),
        _ => false,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Cancelled(cancelled) => cancelled_response(&cancelled),
            ApiError::Invalid(message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, message).into_response()
            }
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message).into_response(),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "no such order").into_response(),
            ApiError::Unavailable(error) => {
                tracing::warn!(%error, "database unavailable; answering 503");
                let mut response = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database is unavailable; retry shortly\n",
                )
                    .into_response();
                response.headers_mut().insert(
                    axum::http::header::RETRY_AFTER,
                    axum::http::HeaderValue::from_static("1"),
                );
                response
            }
            ApiError::Failed(error) => {
                tracing::error!(%error, "request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
            }
        }
    }
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    item: String,
    quantity: i64,
}

async fn create_order(
    State(app): State<AppState>,
    RequestToken(token): RequestToken,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let request = CreateOrder {
        item: order.item,
        quantity: order.quantity,
    };
    let order = app.mediator.send(request, &token).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn get_order(
    State(app): State<AppState>,
    RequestToken(token): RequestToken,
    Path(id): Path<String>,
) -> Result<Json<OrderView>, ApiError> {
    // Parsed here rather than by `Path<i64>`, whose 400 echoes the segment as it came —
    // control characters (`%00`, escape sequences) included.
    let id = id.parse::<i64>().map_err(|_| {
        let shown: String = id.chars().take(64).collect();
        ApiError::BadRequest(format!(
            "the order id must be a whole number, not {shown:?}{}\n",
            if shown.len() < id.len() { "…" } else { "" }
        ))
    })?;
    match app.mediator.send(GetOrder { id }, &token).await? {
        Some(order) => Ok(Json(order)),
        None => Err(ApiError::NotFound),
    }
}

async fn list_orders(
    State(app): State<AppState>,
    RequestToken(token): RequestToken,
) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(app.mediator.send(ListOrders, &token).await?))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    rows: Option<i64>,
}

async fn slow_report(
    State(app): State<AppState>,
    RequestToken(token): RequestToken,
    Query(query): Query<ReportQuery>,
) -> Result<String, ApiError> {
    let rows = query.rows.unwrap_or(10_000_000);
    let counted = app.mediator.send(SlowReport { rows }, &token).await?;
    Ok(format!("counted {counted} rows\n"))
}

#[derive(Debug, Deserialize, serde::Serialize)]
pub(crate) struct ShipRequest {
    pub(crate) order_id: i64,
}

#[derive(Debug, Deserialize, serde::Serialize)]
pub(crate) struct Shipped {
    pub(crate) tracking: String,
}

/// The shipping service (in a real system, another service): records the shipment,
/// idempotently, after `shipping_delay` — a stand-in for a partner's API. The caller's
/// deadline arrives in the request's header and narrows this request's token.
async fn ship(
    State(app): State<AppState>,
    RequestToken(token): RequestToken,
    Json(request): Json<ShipRequest>,
) -> Result<Json<Shipped>, ApiError> {
    // The caller's budget, as it arrived (the fulfilment job sends its deadline).
    let budget_ms = token.deadline().map(|deadline| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        i64::try_from(left.as_millis()).unwrap_or(i64::MAX)
    });
    token
        .run_until_cancelled(tokio::time::sleep(app.shipping_delay))
        .await
        .map_err(ApiError::Cancelled)?;
    let tracking = app.db.ship(&token, request.order_id, budget_ms).await?;
    tracing::info!(order_id = request.order_id, budget_ms, "shipped");
    Ok(Json(Shipped { tracking }))
}

async fn events(State(app): State<AppState>, drain: Drain) -> impl IntoResponse {
    let orders = app.db.subscribe();
    let feed = stream::unfold(orders, |mut orders| async move {
        loop {
            match orders.recv().await {
                Ok(order) => {
                    let event = Event::default()
                        .event("order")
                        .json_data(&order)
                        .unwrap_or_else(|_| Event::default().data("unencodable order"));
                    return Some((Ok::<_, Infallible>(event), orders));
                }
                // A slow reader missed some; carry on with the next.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    drain.sse(feed)
}
