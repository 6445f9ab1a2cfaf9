//! OTLP over HTTP: `POST /v1/traces`, `/v1/logs`, `/v1/metrics`.
//!
//! Bodies are `application/x-protobuf` or `application/json`, optionally
//! gzip-compressed. Answers follow the OTLP/HTTP specification: 200 with the
//! export response (and partial success) in the request's encoding; 400 with a
//! `google.rpc.Status` body for malformed data; 429 or 503 with `Retry-After`
//! under back-pressure or shutdown; 413 and 415 for bodies too large or of an
//! unsupported type; 400 for a body that broke off before its end (the client
//! hung up or sent less than its `Content-Length`), of which nothing is applied.

use std::io::Read;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use metrics::counter;

use super::{
    Admission, BodyError, ExportOutcome, RETRY_AFTER_SECS, authorized, export, read_body,
    response_json, response_protobuf,
};
use crate::flow::{Forward, PipelineSink};
use crate::instruments;
use crate::model::Signal;
use crate::otlp::{self, Encoding};
use crate::receivers::config::HttpServerConfig;
use crate::settings::ReceiverAuth;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Clone)]
struct Receiver {
    sink: PipelineSink,
    admission: Admission,
    auth: Option<ReceiverAuth>,
    max_body: usize,
}

/// The routes, for serving or for tests; at most `max_concurrent` requests
/// read at once (see [`Admission`]), and with `auth` only those with its
/// bearer token.
pub fn router(
    sink: PipelineSink,
    max_body: usize,
    max_concurrent: Option<usize>,
    auth: Option<ReceiverAuth>,
) -> Router {
    let admission = Admission::new(sink.clone(), max_concurrent, max_body);
    let state = Receiver {
        sink,
        admission,
        auth,
        max_body,
    };
    Router::new()
        .route(
            "/v1/traces",
            post(|s, h, b| handle(s, Signal::Traces, h, b)),
        )
        .route("/v1/logs", post(|s, h, b| handle(s, Signal::Logs, h, b)))
        .route(
            "/v1/metrics",
            post(|s, h, b| handle(s, Signal::Metrics, h, b)),
        )
        .with_state(state)
}

/// Serves the OTLP/HTTP routes on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    config: HttpServerConfig,
    auth: Option<ReceiverAuth>,
    sink: PipelineSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let app = router(
        sink,
        config.max_request_body_size_mib * 1024 * 1024,
        config.max_concurrent_requests,
        auth,
    );
    let limits = super::HttpLimits {
        header_read_timeout: config.header_read_timeout.get(),
        max_connections: config.max_connections,
    };
    super::serve_http(listener, app, config.tls.as_ref(), limits, stop).await
}

