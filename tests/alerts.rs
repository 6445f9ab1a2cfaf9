//! The alert rules in a real doraflow process: HighErrorRate from OTLP spans
//! and DeploymentFailed from a failed deploy pipeline (CDEvents) fire, show on
//! `/api/v1/alerts` and `doraflow_alerts_firing`, and resolve.

mod common;

use common::Doraflow;
use doraflow::otlp::synth::resource;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use serde_json::{Value, json};

fn alerts(doraflow: &Doraflow) -> Vec<Value> {
    let (status, body) = common::get(doraflow.prometheus, "/api/v1/alerts").unwrap();
    assert_eq!(status, 200);
    let body: Value = serde_json::from_str(&body).unwrap();
    body["alerts"].as_array().cloned().unwrap_or_default()
}

fn firing_gauge(doraflow: &Doraflow, alertname: &str) -> Option<f64> {
    doraflow.metrics().get(
        "doraflow_alerts_firing",
        &[
            ("alertname", alertname),
            ("service", "checkout"),
            ("environment", "production"),
            ("severity", "critical"),
        ],
    )
}

#[tokio::test]
async fn high_error_rate_fires_and_resolves() {
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
    );
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    // 3 errors in 200 requests: 1.5% > 1%.
    client.export(common::checkout_spans(197, 3)).await.unwrap();
    common::eventually("HighErrorRate firing", || {
        firing_gauge(&doraflow, "HighErrorRate") == Some(1.0)
    })
    .await;
    let active = alerts(&doraflow);
    assert_eq!(active.len(), 1, "{active:?}");
    assert_eq!(active[0]["alertname"], "HighErrorRate");
    assert_eq!(active[0]["state"], "firing");
    assert_eq!(active[0]["value"], 0.015);
    assert_eq!(
        active[0]["summary"],
        "checkout (production): error ratio 1.50% > 1.00%"
    );
    // 300 requests, 3 errors: exactly 1%, not above.
    client.export(common::checkout_spans(100, 0)).await.unwrap();
    common::eventually("HighErrorRate resolved", || {
        firing_gauge(&doraflow, "HighErrorRate") == Some(0.0)
    })
    .await;
    assert!(alerts(&doraflow).is_empty());
}

#[tokio::test]
async fn a_failed_deploy_pipeline_fires_deployment_failed_until_the_next_success() {
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "deploy_pipelines: [{ pipeline: deploy-checkout, service: checkout, environment: production }]",
        "interval: 100ms",
        256,
    );
    let client = reqwest::Client::new();
    let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
    let event = |id: &str, kind: &str, subject: Value, at: chrono::DateTime<chrono::Utc>| {
        json!({"context": {"specversion": "0.5.1", "id": id, "source": "/cd", "type": format!("dev.cdevents.{kind}.0.3.0"),
                           "timestamp": at.to_rfc3339()}, "subject": subject})
    };
    let failed = event(
        "run-1",
        "pipelinerun.finished",
        json!({"id": "run-1", "source": "/cd", "content": {"pipelineName": "deploy-checkout", "outcome": "failure"}}),
        now - chrono::Duration::minutes(5),
    );
    let response = client
        .post(doraflow.webhook_url())
        .json(&failed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    common::eventually("DeploymentFailed firing", || {
        firing_gauge(&doraflow, "DeploymentFailed") == Some(1.0)
    })
    .await;
    assert_eq!(alerts(&doraflow)[0]["alertname"], "DeploymentFailed");
    let fixed = event(
        "deploy-2",
        "service.deployed",
        json!({"id": "checkout", "source": "/cd", "content": {"environment": {"id": "production"}}}),
        now - chrono::Duration::minutes(1),
    );
    let response = client
        .post(doraflow.webhook_url())
        .json(&fixed)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    common::eventually("DeploymentFailed resolved", || {
        firing_gauge(&doraflow, "DeploymentFailed") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn cpu_utilization_from_otlp_metrics_fires_high_cpu_usage() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
        number_data_point::Value as Number,
    };
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "interval: 100ms, rules: { HighCpuUsage: { for: 0s, window: 30s, severity: critical } }",
        256,
    );
    let mut client = MetricsServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    let request = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(Some("checkout"), Some("production"))),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "container.cpu.utilization".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            value: Some(Number::AsDouble(0.93)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    client.export(request).await.unwrap();
    common::eventually("HighCpuUsage firing", || {
        firing_gauge(&doraflow, "HighCpuUsage") == Some(1.0)
    })
    .await;
    let active = alerts(&doraflow);
    assert_eq!(active[0]["alertname"], "HighCpuUsage");
    assert_eq!(active[0]["value"], 0.93);
    assert_eq!(
        active[0]["summary"],
        "checkout (production): CPU utilization 93% > 80%"
    );
}
