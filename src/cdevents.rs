//! CDEvents decoding: JSON (v0.4 and v0.5) to [`DeliveryEvent`]s.
//!
//! Types are matched on subject and predicate, any version
//! (`dev.cdevents.service.deployed.0.2.0` and `...0.3.0` alike). An event is
//! accepted in three shapes: a bare CDEvent (`context` + `subject`), a
//! CloudEvents structured-mode envelope whose `data` is the CDEvent, or (in
//! binary mode) a body that is the CDEvent with `ce-*` headers. Every error
//! names the field path and what was wrong, so a producer can fix it.

pub mod synth;

use chrono::DateTime;
use serde_json::Value;

use crate::model::delivery::{
    ChangeStage, DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, IncidentDetails,
    LinkedChange, Nanos, Source, service_name,
};

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct EventError {
    /// The field, e.g. `context.timestamp` or `subject.content.environment.id`.
    pub path: String,
    /// What was wrong with it.
    pub problem: String,
}

fn error(path: &str, problem: impl Into<String>) -> EventError {
    EventError {
        path: path.to_string(),
        problem: problem.into(),
    }
}

/// Follows `path` (dot-separated) from `root`.
fn at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, key| v.get(key))
}

fn required_str<'a>(root: &'a Value, path: &str) -> Result<&'a str, EventError> {
    match at(root, path) {
        None | Some(Value::Null) => Err(error(path, "missing")),
        Some(Value::String(s)) if s.trim().is_empty() => Err(error(path, "empty")),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(error(
            path,
            format!("expected a string, found {}", kind_of(other)),
        )),
    }
}

fn optional_str<'a>(root: &'a Value, path: &str) -> Result<Option<&'a str>, EventError> {
    match at(root, path) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(error(
            path,
            format!("expected a string, found {}", kind_of(other)),
        )),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses an RFC 3339 timestamp to nanoseconds since the epoch.
pub fn parse_timestamp(path: &str, text: &str) -> Result<Nanos, EventError> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| {
            error(
                path,
                format!("`{text}` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z"),
            )
        })
}

/// Decodes one event in any of the accepted shapes.
pub fn decode_event(value: &Value) -> Result<DeliveryEvent, EventError> {
    if !value.is_object() {
        return Err(error(
            "event",
            format!("expected a JSON object, found {}", kind_of(value)),
        ));
    }
    // A CloudEvents structured-mode envelope carries the CDEvent in `data`.
    if value.get("context").is_none() && value.get("specversion").is_some() {
        let data = value.get("data").ok_or_else(|| {
            error(
                "data",
                "missing: a CloudEvent must carry the CDEvent in `data`",
            )
        })?;
        return decode_cdevent(data).map_err(|e| EventError {
            path: format!("data.{}", e.path),
            problem: e.problem,
        });
    }
    decode_cdevent(value)
}