async fn handle(
    State(receiver): State<Receiver>,
    signal: Signal,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let encoding = match media_type.as_str() {
        PROTOBUF => Encoding::Protobuf,
        JSON => Encoding::Json,
        _ => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content type `{content_type}`: send {PROTOBUF} or {JSON}"),
            );
        }
    };
    if !authorized(receiver.auth.as_ref().map(|a| &a.bearer_token), &headers) {
        counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "http", "signal" => signal.as_str(), "result" => "unauthenticated").increment(1);
        let mut response = status(
            encoding,
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required".to_string(),
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    // Refused before the body is read: memory short, or enough in flight.
    let Some(_admitted) = receiver.admission.admit() else {
        counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "http", "signal" => signal.as_str(), "result" => "backpressure").increment(1);
        return retry_later(
            encoding,
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests in flight or memory short; retry later",
        );
    };
    let raw = match read_body(body, receiver.max_body).await {
        Ok(raw) => raw,
        Err(BodyError::TooLarge) => return too_large(encoding, signal, receiver.max_body),
        Err(BodyError::Incomplete(e)) => {
            tracing::debug!(signal = signal.as_str(), error = %e, "request body broke off");
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "http", "signal" => signal.as_str(), "result" => "incomplete").increment(1);
            return status(
                encoding,
                StatusCode::BAD_REQUEST,
                format!("the request body could not be read whole: {e}"),
            );
        }
    };
    let content_encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    let body = match content_encoding.as_str() {
        "" | "identity" => raw,
        "gzip" => match gunzip(&raw, receiver.max_body) {
            Ok(body) => body,
            Err(Gunzip::TooLarge) => return too_large(encoding, signal, receiver.max_body),
            Err(Gunzip::Corrupt(e)) => {
                return status(
                    encoding,
                    StatusCode::BAD_REQUEST,
                    format!("malformed gzip body: {e}"),
                );
            }
        },
        other => {
            return plain(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("unsupported content encoding `{other}`: send gzip or none"),
            );
        }
    };
    let forward = if receiver.sink.forwards() {
        otlp::to_protobuf(signal, encoding, &body).map(|body| Forward::Otlp { signal, body })
    } else {
        None
    };
    let decoded = otlp::decode_with(signal, encoding, body, receiver.sink.span_detail());
    match export(&receiver.sink, signal, "http", decoded, forward).await {
        ExportOutcome::Accepted { rejected, message } => {
            let (body, content_type) = match encoding {
                Encoding::Protobuf => (response_protobuf(signal, rejected, &message), PROTOBUF),
                Encoding::Json => (response_json(signal, rejected, &message), JSON),
            };
            ([(header::CONTENT_TYPE, content_type)], body).into_response()
        }
        ExportOutcome::Malformed(message) => status(encoding, StatusCode::BAD_REQUEST, message),
        ExportOutcome::Backpressure => retry_later(
            encoding,
            StatusCode::TOO_MANY_REQUESTS,
            "the pipeline is full; retry later",
        ),
        ExportOutcome::Unavailable => retry_later(
            encoding,
            StatusCode::SERVICE_UNAVAILABLE,
            "doraflow is shutting down",
        ),
    }
}

enum Gunzip {
    TooLarge,
    Corrupt(std::io::Error),
}

/// Inflates at most `limit` bytes: a small bomb cannot exhaust memory.
fn gunzip(compressed: &[u8], limit: usize) -> Result<Bytes, Gunzip> {
    let mut out = Vec::with_capacity(compressed.len().saturating_mul(4).min(limit));
    flate2::read::GzDecoder::new(compressed)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(Gunzip::Corrupt)?;
    if out.len() > limit {
        return Err(Gunzip::TooLarge);
    }
    Ok(Bytes::from(out))
}

fn too_large(encoding: Encoding, signal: Signal, limit: usize) -> Response {
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "http", "signal" => signal.as_str(), "result" => "too_large").increment(1);
    status(
        encoding,
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body larger than {limit} bytes"),
    )
}

fn plain(code: StatusCode, message: String) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

fn retry_later(encoding: Encoding, code: StatusCode, message: &str) -> Response {
    let mut response = status(encoding, code, message.to_string());
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    response
}

/// An error answer whose body is a `google.rpc.Status`, as OTLP/HTTP asks.
fn status(encoding: Encoding, code: StatusCode, message: String) -> Response {
    let grpc_code = match code {
        StatusCode::BAD_REQUEST => tonic::Code::InvalidArgument,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::PAYLOAD_TOO_LARGE => tonic::Code::InvalidArgument,
        _ => tonic::Code::Unavailable,
    } as i32;
    match encoding {
        Encoding::Protobuf => {
            let body = tonic_types::Status {
                code: grpc_code,
                message,
                details: Vec::new(),
            }
            .encode_to_vec();
            (code, [(header::CONTENT_TYPE, PROTOBUF)], body).into_response()
        }
        Encoding::Json => {
            let body = serde_json::json!({ "code": grpc_code, "message": message });
            (code, [(header::CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::Compression;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn gunzip_is_bounded() {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(&vec![0u8; 10_000]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(matches!(gunzip(&bomb, 9_999), Err(Gunzip::TooLarge)));
        assert_eq!(gunzip(&bomb, 10_000).ok().map(|b| b.len()), Some(10_000));
        assert!(matches!(gunzip(b"not gzip", 100), Err(Gunzip::Corrupt(_))));
    }
}
