//! PostgreSQL notifications for one worker: `<schema>.wake` with this worker's queue name
//! wakes it; `<schema>.cancel` fires the token of a job running in this process at once,
//! from the listener's own task (not the worker's loop, which may be busy settling).
//!
//! A notification sent while the listening connection was down is lost: after every
//! (re)connect the worker is woken (it fetches) and told to read cancel requests from the
//! table. With the database gone, the listener retries with a backoff (100 ms doubling to
//! 5 s) while the worker polls.

use std::sync::Arc;
use std::time::Duration;

use gracefully::Reason;
use sqlx::postgres::PgListener;
use tokio::sync::mpsc::UnboundedSender;

use crate::jobs::Jobs;
use crate::store::postgres::{PgStore, parse_cancel};

/// What the listener tells the worker's loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Event {
    /// Jobs may be due: fetch.
    Wake,
    /// Notifications may have been missed: fetch, and read cancel requests from the table.
    Reconnected,
}

pub(crate) async fn listen(
    jobs: Jobs,
    store: Arc<PgStore>,
    queue: Arc<str>,
    events: UnboundedSender<Event>,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(&store).await {
            Ok(mut listener) => {
                delay = Duration::from_millis(100);
                if events.send(Event::Reconnected).is_err() {
                    return;
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => {
                            if n.channel() == store.wake_channel {
                                if n.payload() == &*queue && events.send(Event::Wake).is_err() {
                                    return;
                                }
                            } else if n.channel() == store.cancel_channel
                                && let Some((id, message)) = parse_cancel(n.payload())
                            {
                                jobs.fire_local(
                                    id,
                                    None,
                                    Reason::requested().with_message(message),
                                );
                            }
                        }
                        // The connection was lost; the next call reconnects and listens again.
                        Ok(None) => {
                            if events.send(Event::Reconnected).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(queue = %queue, error = %e, "job notifications lost; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(queue = %queue, error = %e, retry_in_ms = delay.as_millis() as u64, "cannot listen for job notifications; polling meanwhile");
            }
        }
        if events.is_closed() {
            return;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

async fn connect(store: &PgStore) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(&store.pool).await?;
    listener
        .listen_all([store.wake_channel.as_str(), store.cancel_channel.as_str()])
        .await?;
    Ok(listener)
}
