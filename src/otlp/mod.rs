//! OTLP decoding: request bodies (protobuf or JSON) to [`crate::model`] summaries.
//!
//! Protobuf goes through the targeted reader in [`wire`]. JSON is parsed into
//! `opentelemetry-proto`'s full types (which implement the OTLP/JSON mapping:
//! hex ids, integers as strings, camelCase), re-encoded as protobuf and read by
//! the same reader, so both encodings share one set of semantics.

pub mod synth;
pub mod wire;

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use prost::Message;

use crate::model::spans::SpanKeys;
use crate::model::{
    CacheReading, LogSummary, MetricGroup, MetricSummary, QueueReading, Resource as ModelResource,
    ResourceIdentity, Signal, Telemetry, TraceSummary, UNKNOWN_SERVICE, Utilization,
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

/// The span details to read besides the entry spans: the keys of a
/// pipeline with the `dependencies` processor, else `None`.
pub type Detail<'a> = Option<&'a Arc<SpanKeys>>;

/// Decodes one export request of `signal`.
pub fn decode(signal: Signal, encoding: Encoding, body: Bytes) -> Result<Telemetry, DecodeError> {
    decode_with(signal, encoding, body, None)
}

/// As [`decode`], reading trace requests' span details with `detail`.
pub fn decode_with(
    signal: Signal,
    encoding: Encoding,
    body: Bytes,
    detail: Detail<'_>,
) -> Result<Telemetry, DecodeError> {
    match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => {
            traces_protobuf_with(&body, detail).map(Telemetry::Traces)
        }
        (Signal::Traces, Encoding::Json) => {
            let request: ExportTraceServiceRequest = json(&body)?;
            traces_protobuf_with(&Bytes::from(request.encode_to_vec()), detail)
                .map(Telemetry::Traces)
        }
        (Signal::Logs, Encoding::Protobuf) => logs_protobuf(&body).map(Telemetry::Logs),
        (Signal::Logs, Encoding::Json) => {
            let request: ExportLogsServiceRequest = json(&body)?;
            logs_protobuf(&Bytes::from(request.encode_to_vec())).map(Telemetry::Logs)
        }
        (Signal::Metrics, Encoding::Protobuf) => {
            let request = ExportMetricsServiceRequest::decode(body)
                .map_err(|e| DecodeError::FullProtobuf(e.to_string()))?;
            Ok(Telemetry::Metrics(metrics(&request, detail)))
        }
        (Signal::Metrics, Encoding::Json) => {
            let request: ExportMetricsServiceRequest = json(&body)?;
            Ok(Telemetry::Metrics(metrics(&request, detail)))
        }
    }
}

/// As [`decode`], for a body that is only borrowed (a Kafka message, still
/// in librdkafka's buffer): protobuf traces and logs are read where they
/// lie, copying out only the service and environment names; anything else
/// is copied first.
pub fn decode_borrowed(
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
) -> Result<Telemetry, DecodeError> {
    decode_borrowed_with(signal, encoding, body, None)
}

/// As [`decode_borrowed`], reading trace requests' span details with `detail`.
pub fn decode_borrowed_with(
    signal: Signal,
    encoding: Encoding,
    body: &[u8],
    detail: Detail<'_>,
) -> Result<Telemetry, DecodeError> {
    match (signal, encoding) {
        (Signal::Traces, Encoding::Protobuf) => {
            let mut summary = TraceSummary {
                detail_keys: detail.cloned(),
                ..TraceSummary::default()
            };
            wire::summarize_traces_borrowed(body, &mut summary)?;
            Ok(Telemetry::Traces(summary))
        }
        (Signal::Logs, Encoding::Protobuf) => {
            let mut summary = LogSummary::default();
            wire::summarize_logs_borrowed(body, &mut summary)?;
            Ok(Telemetry::Logs(summary))
        }
        _ => decode_with(signal, encoding, Bytes::copy_from_slice(body), detail),
    }
}

/// An OTLP/protobuf export request of traces or logs read as it arrives, in
/// pieces (see [`wire::RequestStream`]): what [`decode`] gives for the whole
/// body, without gathering it first.
pub enum StreamDecode {
    /// An `ExportTraceServiceRequest`.
    Traces(wire::RequestStream<TraceSummary>),
    /// An `ExportLogsServiceRequest`.
    Logs(wire::RequestStream<LogSummary>),
}

impl StreamDecode {
    /// For a protobuf request of `signal` of `len` bytes; `None` for
    /// metrics, which are decoded whole.
    pub fn new(signal: Signal, len: usize) -> Option<Self> {
        Self::new_with(signal, len, None)
    }

    /// As [`Self::new`], reading span details with `detail`.
    pub fn new_with(signal: Signal, len: usize, detail: Detail<'_>) -> Option<Self> {
        match signal {
            Signal::Traces => Some(StreamDecode::Traces(wire::RequestStream::traces_with(
                len,
                detail.cloned(),
            ))),
            Signal::Logs => Some(StreamDecode::Logs(wire::RequestStream::logs(len))),
            Signal::Metrics => None,
        }
    }

