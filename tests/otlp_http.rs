//! OTLP over HTTP against a real doraflow process: protobuf, JSON and gzip
//! bodies; 400 for malformed data with nothing applied; 415 and 413; a body
//! cut short (counted `incomplete`, not `too_large`); and
//! back-pressure (429 + Retry-After, RESOURCE_EXHAUSTED) from a stalled pipeline.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{Doraflow, free_port, within_hdr};
use doraflow::config::{GrpcServerConfig, HttpServerConfig};
use doraflow::otlp::synth::{resource, span, trace_request};
use doraflow::pipeline;
use doraflow::receivers::{otlp_grpc, otlp_http};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;
use tokio_util::sync::CancellationToken;

const MS: u64 = 1_000_000;
const T0: u64 = 1_764_000_000_000_000_000;

/// 20 SERVER spans of 10, 20, ..., 200 ms for `service`; the first `errors` are HTTP 500.
fn request(
    service: &str,
    errors: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    let spans = (1..=20u64)
        .map(|i| {
            let http = if (i as usize) <= errors { 500 } else { 200 };
            span(
                SpanKind::Server,
                T0,
                T0 + i * 10 * MS,
                StatusCode::Unset,
                Some(http),
            )
        })
        .collect();
    trace_request(vec![(resource(Some(service), Some("production")), spans)])
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn requests(m: &common::Metrics, service: &str) -> Option<f64> {
    m.get(
        "dora_service_requests_total",
        &[("service", service), ("environment", "production")],
    )
}

#[tokio::test]
async fn protobuf_json_and_gzip_bodies_are_applied_exactly() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let client = reqwest::Client::new();
    let url = doraflow.http_url("/v1/traces");

    let proto = request("proto", 2).encode_to_vec();
    let response = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(proto.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf");
    let body = ExportTraceServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(body.partial_success, None);

    let json = serde_json::to_vec(&request("json", 1)).unwrap();
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(json)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({}));

    let response = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&request("gzip", 0).encode_to_vec()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let m = doraflow.metrics();
    for (service, errors) in [("proto", 2.0), ("json", 1.0), ("gzip", 0.0)] {
        assert_eq!(requests(&m, service), Some(20.0), "{service}");
        let l = [("service", service), ("environment", "production")];
        assert_eq!(
            m.get("dora_service_errors_total", &l),
            Some(errors),
            "{service}"
        );
        let w = [
            ("service", service),
            ("environment", "production"),
            ("window", "5m"),
        ];
        assert_eq!(m.get("dora_service_error_ratio", &w), Some(errors / 20.0));
        let mut q = w.to_vec();
        q.push(("quantile", "0.95"));
        // p95 of 10..=200 ms in steps of 10: the 19th value, 190 ms.
        let p95 = m.get("dora_service_latency_seconds", &q).unwrap();
        assert!(within_hdr(p95, 0.190), "{service}: {p95}");
    }
}

#[tokio::test]
async fn malformed_bodies_get_400_and_change_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let client = reqwest::Client::new();
    let url = doraflow.http_url("/v1/traces");
    client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(request("svc", 1).encode_to_vec())
        .send()
        .await
        .unwrap();
    let before = doraflow.metrics();

    let cases: [(&str, &[u8], Option<&str>); 4] = [
        ("application/x-protobuf", b"\x0a\xff\xff\xff\x0f", None),
        ("application/json", b"{\"resourceSpans\": [{", None),
        ("application/json", b"{\"resourceSpans\": 7}", None),
        ("application/x-protobuf", b"not gzip", Some("gzip")),
    ];
    for (content_type, body, encoding) in cases {
        let mut builder = client.post(&url).header("content-type", content_type);
        if let Some(encoding) = encoding {
            builder = builder.header("content-encoding", encoding);
        }
        let response = builder.body(body.to_vec()).send().await.unwrap();
        assert_eq!(response.status(), 400, "{content_type} {body:?}");
        let bytes = response.bytes().await.unwrap();
        let message = if content_type == "application/json" {
            let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(status["code"], 3);
            status["message"].as_str().unwrap().to_string()
        } else {
            let status = tonic_types::Status::decode(bytes).unwrap();
            assert_eq!(status.code, 3);
            status.message
        };
        assert!(message.starts_with("malformed"), "{message}");
    }

    let response = client
        .post(&url)
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("application/x-protobuf")
    );

    let after = doraflow.metrics();
    let l = [("service", "svc"), ("environment", "production")];
    for name in ["dora_service_requests_total", "dora_service_errors_total"] {
        assert_eq!(before.get(name, &l), after.get(name, &l), "{name}");
    }
    assert_eq!(requests(&after, "svc"), Some(20.0));
    // Still serving.
    let response = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(request("svc", 0).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(requests(&doraflow.metrics(), "svc"), Some(40.0));
}

