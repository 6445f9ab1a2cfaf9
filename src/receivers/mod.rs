//! Receivers: where data comes in. One module per transport.
//!
//! - [`otlp_grpc`]: OTLP over gRPC (TraceService, LogsService, MetricsService).
//! - [`otlp_http`]: OTLP over HTTP (`/v1/traces`, `/v1/logs`, `/v1/metrics`).
//! - [`webhook`]: CDEvents over HTTP (`POST /cdevents`).
//!
//! Both decode with [`crate::otlp`], submit to the pipeline and answer with
//! [`ExportOutcome`], which maps to the OTLP status codes of each transport.

pub mod config;
pub mod otlp_grpc;
pub mod otlp_http;
mod request;
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

pub use crate::transport::{HttpLimits, authorized, serve_http};

use crate::flow::{Forward, PipelineSink, SubmitError};
use crate::instruments;
use crate::model::{Signal, Telemetry};
use crate::otlp::DecodeError;

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
