//! The cluster tier scaled out on the real broker (Tansu, started by
//! `scripts/test`): three doraflow processes in one consumer group read
//! CDEvents and spans keyed by service from 6-partition topics, and join,
//! stop (SIGTERM) and die (SIGKILL) while the data flows. After every step
//! each of the 12 services shows the hand-computed figures on exactly one
//! live replica and on no other: its state followed its partition through
//! the group's changelog. A strict PagerDuty endpoint sees each alert
//! triggered once and resolved only when it really resolved.

mod common;

use std::time::Duration;

use common::kafka::{Record, broker, create_topic, keyed, produce, unique};
use common::pagerduty::{Shared, pagerduty};
use common::{Doraflow, Metrics, free_port, within_hdr};
use prost::Message as _;
use serde_json::{Value, json};

const SERVICES: usize = 12;
const HOUR: i64 = 3_600;
/// Deployment `k` of every service is at `BASE_AGO - k * 2h` before now.
const BASE_AGO: i64 = 20 * HOUR;
/// The last deployment index each phase brings (phase 1 brings 0..=3).
const LAST_K: [usize; 5] = [3, 5, 6, 7, 8];

fn service(i: usize) -> String {
    format!("svc{i:02}")
}

fn rfc3339(at: i64) -> String {
    common::rfc3339(at)
}

/// When deployment `k` happened (unix seconds), relative to `now`.
fn deployed_at(now: i64, k: usize) -> i64 {
    now - BASE_AGO + k as i64 * 2 * HOUR
}

/// Service `i`'s changes all take `(i + 1) * 10` minutes to deploy.
fn lead_time(i: usize) -> i64 {
    (i as i64 + 1) * 600
}

