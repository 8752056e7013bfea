//! The fulfilment worker: for each new order, a durable job (enqueued in the order's own
//! transaction) calls the shipping service with the job's token — its deadline travels in
//! a header — and then, in one transaction, marks the order fulfilled and completes the
//! job. A shutdown hands an unfinished job back without using up an attempt; a crash
//! leaves it to be reclaimed when its lease expires; the shipping service deduplicates by
//! order, so every order ships exactly once.

use std::time::Duration;

use gracefully::CancellationToken;
use gracefully_host::BoxError;
use gracefully_jobs::{Job, Worker};
use gracefully_reqwest::RequestBuilderExt;

use crate::api::{ShipRequest, Shipped};
use crate::db::{Database, FULFILMENT, Fulfil};

/// How long one fulfilment may take, the shipping call included; the budget the
/// shipping service receives in `x-request-timeout-ms`.
pub const FULFILMENT_DEADLINE: Duration = Duration::from_secs(10);

/// The worker for the fulfilment queue, calling `shipping_url`; leases of `lease`,
/// renewed every third of it.
pub fn worker(
    db: &Database,
    shipping_url: String,
    concurrency: usize,
    lease: Duration,
) -> Result<Worker, gracefully_jobs::Error> {
    let http = reqwest::Client::new();
    let handler_db = db.clone();
    db.jobs()
        .worker(FULFILMENT)
        .concurrency(concurrency)
        .lease(lease)
        .heartbeat(lease / 3)
        .handler(move |job: Job<Fulfil>, token: CancellationToken| {
            let (db, http, url) = (handler_db.clone(), http.clone(), shipping_url.clone());
            async move { fulfil(&db, &http, &url, job, token).await }
        })
        .build()
}

async fn fulfil(
    db: &Database,
    http: &reqwest::Client,
    shipping_url: &str,
    job: Job<Fulfil>,
    token: CancellationToken,
) -> Result<(), BoxError> {
    // The job's own deadline, narrower than the worker's token (which fires at shutdown
    // or on a cancel request): it becomes the shipping call's timeout and its header.
    let budget = token.child_with_timeout(FULFILMENT_DEADLINE);
    let order_id = job.payload().order_id;
    let shipped: Shipped = http
        .post(shipping_url)
        .json(&ShipRequest { order_id })
        .with_token(&budget.token())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    db.complete_fulfilment(&budget.token(), job, shipped.tracking)
        .await?;
    Ok(())
}
