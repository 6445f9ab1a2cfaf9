//! `doraflow replay`: a JSON-lines history replayed through the processors
//! gives the same report as the same events sent live to the webhook; bad
//! lines are reported by file and line, and the rest is applied.

mod common;

use std::io::Write;
use std::process::Command;

use common::{Doraflow, TempDir};
use serde_json::Value;

const EVENTS: usize = 30_000;

use common::unix_now as now;

/// What must agree between two reports (not when they were made, nor the
/// service health, which replayed CDEvents do not have).
fn figures(report: &Value) -> Value {
    let services: Vec<Value> = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            serde_json::json!({
                "service": s["service"],
                "environment": s["environment"],
                "windows": s["windows"],
                "open_incidents": s["open_incidents"],
                "recent_failed_changes": s["recent_failed_changes"],
            })
        })
        .collect();
    serde_json::json!({
        "production": report["production"],
        "summary": report["summary"],
        "below_high": report["below_high"],
        "services": services,
        "events": report["events"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_history_reports_what_the_same_events_sent_live_report() {
    let now = now();
    let events: Vec<Value> = doraflow::cdevents::synth::history(EVENTS, now).collect();
    let dir = TempDir::new("replay");
    let path = dir.0.join("history.jsonl");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).expect("create"));
        for event in &events {
            writeln!(file, "{event}").expect("write");
        }
    }

    // Live: the same events to the webhook, in batches of 1,000.
    let doraflow = Doraflow::start_config(
        "window: 5m, slice: 10s",
        "windows: [7d, 30d]",
        "interval: 5s",
        256,
    );
    let client = reqwest::Client::new();
    for chunk in events.chunks(1_000) {
        let answer = client
            .post(doraflow.webhook_url())
            .header("content-type", "application/cloudevents-batch+json")
            .body(Value::Array(chunk.to_vec()).to_string())
            .send()
            .await
            .expect("webhook");
        assert_eq!(answer.status(), 202);
    }
    let live: Value = reqwest::get(format!(
        "http://127.0.0.1:{}/report?format=json",
        doraflow.prometheus
    ))
    .await
    .expect("GET")
    .json()
    .await
    .expect("JSON");

    // Replayed with the same configuration.
    let out = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["replay", "--format", "json", "--config"])
        .arg(&doraflow.config)
        .arg(&path)
        .output()
        .expect("doraflow replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "replay failed: {stderr}");
    // Not a terminal: plain progress, then the summary line.
    assert!(
        stderr.contains(&format!(
            "replay: 1 files, {EVENTS} events and 0 OTLP items applied"
        )),
        "{stderr}"
    );
    let replayed: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");

    assert_eq!(live["events"]["applied"], EVENTS);
    assert_eq!(figures(&replayed), figures(&live));
    // Not vacuous: 50 production services with lead times and incidents.
    assert_eq!(replayed["summary"].as_array().map(Vec::len), Some(50));
    assert!(replayed["production"]["lead_time"]["count"].as_u64() > Some(1_000));
    assert!(replayed["production"]["time_to_restore"]["count"].as_u64() > Some(50));
}

#[test]
fn bad_lines_are_reported_and_the_rest_is_applied() {
    let dir = TempDir::new("replay-bad");
    let now = now();
    let good: Vec<Value> = doraflow::cdevents::synth::history(6, now).collect();
    let history = dir.0.join("mixed.jsonl");
    let mut text = String::new();
    text.push_str(&format!("{}\n", good[0]));
    text.push_str("{\"context\": nope}\n");
    text.push('\n');
    // A batch on one line, and an event missing its timestamp in another.
    text.push_str(&format!("[{}, {}]\n", good[1], good[2]));
    let mut broken = good[3].clone();
    broken["context"]
        .as_object_mut()
        .expect("context")
        .remove("timestamp");
    text.push_str(&format!("{broken}\n"));
    text.push_str(&format!("{}\n{}\n", good[4], good[5]));
    std::fs::write(&history, text).expect("write");
    // An OTLP/JSON traces file, pretty-printed (one value per file).
    let spans = dir.0.join("spans.json");
    let request = common::checkout_spans(40, 2);
    std::fs::write(
        &spans,
        serde_json::to_string_pretty(&request).expect("OTLP/JSON"),
    )
    .expect("write");
    let config = dir.0.join("config.yaml");
    std::fs::write(
        &config,
        "receivers:\n  webhook: {}\nprocessors:\n  red: {}\n  dora: {}\nexporters:\n  prometheus: {}\npipelines:\n  main: { receivers: [webhook], processors: [red, dora], exporters: [prometheus] }\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["replay", "--format", "json", "--config"])
        .arg(&config)
        .arg(&history)
        .arg(&spans)
        .output()
        .expect("doraflow replay");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Some input was skipped: exit status 3, the report all the same.
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(&format!("skipped {}:2: malformed JSON", history.display())),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "skipped {}:5: context.timestamp: missing",
            history.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("replay: 2 files, 5 events and 42 OTLP items applied"),
        "{stderr}"
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["events"]["applied"], 5);
    let checkout = report["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["service"] == "service-00");
    assert!(checkout.is_some(), "{report}");

    // A missing file is an error, not a report.
    let out = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["replay", "--config"])
        .arg(&config)
        .arg(dir.0.join("missing.jsonl"))
        .output()
        .expect("doraflow replay");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}
