//! GitLab's webhooks on `POST /gitlab` of a real doraflow process: the real
//! payloads of `../shared/webhooks/gitlab/` (go-gitlab's test data) each
//! accepted or ignored as its event says, with the secret token GitLab
//! sends; a week of pushes, merge requests and deployments (and PagerDuty
//! incidents) giving hand-computed DORA figures; tokens right, wrong,
//! missing; redeliveries counted once.

mod common;

use std::path::PathBuf;

use common::sources::page;
use common::{Doraflow, TempDir, free_port};
use doraflow::model::delivery::{DeliveryKind, DeploymentOutcome, LinkedChange};
use doraflow::receivers::sources::{Outcome, gitlab};
use serde_json::{Value, json};

const HOUR: i64 = 3_600;
const DAY: i64 = 86_400;
const TOKEN: &str = "gitlab secret token";
const PAGERDUTY_SECRET: &str = "pagerduty signing secret";

fn start(dir: &TempDir) -> Doraflow {
    let token = dir.0.join("gitlab-token");
    let pagerduty = dir.0.join("pagerduty-secret");
    std::fs::write(&token, TOKEN).unwrap();
    std::fs::write(&pagerduty, PAGERDUTY_SECRET).unwrap();
    let (prometheus, webhook) = (free_port(), free_port());
    let config = format!(
        "receivers:
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    gitlab:
      token: \"${{file:{}}}\"
      deploy_pipelines: [{{ ref: master }}]
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
        token.display(),
        pagerduty.display()
    );
    Doraflow::start_yaml(&config, prometheus, 0, webhook)
}

async fn deliver(
    client: &reqwest::Client,
    doraflow: &Doraflow,
    event: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = client
        .post(format!("http://127.0.0.1:{}/gitlab", doraflow.webhook))
        .header("content-type", "application/json")
        .header("x-gitlab-event", event)
        .header(
            "x-gitlab-event-uuid",
            "a5f6c1c2-64a7-4b67-8f9c-7b4cd2a0b1f0",
        )
        .header("user-agent", "GitLab/17.0.0");
    if let Some(token) = token {
        request = request.header("x-gitlab-token", token);
    }
    let response = request.body(body.to_vec()).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn config() -> gitlab::GitlabConfig {
    serde_json::from_value(json!({ "token": TOKEN, "deploy_pipelines": [{ "ref": "master" }] }))
        .unwrap()
}

fn headers(event: &str) -> axum::http::HeaderMap {
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("x-gitlab-event", event.parse().unwrap());
    headers
}

fn decoded(event: &str, value: &Value) -> Vec<doraflow::model::delivery::DeliveryEvent> {
    match gitlab::translate(&config(), &headers(event), value).unwrap() {
        Outcome::Events(values) => doraflow::cdevents::decode_values(&values).unwrap(),
        other => panic!("{other:?}"),
    }
}

/// The header GitLab sends with each example's `object_kind`.
fn event_of(kind: &str) -> &'static str {
    match kind {
        "deployment" => "Deployment Hook",
        "merge_request" => "Merge Request Hook",
        "pipeline" => "Pipeline Hook",
        "push" => "Push Hook",
        "tag_push" => "Tag Push Hook",
        "build" => "Job Hook",
        "release" => "Release Hook",
        "issue" => "Issue Hook",
        "feature_flag" => "Feature Flag Hook",
        other => panic!("an example of an unknown kind `{other}`"),
    }
}

