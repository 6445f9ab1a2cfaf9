//! GitHub's webhooks: `POST /github`.
//!
//! The event is named in `X-GitHub-Event`; `X-Hub-Signature-256`
//! (`sha256=` + the hex HMAC-SHA256 of the raw body under the webhook's
//! secret) is required and checked in constant time.
//!
//! | event | becomes |
//! |---|---|
//! | `deployment_status` `success` | a deployment of the deployment's `sha`, at the status's `created_at` |
//! | `deployment_status` `failure`, `error` | a failed deployment |
//! | `workflow_run` / `workflow_job` `completed`, of a listed deploy workflow | a deployment (`conclusion` success) or a failed one (failure, timed_out) |
//! | `push` to a branch | a revision: its commits (id, timestamp) and the revision before it |
//! | `pull_request` `closed` and merged | the merge commit's change time: the pull request's opening |
//! | `ping` | answered |
//! | anything else | accepted, counted, ignored |
//!
//! Lead time runs from each commit's timestamp to the first deployment of
//! a revision that contains it: the deployed `sha` is a pushed revision,
//! and the revisions before it (each push's `before`) are walked back to
//! the last one the environment already had.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    FieldError, Outcome, emit, field_error, id_text, mapped_service, optional_text, text, time,
};
use crate::settings::Secret;

/// `receivers.webhook.github`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GithubConfig {
    /// The webhook's secret, from `${env:NAME}` or `${file:PATH}`.
    pub secret: Secret,
    /// The secret before the current one, accepted too while a rotation is
    /// under way. Default: none.
    #[serde(default)]
    pub previous_secret: Option<Secret>,
    /// Repository (`owner/name`, or `name`) → service. Default: a
    /// repository is the service of its name, unless a deployment's
    /// `payload.service` names one.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Workflows whose completed runs (or jobs) are deployments. Default:
    /// none (deployments come from `deployment_status`).
    #[serde(default)]
    pub deploy_workflows: Vec<DeployWorkflow>,
    /// When a merged pull request's work began: `opened` (the pull
    /// request's `created_at`) or `first_commit` (the earliest of its
    /// commits, found through the pushes of its branch; without them, the
    /// merge commit's own time). Default `opened`.
    #[serde(default)]
    pub pull_request_time: PullRequestTime,
    /// Refs whose deployments are rework (hotfixes), as `*` globs on the
    /// deployment's `ref` or the run's branch, e.g. `[hotfix/*]`; a
    /// deployment whose `payload.rework` is `true` is rework too. Default
    /// none.
    #[serde(default)]
    pub rework_refs: Vec<String>,
    /// Pull request labels that make it rework (a hotfix): the deployment
    /// that first carries its merge commit is rework, e.g. `[hotfix]`.
    /// Default none.
    #[serde(default)]
    pub rework_labels: Vec<String>,
}

/// `pull_request_time`: where a merged pull request's lead time starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PullRequestTime {
    /// At the pull request's opening.
    #[default]
    Opened,
    /// At its first commit.
    FirstCommit,
}

/// A GitHub Actions workflow (or one job of it) that deploys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployWorkflow {
    /// The workflow's `name`.
    pub workflow: String,
    /// If set, the job of the workflow that deploys: its `workflow_job`
    /// events count and the run's do not. Default: the whole run counts.
    #[serde(default)]
    pub job: Option<String>,
    /// The environment it deploys to. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The service it deploys. Default: the repository's (see `services`).
    #[serde(default)]
    pub service: Option<String>,
}

fn default_environment() -> String {
    "production".to_string()
}

const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// Checks `X-Hub-Signature-256` against the secret (or the previous one).
pub fn verify(config: &GithubConfig, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let given = headers
        .get("x-hub-signature-256")
        .ok_or("the X-Hub-Signature-256 header is missing")?
        .to_str()
        .ok()
        .and_then(|v| v.trim().strip_prefix("sha256="))
        .ok_or("X-Hub-Signature-256 is not `sha256=<64 hex digits>`")?;
    super::sha256_signed(given, &config.secret, config.previous_secret.as_ref(), body)
}

/// The repository's `owner/name` (lowercased, as GitHub compares them)
/// and `name`.
fn repository(body: &Value) -> Result<(String, String), FieldError> {
    let full = text(body, "repository.full_name")?.to_ascii_lowercase();
    let name = text(body, "repository.name")?.to_ascii_lowercase();
    Ok((full, name))
}