/// Deployment `k` of service `i`: a `service.deployed` linking one change
/// (so its lead time is known), except that deployment 5 of the even
/// services is a failed deploy pipeline run.
fn deployment(now: i64, i: usize, k: usize) -> Value {
    let s = service(i);
    let at = deployed_at(now, k);
    if k == 5 && i.is_multiple_of(2) {
        return json!({
            "context": {"specversion": "0.5.1", "id": format!("run-{s}-{k}"), "source": "/ci", "type": "dev.cdevents.pipelinerun.finished.0.2.0", "timestamp": rfc3339(at)},
            "subject": {"id": format!("run-{s}-{k}"), "content": {"pipelineName": "deploy", "outcome": "failure"}},
            "customData": {"service": s, "environment": "production"}
        });
    }
    json!({
        "context": {"specversion": "0.5.1", "id": format!("d-{s}-{k}"), "source": "/cd", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": rfc3339(at)},
        "subject": {"id": format!("service/{s}"), "content": {"environment": {"id": "production"}, "artifactId": format!("pkg:oci/{s}@{k}")}},
        "customData": {"changes": [{"id": format!("change-{s}-{k}"), "timestamp": rfc3339(at - lead_time(i))}]}
    })
}

/// Phase 4's incidents, half an hour after deployment 7: resolved after
/// `(i + 1) * 5` minutes for `i.is_multiple_of(3)`, left open for `i % 3 == 1`.
fn incidents(now: i64, i: usize) -> Vec<Value> {
    let s = service(i);
    let opened = deployed_at(now, 7) + 1_800;
    let content =
        json!({"environment": {"id": "production"}, "service": {"id": format!("service/{s}")}});
    let mut events = Vec::new();
    if i % 3 != 2 {
        events.push(json!({
            "context": {"specversion": "0.5.1", "id": format!("i-{s}-open"), "source": "/ops", "type": "dev.cdevents.incident.detected.0.3.0", "timestamp": rfc3339(opened)},
            "subject": {"id": format!("incident-{s}"), "content": content}
        }));
    }
    if i.is_multiple_of(3) {
        events.push(json!({
            "context": {"specversion": "0.5.1", "id": format!("i-{s}-resolved"), "source": "/ops", "type": "dev.cdevents.incident.resolved.0.3.0", "timestamp": rfc3339(opened + restore_time(i))},
            "subject": {"id": format!("incident-{s}"), "content": content}
        }));
    }
    events
}

fn restore_time(i: usize) -> i64 {
    (i as i64 + 1) * 300
}

/// Phase `p`'s (1-based) events and span messages, keyed by service.
fn phase(now: i64, p: usize) -> (Vec<Record>, Vec<Record>) {
    let first = if p == 1 { 0 } else { LAST_K[p - 2] + 1 };
    let mut events = Vec::new();
    let mut spans = Vec::new();
    for i in 0..SERVICES {
        let s = service(i);
        for k in first..=LAST_K[p - 1] {
            events.push(keyed(&s, deployment(now, i, k).to_string().into_bytes()));
        }
        if p == 4 {
            for e in incidents(now, i) {
                events.push(keyed(&s, e.to_string().into_bytes()));
            }
        }
        // 10 requests a phase, `i % 2` of them errors.
        let errors = i % 2;
        spans.push(keyed(
            &s,
            common::service_spans(&s, 10 - errors, errors).encode_to_vec(),
        ));
    }
    (events, spans)
}

/// The figures service `i` must show after phase `p`, computed by hand
/// from the timeline above.
#[derive(Debug, PartialEq)]
struct Truth {
    success: f64,
    failure: f64,
    change_failure_ratio: f64,
    lead_time: f64,
    time_to_restore: Option<f64>,
    open_incidents: f64,
    requests: f64,
    errors: f64,
}

fn truth(i: usize, p: usize) -> Truth {
    let even = i.is_multiple_of(2);
    let deployments = LAST_K[p - 1] + 1;
    let failed_run = even && p >= 2;
    let failure = usize::from(failed_run);
    // Deployment 7 is a failed change once phase 4's incident names it.
    let failed_changes = failure + usize::from(p >= 4 && i % 3 != 2);
    Truth {
        success: (deployments - failure) as f64,
        failure: failure as f64,
        change_failure_ratio: failed_changes as f64 / deployments as f64,
        lead_time: lead_time(i) as f64,
        time_to_restore: (p >= 4 && i.is_multiple_of(3)).then(|| restore_time(i) as f64),
        open_incidents: if p >= 4 && i % 3 == 1 { 1.0 } else { 0.0 },
        requests: 10.0 * p as f64,
        errors: (i % 2 * p) as f64,
    }
}

/// What one replica shows of service `i`, `None` if it shows nothing of it.
fn shown(m: &Metrics, i: usize) -> Option<Truth> {
    let s = service(i);
    let series = [("service", s.as_str()), ("environment", "production")];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut labels = series.to_vec();
        labels.extend_from_slice(extra);
        labels
    };
    let red = m.get("dora_service_requests_total", &series);
    let success = m.get("dora_deployments_total", &with(&[("outcome", "success")]));
    if red.is_none() && success.is_none() {
        return None;
    }
    let week = [("window", "7d")];
    Some(Truth {
        success: success.unwrap_or(-1.0),
        failure: m
            .get("dora_deployments_total", &with(&[("outcome", "failure")]))
            .unwrap_or(-1.0),
        change_failure_ratio: m
            .get("dora_change_failure_ratio", &with(&week))
            .unwrap_or(-1.0),
        lead_time: m
            .get(
                "dora_lead_time_seconds",
                &with(&[("window", "7d"), ("quantile", "0.95")]),
            )
            .unwrap_or(-1.0),
        time_to_restore: m
            .get(
                "dora_time_to_restore_seconds",
                &with(&[("window", "7d"), ("quantile", "0.5")]),
            )
            .filter(|v| !v.is_nan()),
        open_incidents: m.get("dora_incidents_open", &series).unwrap_or(-1.0),
        requests: red.unwrap_or(-1.0),
        errors: m.get("dora_service_errors_total", &series).unwrap_or(-1.0),
    })
}

/// Whether `got` is the truth, the lead time and time to restore within
/// the HDR precision.
fn matches(got: &Truth, want: &Truth) -> bool {
    let hdr = |g: f64, w: f64| within_hdr(g, w);
    got.success == want.success
        && got.failure == want.failure
        && (got.change_failure_ratio - want.change_failure_ratio).abs() < 1e-9
        && hdr(got.lead_time, want.lead_time)
        && match (got.time_to_restore, want.time_to_restore) {
            (Some(g), Some(w)) => hdr(g, w),
            (None, None) => true,
            _ => false,
        }
        && got.open_incidents == want.open_incidents
        && got.requests == want.requests
        && got.errors == want.errors
}

