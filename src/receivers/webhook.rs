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
use bytes::Bytes;
use metrics::counter;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{Admission, RETRY_AFTER_SECS};
use crate::cdevents::{self, BinaryContext};
use crate::config::WebhookReceiverConfig;
use crate::instruments;
use crate::model::Telemetry;
use crate::pipeline::{Forward, ForwardEvent, PipelineSink, SubmitError};

#[derive(Clone)]
struct Webhook {
    sink: PipelineSink,
    admission: Admission,
    max_body: usize,
}

/// The routes, for serving or for tests; at most `max_concurrent` requests
/// read at once (see [`Admission`]).
pub fn router(sink: PipelineSink, max_body: usize, max_concurrent: Option<usize>) -> Router {
    let admission = Admission::new(sink.clone(), max_concurrent, max_body);
    Router::new()
        .route("/cdevents", post(receive))
        .with_state(Webhook {
            sink,
            admission,
            max_body,
        })
}

/// Serves `POST /cdevents` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: WebhookReceiverConfig,
    sink: PipelineSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(
        sink,
        config.max_request_body_size_mib * 1024 * 1024,
        config.max_concurrent_requests,
    );
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
    // Refused before the body is read: memory short, or enough in flight.
    let Some(_admitted) = webhook.admission.admit() else {
        counter!(instruments::RECEIVER_REQUESTS, "receiver" => "webhook", "result" => "backpressure")
            .increment(1);
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": "too many requests in flight or memory short; retry later" }),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return response;
    };
    let Ok(bytes) = axum::body::to_bytes(body, webhook.max_body).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("body larger than {} bytes", webhook.max_body) }),
        );
    };
    let decoded = match binary_mode_context(&headers) {
        Some(context) => cdevents::decode_binary(&bytes, &context)
            .map(|(event, value)| (vec![event], vec![value])),
        None => cdevents::parse_body(&bytes, batch)
            .and_then(|values| Ok((cdevents::decode_values(&values)?, values))),
    };
    let (events, values) = match decoded {
        Ok(decoded) => decoded,
        Err(e) => return refuse("malformed", e.to_string()),
    };
    let forward = webhook.sink.forwards().then(|| {
        Forward::Events(
            events
                .iter()
                .zip(&values)
                .map(|(event, value)| ForwardEvent {
                    key: cdevents::forward_key(value, event),
                    json: Bytes::from(value.to_string()),
                })
                .collect(),
        )
    });
    let count = events.len() as u64;
    match webhook
        .sink
        .submit_forwarding(Telemetry::Delivery(events), forward)
        .await
    {
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
fn binary_mode_context(headers: &HeaderMap) -> Option<BinaryContext> {
    headers.get("ce-specversion")?;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    Some(BinaryContext {
        id: get("ce-id"),
        event_type: get("ce-type"),
        source: get("ce-source"),
        time: get("ce-time"),
    })
}
