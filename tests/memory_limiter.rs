//! `processors.memory_limiter`: above the soft limit every receiver pushes
//! back (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP and webhook 429 with
//! Retry-After) and nothing is applied; below it data flows. A flood of
//! large requests from many clients is pushed back and stays under the hard
//! limit (requests in flight are bounded by the spike room), and everything
//! accepted is counted; past `max_concurrent_requests` a request is refused
//! before its body is read.

mod common;

use common::{Doraflow, free_port};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

fn start(limit: &str) -> Doraflow {
    let (grpc, http, webhook, prometheus) = (free_port(), free_port(), free_port(), free_port());
    let mut doraflow = Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
    http: {{ endpoint: \"127.0.0.1:{http}\" }}
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\" }}
processors:
  memory_limiter: {{ {limit}, check_interval: 100ms }}
  red: {{}}
  dora: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [memory_limiter, red, dora], exporters: [prometheus] }}
"
        ),
        prometheus,
        grpc,
        webhook,
    );
    doraflow.http = http;
    doraflow
}

#[tokio::test]
async fn above_the_soft_limit_every_receiver_pushes_back_and_nothing_is_applied() {
    // 1 MiB: always above.
    let doraflow = start("limit_mib: 1");
    common::eventually("the limiter refuses", || {
        doraflow
            .metrics()
            .get("doraflow_memory_limiter_refusing", &[])
            == Some(1.0)
    })
    .await;

    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .expect("connect");
    let status = client
        .export(common::checkout_spans(10, 0))
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    let details = tonic_types::StatusExt::get_error_details(&status);
    assert_eq!(
        details.retry_info().and_then(|r| r.retry_delay),
        Some(std::time::Duration::from_secs(1))
    );

    let http = reqwest::Client::new();
    let answer = http
        .post(doraflow.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(common::checkout_spans(10, 0).encode_to_vec())
        .send()
        .await
        .expect("HTTP");
    assert_eq!(answer.status(), 429);
    assert_eq!(answer.headers()["retry-after"], "1");
    let answer = http
        .post(doraflow.webhook_url())
        .header("content-type", "application/json")
        .body(r#"{"context":{"specversion":"0.5.1","id":"d1","source":"/ci","type":"dev.cdevents.service.deployed.0.3.0","timestamp":"2026-01-01T00:00:00Z"},"subject":{"id":"service/a","content":{"environment":{"id":"production"}}}}"#)
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 429);

    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        None,
        "nothing applied"
    );
    assert!(m.counter("doraflow_memory_limiter_refused_total", &[]) >= 3.0);
    assert!(m.counter("doraflow_memory_resident_bytes", &[]) > 1_048_576.0);
    assert_eq!(m.counter("doraflow_memory_limit_bytes", &[]), 1_048_576.0);
}

#[tokio::test]
async fn below_the_soft_limit_data_flows() {
    let doraflow = start("limit_mib: 4096, spike_limit_mib: 512");
    common::eventually("the limiter has read memory", || {
        doraflow
            .metrics()
            .get("doraflow_memory_limiter_refusing", &[])
            == Some(0.0)
    })
    .await;
    common::send_checkout_spans(&doraflow, 90, 10).await;
    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        Some(100.0)
    );
    assert_eq!(m.counter("doraflow_memory_limiter_refused_total", &[]), 0.0);
}

/// Resident memory of process `pid`, bytes (`VmRSS` in /proc).
fn resident(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_above_capacity_is_pushed_back_stays_under_the_hard_limit_and_counts_all_it_took() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const HARD_MIB: u64 = 128;
    const SPANS: u64 = 3_000;
    const CLIENTS: usize = 48;
    let (grpc, prometheus) = (free_port(), free_port());
    let doraflow = Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
processors:
  memory_limiter: {{ limit_mib: {HARD_MIB}, spike_limit_mib: 48, check_interval: 20ms }}
  red: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp], processors: [memory_limiter, red], exporters: [prometheus] }}