#[tokio::test]
async fn every_gitlab_example_is_accepted_or_ignored_as_its_event_says() {
    let root = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/webhooks/gitlab/examples"
    ));
    if !root.is_dir() {
        common::say_skipped(
            "every_gitlab_example_is_accepted_or_ignored_as_its_event_says",
            "../shared/webhooks/gitlab is not beside this checkout",
        );
        return;
    }
    let dir = TempDir::new("gitlab-examples");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 9);
    let mut applied = Vec::new();
    for path in &files {
        let bytes = std::fs::read(path).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        let kind = value["object_kind"].as_str().unwrap().to_string();
        let event = event_of(&kind);
        let outcome = gitlab::translate(&config(), &headers(event), &value)
            .unwrap_or_else(|e| panic!("{kind}: {e}"));
        let (status, body) = deliver(&client, &doraflow, event, &bytes, Some(TOKEN)).await;
        match outcome {
            Outcome::Events(events) => {
                assert_eq!(
                    (status, &body["accepted"]),
                    (202, &json!(events.len())),
                    "{kind}"
                );
                applied.push(kind);
            }
            _ => assert_eq!(status, 200, "{kind}: {body}"),
        }
    }
    // The open merge request is ignored; the deployment, the push and the
    // pipeline on master (a listed deploy pipeline) are applied.
    applied.sort();
    assert_eq!(applied, ["deployment", "pipeline", "push"]);

    let read = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(root.join(name)).unwrap()).unwrap()
    };
    let events = decoded("Deployment Hook", &read("deployment.json"));
    assert_eq!(
        events[0].id,
        "gitlab:root/test-deployment-webhooks:deployment:15:success"
    );
    // 2021-04-28 21:50:00 +0200
    assert_eq!(events[0].time, 1_619_639_400_000_000_000);
    let DeliveryKind::Deployment(d) = &events[0].kind else {
        panic!("{:?}", events[0].kind)
    };
    assert_eq!(d.service, "test-deployment-webhooks");
    assert_eq!(d.environment, "staging");
    assert_eq!(d.outcome, DeploymentOutcome::Success);
    assert_eq!(
        d.artifact.as_deref(),
        Some("pkg:gitlab/root/test-deployment-webhooks@279484c09fbe69ededfced8c1bb6e6d24616b468")
    );

    let events = decoded("Push Hook", &read("push.json"));
    let revision = |sha: &str| format!("pkg:gitlab/mike/diaspora@{sha}");
    assert_eq!(
        events[0].kind,
        DeliveryKind::Revision {
            revision: revision("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
            parent: Some(revision("95790bf891e76fee5e1747ab589903a6a1f80f22")),
            changes: vec![
                LinkedChange {
                    id: revision("b6568db1bc1dcd7f8b4d5a946b0b91f9dacd7327"),
                    // 2011-12-12T14:27:31+02:00
                    time: Some(1_323_692_851_000_000_000),
                },
                LinkedChange {
                    id: revision("da1560886d4f094c3e6c9ef40349f7d38b5d27d7"),
                    // 2012-01-03T23:36:29+02:00
                    time: Some(1_325_626_589_000_000_000),
                },
            ],
        }
    );
    // The push's time: its newest commit's.
    assert_eq!(events[0].time, 1_325_626_589_000_000_000);

    // The real merge request, as GitLab sends it once merged.
    let mut merged = read("merge_request.json");
    merged["object_attributes"]["action"] = json!("merge");
    merged["object_attributes"]["state"] = json!("merged");
    let events = decoded("Merge Request Hook", &merged);
    assert_eq!(
        events[0].id,
        "gitlab:gitlabhq/gitlab-test:merge_request:99:merged"
    );
    // Opened 2013-12-03T17:23:34Z; fast-forward: the last commit is merged.
    assert_eq!(events[0].time, 1_386_091_414_000_000_000);
    assert_eq!(
        events[0].kind,
        DeliveryKind::Change {
            change: "pkg:gitlab/gitlabhq/gitlab-test@da1560886d4f094c3e6c9ef40349f7d38b5d27d7"
                .into(),
            stage: doraflow::model::delivery::ChangeStage::Created,
        }
    );
}

fn project() -> Value {
    json!({ "id": 7, "name": "Shop", "path_with_namespace": "acme/shop",
            "web_url": "https://gitlab.example.com/acme/shop", "default_branch": "main" })
}