#[tokio::test]
async fn oversized_bodies_get_413() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let response = reqwest::Client::new()
        .post(doraflow.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![0u8; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let m = doraflow.metrics();
    assert_eq!(m.counter(REQUESTS, &http_result("too_large")), 1.0);
    assert_eq!(m.counter(REQUESTS, &http_result("incomplete")), 0.0);
}

const REQUESTS: &str = "doraflow_receiver_requests_total";

fn http_result(result: &str) -> [(&str, &str); 4] {
    [
        ("receiver", "otlp"),
        ("transport", "http"),
        ("signal", "traces"),
        ("result", result),
    ]
}

/// A client that hangs up mid-body is not "too large": its request is
/// counted as `incomplete`, nothing of it is applied, and the next request
/// on another connection is applied whole.
#[tokio::test]
async fn a_body_cut_short_is_counted_incomplete_and_applies_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let body = request("svc", 0).encode_to_vec();
    let port = doraflow.http;
    let head = format!(
        "POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::task::spawn_blocking(move || common::send_cut_short(port, &head, &body[..10]))
        .await
        .unwrap();
    let m = doraflow.metrics();
    assert_eq!(m.counter(REQUESTS, &http_result("incomplete")), 1.0);
    assert_eq!(m.counter(REQUESTS, &http_result("too_large")), 0.0);
    assert_eq!(requests(&m, "svc"), None);

    let response = reqwest::Client::new()
        .post(doraflow.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(request("svc", 0).encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(requests(&doraflow.metrics(), "svc"), Some(20.0));
}

/// A pipeline whose queue nobody drains: the first request waits in the
/// queue, every further one is refused at once with back-pressure.
#[tokio::test]
async fn a_full_pipeline_answers_429_and_resource_exhausted() {
    let (sink, _stalled) = pipeline::queue(1);
    let stop = CancellationToken::new();
    let (http_port, grpc_port) = (free_port(), free_port());
    let http_listener = tokio::net::TcpListener::bind(("127.0.0.1", http_port))
        .await
        .unwrap();
    let grpc_listener = tokio::net::TcpListener::bind(("127.0.0.1", grpc_port))
        .await
        .unwrap();
    let http_config = HttpServerConfig {
        endpoint: format!("127.0.0.1:{http_port}"),
        max_request_body_size_mib: 4,
        max_concurrent_requests: None,
        tls: None,
        header_read_timeout: doraflow::config::ConfigDuration::from_secs(10),
        max_connections: 1_024,
    };
    let grpc_config = GrpcServerConfig {
        endpoint: format!("127.0.0.1:{grpc_port}"),
        max_recv_msg_size_mib: 4,
        max_concurrent_requests: None,
        tls: None,
        max_connections: 1_024,
        max_concurrent_streams: 100,
        request_timeout: doraflow::config::ConfigDuration::from_secs(30),
    };
    tokio::spawn(otlp_http::serve(
        http_listener,
        http_config,
        None,
        sink.clone(),
        stop.clone(),
    ));
    tokio::spawn(otlp_grpc::serve(
        grpc_listener,
        grpc_config,
        None,
        sink,
        stop.clone(),
    ));

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http_port}/v1/traces");
    let body = request("svc", 0).encode_to_vec();
    // Fills the queue and waits for an acknowledgement that never comes.
    let first = tokio::spawn({
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        async move {
            client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .timeout(Duration::from_secs(30))
                .send()
                .await
        }
    });
    let mut refused = None;
    for _ in 0..100 {
        let response = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        if response.status() == 429 {
            refused = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let response = refused.expect("a 429 once the queue is full");
    assert_eq!(response.headers()["retry-after"], "1");
    let status = tonic_types::Status::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, tonic::Code::ResourceExhausted as i32);

    let mut grpc = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc_port}"))
        .await
        .unwrap();
    let status = grpc.export(request("svc", 0)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    use tonic_types::StatusExt;
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(1)));

    stop.cancel();
    first.abort();
}
