//! `deploy/`: the Prometheus rules pass `promtool check` and their unit
//! tests; a real Prometheus server scrapes a running doraflow fed with a
//! small scenario, its query API returns the expected `dora_*` values, and
//! the recording rules evaluate; every metric name the rules use is on a
//! live `/metrics`. Debian's `prometheus` package is installed by
//! scripts/setup.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Doraflow, TempDir, free_port, say_skipped};
use serde_json::{Value, json};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn tool(name: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
}

fn run(program: &Path, args: &[&str], dir: &Path) -> String {
    let out = Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{} {args:?} failed:\n{text}",
        program.display()
    );
    text
}

#[test]
fn the_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        say_skipped(
            "promtool rules",
            "no promtool (scripts/setup installs Debian's prometheus)",
        );
        return;
    };
    let dir = deploy("prometheus");
    let checked = run(
        &promtool,
        &[
            "check",
            "rules",
            "rules/doraflow-recording.yml",
            "rules/doraflow-alerts.yml",
        ],
        &dir,
    );
    assert!(checked.contains("SUCCESS: 12 rules found"), "{checked}");
    assert!(checked.contains("SUCCESS: 6 rules found"), "{checked}");
    let tested = run(&promtool, &["test", "rules", "rules/tests.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    run(&promtool, &["check", "config", "prometheus.yml"], &dir);
}

/// Every `dora_*` and `doraflow_*` name in `text`, histogram suffixes kept.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for (i, _) in text.match_indices("dora") {
        let before = text[..i].chars().last();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        if (name.starts_with("dora_") || name.starts_with("doraflow_")) && !names.contains(&name) {
            names.push(name);
        }
    }
    // The service graph's, in the servicegraph connector's names.
    for (i, _) in text.match_indices("traces_service_graph_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The answer of Prometheus' query API to `promql`, or why there is none.
async fn query_body(port: u16, promql: &str) -> Result<Value, String> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("http://127.0.0.1:{port}/api/v1/query?query={encoded}");
    let response = reqwest::get(url).await.map_err(|e| e.to_string())?;
    response.json().await.map_err(|e| e.to_string())
}

