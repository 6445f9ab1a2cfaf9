//! OTLP over gRPC against a real doraflow process, with our own tonic client:
//! exact request and error counts, error ratio and quantiles on `/metrics`;
//! partial success; malformed input refused without side effects.

mod common;

use bytes::Bytes;
use common::{Doraflow, within_hdr};
use doraflow::otlp::synth::{resource, span, trace_request};
use doraflow::receivers::otlp_grpc::RawCodec;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
    number_data_point::Value,
};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use tonic::codegen::http::uri::PathAndQuery;

const MS: u64 = 1_000_000;
const T0: u64 = 1_764_000_000_000_000_000;

fn labels<'a>(service: &'a str, environment: &'a str) -> [(&'a str, &'a str); 2] {
    [("service", service), ("environment", environment)]
}

/// checkout/production: 200 SERVER spans of 1..=200 ms; spans 1-4 have status
/// ERROR, 5-6 HTTP 503, 7 HTTP 404 (not an error): 6 errors. Plus 50 CLIENT and
/// INTERNAL spans with status ERROR that are not requests. cart (no
/// environment → the configured default `test`): 10 CONSUMER spans of 5 ms.
fn scenario() -> Vec<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest> {
    let checkout = |range: std::ops::RangeInclusive<u64>| {
        range
            .map(|i| {
                let (status, http) = match i {
                    1..=4 => (StatusCode::Error, Some(200)),
                    5..=6 => (StatusCode::Unset, Some(503)),
                    7 => (StatusCode::Unset, Some(404)),
                    _ => (StatusCode::Ok, Some(200)),
                };
                span(SpanKind::Server, T0, T0 + i * MS, status, http)
            })
            .collect::<Vec<_>>()
    };
    let noise: Vec<_> = (0..50)
        .map(|i| {
            let kind = if i % 2 == 0 {
                SpanKind::Client
            } else {
                SpanKind::Internal
            };
            span(kind, T0, T0 + 900 * MS, StatusCode::Error, Some(500))
        })
        .collect();
    let cart: Vec<_> = (0..10)
        .map(|_| span(SpanKind::Consumer, T0, T0 + 5 * MS, StatusCode::Unset, None))
        .collect();
    vec![
        trace_request(vec![(
            resource(Some("checkout"), Some("production")),
            checkout(1..=120),
        )]),
        trace_request(vec![
            (
                resource(Some("checkout"), Some("production")),
                checkout(121..=200),
            ),
            (resource(Some("checkout"), Some("production")), noise),
            (resource(Some("cart"), None), cart),
        ]),
    ]
}

#[tokio::test]
async fn spans_give_exact_counts_ratio_and_quantiles() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    for request in scenario() {
        let response = client.export(request).await.unwrap().into_inner();
        assert_eq!(response.partial_success, None);
    }
    let m = doraflow.metrics();
    let checkout = labels("checkout", "production");
    assert_eq!(m.get("dora_service_requests_total", &checkout), Some(200.0));
    assert_eq!(m.get("dora_service_errors_total", &checkout), Some(6.0));
    let windowed = |q: Option<&'static str>| {
        let mut l = vec![
            ("service", "checkout"),
            ("environment", "production"),
            ("window", "5m"),
        ];
        l.extend(q.map(|q| ("quantile", q)));
        l
    };
    assert_eq!(
        m.get("dora_service_error_ratio", &windowed(None)),
        Some(0.03)
    );
    // Of 1..=200 ms: p50 is the 100th value, p95 the 190th, p99 the 198th.
    for (q, want) in [("0.5", 0.100), ("0.95", 0.190), ("0.99", 0.198)] {
        let got = m
            .get("dora_service_latency_seconds", &windowed(Some(q)))
            .unwrap();
        assert!(within_hdr(got, want), "p{q}: {got} vs {want}");
    }
    let cart = labels("cart", "test");
    assert_eq!(m.get("dora_service_requests_total", &cart), Some(10.0));
    assert_eq!(m.get("dora_service_errors_total", &cart), Some(0.0));
    let accepted = [
        ("receiver", "otlp"),
        ("transport", "grpc"),
        ("signal", "traces"),
    ];
    assert_eq!(
        m.get("doraflow_receiver_accepted_items_total", &accepted),
        Some(260.0)
    );
    // CLIENT and INTERNAL spans made no series of their own and no requests.
    assert_eq!(m.samples("dora_service_requests_total").len(), 2);
}