fn push(before: &str, after: &str, commits: &[(&str, i64)]) -> Value {
    json!({
        "object_kind": "push", "event_name": "push", "ref": "refs/heads/main",
        "before": before, "after": after, "checkout_sha": after,
        "commits": commits.iter().map(|(id, t)| json!({
            "id": id, "message": "work", "timestamp": common::rfc3339(*t),
            "author": { "name": "Dev", "email": "dev@example.com" },
        })).collect::<Vec<_>>(),
        "total_commits_count": commits.len(), "project": project(),
    })
}

fn deployment(id: u64, sha: &str, environment: &str, status: &str, at: i64) -> Value {
    // GitLab's own form of the time: `2021-04-28 21:50:00 +0200`.
    let at = chrono::DateTime::from_timestamp(at, 0)
        .unwrap()
        .with_timezone(&chrono::FixedOffset::east_opt(2 * 3_600).unwrap())
        .format("%Y-%m-%d %H:%M:%S %z")
        .to_string();
    json!({
        "object_kind": "deployment", "status": status, "status_changed_at": at,
        "deployment_id": id, "deployable_id": id * 10, "environment": environment,
        "short_sha": &sha[..sha.len().min(8)],
        "commit_url": format!("https://gitlab.example.com/acme/shop/-/commit/{sha}"),
        "ref": "main", "project": project(),
    })
}