/// Decodes a CDEvent (`context` + `subject`).
pub fn decode_cdevent(event: &Value) -> Result<DeliveryEvent, EventError> {
    if !event.is_object() {
        return Err(error(
            "event",
            format!("expected a JSON object, found {}", kind_of(event)),
        ));
    }
    let id = required_str(event, "context.id")?.to_string();
    let event_type = required_str(event, "context.type")?;
    required_str(event, "context.source")?;
    let time = parse_timestamp(
        "context.timestamp",
        required_str(event, "context.timestamp")?,
    )?;
    let (subject, predicate) = split_type(event_type)?;
    match at(event, "subject") {
        Some(Value::Object(_)) => {}
        None | Some(Value::Null) => return Err(error("subject", "missing")),
        Some(other) => {
            return Err(error(
                "subject",
                format!("expected an object, found {}", kind_of(other)),
            ));
        }
    }
    let kind = match (subject, predicate) {
        ("service", "deployed" | "upgraded" | "rolledback") => {
            // `customData.outcome` is doraflow's extension for a deployment
            // that was attempted and failed (CDEvents has no such event; the
            // native sources forward failed deployments this way).
            let outcome = match (predicate, optional_str(event, "customData.outcome")?) {
                ("rolledback", _) => DeploymentOutcome::Rollback,
                (_, None | Some("success")) => DeploymentOutcome::Success,
                (_, Some("failure" | "error")) => DeploymentOutcome::Failure,
                (_, Some(other)) => {
                    return Err(error(
                        "customData.outcome",
                        format!("`{other}` is not one of success, failure, error"),
                    ));
                }
            };
            DeliveryKind::Deployment(Deployment {
                rework: at(event, "customData.rework") == Some(&Value::Bool(true)),
                team: optional_str(event, "customData.team")?.map(str::to_string),
                service: service_name(required_str(event, "subject.id")?).to_string(),
                environment: required_str(event, "subject.content.environment.id")?.to_string(),
                artifact: optional_str(event, "subject.content.artifactId")?.map(str::to_string),
                outcome,
                changes: linked_changes(event)?,
                revision: optional_str(event, "customData.revision")?.map(str::to_string),
                source: source_of(event),
            })
        }
        // A revision of a repository (a push): doraflow's extension, which
        // the native sources forward and read back.
        ("change", "merged") if at(event, "customData.revision").is_some() => {
            DeliveryKind::Revision {
                revision: required_str(event, "customData.revision")?.to_string(),
                parent: optional_str(event, "customData.parent")?.map(str::to_string),
                changes: linked_changes(event)?,
            }
        }
        // A change labelled rework: doraflow's extension, as the GitHub and
        // GitLab sources forward a hotfix-labelled merge.
        ("change", "updated") if at(event, "customData.rework") == Some(&Value::Bool(true)) => {
            DeliveryKind::ChangeRework {
                change: required_str(event, "subject.id")?.to_string(),
            }
        }
        // A pull request's merge commit dated from its first commit:
        // doraflow's extension, as the GitHub source forwards it.
        ("change", "merged") if at(event, "customData.firstCommitOf").is_some() => {
            let commits = at(event, "customData.firstCommitOf.commits")
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    error("customData.firstCommitOf.commits", "missing or not a count")
                })?;
            DeliveryKind::ChangeFromCommits {
                change: required_str(event, "subject.id")?.to_string(),
                head: required_str(event, "customData.firstCommitOf.revision")?.to_string(),
                commits,
            }
        }
        ("change", "created" | "merged") => DeliveryKind::Change {
            change: required_str(event, "subject.id")?.to_string(),
            stage: if predicate == "created" {
                ChangeStage::Created
            } else {
                ChangeStage::Merged
            },
        },
        ("artifact", "packaged" | "published") => {
            let artifact = required_str(event, "subject.id")?.to_string();
            match optional_str(event, "subject.content.change.id")? {
                Some(change) => DeliveryKind::ArtifactLink {
                    artifact,
                    change: change.to_string(),
                },
                None => DeliveryKind::Other {
                    event_type: format!("{subject}.{predicate}"),
                },
            }
        }
        // doraflow's extension for a resolved incident opened again, as
        // PagerDuty's `incident.reopened` is forwarded.
        ("incident", "detected" | "reported")
            if at(event, "customData.reopened") == Some(&Value::Bool(true)) =>
        {
            DeliveryKind::IncidentReopened {
                incident: required_str(event, "subject.id")?.to_string(),
            }
        }
        ("incident", "detected" | "reported") => DeliveryKind::IncidentOpened {
            incident: required_str(event, "subject.id")?.to_string(),
            service: service_name(required_str(event, "subject.content.service.id")?).to_string(),
            environment: required_str(event, "subject.content.environment.id")?.to_string(),
            artifact: optional_str(event, "subject.content.artifactId")?.map(str::to_string),
            details: incident_details(event)?,
        },
        ("incident", "resolved") => DeliveryKind::IncidentResolved {
            incident: required_str(event, "subject.id")?.to_string(),
        },
        ("pipelinerun", "finished") => {
            let outcome = optional_str(event, "subject.content.outcome")?;
            match outcome {
                Some("failure") | Some("error") => DeliveryKind::PipelineFailed {
                    pipeline: required_str(event, "subject.content.pipelineName")?.to_string(),
                    service: optional_str(event, "customData.service")?
                        .map(|s| service_name(s).to_string()),
                    environment: optional_str(event, "customData.environment")?.map(str::to_string),
                },
                _ => DeliveryKind::Other {
                    event_type: format!("{subject}.{predicate}"),
                },
            }
        }
        _ => DeliveryKind::Other {
            event_type: format!("{subject}.{predicate}"),
        },
    };
    Ok(DeliveryEvent { id, time, kind })
}

