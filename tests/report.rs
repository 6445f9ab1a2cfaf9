//! The assessment report of a running doraflow: a scenario with
//! hand-computed figures, every number of the report (JSON, Markdown, HTML)
//! against `/api/v1/dora`, and `doraflow report --url`.

mod common;

use std::process::Command;

use common::Doraflow;
use doraflow::report::{format_duration, format_frequency, format_level, format_ratio};
use serde_json::{Value, json};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;

use common::unix_now as now;

use common::rfc3339 as ts;

fn cdevent(id: &str, kind: &str, at: i64, subject: Value, custom: Value) -> Value {
    json!({
        "context": {"specversion": "0.5.1", "id": id, "source": "/test", "type": format!("dev.cdevents.{kind}"), "timestamp": ts(at)},
        "subject": subject,
        "customData": custom,
    })
}

/// A deployment of `service` to `env` at `at`, of a change started `lead` before.
fn deployed(id: &str, service: &str, env: &str, at: i64, lead: Option<i64>) -> Value {
    let changes = match lead {
        Some(lead) => {
            json!({"changes": [{"id": format!("{id}-change"), "timestamp": ts(at - lead)}]})
        }
        None => json!({}),
    };
    cdevent(
        id,
        "service.deployed.0.3.0",
        at,
        json!({"id": format!("service/{service}"), "content": {"environment": {"id": env}, "artifactId": format!("pkg:oci/{service}@sha256:{id}")}}),
        changes,
    )
}

/// The scenario, relative to `n` (now):
/// - checkout/production: d1 at -10d (lead 2 h), d2 at -5d (lead 4 h), a
///   failed deploy pipeline at -2d, d4 at -1d (lead 1 h);
/// - payments/production: p1 at -20d (lead 30 h), then an incident from
///   -20d+1h to -20d+3h (restore 2 h), which makes p1 a failed change;
/// - checkout/staging: s1 at -3d (not production).
fn scenario(n: i64) -> Value {
    json!([
        deployed("d1", "checkout", "production", n - 10 * DAY, Some(2 * HOUR)),
        deployed("d2", "checkout", "production", n - 5 * DAY, Some(4 * HOUR)),
        cdevent(
            "d3",
            "pipelinerun.finished.0.2.0",
            n - 2 * DAY,
            json!({"id": "run-3", "content": {"pipelineName": "deploy-checkout", "outcome": "failure"}}),
            json!({}),
        ),
        deployed("d4", "checkout", "production", n - DAY, Some(HOUR)),
        deployed(
            "p1",
            "payments",
            "production",
            n - 20 * DAY,
            Some(30 * HOUR)
        ),
        cdevent(
            "inc1-open",
            "incident.detected.0.3.0",
            n - 20 * DAY + HOUR,
            json!({"id": "inc1", "content": {"environment": {"id": "production"}, "service": {"id": "payments"}}}),
            json!({}),
        ),
        cdevent(
            "inc1-resolved",
            "incident.resolved.0.3.0",
            n - 20 * DAY + 3 * HOUR,
            json!({"id": "inc1", "content": {"environment": {"id": "production"}, "service": {"id": "payments"}}}),
            json!({}),
        ),
        deployed("s1", "checkout", "staging", n - 3 * DAY, None),
    ])
}

async fn get_json(url: &str) -> Value {
    reqwest::get(url)
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON")
}

async fn get_text(url: &str) -> (u16, String) {
    let response = reqwest::get(url).await.expect("GET");
    let status = response.status().as_u16();
    (status, response.text().await.expect("text"))
}

/// A window's figures without the `previous` member.
fn without_previous(figures: &Value) -> Value {
    let mut f = figures.clone();
    if let Some(map) = f.as_object_mut() {
        map.remove("previous");
    }
    f
}

/// The summary cells of a window's figures, formatted as the report does.
fn cells(f: &Value) -> String {
    let level = |name: &str| {
        f["levels"][name]
            .as_str()
            .map(|l| l.to_string())
            .unwrap_or_else(|| format_level(None))
    };
    format!(
        "{} ({}) | {} ({}) | {} ({}) | {} ({})",
        format_frequency(f["deployment_frequency_per_day"].as_f64().unwrap()),
        level("deployment_frequency"),
        format_duration(f["lead_time"]["p50"].as_f64()),
        level("lead_time"),
        format_ratio(f["change_failure_ratio"].as_f64()),
        level("change_failure_rate"),
        format_duration(f["time_to_restore"]["p50"].as_f64()),
        level("time_to_restore"),
    )
}