#[tokio::test]
async fn malformed_protobuf_is_invalid_argument_and_changes_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    client.export(scenario().remove(0)).await.unwrap();
    let before = doraflow.metrics();

    let channel = tonic::transport::Endpoint::from_shared(doraflow.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut raw = tonic::client::Grpc::new(channel);
    for garbage in [&b"\x0a\xff\xff\xff\x0f"[..], b"\xff\xff", b"\x0a\x03ab"] {
        raw.ready().await.unwrap();
        let status = raw
            .unary::<Bytes, Bytes, _>(
                tonic::Request::new(Bytes::from_static(garbage)),
                PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                ),
                RawCodec,
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains("malformed protobuf"),
            "{}",
            status.message()
        );
    }

    let after = doraflow.metrics();
    let checkout = labels("checkout", "production");
    for name in ["dora_service_requests_total", "dora_service_errors_total"] {
        assert_eq!(
            before.get(name, &checkout),
            after.get(name, &checkout),
            "{name}"
        );
    }
    let refused = [
        ("receiver", "otlp"),
        ("transport", "grpc"),
        ("signal", "traces"),
        ("result", "malformed"),
    ];
    assert_eq!(
        after.get("doraflow_receiver_requests_total", &refused),
        Some(3.0)
    );
    // Still serving.
    client.export(scenario().remove(0)).await.unwrap();
    assert_eq!(
        doraflow
            .metrics()
            .get("dora_service_requests_total", &checkout),
        Some(240.0)
    );
}

#[tokio::test]
async fn partial_success_for_invalid_spans_and_the_series_cap() {
    let doraflow = Doraflow::start("max_series: 2");
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    let ok = || span(SpanKind::Server, T0, T0 + MS, StatusCode::Ok, None);
    let backwards = span(SpanKind::Server, T0 + MS, T0, StatusCode::Ok, None);
    let request = trace_request(vec![
        (resource(Some("a"), Some("prod")), vec![ok(), backwards]),
        (resource(Some("b"), Some("prod")), vec![ok()]),
        (resource(Some("c"), Some("prod")), vec![ok(), ok(), ok()]),
    ]);
    let response = client.export(request).await.unwrap().into_inner();
    let partial = response.partial_success.expect("partial success");
    assert_eq!(partial.rejected_spans, 4);
    assert!(
        partial
            .error_message
            .contains("1 entry spans end before they start"),
        "{}",
        partial.error_message
    );
    assert!(
        partial.error_message.contains("max_series = 2"),
        "{}",
        partial.error_message
    );
    let m = doraflow.metrics();
    assert_eq!(
        m.get("dora_service_requests_total", &labels("a", "prod")),
        Some(1.0)
    );
    assert_eq!(
        m.get("dora_service_requests_total", &labels("c", "prod")),
        None
    );
    assert_eq!(
        m.get(
            "doraflow_receiver_refused_items_total",
            &[("reason", "series_limit")]
        ),
        Some(3.0)
    );
}

#[tokio::test]
async fn error_logs_and_metric_points_are_counted() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let mut logs = LogsServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    let record = |severity: i32| LogRecord {
        severity_number: severity,
        ..Default::default()
    };
    let response = logs
        .export(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource(Some("checkout"), Some("production"))),
                scope_logs: vec![ScopeLogs {
                    log_records: [9, 13, 17, 18, 21, 24].map(record).to_vec(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(response.partial_success, None);

    let mut metrics = MetricsServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    let point = |v: f64| NumberDataPoint {
        value: Some(Value::AsDouble(v)),
        ..Default::default()
    };
    metrics
        .export(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource(Some("checkout"), Some("production"))),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "system.cpu.utilization".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![point(0.5), point(0.7)],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        })
        .await
        .unwrap();

    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "dora_service_log_errors_total",
            &labels("checkout", "production")
        ),
        Some(4.0)
    );
    let accepted = |signal| {
        [
            ("receiver", "otlp"),
            ("transport", "grpc"),
            ("signal", signal),
        ]
    };
    assert_eq!(
        m.get("doraflow_receiver_accepted_items_total", &accepted("logs")),
        Some(6.0)
    );
    assert_eq!(
        m.get(
            "doraflow_receiver_accepted_items_total",
            &accepted("metrics")
        ),
        Some(2.0)
    );
}

/// A request over the 4 MiB default limit is refused with RESOURCE_EXHAUSTED
/// (as grpc-go and the Collector answer), whether it arrives plain or gzip
/// compressed to a few KB, and nothing of it is applied.
#[tokio::test]
async fn oversized_requests_are_resource_exhausted_and_change_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let mut big = scenario().remove(0);
    big.resource_spans[0].scope_spans[0].spans[0]
        .attributes
        .push(doraflow::otlp::synth::string_attr(
            "padding",
            &"x".repeat(5 * 1024 * 1024),
        ));
    let channel = tonic::transport::Endpoint::from_shared(doraflow.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    for gzip in [false, true] {
        let mut client = TraceServiceClient::new(channel.clone());
        if gzip {
            client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
        }
        let status = client.export(big.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "gzip {gzip}: {status:?}"
        );
        assert!(
            status
                .message()
                .contains("larger than the limit of 4194304 bytes"),
            "{}",
            status.message()
        );
    }
    let m = doraflow.metrics();
    let refused = [
        ("receiver", "otlp"),
        ("transport", "grpc"),
        ("signal", "traces"),
        ("result", "too_large"),
    ];
    assert_eq!(
        m.get("doraflow_receiver_requests_total", &refused),
        Some(2.0)
    );
    let checkout = labels("checkout", "production");
    assert_eq!(m.get("dora_service_requests_total", &checkout), None);
    // The connection and the receiver still serve.
    TraceServiceClient::new(channel)
        .export(scenario().remove(0))
        .await
        .unwrap();
    assert_eq!(
        doraflow
            .metrics()
            .get("dora_service_requests_total", &checkout),
        Some(120.0)
    );
}

