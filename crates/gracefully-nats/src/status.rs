//! What a message on the pull inbox means: a delivery, or one of the status messages
//! JetStream sends about pull requests (ADR-13 of nats-architecture-and-design):
//!
//! | status | description | meaning |
//! |---|---|---|
//! | (none) | | a delivery |
//! | `100` | Idle Heartbeat | the server still holds a request; nothing to deliver |
//! | `404` | No Messages | a no-wait request found nothing |
//! | `408` | Request Timeout | a request expired; `Nats-Pending-Messages` it did not fulfil |
//! | `409` | Consumer Deleted | the consumer is gone |
//! | `409` | Consumer is push based | it cannot be pulled from |
//! | `409` | Exceeded MaxWaiting | too many requests wait (from all its clients): try later |
//! | `409` | Exceeded MaxRequestBatch / Expires / MaxBytes | the request broke a consumer limit |
//! | `409` | Leadership Change, Server Shutdown, … | the request is over, with its pending count |
//! | `503` | | no responders: JetStream did not answer |

use async_nats::StatusCode;

/// A message on the pull inbox, classified.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbox {
    /// A message of the stream.
    Delivery,
    /// The server holds a request and has nothing to deliver.
    Heartbeat,
    /// A request ended with this many of its messages undelivered (`None`: not said).
    Ended(Option<usize>),
    /// Requests are refused for now (too many waiting, JetStream not answering, or a status
    /// not known): pull again after a pause.
    Refused(String),
    /// The consumer was deleted.
    ConsumerDeleted,
    /// The consumer cannot serve our pull requests: the description says why.
    Unusable(String),
}

/// Classifies `message` (see the module's table).
pub(crate) fn classify(message: &async_nats::Message) -> Inbox {
    let description = message.description.as_deref().unwrap_or("");
    match message.status {
        None | Some(StatusCode::OK) => Inbox::Delivery,
        Some(StatusCode::IDLE_HEARTBEAT) => Inbox::Heartbeat,
        Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => {
            Inbox::Ended(pending_messages(message))
        }
        Some(StatusCode::REQUEST_TERMINATED) => {
            let lower = description.to_ascii_lowercase();
            if lower.contains("consumer deleted") {
                Inbox::ConsumerDeleted
            } else if lower.contains("push based") {
                Inbox::Unusable("it became a push consumer; use a pull consumer".into())
            } else if lower.starts_with("exceeded maxwaiting") {
                Inbox::Refused(format!(
                    "{description}: too many pull requests wait on the consumer (from all its clients)"
                ))
            } else if lower.starts_with("exceeded maxrequest") {
                Inbox::Unusable(format!(
                    "it rejects the pull requests ({description}); raise its max_batch / \
                     max_expires / max_bytes"
                ))
            } else {
                // Leadership change, server shutdown, …: the request is over.
                Inbox::Ended(pending_messages(message))
            }
        }
        Some(StatusCode::NO_RESPONDERS) => Inbox::Refused(
            "JetStream did not answer a pull request (no responders: is the stream's leader \
             available?)"
                .into(),
        ),
        Some(status) => Inbox::Refused(format!(
            "unexpected status {status} ({description}) on the pull inbox"
        )),
    }
}

/// The `Nats-Pending-Messages` header of a status message: how many messages of the
/// request that ended were not delivered.
fn pending_messages(message: &async_nats::Message) -> Option<usize> {
    message
        .headers
        .as_ref()?
        .get("Nats-Pending-Messages")?
        .as_str()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::HeaderMap;

    fn status(code: u16, description: &str, pending: Option<&str>) -> async_nats::Message {
        let headers = pending.map(|p| {
            let mut h = HeaderMap::new();
            h.insert("Nats-Pending-Messages", p);
            h
        });
        async_nats::Message {
            subject: "_INBOX.x".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers,
            status: Some(StatusCode::from_u16(code).unwrap()),
            description: Some(description.into()),
            length: 0,
        }
    }

    #[test]
    fn every_status_jetstream_sends_a_pull_inbox_is_classified() {
        assert_eq!(
            classify(&status(100, "Idle Heartbeat", None)),
            Inbox::Heartbeat
        );
        assert_eq!(
            classify(&status(408, "Request Timeout", Some("7"))),
            Inbox::Ended(Some(7))
        );
        assert_eq!(
            classify(&status(404, "No Messages", None)),
            Inbox::Ended(None)
        );
        assert_eq!(
            classify(&status(409, "Leadership Change", Some("3"))),
            Inbox::Ended(Some(3))
        );
        assert_eq!(
            classify(&status(409, "Consumer Deleted", None)),
            Inbox::ConsumerDeleted
        );
        assert!(matches!(
            classify(&status(409, "Consumer is push based", None)),
            Inbox::Unusable(_)
        ));
        assert!(matches!(
            classify(&status(409, "Exceeded MaxRequestBatch of 10", None)),
            Inbox::Unusable(m) if m.contains("Exceeded MaxRequestBatch of 10")
        ));
        assert!(matches!(
            classify(&status(409, "Exceeded MaxWaiting", None)),
            Inbox::Refused(_)
        ));
        assert!(
            matches!(classify(&status(503, "", None)), Inbox::Refused(m) if m.contains("no responders"))
        );
        assert!(
            matches!(classify(&status(400, "Bad Request", None)), Inbox::Refused(m) if m.contains("400"))
        );
    }

    #[test]
    fn a_message_without_status_is_a_delivery() {
        let mut m = status(100, "", None);
        m.status = None;
        assert_eq!(classify(&m), Inbox::Delivery);
    }
}