/// acme/shop → service `shop`; N = now:
/// - push P1 (new branch) a1 @N-4d-6h;
/// - merge request !1 opened N-3d-20h, merged as m1; push P2 (before a1):
///   b1 @N-3d-10h, m1 @N-3d-8h (its time: the opening, N-3d-20h);
/// - D1 success of m1 @N-3d: m1 20h, b1 10h, a1 (through P2's parent) 30h;
/// - push P3 c1 @N-2d-5h; D2 failed of c1 @N-2d-4h; D3 success @N-2d: c1
///   5h; D3 delivered twice;
/// - PagerDuty incident Q1 of "Shop API" triggered @N-2d+1h (D3 failed
///   it), resolved @N-2d+3h: 2h;
/// - `staging/shop` deployment of c1 @N-1d: service shop, environment
///   staging.
///
/// Production, 7d: 2 successful deployments (2/7 a day), failed changes
/// D2 and D3 of 3 (2/3); lead times 5, 10, 20, 30 h: p50 10h, p95 30h,
/// mean 16.25h; time to restore 2h.
#[tokio::test]
async fn a_week_of_gitlab_gives_exact_dora_figures() {
    let dir = TempDir::new("gitlab-week");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let n = common::unix_now();
    let z = "0000000000000000000000000000000000000000";
    let merge_request = json!({
        "object_kind": "merge_request", "event_type": "merge_request", "project": project(),
        "object_attributes": { "id": 501, "iid": 1, "action": "merge", "state": "merged",
                               "created_at": common::rfc3339(n - 3 * DAY - 20 * HOUR),
                               "merge_commit_sha": "e1e1e1e1", "source_branch": "feature",
                               "target_branch": "main", "last_commit": { "id": "f9f9f9f9" } },
    });
    let deliveries = [
        (
            "Push Hook",
            push(z, "a1a1a1a1", &[("a1a1a1a1", n - 4 * DAY - 6 * HOUR)]),
        ),
        ("Merge Request Hook", merge_request),
        (
            "Push Hook",
            push(
                "a1a1a1a1",
                "e1e1e1e1",
                &[
                    ("b1b1b1b1", n - 3 * DAY - 10 * HOUR),
                    ("e1e1e1e1", n - 3 * DAY - 8 * HOUR),
                ],
            ),
        ),
        (
            "Deployment Hook",
            deployment(1, "e1e1e1e1", "production", "success", n - 3 * DAY),
        ),
        (
            "Push Hook",
            push(
                "e1e1e1e1",
                "c1c1c1c1",
                &[("c1c1c1c1", n - 2 * DAY - 5 * HOUR)],
            ),
        ),
        (
            "Deployment Hook",
            deployment(
                2,
                "c1c1c1c1",
                "production",
                "failed",
                n - 2 * DAY - 4 * HOUR,
            ),
        ),
        (
            "Deployment Hook",
            deployment(3, "c1c1c1c1", "production", "success", n - 2 * DAY),
        ),
        (
            "Deployment Hook",
            deployment(3, "c1c1c1c1", "production", "success", n - 2 * DAY),
        ),
        (
            "Deployment Hook",
            deployment(4, "c1c1c1c1", "staging/shop", "success", n - DAY),
        ),
    ];
    for (event, body) in &deliveries {
        let (status, answer) = deliver(
            &client,
            &doraflow,
            event,
            body.to_string().as_bytes(),
            Some(TOKEN),
        )
        .await;
        assert_eq!(
            (status, &answer["accepted"]),
            (202, &json!(1)),
            "{event}: {answer}"
        );
    }
    let created = n - 2 * DAY + HOUR;
    for (event_type, id, at) in [
        ("incident.triggered", "E1", created),
        ("incident.resolved", "E2", n - 2 * DAY + 3 * HOUR),
    ] {
        let (status, answer) = page(
            &client,
            doraflow.webhook,
            PAGERDUTY_SECRET,
            event_type,
            id,
            "Q1",
            created,
            at,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }

    let m = doraflow.metrics();
    let prod = |extra: &[(&'static str, &'static str)]| {
        let mut l = vec![("service", "shop"), ("environment", "production")];
        l.extend_from_slice(extra);
        l
    };
    let week = prod(&[("window", "7d")]);
    assert_eq!(
        m.get("dora_deployment_frequency_per_day", &week),
        Some(2.0 / 7.0)
    );
    assert_eq!(m.get("dora_change_failure_ratio", &week), Some(2.0 / 3.0));
    assert_eq!(
        m.get("dora_mean_time_to_restore_seconds", &week),
        Some(2.0 * HOUR as f64)
    );
    assert_eq!(
        m.get("dora_deployments_total", &prod(&[("outcome", "failure")])),
        Some(1.0)
    );
    let (status, api) = common::get(doraflow.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    assert_eq!(api["dora"]["duplicates"], 1);
    let series = api["dora"]["series"].as_array().unwrap();
    let production = series
        .iter()
        .find(|s| s["service"] == "shop" && s["environment"] == "production")
        .expect("shop/production");
    let lead = &production["windows"][0]["lead_time"];
    assert_eq!(lead["p50"], json!((10 * HOUR) as f64));
    assert_eq!(lead["p95"], json!((30 * HOUR) as f64));
    assert_eq!(lead["mean"], json!(16.25 * HOUR as f64));
    assert!(
        series
            .iter()
            .any(|s| s["service"] == "shop" && s["environment"] == "staging"),
        "the environment folder staging/shop is shop in staging"
    );

    // A wrong or missing token: 401, nothing applied.
    let late = deployment(9, "c1c1c1c1", "production", "success", n - HOUR).to_string();
    for token in [Some("not the token"), None] {
        let (status, _) = deliver(
            &client,
            &doraflow,
            "Deployment Hook",
            late.as_bytes(),
            token,
        )
        .await;
        assert_eq!(status, 401);
    }
    // A deployment without its environment: 400 naming it.
    let mut no_environment = deployment(10, "c1c1c1c1", "production", "success", n - HOUR);
    no_environment
        .as_object_mut()
        .unwrap()
        .remove("environment");
    let (status, answer) = deliver(
        &client,
        &doraflow,
        "Deployment Hook",
        no_environment.to_string().as_bytes(),
        Some(TOKEN),
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("environment: missing"))
    );
    assert_eq!(
        doraflow
            .metrics()
            .get("dora_deployments_total", &prod(&[("outcome", "success")])),
        Some(2.0)
    );
}