async fn query(port: u16, promql: &str) -> Vec<Value> {
    query_body(port, promql)
        .await
        .ok()
        .and_then(|body| body["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

/// The status of a query (`success`, or the error).
async fn query_status(port: u16, promql: &str) -> String {
    match query_body(port, promql).await {
        Ok(body) if body["status"] == "success" => "success".to_string(),
        Ok(body) => body.to_string(),
        Err(e) => e,
    }
}

/// Every `expr` in a Grafana dashboard (panels' targets, templating queries).
fn grafana_exprs(value: &Value) -> Vec<String> {
    let mut out = Vec::new();
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    _ => out.extend(grafana_exprs(v)),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| out.extend(grafana_exprs(v))),
        _ => {}
    }
    out
}

/// The value of the one sample of `promql`, once there is one.
async fn value_of(port: u16, promql: &str) -> Option<f64> {
    query(port, promql)
        .await
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
}

use common::rfc3339 as ts;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_doraflow_and_the_rules_evaluate() {
    let Some(prometheus) = tool("prometheus") else {
        say_skipped(
            "prometheus scrape",
            "no prometheus (scripts/setup installs Debian's)",
        );
        return;
    };
    let doraflow = Doraflow::start_processors(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d]",
        "interval: 1s",
        Some("messaging: { queue_metrics: [messaging.kafka.consumer.lag] }"),
        256,
        "",
    );
    // checkout: 3 deployments this week, the newest followed by an incident
    // of 30 minutes; 100 requests, 5 of them errors (HighErrorRate fires).
    let now = common::unix_now();
    let mut events: Vec<Value> = (0..3)
        .map(|i| {
            let at = now - 3_600 - i * 86_400;
            json!({
                "context": {"specversion": "0.5.1", "id": format!("d{i}"), "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": ts(at)},
                "subject": {"id": "service/checkout", "content": {"environment": {"id": "production"}, "artifactId": format!("pkg:oci/checkout@sha256:{i}")}},
                "customData": {"changes": [{"id": format!("c{i}"), "timestamp": ts(at - 7_200)}]}
            })
        })
        .collect();
    for (id, kind, at) in [
        ("i-open", "detected", now - 3_000),
        ("i-resolved", "resolved", now - 1_200),
    ] {
        events.push(json!({
            "context": {"specversion": "0.5.1", "id": id, "source": "/mon", "type": format!("dev.cdevents.incident.{kind}.0.3.0"), "timestamp": ts(at)},
            "subject": {"id": "i1", "content": {"environment": {"id": "production"}, "service": {"id": "checkout"}}}
        }));
    }
    let answer = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 202);
    common::send_checkout_spans(&doraflow, 95, 5).await;
    // And what the dashboard's dependency panels read.
    common::send_dependency_spans(&doraflow).await;

    // The deploy/ rules, evaluated every second rather than every minute.
    let dir = TempDir::new("prometheus");
    for file in ["doraflow-recording.yml", "doraflow-alerts.yml"] {
        let text = std::fs::read_to_string(deploy("prometheus/rules").join(file)).expect("rules");
        let fast = text
            .replace("interval: 1m", "interval: 1s")
            .replace("interval: 30s", "interval: 1s");
        std::fs::write(dir.0.join(file), fast).expect("write rules");
    }
    let port = free_port();
    std::fs::write(
        dir.0.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [doraflow-recording.yml, doraflow-alerts.yml]\nscrape_configs:\n  - job_name: doraflow\n    static_configs: [{{ targets: [\"127.0.0.1:{}\"] }}]\n",
            doraflow.prometheus
        ),
    )
    .expect("write config");
    let _server = Prometheus(
        Command::new(&prometheus)
            .arg(format!(
                "--config.file={}",
                dir.0.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.0.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

    let checkout = r#"service="checkout",environment="production""#;
    let expected: Vec<(String, f64)> = vec![
        (
            format!(r#"dora_deployments_total{{{checkout},outcome="success"}}"#),
            3.0,
        ),
        (
            format!(r#"dora_service_requests_total{{{checkout}}}"#),
            100.0,
        ),
        (format!(r#"dora_service_errors_total{{{checkout}}}"#), 5.0),
        (
            format!(r#"dora_deployment_frequency_per_day{{{checkout},window="7d"}}"#),
            3.0 / 7.0,
        ),
        (
            format!(r#"dora_lead_time_seconds{{{checkout},window="7d",quantile="0.5"}}"#),
            7_200.0,
        ),
        (
            format!(r#"dora_change_failure_ratio{{{checkout},window="7d"}}"#),
            1.0 / 3.0,
        ),
        (
            format!(r#"dora_time_to_restore_seconds{{{checkout},window="7d",quantile="0.5"}}"#),
            1_800.0,
        ),
        // Recording rules.
        (
            format!(r#"dora:deployment_frequency_per_day{{{checkout},window="7d"}}"#),
            3.0 / 7.0,
        ),
        (
            format!(r#"dora:change_failure_ratio{{{checkout},window="30d"}}"#),
            1.0 / 3.0,
        ),
        // The 5% error ratio opened a derived incident.
        (format!(r#"dora:incidents_open{{{checkout}}}"#), 1.0),
        (
            format!(r#"doraflow_alerts_firing{{alertname="HighErrorRate",{checkout}}}"#),
            1.0,
        ),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut missing = expected.clone();
    while !missing.is_empty() {
        let mut still = Vec::new();
        for (promql, want) in missing {
            match value_of(port, &promql).await {
                Some(got) if (got - want).abs() <= want.abs() * 1e-9 => {}
                got => still.push((promql, want, got)),
            }
        }
        if still.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not return the expected values within 60 s: {still:?}"
        );
        missing = still.into_iter().map(|(q, w, _)| (q, w)).collect();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The 5-minute rate rules need two scrapes at least; they evaluate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rate = value_of(
            port,
            &format!(r#"dora:service_requests:rate5m{{{checkout}}}"#),
        )
        .await;
        if rate.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "dora:service_requests:rate5m never evaluated"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Every metric name the rules use is on the live /metrics.
    let live = doraflow.metrics().0;
    let mut rules = String::new();
    for file in ["doraflow-recording.yml", "doraflow-alerts.yml"] {
        rules.push_str(
            &std::fs::read_to_string(deploy("prometheus/rules").join(file)).expect("rules"),
        );
    }
    // And every name the Grafana dashboard uses; its queries run on the
    // real Prometheus.
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy("grafana/doraflow.json")).expect("dashboard"),
    )
    .expect("dashboard JSON");
    let exprs = grafana_exprs(&grafana);
    assert!(exprs.len() >= 13, "{exprs:?}");
    for expr in &exprs {
        let mut promql = expr.replace("$environment", "production");
        // Grafana's `label_values(metric, label)` is not PromQL: run the metric.
        if let Some(inner) = promql.strip_prefix("label_values(") {
            promql = inner.split(',').next().unwrap_or_default().to_string();
        }
        let status = query_status(port, &promql).await;
        assert_eq!(
            status, "success",
            "Grafana query fails on Prometheus: {promql}"
        );
        rules.push('\n');
        rules.push_str(expr);
    }
    let names = metric_names(&rules);
    assert!(names.len() >= 15, "{names:?}");
    for name in &names {
        assert!(
            live.lines().any(|l| !l.starts_with('#')
                && l.starts_with(name.as_str())
                && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))),
            "the rules use {name}, which /metrics does not have"
        );
    }
}

fn tools(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("DORAFLOW_TEST_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/tools/bin"));
    Some(dir.join(name)).filter(|p| p.exists())
}

#[test]
fn the_dockerfile_passes_hadolint_and_matches_the_binary() {
    let dockerfile = std::fs::read_to_string(deploy("docker/Dockerfile")).expect("Dockerfile");
    // Ports and config cross-checked with the pipeline it runs.
    let config_path = "/etc/doraflow/container.yaml";
    assert!(
        dockerfile.contains(&format!("\"{config_path}\"")),
        "CMD runs {config_path}"
    );
    assert!(dockerfile.contains("COPY pipelines/ /etc/doraflow/"));
    let config = doraflow::config::Config::from_yaml(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/container.yaml"),
        )
        .expect("container.yaml"),
    )
    .expect("container.yaml validates");
    let expose = dockerfile
        .lines()
        .find(|l| l.starts_with("EXPOSE"))
        .expect("EXPOSE");
    let otlp = config.receivers.otlp.as_ref().expect("otlp");
    for endpoint in [
        otlp.grpc.as_ref().expect("grpc").endpoint.as_str(),
        otlp.http.as_ref().expect("http").endpoint.as_str(),
        config
            .receivers
            .webhook
            .as_ref()
            .expect("webhook")
            .endpoint
            .as_str(),
        config
            .exporters
            .prometheus
            .as_ref()
            .expect("prometheus")
            .endpoint
            .as_str(),
    ] {
        let (host, port) = endpoint.rsplit_once(':').expect("host:port");
        assert_eq!(
            host, "0.0.0.0",
            "{endpoint}: a container listens on every interface"
        );
        assert!(
            expose.split_whitespace().any(|p| p == port),
            "{port} not in {expose}"
        );
    }
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    assert!(dockerfile.contains("HEALTHCHECK"));
    assert!(dockerfile.contains("healthcheck\", \"--url\", \"http://127.0.0.1:9464\""));
    let Some(hadolint) = tools("hadolint") else {
        say_skipped(
            "hadolint",
            "no hadolint (scripts/setup installs it into .cache/tools)",
        );
        return;
    };
    run(
        &hadolint,
        &["deploy/docker/Dockerfile"],
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
}

#[test]
fn the_alertmanager_route_checks() {
    let Some(amtool) = tool("amtool") else {
        say_skipped(
            "amtool",
            "no amtool (scripts/setup installs prometheus-alertmanager)",
        );
        return;
    };
    let out = run(
        &amtool,
        &["check-config", "alertmanager/alertmanager.yml"],
        &deploy(""),
    );
    assert!(
        out.contains("SUCCESS") && out.contains("3 receivers"),
        "{out}"
    );
}

/// A YAML file as JSON.
fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks one tier's manifests against the binary: the config in the
/// ConfigMap validates, the container runs it from where it is mounted, and
/// ports and probes are the Prometheus exporter's.
fn check_tier(dir: &str, container: &str) {
    let base = deploy("kubernetes").join(dir);
    let kustomization = yaml(&base.join("kustomization.yaml"));
    let resources: Vec<String> = kustomization["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .map(|r| r.as_str().expect("a file").to_string())
        .collect();
    let docs: Vec<Value> = resources.iter().map(|r| yaml(&base.join(r))).collect();
    let of = |kind: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {dir}"))
    };
    let configmap = of("ConfigMap");
    let deployment = of("Deployment");
    let (key, text) = configmap["data"]
        .as_object()
        .and_then(|d| d.iter().next())
        .expect("the config");
    let config =
        doraflow::config::Config::from_yaml_with_env(text.as_str().expect("text"), |name| {
            (name == "KAFKA_BROKERS").then(|| "kafka:9092".to_string())
        })
        .unwrap_or_else(|e| panic!("{dir}: the ConfigMap's config is invalid: {e}"));
    let spec = &deployment["spec"]["template"]["spec"];
    let c = spec["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == container)
        .expect("the doraflow container");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let config_arg = args[args
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    let mount = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| config_arg.starts_with(m["mountPath"].as_str().unwrap_or("-")))
        .expect("the config is mounted");
    assert_eq!(
        config_arg,
        format!("{}/{key}", mount["mountPath"].as_str().unwrap())
    );
    let volume = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == mount["name"])
        .expect("the mounted volume");
    assert_eq!(volume["configMap"]["name"], configmap["metadata"]["name"]);
    // Ports and probes: the Prometheus exporter's port, on every interface.
    let endpoint = &config
        .exporters
        .prometheus
        .as_ref()
        .expect("prometheus")
        .endpoint;
    let (host, port) = endpoint.rsplit_once(':').expect("host:port");
    assert_eq!(
        host, "0.0.0.0",
        "{dir}: probes and scrapes come from outside the pod"
    );
    let metrics = c["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a metrics port");
    assert_eq!(metrics["containerPort"].to_string(), port);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "metrics");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "metrics");
    // Restricted security context, requests and limits.
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(spec["securityContext"]["runAsNonRoot"], true);
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    // The Kafka brokers the config reads come from the environment.
    assert!(
        c["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "KAFKA_BROKERS")
    );
    if let Some(service) = docs.iter().find(|d| d["kind"] == "Service") {
        let port = &service["spec"]["ports"][0];
        assert_eq!(port["targetPort"], "metrics");
        if let Some(monitor) = docs.iter().find(|d| d["kind"] == "ServiceMonitor") {
            assert_eq!(monitor["spec"]["endpoints"][0]["port"], port["name"]);
            assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
        }
    }
    // Schemas, where the validator installs.
    if let Some(validate) = tools("kubernetes-validate") {
        let files: Vec<String> = resources.iter().map(|r| format!("{dir}/{r}")).collect();
        let mut args = vec!["--strict"];
        args.extend(files.iter().map(String::as_str));
        let out = run(&validate, &args, &deploy("kubernetes"));
        for r in &resources {
            let kind = yaml(&base.join(r))["kind"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if kind != "ServiceMonitor" {
                assert!(
                    out.contains(&format!("{dir}/{r} passed")),
                    "{r} not validated:\n{out}"
                );
            }
        }
    } else {
        say_skipped(
            "kubernetes-validate",
            "no validator (scripts/setup installs it into .cache/tools)",
        );
    }
}

#[test]
fn the_cluster_tier_manifests_match_the_binary() {
    check_tier("cluster", "doraflow");
    let deployment = yaml(&deploy("kubernetes/cluster/deployment.yaml"));
    assert!(deployment["spec"]["replicas"].as_u64() >= Some(2));
    let pdb = yaml(&deploy("kubernetes/cluster/poddisruptionbudget.yaml"));
    assert_eq!(pdb["spec"]["maxUnavailable"], 1);
    let configmap = yaml(&deploy("kubernetes/cluster/configmap.yaml"));
    // The same topics as pipelines/cluster.yaml.
    let text = configmap["data"]["doraflow.yaml"].as_str().expect("config");
    let ours = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/cluster.yaml"),
    )
    .expect("cluster.yaml");
    for topic in [
        "dora.events",
        "otlp_spans",
        "otlp_logs",
        "otlp_metrics",
        "doraflow.dlq",
    ] {
        assert!(text.contains(topic) && ours.contains(topic), "{topic}");
    }
}

#[test]
fn the_sidecar_manifests_match_the_binary() {
    check_tier("sidecar", "doraflow");
    let configmap = yaml(&deploy("kubernetes/sidecar/configmap.yaml"));
    let config = doraflow::config::Config::from_yaml_with_env(
        configmap["data"]["doraflow.yaml"].as_str().expect("config"),
        |_| Some("kafka:9092".into()),
    )
    .expect("valid");
    // OTLP only on the pod's loopback, where the application's SDK sends it.
    let grpc = config
        .receivers
        .otlp
        .as_ref()
        .and_then(|o| o.grpc.as_ref())
        .expect("grpc");
    assert_eq!(grpc.endpoint, "127.0.0.1:4317");
    let deployment = yaml(&deploy("kubernetes/sidecar/deployment.yaml"));
    let app = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert!(
        app["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "OTEL_EXPORTER_OTLP_ENDPOINT"
                && e["value"] == "http://127.0.0.1:4317"),
        "the application exports to the sidecar"
    );
    assert!(config.exporters.kafka.is_some());
}