/// The tool an event came from: a native source's `customData.source`,
/// else `cdevents` (a name doraflow does not know is a producer of its own,
/// and the event is no less valid for it).
fn source_of(event: &Value) -> Source {
    at(event, "customData.source")
        .and_then(Value::as_str)
        .and_then(Source::parse)
        .unwrap_or_default()
}

/// `customData.severity`, `.urgency`, `.priority` (strings) and `.labels`
/// (an object of strings) on an incident: doraflow's extension, which the
/// PagerDuty and Alertmanager sources fill and the incident filters read.
fn incident_details(event: &Value) -> Result<IncidentDetails, EventError> {
    let labels = match at(event, "customData.labels") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(labels)) => {
            let mut out = Vec::with_capacity(labels.len());
            for (name, value) in labels {
                let Value::String(value) = value else {
                    return Err(error(
                        &format!("customData.labels.{name}"),
                        format!("expected a string, found {}", kind_of(value)),
                    ));
                };
                out.push((name.clone(), value.clone()));
            }
            out.sort_unstable();
            out
        }
        Some(other) => {
            return Err(error(
                "customData.labels",
                format!("expected an object, found {}", kind_of(other)),
            ));
        }
    };
    let field = |name: &str| {
        optional_str(event, &format!("customData.{name}")).map(|v| v.map(str::to_string))
    };
    Ok(IncidentDetails {
        source: source_of(event),
        severity: field("severity")?,
        urgency: field("urgency")?,
        priority: field("priority")?,
        labels,
        deployed_at: None,
    })
}

/// `dev.cdevents.<subject>.<predicate>.<version>` → (subject, predicate).
fn split_type(event_type: &str) -> Result<(&str, &str), EventError> {
    let bad = || {
        error(
            "context.type",
            format!(
                "`{event_type}` is not a CDEvents type (dev.cdevents.<subject>.<predicate>.<version>)"
            ),
        )
    };
    let rest = event_type.strip_prefix("dev.cdevents.").ok_or_else(bad)?;
    let mut parts = rest.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(subject), Some(predicate), Some(version))
            if !subject.is_empty() && !predicate.is_empty() && !version.is_empty() =>
        {
            Ok((subject, predicate))
        }
        _ => Err(bad()),
    }
}

/// `customData.changes: [{"id": ..., "timestamp": ...}]` on a deployment
/// or a revision.
fn linked_changes(event: &Value) -> Result<Vec<LinkedChange>, EventError> {
    let Some(changes) = at(event, "customData.changes") else {
        return Ok(Vec::new());
    };
    let Value::Array(changes) = changes else {
        return Err(error(
            "customData.changes",
            format!("expected an array, found {}", kind_of(changes)),
        ));
    };
    changes
        .iter()
        .enumerate()
        .map(|(i, change)| {
            let path = |field: &str| format!("customData.changes[{i}].{field}");
            let id = match change.get("id") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return Err(error(&path("id"), "missing or not a string")),
            };
            let time = match change.get("timestamp") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(parse_timestamp(&path("timestamp"), t)?),
                Some(other) => {
                    return Err(error(
                        &path("timestamp"),
                        format!("expected a string, found {}", kind_of(other)),
                    ));
                }
            };
            Ok(LinkedChange { id, time })
        })
        .collect()
}

/// Why a webhook body was refused: which event, and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Not JSON at all.
    #[error("malformed JSON: {0}")]
    Json(String),
    /// An event in it was refused.
    #[error("event {index}: {error}")]
    Event {
        /// Position in the batch, from 0 (0 for a single event).
        index: usize,
        /// What was wrong.
        error: EventError,
    },
    /// A batch body was not a JSON array.
    #[error("a batch (application/cloudevents-batch+json) must be a JSON array, found {0}")]
    NotABatch(&'static str),
    /// An empty batch.
    #[error("the batch is empty")]
    Empty,
}

/// Decodes a whole body: a single event, or a batch when `batch` is set or
/// the body is an array. All or nothing: one bad event refuses the body.
pub fn decode_body(body: &[u8], batch: bool) -> Result<Vec<DeliveryEvent>, BodyError> {
    decode_values(&parse_body(body, batch)?)
}