#[tokio::test]
async fn every_figure_of_the_report_is_the_apis_and_the_hand_computed_one() {
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d], deploy_pipelines: [{ pipeline: deploy-checkout, service: checkout, environment: production }]",
        "interval: 1s",
        256,
    );
    let client = reqwest::Client::new();
    let answer = client
        .post(doraflow.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(scenario(now()).to_string())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 202);
    common::send_checkout_spans(&doraflow, 95, 5).await;

    let base = format!("http://127.0.0.1:{}", doraflow.prometheus);
    let api = get_json(&format!("{base}/api/v1/dora?trend=true")).await;
    let report = get_json(&format!("{base}/report?format=json")).await;
    let dora = &api["dora"];

    // Hand-computed, 30 days pooled over production: successful deployments
    // d1, d2, d4, p1 = 4 (4/30 a day, medium); lead times 1, 2, 4, 30 h (p50
    // 2 h, elite; p95 30 h); failed changes d3 and p1 of 5 counted (40%,
    // low); restore 2 h (high).
    let production = &report["production"];
    assert_eq!(report["summary_window"], "30d");
    assert_eq!(production["deployments"], 4);
    assert_eq!(production["deployment_frequency_per_day"], 4.0 / 30.0);
    assert_eq!(production["lead_time"]["p50"], 7_200.0);
    assert_eq!(production["lead_time"]["p95"], 108_000.0);
    assert_eq!(production["change_failure_ratio"], 0.4);
    assert_eq!(production["time_to_restore"]["p50"], 7_200.0);
    assert_eq!(
        production["levels"],
        json!({"deployment_frequency": "medium", "lead_time": "elite", "change_failure_rate": "low", "time_to_restore": "high"})
    );
    // The week: d2 and d4 (2/7 a day, high), d3 failed: 1 of 3; the week
    // before: d1 alone.
    let week = &dora["production"][0];
    assert_eq!(week["window"], "7d");
    assert_eq!(week["deployment_frequency_per_day"], 2.0 / 7.0);
    assert_eq!(week["levels"]["deployment_frequency"], "high");
    assert_eq!(week["change_failure_ratio"], 1.0 / 3.0);
    assert_eq!(week["previous"]["deployments"], 1);
    assert_eq!(week["previous"]["lead_time"]["p50"], 7_200.0);

    // JSON: every figure is the API's.
    assert_eq!(production, &without_previous(&dora["production"][1]));
    // Taken just after the API's snapshot.
    assert!(report["at"].as_i64().unwrap() >= dora["at"].as_i64().unwrap());
    let series = dora["series"].as_array().expect("series");
    let production_series: Vec<&Value> =
        series.iter().filter(|s| s["production"] == true).collect();
    let summary = report["summary"].as_array().expect("summary");
    assert_eq!(summary.len(), production_series.len());
    for (row, s) in summary.iter().zip(&production_series) {
        assert_eq!(row["service"], s["service"]);
        assert_eq!(row["figures"], without_previous(&s["windows"][1]));
    }
    let services = report["services"].as_array().expect("services");
    assert_eq!(services.len(), series.len());
    for (section, s) in services.iter().zip(series) {
        assert_eq!(section["windows"], s["windows"], "{}", s["service"]);
        assert_eq!(section["open_incidents"], s["open_incidents"]);
        assert_eq!(section["recent_failed_changes"], s["recent_failed_changes"]);
    }
    assert_eq!(report["events"]["applied"], dora["events_applied"]);
    // The advice in JSON, as in Markdown below.
    let advice = report["advice"].as_array().expect("advice");
    assert_eq!(advice.len(), 2);
    assert_eq!(advice[0]["metric"], "deployment_frequency");
    assert_eq!(advice[1]["metric"], "change_failure_rate");
    assert_eq!(advice[1]["level"], "low");
    assert_eq!(
        advice[1]["practices"],
        json!([
            "automated testing",
            "canary or blue-green releases",
            "feature flags",
            "automated rollback"
        ])
    );
    assert_eq!(report["trends"][0]["direction"], "better");
    // Below high, with what drags each service down.
    let below = report["below_high"].as_array().expect("below_high");
    let drags = |service: &str| -> Vec<String> {
        below
            .iter()
            .find(|b| b["service"] == service)
            .map(|b| {
                b["drags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["metric"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        drags("checkout"),
        ["deployment_frequency", "change_failure_rate"]
    );
    assert_eq!(
        drags("payments"),
        ["deployment_frequency", "change_failure_rate"]
    );
    // Checkout's health from the spans: 100 requests, 5 errors.
    let checkout = services
        .iter()
        .find(|s| s["service"] == "checkout" && s["environment"] == "production")
        .unwrap();
    assert_eq!(checkout["health"]["requests"], 100);
    assert_eq!(checkout["health"]["errors"], 5);
    assert_eq!(
        checkout["recent_failed_changes"][0]["cause"],
        "deployment failed"
    );
    // The six rules, with their state.
    let rules = report["alerts"]["rules"].as_array().expect("rules");
    assert_eq!(rules.len(), 6);
    assert_eq!(rules[0]["alertname"], "HighErrorRate");
    assert_eq!(rules[0]["threshold"], 0.01);

    // Markdown: the same figures, formatted.
    let (status, md) = get_text(&format!("{base}/report")).await;
    assert_eq!(status, 200);
    assert!(
        md.contains(&format!(
            "| **all production services** | {} |",
            cells(production)
        )),
        "{md}"
    );
    assert!(md.contains(
        "| **all production services** | 0.133/day (medium) | 2.00 h (elite) | 40.0% (low) | 2.00 h (high) |"
    ), "{md}");
    for s in &production_series {
        let row = format!(
            "| {} ({}) | {} |",
            s["service"].as_str().unwrap(),
            s["environment"].as_str().unwrap(),
            cells(&s["windows"][1])
        );
        assert!(md.contains(&row), "missing {row} in\n{md}");
    }
    assert!(
        md.contains(
            "| checkout (production) | 0.100/day (medium) | 2.00 h (elite) | 25.0% (low) | — (—) |"
        ),
        "{md}"
    );
    assert!(md.contains("**checkout (production)**: deployment frequency 0.100/day (medium; high needs at least 0.143/day); change failure rate 25.0% (low; high needs at most 10.0%)"), "{md}");
    // The advice, for every production service pooled over 30 days
    // (target high): 4 deployments (days 1, 5, 10 and 20 back: a
    // deployment in most weeks, weekly) and 2 failed changes of 5 (d3's
    // failed pipeline, p1's incident); lead time (2 h) and time to restore
    // (2 h) are high or better.
    assert!(md.contains("## Advice: production, last 30d"), "{md}");
    assert!(
        md.contains("### Deployment frequency: medium (target high)"),
        "{md}"
    );
    assert!(md.contains("4 successful deployments in the last 30d (0.133/day, the DORA answer: weekly); high needs at least 0.143/day."), "{md}");
    assert!(
        md.contains("### Change failure rate: low (target high)"),
        "{md}"
    );
    assert!(md.contains("2 of 5 deployments were failed changes (40.0%): 1 made so by an incident after them, 0 rolled back, 1 failed deployments; high needs at most 10.0%."), "{md}");
    assert!(md.contains("What the assessment recommends, the first where the data points: automated testing, canary or blue-green releases, feature flags, automated rollback."), "{md}");
    assert!(!md.contains("### Lead time for changes"), "{md}");
    assert!(!md.contains("### Time to restore"), "{md}");
    // Trends: nothing in the 30 days before.
    assert!(
        md.contains("| Deployment frequency | 0.133/day | 0/day | better |"),
        "{md}"
    );
    assert!(
        md.contains("| Change failure rate | 40.0% | — | unknown |"),
        "{md}"
    );
    assert!(md.contains("| last 7d | 2 (1 failed, 0 rolled back) | 0.286/day (weekly) | 1.00 h / 4.00 h | 33.3% (1 failed changes) | 0.0% (0 rework) | — / — | 1.00 d |"), "{md}");
    assert!(md.contains("| 7d before | 1 (0 failed, 0 rolled back) | 0.143/day (weekly) | 2.00 h / 2.00 h | 0.0% (0 failed changes) | 0.0% (0 rework) | — / — | — |"), "{md}");
    assert!(
        md.contains("| HighErrorRate | > 1.0% | 5m | 0 s | critical |"),
        "{md}"
    );
    assert!(
        md.contains("Health over the last 5m: 100 requests, 5 errors (5.0%), p95 latency 1.00 ms."),
        "{md}"
    );

    // HTML: one self-contained page with the same cells.
    let (status, page) = get_text(&format!("{base}/report?format=html")).await;
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));
    assert!(!page.contains("http://") && !page.contains("https://"));
    assert!(page.contains("<td><strong>all production services</strong></td><td>0.133/day (medium)</td><td>2.00 h (elite)</td><td>40.0% (low)</td><td>2.00 h (high)</td>"), "{page}");
    assert!(
        page.contains("<h3>Change failure rate: low (target high)</h3>"),
        "{page}"
    );
    assert!(
        page.contains("2 of 5 deployments were failed changes (40.0%)"),
        "{page}"
    );
    let (status, _) = get_text(&format!("{base}/report?format=pdf")).await;
    assert_eq!(status, 400);

    // The command line fetches the same report.
    let out = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["report", "--url", &base, "--format", "markdown"])
        .output()
        .expect("doraflow report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    assert!(text.contains(
        "| **all production services** | 0.133/day (medium) | 2.00 h (elite) | 40.0% (low) | 2.00 h (high) |"
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["report", "--url", "http://127.0.0.1:1"])
        .output()
        .expect("doraflow report");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
