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
    names
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn query(port: u16, promql: &str) -> Vec<Value> {
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
    let Ok(response) = reqwest::get(url).await else {
        return Vec::new();
    };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The value of the one sample of `promql`, once there is one.
async fn value_of(port: u16, promql: &str) -> Option<f64> {
    query(port, promql)
        .await
        .first()
        .and_then(|s| s["value"][1].as_str())
        .and_then(|v| v.parse().ok())
}

fn ts(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .expect("a valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_doraflow_and_the_rules_evaluate() {
    let Some(prometheus) = tool("prometheus") else {
        say_skipped(
            "prometheus scrape",
            "no prometheus (scripts/setup installs Debian's)",
        );
        return;
    };
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d]",
        "interval: 1s",
        256,
    );
    // checkout: 3 deployments this week, the newest followed by an incident
    // of 30 minutes; 100 requests, 5 of them errors (HighErrorRate fires).
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
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
    let names = metric_names(&rules);
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            live.lines().any(|l| !l.starts_with('#')
                && l.starts_with(name.as_str())
                && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))),
            "the rules use {name}, which /metrics does not have"
        );
    }
}
