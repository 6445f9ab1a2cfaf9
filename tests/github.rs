//! GitHub's webhooks on `POST /github` of a real doraflow process: the real
//! payloads of `../shared/webhooks/github/` (octokit/webhooks) each accepted
//! or ignored as its event says, signed as GitHub signs; a week of pushes,
//! merged pull requests and deployment statuses giving hand-computed DORA
//! figures; signatures right, wrong, missing and rotated; redeliveries
//! counted once.

mod common;

use std::path::{Path, PathBuf};

use common::sources::{page, sign};
use common::{Doraflow, TempDir, free_port};
use doraflow::receivers::sources::{Outcome, github};
use serde_json::{Value, json};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
const SECRET: &str = "It's a Secret to Everybody";
const PAGERDUTY_SECRET: &str = "pagerduty signing secret";

/// doraflow with `receivers.webhook.github` (secret from a file, a
/// previous secret for rotation, `Deploy` as a deploy workflow).
fn start(dir: &TempDir) -> Doraflow {
    let current = dir.0.join("github-secret");
    let previous = dir.0.join("github-previous-secret");
    std::fs::write(&current, SECRET).unwrap();
    std::fs::write(&previous, "the old one").unwrap();
    let pagerduty = dir.0.join("pagerduty-secret");
    std::fs::write(&pagerduty, PAGERDUTY_SECRET).unwrap();
    let (prometheus, webhook) = (free_port(), free_port());
    let config = format!(
        "receivers:
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    github:
      secret: \"${{file:{}}}\"
      previous_secret: \"${{file:{}}}\"
      deploy_workflows: [{{ workflow: Deploy }}]
    pagerduty:
      secret: \"${{file:{}}}\"
      services: {{ \"Shop API\": shop }}
processors:
  dora: {{ windows: [7d, 30d] }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [webhook], processors: [dora], exporters: [prometheus] }}
",
        current.display(),
        previous.display(),
        pagerduty.display()
    );
    Doraflow::start_yaml(&config, prometheus, 0, webhook)
}

async fn deliver(
    client: &reqwest::Client,
    doraflow: &Doraflow,
    event: &str,
    body: &[u8],
    signature: Option<String>,
) -> (u16, Value) {
    let mut request = client
        .post(format!("http://127.0.0.1:{}/github", doraflow.webhook))
        .header("content-type", "application/json")
        .header("x-github-event", event)
        .header("x-github-delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
        .header("user-agent", "GitHub-Hookshot/044aadd");
    if let Some(signature) = signature {
        request = request.header("x-hub-signature-256", signature);
    }
    let response = request.body(body.to_vec()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn signed(
    client: &reqwest::Client,
    doraflow: &Doraflow,
    event: &str,
    body: &Value,
) -> (u16, Value) {
    let bytes = body.to_string().into_bytes();
    deliver(client, doraflow, event, &bytes, Some(sign(SECRET, &bytes))).await
}

fn examples() -> Option<PathBuf> {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/webhooks/github/examples"
    ));
    root.is_dir().then_some(root)
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn config() -> github::GithubConfig {
    serde_json::from_value(json!({
        "secret": SECRET,
        "deploy_workflows": [{ "workflow": "Deploy" }],
    }))
    .unwrap()
}

fn headers(event: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-github-event", event.parse().unwrap());
    headers
}

#[tokio::test]
async fn every_github_example_is_accepted_or_ignored_as_its_event_says() {
    let Some(root) = examples() else {
        common::say_skipped(
            "every_github_example_is_accepted_or_ignored_as_its_event_says",
            "../shared/webhooks/github is not beside this checkout",
        );
        return;
    };
    let dir = TempDir::new("github-examples");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let mut seen = 0;
    let mut applied = 0;
    for event_dir in files_and_dirs(&root) {
        let event = event_dir.file_name().unwrap().to_string_lossy().to_string();
        for path in files(&event_dir) {
            seen += 1;
            let bytes = std::fs::read(&path).unwrap();
            let value: Value = serde_json::from_slice(&bytes).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let outcome = github::translate(&config(), &headers(&event), &value)
                .unwrap_or_else(|e| panic!("{event}/{name}: {e}"));
            let (status, body) = deliver(
                &client,
                &doraflow,
                &event,
                &bytes,
                Some(sign(SECRET, &bytes)),
            )
            .await;
            match &outcome {
                Outcome::Events(events) => {
                    applied += 1;
                    assert_eq!(status, 202, "{event}/{name}: {body}");
                    assert_eq!(body["accepted"], json!(events.len()), "{event}/{name}");
                }
                Outcome::Ignored(_) | Outcome::Pong(_) => {
                    assert_eq!(status, 200, "{event}/{name}: {body}");
                }
            }
            // What each kind of example must become.
            let state = value
                .pointer("/deployment_status/state")
                .and_then(Value::as_str);
            let expect_events = match event.as_str() {
                "deployment_status" => matches!(state, Some("success" | "failure" | "error")),
                "push" => value["ref"].as_str().unwrap().starts_with("refs/heads/"),
                "pull_request" => {
                    value["action"] == "closed" && value["pull_request"]["merged"] == true
                }
                // The examples' workflows (CodeQL, ...) are not `Deploy`.
                _ => false,
            };
            assert_eq!(
                matches!(outcome, Outcome::Events(_)),
                expect_events,
                "{event}/{name}: {outcome:?}"
            );
        }
    }
    assert!(seen >= 60, "{seen} examples");
    assert!(applied >= 3, "{applied} examples applied");
    let metrics = doraflow.metrics();
    assert_eq!(
        metrics.counter(
            "doraflow_receiver_requests_total",
            &[("receiver", "github"), ("result", "success")]
        ),
        applied as f64
    );

    // Exact mappings of the deployment and push examples.
    let read = |p: &str| -> Value {
        serde_json::from_slice(&std::fs::read(root.join(p)).unwrap()).unwrap()
    };
    let decoded =
        |event: &str, value: &Value| match github::translate(&config(), &headers(event), value)
            .unwrap()
        {
            Outcome::Events(values) => doraflow::cdevents::decode_values(&values).unwrap(),
            other => panic!("{other:?}"),
        };
    let status = read("deployment_status/payload.json");
    let events = decoded("deployment_status", &status);
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0].id,
        "github:codertocat/hello-world:deployment_status:209916254"
    );
    // 2019-05-15T15:20:55Z
    assert_eq!(events[0].time, 1_557_933_655_000_000_000);
    let doraflow::model::delivery::DeliveryKind::Deployment(d) = &events[0].kind else {
        panic!("{:?}", events[0].kind)
    };
    assert_eq!(d.service, "hello-world");
    assert_eq!(d.environment, "production");
    assert_eq!(
        d.artifact.as_deref(),
        Some("pkg:github/codertocat/hello-world@f95f852bd8fca8fcc58a9a2d6c842781e32a215e")
    );
    assert_eq!(
        d.outcome,
        doraflow::model::delivery::DeploymentOutcome::Success
    );

    let push = read("push/with-new-branch.payload.json");
    let events = decoded("push", &push);
    assert_eq!(
        events[0].kind,
        doraflow::model::delivery::DeliveryKind::Revision {
            revision: "pkg:github/codertocat/hello-world@6113728f27ae82c7b1a177c8d03f9e96e0adf246"
                .into(),
            parent: None,
            changes: vec![doraflow::model::delivery::LinkedChange {
                id: "pkg:github/codertocat/hello-world@6113728f27ae82c7b1a177c8d03f9e96e0adf246"
                    .into(),
                // 2019-05-15T15:19:25Z
                time: Some(1_557_933_565_000_000_000),
            }],
        }
    );
    // pushed_at 1557933657
    assert_eq!(events[0].time, 1_557_933_657_000_000_000);

    let closed = read("pull_request/closed.payload.json");
    assert!(matches!(
        github::translate(&config(), &headers("pull_request"), &closed).unwrap(),
        Outcome::Ignored(_)
    ));
    // The real pull request, as GitHub sends it once merged.
    let mut merged = closed.clone();
    merged["pull_request"]["merged"] = json!(true);
    let events = decoded("pull_request", &merged);
    assert_eq!(
        events[0].id,
        "github:codertocat/hello-world:pull_request:279147437:merged"
    );
    // Opened 2019-05-15T15:20:33Z.
    assert_eq!(events[0].time, 1_557_933_633_000_000_000);
    assert_eq!(
        events[0].kind,
        doraflow::model::delivery::DeliveryKind::Change {
            change: "pkg:github/codertocat/hello-world@c4295bd74fb0f4fda03689c3df3f2803b658fd85"
                .into(),
            stage: doraflow::model::delivery::ChangeStage::Created,
        }
    );
}

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn repository(pushed_at: Option<i64>) -> Value {
    let mut repo = json!({ "full_name": "acme/shop", "name": "shop", "default_branch": "main" });
    if let Some(at) = pushed_at {
        repo["pushed_at"] = json!(at);
    }
    repo
}

fn push(before: &str, after: &str, commits: &[(&str, i64)], at: i64) -> Value {
    json!({
        "ref": "refs/heads/main", "before": before, "after": after,
        "created": before.starts_with("0000"), "deleted": false, "forced": false,
        "commits": commits.iter().map(|(id, t)| json!({
            "id": id, "timestamp": common::rfc3339(*t), "distinct": true, "message": "work",
        })).collect::<Vec<_>>(),
        "head_commit": { "id": after, "timestamp": common::rfc3339(commits.last().map_or(at, |c| c.1)) },
        "repository": repository(Some(at)),
    })
}

fn deployment_status(id: u64, sha: &str, environment: &str, state: &str, at: i64) -> Value {
    json!({
        "action": "created",
        "deployment_status": { "id": id, "state": state, "environment": environment,
                               "created_at": common::rfc3339(at), "updated_at": common::rfc3339(at) },
        "deployment": { "id": id * 10, "sha": sha, "ref": "main", "task": "deploy",
                        "environment": environment, "payload": {}, "created_at": common::rfc3339(at - 60) },
        "repository": repository(None),
    })
}

/// acme/shop → service `shop`, production; N = now:
/// - push P1 (new branch) a1 @N-6d-10h, a2 @N-6d-8h;
/// - pull request opened N-5d-20h, merged as b1; push P2 (before a2):
///   b0 @N-5d-18h, b1 @N-5d-12h (its time: the opening, N-5d-20h);
/// - D1 success of b1 @N-5d: deploys b1, b0, and through P2's parent a2,
///   a1: lead 20h, 18h, 32h, 34h;
/// - push P3 c1 @N-3d-6h; D2 failure of c1 @N-3d; D3 success of c1
///   @N-2d: lead 30h (the walk stops at b1, deployed already);
/// - push P4 d1 @N-1d-4h; D4 success @N-1d: lead 4h; delivered twice;
/// - a staging status for d1 @N-1d-2h: another series;
/// - PagerDuty incident Q1 triggered @N-5d+2h (D1 failed it), acknowledged,
///   resolved @N-5d+5h: 3h; Q2 triggered @N-1d+1h (D4), resolved
///   @N-1d+2h, reopened @N-1d+3h, resolved @N-1d+7h: 6h, not 1h.
///
/// Production, 7d: 3 successful deployments (3/7 a day); failed changes
/// D1, D2, D4 of 4 (0.75); lead times 4, 18, 20, 30, 32, 34 h: p50 20h,
/// p95 34h, mean 23h; time to restore 3h and 6h: mean 4.5h, p50 3h, p95 6h.
#[tokio::test]
async fn a_week_of_github_gives_exact_dora_figures() {
    let dir = TempDir::new("github-week");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let n = common::unix_now();
    let z = "0000000000000000000000000000000000000000";
    let pr = json!({
        "action": "closed", "number": 7,
        "pull_request": { "id": 1007, "number": 7, "merged": true, "merge_commit_sha": "b1",
                          "created_at": common::rfc3339(n - 5 * DAY - 20 * HOUR),
                          "merged_at": common::rfc3339(n - 5 * DAY - 12 * HOUR),
                          "head": { "sha": "b0", "ref": "feature" }, "base": { "ref": "main" } },
        "repository": repository(None),
    });
    let deliveries = [
        (
            "push",
            push(
                z,
                "a2",
                &[
                    ("a1", n - 6 * DAY - 10 * HOUR),
                    ("a2", n - 6 * DAY - 8 * HOUR),
                ],
                n - 6 * DAY - 8 * HOUR,
            ),
        ),
        ("pull_request", pr),
        (
            "push",
            push(
                "a2",
                "b1",
                &[
                    ("b0", n - 5 * DAY - 18 * HOUR),
                    ("b1", n - 5 * DAY - 12 * HOUR),
                ],
                n - 5 * DAY - 12 * HOUR,
            ),
        ),
        (
            "deployment_status",
            deployment_status(1, "b1", "production", "success", n - 5 * DAY),
        ),
        (
            "push",
            push(
                "b1",
                "c1",
                &[("c1", n - 3 * DAY - 6 * HOUR)],
                n - 3 * DAY - 6 * HOUR,
            ),
        ),
        (
            "deployment_status",
            deployment_status(2, "c1", "production", "failure", n - 3 * DAY),
        ),
        (
            "deployment_status",
            deployment_status(3, "c1", "production", "success", n - 2 * DAY),
        ),
        (
            "push",
            push(
                "c1",
                "d1",
                &[("d1", n - DAY - 4 * HOUR)],
                n - DAY - 4 * HOUR,
            ),
        ),
        (
            "deployment_status",
            deployment_status(5, "d1", "staging", "success", n - DAY - 2 * HOUR),
        ),
        (
            "deployment_status",
            deployment_status(4, "d1", "production", "success", n - DAY),
        ),
        // GitHub's "Redeliver": the same payload again.
        (
            "deployment_status",
            deployment_status(4, "d1", "production", "success", n - DAY),
        ),
    ];
    for (event, body) in &deliveries {
        let (status, answer) = signed(&client, &doraflow, event, body).await;
        // A merged pull request is its opening and its merge.
        let events = if *event == "pull_request" { 2 } else { 1 };
        assert_eq!(
            (status, &answer["accepted"]),
            (202, &json!(events)),
            "{event}"
        );
    }
    let pages = [
        ("incident.triggered", "E1", "Q1", n - 5 * DAY + 2 * HOUR),
        ("incident.acknowledged", "E2", "Q1", n - 5 * DAY + 3 * HOUR),
        ("incident.resolved", "E3", "Q1", n - 5 * DAY + 5 * HOUR),
        ("incident.triggered", "E4", "Q2", n - DAY + HOUR),
        ("incident.resolved", "E5", "Q2", n - DAY + 2 * HOUR),
        ("incident.reopened", "E6", "Q2", n - DAY + 3 * HOUR),
        ("incident.resolved", "E7", "Q2", n - DAY + 7 * HOUR),
        // Redelivered: counted once.
        ("incident.resolved", "E7", "Q2", n - DAY + 7 * HOUR),
    ];
    for (event_type, id, incident, at) in pages {
        let created = if incident == "Q1" {
            n - 5 * DAY + 2 * HOUR
        } else {
            n - DAY + HOUR
        };
        let (status, answer) = page(
            &client,
            doraflow.webhook,
            PAGERDUTY_SECRET,
            event_type,
            id,
            incident,
            created,
            at,
        )
        .await;
        let want = if event_type == "incident.acknowledged" {
            200
        } else {
            202
        };
        assert_eq!(status, want, "{event_type} {id}: {answer}");
    }
    let (status, answer) = signed(
        &client,
        &doraflow,
        "ping",
        &json!({"zen": "Design for failure.", "hook_id": 1}),
    )
    .await;
    assert_eq!((status, &answer["pong"]), (200, &json!(true)));
    let (status, _) = signed(&client, &doraflow, "star", &json!({"action": "created"})).await;
    assert_eq!(status, 200);

    let m = doraflow.metrics();
    let prod = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("service", "shop"), ("environment", "production")];
        l.extend_from_slice(extra);
        l
    };
    assert_eq!(
        m.get("dora_deployments_total", &prod(&[("outcome", "success")])),
        Some(3.0)
    );
    assert_eq!(
        m.get("dora_deployments_total", &prod(&[("outcome", "failure")])),
        Some(1.0)
    );
    assert_eq!(
        m.get(
            "dora_deployment_frequency_per_day",
            &prod(&[("window", "7d")])
        ),
        Some(3.0 / 7.0)
    );
    assert_eq!(
        m.get("dora_change_failure_ratio", &prod(&[("window", "7d")])),
        Some(0.75)
    );
    assert_eq!(
        m.get(
            "dora_mean_time_to_restore_seconds",
            &prod(&[("window", "7d")])
        ),
        Some(4.5 * HOUR as f64)
    );
    assert_eq!(m.get("dora_incidents_open", &prod(&[])), Some(0.0));
    assert_eq!(
        m.get("dora_change_lead_time_seconds_count", &prod(&[])),
        Some(6.0)
    );
    assert_eq!(
        m.get("dora_change_lead_time_seconds_sum", &prod(&[])),
        Some(138.0 * HOUR as f64)
    );

    let (status, api) = common::get(doraflow.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["dora"]["duplicates"], 2);
    let series = api["dora"]["series"].as_array().unwrap();
    let production = series
        .iter()
        .find(|s| s["service"] == "shop" && s["environment"] == "production")
        .expect("shop/production");
    let week = &production["windows"][0];
    assert_eq!(week["window"], "7d");
    assert_eq!(week["lead_time"]["p50"], json!((20 * HOUR) as f64));
    assert_eq!(week["lead_time"]["p95"], json!((34 * HOUR) as f64));
    assert_eq!(week["lead_time"]["mean"], json!((23 * HOUR) as f64));
    assert_eq!(week["time_to_restore"]["p50"], json!((3 * HOUR) as f64));
    assert_eq!(week["time_to_restore"]["p95"], json!((6 * HOUR) as f64));
    assert_eq!(week["failed_changes"], 3);
    // The one change whose merge is known, b1: opened N-5d-20h, merged
    // N-5d-12h, deployed N-5d: 8h before the merge, 12h after.
    assert_eq!(week["lead_time_before_merge"]["count"], 1);
    assert_eq!(
        week["lead_time_before_merge"]["p50"],
        json!((8 * HOUR) as f64)
    );
    assert_eq!(
        week["lead_time_after_merge"]["p50"],
        json!((12 * HOUR) as f64)
    );
    // Q1 resolved before the next deployment came, and none came after Q2
    // opened: no rework.
    assert_eq!(
        (&week["rework_deployments"], &week["rework_ratio"]),
        (&json!(0), &json!(0.0))
    );
    // Deployed on 3 distinct days of the week: daily.
    assert_eq!(week["deployment_frequency_answer"], "daily");
    let staging = series
        .iter()
        .find(|s| s["service"] == "shop" && s["environment"] == "staging")
        .expect("shop/staging");
    // Staging's only deployment (N-1d-2h) takes every commit up to d1:
    // d1 2h, c1 52h, b0 112h, b1 114h, a2 126h, a1 128h.
    let staged = &staging["windows"][0]["lead_time"];
    assert_eq!(staged["p50"], json!((112 * HOUR) as f64));
    assert_eq!(staged["mean"], json!((89 * HOUR) as f64));
}

