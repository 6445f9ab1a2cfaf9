//! A local endpoint that implements the PagerDuty Events API v2 strictly:
//! anything off the spec gets 400, and what it accepts is kept for the
//! test to count.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::free_port;

/// The routing key the tests configure (32 characters, as PagerDuty has them).
pub const ROUTING_KEY: &str = "R0UT1NGK3Y0123456789abcdefABCDEF";

#[derive(Default)]
pub struct Endpoint {
    /// Statuses to answer with before answering 202.
    pub script: VecDeque<u16>,
    /// Every request that reached the endpoint.
    pub attempts: usize,
    /// Events accepted (202).
    pub accepted: Vec<Value>,
}

pub type Shared = Arc<Mutex<Endpoint>>;

/// Checks a body against the Events API v2; the problems found.
pub fn problems(body: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(event) = body.as_object() else {
        return vec!["the body is not a JSON object".into()];
    };
    for key in event.keys() {
        if ![
            "routing_key",
            "event_action",
            "dedup_key",
            "payload",
            "client",
            "client_url",
            "links",
            "images",
        ]
        .contains(&key.as_str())
        {
            problems.push(format!("unknown field {key}"));
        }
    }
    if event
        .get("routing_key")
        .and_then(Value::as_str)
        .is_none_or(|k| k.len() != 32)
    {
        problems.push("routing_key must be a 32-character string".into());
    }
    let action = event
        .get("event_action")
        .and_then(Value::as_str)
        .unwrap_or("");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        problems.push(format!("event_action `{action}` is invalid"));
    }
    match event.get("dedup_key").and_then(Value::as_str) {
        Some(k) if !k.is_empty() && k.len() <= 255 => {}
        Some(_) => problems.push("dedup_key must be 1 to 255 characters".into()),
        None if action != "trigger" => problems.push("dedup_key is required".into()),
        None => {}
    }
    if action == "trigger" {
        let Some(payload) = event.get("payload").and_then(Value::as_object) else {
            problems.push("payload is required for trigger".into());
            return problems;
        };
        for key in payload.keys() {
            if ![
                "summary",
                "source",
                "severity",
                "timestamp",
                "component",
                "group",
                "class",
                "custom_details",
            ]
            .contains(&key.as_str())
            {
                problems.push(format!("unknown payload field {key}"));
            }
        }
        match payload.get("summary").and_then(Value::as_str) {
            Some(s) if !s.is_empty() && s.len() <= 1024 => {}
            _ => problems.push("payload.summary must be 1 to 1024 characters".into()),
        }
        if payload
            .get("source")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            problems.push("payload.source is required".into());
        }
        let severity = payload
            .get("severity")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !["critical", "error", "warning", "info"].contains(&severity) {
            problems.push(format!("payload.severity `{severity}` is invalid"));
        }
        if let Some(ts) = payload.get("timestamp")
            && ts
                .as_str()
                .is_none_or(|t| chrono::DateTime::parse_from_rfc3339(t).is_err())
        {
            problems.push("payload.timestamp must be ISO 8601".into());
        }
        if payload
            .get("custom_details")
            .is_some_and(|d| !d.is_object())
        {
            problems.push("payload.custom_details must be an object".into());
        }
    }
    problems
}

async fn enqueue(State(endpoint): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let mut endpoint = endpoint.lock().unwrap();
    endpoint.attempts += 1;
    if headers.get("content-type").and_then(|v| v.to_str().ok()) != Some("application/json") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "invalid event", "errors": ["content-type"]})),
        )
            .into_response();
    }
    let Ok(event) = serde_json::from_str::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"status": "invalid event", "errors": ["not JSON"]})),
        )
            .into_response();
    };
    let problems = problems(&event);
    if !problems.is_empty() {
        return (StatusCode::BAD_REQUEST, Json(json!({"status": "invalid event", "message": "Event object is invalid", "errors": problems}))).into_response();
    }
    if let Some(status) = endpoint.script.pop_front() {
        let mut response = (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"status": "throttled"})),
        )
            .into_response();
        response
            .headers_mut()
            .insert("retry-after", "0".parse().unwrap());
        return response;
    }
    let dedup_key = event["dedup_key"].clone();
    endpoint.accepted.push(event);
    (
        StatusCode::ACCEPTED,
        Json(json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key})),
    )
        .into_response()
}

/// Starts the endpoint; returns its URL and state.
pub async fn pagerduty(script: &[u16]) -> (String, Shared) {
    pagerduty_on(free_port(), script).await
}

/// Starts the endpoint on `port`.
pub async fn pagerduty_on(port: u16, script: &[u16]) -> (String, Shared) {
    let state: Shared = Arc::new(Mutex::new(Endpoint {
        script: script.iter().copied().collect(),
        ..Endpoint::default()
    }));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new()
        .route("/v2/enqueue", axum::routing::post(enqueue))
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://127.0.0.1:{port}/v2/enqueue"), state)
}