"
        ),
        prometheus,
        grpc,
        0,
    );
    // Large realistic requests (3,000 spans of about 800 bytes over 50
    // services: 2.4 MB each), many at once: what doraflow holds in flight,
    // not only what it queues, must stay under the limit.
    let request = doraflow::otlp::synth::realistic_batch(SPANS as usize, 1);
    let server_spans = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .filter(|s| s.kind == opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32)
        .count() as u64;
    // Encoded once: the clients only send bytes, so that they outrun
    // doraflow even in a debug build.
    let body = bytes::Bytes::from(request.encode_to_vec());

    // Sample resident memory throughout.
    let flooding = Arc::new(AtomicBool::new(true));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (flooding, peak, pid) = (flooding.clone(), peak.clone(), doraflow.child.id());
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while flooding.load(Ordering::Relaxed) {
                if let Some(rss) = resident(pid) {
                    peak.fetch_max(rss, Ordering::Relaxed);
                    samples += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            samples
        })
    };
    // Clients that send as fast as they can and retry at once when pushed
    // back: far more than doraflow takes.
    let accepted = Arc::new(AtomicU64::new(0));
    let pushed_back = Arc::new(AtomicU64::new(0));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (body, accepted, pushed_back) = (body.clone(), accepted.clone(), pushed_back.clone());
        let channel = tonic::transport::Endpoint::from_shared(doraflow.grpc_url())
            .expect("URL")
            .connect()
            .await
            .expect("connect");
        clients.push(tokio::spawn(async move {
            let mut client = tonic::client::Grpc::new(channel);
            while std::time::Instant::now() < deadline {
                client.ready().await.expect("ready");
                let answer = client
                    .unary::<bytes::Bytes, bytes::Bytes, _>(
                        tonic::Request::new(body.clone()),
                        tonic::codegen::http::uri::PathAndQuery::from_static(
                            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                        ),
                        doraflow::receivers::otlp_grpc::RawCodec,
                    )
                    .await;
                match answer {
                    Ok(response) => {
                        let response = ExportTraceServiceResponse::decode(response.into_inner())
                            .expect("a response");
                        let rejected = response.partial_success.map_or(0, |p| p.rejected_spans);
                        assert_eq!(rejected, 0, "nothing refused once taken");
                        accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(status)
                        if status.code() == tonic::Code::ResourceExhausted
                            || status.code() == tonic::Code::Unavailable =>
                    {
                        pushed_back.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                    }
                    Err(status) => panic!("unexpected answer: {status:?}"),
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let accepted = accepted.load(Ordering::Relaxed);
    let pushed_back = pushed_back.load(Ordering::Relaxed);
    // Every server span of every accepted request, over all services.
    let counted = |d: &Doraflow| {
        d.metrics()
            .samples("dora_service_requests_total")
            .iter()
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    common::eventually_within(
        "everything accepted counted",
        std::time::Duration::from_secs(60),
        || counted(&doraflow) >= accepted * server_spans,
    )
    .await;
    flooding.store(false, Ordering::Relaxed);
    let samples = sampler.join().expect("sampler");
    let peak = peak.load(Ordering::Relaxed);
    eprintln!(
        "flood: {accepted} requests of {SPANS} spans accepted, {pushed_back} pushed back, peak RSS {:.1} MiB over {samples} samples",
        peak as f64 / 1_048_576.0
    );
    assert!(accepted > 0, "some data was taken");
    assert!(pushed_back > 0, "the clients were pushed back");
    assert_eq!(
        counted(&doraflow),
        accepted * server_spans,
        "counted exactly what was accepted"
    );
    let m = doraflow.metrics();
    assert_eq!(
        m.counter(
            "doraflow_receiver_accepted_items_total",
            &[
                ("receiver", "otlp"),
                ("transport", "grpc"),
                ("signal", "traces")
            ]
        ),
        (accepted * SPANS) as f64
    );
    assert!(
        peak < HARD_MIB * 1_048_576,
        "peak RSS {peak} bytes over the hard limit"
    );
    // Memory freed after the flood goes back to the system: the limiter
    // takes data again rather than refusing for good.
    common::eventually_within(
        "the limiter takes data again",
        std::time::Duration::from_secs(20),
        || {
            doraflow
                .metrics()
                .get("doraflow_memory_limiter_refusing", &[])
                == Some(0.0)
        },
    )
    .await;
    assert_eq!(
        m.counter(
            "doraflow_receiver_refused_items_total",
            &[("receiver", "otlp"), ("reason", "series_limit")]
        ),
        0.0
    );
}

#[tokio::test]
async fn past_max_concurrent_requests_a_request_is_refused_before_its_body_is_read() {
    use tokio::io::AsyncWriteExt;

    let (http, webhook, prometheus) = (free_port(), free_port(), free_port());
    let mut doraflow = Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    http: {{ endpoint: \"127.0.0.1:{http}\", max_concurrent_requests: 1 }}
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\", max_concurrent_requests: 1 }}
processors:
  red: {{}}
  dora: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [red, dora], exporters: [prometheus] }}
"
        ),
        prometheus,
        0,
        webhook,
    );
    doraflow.http = http;
    let body = common::checkout_spans(10, 0).encode_to_vec();
    let client = reqwest::Client::new();
    for (port, path, content_type) in [
        (http, "/v1/traces", "application/x-protobuf"),
        (webhook, "/cdevents", "application/json"),
    ] {
        // One request in flight: its headers sent, its body not yet.
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        slow.write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("headers");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let answer = client
            .post(format!("http://127.0.0.1:{port}{path}"))
            .header("content-type", content_type)
            .body(body.clone())
            .send()
            .await
            .expect("answered");
        assert_eq!(answer.status(), 429, "{path}");
        assert_eq!(answer.headers()["retry-after"], "1", "{path}");
        // The slow request finishes; the next one is taken.
        drop(slow);
    }
    // The server sees the connection close and frees the slot.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let answer = client
        .post(format!("http://127.0.0.1:{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("answered");
    assert_eq!(answer.status(), 200);
    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "doraflow_receiver_requests_total",
            &[
                ("receiver", "otlp"),
                ("transport", "http"),
                ("signal", "traces"),
                ("result", "backpressure")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "doraflow_receiver_requests_total",
            &[("receiver", "webhook"), ("result", "backpressure")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        Some(10.0),
        "only the request let in applied"
    );
}
