//! PagerDuty's Webhooks v3: `POST /pagerduty`.
//!
//! `X-PagerDuty-Signature` holds one or more `v1=<hex HMAC-SHA256 of the
//! body>` (several while the subscription's secret rotates); one of them
//! must match the secret (or the previous one).
//!
//! | `event.event_type` | becomes |
//! |---|---|
//! | `incident.triggered` | an incident of the service opens, at the incident's `created_at` |
//! | `incident.resolved` | it resolves, at `occurred_at` |
//! | `incident.reopened` | it opens again: the resolution before did not restore service |
//! | `incident.acknowledged` | accepted, counted (acknowledging restores nothing) |
//! | `pagey.ping` | answered |
//! | anything else | accepted, counted, ignored |
//!
//! The PagerDuty service is the doraflow service of its name, or of the
//! name or id in the `services` table.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FieldError, Outcome, emit, field_error, optional_text, text, time};
use crate::settings::Secret;

/// `receivers.webhook.pagerduty`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerdutyConfig {
    /// The webhook subscription's signing secret, from `${env:NAME}` or
    /// `${file:PATH}`.
    pub secret: Secret,
    /// The secret before the current one, accepted too while a rotation
    /// is under way. Default: none.
    #[serde(default)]
    pub previous_secret: Option<Secret>,
    /// PagerDuty service (its name, or its id such as `PF9KMXH`) → doraflow
    /// service. Default: the PagerDuty service's name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// The environment of PagerDuty's incidents. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_environment() -> String {
    "production".to_string()
}

/// Checks `X-PagerDuty-Signature`: any of its `v1=` signatures made with
/// the secret (or the previous one).
pub fn verify(
    config: &PagerdutyConfig,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), &'static str> {
    let header = headers
        .get("x-pagerduty-signature")
        .ok_or("the X-PagerDuty-Signature header is missing")?
        .to_str()
        .map_err(|_| "X-PagerDuty-Signature is not text")?;
    let given: Vec<&str> = header
        .split(',')
        .filter_map(|s| s.trim().strip_prefix("v1="))
        .collect();
    if given.is_empty() {
        return Err("X-PagerDuty-Signature has no `v1=<hex>` signature");
    }
    let secrets: Vec<&Secret> = std::iter::once(&config.secret)
        .chain(config.previous_secret.as_ref())
        .collect();
    // Every pair is tried, so the time does not say which one matched.
    let matched = given.iter().fold(false, |any, signature| {
        secrets.iter().fold(any, |any, secret| {
            super::hmac_matches(secret, body, signature) | any
        })
    });
    if matched {
        Ok(())
    } else {
        Err("no signature matches")
    }
}

/// Translates one delivery.
pub fn translate(config: &PagerdutyConfig, body: &Value) -> Result<Outcome, FieldError> {
    translate_payload(config, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Pagerduty))
}

fn translate_payload(config: &PagerdutyConfig, body: &Value) -> Result<Outcome, FieldError> {
    let event_type = text(body, "event.event_type")?;
    let reopened = match event_type {
        "pagey.ping" => return Ok(Outcome::Pong(json!({ "pong": true }))),
        "incident.triggered" => false,
        "incident.reopened" => true,
        "incident.resolved" => return resolved(config, body),
        other => return Ok(Outcome::Ignored(format!("event `{other}`"))),
    };
    let event_id = text(body, "event.id")?;
    let incident = incident_id(body)?;
    let service = service(config, body)?;
    let at = if reopened {
        time(body, "event.occurred_at")?
    } else {
        // The incident's own creation: `occurred_at` is when the event
        // was made, which may lag it.
        match optional_text(body, "event.data.created_at") {
            Some(_) => time(body, "event.data.created_at")?,
            None => time(body, "event.occurred_at")?,
        }
    };
    let mut event = emit::incident_opened(
        &format!("pagerduty:{event_id}"),
        &source(body),
        &at,
        &service,
        &config.environment,
        &incident,
        optional_text(body, "event.data.title"),
        reopened,
    );
    // What the incident filters read: `high` or `low`, and `P1`..`P5`
    // where the account uses priorities.
    if let Some(urgency) = optional_text(body, "event.data.urgency") {
        event["customData"]["urgency"] = json!(urgency);
    }
    if let Some(priority) = optional_text(body, "event.data.priority.summary") {
        event["customData"]["priority"] = json!(priority);
    }
    Ok(Outcome::Events(vec![event]))
}

fn resolved(config: &PagerdutyConfig, body: &Value) -> Result<Outcome, FieldError> {
    let event_id = text(body, "event.id")?;
    let incident = incident_id(body)?;
    let service = service(config, body)?;
    let at = time(body, "event.occurred_at")?;
    Ok(Outcome::Events(vec![emit::incident_resolved(
        &format!("pagerduty:{event_id}"),
        &source(body),
        &at,
        &service,
        &config.environment,
        &incident,
    )]))
}

fn incident_id(body: &Value) -> Result<String, FieldError> {
    Ok(format!("pagerduty:{}", text(body, "event.data.id")?))
}

fn source(body: &Value) -> String {
    optional_text(body, "event.data.html_url")
        .or_else(|| optional_text(body, "event.data.self"))
        .unwrap_or("https://pagerduty.com")
        .to_string()
}