    /// Reads the next piece.
    pub fn push(&mut self, piece: &[u8]) -> Result<(), DecodeError> {
        match self {
            StreamDecode::Traces(s) => s.push(piece)?,
            StreamDecode::Logs(s) => s.push(piece)?,
        }
        Ok(())
    }

    /// Bytes of the request still to come.
    pub fn remaining(&self) -> usize {
        match self {
            StreamDecode::Traces(s) => s.remaining(),
            StreamDecode::Logs(s) => s.remaining(),
        }
    }

    /// The decoded request, once all of it has been pushed.
    pub fn finish(self) -> Result<Telemetry, DecodeError> {
        Ok(match self {
            StreamDecode::Traces(s) => Telemetry::Traces(s.finish()?),
            StreamDecode::Logs(s) => Telemetry::Logs(s.finish()?),
        })
    }
}

/// The request as protobuf, for forwarding: a protobuf body as it is, an
/// OTLP/JSON one re-encoded. `None` if it does not parse (then it is not
/// applied either).
pub fn to_protobuf(signal: Signal, encoding: Encoding, body: &Bytes) -> Option<Bytes> {
    let encoded = match (encoding, signal) {
        (Encoding::Protobuf, _) => return Some(body.clone()),
        (Encoding::Json, Signal::Traces) => json::<ExportTraceServiceRequest>(body)
            .ok()?
            .encode_to_vec(),
        (Encoding::Json, Signal::Logs) => {
            json::<ExportLogsServiceRequest>(body).ok()?.encode_to_vec()
        }
        (Encoding::Json, Signal::Metrics) => json::<ExportMetricsServiceRequest>(body)
            .ok()?
            .encode_to_vec(),
    };
    Some(Bytes::from(encoded))
}

/// Reads an `ExportTraceServiceRequest` body.
pub fn traces_protobuf(body: &Bytes) -> Result<TraceSummary, DecodeError> {
    traces_protobuf_with(body, None)
}

/// As [`traces_protobuf`], reading span details with `detail`.
pub fn traces_protobuf_with(body: &Bytes, detail: Detail<'_>) -> Result<TraceSummary, DecodeError> {
    let mut summary = TraceSummary {
        detail_keys: detail.cloned(),
        ..TraceSummary::default()
    };
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

fn metrics(request: &ExportMetricsServiceRequest, detail: Detail<'_>) -> MetricSummary {
    let mut summary = MetricSummary::default();
    let queue_metrics = detail.map_or(&[][..], |d| &d.queue_metrics[..]);
    let cache_metrics = detail.map_or(&[][..], |d| &d.cache_metrics[..]);
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
        utilization(
            resource_metrics,
            &identity,
            attributes,
            &mut summary.utilization,
        );
        if !queue_metrics.is_empty() {
            queues(
                resource_metrics,
                &identity,
                queue_metrics,
                &mut summary.queues,
            );
        }
        if !cache_metrics.is_empty() {
            cache_counts(
                resource_metrics,
                &identity,
                cache_metrics,
                &mut summary.cache_counts,
            );
        }
        summary.groups.push(MetricGroup { identity, points });
    }
    summary
}

/// The utilization readings of one resource: CPU as the non-idle share
/// (summed over `cpu.mode`/`state` values other than idle, averaged over
/// logical CPUs), memory as the `used` share (or the plain value when the
/// point has no state).
fn utilization(
    resource_metrics: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    identity: &ResourceIdentity,
    resource_attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    out: &mut Vec<Utilization>,
) {
    let instance = [
        "container.id",
        "k8s.pod.name",
        "host.name",
        "service.instance.id",
    ]
    .iter()
    .find_map(|key| string_attribute(resource_attributes, key))
    .unwrap_or_default();
    for metric in resource_metrics
        .scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
    {
        let resource = match metric.name.as_str() {
            "system.cpu.utilization" | "process.cpu.utilization" | "container.cpu.utilization" => {
                ModelResource::Cpu
            }
            "system.memory.utilization" | "container.memory.utilization" => ModelResource::Memory,
            _ => continue,
        };
        let points = match &metric.data {
            Some(Data::Gauge(g)) => &g.data_points,
            Some(Data::Sum(s)) => &s.data_points,
            _ => continue,
        };
        // (time) -> (busy sum, logical CPUs seen)
        let mut by_time: std::collections::BTreeMap<
            u64,
            (f64, std::collections::BTreeSet<String>),
        > = Default::default();
        for point in points {
            let Some(value) = number(point) else {
                continue;
            };
            if !value.is_finite() {
                continue;
            }
            let state = string_attribute(&point.attributes, "cpu.mode")
                .or_else(|| string_attribute(&point.attributes, "state"))
                .or_else(|| string_attribute(&point.attributes, "system.memory.state"));
            let counts = match (resource, state.as_deref()) {
                (ModelResource::Cpu, Some("idle")) => false,
                (ModelResource::Memory, Some(state)) => state == "used",
                _ => true,
            };
            let cpu = ["cpu.logical_number", "cpu"]
                .iter()
                .find_map(|k| attribute_text(&point.attributes, k, true))
                .unwrap_or_default();
            let entry = by_time.entry(point.time_unix_nano).or_default();
            entry.1.insert(cpu);
            if counts {
                entry.0 += value;
            }
        }
        for (busy, cpus) in by_time.into_values() {
            let share = if resource == ModelResource::Cpu {
                busy / cpus.len().max(1) as f64
            } else {
                busy
            };
            out.push(Utilization {
                identity: identity.clone(),
                instance: instance.clone(),
                resource,
                value: share.clamp(0.0, 1.0),
            });
        }
    }
}

