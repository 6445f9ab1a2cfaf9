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

use super::{Admission, BodyError, RETRY_AFTER_SECS, authorized, read_body};
use crate::cdevents::{self, BinaryContext};
use crate::instruments;
use crate::model::Telemetry;
use crate::pipeline::{Forward, ForwardEvent, PipelineSink, SubmitError};
use crate::receivers::config::{WebhookReceiverConfig, WebhookSignature};
use crate::settings::ReceiverAuth;

#[derive(Clone)]
struct Webhook {
    sink: PipelineSink,
    admission: Admission,
    auth: Option<ReceiverAuth>,
    signature: Option<WebhookSignature>,
    max_body: usize,
}

/// The routes, for serving or for tests: see [`WebhookReceiverConfig`].
pub fn router(sink: PipelineSink, config: &WebhookReceiverConfig) -> Router {
    let max_body = config.max_request_body_size_mib * 1024 * 1024;
    let admission = Admission::new(sink.clone(), config.max_concurrent_requests, max_body);
    let native = super::sources::router(sink.clone(), admission.clone(), max_body, config);
    Router::new()
        .route("/cdevents", post(receive))
        .with_state(Webhook {
            sink,
            admission,
            auth: config.auth.clone(),
            signature: config.signature.clone(),
            max_body,
        })
        .merge(native)
}

/// Serves `POST /cdevents` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: WebhookReceiverConfig,
    sink: PipelineSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(sink, &config);
    let limits = super::HttpLimits {
        header_read_timeout: config.header_read_timeout.get(),
        max_connections: config.max_connections,
    };
    super::serve_http(listener, app, config.tls.as_ref(), limits, stop).await
}

pub(super) fn answer(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// 401: nothing read is applied.
fn unauthorized(problem: &str) -> Response {
    unauthorized_on("webhook", problem)
}

/// 401 on `receiver`'s route: nothing read is applied.
pub(super) fn unauthorized_on(receiver: &'static str, problem: &str) -> Response {
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "unauthenticated")
        .increment(1);
    let mut response = answer(StatusCode::UNAUTHORIZED, json!({ "error": problem }));
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

pub(super) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Checks the request's HMAC-SHA256 signature (`sha256=<hex>` in
/// `signature.header`) over the body, or over `<timestamp>.<body>` when a
/// timestamp header is configured, which must then be within `max_age` of
/// `now`. The comparison is constant-time. The error says what is wrong,
/// never what was expected.
pub fn verify(
    signature: &WebhookSignature,
    headers: &HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), &'static str> {
    use hmac::{KeyInit, Mac};
    let given = headers
        .get(signature.header.as_str())
        .ok_or("the signature header is missing")?;
    let given = given
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .and_then(decode_hex)
        .ok_or("the signature is not `sha256=<64 hex digits>`")?;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(signature.secret.expose().as_bytes())
        .map_err(|_| "the signing key is unusable")?;
    if let Some(timestamp_header) = &signature.timestamp_header {
        let timestamp = headers
            .get(timestamp_header.as_str())
            .and_then(|v| v.to_str().ok())
            .ok_or("the timestamp header is missing")?;
        let at: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| "the timestamp is not Unix seconds")?;
        if now.abs_diff(at) > signature.max_age.get().as_secs() {
            return Err("the timestamp is outside the replay window");
        }
        mac.update(timestamp.trim().as_bytes());
        mac.update(b".");
    }
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "the signature does not match")
}

/// 64 hex digits to 32 bytes.
pub(super) fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

fn refuse(reason: &'static str, message: String) -> Response {
    refuse_on("webhook", reason, message)
}

/// 400 on `receiver`'s route, counted under `reason`.
pub(super) fn refuse_on(receiver: &'static str, reason: &'static str, message: String) -> Response {
    counter!(instruments::RECEIVER_REFUSED, "receiver" => receiver, "reason" => reason)
        .increment(1);
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => reason)
        .increment(1);
    answer(StatusCode::BAD_REQUEST, json!({ "error": message }))
}

/// Admits a request on `receiver`'s route and reads its body whole, or
/// answers why not (429 under back-pressure, 413, 400).
pub(super) async fn admit_and_read(
    receiver: &'static str,
    admission: &Admission,
    body: Body,
    max_body: usize,
) -> Result<(Bytes, super::Admitted), Response> {
    // Refused before the body is read: memory short, or enough in flight.
    let Some(admitted) = admission.admit() else {
        counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "backpressure")
            .increment(1);
        let mut response = answer(
            StatusCode::TOO_MANY_REQUESTS,
            json!({ "error": "too many requests in flight or memory short; retry later" }),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        return Err(response);
    };
    match read_body(body, max_body).await {
        Ok(bytes) => Ok((bytes, admitted)),
        Err(BodyError::TooLarge) => {
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "too_large")
                .increment(1);
            Err(answer(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({ "error": format!("body larger than {max_body} bytes") }),
            ))
        }
        Err(BodyError::Incomplete(e)) => {
            tracing::debug!(receiver, error = %e, "webhook request body broke off");
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "incomplete")
                .increment(1);
            Err(answer(
                StatusCode::BAD_REQUEST,
                json!({ "error": format!("the request body could not be read whole: {e}") }),
            ))
        }
    }
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
    if !authorized(webhook.auth.as_ref().map(|a| &a.bearer_token), &headers) {
        return unauthorized("a valid bearer token is required");
    }
    let (bytes, _admitted) =
        match admit_and_read("webhook", &webhook.admission, body, webhook.max_body).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    if let Some(signature) = &webhook.signature
        && let Err(problem) = verify(signature, &headers, &bytes, unix_now())
    {
        tracing::debug!(problem, "webhook request with a bad signature refused");
        return unauthorized(problem);
    }
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
    submit("webhook", &webhook.sink, events, &values).await
}

/// Applies `events` (decoded from `values`, forwarded as they are) and
/// answers 202 with what was accepted, or 429/503 with `Retry-After`.
pub(super) async fn submit(
    receiver: &'static str,
    sink: &PipelineSink,
    events: Vec<crate::model::delivery::DeliveryEvent>,
    values: &[Value],
) -> Response {
    let forward = sink.forwards().then(|| {
        Forward::Events(
            events
                .iter()
                .zip(values)
                .map(|(event, value)| ForwardEvent {
                    key: cdevents::forward_key(value, event),
                    json: Bytes::from(value.to_string()),
                })
                .collect(),
        )
    });
    let count = events.len() as u64;
    match sink
        .submit_forwarding(Telemetry::Delivery(events), forward)
        .await
    {
        Ok(applied) => {
            counter!(instruments::RECEIVER_ACCEPTED, "receiver" => receiver, "transport" => "http", "signal" => "events").increment(count - applied.refused);
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "success")
                .increment(1);
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
            counter!(instruments::RECEIVER_REFUSED, "receiver" => receiver, "reason" => reason)
                .increment(count);
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => reason)
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
