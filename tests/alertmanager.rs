//! A real Alertmanager (Debian's `prometheus-alertmanager`, which
//! `scripts/test` installs) receives doraflow's alerts: checked through its
//! own API, firing then resolved. The same episode also goes out as
//! Alertmanager webhook (version 4) payloads to a local endpoint.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Doraflow, TempDir, free_port, say_skipped};
use serde_json::Value;

struct Alertmanager {
    child: Child,
    port: u16,
    _dir: TempDir,
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn binary() -> Option<String> {
    ["prometheus-alertmanager", "alertmanager"]
        .iter()
        .find_map(|name| {
            Command::new(name)
                .arg("--version")
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| name.to_string())
        })
}

/// The user and password of the Alertmanager started with basic auth, and
/// the password's bcrypt hash (cost 4) as its `web.config.file` wants it,
/// made with Python's `crypt.crypt("am-s3cret", crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16))`.
const AM_USER: &str = "doraflow";
const AM_PASSWORD: &str = "am-s3cret";
const AM_PASSWORD_BCRYPT: &str = "$2b$04$pMr6sqy4rKPdCwdy3Ivswu2crmkr7QNZHA3tKP/BCn12//lWWKai2";

fn start_alertmanager(binary: &str) -> Alertmanager {
    start_alertmanager_with(binary, None)
}

