//! The operations registry as JSON: times relative to the snapshot (an `Instant` has no
//! meaning outside the process), ids as strings (they may pass 2^53).

use std::time::{Duration, Instant};

use gracefully::operation::OperationOutcome;
use gracefully_host::{OperationRecord, Operations};
use serde_json::{Value, json};

pub(crate) fn render(operations: &Operations) -> String {
    let snapshot = operations.snapshot();
    let at = snapshot.at;
    let live: Vec<Value> = snapshot.live.iter().map(|op| record(op, at)).collect();
    let finished: Vec<Value> = snapshot
        .finished
        .iter()
        .map(|f| {
            let mut value = record(&f.operation, f.ended);
            value["duration_ms"] = ms(f.ended.saturating_duration_since(f.operation.started));
            value["ended_ago_ms"] = ms(at.saturating_duration_since(f.ended));
            value["outcome"] = json!(f.outcome.as_str());
            match &f.outcome {
                OperationOutcome::Cancelled(reason) => {
                    let origin = reason.origin();
                    value["reason"] = json!({
                        "kind": format!("{:?}", reason.kind()),
                        "message": reason.message(),
                        "origin": format!("{}:{}:{}", origin.file(), origin.line(), origin.column()),
                    });
                }
                OperationOutcome::Failed(message) => value["error"] = json!(message),
                _ => {}
            }
            value
        })
        .collect();
    json!({
        "live": live,
        "finished": finished,
        "started_total": snapshot.started_total,
        "keep_finished": operations.keep_finished(),
    })
    .to_string()
}

/// An operation's fields, its age and time left counted at `at`.
fn record(op: &OperationRecord, at: Instant) -> Value {
    json!({
        "id": op.id.get().to_string(),
        "parent": op.parent.map(|p| p.get().to_string()),
        "kind": op.kind.as_str(),
        "name": op.name,
        "age_ms": ms(at.saturating_duration_since(op.started)),
        "deadline_in_ms": op.deadline.map(|d| {
            if d >= at {
                ms(d - at)
            } else {
                json!(-(((at - d).as_secs_f64() * 1000.0).round()))
            }
        }),
    })
}

fn ms(d: Duration) -> Value {
    json!((d.as_secs_f64() * 1000.0).round())
}
