//! CDEvents over the webhook of a real doraflow process: structured, batch
//! and binary modes, de-duplication, precise 400s that change nothing, and
//! the DORA figures on `/metrics` and `/api/v1/dora`, computed by hand.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::Doraflow;
use serde_json::{Value, json};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

fn rfc3339(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .expect("valid time")
        .to_rfc3339()
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn cdevent(id: &str, kind: &str, at: i64, subject: Value) -> Value {
    json!({
        "context": {"specversion": "0.5.1", "id": id, "source": "/ci/test",
                    "type": format!("dev.cdevents.{kind}.0.3.0"), "timestamp": rfc3339(at)},
        "subject": subject,
    })
}

fn deployed(id: &str, at: i64, artifact: &str) -> Value {
    cdevent(
        id,
        "service.deployed",
        at,
        json!({"id": "service/payments", "source": "/ci",
        "content": {"environment": {"id": "production"}, "artifactId": artifact}}),
    )
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    content_type: &str,
    body: &Value,
) -> (u16, Value) {
    let response = client
        .post(url)
        .header("content-type", content_type)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn series(labels: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut l = vec![("service", "payments"), ("environment", "production")];
    l.extend_from_slice(labels);
    l
}

/// payments/production, times relative to N = now:
/// - change p1 created N-3d, in artifact art1, deployed (D1) N-2d: lead 1d;
/// - D2 at N-1d deploys art2 with change p2 (customData, created N-1d-6h): lead 6h;
/// - incident inc1 opens N-1d+1h (after D2: a failed change), resolved N-1d+3h: 2h;
/// - D3 at N-12h.
///
/// 7d window: 3 deployments (3/7 a day), 1 failed change of 3 (1/3), lead
/// mean 15h (54000 s), time to restore 2h, D2 recovered 3h after it was
/// deployed (its incident resolved before D3 came), no open incident.
#[tokio::test]
async fn cdevents_in_every_mode_give_exact_dora_figures() {
    let doraflow = Doraflow::start_full("window: 5m, slice: 10s", "windows: [7d, 30d]", 256);
    let client = reqwest::Client::new();
    let url = doraflow.webhook_url();
    let n = now();

    // Structured mode: a CloudEvents envelope with the CDEvent as data.
    let envelope = json!({"specversion": "1.0", "id": "d1", "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0",
        "datacontenttype": "application/json", "data": deployed("d1", n - 2 * DAY, "art1")});
    assert_eq!(
        post(&client, &url, "application/cloudevents+json", &envelope)
            .await
            .0,
        202
    );

    // Binary mode: CloudEvents attributes in ce-* headers.
    let mut d2 = deployed("d2", n - DAY, "art2");
    d2["customData"] = json!({"changes": [{"id": "p2", "timestamp": rfc3339(n - DAY - 6 * HOUR)}]});
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "d2")
        .header("ce-type", "dev.cdevents.service.deployed.0.3.0")
        .header("ce-source", "/ci")
        .body(d2.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);

    // A batch with the rest, and d1 again (a retry: counted once).
    let batch = json!([
        cdevent(
            "p1-created",
            "change.created",
            n - 3 * DAY,
            json!({"id": "p1", "source": "/git"})
        ),
        cdevent(
            "art1-packaged",
            "artifact.packaged",
            n - 3 * DAY + HOUR,
            json!({"id": "art1", "source": "/ci", "content": {"change": {"id": "p1"}}})
        ),
        cdevent(
            "inc1-detected",
            "incident.detected",
            n - DAY + HOUR,
            json!({"id": "inc1", "source": "/mon", "content": {"environment": {"id": "production"}, "service": {"id": "payments"}}})
        ),
        cdevent(
            "inc1-resolved",
            "incident.resolved",
            n - DAY + 3 * HOUR,
            json!({"id": "inc1", "source": "/mon", "content": {"environment": {"id": "production"}, "service": {"id": "payments"}}})
        ),
        deployed("d3", n - 12 * HOUR, "art3"),
        deployed("d1", n - 2 * DAY, "art1"),
    ]);
    let (status, body) = post(&client, &url, "application/cloudevents-batch+json", &batch).await;
    assert_eq!((status, &body["accepted"]), (202, &json!(6)));

    let m = doraflow.metrics();
    let get = |name: &str, extra: &[(&'static str, &'static str)]| m.get(name, &series(extra));
    assert_eq!(
        get("dora_deployments_total", &[("outcome", "success")]),
        Some(3.0)
    );
    assert_eq!(
        get("dora_deployments_total", &[("outcome", "rollback")]),
        Some(0.0)
    );
    assert_eq!(
        get(
            "dora_failed_changes_total",
            &[("reason", "incident_window")]
        ),
        Some(1.0)
    );
    assert_eq!(get("dora_incidents_open", &[]), Some(0.0));
    let week = [("window", "7d")];
    assert_eq!(
        get("dora_deployment_frequency_per_day", &week),
        Some(3.0 / 7.0)
    );
    assert_eq!(get("dora_change_failure_ratio", &week), Some(1.0 / 3.0));
    // Deployed 2 days, 1 day and 12 hours ago: on three calendar days (UTC)
    // of the week, daily, unless it is before noon and the last two share
    // a day (two days: weekly); over 30 days the median week had none, the
    // month three: monthly.
    let answer = |window, answer| {
        get(
            "dora_deployment_frequency_answer",
            &[("window", window), ("answer", answer)],
        )
    };
    let days: std::collections::BTreeSet<i64> = [n - 2 * DAY, n - DAY, n - 12 * HOUR]
        .iter()
        .map(|t| t.div_euclid(DAY))
        .collect();
    let week_answer = if days.len() == 3 { "daily" } else { "weekly" };
    assert_eq!(answer("7d", week_answer), Some(1.0), "{days:?}");
    assert_eq!(answer("7d", "on_demand"), Some(0.0));
    assert_eq!(answer("30d", "monthly"), Some(1.0));
    assert_eq!(answer("30d", "weekly"), Some(0.0));
    assert_eq!(
        get("dora_mean_time_to_restore_seconds", &week),
        Some(7_200.0)
    );
    let lead_p95 = get(
        "dora_lead_time_seconds",
        &[("window", "7d"), ("quantile", "0.95")],
    )
    .unwrap();
    assert!(
        (86_400.0..=86_400.0 * 1.001).contains(&lead_p95),
        "{lead_p95}"
    );
    let level = |metric, level| {
        get(
            "dora_performance_level",
            &[("window", "7d"), ("metric", metric), ("level", level)],
        )
    };
    assert_eq!(level("change_failure_rate", "low"), Some(1.0));
    assert_eq!(level("change_failure_rate", "elite"), Some(0.0));
    assert_eq!(level("deployment_frequency", "high"), Some(1.0));
    assert_eq!(level("lead_time", "elite"), Some(1.0));
    // Every lead time in the classic histogram: 6h and 1d.
    assert_eq!(get("dora_change_lead_time_seconds_count", &[]), Some(2.0));
    assert_eq!(
        get("dora_change_lead_time_seconds_sum", &[]),
        Some(108_000.0)
    );
    assert_eq!(
        get("dora_change_lead_time_seconds_bucket", &[("le", "43200")]),
        Some(1.0)
    );

    let (status, api) = common::get(doraflow.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["dora"]["duplicates"], 1);
    let figures = &api["dora"]["series"][0];
    assert_eq!(figures["service"], "payments");
    assert_eq!(figures["windows"][0]["lead_time"]["mean"], 54_000.0);
    assert_eq!(
        figures["windows"][0]["failed_deployment_recovery"]["mean"],
        10_800.0
    );
    assert_eq!(
        figures["windows"][0]["levels"]["change_failure_rate"],
        "low"
    );
}

#[tokio::test]
async fn malformed_events_get_400_naming_the_problem_and_change_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let client = reqwest::Client::new();
    let url = doraflow.webhook_url();
    let n = now();
    assert_eq!(
        post(
            &client,
            &url,
            "application/json",
            &deployed("ok", n - HOUR, "a")
        )
        .await
        .0,
        202
    );
    let before = doraflow.metrics();

    let mut bad_time = deployed("x1", n, "a");
    bad_time["context"]["timestamp"] = json!("last tuesday");
    let mut wrong_type = deployed("x2", n, "a");
    wrong_type["subject"]["content"]["environment"] = json!("production");
    let mut missing_id = deployed("x3", n, "a");
    missing_id["context"].as_object_mut().unwrap().remove("id");
    let cases = [
        (
            "application/json",
            bad_time.clone(),
            "event 0: context.timestamp: `last tuesday` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
        ),
        (
            "application/json",
            wrong_type,
            "event 0: subject.content.environment.id: missing",
        ),
        (
            "application/json",
            missing_id,
            "event 0: context.id: missing",
        ),
        (
            "application/cloudevents-batch+json",
            json!([deployed("x4", n, "a"), bad_time]),
            "event 1: context.timestamp: `last tuesday` is not an RFC 3339 timestamp such as 2024-05-01T12:00:00Z",
        ),
        (
            "application/cloudevents-batch+json",
            json!({"not": "a batch"}),
            "a batch (application/cloudevents-batch+json) must be a JSON array, found an object",
        ),
    ];
    for (content_type, body, message) in cases {
        let (status, answer) = post(&client, &url, content_type, &body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(answer["error"], message);
    }
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body("{\"context\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{answer}"
    );

    let after = doraflow.metrics();
    let success = series(&[("outcome", "success")]);
    assert_eq!(before.get("dora_deployments_total", &success), Some(1.0));
    assert_eq!(after.get("dora_deployments_total", &success), Some(1.0));
    // x4, valid but in a refused batch, was not applied: it can still come.
    assert_eq!(
        post(&client, &url, "application/json", &deployed("x4", n, "a"))
            .await
            .0,
        202
    );
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        Some(2.0)
    );
}

