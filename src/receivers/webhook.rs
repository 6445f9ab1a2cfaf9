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
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::request::{admit_and_read, answer, decode_hex, refuse, submit, unauthorized, unix_now};
use super::{Admission, authorized};
use crate::cdevents::{self, BinaryContext};
use crate::flow::PipelineSink;
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
    let sources = super::sources::NativeSources {
        github: config.github.clone(),
        gitlab: config.gitlab.clone(),
        pagerduty: config.pagerduty.clone(),
        alertmanager: config.alertmanager.clone(),
        argocd: config.argocd.clone(),
        flux: config.flux.clone(),
    };
    let native = super::sources::router(sink.clone(), admission.clone(), max_body, sources);
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