/// A commit's id as a change and a revision: a package URL of the
/// repository at that commit.
fn commit_id(full_name: &str, sha: &str) -> String {
    format!("pkg:github/{full_name}@{}", sha.to_ascii_lowercase())
}

fn source(full_name: &str) -> String {
    format!("https://github.com/{full_name}")
}

/// A service named by the deployment itself: `payload.service` (the
/// payload is an object, or a string holding one), or a description
/// `service: <name>`.
fn deployment_service(deployment: &Value) -> Option<String> {
    let from_payload = match deployment.get("payload") {
        Some(Value::Object(payload)) => payload
            .get("service")
            .and_then(Value::as_str)
            .map(str::to_string),
        Some(Value::String(text)) => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("service").and_then(Value::as_str).map(str::to_string)),
        _ => None,
    };
    let from_description = || {
        let description = deployment.get("description")?.as_str()?.trim();
        let rest = description
            .strip_prefix("service:")
            .or_else(|| description.strip_prefix("service="))?;
        rest.split_whitespace().next().map(str::to_string)
    };
    from_payload
        .filter(|s| !s.trim().is_empty())
        .or_else(from_description)
}

/// Translates one delivery.
pub fn translate(
    config: &GithubConfig,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Outcome, FieldError> {
    translate_payload(config, headers, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Github))
}

fn translate_payload(
    config: &GithubConfig,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Outcome, FieldError> {
    let event = headers
        .get("x-github-event")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| field_error("X-GitHub-Event", "missing: the header names the event"))?;
    if !body.is_object() {
        return Err(field_error("body", "expected a JSON object"));
    }
    match event {
        "ping" => Ok(Outcome::Pong(json!({
            "pong": true,
            "zen": optional_text(body, "zen"),
            "hook_id": body.get("hook_id"),
        }))),
        "deployment_status" => deployment_status(config, body),
        "deployment" => Ok(Outcome::Ignored(
            "deployment: counted when its deployment_status arrives".to_string(),
        )),
        "workflow_run" => workflow(config, body, false),
        "workflow_job" => workflow(config, body, true),
        "push" => push(config, body),
        "pull_request" => pull_request(config, body),
        other => Ok(Outcome::Ignored(format!("event `{other}`"))),
    }
}

fn deployment_status(config: &GithubConfig, body: &Value) -> Result<Outcome, FieldError> {
    let state = text(body, "deployment_status.state")?;
    let failed = match state {
        "success" => false,
        "failure" | "error" => true,
        other => {
            return Ok(Outcome::Ignored(format!("deployment_status `{other}`")));
        }
    };
    let (full, name) = repository(body)?;
    let deployment = body
        .get("deployment")
        .filter(|d| d.is_object())
        .ok_or_else(|| field_error("deployment", "missing"))?;
    let sha = text(body, "deployment.sha")?;
    let environment = optional_text(body, "deployment_status.environment")
        .map_or_else(|| text(body, "deployment.environment"), Ok)?;
    let at = time(body, "deployment_status.created_at")?;
    let service = deployment_service(deployment)
        .unwrap_or_else(|| mapped_service(&config.services, &full, &name));
    let id = format!(
        "github:{full}:deployment_status:{}",
        id_text(body, "deployment_status.id")?
    );
    let artifact = commit_id(&full, sha);
    let mut event = emit::deployment(
        &id,
        &source(&full),
        &at,
        &service,
        environment,
        Some(&artifact),
        failed,
    );
    let marked = match deployment.get("payload") {
        Some(Value::Object(p)) => p.get("rework") == Some(&Value::Bool(true)),
        Some(Value::String(p)) => serde_json::from_str::<Value>(p)
            .is_ok_and(|v| v.get("rework") == Some(&Value::Bool(true))),
        _ => false,
    };
    if marked || super::rework_ref(&config.rework_refs, optional_text(body, "deployment.ref")) {
        super::mark_rework(&mut event);
    }
    Ok(Outcome::Events(vec![event]))
}

