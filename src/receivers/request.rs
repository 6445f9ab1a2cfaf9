//! The request handling the CDEvents webhook and the native sources share:
//! admission and reading, refusals and their counters, submitting decoded
//! events to the pipeline and the answer.

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use metrics::counter;
use serde_json::{Value, json};

use super::{Admission, BodyError, RETRY_AFTER_SECS, read_body};
use crate::cdevents;
use crate::flow::{Forward, ForwardEvent, PipelineSink, SubmitError};
use crate::instruments;
use crate::model::Telemetry;

/// `body` as JSON with status `code`.
pub(super) fn answer(code: StatusCode, body: Value) -> Response {
    (code, axum::Json(body)).into_response()
}

/// 401: nothing read is applied.
pub(super) fn unauthorized(problem: &str) -> Response {
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

pub(super) fn refuse(reason: &'static str, message: String) -> Response {
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