/// Parses a body into its events' JSON, checking the batch shape only.
pub fn parse_body(body: &[u8], batch: bool) -> Result<Vec<Value>, BodyError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    match value {
        Value::Array(events) if events.is_empty() => Err(BodyError::Empty),
        Value::Array(events) => Ok(events),
        other if batch => Err(BodyError::NotABatch(kind_of(&other))),
        other => Ok(vec![other]),
    }
}

/// Decodes parsed events, all or nothing.
pub fn decode_values(values: &[Value]) -> Result<Vec<DeliveryEvent>, BodyError> {
    values
        .iter()
        .enumerate()
        .map(|(index, event)| {
            decode_event(event).map_err(|error| BodyError::Event { index, error })
        })
        .collect()
}

/// The CloudEvents attributes of a binary-mode message (HTTP `ce-*` or Kafka
/// `ce_*` headers), as a CDEvent `context`.
#[derive(Debug, Clone, Default)]
pub struct BinaryContext {
    /// `ce-id`.
    pub id: Option<String>,
    /// `ce-type`.
    pub event_type: Option<String>,
    /// `ce-source`.
    pub source: Option<String>,
    /// `ce-time`.
    pub time: Option<String>,
}

/// Decodes a binary-mode event: the CDEvent in the body, its context from
/// the CloudEvents attributes when the body has none. Returns the event in
/// structured form too (for forwarding).
pub fn decode_binary(
    body: &[u8],
    context: &BinaryContext,
) -> Result<(DeliveryEvent, Value), BodyError> {
    let mut event: Value =
        serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    if let Value::Object(map) = &mut event
        && !map.contains_key("context")
    {
        let text = |v: &Option<String>| v.clone().map(Value::String).unwrap_or(Value::Null);
        map.insert(
            "context".to_string(),
            serde_json::json!({
                "id": text(&context.id),
                "type": text(&context.event_type),
                "source": text(&context.source),
                "timestamp": text(&context.time),
            }),
        );
    }
    let decoded = decode_cdevent(&event).map_err(|error| BodyError::Event { index: 0, error })?;
    Ok((decoded, event))
}

/// The partition key of an event when forwarded: its service, so one
/// service's deployments and incidents land on one partition, hence one
/// replica of a cluster tier. An event that names no service (a change, an
/// artifact) is keyed by its subject id, which keeps its own lifecycle
/// (created, merged) together.
pub fn forward_key(value: &Value, event: &DeliveryEvent) -> String {
    match &event.kind {
        DeliveryKind::Deployment(d) => return d.service.clone(),
        DeliveryKind::IncidentOpened { service, .. } if !service.is_empty() => {
            return service.clone();
        }
        DeliveryKind::PipelineFailed {
            service: Some(service),
            ..
        } => return service_name(service).to_string(),
        _ => {}
    }
    // A CloudEvents envelope carries the CDEvent in `data`.
    let cdevent = match value.get("context") {
        Some(_) => value,
        None => value.get("data").unwrap_or(value),
    };
    let named = [
        "/subject/content/service/id",
        "/customData/service",
        "/subject/id",
    ];
    named
        .iter()
        .find_map(|pointer| cdevent.pointer(pointer).and_then(Value::as_str))
        .map(|s| service_name(s).to_string())
        .unwrap_or_else(|| event.id.clone())
}

/// An incident doraflow derived from a service's error ratio, with the
/// series it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedIncident {
    /// The event applied (`IncidentOpened` or `IncidentResolved`).
    pub event: DeliveryEvent,
    /// The service whose error ratio crossed the threshold.
    pub service: String,
    /// Its environment.
    pub environment: String,
}

