//! Alertmanager's webhook (version 4): `POST /alertmanager`.
//!
//! Each alert of a notification that matches `selector` is an incident of
//! the service in its `service_label`: it opens at `startsAt` and
//! resolves at `endsAt` once Alertmanager says `resolved`. The incident is
//! the alert's `fingerprint` (its label set) and `startsAt`: the same alert
//! firing again later is another incident, and the repeats Alertmanager
//! sends while it fires (`repeat_interval`, `group_interval`) are one.
//! Alertmanager authenticates with the bearer token of its
//! `http_config.authorization`, required here.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FieldError, Outcome, emit, field_error, optional_text, text, time};
use crate::settings::Secret;

/// `receivers.webhook.alertmanager`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerSourceConfig {
    /// The bearer token Alertmanager sends (`http_config.authorization`),
    /// from `${env:NAME}` or `${file:PATH}`.
    pub bearer_token: Secret,
    /// Labels an alert must carry, with these values, to be an incident.
    /// Default: none (every alert is).
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The label naming the service. Default `service`.
    #[serde(default = "default_service_label")]
    pub service_label: String,
    /// The label naming the environment. Default `environment`.
    #[serde(default = "default_environment_label")]
    pub environment_label: String,
    /// The environment of an alert without that label. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_service_label() -> String {
    "service".to_string()
}

fn default_environment_label() -> String {
    "environment".to_string()
}

fn default_environment() -> String {
    "production".to_string()
}

/// Checks the bearer token, in constant time.
pub fn verify(
    config: &AlertmanagerSourceConfig,
    headers: &HeaderMap,
    _body: &[u8],
) -> Result<(), &'static str> {
    super::bearer(&config.bearer_token, headers)
}

/// Translates one notification.
pub fn translate(config: &AlertmanagerSourceConfig, body: &Value) -> Result<Outcome, FieldError> {
    translate_payload(config, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Alertmanager))
}