/// The readings of the queue-length metrics `names` in one resource: every
/// gauge or sum point, by its destination attribute.
fn queues(
    resource_metrics: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    identity: &ResourceIdentity,
    names: &[String],
    out: &mut Vec<QueueReading>,
) {
    for metric in resource_metrics
        .scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
        .filter(|m| names.contains(&m.name))
    {
        let points = match &metric.data {
            Some(Data::Gauge(g)) => &g.data_points,
            Some(Data::Sum(s)) => &s.data_points,
            _ => continue,
        };
        for point in points {
            let Some(value) = number(point) else {
                continue;
            };
            let destination = ["messaging.destination.name", "topic", "queue"]
                .iter()
                .find_map(|k| string_attribute(&point.attributes, k))
                .unwrap_or_default();
            out.push(QueueReading {
                identity: identity.clone(),
                metric: metric.name.clone(),
                destination,
                value,
            });
        }
    }
}

/// The points of the cache hit and miss metrics `names` in one resource.
fn cache_counts(
    resource_metrics: &opentelemetry_proto::tonic::metrics::v1::ResourceMetrics,
    identity: &ResourceIdentity,
    names: &[(String, String, String)],
    out: &mut Vec<CacheReading>,
) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::AggregationTemporality;
    for metric in resource_metrics
        .scope_metrics
        .iter()
        .flat_map(|s| &s.metrics)
    {
        let Some((cache, hits)) = names.iter().find_map(|(h, m, cache)| {
            if *h == metric.name {
                Some((cache, true))
            } else if *m == metric.name {
                Some((cache, false))
            } else {
                None
            }
        }) else {
            continue;
        };
        let (points, cumulative) = match &metric.data {
            Some(Data::Gauge(g)) => (&g.data_points, true),
            Some(Data::Sum(s)) => (
                &s.data_points,
                s.aggregation_temporality != AggregationTemporality::Delta as i32,
            ),
            _ => continue,
        };
        for point in points {
            let Some(value) = number(point) else {
                continue;
            };
            if !value.is_finite() || value < 0.0 {
                continue;
            }
            let mut series: Vec<String> = point
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(Value::StringValue(s)) => s.clone(),
                        Some(Value::IntValue(i)) => i.to_string(),
                        Some(Value::BoolValue(b)) => b.to_string(),
                        Some(Value::DoubleValue(d)) => d.to_string(),
                        _ => String::new(),
                    };
                    format!("{}={value}", kv.key)
                })
                .collect();
            series.sort();
            out.push(CacheReading {
                identity: identity.clone(),
                cache: cache.clone(),
                hits,
                series: series.join(","),
                value,
                cumulative,
            });
        }
    }
}

/// A number point's value, as a float; `None` when it has none.
fn number(point: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> Option<f64> {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    match point.value? {
        Value::AsDouble(v) => Some(v),
        Value::AsInt(v) => Some(v as f64),
    }
}

/// The value of attribute `key` (the last one, if repeated) as text, when it
/// is a string or, with `ints`, an integer.
fn attribute_text(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
    ints: bool,
) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    attributes.iter().rev().find_map(|kv| match &kv.value {
        Some(v) if kv.key == key => match &v.value {
            Some(Value::StringValue(s)) => Some(s.clone()),
            Some(Value::IntValue(i)) if ints => Some(i.to_string()),
            _ => None,
        },
        _ => None,
    })
}

fn string_attribute(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attribute_text(attributes, key, false)
}

/// Service identity from full-decoded resource attributes (same rules as the
/// wire reader).
fn identity_of(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
) -> ResourceIdentity {
    ResourceIdentity {
        service: string_attribute(attributes, "service.name")
            .filter(|s| !s.is_empty())
            .map(Bytes::from)
            .unwrap_or_else(|| Bytes::from_static(UNKNOWN_SERVICE)),
        environment: string_attribute(attributes, "deployment.environment.name")
            .or_else(|| string_attribute(attributes, "deployment.environment"))
            .map(Bytes::from)
            .unwrap_or_default(),
    }
}

#[cfg(test)]
pub(crate) mod tests;
