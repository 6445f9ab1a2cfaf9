//! A synthetic delivery history, for replay tests and benchmarks: per
//! deployment a `change.created`, an `artifact.packaged` (linking the change)
//! and a `service.deployed` to production, over 50 services; every tenth
//! deployment is followed by an incident one hour later, resolved two hours
//! after that. Deterministic for a given `now`.
//!
//! Every timestamp is a whole number of hours plus 30 minutes before `now`
//! (up to 700 hours back), so no event lies within 30 minutes of a window
//! boundary: a run that starts within 30 minutes of `now` sees exactly the
//! same events in each window, whenever it runs.

use serde_json::{Value, json};

/// Services the history spreads over.
pub const SERVICES: u64 = 50;
/// Hours back the history reaches.
pub const HOURS: u64 = 700;

fn timestamp(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The first `count` events of the history ending at `now` (Unix seconds).
pub fn history(count: usize, now: i64) -> impl Iterator<Item = Value> {
    (0u64..)
        .flat_map(move |d| deployment_events(d, now))
        .take(count)
}

fn deployment_events(d: u64, now: i64) -> Vec<Value> {
    let service = format!("service-{:02}", d % SERVICES);
    let slot = (d.wrapping_mul(7_919)) % HOURS;
    let at = now - 1_800 - slot as i64 * 3_600;
    let lead = (d % 12 + 1) as i64 * 3_600;
    let artifact = format!("pkg:oci/{service}@sha256:{d:016x}");
    let mut events = vec![
        json!({
            "context": {"specversion": "0.5.1", "id": format!("c-{d}"), "source": "/scm", "type": "dev.cdevents.change.created.0.4.0", "timestamp": timestamp(at - lead)},
            "subject": {"id": format!("change-{d}"), "source": "/scm"}
        }),
        json!({
            "context": {"specversion": "0.5.1", "id": format!("a-{d}"), "source": "/ci", "type": "dev.cdevents.artifact.packaged.0.3.0", "timestamp": timestamp(at - 3_600)},
            "subject": {"id": artifact, "source": "/ci", "content": {"change": {"id": format!("change-{d}")}}}
        }),
        json!({
            "context": {"specversion": "0.5.1", "id": format!("d-{d}"), "source": "/cd", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": timestamp(at)},
            "subject": {"id": format!("service/{service}"), "source": "/cd", "content": {"environment": {"id": "production"}, "artifactId": artifact}}
        }),
    ];
    if d % 10 == 3 {
        for (kind, offset) in [("detected", 3_600), ("resolved", 3 * 3_600)] {
            events.push(json!({
                "context": {"specversion": "0.5.1", "id": format!("i-{d}-{kind}"), "source": "/monitoring", "type": format!("dev.cdevents.incident.{kind}.0.3.0"), "timestamp": timestamp(at + offset)},
                "subject": {"id": format!("incident-{d}"), "source": "/monitoring", "content": {"environment": {"id": "production"}, "service": {"id": service}}}
            }));
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_is_deterministic_and_decodes() {
        let now = 1_764_000_000;
        let a: Vec<Value> = history(100, now).collect();
        assert_eq!(a.len(), 100);
        assert_eq!(a, history(100, now).collect::<Vec<_>>());
        for event in &a {
            super::super::decode_event(event).expect("a valid CDEvent");
            let ts = event["context"]["timestamp"].as_str().unwrap();
            let t = chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap()
                .timestamp();
            // Half past a whole hour before `now`, or after it.
            assert_eq!((now - t).rem_euclid(3_600), 1_800, "{ts}");
        }
    }
}
