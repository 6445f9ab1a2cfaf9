//! The PagerDuty exporter against a local endpoint that implements the Events
//! API v2 strictly (anything off the spec gets 400): one trigger and one
//! resolve per episode with a stable dedup_key; 429 then 500 then success
//! delivers once; an endpoint down (nothing listening) then back gets the
//! trigger and the resolve once each, in order; with a retry budget
//! (`max_attempts`), an outage longer than it is counted as dropped.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use common::pagerduty::{pagerduty, pagerduty_on, problems};
use common::{Doraflow, free_port};
use serde_json::{Value, json};

use common::pagerduty::ROUTING_KEY;

fn start(url: &str, max_attempts: u32) -> Doraflow {
    start_with(url, max_attempts, "")
}

fn start_with(url: &str, max_attempts: u32, extra: &str) -> Doraflow {
    Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
        &format!(
            "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    initial_backoff: 10ms\n    max_backoff: 50ms\n    max_attempts: {max_attempts}\n    dashboard_url: \"http://127.0.0.1:9464/\"\n{extra}",
            key = common::secret_ref(ROUTING_KEY),
        ),
    )
}

#[tokio::test]
async fn an_episode_is_one_trigger_and_one_resolve_with_one_dedup_key() {
    let (url, endpoint) = pagerduty(&[]).await;
    let doraflow = start(&url, 6);
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the trigger", || {
        endpoint.lock().unwrap().accepted.len() == 1
    })
    .await;
    common::send_checkout_spans(&doraflow, 100, 0).await;
    common::eventually("the resolve", || {
        endpoint.lock().unwrap().accepted.len() == 2
    })
    .await;
    // Several more evaluations: nothing else is sent.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = endpoint.lock().unwrap();
    assert_eq!(endpoint.attempts, 2);
    let (trigger, resolve) = (&endpoint.accepted[0], &endpoint.accepted[1]);
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(resolve["event_action"], "resolve");
    assert_eq!(
        trigger["dedup_key"],
        "doraflow/HighErrorRate/checkout/production"
    );
    assert_eq!(resolve["dedup_key"], trigger["dedup_key"]);
    let payload = &trigger["payload"];
    assert_eq!(
        payload["summary"],
        "checkout (production): error ratio 1.50% > 1.00%"
    );
    assert_eq!(payload["severity"], "critical");
    assert_eq!(payload["component"], "checkout");
    assert_eq!(payload["group"], "production");
    assert_eq!(payload["class"], "HighErrorRate");
    assert_eq!(payload["custom_details"]["value"], 0.015);
    assert_eq!(payload["custom_details"]["threshold"], 0.01);
    assert_eq!(payload["custom_details"]["window"], "5m");
    assert_eq!(
        payload["custom_details"]["dashboard"],
        "http://127.0.0.1:9464/"
    );
}

#[tokio::test]
async fn throttling_then_a_server_error_then_success_delivers_exactly_once() {
    let (url, endpoint) = pagerduty(&[429, 500]).await;
    let doraflow = start(&url, 6);
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the trigger", || {
        endpoint.lock().unwrap().accepted.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let endpoint = endpoint.lock().unwrap();
    assert_eq!(endpoint.attempts, 3);
    assert_eq!(endpoint.accepted.len(), 1);
    let m = doraflow.metrics();
    assert_eq!(
        m.get("doraflow_exporter_sent_total", &[("exporter", "pagerduty")]),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "doraflow_exporter_failed_total",
            &[("exporter", "pagerduty"), ("reason", "retryable")]
        ),
        Some(2.0)
    );
}

#[tokio::test]
async fn an_outage_longer_than_the_retry_budget_is_counted_as_dropped() {
    let (url, endpoint) = pagerduty(&[503; 10]).await;
    let doraflow = start(&url, 3);
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("three attempts", || endpoint.lock().unwrap().attempts == 3).await;
    let dropped = [("exporter", "pagerduty"), ("reason", "retries_exhausted")];
    let deadline = Instant::now() + Duration::from_secs(10);
    while doraflow
        .metrics()
        .get("doraflow_exporter_dropped_total", &dropped)
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the drop was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(endpoint.lock().unwrap().accepted.len(), 0);
}