fn translate_payload(
    config: &AlertmanagerSourceConfig,
    body: &Value,
) -> Result<Outcome, FieldError> {
    match body.get("version").and_then(Value::as_str) {
        Some("4") => {}
        Some(other) => {
            return Err(field_error(
                "version",
                format!("`{other}`: only version 4 of the webhook payload is read"),
            ));
        }
        None => return Err(field_error("version", "missing")),
    }
    let alerts = match body.get("alerts") {
        Some(Value::Array(alerts)) => alerts,
        None | Some(Value::Null) => return Err(field_error("alerts", "missing")),
        Some(_) => return Err(field_error("alerts", "expected an array")),
    };
    let source = optional_text(body, "externalURL").unwrap_or("alertmanager");
    let mut events = Vec::new();
    let mut skipped = 0usize;
    for (i, alert) in alerts.iter().enumerate() {
        let path = |field: &str| format!("alerts[{i}].{field}");
        let in_alert = |e: FieldError| field_error(&path(&e.field), e.problem);
        let label = |name: &str| {
            alert
                .get("labels")
                .and_then(|l| l.get(name))
                .and_then(Value::as_str)
        };
        if !config
            .selector
            .iter()
            .all(|(name, value)| label(name) == Some(value.as_str()))
        {
            skipped += 1;
            continue;
        }
        let Some(service) = label(&config.service_label).filter(|s| !s.is_empty()) else {
            // Not this alert's fault to be refused with the whole group:
            // counted as ignored.
            skipped += 1;
            continue;
        };
        let environment = label(&config.environment_label)
            .filter(|e| !e.is_empty())
            .unwrap_or(&config.environment);
        let fingerprint = text(alert, "fingerprint").map_err(in_alert)?;
        let started = time(alert, "startsAt").map_err(in_alert)?;
        let incident = format!("alertmanager:{fingerprint}:{started}");
        let status = text(alert, "status").map_err(in_alert)?;
        let opened = || {
            let mut event = emit::incident_opened(
                &format!("{incident}:firing"),
                source,
                &started,
                service,
                environment,
                &incident,
                optional_text(alert, "annotations.summary"),
                false,
            );
            // What the incident filters read: the `severity` label, and
            // every label (strings only, as Alertmanager sends them).
            if let Some(severity) = label("severity").filter(|s| !s.is_empty()) {
                event["customData"]["severity"] = json!(severity);
            }
            if let Some(Value::Object(labels)) = alert.get("labels") {
                let labels: serde_json::Map<String, Value> = labels
                    .iter()
                    .filter(|(_, v)| v.is_string())
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                event["customData"]["labels"] = Value::Object(labels);
            }
            event
        };
        match status {
            "firing" => events.push(opened()),
            "resolved" => {
                let ended = time(alert, "endsAt").map_err(in_alert)?;
                // A resolved alert opened too: the firing notification may
                // never have come (doraflow started later, or it was lost).
                events.push(opened());
                events.push(emit::incident_resolved(
                    &format!("{incident}:resolved"),
                    source,
                    &ended,
                    service,
                    environment,
                    &incident,
                ));
            }
            other => {
                return Err(field_error(
                    &path("status"),
                    format!("`{other}` is neither firing nor resolved"),
                ));
            }
        }
    }
    if events.is_empty() {
        return Ok(Outcome::Ignored(format!(
            "{skipped} alerts, none matching the selector with a `{}` label",
            config.service_label
        )));
    }
    Ok(Outcome::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::DeliveryKind;
    use serde_json::json;

    fn config() -> AlertmanagerSourceConfig {
        let mut selector = BTreeMap::new();
        selector.insert("severity".to_string(), "page".to_string());
        AlertmanagerSourceConfig {
            bearer_token: Secret::from("am-token"),
            selector,
            service_label: "service".into(),
            environment_label: "environment".into(),
            environment: "production".into(),
        }
    }

    fn notification(status: &str, alerts: Vec<Value>) -> Value {
        json!({
            "version": "4", "groupKey": "{}:{alertname=\"HighErrorRate\"}", "truncatedAlerts": 0,
            "status": status, "receiver": "doraflow", "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://am:9093", "alerts": alerts,
        })
    }

    fn alert(status: &str, service: Option<&str>, severity: &str, ends: &str) -> Value {
        let mut labels = json!({ "alertname": "HighErrorRate", "severity": severity });
        if let Some(service) = service {
            labels["service"] = json!(service);
        }
        json!({
            "status": status, "labels": labels, "annotations": { "summary": "5% errors" },
            "startsAt": "2024-05-01T12:00:00.123Z", "endsAt": ends,
            "generatorURL": "http://prom:9090/graph", "fingerprint": "c4f6a0b3d2e1f789",
        })
    }

    #[test]
    fn firing_opens_and_resolved_resolves_the_alerts_incident() {
        let firing = notification(
            "firing",
            vec![
                alert("firing", Some("checkout"), "page", "0001-01-01T00:00:00Z"),
                alert("firing", Some("checkout"), "ticket", "0001-01-01T00:00:00Z"),
                alert("firing", None, "page", "0001-01-01T00:00:00Z"),
            ],
        );
        let Outcome::Events(values) = translate(&config(), &firing).unwrap() else {
            panic!()
        };
        let events = crate::cdevents::decode_values(&values).unwrap();
        assert_eq!(events.len(), 1, "only the paging alert with a service");
        let incident = "alertmanager:c4f6a0b3d2e1f789:2024-05-01T12:00:00.123Z";
        assert_eq!(events[0].id, format!("{incident}:firing"));
        assert_eq!(events[0].time, 1_714_564_800_123_000_000);
        assert_eq!(
            events[0].kind,
            DeliveryKind::IncidentOpened {
                incident: incident.into(),
                service: "checkout".into(),
                environment: "production".into(),
                artifact: None,
                details: crate::model::delivery::IncidentDetails {
                    source: crate::model::delivery::Source::Alertmanager,
                    severity: Some("page".into()),
                    labels: vec![
                        ("alertname".into(), "HighErrorRate".into()),
                        ("service".into(), "checkout".into()),
                        ("severity".into(), "page".into()),
                    ],
                    ..Default::default()
                },
            }
        );
        let resolved = notification(
            "resolved",
            vec![alert(
                "resolved",
                Some("checkout"),
                "page",
                "2024-05-01T12:30:00Z",
            )],
        );
        let Outcome::Events(values) = translate(&config(), &resolved).unwrap() else {
            panic!()
        };
        let events = crate::cdevents::decode_values(&values).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].id, format!("{incident}:resolved"));
        assert_eq!(events[1].time, 1_714_566_600_000_000_000);
        assert_eq!(
            events[1].kind,
            DeliveryKind::IncidentResolved {
                incident: incident.into()
            }
        );
    }

    #[test]
    fn nothing_matching_is_ignored_and_bad_payloads_are_named() {
        let none = notification(
            "firing",
            vec![alert(
                "firing",
                Some("checkout"),
                "ticket",
                "0001-01-01T00:00:00Z",
            )],
        );
        assert!(matches!(
            translate(&config(), &none),
            Ok(Outcome::Ignored(_))
        ));
        let mut v3 = none.clone();
        v3["version"] = json!("3");
        assert_eq!(translate(&config(), &v3).unwrap_err().field, "version");
        let mut bad = notification(
            "firing",
            vec![alert(
                "firing",
                Some("checkout"),
                "page",
                "0001-01-01T00:00:00Z",
            )],
        );
        bad["alerts"][0]["startsAt"] = json!("soon");
        assert_eq!(
            translate(&config(), &bad).unwrap_err().field,
            "alerts[0].startsAt"
        );
    }
}
