//! The `dependencies` processor over real sockets, fed by the official
//! OpenTelemetry Python SDK (`tests/python/otel_sdk_dependencies.py`): the
//! database, cache, messaging and HTTP client figures and the service graph
//! of one checkout through three services, hand-computed; the SDK's spans
//! exported out of order (a SERVER span before its CLIENT span), and one
//! call whose partner never comes (expired, counted).
//!
//! Needs `DORAFLOW_TEST_PYTHON` (`scripts/test` sets it); says so and skips
//! without it.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Doraflow, Metrics, free_port, python_with_otel_sdk, within_hdr};

fn start() -> Doraflow {
    let (grpc, http, prometheus) = (free_port(), free_port(), free_port());
    let text = format!(
        "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
    http: {{ endpoint: \"127.0.0.1:{http}\" }}
processors:
  red: {{}}
  dependencies:
    service_graph: {{ wait: 2s }}
  alerts:
    interval: 200ms
    rules:
      DependencyErrorRate: {{ enabled: true, threshold: 0.2, min_requests: 3 }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp], processors: [red, dependencies, alerts], exporters: [prometheus] }}
"
    );
    let mut doraflow = Doraflow::start_yaml(&text, prometheus, grpc, 0);
    doraflow.http = http;
    doraflow
}

fn send(python: &std::path::Path, protocol: &str, endpoint: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/otel_sdk_dependencies.py"
    );
    let output = Command::new(python)
        .args([script, "--protocol", protocol, "--endpoint", endpoint])
        .output()
        .expect("run the Python SDK client");
    assert!(
        output.status.success(),
        "{protocol} client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

const ENV: (&str, &str) = ("environment", "production");

fn dependency<'a>(
    service: &'a str,
    kind: &'a str,
    system: &'a str,
    dependency: &'a str,
    operation: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("service", service),
        ENV,
        ("type", kind),
        ("system", system),
        ("dependency", dependency),
        ("operation", operation),
    ]
}

fn quantiles(m: &Metrics, family: &str, labels: &[(&str, &str)], want_s: [f64; 3]) {
    for (q, want) in ["0.5", "0.95", "0.99"].into_iter().zip(want_s) {
        let mut l = labels.to_vec();
        l.extend([("window", "5m"), ("quantile", q)]);
        let got = m
            .get(family, &l)
            .unwrap_or_else(|| panic!("{family} {l:?}"));
        assert!(
            within_hdr(got, want),
            "{family} {l:?} p{q}: {got} vs {want}"
        );
    }
}

fn edge<'a>(client: &'a str, server: &'a str, connection: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("client", client),
        ("server", server),
        ("connection_type", connection),
    ]
}

