//! Receivers: where data comes in. One module per transport.
//!
//! - [`otlp_grpc`]: OTLP over gRPC (TraceService, LogsService, MetricsService).
//! - [`otlp_http`]: OTLP over HTTP (`/v1/traces`, `/v1/logs`, `/v1/metrics`).
//! - [`webhook`]: CDEvents over HTTP (`POST /cdevents`).
//!
//! Both decode with [`crate::otlp`], submit to the pipeline and answer with
//! [`ExportOutcome`], which maps to the OTLP status codes of each transport.

pub mod config;
mod listener;
pub mod otlp_grpc;
pub mod otlp_http;
pub mod sources;
pub mod webhook;

use metrics::counter;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;

use crate::instruments;
use crate::model::{Signal, Telemetry};
use crate::otlp::DecodeError;
use crate::pipeline::{Forward, PipelineSink, SubmitError};

/// Why an HTTP request's body could not be read whole.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Longer than the receiver's limit (by its `Content-Length`, or once
    /// that many bytes had come).
    TooLarge,
    /// The body ended early or broke off: the client went away mid-request,
    /// or sent less than its `Content-Length`. Nothing of it is applied.
    Incomplete(String),
}

/// Reads a request body of at most `limit` bytes, telling a body that is too
/// large from one that broke off (both are errors of `to_bytes`, and a
/// client that hung up must not be counted, or answered, as "too large").
pub(crate) async fn read_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let e = e.into_inner();
        if e.is::<http_body_util::LengthLimitError>() {
            BodyError::TooLarge
        } else {
            BodyError::Incomplete(e.to_string())
        }
    })
}

/// Limits of an HTTP listener against slow and numerous clients.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// A client must send its request headers within this long, or the
    /// connection is closed (a slow client cannot hold one forever).
    pub header_read_timeout: std::time::Duration,
    /// Connections open at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> HttpLimits {
        HttpLimits {
            header_read_timeout: std::time::Duration::from_secs(10),
            max_connections: 1_024,
        }
    }
}

/// Serves `app` over HTTP/1 on `listener`, over TLS if `tls` is set, until
/// `stop` is cancelled, then lets the connections in flight finish. Each
/// connection gets TCP_NODELAY (without it small responses wait for
/// delayed ACKs, ~40 ms) and the `limits`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<&crate::tls::ServerTls>,
    limits: HttpLimits,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    match tls {
        Some(tls) => {
            let reloading =
                crate::tls::Reloading::start(tls, crate::tls::ALPN_HTTP1, stop.clone())?;
            let connections = listener::tls(listener, reloading, stop.clone());
            let incoming = listener::slotted(connections, slots, None, stop.clone());
            serve_connections(incoming, &builder, &graceful, app, &stop).await;
        }
        None => {
            let incoming = listener::slotted(listener::plain(listener), slots, None, stop.clone());
            serve_connections(incoming, &builder, &graceful, app, &stop).await;
        }
    }
    graceful.shutdown().await;
    Ok(())
}

/// Serves each connection of `incoming`, on a task of its own, until `stop`.
async fn serve_connections<C>(
    mut incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<listener::Slotted<C>>>,
    builder: &hyper::server::conn::http1::Builder,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    app: axum::Router,
    stop: &tokio_util::sync::CancellationToken,
) where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio_stream::StreamExt;
    loop {
        let connection = tokio::select! {
            connection = incoming.next() => connection,
            _ = stop.cancelled() => return,
        };
        match connection {
            Some(Ok(connection)) => serve_connection(builder, graceful, connection, app.clone()),
            // `slotted` passes no errors on; it ends when the listener does.
            Some(Err(_)) => {}
            None => return,
        }
    }
}

/// Serves one connection on a task of its own (its slot is freed when the
/// connection, which holds it, is dropped at the end).
fn serve_connection<I>(
    builder: &hyper::server::conn::http1::Builder,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    stream: I,
    app: axum::Router,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection =
        graceful.watch(builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service));
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            // A client that went away or was too slow: its business.
            tracing::debug!(error = %e, "HTTP connection ended with an error");
        }
    });
}

/// Seconds a client is told to wait when the pipeline pushes back.
pub const RETRY_AFTER_SECS: u64 = 1;

/// How an export request ended, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportOutcome {
    /// Applied; `rejected` items were refused, for `message`.
    Accepted {
        /// Items refused.
        rejected: u64,
        /// Why, for the client; empty when nothing was refused.
        message: String,
    },
    /// The body could not be decoded; nothing was applied. Not retryable.
    Malformed(String),
    /// The pipeline is full; nothing was applied. Retry after a while.
    Backpressure,
    /// Shutting down; nothing was applied. Retry elsewhere or later.
    Unavailable,
}

