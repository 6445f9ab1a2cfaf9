//! The CDEvents webhook: `POST /cdevents`.
//!
//! Accepts one event (`application/json` or `application/cloudevents+json`,
//! structured mode), a batch (`application/cloudevents-batch+json`, a JSON
//! array), or binary mode (`ce-*` headers, the CDEvent in the body; a body
//! without `context` gets one from the headers). Answers 202 once the events
//! are applied, 400 with a message naming the event and field otherwise; a
//! batch is applied whole or not at all. 429/503 with `Retry-After` under
//! back-pressure or shutdown.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use metrics::counter;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::RETRY_AFTER_SECS;
use crate::cdevents::{self, BodyError};
use crate::config::WebhookReceiverConfig;
use crate::instruments;
use crate::model::Telemetry;
use crate::pipeline::{PipelineSink, SubmitError};

#[derive(Clone)]
struct Webhook {
    sink: PipelineSink,
    max_body: usize,
}

/// The routes, for serving or for tests.
pub fn router(sink: PipelineSink, max_body: usize) -> Router {
    Router::new()
        .route("/cdevents", post(receive))
        .with_state(Webhook { sink, max_body })
}

/// Serves `POST /cdevents` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: WebhookReceiverConfig,
    sink: PipelineSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(sink, config.max_request_body_size_mib * 1024 * 1024);
    super::serve_http(listener, app, stop).await
}

fn answer(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

fn refuse(reason: &'static str, message: String) -> Response {
    counter!(instruments::RECEIVER_REFUSED, "receiver" => "webhook", "reason" => reason)
        .increment(1);
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => "webhook", "result" => reason)
        .increment(1);
    answer(StatusCode::BAD_REQUEST, json!({ "error": message }))
}

async fn receive(State(webhook): State<Webhook>, headers: HeaderMap, body: Body) -> Response {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let batch = match media_type.as_str() {
        "application/cloudevents-batch+json" => true,
        "application/json" | "application/cloudevents+json" => false,
        other => {
            return answer(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": format!(
                    "unsupported content type `{other}`: send application/json, application/cloudevents+json or application/cloudevents-batch+json"
                ) }),
            );
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, webhook.max_body).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("body larger than {} bytes", webhook.max_body) }),
        );
    };
    let decoded = match binary_mode_context(&headers) {
        Some(context) => decode_binary(&bytes, context),
        None => cdevents::decode_body(&bytes, batch),
    };
    let events = match decoded {
        Ok(events) => events,
        Err(e) => return refuse("malformed", e.to_string()),
    };
    let count = events.len() as u64;
    match webhook.sink.submit(Telemetry::Delivery(events)).await {
        Ok(applied) => {
            counter!(instruments::RECEIVER_ACCEPTED, "receiver" => "webhook", "transport" => "http", "signal" => "events").increment(count - applied.refused);
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => "webhook", "result" => "success").increment(1);
            answer(
                StatusCode::ACCEPTED,
                json!({ "accepted": count - applied.refused, "refused": applied.refused, "message": applied.reason }),
            )
        }
        Err(e) => {
            let (code, reason) = match e {
                SubmitError::Full => (StatusCode::TOO_MANY_REQUESTS, "backpressure"),
                SubmitError::Closed => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            };
            counter!(instruments::RECEIVER_REFUSED, "receiver" => "webhook", "reason" => reason)
                .increment(count);
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => "webhook", "result" => reason)
                .increment(1);
            let mut response = answer(code, json!({ "error": e.to_string() }));
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
            response
        }
    }
}

/// In binary mode the CloudEvents attributes come as `ce-*` headers.
fn binary_mode_context(headers: &HeaderMap) -> Option<Value> {
    headers.get("ce-specversion")?;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|s| Value::String(s.to_string()))
            .unwrap_or(Value::Null)
    };
    Some(json!({
        "id": get("ce-id"),
        "type": get("ce-type"),
        "source": get("ce-source"),
        "timestamp": get("ce-time"),
    }))
}

fn decode_binary(
    body: &[u8],
    context: Value,
) -> Result<Vec<crate::model::delivery::DeliveryEvent>, BodyError> {
    let mut event: Value =
        serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    if let Value::Object(map) = &mut event
        && !map.contains_key("context")
    {
        map.insert("context".to_string(), context);
    }
    cdevents::decode_cdevent(&event)
        .map(|e| vec![e])
        .map_err(|error| BodyError::Event { index: 0, error })
}