#[test]
fn python_sdk_spans_give_exact_dependencies_caches_queues_and_service_graph() {
    let Some(python) = python_with_otel_sdk() else {
        common::say_skipped(
            "python_sdk_spans_give_exact_dependencies_caches_queues_and_service_graph",
            "DORAFLOW_TEST_PYTHON is not set (scripts/test sets it)",
        );
        return;
    };
    for protocol in ["grpc", "http"] {
        let doraflow = start();
        let endpoint = match protocol {
            "grpc" => format!("127.0.0.1:{}", doraflow.grpc),
            _ => doraflow.http_url(""),
        };
        send(&python, protocol, &endpoint);
        let m = doraflow.metrics();

        // Database: three SELECTs of 10, 20 and 30 ms, the 20 ms one an error.
        let select = dependency(
            "checkout",
            "database",
            "postgresql",
            "shop",
            "SELECT orders",
        );
        assert_eq!(m.get("dora_dependency_calls_total", &select), Some(3.0));
        assert_eq!(m.get("dora_dependency_errors_total", &select), Some(1.0));
        let mut ratio = select.clone();
        ratio.push(("window", "5m"));
        let third = m.get("dora_dependency_error_ratio", &ratio).expect("ratio");
        assert!((third - 1.0 / 3.0).abs() < 1e-12, "{third}");
        quantiles(
            &m,
            "dora_dependency_latency_seconds",
            &select,
            [0.020, 0.030, 0.030],
        );
        // Four redis lookups: database calls named by server.address, and a cache.
        let redis = dependency("checkout", "database", "redis", "cache.internal", "GET");
        assert_eq!(m.get("dora_dependency_calls_total", &redis), Some(4.0));
        let cache = [("service", "checkout"), ENV, ("cache", "redis")];
        assert_eq!(m.get("dora_cache_lookups_total", &cache), Some(4.0));
        assert_eq!(m.get("dora_cache_hits_total", &cache), Some(3.0));
        let mut ratio = cache.to_vec();
        ratio.push(("window", "5m"));
        assert_eq!(m.get("dora_cache_hit_ratio", &ratio), Some(0.75));
        // HTTP clients.
        let http = dependency("frontend", "http", "http", "checkout", "GET");
        assert_eq!(m.get("dora_dependency_calls_total", &http), Some(1.0));
        quantiles(&m, "dora_dependency_latency_seconds", &http, [0.120; 3]);
        let ledger = dependency("worker", "http", "http", "ledger.external", "POST");
        assert_eq!(m.get("dora_dependency_calls_total", &ledger), Some(1.0));
        // Messaging: sent at 48-50 ms, processed 300-340 ms: waited 250 ms.
        let send = dependency("checkout", "messaging", "kafka", "orders", "send");
        assert_eq!(m.get("dora_dependency_calls_total", &send), Some(1.0));
        let process = dependency("worker", "messaging", "kafka", "orders", "process");
        assert_eq!(m.get("dora_dependency_calls_total", &process), Some(1.0));
        quantiles(&m, "dora_dependency_latency_seconds", &process, [0.040; 3]);
        quantiles(&m, "dora_messaging_wait_seconds", &process, [0.250; 3]);

        // The service graph, as the servicegraph connector writes it.
        let fc = edge("frontend", "checkout", "");
        assert_eq!(m.get("traces_service_graph_request_total", &fc), Some(1.0));
        assert_eq!(
            m.get("traces_service_graph_request_failed_total", &fc),
            Some(0.0)
        );
        let sum = |family: &str, labels: &[(&str, &str)]| {
            m.get(&format!("{family}_sum"), labels)
                .unwrap_or_else(|| panic!("{family}_sum {labels:?}"))
        };
        let near = |got: f64, want: f64| assert!((got - want).abs() < 1e-9, "{got} vs {want}");
        near(
            sum("traces_service_graph_request_server_seconds", &fc),
            0.100,
        );
        near(
            sum("traces_service_graph_request_client_seconds", &fc),
            0.120,
        );
        let mut le = fc.to_vec();
        le.push(("le", "0.1"));
        assert_eq!(
            m.get("traces_service_graph_request_server_seconds_bucket", &le),
            Some(1.0)
        );
        let cw = edge("checkout", "worker", "messaging_system");
        assert_eq!(m.get("traces_service_graph_request_total", &cw), Some(1.0));
        near(
            sum("traces_service_graph_request_messaging_system_seconds", &cw),
            0.250,
        );
        let db = edge("checkout", "db.internal", "database");
        assert_eq!(m.get("traces_service_graph_request_total", &db), Some(3.0));
        assert_eq!(
            m.get("traces_service_graph_request_failed_total", &db),
            Some(1.0)
        );
        let cache_edge = edge("checkout", "cache.internal", "database");
        assert_eq!(
            m.get("traces_service_graph_request_total", &cache_edge),
            Some(4.0)
        );
        assert_eq!(m.samples("traces_service_graph_request_total").len(), 4);
        // The ledger call waits for a server span that never comes.
        assert_eq!(
            m.get(
                "traces_service_graph_unpaired_spans_total",
                &edge("worker", "", "")
            ),
            None
        );

        // Two seconds later it has expired, counted.
        let deadline = Instant::now() + Duration::from_secs(15);
        let unpaired = loop {
            let m = doraflow.metrics();
            if let Some(n) = m.get(
                "traces_service_graph_unpaired_spans_total",
                &edge("worker", "", ""),
            ) {
                break n;
            }
            assert!(Instant::now() < deadline, "the unpaired span never expired");
            std::thread::sleep(Duration::from_millis(200));
        };
        assert_eq!(unpaired, 1.0);

        let (status, body) =
            common::get(doraflow.prometheus, "/api/v1/servicegraph").expect("servicegraph");
        assert_eq!(status, 200, "{body}");
        let graph: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            graph["nodes"],
            serde_json::json!([
                "cache.internal",
                "checkout",
                "db.internal",
                "frontend",
                "worker"
            ])
        );
        assert_eq!(graph["waiting"], 0);
        let first = &graph["edges"][0];
        assert_eq!(
            (
                first["client"].as_str(),
                first["server"].as_str(),
                first["requests"].as_u64()
            ),
            (Some("checkout"), Some("cache.internal"), Some(4))
        );
        // One SELECT in three failed: above the rule's 20%, with enough calls.
        let (status, body) = common::get(doraflow.prometheus, "/api/v1/alerts").expect("alerts");
        assert_eq!(status, 200, "{body}");
        let alerts: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        let summaries: Vec<&str> = alerts["alerts"]
            .as_array()
            .expect("alerts")
            .iter()
            .filter(|a| a["alertname"] == "DependencyErrorRate")
            .filter_map(|a| a["summary"].as_str())
            .collect();
        assert_eq!(
            summaries,
            [
                "checkout (production): calls to postgresql shop SELECT orders fail at 33.33% > 20.00%"
            ]
        );
        let (status, body) =
            common::get(doraflow.prometheus, "/api/v1/dependencies").expect("dependencies");
        assert_eq!(status, 200, "{body}");
        let deps: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(deps["window"], "5m");
        assert_eq!(deps["dependencies"].as_array().map(Vec::len), Some(6));
        // The entry spans' figures are unchanged by it all.
        let red = [("service", "checkout"), ENV];
        assert_eq!(m.get("dora_service_requests_total", &red), Some(1.0));
        assert_eq!(
            m.get("dora_service_requests_total", &[("service", "worker"), ENV]),
            Some(1.0)
        );
    }
}

