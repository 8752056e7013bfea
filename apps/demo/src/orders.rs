//! The orders use cases, as mediator requests: the HTTP handlers send them with the
//! request's token, the behaviours (logging, validation, retry of genuine failures) wrap
//! every one, and the handlers pass the token on to the database — .NET's
//! controller → MediatR → EF Core chain.

use gracefully::CancellationToken;
use gracefully_mediator::{
    BuildError, Invalid, LoggingLayer, Mediator, Request, RetryLayer, ValidateLayer, handler_fn,
};

use crate::db::{Database, Order, OrderView};

/// Create an order (and, in the same transaction, its fulfilment job).
#[derive(Debug)]
pub struct CreateOrder {
    /// What to order: 1 to 100 characters.
    pub item: String,
    /// How many: 1 to 1000.
    pub quantity: i64,
}

impl Request for CreateOrder {
    type Response = Order;

    fn validate(&self) -> Result<(), Invalid> {
        let mut invalid = Invalid::new();
        let item = self.item.trim();
        if item.is_empty() || item.chars().count() > 100 {
            invalid = invalid.with("item", "1 to 100 characters");
        } else if item.chars().any(char::is_control) {
            // A NUL or an escape sequence would reach logs, terminals and the shipping
            // partner as it is.
            invalid = invalid.with("item", "no control characters (NUL, escapes, line breaks)");
        }
        if !(1..=1000).contains(&self.quantity) {
            invalid = invalid.with("quantity", "1 to 1000");
        }
        invalid.into_result()
    }
    // Not retried: creating twice would create two orders.
}

/// One order and its fulfilment.
#[derive(Debug, Clone)]
pub struct GetOrder {
    /// The order's id.
    pub id: i64,
}

impl Request for GetOrder {
    type Response = Option<OrderView>;

    fn clone_for_retry(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// The latest 100 orders.
#[derive(Debug, Clone)]
pub struct ListOrders;

impl Request for ListOrders {
    type Response = Vec<Order>;

    fn clone_for_retry(&self) -> Option<Self> {
        Some(self.clone())
    }
}

/// The deliberately slow report: a recursive count to `rows` inside the database.
#[derive(Debug, Clone)]
pub struct SlowReport {
    /// How far to count: 1 to 10,000,000,000.
    pub rows: i64,
}

impl Request for SlowReport {
    type Response = i64;

    fn validate(&self) -> Result<(), Invalid> {
        if (1..=10_000_000_000).contains(&self.rows) {
            Ok(())
        } else {
            Err(Invalid::new().with("rows", "1 to 10000000000"))
        }
    }
    // Not retried: after a genuine failure, seconds of CPU again would not help.
}

/// The mediator with the demo's behaviours and handlers.
pub fn mediator(db: &Database) -> Result<Mediator, BuildError> {
    let (create, get, list, report) = (db.clone(), db.clone(), db.clone(), db.clone());
    Mediator::builder()
        .layer(LoggingLayer::new())
        .layer(ValidateLayer::new())
        .layer(RetryLayer::new(2))
        .handler(handler_fn(
            move |r: CreateOrder, token: CancellationToken| {
                let db = create.clone();
                async move {
                    db.create_order(&token, r.item.trim().to_string(), r.quantity)
                        .await
                }
            },
        ))
        .handler(handler_fn(move |r: GetOrder, token: CancellationToken| {
            let db = get.clone();
            async move { db.get_order(&token, r.id).await }
        }))
        .handler(handler_fn(
            move |_: ListOrders, token: CancellationToken| {
                let db = list.clone();
                async move { db.list_orders(&token).await }
            },
        ))
        .handler(handler_fn(
            move |r: SlowReport, token: CancellationToken| {
                let db = report.clone();
                async move { db.slow_report(&token, r.rows).await }
            },
        ))
        .build()
}