fn workflow(config: &GithubConfig, body: &Value, job: bool) -> Result<Outcome, FieldError> {
    let what = if job { "workflow_job" } else { "workflow_run" };
    let action = text(body, "action")?;
    if action != "completed" {
        return Ok(Outcome::Ignored(format!("{what} `{action}`")));
    }
    // A run's name may be empty (a run of `repository_dispatch`): the
    // workflow's own name then says which it is.
    let (workflow_name, job_name) = if job {
        (
            optional_text(body, "workflow_job.workflow_name"),
            Some(text(body, "workflow_job.name")?),
        )
    } else {
        (
            optional_text(body, "workflow_run.name")
                .or_else(|| optional_text(body, "workflow.name")),
            None,
        )
    };
    let Some(workflow_name) = workflow_name else {
        return Ok(Outcome::Ignored(format!("{what} of an unnamed workflow")));
    };
    let Some(listed) = config
        .deploy_workflows
        .iter()
        .find(|w| w.workflow == workflow_name && w.job.as_deref() == job_name)
    else {
        return Ok(Outcome::Ignored(format!(
            "{what} of `{workflow_name}`: not a deploy workflow"
        )));
    };
    let conclusion = text(body, &format!("{what}.conclusion"))?;
    let failed = match conclusion {
        "success" => false,
        "failure" | "timed_out" => true,
        // cancelled, skipped, neutral, action_required, stale: nothing deployed.
        other => return Ok(Outcome::Ignored(format!("{what} concluded `{other}`"))),
    };
    let (full, name) = repository(body)?;
    let sha = text(body, &format!("{what}.head_sha"))?;
    let at = if job {
        time(body, "workflow_job.completed_at")?
    } else {
        time(body, "workflow_run.updated_at")?
    };
    let run = id_text(body, &format!("{what}.id"))?;
    let attempt = id_text(body, &format!("{what}.run_attempt")).unwrap_or_else(|_| "1".into());
    let service = listed
        .service
        .clone()
        .unwrap_or_else(|| mapped_service(&config.services, &full, &name));
    let id = format!("github:{full}:{what}:{run}:{attempt}");
    let mut event = emit::deployment(
        &id,
        &source(&full),
        &at,
        &service,
        &listed.environment,
        Some(&commit_id(&full, sha)),
        failed,
    );
    if super::rework_ref(
        &config.rework_refs,
        optional_text(body, &format!("{what}.head_branch")),
    ) {
        super::mark_rework(&mut event);
    }
    Ok(Outcome::Events(vec![event]))
}

fn push(config: &GithubConfig, body: &Value) -> Result<Outcome, FieldError> {
    let reference = text(body, "ref")?;
    let after = text(body, "after")?;
    if !reference.starts_with("refs/heads/") {
        return Ok(Outcome::Ignored(format!("push of `{reference}`")));
    }
    if after == NO_COMMIT || body.get("deleted") == Some(&Value::Bool(true)) {
        return Ok(Outcome::Ignored(format!("push deleting `{reference}`")));
    }
    let (full, name) = repository(body)?;
    let before = optional_text(body, "before").filter(|b| *b != NO_COMMIT);
    let changes = super::pushed_commits(body, |sha| commit_id(&full, sha))?;
    // The push's own time: when GitHub received it, else its newest commit.
    let at = match body.pointer("/repository/pushed_at") {
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        _ => None,
    };
    let at = match at {
        Some(at) => at,
        None => match optional_text(body, "head_commit.timestamp") {
            Some(_) => time(body, "head_commit.timestamp")?,
            None => super::latest(changes.iter().map(|(_, t)| t))
                .ok_or_else(|| field_error("repository.pushed_at", "missing"))?,
        },
    };
    let service = mapped_service(&config.services, &full, &name);
    let revision = commit_id(&full, after);
    let parent = before.map(|b| commit_id(&full, b));
    let id = format!(
        "github:{full}:push:{reference}:{}",
        after.to_ascii_lowercase()
    );
    Ok(Outcome::Events(vec![emit::revision(
        &id,
        &source(&full),
        &at,
        &service,
        &full,
        &revision,
        parent.as_deref(),
        &changes,
    )]))
}