/// One gRPC call over a raw HTTP/2 stream, its message sent in `pieces`
/// (each its own DATA frame; the stream ends after the last one): the
/// `grpc-status` and `grpc-message` the server answered with.
async fn export_in_frames(addr: &str, message: &[u8], cuts: &[usize]) -> (String, String) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!(
        "http://{addr}/opentelemetry.proto.collector.trace.v1.TraceService/Export"
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .unwrap();
    let (response, mut stream) = client.send_request(request, false).unwrap();
    let mut start = 0;
    for &end in cuts.iter().chain([&message.len()]) {
        stream.reserve_capacity(end - start);
        stream
            .send_data(
                Bytes::copy_from_slice(&message[start..end]),
                end == message.len(),
            )
            .unwrap();
        start = end;
    }
    let response = response.await.unwrap();
    let status = |headers: &http::HeaderMap, name: &str| {
        headers.get(name).map(|v| v.to_str().unwrap().to_string())
    };
    // A status in the headers: a "trailers-only" answer (an error).
    if let Some(code) = status(response.headers(), "grpc-status") {
        let message = status(response.headers(), "grpc-message").unwrap_or_default();
        return (code, message);
    }
    let mut body = response.into_body();
    while let Some(data) = body.data().await {
        let data = data.unwrap();
        body.flow_control().release_capacity(data.len()).unwrap();
    }
    let trailers = body.trailers().await.unwrap().unwrap();
    (
        status(&trailers, "grpc-status").unwrap(),
        status(&trailers, "grpc-message").unwrap_or_default(),
    )
}

/// gRPC's length prefix and `body`: one uncompressed message.
fn grpc_message(body: &[u8]) -> Vec<u8> {
    let mut message = vec![0];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes());
    message.extend_from_slice(body);
    message
}

/// Requests are read frame by frame as they arrive: the scenario's two
/// requests sent in frames cut everywhere (inside the 5-byte prefix, keys,
/// lengths, resources, spans) give the same exact figures as sent whole; a
/// message cut short or malformed in pieces is refused and changes nothing.
#[tokio::test]
async fn requests_in_many_small_frames_give_exact_counts() {
    use prost::Message;
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let addr = doraflow
        .grpc_url()
        .trim_start_matches("http://")
        .to_string();
    for (i, request) in scenario().into_iter().enumerate() {
        let message = grpc_message(&request.encode_to_vec());
        // Frames of 1, 2, 3, ... 7 bytes then 997-byte strides, shifted per request.
        let mut cuts: Vec<usize> = (1..8)
            .scan(0, |at, n| {
                *at += n;
                Some(*at)
            })
            .collect();
        cuts.extend((40 + i * 13..message.len()).step_by(997));
        let (code, text) = export_in_frames(&addr, &message, &cuts).await;
        assert_eq!((code.as_str(), text.as_str()), ("0", ""), "request {i}");
    }
    let m = doraflow.metrics();
    let checkout = labels("checkout", "production");
    assert_eq!(m.get("dora_service_requests_total", &checkout), Some(200.0));
    assert_eq!(m.get("dora_service_errors_total", &checkout), Some(6.0));
    let cart = labels("cart", "test");
    assert_eq!(m.get("dora_service_requests_total", &cart), Some(10.0));
    let traces = [
        ("receiver", "otlp"),
        ("transport", "grpc"),
        ("signal", "traces"),
    ];
    assert_eq!(
        m.get("doraflow_receiver_accepted_items_total", &traces),
        Some(260.0)
    );

    // The stream ends 100 bytes before the message does: tonic's answer
    // for a body cut short, and nothing applied.
    let message = grpc_message(&scenario()[0].encode_to_vec());
    let cut = &message[..message.len() - 100];
    let (code, text) = export_in_frames(&addr, cut, &[3, 500, 501]).await;
    assert_eq!(code, "13", "{text}");
    assert!(text.contains("Unexpected%20EOF"), "{text}");
    // A valid resource followed by one whose bytes are no protobuf: malformed.
    let mut body = scenario()[0].encode_to_vec();
    body.extend_from_slice(&[0x0a, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(doraflow::otlp::traces_protobuf(&Bytes::from(body.clone())).is_err());
    let (code, text) = export_in_frames(&addr, &grpc_message(&body), &[2, 90, 2000]).await;
    assert_eq!(code, "3", "{text}");
    assert!(text.contains("malformed%20protobuf"), "{text}");
    let after = doraflow.metrics();
    assert_eq!(
        after.get("dora_service_requests_total", &checkout),
        Some(200.0)
    );
    assert_eq!(
        after.get("doraflow_receiver_accepted_items_total", &traces),
        Some(260.0)
    );
}
