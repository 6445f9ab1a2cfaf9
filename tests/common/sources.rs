//! Signing and delivering as the native sources' services do.

use serde_json::{Value, json};

/// `sha256=` + the hex HMAC-SHA256 of `body` under `secret`, as GitHub
/// signs (PagerDuty's `v1=` is the same digest).
pub fn sign(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

/// A PagerDuty Webhooks v3 delivery, signed as PagerDuty signs.
#[allow(clippy::too_many_arguments)]
pub async fn page(
    client: &reqwest::Client,
    webhook_port: u16,
    secret: &str,
    event_type: &str,
    event_id: &str,
    incident: &str,
    created: i64,
    at: i64,
) -> (u16, Value) {
    page_with_urgency(
        client,
        webhook_port,
        secret,
        event_type,
        event_id,
        incident,
        created,
        at,
        "high",
    )
    .await
}

/// As [`page`], for an incident of `urgency` (`high` or `low`).
#[allow(clippy::too_many_arguments)]
pub async fn page_with_urgency(
    client: &reqwest::Client,
    webhook_port: u16,
    secret: &str,
    event_type: &str,
    event_id: &str,
    incident: &str,
    created: i64,
    at: i64,
    urgency: &str,
) -> (u16, Value) {
    let body = json!({ "event": {
        "id": event_id, "event_type": event_type, "resource_type": "incident",
        "occurred_at": super::rfc3339(at),
        "agent": { "id": "PUSER1", "type": "user_reference" }, "client": null,
        "data": {
            "id": incident, "type": "incident", "number": 1, "title": "Checkout errors",
            "self": format!("https://api.pagerduty.com/incidents/{incident}"),
            "html_url": format!("https://acme.pagerduty.com/incidents/{incident}"),
            "status": "triggered", "incident_key": incident, "urgency": urgency,
            "created_at": super::rfc3339(created),
            "service": { "id": "PSHOP01", "summary": "Shop API", "type": "service_reference",
                         "self": "https://api.pagerduty.com/services/PSHOP01",
                         "html_url": "https://acme.pagerduty.com/services/PSHOP01" },
            "assignees": [], "escalation_policy": { "id": "PEP1", "type": "escalation_policy_reference" },
            "teams": [], "priority": null, "conference_bridge": null, "resolve_reason": null,
        },
    }})
    .to_string()
    .into_bytes();
    let response = client
        .post(format!("http://127.0.0.1:{}/pagerduty", webhook_port))
        .header("content-type", "application/json")
        .header("user-agent", "PagerDuty-Webhook/V3.0")
        .header(
            "x-pagerduty-signature",
            sign(secret, &body).replace("sha256=", "v1="),
        )
        .header("x-webhook-id", "PWH1")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}