#[tokio::test]
async fn an_endpoint_down_then_back_gets_the_trigger_and_the_resolve_once_each() {
    // The endpoint's port, with nothing listening yet: every attempt is
    // refused, as when PagerDuty cannot be reached.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/v2/enqueue");
    // No `max_attempts`: the default retries until delivered.
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
        &format!(
            "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    initial_backoff: 10ms\n    max_backoff: 50ms\n    circuit_breaker_cooldown: 100ms\n",
            key = common::secret_ref(ROUTING_KEY),
        ),
    );
    let failed = |d: &Doraflow| {
        d.metrics().counter(
            "doraflow_exporter_failed_total",
            &[("exporter", "pagerduty"), ("reason", "retryable")],
        )
    };
    common::send_checkout_spans(&doraflow, 197, 3).await;
    // Both transitions happen while the endpoint is down, well past what
    // the old budget of 6 attempts allowed.
    common::eventually("the trigger retried", || failed(&doraflow) >= 6.0).await;
    common::send_checkout_spans(&doraflow, 100, 0).await;
    common::eventually("more retries", || failed(&doraflow) >= 20.0).await;
    let (_, endpoint) = pagerduty_on(port, &[]).await;
    common::eventually("both delivered", || {
        endpoint.lock().unwrap().accepted.len() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = endpoint.lock().unwrap();
    assert_eq!(endpoint.attempts, 2, "each sent once the endpoint was back");
    assert_eq!(endpoint.accepted[0]["event_action"], "trigger");
    assert_eq!(endpoint.accepted[1]["event_action"], "resolve");
    assert_eq!(
        endpoint.accepted[1]["dedup_key"],
        endpoint.accepted[0]["dedup_key"]
    );
    let m = doraflow.metrics();
    assert_eq!(
        m.get("doraflow_exporter_sent_total", &[("exporter", "pagerduty")]),
        Some(2.0)
    );
    assert!(m.samples("doraflow_exporter_dropped_total").is_empty());
}

/// A page made while PagerDuty cannot be reached, and doraflow stopped
/// before it could deliver it: the checkpoint keeps the undelivered
/// trigger, and after the restart (the alert still firing, so no new
/// transition is made) it is delivered, once.
#[tokio::test]
async fn a_trigger_undelivered_at_a_restart_is_delivered_after_it() {
    let port = free_port();
    let state = common::TempDir::new("pagerduty-outbox");
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
  pagerduty:
    url: \"http://127.0.0.1:{port}/v2/enqueue\"
    routing_key: \"{key}\"
    initial_backoff: 10ms
    max_backoff: 50ms
    circuit_breaker_cooldown: 100ms
storage:
  dir: \"{dir}\"
pipelines:
  main: {{ receivers: [otlp], processors: [red, alerts], exporters: [prometheus, pagerduty] }}
",
        key = common::secret_ref(ROUTING_KEY),
        dir = state.0.display(),
    );
    let mut doraflow = Doraflow::start_yaml(&config, prometheus, grpc, 0);
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the trigger retried", || {
        doraflow.metrics().counter(
            "doraflow_exporter_failed_total",
            &[("exporter", "pagerduty"), ("reason", "retryable")],
        ) >= 3.0
    })
    .await;
    tokio::task::spawn_blocking(move || doraflow.terminate())
        .await
        .unwrap();

    let (_, endpoint) = pagerduty_on(port, &[]).await;
    let doraflow = Doraflow::start_yaml(&config, prometheus, grpc, 0);
    common::eventually("the trigger delivered", || {
        endpoint.lock().unwrap().accepted.len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let endpoint = endpoint.lock().unwrap();
    assert_eq!(endpoint.attempts, 1);
    assert_eq!(endpoint.accepted[0]["event_action"], "trigger");
    assert_eq!(
        endpoint.accepted[0]["dedup_key"],
        "doraflow/HighErrorRate/checkout/production"
    );
    assert_eq!(
        endpoint.accepted[0]["payload"]["summary"],
        "checkout (production): error ratio 1.50% > 1.00%"
    );
    assert_eq!(
        doraflow
            .metrics()
            .get("doraflow_exporter_sent_total", &[("exporter", "pagerduty")]),
        Some(1.0)
    );
}

#[test]
fn the_strict_endpoint_refuses_what_the_spec_does_not_allow() {
    let good = json!({"routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "x", "severity": "critical"}});
    assert!(problems(&good).is_empty());
    let mut bad = good.clone();
    bad["payload"]["severity"] = json!("fatal");
    bad["extra"] = json!(1);
    assert_eq!(problems(&bad).len(), 2);
    assert!(!problems(&json!({"routing_key": ROUTING_KEY, "event_action": "resolve"})).is_empty());
}

/// A local Change Events endpoint: keeps what it gets, answers 202.
async fn change_endpoint() -> (String, Arc<Mutex<Vec<Value>>>) {
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let app = axum::Router::new()
        .route(
            "/v2/change/enqueue",
            axum::routing::post(
                |State(r): State<Arc<Mutex<Vec<Value>>>>, Json(v): Json<Value>| async move {
                    let ok = v["routing_key"] == ROUTING_KEY
                        && v["payload"]["summary"]
                            .as_str()
                            .is_some_and(|s| !s.is_empty())
                        && v["payload"]["source"]
                            .as_str()
                            .is_some_and(|s| !s.is_empty());
                    r.lock().unwrap().push(v);
                    if ok {
                        StatusCode::ACCEPTED
                    } else {
                        StatusCode::BAD_REQUEST
                    }
                },
            ),
        )
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (
        format!("http://127.0.0.1:{port}/v2/change/enqueue"),
        received,
    )
}

#[tokio::test]
async fn production_deployments_become_change_events_and_backfill_does_not() {
    let (url, _) = pagerduty(&[]).await;
    let (change_url, changes) = change_endpoint().await;
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "windows: [7d]",
        "interval: 1s",
        256,
        &format!(
            "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    change_events: true\n    change_url: \"{change_url}\"\n",
            key = common::secret_ref(ROUTING_KEY),
        ),
    );
    let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
    let deployed = |id: &str, env: &str, at: chrono::DateTime<chrono::Utc>| {
        json!({"context": {"specversion": "0.5.1", "id": id, "source": "/cd",
            "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": at.to_rfc3339()},
          "subject": {"id": "checkout", "source": "/cd",
            "content": {"environment": {"id": env}, "artifactId": "pkg:oci/checkout@sha256:9"}}})
    };
    let batch = json!([
        deployed("now-prod", "production", now - chrono::Duration::minutes(2)),
        deployed("now-staging", "staging", now - chrono::Duration::minutes(1)),
        deployed("old-prod", "production", now - chrono::Duration::days(3)),
    ]);
    let response = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(batch.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    common::eventually("the change event", || changes.lock().unwrap().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let changes = changes.lock().unwrap();
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(
        changes[0]["payload"]["summary"],
        "checkout deployed pkg:oci/checkout@sha256:9 to production"
    );
    assert_eq!(
        changes[0]["payload"]["custom_details"]["outcome"],
        "success"
    );
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_a_probe_closes_it() {
    // Three failures: the trigger's two attempts, then its third after the
    // circuit opened; the resolve waits out the cool-down, probes, succeeds.
    let (url, endpoint) = pagerduty(&[503, 503, 503]).await;
    let doraflow = start_with(
        &url,
        3,
        "    circuit_breaker_threshold: 2\n    circuit_breaker_cooldown: 200ms\n",
    );
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("three attempts", || endpoint.lock().unwrap().attempts == 3).await;
    common::send_checkout_spans(&doraflow, 100, 0).await;
    common::eventually("the resolve", || {
        endpoint.lock().unwrap().accepted.len() == 1
    })
    .await;
    {
        let endpoint = endpoint.lock().unwrap();
        assert_eq!(endpoint.attempts, 4);
        assert_eq!(endpoint.accepted[0]["event_action"], "resolve");
    }
    let pd = [("exporter", "pagerduty")];
    // The endpoint has answered; the exporter counts the answer just after.
    common::eventually("the delivery counted", || {
        doraflow.metrics().get("doraflow_exporter_sent_total", &pd) == Some(1.0)
    })
    .await;
    let m = doraflow.metrics();
    assert_eq!(
        m.get("doraflow_exporter_circuit_opened_total", &pd),
        Some(2.0)
    );
    assert_eq!(
        m.get(
            "doraflow_exporter_dropped_total",
            &[("exporter", "pagerduty"), ("reason", "retries_exhausted")]
        ),
        Some(1.0)
    );
    assert_eq!(m.get("doraflow_exporter_sent_total", &pd), Some(1.0));
}

#[tokio::test]
async fn an_event_the_api_refuses_is_logged_and_counted_not_retried() {
    let (url, endpoint) = pagerduty(&[]).await;
    // A routing key of the wrong length: the strict endpoint answers 400.
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { enabled: false }",
        "interval: 100ms",
        256,
        &format!(
            "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    initial_backoff: 10ms\n",
            key = common::secret_ref("too-short"),
        ),
    );
    common::send_checkout_spans(&doraflow, 197, 3).await;
    common::eventually("the refused attempt", || {
        endpoint.lock().unwrap().attempts == 1
    })
    .await;
    let rejected = [("exporter", "pagerduty"), ("reason", "rejected")];
    let deadline = Instant::now() + Duration::from_secs(10);
    while doraflow
        .metrics()
        .get("doraflow_exporter_failed_total", &rejected)
        != Some(1.0)
    {
        assert!(Instant::now() < deadline, "the refusal was not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let endpoint = endpoint.lock().unwrap();
    assert_eq!(endpoint.attempts, 1, "a 400 is not retried");
    assert!(endpoint.accepted.is_empty());
}

#[tokio::test]
async fn backfilling_a_month_of_failures_and_incidents_pages_nobody() {
    let (url, endpoint) = pagerduty(&[]).await;
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "deploy_pipelines: [{ pipeline: deploy-checkout, service: checkout, environment: production }]",
        "interval: 100ms",
        256,
        &format!(
            "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    change_events: true\n",
            key = common::secret_ref(ROUTING_KEY),
        ),
    );
    let now = chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now());
    let event = |id: String, kind: &str, subject: Value, days_ago: i64, hours: i64| {
        let at = now - chrono::Duration::days(days_ago) + chrono::Duration::hours(hours);
        json!({"context": {"specversion": "0.5.1", "id": id, "source": "/backfill",
            "type": format!("dev.cdevents.{kind}.0.3.0"), "timestamp": at.to_rfc3339()},
          "subject": subject})
    };
    let mut events = Vec::new();
    for day in (3..33).rev() {
        let failed = day % 4 == 0;
        events.push(if failed {
            event(format!("run-{day}"), "pipelinerun.finished",
                json!({"id": format!("run-{day}"), "source": "/cd",
                       "content": {"pipelineName": "deploy-checkout", "outcome": "failure"}}), day, 0)
        } else {
            event(format!("deploy-{day}"), "service.deployed",
                json!({"id": "checkout", "source": "/cd", "content": {"environment": {"id": "production"}}}), day, 0)
        });
        let incident = json!({"id": format!("inc-{day}"), "source": "/mon",
            "content": {"service": {"id": "checkout"}, "environment": {"id": "production"}}});
        events.push(event(
            format!("open-{day}"),
            "incident.detected",
            incident.clone(),
            day,
            1,
        ));
        events.push(event(
            format!("resolve-{day}"),
            "incident.resolved",
            incident,
            day,
            4,
        ));
    }
    // The last deployment, two days ago, succeeded: nothing is failing now.
    events.push(event("deploy-latest".into(), "service.deployed",
        json!({"id": "checkout", "source": "/cd", "content": {"environment": {"id": "production"}}}), 2, 0));
    let response = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(Value::Array(events).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // Twenty evaluations later: no page, no alert, no change event.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(endpoint.lock().unwrap().attempts, 0);
    let (_, alerts) = common::get(doraflow.prometheus, "/api/v1/alerts").unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&alerts).unwrap()["alerts"],
        json!([])
    );
    // The history is there all the same.
    let failed = doraflow.metrics().get(
        "dora_deployments_total",
        &[
            ("service", "checkout"),
            ("environment", "production"),
            ("outcome", "failure"),
        ],
    );
    assert_eq!(failed, Some(8.0));
}
