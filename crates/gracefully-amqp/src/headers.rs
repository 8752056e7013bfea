//! The headers this crate reads and writes on retried and dead-lettered copies of a
//! message. Each is set on the copy only; the original is acked once the copy is confirmed.

use std::error::Error;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

/// Failed deliveries so far (an integer). Absent means none.
pub(crate) const FAILURES: &str = "x-gracefully-failures";
/// The last handler error, its source chain joined by `: ` (a string, at most
/// [`MAX_ERROR_LEN`] bytes).
pub(crate) const ERROR: &str = "x-gracefully-error";
/// Why the message was dead-lettered: `failed` or `undecodable`.
pub(crate) const ERROR_KIND: &str = "x-gracefully-error-kind";
/// On a dead-lettered copy: how many deliveries it had.
pub(crate) const DELIVERIES: &str = "x-gracefully-deliveries";
/// On a dead-lettered copy: the queue it was consumed from.
pub(crate) const QUEUE: &str = "x-gracefully-queue";
/// The exchange the message was first published to (kept across retries, whose copies
/// arrive from the default exchange).
pub(crate) const EXCHANGE: &str = "x-gracefully-exchange";
/// The routing key it was first published with.
pub(crate) const ROUTING_KEY: &str = "x-gracefully-routing-key";

/// Error texts longer than this are cut (headers travel in every frame of the copy).
pub(crate) const MAX_ERROR_LEN: usize = 4096;

/// The failure count a message carries.
pub(crate) fn failures(properties: &BasicProperties) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(FAILURES))
    else {
        return 0;
    };
    let n: i128 = match value {
        AMQPValue::ShortShortInt(v) => (*v).into(),
        AMQPValue::ShortShortUInt(v) => (*v).into(),
        AMQPValue::ShortInt(v) => (*v).into(),
        AMQPValue::ShortUInt(v) => (*v).into(),
        AMQPValue::LongInt(v) => (*v).into(),
        AMQPValue::LongUInt(v) => (*v).into(),
        AMQPValue::LongLongInt(v) => (*v).into(),
        _ => 0,
    };
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

/// A string header's value.
pub(crate) fn text<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    }
}

/// The error and its sources, `outer: inner: innermost`, cut to [`MAX_ERROR_LEN`] bytes
/// at a character boundary.
pub(crate) fn error_text(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        // Many errors repeat their source in their own message; skip such echoes.
        if !text.ends_with(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = e.source();
    }
    if text.len() > MAX_ERROR_LEN {
        let mut cut = MAX_ERROR_LEN - 3;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// Sets `name` to `value` in a copy of `properties`' headers.
pub(crate) struct Edit {
    table: FieldTable,
}

impl Edit {
    pub(crate) fn of(properties: &BasicProperties) -> Edit {
        Edit {
            table: properties.headers().clone().unwrap_or_default(),
        }
    }

    pub(crate) fn int(mut self, name: &str, value: u32) -> Edit {
        self.table.insert(
            ShortString::from(name),
            AMQPValue::LongLongInt(value.into()),
        );
        self
    }

    pub(crate) fn text(mut self, name: &str, value: &str) -> Edit {
        self.table.insert(
            ShortString::from(name),
            AMQPValue::LongString(LongString::from(value)),
        );
        self
    }

    /// Sets `name` only if the message does not carry it yet (first values survive
    /// retries).
    pub(crate) fn text_once(self, name: &str, value: &str) -> Edit {
        if self.table.inner().contains_key(name) {
            self
        } else {
            self.text(name, value)
        }
    }

    pub(crate) fn apply(self, properties: &BasicProperties) -> BasicProperties {
        properties.clone().with_headers(self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Wrapped(&'static str, Option<Box<dyn Error + Send + Sync>>);
    impl fmt::Display for Wrapped {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl Error for Wrapped {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            self.1.as_deref().map(|e| e as &(dyn Error + 'static))
        }
    }

    #[test]
    fn the_failure_count_round_trips_through_the_headers() {
        let props = BasicProperties::default();
        assert_eq!(failures(&props), 0);
        let props = Edit::of(&props).int(FAILURES, 3).apply(&props);
        assert_eq!(failures(&props), 3);
        let props = Edit::of(&props).int(FAILURES, 4).apply(&props);
        assert_eq!(failures(&props), 4);
    }

    #[test]
    fn a_failure_count_of_another_type_or_sign_is_read_sensibly() {
        let mut t = FieldTable::default();
        t.insert(FAILURES.into(), AMQPValue::ShortInt(-2));
        assert_eq!(failures(&BasicProperties::default().with_headers(t)), 0);
        let mut t = FieldTable::default();
        t.insert(FAILURES.into(), AMQPValue::LongString("x".into()));
        assert_eq!(failures(&BasicProperties::default().with_headers(t)), 0);
    }

    #[test]
    fn first_values_survive_later_edits() {
        let props = BasicProperties::default();
        let props = Edit::of(&props)
            .text_once(ROUTING_KEY, "orders.eu")
            .apply(&props);
        let props = Edit::of(&props)
            .text_once(ROUTING_KEY, "orders.retry.1000ms")
            .apply(&props);
        assert_eq!(text(&props, ROUTING_KEY), Some("orders.eu"));
    }

    #[test]
    fn the_error_text_names_the_whole_chain_once() {
        let inner = Wrapped("connection reset", None);
        let outer = Wrapped("charging the card failed", Some(Box::new(inner)));
        assert_eq!(
            error_text(&outer),
            "charging the card failed: connection reset"
        );
        let echo = Wrapped(
            "charging failed: timeout",
            Some(Box::new(Wrapped("timeout", None))),
        );
        assert_eq!(error_text(&echo), "charging failed: timeout");
    }

    #[test]
    fn a_long_error_is_cut_at_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_LEN);
        let text = error_text(&Wrapped(Box::leak(long.into_boxed_str()), None));
        assert!(text.len() <= MAX_ERROR_LEN);
        assert!(text.ends_with("..."));
    }
}