/// Per service, which live replicas show it and whether it is exact.
fn exact_on_one(live: &[Metrics], p: usize) -> Result<(), String> {
    let mut problems = Vec::new();
    for i in 0..SERVICES {
        let showing: Vec<(usize, Truth)> = live
            .iter()
            .enumerate()
            .filter_map(|(r, m)| shown(m, i).map(|t| (r, t)))
            .collect();
        let want = truth(i, p);
        match showing.as_slice() {
            [(_, got)] if matches(got, &want) => {}
            [(r, got)] => problems.push(format!(
                "{}: replica {r} shows {got:?}, the truth is {want:?}",
                service(i)
            )),
            other => problems.push(format!(
                "{}: shown by {} replicas ({:?})",
                service(i),
                other.len(),
                other.iter().map(|(r, _)| r).collect::<Vec<_>>()
            )),
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// Waits (90 s at most) until every service is exact on exactly one of
/// `live`, and stays so for two seconds (a replica that still exposes a
/// series it lost would show within that).
async fn until_exact(step: &str, live: &[&Doraflow], p: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let mut since: Option<std::time::Instant> = None;
    loop {
        let metrics: Vec<Metrics> = live.iter().map(|d| d.metrics()).collect();
        match exact_on_one(&metrics, p) {
            Ok(()) => {
                let at = *since.get_or_insert_with(std::time::Instant::now);
                if at.elapsed() >= Duration::from_secs(2) {
                    return;
                }
            }
            Err(problems) => {
                since = None;
                assert!(
                    std::time::Instant::now() < deadline,
                    "{step}: not every service exact on exactly one replica within 90 s:\n{problems}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the live replicas own the 12 partitions between them.
async fn until_assigned(step: &str, live: &[&Doraflow], group: &str) {
    common::eventually_within(step, Duration::from_secs(90), || {
        let owned: Vec<f64> = live
            .iter()
            .map(|d| {
                d.metrics()
                    .counter("doraflow_kafka_assigned_partitions", &[("group", group)])
            })
            .collect();
        owned.iter().all(|n| *n >= 1.0) && owned.iter().sum::<f64>() == 12.0
    })
    .await
}

/// (triggers, resolves) PagerDuty accepted for `alertname` of service `i`.
fn pages(endpoint: &Shared, alertname: &str, i: usize) -> (usize, usize) {
    let s = service(i);
    let endpoint = endpoint.lock().unwrap();
    let mine = |e: &&Value| {
        e["dedup_key"]
            .as_str()
            .is_some_and(|k| k.contains(alertname) && k.contains(&s))
    };
    let of = |action: &str| {
        endpoint
            .accepted
            .iter()
            .filter(mine)
            .filter(|e| e["event_action"] == action)
            .count()
    };
    (of("trigger"), of("resolve"))
}

fn replica(broker: &str, group: &str, events: &str, spans: &str, pagerduty: &str) -> Doraflow {
    replica_with(broker, group, events, spans, pagerduty, "")
}

/// As [`replica`], with more top-level config (`storage:`, say).
fn replica_with(
    broker: &str,
    group: &str,
    events: &str,
    spans: &str,
    pagerduty: &str,
    extra: &str,
) -> Doraflow {
    let prometheus = free_port();
    let config = format!(
        "receivers:
  kafka:
    brokers: \"{broker}\"
    group_id: \"{group}\"
    session_timeout: 6s
    heartbeat_interval: 1s
    commit_interval: 300ms
    topics:
      - {{ topic: \"{events}\", format: cdevents }}
      - {{ topic: \"{spans}\", format: otlp_proto, signal: traces }}
processors:
  red: {{ window: 5m, slice: 10s }}
  dora:
    windows: [7d]
    derived_incidents: {{ enabled: false }}
    deploy_pipelines: [{{ pipeline: deploy, service: unknown, environment: production }}]
  alerts: {{ interval: 500ms }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
  pagerduty:
    url: \"{pagerduty}\"
    routing_key: \"{key}\"
    initial_backoff: 10ms
    max_backoff: 50ms
pipelines:
  main: {{ receivers: [kafka], processors: [red, dora, alerts], exporters: [prometheus, pagerduty] }}
{extra}",
        key = common::secret_ref(common::pagerduty::ROUTING_KEY),
    );
    Doraflow::start_yaml(&config, prometheus, 0, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_joining_stopping_and_dying_keep_every_service_exact_on_exactly_one() {
    let Some(broker) = broker("cluster: three replicas") else {
        return;
    };
    let events = unique("cluster-events");
    let spans = unique("cluster-spans");
    create_topic(&broker, &events, 6).await;
    create_topic(&broker, &spans, 6).await;
    let group = unique("cluster-group");
    let (url, endpoint) = pagerduty(&[]).await;
    let now = common::unix_now();
    let send = |p: usize| {
        let (e, s) = phase(now, p);
        produce(&broker, &events, &e);
        produce(&broker, &spans, &s);
    };
    let even: Vec<usize> = (0..SERVICES).filter(|i| i.is_multiple_of(2)).collect();
    let slow: Vec<usize> = (0..SERVICES).filter(|i| i % 3 == 1).collect();

    // 1. A alone.
    let mut a = replica(&broker, &group, &events, &spans, &url);
    send(1);
    until_exact("A alone", &[&a], 1).await;

    // 2. B joins while phase 2 flows; phase 2 fails a deployment of each
    // even service, which pages once.
    let mut b = replica(&broker, &group, &events, &spans, &url);
    send(2);
    until_assigned("A and B share the partitions", &[&a, &b], &group).await;
    until_exact("B joined", &[&a, &b], 2).await;
    common::eventually("each failed deployment paged", || {
        even.iter()
            .all(|&i| pages(&endpoint, "DeploymentFailed", i) == (1, 0))
    })
    .await;

    // 3. C joins while those alerts fire: every partition is handed over
    // (the range assignor moves them all), and nothing is paged again or
    // resolved by the hand-over.
    let c = replica(&broker, &group, &events, &spans, &url);
    until_assigned("A, B and C share the partitions", &[&a, &b, &c], &group).await;
    until_exact("C joined", &[&a, &b, &c], 2).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &i in &even {
        assert_eq!(
            pages(&endpoint, "DeploymentFailed", i),
            (1, 0),
            "{}: the hand-over paged again or resolved",
            service(i)
        );
    }
    // Phase 3 deploys successfully: the alerts resolve, once each.
    send(3);
    until_exact("phase 3 on three", &[&a, &b, &c], 3).await;
    common::eventually("each failed deployment resolved", || {
        even.iter()
            .all(|&i| pages(&endpoint, "DeploymentFailed", i) == (1, 1))
    })
    .await;

    // 4. A stops (SIGTERM) while phase 4 flows: its partitions' state is
    // flushed and goes to B and C. Phase 4's open incidents page once.
    a.terminate();
    send(4);
    until_assigned("B and C share the partitions", &[&b, &c], &group).await;
    until_exact("A stopped", &[&b, &c], 4).await;
    common::eventually("each slow recovery paged", || {
        slow.iter()
            .all(|&i| pages(&endpoint, "SlowRecovery", i) == (1, 0))
    })
    .await;
    // Time for a changelog flush (every 300 ms) to hold the alerts' state.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 5. B dies (SIGKILL) while phase 5 flows: C takes its partitions once
    // the group times B out, from the changelog and the offsets committed.
    b.child.kill().expect("SIGKILL");
    b.child.wait().expect("reaped");
    send(5);
    until_assigned("C owns every partition", &[&c], &group).await;
    until_exact("B killed", &[&c], 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for &i in &slow {
        assert_eq!(
            pages(&endpoint, "SlowRecovery", i),
            (1, 0),
            "{}: the take-over paged again or resolved",
            service(i)
        );
    }
    for &i in &even {
        assert_eq!(pages(&endpoint, "DeploymentFailed", i), (1, 1));
    }
    // Nothing else was paged at all.
    let other = endpoint
        .lock()
        .unwrap()
        .accepted
        .iter()
        .filter(|e| {
            let k = e["dedup_key"].as_str().unwrap_or("");
            !k.contains("DeploymentFailed") && !k.contains("SlowRecovery")
        })
        .count();
    assert_eq!(other, 0, "pages of other alerts");
}

/// A replica on an empty disk (its `storage.dir` new, as a rescheduled pod
/// gets) takes over everything its predecessor held, from the changelog
/// alone: the storage folder is for the local receivers' state only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_an_empty_disk_restores_its_partitions_from_the_changelog_alone() {
    let Some(broker) = broker("cluster: empty disk") else {
        return;
    };
    let events = unique("empty-disk-events");
    let spans = unique("empty-disk-spans");
    create_topic(&broker, &events, 6).await;
    create_topic(&broker, &spans, 6).await;
    let group = unique("empty-disk-group");
    let (url, _endpoint) = pagerduty(&[]).await;
    let now = common::unix_now();
    let storage = |dir: &common::TempDir| format!("storage:\n  dir: \"{}\"\n", dir.0.display());
    let first_disk = common::TempDir::new("first-disk");
    let mut first = replica_with(
        &broker,
        &group,
        &events,
        &spans,
        &url,
        &storage(&first_disk),
    );
    for p in 1..=2 {
        let (e, s) = phase(now, p);
        produce(&broker, &events, &e);
        produce(&broker, &spans, &s);
    }
    until_exact("the first replica", &[&first], 2).await;
    first.terminate();
    drop(first_disk);

    let second_disk = common::TempDir::new("second-disk");
    let second = replica_with(
        &broker,
        &group,
        &events,
        &spans,
        &url,
        &storage(&second_disk),
    );
    until_assigned("the second replica owns everything", &[&second], &group).await;
    until_exact("restored on an empty disk", &[&second], 2).await;
    let (e, s) = phase(now, 3);
    produce(&broker, &events, &e);
    produce(&broker, &spans, &s);
    until_exact("and goes on from there", &[&second], 3).await;
}
