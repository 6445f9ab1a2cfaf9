//! The fault suite with `storage`: doraflow killed with SIGKILL in the middle
//! of a stream and restarted loses no acknowledged event and counts none
//! twice; a damaged or newer checkpoint is refused with a clear message; a
//! clean stop writes a checkpoint a restart picks up. (Kafka crashes are in
//! `tests/kafka.rs`, the memory limiter's flood in `tests/memory_limiter.rs`.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Doraflow, TempDir, free_port, rfc3339, spawn, unix_now};
use serde_json::{Value, json};

/// A webhook + dora pipeline keeping its state in `dir`, on fixed ports so
/// a restart is the same service to its clients.
fn config(dir: &Path, webhook: u16, prometheus: u16, interval: &str) -> String {
    format!(
        "receivers:
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\" }}
processors:
  dora: {{ windows: [7d, 30d] }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
storage:
  dir: \"{}\"
  checkpoint_interval: {interval}
pipelines:
  main: {{ receivers: [webhook], processors: [dora], exporters: [prometheus] }}
",
        dir.display()
    )
}

/// Batch `i` of the stream: a change, then its deployment to production an
/// hour and a half later (every 7th one a rollback), and every 25th batch an
/// incident on that service that opens and, for most, resolves. Ids are
/// unique, so a retried batch can only be counted once.
fn batch(i: usize, base: i64) -> Value {
    let service = format!("svc{}", i % 3);
    let at = base + i as i64 * 60;
    let predicate = if i % 7 == 6 { "rolledback" } else { "deployed" };
    let mut events = vec![
        json!({
            "context": {"specversion": "0.5.1", "id": format!("c{i}"), "source": "/scm", "type": "dev.cdevents.change.created.0.3.0", "timestamp": rfc3339(at - 5_400)},
            "subject": {"id": format!("change-{i}"), "content": {}}
        }),
        json!({
            "context": {"specversion": "0.5.1", "id": format!("d{i}"), "source": "/cd", "type": format!("dev.cdevents.service.{predicate}.0.3.0"), "timestamp": rfc3339(at)},
            "subject": {"id": format!("service/{service}"), "content": {"environment": {"id": "production"}, "artifactId": format!("pkg:oci/{service}@{i}")}},
            "customData": {"changes": [{"id": format!("change-{i}")}]}
        }),
    ];
    if i % 25 == 3 {
        events.push(json!({
            "context": {"specversion": "0.5.1", "id": format!("i{i}-open"), "source": "/ops", "type": "dev.cdevents.incident.detected.0.3.0", "timestamp": rfc3339(at + 30)},
            "subject": {"id": format!("incident-{i}"), "content": {"environment": {"id": "production"}, "service": {"id": format!("service/{service}")}}}
        }));
        if i % 50 != 3 {
            events.push(json!({
                "context": {"specversion": "0.5.1", "id": format!("i{i}-resolved"), "source": "/ops", "type": "dev.cdevents.incident.resolved.0.3.0", "timestamp": rfc3339(at + 50)},
                "subject": {"id": format!("incident-{i}"), "content": {"environment": {"id": "production"}, "service": {"id": format!("service/{service}")}}}
            }));
        }
    }
    Value::Array(events)
}

/// Posts `body` until doraflow acknowledges it (202), riding out a restart.
async fn post_until_accepted(client: &reqwest::Client, url: &str, body: &Value) {
    for _ in 0..600 {
        match client.post(url).json(body).send().await {
            Ok(response) if response.status() == 202 => return,
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                assert!(
                    status.is_server_error() || status == 429,
                    "refused for good: {status} {text}"
                );
            }
            // Down (connection refused or cut): the client retries.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never accepted");
}

/// The DORA figures of `/api/v1/dora` without the instant they were taken.
fn figures(port: u16) -> Value {
    let (status, body) = common::get(port, "/api/v1/dora").expect("GET /api/v1/dora");
    assert_eq!(status, 200, "{body}");
    let value: Value = serde_json::from_str(&body).expect("JSON");
    let mut dora = value["dora"].clone();
    dora.as_object_mut().expect("an object").remove("at");
    dora
}

fn applied(port: u16) -> u64 {
    figures(port)["events_applied"]
        .as_u64()
        .expect("events_applied")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_over_the_webhook_loses_nothing_acknowledged_and_counts_nothing_twice() {
    const BATCHES: usize = 300;
    const KILL_AFTER: usize = 170;
    let base = unix_now() - 6 * 3_600;
    let dir = TempDir::new("faults-webhook");
    let (webhook, prometheus) = (free_port(), free_port());
    let path = dir.0.join("doraflow.yaml");
    // Checkpoints every second: the kill lands between a checkpoint and a
    // log of the events acknowledged since.
    std::fs::write(
        &path,
        config(&dir.0.join("state"), webhook, prometheus, "1s"),
    )
    .expect("config");
    let mut child = spawn(&path);
    common::wait_ready(prometheus);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{webhook}/cdevents");
    let mut events_sent = 0;
    for i in 0..KILL_AFTER {
        if i == KILL_AFTER / 2 {
            // Let a checkpoint fall in the middle: the rest is in the log.
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
        post_until_accepted(&client, &url, &batch(i, base)).await;
        events_sent += batch(i, base).as_array().map_or(0, Vec::len) as u64;
    }
    // One more batch in flight when the process dies: it may or may not have
    // been applied; the client cannot know, so it sends it again.
    let in_flight = batch(KILL_AFTER, base);
    let racing = {
        let (client, url, body) = (client.clone(), url.clone(), in_flight.clone());
        tokio::spawn(async move { client.post(&url).json(&body).send().await.is_ok() })
    };
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    let _ = racing.await;

    let mut child = spawn(&path);
    common::wait_ready(prometheus);
    // Everything acknowledged before the kill is there at once, from the
    // checkpoint and the log; at most the in-flight batch more.
    let restored = applied(prometheus);
    let in_flight_events = in_flight.as_array().map_or(0, Vec::len) as u64;
    assert!(
        restored == events_sent || restored == events_sent + in_flight_events,
        "restored {restored} events, {events_sent} were acknowledged"
    );
    for i in KILL_AFTER..BATCHES {
        post_until_accepted(&client, &url, &batch(i, base)).await;
    }

    // The same stream to a doraflow that never crashed gives the same figures.
    let reference = Doraflow::start_full("window: 5m, slice: 10s", "windows: [7d, 30d]", 256);
    for i in 0..BATCHES {
        post_until_accepted(&client, &reference.webhook_url(), &batch(i, base)).await;
    }
    let (got, want) = (figures(prometheus), figures(reference.prometheus));
    assert_eq!(got["series"], want["series"]);
    assert_eq!(got["production"], want["production"]);
    assert_eq!(got["events_applied"], want["events_applied"]);

    // And by hand: 300 deployments over 3 services, every 7th a rollback
    // (42), 12 incidents of which 6 stay open.
    let series = got["series"].as_array().expect("series");
    let deployments: u64 = series
        .iter()
        .map(|s| s["windows"][0]["deployments"].as_u64().unwrap_or(0))
        .sum();
    let rollbacks: u64 = series
        .iter()
        .map(|s| s["windows"][0]["rollbacks"].as_u64().unwrap_or(0))
        .sum();
    let open: u64 = series
        .iter()
        .map(|s| s["open_incidents"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!((deployments, rollbacks, open), (258, 42, 6));
    assert_eq!(
        got["duplicates"].as_u64(),
        Some(if restored > events_sent {
            in_flight_events
        } else {
            0
        })
    );
    let lead = &got["production"][0]["lead_time"];
    // Rolled-back deployments deploy no change: 258 lead times, all 1.5 h.
    assert_eq!(lead["count"].as_u64(), Some(258));
    assert_eq!(lead["p50"].as_f64(), Some(5_400.0));

    let _ = child.kill();
    let _ = child.wait();
}

/// Runs doraflow on `config` expecting it to refuse to start: its exit
/// status and what it said.
fn refused(config: &Path) -> (std::process::ExitStatus, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["run", "--config"])
        .arg(config)
        .env("DORAFLOW_LOG", "warn")
        .output()
        .expect("run doraflow");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_checkpoints_and_a_damaged_or_newer_checkpoint_is_refused() {
    let base = unix_now() - 6 * 3_600;
    let dir = TempDir::new("faults-checkpoint");
    let state = dir.0.join("state");
    let (webhook, prometheus) = (free_port(), free_port());
    let path = dir.0.join("doraflow.yaml");
    // No periodic checkpoint in the test's time: the one at the stop counts.
    std::fs::write(&path, config(&state, webhook, prometheus, "1h")).expect("config");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{webhook}/cdevents");
    let mut child = spawn(&path);
    common::wait_ready(prometheus);
    for i in 0..10 {
        post_until_accepted(&client, &url, &batch(i, base)).await;
    }
    let before = figures(prometheus);
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    assert!(
        child.wait().expect("exit").success(),
        "a clean stop exits 0"
    );
    // The stop wrote the checkpoint and left the log empty.
    let checkpoint = state.join("checkpoint.pb");
    let good = std::fs::read(&checkpoint).expect("a checkpoint after a clean stop");
    let mut child = spawn(&path);
    common::wait_ready(prometheus);
    assert_eq!(figures(prometheus), before);
    let _ = child.kill();
    let _ = child.wait();

    // One flipped bit: refused, naming the file and the problem; nothing listens.
    let mut damaged = good.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x01;
    std::fs::write(&checkpoint, &damaged).expect("damage");
    let (status, stderr) = refused(&path);
    assert!(!status.success(), "started on a damaged checkpoint");
    assert!(stderr.contains("checkpoint.pb"), "{stderr}");
    assert!(stderr.contains("fails its CRC-32"), "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
    assert!(common::get(prometheus, "/metrics").is_err());

    // Cut short, as a full disk might leave it.
    std::fs::write(&checkpoint, &good[..good.len() / 2]).expect("truncate");
    let (status, stderr) = refused(&path);
    assert!(!status.success());
    assert!(stderr.contains("the file has"), "{stderr}");

    // From a newer doraflow: refused, not half-read.
    let mut newer = good.clone();
    newer[8] = 7;
    std::fs::write(&checkpoint, &newer).expect("newer");
    let (status, stderr) = refused(&path);
    assert!(!status.success());
    assert!(stderr.contains("format 7 by a newer doraflow"), "{stderr}");

    // Restored as it was, it starts again with the same figures.
    std::fs::write(&checkpoint, &good).expect("restore");
    let mut child = spawn(&path);
    common::wait_ready(prometheus);
    assert_eq!(figures(prometheus), before);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_second_doraflow_on_the_same_storage_is_refused() {
    let dir = TempDir::new("faults-lock");
    let (webhook, prometheus) = (free_port(), free_port());
    let path = dir.0.join("a.yaml");
    std::fs::write(
        &path,
        config(&dir.0.join("state"), webhook, prometheus, "10s"),
    )
    .expect("config");
    let mut first = spawn(&path);
    common::wait_ready(prometheus);
    let other = dir.0.join("b.yaml");
    std::fs::write(
        &other,
        config(&dir.0.join("state"), free_port(), free_port(), "10s"),
    )
    .expect("config");
    let (status, stderr) = refused(&other);
    assert!(!status.success());
    assert!(
        stderr.contains("another doraflow process uses this storage folder"),
        "{stderr}"
    );
    let _ = first.kill();
    let _ = first.wait();
}