/// With `web_config`, Alertmanager's `--web.config.file` (its own basic auth).
fn start_alertmanager_with(binary: &str, web_config: Option<&str>) -> Alertmanager {
    start_alertmanager_configured(
        binary,
        web_config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
}

/// With `alertmanager.yml` as given.
fn start_alertmanager_configured(
    binary: &str,
    web_config: Option<&str>,
    config_text: &str,
) -> Alertmanager {
    let dir = TempDir::new("alertmanager");
    let config = dir.0.join("alertmanager.yml");
    std::fs::write(&config, config_text).unwrap();
    let port = free_port();
    let mut command = Command::new(binary);
    if let Some(web_config) = web_config {
        let path = dir.0.join("web.yml");
        std::fs::write(&path, web_config).unwrap();
        command.arg(format!("--web.config.file={}", path.display()));
    }
    let child = command
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.0.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start alertmanager");
    let alertmanager = Alertmanager {
        child,
        port,
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    // With basic auth on, an unauthenticated probe is 401: it answers, so it is up.
    while !common::get(port, "/-/ready").is_ok_and(|(s, _)| s == 200 || s == 401) {
        assert!(
            Instant::now() < deadline,
            "alertmanager not ready within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    alertmanager
}

fn alerts_in(alertmanager: &Alertmanager) -> Vec<Value> {
    let (status, body) = common::get(alertmanager.port, "/api/v2/alerts").unwrap();
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// What a local webhook endpoint received: each payload with its
/// `authorization` header (empty when none).
type Hooked = Arc<Mutex<Vec<(String, Value)>>>;

/// Serves `POST /hook` on a free port, keeping what comes; returns the port.
async fn hook_endpoint(received: Hooked) -> u16 {
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Hooked>,
                 headers: axum::http::HeaderMap,
                 axum::Json(v): axum::Json<Value>| async move {
                    let authorization = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    r.lock().unwrap().push((authorization, v));
                    "ok"
                },
            ),
        )
        .with_state(received);
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn a_real_alertmanager_sees_the_alert_fire_and_resolve() {
    let Some(binary) = binary() else {
        say_skipped(
            "a_real_alertmanager_sees_the_alert_fire_and_resolve",
            "prometheus-alertmanager is not installed (scripts/test installs it)",
        );
        return;
    };
    let alertmanager = start_alertmanager(&binary);

    // A local endpoint that keeps the webhook payloads it receives.
    let received: Hooked = Arc::default();
    let webhook_port = hook_endpoint(received.clone()).await;

    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
        &format!(
            "  alertmanager:\n    url: \"http://127.0.0.1:{}\"\n    resend_interval: 1s\n  webhook:\n    url: \"http://127.0.0.1:{webhook_port}/hook\"\n",
            alertmanager.port
        ),
    );
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the alert in Alertmanager", || {
        alerts_in(&alertmanager).len() == 1
    })
    .await;
    let alert = &alerts_in(&alertmanager)[0];
    assert_eq!(alert["labels"]["alertname"], "HighErrorRate");
    assert_eq!(alert["labels"]["service"], "checkout");
    assert_eq!(alert["labels"]["environment"], "production");
    assert_eq!(alert["labels"]["severity"], "critical");
    assert_eq!(alert["status"]["state"], "active");
    assert_eq!(
        alert["annotations"]["summary"],
        "checkout (production): error ratio 1.50% > 1.00%"
    );

    common::send_checkout_spans(&doraflow, 100, 0).await;
    common::eventually("the alert resolved in Alertmanager", || {
        alerts_in(&alertmanager).is_empty()
    })
    .await;

    common::eventually("two webhook payloads", || {
        received.lock().unwrap().len() == 2
    })
    .await;
    let payloads: Vec<Value> = received
        .lock()
        .unwrap()
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(payloads[0]["version"], "4");
    assert_eq!(payloads[0]["status"], "firing");
    assert_eq!(payloads[1]["status"], "resolved");
    assert_eq!(
        payloads[0]["alerts"][0]["labels"]["alertname"],
        "HighErrorRate"
    );
    assert_eq!(
        payloads[0]["alerts"][0]["fingerprint"],
        payloads[1]["alerts"][0]["fingerprint"]
    );
    assert_eq!(
        payloads[0]["alerts"][0]["startsAt"],
        payloads[1]["alerts"][0]["startsAt"]
    );
}

/// GET `path` with HTTP basic credentials: (status, body).
async fn get_as(port: u16, path: &str, user: &str, password: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}{path}"))
        .basic_auth(user, Some(password))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// An Alertmanager that asks for basic auth (its `basic_auth_users`) takes
/// doraflow's alert when `auth.basic_auth` is set; the webhook exporter
/// sends its bearer token.
#[tokio::test]
async fn an_alertmanager_with_basic_auth_takes_the_alert_with_credentials() {
    let Some(binary) = binary() else {
        say_skipped(
            "an_alertmanager_with_basic_auth_takes_the_alert_with_credentials",
            "prometheus-alertmanager is not installed (scripts/test installs it)",
        );
        return;
    };
    let alertmanager = start_alertmanager_with(
        &binary,
        Some(&format!(
            "basic_auth_users:\n  {AM_USER}: '{AM_PASSWORD_BCRYPT}'\n"
        )),
    );
    let port = alertmanager.port;
    // Without credentials Alertmanager refuses: the auth is really on.
    assert_eq!(common::get(port, "/api/v2/alerts").unwrap().0, 401);

    let received: Hooked = Arc::default();
    let webhook_port = hook_endpoint(received.clone()).await;

    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
        &format!(
            "  alertmanager:\n    url: \"http://127.0.0.1:{port}\"\n    resend_interval: 1s\n    auth: {{ basic_auth: {{ username: {AM_USER}, password: \"{}\" }} }}\n  webhook:\n    url: \"http://127.0.0.1:{webhook_port}/hook\"\n    auth: {{ bearer_token: \"{}\" }}\n",
            common::secret_ref(AM_PASSWORD),
            common::secret_ref("hook-t0ken"),
        ),
    );
    common::send_checkout_spans(&doraflow, 197, 3).await;
    let mut alerts = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    while alerts.as_array().is_none_or(|a| a.is_empty()) {
        assert!(
            Instant::now() < deadline,
            "no alert in Alertmanager within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (status, body) = get_as(port, "/api/v2/alerts", AM_USER, AM_PASSWORD).await;
        assert_eq!(status, 200, "{body}");
        alerts = serde_json::from_str(&body).unwrap();
    }
    assert_eq!(alerts[0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(alerts[0]["labels"]["service"], "checkout");
    common::eventually("the webhook payload", || {
        !received.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(received.lock().unwrap()[0].0, "Bearer hook-t0ken");
    let m = doraflow.metrics();
    assert_eq!(
        m.counter(
            "doraflow_exporter_failed_total",
            &[("exporter", "alertmanager"), ("reason", "rejected")]
        ),
        0.0
    );
}

/// Alertmanager forgets an alert not re-sent within its `endsAt` (four
/// re-send intervals ahead). An alert still firing when doraflow restarts
/// (state restored from `storage`) must go on being re-sent, or Alertmanager
/// resolves it on its own a few intervals later while doraflow still fires.
#[tokio::test]
async fn an_alert_firing_across_a_restart_stays_active_in_alertmanager() {
    let Some(binary) = binary() else {
        say_skipped(
            "an_alert_firing_across_a_restart_stays_active_in_alertmanager",
            "prometheus-alertmanager is not installed (scripts/test installs it)",
        );
        return;
    };
    let alertmanager = start_alertmanager(&binary);
    let state = TempDir::new("alertmanager-restart");
    let (grpc, prometheus) = (free_port(), free_port());
    let config = format!(
        "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
processors:
  red: {{ window: 5m, slice: 10s }}
  alerts: {{ interval: 100ms }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
  alertmanager: {{ url: \"http://127.0.0.1:{}\", resend_interval: 1s }}
storage:
  dir: \"{}\"
pipelines:
  main: {{ receivers: [otlp], processors: [red, alerts], exporters: [prometheus, alertmanager] }}
",
        alertmanager.port,
        state.0.display()
    );
    let mut doraflow = Doraflow::start_yaml(&config, prometheus, grpc, 0);
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the alert in Alertmanager", || {
        alerts_in(&alertmanager).len() == 1
    })
    .await;
    tokio::task::spawn_blocking(move || doraflow.terminate())
        .await
        .unwrap();

    let doraflow = Doraflow::start_yaml(&config, prometheus, grpc, 0);
    // Past four re-send intervals since the last push before the restart:
    // unless re-sent, Alertmanager has resolved it by now.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let alerts = alerts_in(&alertmanager);
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["labels"]["alertname"], "HighErrorRate");
    assert_eq!(alerts[0]["status"]["state"], "active");
    assert_eq!(
        doraflow.metrics().get(
            "doraflow_alerts_firing",
            &[
                ("alertname", "HighErrorRate"),
                ("service", "checkout"),
                ("environment", "production"),
                ("severity", "critical"),
            ]
        ),
        Some(1.0)
    );
}

/// Alertmanager as a source: a real Alertmanager, routing to doraflow's
/// `POST /alertmanager` with a bearer token, is given an alert of
/// `checkout` that started 10 minutes ago; it notifies doraflow, which opens
/// the incident. The alert then ends (endsAt 2 minutes after it started is
/// set by the test, 8 minutes ago) and Alertmanager's resolved notification
/// closes it: time to restore exactly 120 s. An alert of another severity
/// (not matching the selector) opens nothing.
#[tokio::test]
async fn a_real_alertmanager_firing_and_resolving_opens_and_closes_the_incident() {
    let Some(binary) = binary() else {
        say_skipped(
            "a_real_alertmanager_firing_and_resolving_opens_and_closes_the_incident",
            "no alertmanager binary (scripts/test installs prometheus-alertmanager)",
        );
        return;
    };
    let dir = TempDir::new("alertmanager-source");
    let token = dir.0.join("token");
    std::fs::write(&token, "am-to-doraflow").unwrap();
    let (prometheus, webhook) = (free_port(), free_port());
    let doraflow = Doraflow::start_yaml(
        &format!(
            "receivers:
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    alertmanager:
      bearer_token: \"${{file:{}}}\"
      selector: {{ severity: page }}
processors:
  dora: {{ windows: [7d] }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [webhook], processors: [dora], exporters: [prometheus] }}
",
            token.display()
        ),
        prometheus,
        0,
        webhook,
    );
    let alertmanager = start_alertmanager_configured(
        &binary,
        None,
        &format!(
            "route:
  receiver: doraflow
  group_by: [alertname, service]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: doraflow
    webhook_configs:
      - url: http://127.0.0.1:{webhook}/alertmanager
        send_resolved: true
        http_config:
          authorization:
            credentials_file: {}
",
            token.display()
        ),
    );
    let now = common::unix_now();
    let started = common::rfc3339(now - 600);
    let client = reqwest::Client::new();
    let post_alerts = |alerts: Value| {
        let client = client.clone();
        let url = format!("http://127.0.0.1:{}/api/v2/alerts", alertmanager.port);
        async move {
            let response = client.post(url).json(&alerts).send().await.unwrap();
            assert_eq!(response.status(), 200);
        }
    };
    let alert = |severity: &str, ends: Option<String>| {
        let mut alert = serde_json::json!({
            "labels": { "alertname": "HighErrorRate", "service": "checkout", "severity": severity },
            "annotations": { "summary": "error ratio above 1%" },
            "startsAt": started,
            "generatorURL": "http://prometheus:9090/graph",
        });
        if let Some(ends) = ends {
            alert["endsAt"] = serde_json::json!(ends);
        }
        alert
    };
    post_alerts(serde_json::json!([
        alert("page", None),
        alert("ticket", None)
    ]))
    .await;
    let series = [("service", "checkout"), ("environment", "production")];
    common::eventually_within("the incident opens", Duration::from_secs(30), || {
        doraflow.metrics().get("dora_incidents_open", &series) == Some(1.0)
    })
    .await;
    // Ends 2 minutes after it started: Alertmanager sends it as resolved.
    post_alerts(serde_json::json!([alert(
        "page",
        Some(common::rfc3339(now - 480))
    )]))
    .await;
    common::eventually_within("the incident resolves", Duration::from_secs(30), || {
        doraflow.metrics().get("dora_incidents_open", &series) == Some(0.0)
    })
    .await;
    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "dora_mean_time_to_restore_seconds",
            &[
                ("service", "checkout"),
                ("environment", "production"),
                ("window", "7d")
            ]
        ),
        Some(120.0)
    );
    // Only the paging alert was an incident; the ticket alert was ignored.
    assert!(
        m.counter(
            "doraflow_receiver_requests_total",
            &[("receiver", "alertmanager"), ("result", "success")]
        ) >= 2.0
    );
    let (status, api) = common::get(doraflow.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    let incidents: u64 = api["dora"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s["windows"][0]["time_to_restore"]["count"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(incidents, 1, "{api}");
}
