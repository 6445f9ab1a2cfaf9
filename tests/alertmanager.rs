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

fn start_alertmanager(binary: &str) -> Alertmanager {
    let dir = TempDir::new("alertmanager");
    let config = dir.0.join("alertmanager.yml");
    std::fs::write(
        &config,
        "route:\n  receiver: 'null'\nreceivers:\n  - name: 'null'\n",
    )
    .unwrap();
    let port = free_port();
    let child = Command::new(binary)
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
    while !common::get(port, "/-/ready").is_ok_and(|(s, _)| s == 200) {
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
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let webhook_port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", webhook_port))
        .await
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/hook",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Arc<Mutex<Vec<Value>>>>,
                 axum::Json(v): axum::Json<Value>| async move {
                    r.lock().unwrap().push(v);
                    "ok"
                },
            ),
        )
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

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
    let payloads = received.lock().unwrap().clone();
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