#[tokio::test]
async fn signatures_right_wrong_missing_and_rotated() {
    let dir = TempDir::new("github-signatures");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let n = common::unix_now();
    let body = deployment_status(9, "e1", "production", "success", n - HOUR)
        .to_string()
        .into_bytes();
    let success = [
        ("service", "shop"),
        ("environment", "production"),
        ("outcome", "success"),
    ];
    // Wrong secret, a tampered body, no signature, a malformed one: 401.
    let tampered = String::from_utf8(body.clone())
        .unwrap()
        .replace("\"e1\"", "\"e2\"")
        .into_bytes();
    for (bytes, signature) in [
        (&body, Some(sign("not the secret", &body))),
        (&tampered, Some(sign(SECRET, &body))),
        (&body, None),
        (&body, Some("sha1=0123".to_string())),
    ] {
        let (status, answer) =
            deliver(&client, &doraflow, "deployment_status", bytes, signature).await;
        assert_eq!(status, 401, "{answer}");
        assert!(answer["error"].is_string());
    }
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        None
    );
    // The previous secret, while a rotation is under way: accepted.
    let (status, _) = deliver(
        &client,
        &doraflow,
        "deployment_status",
        &body,
        Some(sign("the old one", &body)),
    )
    .await;
    assert_eq!(status, 202);
    // The current one, the same delivery again: counted once.
    let (status, _) = deliver(
        &client,
        &doraflow,
        "deployment_status",
        &body,
        Some(sign(SECRET, &body)),
    )
    .await;
    assert_eq!(status, 202);
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        Some(1.0)
    );
    // A payload of the event it says it is, without what doraflow needs:
    // 400 naming the field, nothing applied.
    let mut no_sha = deployment_status(10, "e3", "production", "success", n);
    no_sha["deployment"].as_object_mut().unwrap().remove("sha");
    let (status, answer) = signed(&client, &doraflow, "deployment_status", &no_sha).await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "deployment.sha: missing");
    // GitHub's other content type: the JSON form-encoded in `payload`,
    // the signature over the form body.
    let form_delivery = format!(
        "payload={}",
        deployment_status(11, "e4", "production", "success", n - HOUR)
            .to_string()
            .replace('%', "%25")
            .replace('&', "%26")
            .replace('+', "%2B")
            .replace('=', "%3D")
            .replace(' ', "+")
    )
    .into_bytes();
    let response = client
        .post(format!("http://127.0.0.1:{}/github", doraflow.webhook))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-github-event", "deployment_status")
        .header("x-hub-signature-256", sign(SECRET, &form_delivery))
        .body(form_delivery)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        Some(2.0)
    );
    // Larger than `max_request_body_size_mib` (4): 413, as on /cdevents.
    let huge = vec![b' '; 4 * 1024 * 1024 + 1];
    let (status, _) = deliver(
        &client,
        &doraflow,
        "deployment_status",
        &huge,
        Some(sign(SECRET, &huge)),
    )
    .await;
    assert_eq!(status, 413);
    let (status, answer) = signed(&client, &doraflow, "deployment_status", &json!([1, 2])).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(
        doraflow.metrics().get("dora_deployments_total", &success),
        Some(2.0)
    );
}