fn service(config: &PagerdutyConfig, body: &Value) -> Result<String, FieldError> {
    let name = optional_text(body, "event.data.service.summary");
    let id = optional_text(body, "event.data.service.id");
    if name.is_none() && id.is_none() {
        return Err(field_error(
            "event.data.service",
            "missing: the incident's service (summary or id) names the doraflow service",
        ));
    }
    let mapped = name
        .and_then(|n| config.services.get(n))
        .or_else(|| id.and_then(|i| config.services.get(i)));
    Ok(mapped
        .cloned()
        .or_else(|| name.map(str::to_string))
        .or_else(|| id.map(str::to_string))
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::DeliveryKind;

    fn config() -> PagerdutyConfig {
        let mut services = BTreeMap::new();
        services.insert("Checkout API".to_string(), "checkout".to_string());
        PagerdutyConfig {
            secret: Secret::from("pd-secret"),
            previous_secret: None,
            services,
            environment: "production".into(),
        }
    }

    fn event(event_type: &str, id: &str, at: &str) -> Value {
        json!({ "event": {
            "id": id, "event_type": event_type, "resource_type": "incident", "occurred_at": at,
            "data": { "id": "Q1", "type": "incident", "status": "triggered", "number": 7,
                      "created_at": "2024-05-01T11:59:00Z", "title": "p95 above 500 ms",
                      "html_url": "https://acme.pagerduty.com/incidents/Q1",
                      "service": { "id": "PSVC1", "summary": "Checkout API", "type": "service_reference" },
                      "urgency": "high" },
        }})
    }

    fn decoded(outcome: Outcome) -> Vec<crate::model::delivery::DeliveryEvent> {
        match outcome {
            Outcome::Events(values) => crate::cdevents::decode_values(&values).unwrap(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn triggered_resolved_and_reopened_incidents() {
        let opened = decoded(
            translate(
                &config(),
                &event("incident.triggered", "E1", "2024-05-01T12:00:00Z"),
            )
            .unwrap(),
        );
        assert_eq!(opened[0].id, "pagerduty:E1");
        // The incident's created_at, not the event's occurred_at.
        assert_eq!(opened[0].time, 1_714_564_740_000_000_000);
        assert_eq!(
            opened[0].kind,
            DeliveryKind::IncidentOpened {
                incident: "pagerduty:Q1".into(),
                service: "checkout".into(),
                environment: "production".into(),
                artifact: None,
                details: crate::model::delivery::IncidentDetails {
                    source: crate::model::delivery::Source::Pagerduty,
                    urgency: Some("high".into()),
                    ..Default::default()
                },
            }
        );
        let resolved = decoded(
            translate(
                &config(),
                &event("incident.resolved", "E2", "2024-05-01T13:00:00Z"),
            )
            .unwrap(),
        );
        assert_eq!(resolved[0].time, 1_714_568_400_000_000_000);
        assert_eq!(
            resolved[0].kind,
            DeliveryKind::IncidentResolved {
                incident: "pagerduty:Q1".into()
            }
        );
        let reopened = decoded(
            translate(
                &config(),
                &event("incident.reopened", "E3", "2024-05-01T13:30:00Z"),
            )
            .unwrap(),
        );
        assert_eq!(
            reopened[0].kind,
            DeliveryKind::IncidentReopened {
                incident: "pagerduty:Q1".into()
            }
        );
    }

    #[test]
    fn acknowledgements_and_other_events_are_ignored_and_ping_answered() {
        assert!(matches!(
            translate(
                &config(),
                &event("incident.acknowledged", "E4", "2024-05-01T12:05:00Z")
            ),
            Ok(Outcome::Ignored(_))
        ));
        assert!(matches!(
            translate(
                &config(),
                &event("incident.annotated", "E5", "2024-05-01T12:05:00Z")
            ),
            Ok(Outcome::Ignored(_))
        ));
        assert!(matches!(
            translate(
                &config(),
                &json!({ "event": { "event_type": "pagey.ping" } })
            ),
            Ok(Outcome::Pong(_))
        ));
    }

    #[test]
    fn an_unmapped_service_is_its_name_and_a_missing_one_is_named() {
        let mut body = event("incident.triggered", "E6", "2024-05-01T12:00:00Z");
        body["event"]["data"]["service"]["summary"] = json!("payments");
        let events = decoded(translate(&config(), &body).unwrap());
        let DeliveryKind::IncidentOpened { service, .. } = &events[0].kind else {
            panic!()
        };
        assert_eq!(service, "payments");
        body["event"]["data"]
            .as_object_mut()
            .unwrap()
            .remove("service");
        let e = translate(&config(), &body).unwrap_err();
        assert_eq!(e.field, "event.data.service");
    }

    #[test]
    fn any_v1_signature_of_the_secret_or_the_previous_one() {
        use hmac::{KeyInit, Mac};
        let sign = |secret: &str, body: &[u8]| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(body);
            mac.finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        let body = br#"{"event":{"event_type":"pagey.ping"}}"#;
        let with = |value: String| {
            let mut headers = HeaderMap::new();
            headers.insert("x-pagerduty-signature", value.parse().unwrap());
            headers
        };
        let mut config = config();
        let right = sign("pd-secret", body);
        let other = sign("other", body);
        assert_eq!(verify(&config, &with(format!("v1={right}")), body), Ok(()));
        // Rotating on PagerDuty's side: two signatures, one of ours.
        assert_eq!(
            verify(&config, &with(format!("v1={other},v1={right}")), body),
            Ok(())
        );
        assert!(verify(&config, &with(format!("v1={other}")), body).is_err());
        assert!(verify(&config, &with("v0=abc".into()), body).is_err());
        assert!(verify(&config, &HeaderMap::new(), body).is_err());
        config.previous_secret = Some(Secret::from("other"));
        assert_eq!(verify(&config, &with(format!("v1={other}")), body), Ok(()));
    }
}