fn pull_request(config: &GithubConfig, body: &Value) -> Result<Outcome, FieldError> {
    let action = text(body, "action")?;
    let merged = body.pointer("/pull_request/merged") == Some(&Value::Bool(true));
    if action != "closed" || !merged {
        return Ok(Outcome::Ignored(format!(
            "pull_request `{action}`{}",
            if action == "closed" { " unmerged" } else { "" }
        )));
    }
    let (full, name) = repository(body)?;
    let merge_commit = text(body, "pull_request.merge_commit_sha")?;
    let number = id_text(body, "pull_request.id")?;
    let service = mapped_service(&config.services, &full, &name);
    let id = format!("github:{full}:pull_request:{number}:merged");
    let mut events = Vec::with_capacity(2);
    if super::labelled(body, "pull_request.labels", "name", &config.rework_labels) {
        events.push(emit::change_rework(
            &format!("github:{full}:pull_request:{number}:rework"),
            &source(&full),
            &time(body, "pull_request.created_at")?,
            &service,
            &full,
            &commit_id(&full, merge_commit),
        ));
    }
    if config.pull_request_time == PullRequestTime::FirstCommit {
        let head = text(body, "pull_request.head.sha")?;
        let commits = body
            .pointer("/pull_request/commits")
            .and_then(Value::as_u64)
            .filter(|&n| n > 0)
            .ok_or_else(|| field_error("pull_request.commits", "missing or not a count"))?;
        events.push(emit::change_from_commits(
            &id,
            &source(&full),
            &time(body, "pull_request.merged_at")?,
            &service,
            &full,
            &commit_id(&full, merge_commit),
            &commit_id(&full, head),
            commits,
        ));
        return Ok(Outcome::Events(events));
    }
    let opened = time(body, "pull_request.created_at")?;
    events.push(emit::change_created(
        &id,
        &source(&full),
        &opened,
        &service,
        &full,
        &commit_id(&full, merge_commit),
    ));
    // When it merged: splits its lead time into before and after the merge.
    if optional_text(body, "pull_request.merged_at").is_some() {
        events.push(emit::change_merged(
            &format!("github:{full}:pull_request:{number}:merged_at"),
            &source(&full),
            &time(body, "pull_request.merged_at")?,
            &service,
            &full,
            &commit_id(&full, merge_commit),
        ));
    }
    Ok(Outcome::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{DeliveryKind, DeploymentOutcome, LinkedChange};

    fn config() -> GithubConfig {
        GithubConfig {
            secret: Secret::from("s3cret"),
            previous_secret: None,
            services: BTreeMap::new(),
            deploy_workflows: vec![DeployWorkflow {
                workflow: "Deploy".into(),
                job: None,
                environment: "production".into(),
                service: None,
            }],
            pull_request_time: PullRequestTime::Opened,
            rework_refs: vec!["hotfix/*".into()],
            rework_labels: vec!["hotfix".into()],
        }
    }

    fn headers(event: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-github-event", event.parse().unwrap());
        headers
    }

    fn decoded(outcome: Outcome) -> Vec<crate::model::delivery::DeliveryEvent> {
        match outcome {
            Outcome::Events(values) => crate::cdevents::decode_values(&values).unwrap(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn repo() -> Value {
        json!({ "full_name": "Acme/Shop", "name": "Shop" })
    }

    #[test]
    fn a_successful_deployment_status_is_a_deployment_of_its_sha() {
        let body = json!({
            "action": "created",
            "deployment_status": { "id": 7, "state": "success", "environment": "production",
                                   "created_at": "2024-05-01T12:00:00Z" },
            "deployment": { "sha": "ABC123", "environment": "production", "payload": {} },
            "repository": repo(),
        });
        let events = decoded(translate(&config(), &headers("deployment_status"), &body).unwrap());
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].id, "github:acme/shop:deployment_status:7");
        assert_eq!(events[0].time, 1_714_564_800_000_000_000);
        let DeliveryKind::Deployment(d) = &events[0].kind else {
            panic!("{:?}", events[0].kind)
        };
        assert_eq!(d.service, "shop");
        assert_eq!(d.environment, "production");
        assert_eq!(d.artifact.as_deref(), Some("pkg:github/acme/shop@abc123"));
        assert_eq!(d.outcome, DeploymentOutcome::Success);
    }

    #[test]
    fn a_failed_status_fails_and_the_payload_names_the_service() {
        let body = json!({
            "deployment_status": { "id": 8, "state": "error", "created_at": "2024-05-01T12:00:00Z" },
            "deployment": { "sha": "abc", "environment": "prod", "payload": "{\"service\": \"cart\"}" },
            "repository": repo(),
        });
        let events = decoded(translate(&config(), &headers("deployment_status"), &body).unwrap());
        let DeliveryKind::Deployment(d) = &events[0].kind else {
            panic!()
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str(), d.outcome),
            ("cart", "prod", DeploymentOutcome::Failure)
        );
    }

    #[test]
    fn a_hotfix_labelled_pull_request_marks_its_merge_commit() {
        let body = json!({
            "action": "closed",
            "pull_request": { "id": 43, "merged": true, "merge_commit_sha": "m2",
                              "created_at": "2024-04-30T08:00:00Z",
                              "labels": [{ "name": "bug" }, { "name": "HotFix" }] },
            "repository": repo(),
        });
        let events = decoded(translate(&config(), &headers("pull_request"), &body).unwrap());
        assert_eq!(events.len(), 2);
        assert_eq!(
            events[0].kind,
            DeliveryKind::ChangeRework {
                change: "pkg:github/acme/shop@m2".into()
            }
        );
        assert!(matches!(events[1].kind, DeliveryKind::Change { .. }));
    }

    #[test]
    fn hotfix_refs_and_marked_payloads_are_rework() {
        let status = |reference: &str, payload: Value| {
            json!({
                "deployment_status": { "id": 9, "state": "success", "created_at": "2024-05-01T12:00:00Z" },
                "deployment": { "sha": "abc", "ref": reference, "environment": "production", "payload": payload },
                "repository": repo(),
            })
        };
        let rework = |body: Value| {
            let events =
                decoded(translate(&config(), &headers("deployment_status"), &body).unwrap());
            let DeliveryKind::Deployment(d) = &events[0].kind else {
                panic!()
            };
            d.rework
        };
        assert!(rework(status("hotfix/login", json!({}))));
        assert!(rework(status("main", json!({ "rework": true }))));
        assert!(!rework(status("main", json!({}))));
    }

    #[test]
    fn a_pending_status_is_ignored_and_a_missing_sha_is_named() {
        let pending = json!({ "deployment_status": { "state": "in_progress" } });
        assert_eq!(
            translate(&config(), &headers("deployment_status"), &pending).unwrap(),
            Outcome::Ignored("deployment_status `in_progress`".into())
        );
        let no_sha = json!({
            "deployment_status": { "id": 1, "state": "success", "created_at": "2024-05-01T12:00:00Z" },
            "deployment": { "environment": "production" },
            "repository": repo(),
        });
        let e = translate(&config(), &headers("deployment_status"), &no_sha).unwrap_err();
        assert_eq!(e.to_string(), "deployment.sha: missing");
    }

    #[test]
    fn a_push_is_a_revision_with_its_commits_and_parent() {
        let body = json!({
            "ref": "refs/heads/main", "before": "b0", "after": "c2",
            "commits": [
                { "id": "c1", "timestamp": "2024-05-01T10:00:00+02:00" },
                { "id": "c2", "timestamp": "2024-05-01T09:00:00Z" },
            ],
            "repository": { "full_name": "acme/shop", "name": "shop", "pushed_at": 1_714_560_000 },
        });
        let events = decoded(translate(&config(), &headers("push"), &body).unwrap());
        assert_eq!(events[0].id, "github:acme/shop:push:refs/heads/main:c2");
        assert_eq!(events[0].time, 1_714_560_000_000_000_000);
        assert_eq!(
            events[0].kind,
            DeliveryKind::Revision {
                revision: "pkg:github/acme/shop@c2".into(),
                parent: Some("pkg:github/acme/shop@b0".into()),
                changes: vec![
                    LinkedChange {
                        id: "pkg:github/acme/shop@c1".into(),
                        time: Some(1_714_550_400_000_000_000),
                    },
                    LinkedChange {
                        id: "pkg:github/acme/shop@c2".into(),
                        time: Some(1_714_554_000_000_000_000),
                    },
                ],
            }
        );
    }

    #[test]
    fn tag_pushes_and_branch_deletions_are_ignored() {
        let tag = json!({ "ref": "refs/tags/v1", "after": "c2" });
        assert!(matches!(
            translate(&config(), &headers("push"), &tag).unwrap(),
            Outcome::Ignored(_)
        ));
        let deleted = json!({ "ref": "refs/heads/x", "after": NO_COMMIT, "deleted": true });
        assert!(matches!(
            translate(&config(), &headers("push"), &deleted).unwrap(),
            Outcome::Ignored(_)
        ));
    }

    #[test]
    fn a_merged_pull_request_dates_its_merge_commit_from_the_opening() {
        let body = json!({
            "action": "closed",
            "pull_request": { "id": 42, "merged": true, "merge_commit_sha": "m1",
                              "created_at": "2024-04-30T08:00:00Z" },
            "repository": repo(),
        });
        let events = decoded(translate(&config(), &headers("pull_request"), &body).unwrap());
        assert_eq!(events[0].time, 1_714_464_000_000_000_000);
        assert_eq!(
            events[0].kind,
            DeliveryKind::Change {
                change: "pkg:github/acme/shop@m1".into(),
                stage: crate::model::delivery::ChangeStage::Created,
            }
        );
        let unmerged = json!({ "action": "closed", "pull_request": { "merged": false } });
        assert!(matches!(
            translate(&config(), &headers("pull_request"), &unmerged).unwrap(),
            Outcome::Ignored(_)
        ));
    }

    #[test]
    fn with_first_commit_a_merged_pull_request_names_its_head_and_commits() {
        let mut config = config();
        config.pull_request_time = PullRequestTime::FirstCommit;
        let body = json!({
            "action": "closed",
            "pull_request": { "id": 42, "merged": true, "merge_commit_sha": "m1", "commits": 3,
                              "created_at": "2024-04-30T08:00:00Z",
                              "merged_at": "2024-05-01T08:00:00Z", "head": { "sha": "H9" } },
            "repository": repo(),
        });
        let events = decoded(translate(&config, &headers("pull_request"), &body).unwrap());
        assert_eq!(events[0].time, 1_714_550_400_000_000_000);
        assert_eq!(
            events[0].kind,
            DeliveryKind::ChangeFromCommits {
                change: "pkg:github/acme/shop@m1".into(),
                head: "pkg:github/acme/shop@h9".into(),
                commits: 3,
            }
        );
    }

    #[test]
    fn deploy_workflow_runs_deploy_and_others_are_ignored() {
        let run = |name: &str, conclusion: &str| {
            json!({
                "action": "completed",
                "workflow_run": { "id": 5, "run_attempt": 2, "name": name, "conclusion": conclusion,
                                  "head_sha": "d1", "updated_at": "2024-05-01T12:00:00Z" },
                "repository": repo(),
            })
        };
        let events = decoded(
            translate(
                &config(),
                &headers("workflow_run"),
                &run("Deploy", "failure"),
            )
            .unwrap(),
        );
        assert_eq!(events[0].id, "github:acme/shop:workflow_run:5:2");
        let DeliveryKind::Deployment(d) = &events[0].kind else {
            panic!()
        };
        assert_eq!(d.outcome, DeploymentOutcome::Failure);
        assert!(matches!(
            translate(&config(), &headers("workflow_run"), &run("CI", "success")).unwrap(),
            Outcome::Ignored(_)
        ));
        assert!(matches!(
            translate(
                &config(),
                &headers("workflow_run"),
                &run("Deploy", "cancelled")
            )
            .unwrap(),
            Outcome::Ignored(_)
        ));
    }

    #[test]
    fn signatures_right_wrong_missing_and_rotated() {
        use hmac::{KeyInit, Mac};
        let sign = |secret: &str, body: &[u8]| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
            mac.update(body);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256={hex}")
        };
        let body = br#"{"zen":"Keep it logically awesome."}"#;
        let with = |signature: &str| {
            let mut headers = headers("ping");
            headers.insert("x-hub-signature-256", signature.parse().unwrap());
            headers
        };
        let mut config = config();
        assert_eq!(verify(&config, &with(&sign("s3cret", body)), body), Ok(()));
        assert_eq!(
            verify(&config, &with(&sign("other", body)), body),
            Err("the signature does not match")
        );
        assert!(verify(&config, &headers("ping"), body).is_err());
        assert!(verify(&config, &with("sha1=abc"), body).is_err());
        config.previous_secret = Some(Secret::from("old"));
        assert_eq!(verify(&config, &with(&sign("old", body)), body), Ok(()));
    }
}