/// Submits a decoded request (and, when the pipeline forwards, the request
/// as forwarded) and counts what happened.
pub async fn export(
    sink: &PipelineSink,
    signal: Signal,
    transport: &'static str,
    decoded: Result<Telemetry, DecodeError>,
    forward: Option<Forward>,
) -> ExportOutcome {
    let labels = [
        ("receiver", "otlp"),
        ("transport", transport),
        ("signal", signal.as_str()),
    ];
    let outcome = match decoded {
        Err(e) => {
            tracing::debug!(signal = signal.as_str(), transport, error = %e, "malformed request");
            ExportOutcome::Malformed(e.to_string())
        }
        Ok(item) => {
            let (invalid, invalid_message) = match &item {
                Telemetry::Traces(t) if t.rejected_spans > 0 => (
                    t.rejected_spans,
                    Some(format!(
                        "{} entry spans end before they start",
                        t.rejected_spans
                    )),
                ),
                _ => (0, None),
            };
            let items = item.items();
            match sink.submit_forwarding(item, forward).await {
                Ok(applied) => {
                    counter!(instruments::RECEIVER_ACCEPTED, &labels)
                        .increment(items - applied.refused);
                    if invalid > 0 {
                        counter!(instruments::RECEIVER_REFUSED, "receiver" => "otlp", "transport" => transport, "signal" => signal.as_str(), "reason" => "invalid").increment(invalid);
                    }
                    let message = [invalid_message, applied.reason]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ");
                    ExportOutcome::Accepted {
                        rejected: invalid + applied.refused,
                        message,
                    }
                }
                Err(SubmitError::Full) => {
                    counter!(instruments::RECEIVER_REFUSED, "receiver" => "otlp", "transport" => transport, "signal" => signal.as_str(), "reason" => "backpressure").increment(items + invalid);
                    ExportOutcome::Backpressure
                }
                Err(SubmitError::Closed) => ExportOutcome::Unavailable,
            }
        }
    };
    let result = match &outcome {
        ExportOutcome::Accepted { rejected: 0, .. } => "success",
        ExportOutcome::Accepted { .. } => "partial_success",
        ExportOutcome::Malformed(_) => "malformed",
        ExportOutcome::Backpressure => "backpressure",
        ExportOutcome::Unavailable => "unavailable",
    };
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => transport, "signal" => signal.as_str(), "result" => result).increment(1);
    outcome
}

/// The OTLP export response of `signal`, protobuf-encoded; `partial_success`
/// is set only when something was rejected, as the specification asks.
pub fn response_protobuf(signal: Signal, rejected: u64, message: &str) -> Vec<u8> {
    match signal {
        Signal::Traces => trace_response(rejected, message).encode_to_vec(),
        Signal::Logs => logs_response(rejected, message).encode_to_vec(),
        Signal::Metrics => metrics_response(rejected, message).encode_to_vec(),
    }
}

/// The OTLP export response of `signal` in OTLP/JSON.
pub fn response_json(signal: Signal, rejected: u64, message: &str) -> Vec<u8> {
    if rejected == 0 {
        // Not `{"partialSuccess": null}`: a full success leaves the field unset.
        return b"{}".to_vec();
    }
    let json = match signal {
        Signal::Traces => serde_json::to_vec(&trace_response(rejected, message)),
        Signal::Logs => serde_json::to_vec(&logs_response(rejected, message)),
        Signal::Metrics => serde_json::to_vec(&metrics_response(rejected, message)),
    };
    json.unwrap_or_else(|_| b"{}".to_vec())
}

fn trace_response(rejected: u64, message: &str) -> ExportTraceServiceResponse {
    ExportTraceServiceResponse {
        partial_success: (rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: rejected as i64,
            error_message: message.to_string(),
        }),
    }
}

fn logs_response(rejected: u64, message: &str) -> ExportLogsServiceResponse {
    ExportLogsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportLogsPartialSuccess {
            rejected_log_records: rejected as i64,
            error_message: message.to_string(),
        }),
    }
}

fn metrics_response(rejected: u64, message: &str) -> ExportMetricsServiceResponse {
    ExportMetricsServiceResponse {
        partial_success: (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: rejected as i64,
            error_message: message.to_string(),
        }),
    }
}

/// Admission of a request before its body is read: refused at once while
/// the memory limiter refuses, or while `max_concurrent_requests` requests
/// are read and decoded on the listener. The limiter reads memory only every
/// `check_interval` and refuses only what reaches the pipeline, so without
/// this a burst of large requests could all be read in between and take the
/// process past the hard limit.
#[derive(Clone)]
pub struct Admission {
    sink: PipelineSink,
    slots: Option<std::sync::Arc<tokio::sync::Semaphore>>,
}

/// What an admitted request holds until it is answered.
pub struct Admitted(#[allow(dead_code)] Option<tokio::sync::OwnedSemaphorePermit>);

impl Admission {
    /// `configured` requests at once, or by default as many requests of
    /// `max_body` bytes as the memory limiter's spike room holds (at least
    /// 2); no limit without either.
    pub fn new(sink: PipelineSink, configured: Option<usize>, max_body: usize) -> Admission {
        let limit = configured.or_else(|| {
            sink.memory_spike_bytes()
                .map(|spike| ((spike / max_body.max(1) as u64) as usize).max(2))
        });
        Admission {
            sink,
            slots: limit.map(|n| std::sync::Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
        }
    }

    /// The requests let in at once, if limited.
    pub fn limit(&self) -> Option<usize> {
        self.slots.as_ref().map(|s| s.available_permits())
    }

    /// `None`: refuse with back-pressure; the body is not read.
    pub fn admit(&self) -> Option<Admitted> {
        if self.sink.memory_refusing() {
            return None;
        }
        match &self.slots {
            None => Some(Admitted(None)),
            Some(slots) => slots
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| Admitted(Some(p))),
        }
    }
}

/// Whether `headers` carry `token` (`authorization: Bearer <token>`),
/// compared in constant time; true when no token is configured.
pub fn authorized(
    token: Option<&crate::settings::Secret>,
    headers: &axum::http::HeaderMap,
) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return false;
    };
    let value = value.as_bytes();
    match value.split_at_checked(7) {
        Some((scheme, bearer)) if scheme.eq_ignore_ascii_case(b"bearer ") => {
            token.matches(bearer.trim_ascii())
        }
        _ => false,
    }
}