/// A body over the limit is 413 and counted `too_large`; a body cut short
/// (the client hung up mid-request) is counted `incomplete`, not
/// `too_large`; neither applies anything, and the next event is applied.
#[tokio::test]
async fn bodies_too_large_or_cut_short_are_refused_apart_and_change_nothing() {
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    let client = reqwest::Client::new();
    let url = doraflow.webhook_url();
    let n = now();
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(vec![b' '; 4 * 1024 * 1024 + 1])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    let body = deployed("cut", n - HOUR, "a").to_string();
    let port = doraflow.webhook;
    let head = format!(
        "POST /cdevents HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        common::send_cut_short(port, &head, &body.as_bytes()[..body.len() / 2])
    })
    .await
    .unwrap();

    let m = doraflow.metrics();
    let requests = |result| {
        m.counter(
            "doraflow_receiver_requests_total",
            &[("receiver", "webhook"), ("result", result)],
        )
    };
    assert_eq!(requests("too_large"), 1.0);
    assert_eq!(requests("incomplete"), 1.0);
    assert_eq!(requests("success"), 0.0);
    let success = series(&[("outcome", "success")]);
    assert_eq!(m.get("dora_deployments_total", &success), None);

    assert_eq!(
        post(
            &client,
            &url,
            "application/json",
            &deployed("cut", n - HOUR, "a")
        )
        .await
        .0,
        202
    );
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        Some(1.0)
    );
}
