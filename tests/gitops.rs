//! GitOps sources and one deployment from many tools, on a real doraflow
//! process: Argo CD notifications rendered from the shipped template
//! (`deploy/argocd/notifications.yaml`), Flux's `generic-hmac` events
//! signed as Flux signs them (right, wrong, missing), and one deployment
//! reported by a CDEvent, GitHub's real `deployment_status` payload
//! (`../shared/webhooks/github/`) and Argo CD counted once, its sources
//! listed; a second commit counted again.

mod common;

use std::path::Path;

use common::sources::{page_with_urgency, sign};
use common::{Doraflow, TempDir, free_port, rfc3339, unix_now};
use serde_json::{Value, json};

const GITHUB_SECRET: &str = "It's a Secret to Everybody";
const ARGOCD_TOKEN: &str = "argocd notifications token";
const FLUX_TOKEN: &str = "flux provider token";
const PAGERDUTY_SECRET: &str = "pagerduty signing secret";

fn start(dir: &TempDir) -> Doraflow {
    let secret = |name: &str, value: &str| {
        let path = dir.0.join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let (github, argocd, flux, pagerduty) = (
        secret("github", GITHUB_SECRET),
        secret("argocd", ARGOCD_TOKEN),
        secret("flux", FLUX_TOKEN),
        secret("pagerduty", PAGERDUTY_SECRET),
    );
    let (prometheus, webhook) = (free_port(), free_port());
    let config = format!(
        "receivers:
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    github: {{ secret: \"${{file:{github}}}\" }}
    argocd:
      bearer_token: \"${{file:{argocd}}}\"
      services: {{ hello-world-prod: hello-world }}
    flux:
      secret: \"${{file:{flux}}}\"
      environments: {{ apps/podinfo: production }}
    pagerduty:
      secret: \"${{file:{pagerduty}}}\"
      services: {{ \"Shop API\": podinfo }}
processors:
  dora:
    windows: [7d, 30d]
    incident_filters: {{ pagerduty: {{ urgency: [high] }} }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [webhook], processors: [dora], exporters: [prometheus] }}
"
    );
    Doraflow::start_yaml(&config, prometheus, 0, webhook)
}

/// Renders an Argo CD template body as the notification controller does,
/// for the two forms the shipped templates use: `{{.path}}` (a missing
/// value is `<no value>`, as Go's templates print it) and
/// `{{toJson .path}}` (a missing value is `null`).
fn render(template: &str, vars: &Value) -> String {
    let lookup = |path: &str| {
        path.trim_start_matches('.')
            .split('.')
            .try_fold(vars, |v, key| v.get(key))
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("a closed action") + start;
        let action = rest[start + 2..end].trim();
        match action.strip_prefix("toJson ") {
            Some(path) => out.push_str(
                &lookup(path.trim())
                    .cloned()
                    .unwrap_or(Value::Null)
                    .to_string(),
            ),
            None => {
                assert!(
                    action.starts_with('.'),
                    "an action the renderer does not know: {action}"
                );
                match lookup(action) {
                    Some(Value::String(s)) => out.push_str(s),
                    Some(other) => out.push_str(&other.to_string()),
                    None => out.push_str("<no value>"),
                }
            }
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// The shipped template `name`'s webhook body.
fn shipped_template(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/argocd/notifications.yaml");
    let config: Value = serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let template = config["data"][format!("template.{name}")]
        .as_str()
        .unwrap_or_else(|| panic!("template.{name} is shipped"));
    let template: Value = serde_saphyr::from_str(template).unwrap();
    template["webhook"]["doraflow"]["body"]
        .as_str()
        .expect("a body for the doraflow service")
        .to_string()
}

/// An Application as Argo CD holds it, synced to `revision` at `finished`.
fn application(revision: &str, finished: i64, health: &str, phase: &str) -> Value {
    json!({
        "app": {
            "metadata": {
                "name": "hello-world-prod", "namespace": "argocd",
                "labels": { "app.kubernetes.io/part-of": "hello" },
            },
            "spec": {
                "project": "default",
                "source": { "repoURL": "https://github.com/Codertocat/Hello-World.git", "path": "deploy", "targetRevision": "HEAD" },
                "destination": { "server": "https://kubernetes.default.svc", "namespace": "hello" },
            },
            "status": {
                "sync": { "status": "Synced", "revision": revision },
                "health": { "status": health },
                "operationState": {
                    "phase": phase,
                    "startedAt": rfc3339(finished - 40),
                    "finishedAt": rfc3339(finished),
                    "syncResult": { "revision": revision },
                },
            },
        },
        "context": { "argocdUrl": "https://argocd.example.com" },
    })
}

async fn post(
    client: &reqwest::Client,
    doraflow: &Doraflow,
    path: &str,
    headers: &[(&str, String)],
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = client
        .post(format!("http://127.0.0.1:{}{path}", doraflow.webhook))
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.body(body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn argocd(
    client: &reqwest::Client,
    doraflow: &Doraflow,
    template: &str,
    app: &Value,
) -> (u16, Value) {
    let body = render(&shipped_template(template), app);
    let auth = [("authorization", format!("Bearer {ARGOCD_TOKEN}"))];
    post(client, doraflow, "/argocd", &auth, body.into_bytes()).await
}

fn series<'a>(api: &'a Value, service: &str) -> &'a Value {
    api["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == service && s["environment"] == "production")
        .unwrap_or_else(|| panic!("{service} (production) in {api}"))
}

fn dora(doraflow: &Doraflow) -> Value {
    let (status, body) = common::get(doraflow.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&body).unwrap();
    api["dora"].clone()
}

#[tokio::test]
async fn one_deployment_from_a_cdevent_github_and_argocd_counts_once() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/webhooks/github/examples/deployment_status/payload.json");
    let Ok(text) = std::fs::read_to_string(&example) else {
        common::say_skipped(
            "one_deployment_from_a_cdevent_github_and_argocd_counts_once",
            "../shared/webhooks/github is not beside this checkout",
        );
        return;
    };
    let dir = TempDir::new("gitops-once");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let now = unix_now();
    let deployed = now - 2 * 3_600;

    // GitHub's own payload, dated two hours ago (its 2019 date is beyond
    // the retention), signed as GitHub signs.
    let mut status: Value = serde_json::from_str(&text).unwrap();
    let sha = status["deployment"]["sha"].as_str().unwrap().to_string();
    assert_eq!(status["repository"]["full_name"], "Codertocat/Hello-World");
    status["deployment_status"]["created_at"] = json!(rfc3339(deployed + 60));
    let body = status.to_string().into_bytes();
    let headers = [
        ("x-github-event", "deployment_status".to_string()),
        ("x-hub-signature-256", sign(GITHUB_SECRET, &body)),
    ];
    let (code, answer) = post(&client, &doraflow, "/github", &headers, body).await;
    assert_eq!((code, &answer["accepted"]), (202, &json!(1)), "{answer}");

    // The CD system's CDEvent, a minute before.
    let cdevent = json!({
        "context": { "specversion": "0.5.1", "id": "cd-hello-1", "source": "/cd/spinnaker",
                     "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": rfc3339(deployed) },
        "subject": { "id": "service/hello-world", "source": "/cd/spinnaker",
                     "content": { "environment": { "id": "production" },
                                  "artifactId": format!("pkg:github/codertocat/hello-world@{sha}") } },
    });
    let (code, answer) = post(
        &client,
        &doraflow,
        "/cdevents",
        &[],
        cdevent.to_string().into_bytes(),
    )
    .await;
    assert_eq!(code, 202, "{answer}");

    // Argo CD's notification from the shipped template, once synced and healthy.
    let (code, answer) = argocd(
        &client,
        &doraflow,
        "doraflow-deployed",
        &application(&sha, deployed + 240, "Healthy", "Succeeded"),
    )
    .await;
    assert_eq!((code, &answer["accepted"]), (202, &json!(1)), "{answer}");

    let api = dora(&doraflow);
    let hello = series(&api, "hello-world");
    assert_eq!(hello["deployments_total"]["success"], 1, "{hello}");
    assert_eq!(hello["windows"][0]["deployments"], 1);
    assert_eq!(hello["recent_deployments"].as_array().unwrap().len(), 1);
    assert_eq!(
        hello["recent_deployments"][0]["at"],
        json!(deployed * 1_000_000_000)
    );
    assert_eq!(
        hello["recent_deployments"][0]["sources"],
        json!(["cdevents", "github", "argocd"])
    );
    let m = doraflow.metrics();
    let labels = [
        ("service", "hello-world"),
        ("environment", "production"),
        ("outcome", "success"),
    ];
    assert_eq!(m.get("dora_deployments_total", &labels), Some(1.0));

    // A second commit, reported by GitHub and Argo CD: a second deployment.
    let second = "0123456789abcdef0123456789abcdef01234567";
    status["deployment"]["sha"] = json!(second);
    status["deployment_status"]["id"] = json!(209_916_255);
    status["deployment_status"]["created_at"] = json!(rfc3339(deployed + 1_800));
    let body = status.to_string().into_bytes();
    let headers = [
        ("x-github-event", "deployment_status".to_string()),
        ("x-hub-signature-256", sign(GITHUB_SECRET, &body)),
    ];
    assert_eq!(
        post(&client, &doraflow, "/github", &headers, body).await.0,
        202
    );
    let (code, _) = argocd(
        &client,
        &doraflow,
        "doraflow-deployed",
        &application(second, deployed + 1_900, "Healthy", "Succeeded"),
    )
    .await;
    assert_eq!(code, 202);
    let api = dora(&doraflow);
    let hello = series(&api, "hello-world");
    assert_eq!(hello["deployments_total"]["success"], 2, "{hello}");
    assert_eq!(
        hello["recent_deployments"][0]["sources"],
        json!(["github", "argocd"])
    );

    // The second commit then degrades: Argo CD's health-degraded report of
    // the same sync makes that deployment failed, still one deployment.
    let (code, _) = argocd(
        &client,
        &doraflow,
        "doraflow-health-degraded",
        &application(second, deployed + 1_900, "Degraded", "Succeeded"),
    )
    .await;
    assert_eq!(code, 202);
    let api = dora(&doraflow);
    let hello = series(&api, "hello-world");
    assert_eq!(hello["deployments_total"]["success"], 1, "{hello}");
    assert_eq!(hello["deployments_total"]["failure"], 1);
    assert_eq!(
        hello["recent_failed_changes"][0]["reason"],
        "deployment_failed"
    );
    assert_eq!(
        hello["recent_failed_changes"][0]["sources"],
        json!(["github", "argocd"])
    );
    let failed = [
        ("service", "hello-world"),
        ("environment", "production"),
        ("reason", "deployment_failed"),
    ];
    assert_eq!(
        doraflow.metrics().get("dora_failed_changes_total", &failed),
        Some(1.0)
    );
}

#[tokio::test]
async fn argocd_needs_its_token_and_says_what_a_payload_lacks() {
    let dir = TempDir::new("gitops-argocd");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let app = application(
        "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432",
        unix_now() - 600,
        "Healthy",
        "Succeeded",
    );
    let body = render(&shipped_template("doraflow-deployed"), &app).into_bytes();
    let (code, _) = post(&client, &doraflow, "/argocd", &[], body.clone()).await;
    assert_eq!(code, 401);
    let wrong = [("authorization", "Bearer guess".to_string())];
    assert_eq!(
        post(&client, &doraflow, "/argocd", &wrong, body).await.0,
        401
    );
    // A sync-failed notification of an app whose operation never recorded
    // a revision: a 400 naming the field, nothing applied.
    let mut bare = app.clone();
    bare["app"]["status"]["operationState"]["syncResult"] = json!({});
    let (code, answer) = argocd(&client, &doraflow, "doraflow-sync-failed", &bare).await;
    assert_eq!(code, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("revision"),
        "{answer}"
    );
    let api = dora(&doraflow);
    assert!(api["series"].as_array().unwrap().is_empty(), "{api}");
    // The same app synced: applied, and a failed sync of the next commit too.
    let (code, _) = argocd(&client, &doraflow, "doraflow-deployed", &app).await;
    assert_eq!(code, 202);
    let failing = application(
        "0123456789abcdef0123456789abcdef01234567",
        unix_now() - 300,
        "Progressing",
        "Failed",
    );
    assert_eq!(
        argocd(&client, &doraflow, "doraflow-sync-failed", &failing)
            .await
            .0,
        202
    );
    let api = dora(&doraflow);
    let hello = series(&api, "hello-world");
    assert_eq!(hello["deployments_total"]["success"], 1);
    assert_eq!(hello["deployments_total"]["failure"], 1);
}

/// A Flux event about Kustomization `apps/podinfo`, as the
/// notification-controller posts it.
fn flux_event(reason: &str, severity: &str, revision: &str, at: i64) -> Vec<u8> {
    json!({
        "involvedObject": {
            "kind": "Kustomization", "namespace": "apps", "name": "podinfo",
            "uid": "f4a5a1c6-2b6e-4f0e-9a53-3f1d7f0c9b21",
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "resourceVersion": "162739",
        },
        "severity": severity,
        "timestamp": rfc3339(at),
        "message": "Service/apps/podinfo configured\nDeployment/apps/podinfo configured",
        "reason": reason,
        "metadata": { "revision": format!("main@sha1:{revision}"), "summary": "podinfo" },
        "reportingController": "kustomize-controller",
        "reportingInstance": "kustomize-controller-7f5d9c8b6d-4lq2x",
    })
    .to_string()
    .into_bytes()
}

#[tokio::test]
async fn flux_events_count_only_with_the_providers_signature() {
    let dir = TempDir::new("gitops-flux");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let now = unix_now();
    let first = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let body = flux_event("ReconciliationSucceeded", "info", first, now - 3_600);

    // Missing, wrong, another algorithm: refused, nothing applied.
    let (code, answer) = post(&client, &doraflow, "/flux", &[], body.clone()).await;
    assert_eq!(code, 401, "{answer}");
    let wrong = [("x-signature", sign("not the token", &body))];
    assert_eq!(
        post(&client, &doraflow, "/flux", &wrong, body.clone())
            .await
            .0,
        401
    );
    let sha1 = [("x-signature", "sha1=0123456789abcdef".to_string())];
    assert_eq!(
        post(&client, &doraflow, "/flux", &sha1, body.clone())
            .await
            .0,
        401
    );
    assert!(dora(&doraflow)["series"].as_array().unwrap().is_empty());

    // Right: applied; reported again ten minutes later, the same deployment.
    let right = [("x-signature", sign(FLUX_TOKEN, &body))];
    let (code, answer) = post(&client, &doraflow, "/flux", &right, body).await;
    assert_eq!((code, &answer["accepted"]), (202, &json!(1)), "{answer}");
    let again = flux_event("ReconciliationSucceeded", "info", first, now - 3_000);
    let signed = [("x-signature", sign(FLUX_TOKEN, &again))];
    assert_eq!(
        post(&client, &doraflow, "/flux", &signed, again).await.0,
        202
    );
    // The next commit fails its health check.
    let second = "0123456789abcdef0123456789abcdef01234567";
    let failed = flux_event("HealthCheckFailed", "error", second, now - 1_200);
    let signed = [("x-signature", sign(FLUX_TOKEN, &failed))];
    assert_eq!(
        post(&client, &doraflow, "/flux", &signed, failed).await.0,
        202
    );

    let api = dora(&doraflow);
    let podinfo = series(&api, "podinfo");
    assert_eq!(podinfo["deployments_total"]["success"], 1, "{podinfo}");
    assert_eq!(podinfo["deployments_total"]["failure"], 1);
    assert_eq!(podinfo["recent_deployments"][0]["sources"], json!(["flux"]));
    assert_eq!(
        podinfo["recent_failed_changes"][0]["reason"],
        "deployment_failed"
    );
    assert_eq!(podinfo["windows"][0]["change_failure_ratio"], 0.5);
}

#[tokio::test]
async fn only_high_urgency_pages_count_when_the_filter_says_so() {
    let dir = TempDir::new("gitops-filters");
    let doraflow = start(&dir);
    let client = reqwest::Client::new();
    let now = unix_now();
    let first = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
    let second = "0123456789abcdef0123456789abcdef01234567";
    for (revision, at) in [(first, now - 6 * 3_600), (second, now - 3 * 3_600)] {
        let body = flux_event("ReconciliationSucceeded", "info", revision, at);
        let signed = [("x-signature", sign(FLUX_TOKEN, &body))];
        assert_eq!(
            post(&client, &doraflow, "/flux", &signed, body).await.0,
            202
        );
    }
    // A low-urgency page after the first deployment, a high-urgency one
    // after the second, each resolved 20 minutes later.
    let port = doraflow.webhook;
    for (urgency, incident, opened) in [
        ("low", "PLOW1", now - 5 * 3_600),
        ("high", "PHIGH1", now - 2 * 3_600),
    ] {
        for (event, id, at) in [
            ("incident.triggered", format!("{incident}-t"), opened),
            ("incident.resolved", format!("{incident}-r"), opened + 1_200),
        ] {
            let (code, answer) = page_with_urgency(
                &client,
                port,
                PAGERDUTY_SECRET,
                event,
                &id,
                incident,
                opened,
                at,
                urgency,
            )
            .await;
            assert_eq!(code, 202, "{answer}");
        }
    }
    let api = dora(&doraflow);
    assert_eq!(api["incidents_filtered_out"], 1, "{api}");
    let podinfo = series(&api, "podinfo");
    let week = &podinfo["windows"][0];
    assert_eq!(week["failed_changes"], 1, "{podinfo}");
    assert_eq!(week["change_failure_ratio"], 0.5);
    assert_eq!(week["time_to_restore"]["count"], 1);
    assert_eq!(week["time_to_restore"]["p50"], 1_200.0);
    let failed = &podinfo["recent_failed_changes"][0];
    assert_eq!(failed["reason"], "incident_window");
    assert_eq!(failed["evidence"]["incidents"][0]["id"], "pagerduty:PHIGH1");
    assert_eq!(failed["evidence"]["incidents"][0]["source"], "pagerduty");
}
