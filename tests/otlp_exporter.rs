//! The OTLP metrics exporter (`exporters.otlp`) against collector
//! stand-ins over real sockets: an OTLP/gRPC `MetricsService` (tonic, with
//! opentelemetry-proto's generated server) and an OTLP/HTTP endpoint (axum);
//! both decode every push with opentelemetry-proto and keep it. The figures
//! pushed are checked against hand-computed values, as `/metrics` shows them.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{Doraflow, eventually, secret_ref, send_checkout_spans};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Metric, NumberDataPoint, metric, number_data_point,
};
use prost::Message;
use serde_json::json;

/// One push as the collector got it.
#[derive(Debug, Clone)]
struct Push {
    headers: BTreeMap<String, String>,
    request: ExportMetricsServiceRequest,
}

impl Push {
    fn metric(&self, name: &str) -> Option<&Metric> {
        self.request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .find(|m| m.name == name)
    }

    /// The value of `name`'s data point whose attributes are exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let points: &[NumberDataPoint] = match &self.metric(name)?.data {
            Some(metric::Data::Sum(s)) => &s.data_points,
            Some(metric::Data::Gauge(g)) => &g.data_points,
            _ => return None,
        };
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        points.iter().find_map(|p| {
            let mut got: Vec<(String, String)> = p
                .attributes
                .iter()
                .map(|kv| {
                    let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                        Some(any_value::Value::StringValue(s)) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (kv.key.clone(), value)
                })
                .collect();
            got.sort();
            (got == want).then_some(match p.value {
                Some(number_data_point::Value::AsInt(i)) => i as f64,
                Some(number_data_point::Value::AsDouble(d)) => d,
                None => f64::NAN,
            })
        })
    }

    fn resource_attribute(&self, key: &str) -> Option<String> {
        self.request.resource_metrics[0]
            .resource
            .as_ref()?
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }
}

/// A collector stand-in: keeps every push; refuses the first `refuse` with
/// `refusal` (a gRPC status code, or an HTTP status).
#[derive(Clone, Default)]
struct Collector {
    pushes: Arc<Mutex<Vec<Push>>>,
    refused: Arc<AtomicUsize>,
    refuse: usize,
    http_refusal: u16,
}

impl Collector {
    fn pushes(&self) -> Vec<Push> {
        self.pushes.lock().unwrap().clone()
    }

    /// Whether this call is refused (counting it).
    fn refuses(&self) -> bool {
        self.refused
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.refuse).then_some(n + 1)
            })
            .is_ok()
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.refuses() {
            return Err(tonic::Status::unavailable("warming up"));
        }
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        self.pushes.lock().unwrap().push(Push {
            headers,
            request: request.into_inner(),
        });
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn grpc_collector(collector: Collector) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                MetricsServiceServer::new(collector)
                    .accept_compressed(tonic::codec::CompressionEncoding::Gzip),
            )
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    port
}