#[test]
fn without_the_processor_the_routes_say_so() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    for path in ["/api/v1/dependencies", "/api/v1/servicegraph"] {
        let (status, body) = common::get(doraflow.prometheus, path).expect("get");
        assert_eq!(status, 404, "{path}");
        assert!(body.contains("no dependencies processor"), "{body}");
    }
    assert!(
        doraflow
            .metrics()
            .samples("dora_dependency_calls_total")
            .is_empty()
    );
}

/// With `storage`, the figures survive a SIGKILL as of the last checkpoint:
/// the counters, the windows, the caches, the queues and the service graph's
/// edges come back exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_figures_survive_a_sigkill_from_the_checkpoint() {
    let dir = common::TempDir::new("dependencies-state");
    let (grpc, prometheus) = (free_port(), free_port());
    let text = format!(
        "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
processors:
  red: {{}}
  dependencies:
    messaging: {{ queue_metrics: [messaging.kafka.consumer.lag] }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
storage:
  dir: \"{}\"
  checkpoint_interval: 1s
pipelines:
  main: {{ receivers: [otlp], processors: [red, dependencies], exporters: [prometheus] }}
",
        dir.0.join("state").display()
    );
    let mut doraflow = Doraflow::start_yaml(&text, prometheus, grpc, 0);
    common::send_dependency_spans(&doraflow).await;
    let figures = |m: &Metrics| -> Vec<String> {
        let mut lines: Vec<String> =
            m.0.lines()
                .filter(|l| {
                    [
                        "dora_dependency_",
                        "dora_cache_",
                        "dora_queue_",
                        "dora_messaging_",
                        "traces_service_graph_",
                    ]
                    .iter()
                    .any(|p| l.starts_with(p))
                })
                .map(str::to_string)
                .collect();
        lines.sort();
        lines
    };
    let before = figures(&doraflow.metrics());
    assert!(
        before.iter().any(|l| l.starts_with(
            "traces_service_graph_request_total{client=\"checkout\",server=\"payments\",connection_type=\"\"} 1"
        )),
        "{before:#?}"
    );
    // A checkpoint taken after the spans: its timestamp moves past them.
    let sent = common::unix_now() as f64;
    let deadline = Instant::now() + Duration::from_secs(15);
    while doraflow
        .metrics()
        .get("doraflow_storage_checkpoint_timestamp_seconds", &[])
        .is_none_or(|t| t < sent + 1.0)
    {
        assert!(Instant::now() < deadline, "no checkpoint was written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    doraflow.child.kill().expect("SIGKILL");
    doraflow.child.wait().expect("reaped");
    let restarted = Doraflow::start_yaml(&text, prometheus, grpc, 0);
    assert_eq!(figures(&restarted.metrics()), before);
}
