//! OTLP decoding: request bodies (protobuf or JSON) to [`crate::model`] summaries.
//!
//! Protobuf goes through the targeted reader in [`wire`]. JSON is parsed into
//! `opentelemetry-proto`'s full types (which implement the OTLP/JSON mapping:
//! hex ids, integers as strings, camelCase), re-encoded as protobuf and read by
//! the same reader, so both encodings share one set of semantics.

pub mod synth;
pub mod wire;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

use crate::model::{
    LogSummary, MetricGroup, MetricSummary, ResourceIdentity, Signal, Telemetry, TraceSummary,
    UNKNOWN_SERVICE,
};

pub use wire::WireError;

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf`, and every gRPC request.
    Protobuf,
    /// `application/json`: OTLP/JSON.
    Json,
}

/// Why a request body could not be decoded. Never retryable: the same bytes
/// fail the same way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The targeted reader found malformed protobuf.
    #[error(transparent)]
    Protobuf(#[from] WireError),
    /// A full prost decode failed.
    #[error("malformed protobuf: {0}")]
    FullProtobuf(String),
    /// The body is not OTLP/JSON of the signal.
    #[error("malformed OTLP/JSON: {0}")]
    Json(String),
}

/// Decodes one export request of `signal`.
pub fn decode(signal: Signal, encoding: Encoding, body: Bytes) -> Result<Telemetry, DecodeError> {
    match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => traces_protobuf(&body).map(Telemetry::Traces),
        (Signal::Traces, Encoding::Json) => {
            let request: ExportTraceServiceRequest = json(&body)?;
            traces_protobuf(&Bytes::from(request.encode_to_vec())).map(Telemetry::Traces)
        }
        (Signal::Logs, Encoding::Protobuf) => logs_protobuf(&body).map(Telemetry::Logs),
        (Signal::Logs, Encoding::Json) => {
            let request: ExportLogsServiceRequest = json(&body)?;
            logs_protobuf(&Bytes::from(request.encode_to_vec())).map(Telemetry::Logs)
        }
        (Signal::Metrics, Encoding::Protobuf) => {
            let request = ExportMetricsServiceRequest::decode(body)
                .map_err(|e| DecodeError::FullProtobuf(e.to_string()))?;
            Ok(Telemetry::Metrics(metrics(&request)))
        }
        (Signal::Metrics, Encoding::Json) => {
            let request: ExportMetricsServiceRequest = json(&body)?;
            Ok(Telemetry::Metrics(metrics(&request)))
        }
    }
}

/// Reads an `ExportTraceServiceRequest` body.
pub fn traces_protobuf(body: &Bytes) -> Result<TraceSummary, DecodeError> {
    let mut summary = TraceSummary::default();
    wire::summarize_traces(body, &mut summary)?;
    Ok(summary)
}

/// Reads an `ExportLogsServiceRequest` body.
pub fn logs_protobuf(body: &Bytes) -> Result<LogSummary, DecodeError> {
    let mut summary = LogSummary::default();
    wire::summarize_logs(body, &mut summary)?;
    Ok(summary)
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))
}

fn metrics(request: &ExportMetricsServiceRequest) -> MetricSummary {
    let mut summary = MetricSummary::default();
    for resource_metrics in &request.resource_metrics {
        let attributes = resource_metrics
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let identity = identity_of(attributes);
        let points: u64 = resource_metrics
            .scope_metrics
            .iter()
            .flat_map(|scope| &scope.metrics)
            .map(|metric| match &metric.data {
                Some(Data::Gauge(g)) => g.data_points.len(),
                Some(Data::Sum(s)) => s.data_points.len(),
                Some(Data::Histogram(h)) => h.data_points.len(),
                Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
                Some(Data::Summary(s)) => s.data_points.len(),
                None => 0,
            } as u64)
            .sum();
        summary.points += points;
        summary.groups.push(MetricGroup { identity, points });
    }
    summary
}

/// Service identity from full-decoded resource attributes (same rules as the
/// wire reader).
fn identity_of(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> ResourceIdentity {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let string = |key: &str| {
        attributes.iter().rev().find_map(|kv| match &kv.value {
            Some(v) if kv.key == key => match &v.value {
                Some(Value::StringValue(s)) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
    };
    ResourceIdentity {
        service: string("service.name")
            .filter(|s| !s.is_empty())
            .map(Bytes::from)
            .unwrap_or_else(|| Bytes::from_static(UNKNOWN_SERVICE)),
        environment: string("deployment.environment.name")
            .or_else(|| string("deployment.environment"))
            .map(Bytes::from)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