async fn http_collector(collector: Collector) -> u16 {
    async fn receive(
        axum::extract::State(collector): axum::extract::State<Collector>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if collector.refuses() {
            return (
                axum::http::StatusCode::from_u16(collector.http_refusal).unwrap(),
                "refused",
            )
                .into_response();
        }
        let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            body.to_vec()
        };
        let request = ExportMetricsServiceRequest::decode(&body[..]).unwrap();
        let headers = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        collector
            .pushes
            .lock()
            .unwrap()
            .push(Push { headers, request });
        (
            [("content-type", "application/x-protobuf")],
            ExportMetricsServiceResponse::default().encode_to_vec(),
        )
            .into_response()
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .route("/v1/metrics", axum::routing::post(receive))
        .with_state(collector);
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

fn rfc3339(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .unwrap()
        .to_rfc3339()
}

/// A `service.deployed` CDEvent for payments in production.
fn deployed(id: &str, at: i64) -> serde_json::Value {
    json!({
        "context": {"specversion": "0.5.1", "id": id, "source": "/ci",
            "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": rfc3339(at)},
        "subject": {"id": "service/payments", "source": "/ci",
            "content": {"environment": {"id": "production"}, "artifactId": "pkg:oci/payments@sha256:1"}}
    })
}

async fn post_deployments(doraflow: &Doraflow, n: usize) {
    let client = reqwest::Client::new();
    let now = common::unix_now();
    for i in 0..n {
        let response = client
            .post(doraflow.webhook_url())
            .header("content-type", "application/json")
            .body(deployed(&format!("d{i}"), now - 3_600 * (i as i64 + 1)).to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
}

const CHECKOUT: [(&str, &str); 2] = [("service", "checkout"), ("environment", "production")];
const PAYMENTS: [(&str, &str); 2] = [("service", "payments"), ("environment", "production")];

/// gRPC, gzip, a bearer token and a header; the first push refused with
/// UNAVAILABLE and retried. 18 + 2 failed requests for checkout; two
/// deployments of payments in the last day.
#[tokio::test]
async fn figures_are_pushed_over_grpc_exactly_and_retried() {
    let collector = Collector {
        refuse: 1,
        ..Collector::default()
    };
    let port = grpc_collector(collector.clone()).await;
    let exporters = format!(
        "  otlp:\n    {{ endpoint: \"http://127.0.0.1:{port}\", interval: 1s, compression: gzip, auth: {{ bearer_token: \"{}\" }}, headers: {{ x-tenant: team-a }} }}\n",
        secret_ref("otlp-t0ken")
    );
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "",
        256,
        &exporters,
    );
    send_checkout_spans(&doraflow, 18, 2).await;
    post_deployments(&doraflow, 2).await;
    eventually("a push with every figure", || {
        collector.pushes().iter().any(|p| {
            p.value("dora_service_requests_total", &CHECKOUT) == Some(20.0)
                && p.value(
                    "dora_deployments_total",
                    &[PAYMENTS[0], PAYMENTS[1], ("outcome", "success")],
                ) == Some(2.0)
        })
    })
    .await;
    let pushes = collector.pushes();
    let push = pushes
        .iter()
        .rev()
        .find(|p| p.value("dora_service_requests_total", &CHECKOUT) == Some(20.0))
        .unwrap();

    assert_eq!(push.headers["authorization"], "Bearer otlp-t0ken");
    assert_eq!(push.headers["x-tenant"], "team-a");
    assert_eq!(push.headers["grpc-encoding"], "gzip");
    assert_eq!(
        push.resource_attribute("service.name").as_deref(),
        Some("doraflow")
    );

    let window = |w| [CHECKOUT[0], CHECKOUT[1], ("window", w)];
    assert_eq!(
        push.value("dora_service_errors_total", &CHECKOUT),
        Some(2.0)
    );
    assert_eq!(
        push.value("dora_service_error_ratio", &window("5m")),
        Some(0.1)
    );
    // Every span took 1 ms: each quantile is 1 ms at HDR precision.
    let p95 = push
        .value(
            "dora_service_latency_seconds",
            &[
                CHECKOUT[0],
                CHECKOUT[1],
                ("window", "5m"),
                ("quantile", "0.95"),
            ],
        )
        .unwrap();
    assert!(common::within_hdr(p95, 0.001), "{p95}");

    let payments_7d = [PAYMENTS[0], PAYMENTS[1], ("window", "7d")];
    let per_day = push
        .value("dora_deployment_frequency_per_day", &payments_7d)
        .unwrap();
    assert!((per_day - 2.0 / 7.0).abs() < 1e-12, "{per_day}");
    assert_eq!(
        push.value("dora_change_failure_ratio", &payments_7d),
        Some(0.0)
    );
    // Without incidents there is no time to restore: no point, not NaN.
    assert_eq!(
        push.value("dora_mean_time_to_restore_seconds", &payments_7d),
        None
    );

    let deployments = push.metric("dora_deployments_total").unwrap();
    let Some(metric::Data::Sum(sum)) = &deployments.data else {
        panic!("dora_deployments_total is not a sum: {deployments:?}");
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let ratio = push.metric("dora_service_error_ratio").unwrap();
    assert!(matches!(ratio.data, Some(metric::Data::Gauge(_))));
    assert_eq!(ratio.unit, "1");
    let incidents = push.metric("dora_incident_duration_seconds").unwrap();
    let Some(metric::Data::Histogram(h)) = &incidents.data else {
        panic!("dora_incident_duration_seconds is not a histogram");
    };
    let point = &h.data_points[0];
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!(point.count, 0);

    // The refused push was retried, and counted.
    assert_eq!(collector.refused.load(Ordering::SeqCst), 1);
    let m = doraflow.metrics();
    assert_eq!(
        m.counter(
            "doraflow_exporter_failed_total",
            &[("exporter", "otlp"), ("reason", "retryable")]
        ),
        1.0
    );
    assert!(m.counter("doraflow_exporter_sent_total", &[("exporter", "otlp")]) >= 1.0);
}

/// OTLP/HTTP with an interval of an hour: no push comes on the interval,
/// and the one made at shutdown, once the pipeline has drained, carries
/// everything that was applied.
#[tokio::test]
async fn the_last_push_at_shutdown_carries_everything_over_http() {
    let collector = Collector::default();
    let port = http_collector(collector.clone()).await;
    let exporters = format!(
        "  otlp:\n    {{ endpoint: \"http://127.0.0.1:{port}\", protocol: http/protobuf, interval: 1h }}\n"
    );
    let mut doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "",
        256,
        &exporters,
    );
    send_checkout_spans(&doraflow, 5, 0).await;
    post_deployments(&doraflow, 3).await;
    assert!(collector.pushes().is_empty());
    tokio::task::spawn_blocking(move || doraflow.terminate())
        .await
        .unwrap();

    let pushes = collector.pushes();
    assert_eq!(pushes.len(), 1, "{pushes:?}");
    let push = &pushes[0];
    assert_eq!(push.headers["content-type"], "application/x-protobuf");
    assert_eq!(
        push.value("dora_service_requests_total", &CHECKOUT),
        Some(5.0)
    );
    assert_eq!(
        push.value(
            "dora_deployments_total",
            &[PAYMENTS[0], PAYMENTS[1], ("outcome", "success")]
        ),
        Some(3.0)
    );
}

/// A collector that refuses the request itself (HTTP 400) is not retried:
/// each push is counted failed and dropped as `rejected`, none `retryable`.
#[tokio::test]
async fn a_push_the_collector_rejects_is_not_retried() {
    let collector = Collector {
        refuse: usize::MAX,
        http_refusal: 400,
        ..Collector::default()
    };
    let port = http_collector(collector.clone()).await;
    let exporters = format!(
        "  otlp:\n    {{ endpoint: \"http://127.0.0.1:{port}/v1/metrics\", protocol: http/protobuf, interval: 1s }}\n"
    );
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "",
        256,
        &exporters,
    );
    send_checkout_spans(&doraflow, 5, 0).await;
    eventually("two refused pushes", || {
        collector.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    let m = doraflow.metrics();
    for counter in [
        "doraflow_exporter_dropped_total",
        "doraflow_exporter_failed_total",
    ] {
        let rejected = m.counter(counter, &[("exporter", "otlp"), ("reason", "rejected")]);
        assert!(rejected >= 1.0, "{counter}: {rejected}");
    }
    assert_eq!(
        m.counter(
            "doraflow_exporter_failed_total",
            &[("exporter", "otlp"), ("reason", "retryable")]
        ),
        0.0
    );
    assert!(collector.pushes().is_empty());
}

/// A collector that is down at shutdown: the last push is retried a few
/// seconds, then given up, and doraflow still stops cleanly.
#[tokio::test]
async fn a_collector_down_at_shutdown_does_not_hold_the_stop() {
    let port = common::free_port();
    let exporters = format!(
        "  otlp:\n    {{ endpoint: \"http://127.0.0.1:{port}\", interval: 1h, timeout: 1s }}\n"
    );
    let mut doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "",
        256,
        &exporters,
    );
    send_checkout_spans(&doraflow, 5, 0).await;
    let started = std::time::Instant::now();
    tokio::task::spawn_blocking(move || doraflow.terminate())
        .await
        .unwrap();
    // terminate() asserts a clean exit; the retries end within 5 s.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}