impl DerivedIncident {
    /// The event as a CDEvent v0.5 (`incident.detected` or
    /// `incident.resolved`), so a downstream doraflow or any CDEvents
    /// consumer reads it like one from a monitoring tool.
    pub fn to_cdevent(&self) -> Value {
        let (kind, incident, description) = match &self.event.kind {
            DeliveryKind::IncidentResolved { incident } => (
                "dev.cdevents.incident.resolved.0.3.0",
                incident.as_str(),
                "error ratio back at or below the threshold",
            ),
            DeliveryKind::IncidentOpened { incident, .. } => (
                "dev.cdevents.incident.detected.0.3.0",
                incident.as_str(),
                "error ratio above the threshold",
            ),
            _ => (
                "dev.cdevents.incident.detected.0.3.0",
                self.event.id.as_str(),
                "",
            ),
        };
        serde_json::json!({
            "context": {
                "specversion": "0.5.1",
                "id": self.event.id,
                "source": "/doraflow/derived-incidents",
                "type": kind,
                "timestamp": format_timestamp(self.event.time),
            },
            "subject": {
                "id": incident,
                "source": "/doraflow/derived-incidents",
                "content": {
                    "description": description,
                    "environment": { "id": self.environment },
                    "service": { "id": self.service },
                },
            },
            "customData": { "source": Source::Doraflow.as_str() },
        })
    }
}

