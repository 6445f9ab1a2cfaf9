//! `processors.memory_limiter`: above the soft limit every receiver pushes
//! back (gRPC RESOURCE_EXHAUSTED with RetryInfo, HTTP and webhook 429 with
//! Retry-After) and nothing is applied; below it data flows.

mod common;

use common::{Doraflow, free_port};
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
