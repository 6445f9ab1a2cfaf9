//! Synthetic OTLP requests, for the load generator, the benchmarks and tests.
//!
//! [`realistic_batch`] builds the workload the benchmarks quote: spans of
//! about 800 bytes with 10 semantic-convention attributes, 50 services × 20
//! routes, 2% errors.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, InstrumentationScope, KeyValue, any_value::Value,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status, span::SpanKind, status::StatusCode,
};

/// A string attribute.
pub fn string_attr(key: &str, value: &str) -> KeyValue {
    attr(key, Value::StringValue(value.into()))
}

/// An attribute of any value.
pub fn attr(key: &str, value: Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// A resource with `service.name` and `deployment.environment.name` when given.
pub fn resource(service: Option<&str>, environment: Option<&str>) -> Resource {
    let mut attributes = vec![string_attr("host.name", "host-1")];
    if let Some(service) = service {
        attributes.push(string_attr("service.name", service));
    }
    if let Some(environment) = environment {
        attributes.push(string_attr("deployment.environment.name", environment));
    }
    Resource {
        attributes,
        ..Default::default()
    }
}

/// A span of `kind` from `start` to `end` (ns) with status `status`, and an
/// `http.response.status_code` attribute when given.
pub fn span(
    kind: SpanKind,
    start: u64,
    end: u64,
    status: StatusCode,
    http_status: Option<i64>,
) -> Span {
    let mut attributes = vec![string_attr("http.route", "/x")];
    if let Some(code) = http_status {
        attributes.push(attr("http.response.status_code", Value::IntValue(code)));
    }
    Span {
        trace_id: vec![1; 16],
        span_id: vec![2; 8],
        name: "GET /x".into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        status: Some(Status {
            code: status as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

/// A trace export request with one `ResourceSpans` per group.
pub fn trace_request(groups: Vec<(Resource, Vec<Span>)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "doraflow-synth".into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Services in the realistic workload.
pub const SERVICES: usize = 50;
/// Routes per service in the realistic workload.
pub const ROUTES: usize = 20;

/// A realistic batch of `spans` spans, the `seed`-th of a run: spans spread
/// over [`SERVICES`] services (one `ResourceSpans` each, as an SDK batches
/// them) and [`ROUTES`] routes, a third of them SERVER spans, 2% errors,
/// 10 attributes each, about 800 bytes a span.
pub fn realistic_batch(spans: usize, seed: u64) -> ExportTraceServiceRequest {
    realistic_batch_of(spans, seed, SERVICES)
}

/// As [`realistic_batch`], over `services` services (1: what a sidecar
/// beside one service sees).
pub fn realistic_batch_of(spans: usize, seed: u64, services: usize) -> ExportTraceServiceRequest {
    realistic_batch_among(spans, seed, services, services)
}

/// As [`realistic_batch_of`], the `services` of batch `seed` taken in turn
/// from `total` services (`service-00` to `service-{total-1}`), so that a
/// run cycling through `total / services` batches feeds `total` series.
pub fn realistic_batch_among(
    spans: usize,
    seed: u64,
    services: usize,
    total: usize,
) -> ExportTraceServiceRequest {
    let services = services.clamp(1, spans.max(1));
    let total = total.max(services);
    let first = (seed as usize).wrapping_mul(services) % total;
    let mut groups: Vec<(Resource, Vec<Span>)> = (0..services)
        .map(|s| {
            let s = (first + s) % total;
            let name = format!("service-{s:02}");
            let mut resource = resource(Some(&name), Some("production"));
            resource.attributes.extend([
                string_attr("service.version", "1.4.2"),
                string_attr("k8s.pod.name", &format!("{name}-7f9c8d6b5-x2kq{}", s % 10)),
                string_attr("telemetry.sdk.language", "rust"),
            ]);
            (resource, Vec::with_capacity(spans / services + 1))
        })
        .collect();
    let base = 1_700_000_000_000_000_000u64 + seed * 1_000_000_000;
    for i in 0..spans {
        let n = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        let route = (n % ROUTES as u64) as usize;
        let kind = match n % 3 {
            0 => SpanKind::Server,
            1 => SpanKind::Client,
            _ => SpanKind::Internal,
        };
        let error = n % 50 == 7;
        // Latencies from 0.2 ms to about 400 ms, skewed low.
        let latency = 200_000 + (n.wrapping_mul(2_654_435_761) % 1_000) * (n % 400) * 1_000;
        let start = base + (i as u64) * 1_000;
        let http_status = if error { 503 } else { 200 };
        let mut span = span(
            kind,
            start,
            start + latency,
            StatusCode::Unset,
            Some(http_status),
        );
        span.trace_id = (n as u128 * 0x9E37_79B9_7F4A_7C15).to_le_bytes().to_vec();
        span.span_id = n.to_le_bytes().to_vec();
        span.parent_span_id = (n ^ 0xFFFF).to_le_bytes().to_vec();
        span.name = format!("GET /api/v1/resource-{route}/{{id}}");
        span.attributes = vec![
            string_attr("http.request.method", "GET"),
            string_attr("http.route", &format!("/api/v1/resource-{route}/{{id}}")),
            attr("http.response.status_code", Value::IntValue(http_status)),
            string_attr(
                "url.full",
                &format!(
                    "https://api.internal.example.com:8443/api/v1/resource-{route}/{}?include=owner,metadata,permissions&page={}&page_size=50&sort=-updated_at&fields=id,name,status,created_at,updated_at,owner.id,owner.name",
                    n % 10_000,
                    n % 97
                ),
            ),
            string_attr(
                "url.path",
                &format!("/api/v1/resource-{route}/{}", n % 10_000),
            ),
            string_attr("server.address", "api.internal.example.com"),
            attr("server.port", Value::IntValue(8443)),
            string_attr("network.protocol.version", "1.1"),
            string_attr(
                "user_agent.original",
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.224 Safari/537.36 Edg/120.0.2210.144",
            ),
            string_attr(
                "client.address",
                &format!("10.{}.{}.{}", n % 256, (n / 256) % 256, (n / 65_536) % 256),
            ),
        ];
        if error {
            span.status = Some(Status {
                code: StatusCode::Error as i32,
                message: "upstream timed out".into(),
            });
        }
        groups[i % services].1.push(span);
    }
    trace_request(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn realistic_spans_are_about_800_bytes() {
        let request = realistic_batch(1000, 1);
        let bytes = request.encoded_len() as f64 / 1000.0;
        assert!((700.0..900.0).contains(&bytes), "{bytes} bytes per span");
        assert_eq!(request.resource_spans.len(), SERVICES);
    }
}