/// RFC 3339 with nanoseconds, UTC.
fn format_timestamp(nanos: Nanos) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployed(id: &str, service: &str, env: &str, ts: &str) -> Value {
        json!({
            "context": {"specversion": "0.5.1", "id": id, "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": ts},
            "subject": {"id": service, "content": {"environment": {"id": env}, "artifactId": "pkg:oci/app@sha256:1"}}
        })
    }

    #[test]
    fn a_deployment_with_linked_changes() {
        let mut event = deployed(
            "e1",
            "service/checkout",
            "production",
            "2024-05-01T12:00:00Z",
        );
        event["customData"] = json!({"changes": [{"id": "c1", "timestamp": "2024-04-30T12:00:00Z"}, {"id": "c2"}], "team": "payments"});
        let decoded = decode_event(&event).unwrap();
        assert_eq!(decoded.id, "e1");
        assert_eq!(decoded.time, 1_714_564_800_000_000_000);
        let DeliveryKind::Deployment(d) = decoded.kind else {
            panic!("not a deployment")
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str()),
            ("checkout", "production")
        );
        assert_eq!(d.artifact.as_deref(), Some("pkg:oci/app@sha256:1"));
        assert_eq!(d.outcome, DeploymentOutcome::Success);
        assert_eq!(d.team.as_deref(), Some("payments"));
        assert_eq!(
            d.changes,
            vec![
                LinkedChange {
                    id: "c1".into(),
                    time: Some(1_714_478_400_000_000_000)
                },
                LinkedChange {
                    id: "c2".into(),
                    time: None
                },
            ]
        );
    }

    #[test]
    fn v04_and_v05_types_match_on_subject_and_predicate() {
        let mut event = deployed("e1", "a", "prod", "2024-05-01T12:00:00Z");
        event["context"]["type"] = json!("dev.cdevents.service.rolledback.0.2.0");
        let DeliveryKind::Deployment(d) = decode_event(&event).unwrap().kind else {
            panic!()
        };
        assert_eq!(d.outcome, DeploymentOutcome::Rollback);
    }

    #[test]
    fn a_cloudevents_envelope_carries_the_cdevent_in_data() {
        let envelope = json!({"specversion": "1.0", "id": "x", "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0",
            "data": deployed("e9", "a", "prod", "2024-05-01T12:00:00+02:00")});
        let decoded = decode_event(&envelope).unwrap();
        assert_eq!(decoded.id, "e9");
        assert_eq!(decoded.time, 1_714_557_600_000_000_000);
    }

    #[test]
    fn errors_name_the_field_and_the_problem() {
        let cases = [
            (json!({"context": {}}), "context.id: missing"),
            (
                {
                    let mut e = deployed("e1", "a", "prod", "yesterday");
                    e["context"]["timestamp"] = json!("yesterday");
                    e
                },
                "context.timestamp: `yesterday` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
            ),
            (
                {
                    let mut e = deployed("e1", "a", "prod", "2024-05-01T12:00:00Z");
                    e["subject"]["content"]["environment"]["id"] = json!(7);
                    e
                },
                "subject.content.environment.id: expected a string, found a number",
            ),
            (
                {
                    let mut e = deployed("e1", "a", "prod", "2024-05-01T12:00:00Z");
                    e["context"]["type"] = json!("com.example.deployed");
                    e
                },
                "context.type: `com.example.deployed` is not a CDEvents type (dev.cdevents.<subject>.<predicate>.<version>)",
            ),
            (
                {
                    let mut e = deployed("e1", "a", "prod", "2024-05-01T12:00:00Z");
                    e["subject"]["content"] = json!({});
                    e
                },
                "subject.content.environment.id: missing",
            ),
        ];
        for (event, message) in cases {
            assert_eq!(decode_event(&event).unwrap_err().to_string(), message);
        }
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let good = deployed("e1", "a", "prod", "2024-05-01T12:00:00Z");
        let mut bad = good.clone();
        bad["context"]["id"] = json!("");
        let body = serde_json::to_vec(&json!([good, bad])).unwrap();
        assert_eq!(
            decode_body(&body, true).unwrap_err().to_string(),
            "event 1: context.id: empty"
        );
        let single = serde_json::to_vec(&good).unwrap();
        assert!(matches!(
            decode_body(&single, true),
            Err(BodyError::NotABatch("an object"))
        ));
        assert_eq!(decode_body(&single, false).unwrap().len(), 1);
        assert_eq!(decode_body(b"[]", true), Err(BodyError::Empty));
        assert!(matches!(decode_body(b"{", false), Err(BodyError::Json(_))));
    }

    #[test]
    fn forwarded_events_are_keyed_by_their_service() {
        let deployment = deployed(
            "e1",
            "/cluster/ns/checkout",
            "production",
            "2024-05-01T12:00:00Z",
        );
        let key = |v: &Value| forward_key(v, &decode_event(v).unwrap());
        assert_eq!(key(&deployment), "checkout");
        let envelope = json!({"specversion": "1.0", "id": "x", "source": "/ci", "type": "t", "data": deployment});
        assert_eq!(key(&envelope), "checkout");
        let resolved = json!({
            "context": {"specversion": "0.5.1", "id": "r1", "source": "/mon", "type": "dev.cdevents.incident.resolved.0.3.0", "timestamp": "2024-05-01T12:00:00Z"},
            "subject": {"id": "inc-7", "content": {"environment": {"id": "production"}, "service": {"id": "service/payments"}}}
        });
        assert_eq!(key(&resolved), "payments");
        let change = json!({
            "context": {"specversion": "0.5.1", "id": "c1", "source": "/scm", "type": "dev.cdevents.change.merged.0.3.0", "timestamp": "2024-05-01T12:00:00Z"},
            "subject": {"id": "pr-42", "content": {"repository": {"id": "app"}}}
        });
        assert_eq!(key(&change), "pr-42");
    }

    #[test]
    fn derived_incidents_become_cdevents_that_decode_back() {
        let opened = DerivedIncident {
            event: DeliveryEvent {
                id: "derived:checkout:production:5:opened".into(),
                time: 1_714_564_800_123_456_789,
                kind: DeliveryKind::IncidentOpened {
                    incident: "derived:checkout:production:5".into(),
                    service: "checkout".into(),
                    environment: "production".into(),
                    artifact: None,
                    details: IncidentDetails {
                        source: Source::Doraflow,
                        ..Default::default()
                    },
                },
            },
            service: "checkout".into(),
            environment: "production".into(),
        };
        let json = opened.to_cdevent();
        assert_eq!(
            json["context"]["type"],
            "dev.cdevents.incident.detected.0.3.0"
        );
        assert_eq!(
            json["context"]["timestamp"],
            "2024-05-01T12:00:00.123456789Z"
        );
        assert_eq!(decode_event(&json).unwrap(), opened.event);

        let resolved = DerivedIncident {
            event: DeliveryEvent {
                id: "derived:checkout:production:5:resolved".into(),
                time: 1_714_564_900_000_000_000,
                kind: DeliveryKind::IncidentResolved {
                    incident: "derived:checkout:production:5".into(),
                },
            },
            ..opened
        };
        let json = resolved.to_cdevent();
        assert_eq!(
            json["context"]["type"],
            "dev.cdevents.incident.resolved.0.3.0"
        );
        assert_eq!(decode_event(&json).unwrap(), resolved.event);
        assert_eq!(forward_key(&json, &resolved.event), "checkout");
    }
}
