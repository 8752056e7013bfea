//! The HTTP API.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::stream;
use gracefully_axum::{Drain, RequestToken, TimeoutLayer, cancelled_response, health_routes};
use serde::Deserialize;

use crate::db::{Database, Order};

/// The demo's routes (including `/healthz` and `/readyz`); `/report` times out after
/// `report_timeout`.
pub fn router(db: Database, report_timeout: Duration) -> Router {
    let report = Router::new()
        .route("/report", get(slow_report))
        // A cooperative timeout: the query is interrupted in SQLite and the answer is 504.
        .layer(TimeoutLayer::new(report_timeout));
    Router::new()
        .route("/", get(index))
        .route("/orders", get(list_orders).post(create_order))
        .route("/events", get(events))
        .merge(report)
        .with_state(db)
        .merge(health_routes())
}

async fn index() -> &'static str {
    "gracefully demo: an orders API\n\
     \n\
     POST /orders          {\"item\": \"tea\", \"quantity\": 2}  (one transaction)\n\
     GET  /orders          the latest 100 orders\n\
     GET  /report?rows=N   a slow query (try rows=100000000, then leave with Ctrl-C)\n\
     GET  /events          new orders as Server-Sent Events (end when the drain begins)\n\
     GET  /healthz, /readyz\n"
}

/// What the API answers on failure.
#[derive(Debug)]
enum ApiError {
    /// The request's token fired: 499 (client left), 504 (timeout) or 503 (shutdown).
    Cancelled(gracefully::Cancelled),
    /// The request itself was wrong.
    BadRequest(String),
    /// The database failed (logged; the client gets a generic message).
    Database(gracefully_sqlx::Error),
}

impl From<gracefully_sqlx::Error> for ApiError {
    fn from(error: gracefully_sqlx::Error) -> Self {
        match error {
            gracefully_sqlx::Error::Cancelled(cancelled) => ApiError::Cancelled(cancelled),
            other => ApiError::Database(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Cancelled(cancelled) => cancelled_response(&cancelled),
            ApiError::BadRequest(message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, message).into_response()
            }
            ApiError::Database(error) => {
                tracing::error!(%error, "database error");
                (StatusCode::INTERNAL_SERVER_ERROR, "database error").into_response()
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
    State(db): State<Database>,
    RequestToken(token): RequestToken,
    Json(order): Json<NewOrder>,
) -> Result<(StatusCode, Json<Order>), ApiError> {
    let item = order.item.trim().to_string();
    if item.is_empty() || item.len() > 100 {
        return Err(ApiError::BadRequest("item: 1 to 100 characters".into()));
    }
    if !(1..=1000).contains(&order.quantity) {
        return Err(ApiError::BadRequest("quantity: 1 to 1000".into()));
    }
    let order = db.create_order(&token, item, order.quantity).await?;
    Ok((StatusCode::CREATED, Json(order)))
}

async fn list_orders(
    State(db): State<Database>,
    RequestToken(token): RequestToken,
) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(db.list_orders(&token).await?))
}

#[derive(Debug, Deserialize)]
struct ReportQuery {
    rows: Option<i64>,
}

async fn slow_report(
    State(db): State<Database>,
    RequestToken(token): RequestToken,
    Query(query): Query<ReportQuery>,
) -> Result<String, ApiError> {
    let rows = query.rows.unwrap_or(10_000_000);
    if !(1..=10_000_000_000).contains(&rows) {
        return Err(ApiError::BadRequest("rows: 1 to 10000000000".into()));
    }
    let counted = db.slow_report(&token, rows).await?;
    Ok(format!("counted {counted} rows\n"))
}

async fn events(State(db): State<Database>, drain: Drain) -> impl IntoResponse {
    let orders = db.subscribe();
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
