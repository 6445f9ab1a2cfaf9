//! GitLab's webhooks: `POST /gitlab`.
//!
//! The event is named in `X-Gitlab-Event`; `X-Gitlab-Token` must be the
//! webhook's secret token (compared in constant time).
//!
//! | `X-Gitlab-Event` | becomes |
//! |---|---|
//! | `Deployment Hook` `success` | a deployment of its commit, at `status_changed_at` |
//! | `Deployment Hook` `failed` | a failed deployment (`canceled`, `running`: nothing) |
//! | `Pipeline Hook` of a listed deploy pipeline | a deployment (`success`) or a failed one (`failed`), at `finished_at` |
//! | `Push Hook` to a branch | a revision: its commits (id, timestamp) and the revision before it |
//! | `Merge Request Hook` `merge` | the merged commit's change time: the merge request's opening |
//! | anything else | accepted, counted, ignored |
//!
//! An environment named `<tier>/<service>` (a GitLab environment folder,
//! e.g. `production/checkout`) names the service and its environment is
//! the tier.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::{
    FieldError, Outcome, emit, field_error, id_text, mapped_service, optional_text, text, time,
};
use crate::settings::Secret;

/// `receivers.webhook.gitlab`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitlabConfig {
    /// The webhook's secret token, from `${env:NAME}` or `${file:PATH}`.
    pub token: Secret,
    /// The token before the current one, accepted too while a rotation is
    /// under way. Default: none.
    #[serde(default)]
    pub previous_token: Option<Secret>,
    /// Project (`group/name`, or `name`) → service. Default: a project is
    /// the service of its path's last segment.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Pipelines whose finished runs are deployments. Default: none
    /// (deployments come from `Deployment Hook`).
    #[serde(default)]
    pub deploy_pipelines: Vec<DeployPipeline>,
    /// Refs whose deployments are rework (hotfixes), as `*` globs on the
    /// deployment's or pipeline's `ref`, e.g. `[hotfix/*]`. Default none.
    #[serde(default)]
    pub rework_refs: Vec<String>,
    /// Merge request labels that make it rework (a hotfix): the deployment
    /// that first carries its merged commit is rework. Default none.
    #[serde(default)]
    pub rework_labels: Vec<String>,
}

/// A GitLab pipeline that deploys: matched on its name and/or its ref.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeployPipeline {
    /// The pipeline's name (`workflow:name`). Default: any.
    #[serde(default)]
    pub name: Option<String>,
    /// The branch it runs on, e.g. `main`. Default: any.
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    /// The environment it deploys to. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// The service it deploys. Default: the project's.
    #[serde(default)]
    pub service: Option<String>,
}

fn default_environment() -> String {
    "production".to_string()
}

impl GitlabConfig {
    /// What is wrong with the settings, each prefixed with `path`.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        for (i, p) in self.deploy_pipelines.iter().enumerate() {
            if p.name.is_none() && p.reference.is_none() {
                errors.push(format!(
                    "{path}.deploy_pipelines[{i}]: give a `name` or a `ref` (or both), or every pipeline would be a deployment"
                ));
            }
        }
    }
}

const NO_COMMIT: &str = "0000000000000000000000000000000000000000";

/// Checks `X-Gitlab-Token` against the token (or the previous one).
pub fn verify(
    config: &GitlabConfig,
    headers: &HeaderMap,
    _body: &[u8],
) -> Result<(), &'static str> {
    let given = headers
        .get("x-gitlab-token")
        .ok_or("the X-Gitlab-Token header is missing")?
        .as_bytes();
    // Both are compared, so the time does not say which one matched.
    let matched = config.token.matches(given)
        | config
            .previous_token
            .as_ref()
            .is_some_and(|t| t.matches(given));
    if matched {
        Ok(())
    } else {
        Err("the token does not match")
    }
}

/// The project's `group/name` (lowercased) and its last segment.
fn project(body: &Value) -> Result<(String, String), FieldError> {
    let full = text(body, "project.path_with_namespace")?.to_ascii_lowercase();
    let name = full.rsplit('/').next().unwrap_or(&full).to_string();
    Ok((full, name))
}

fn commit_id(full: &str, sha: &str) -> String {
    format!("pkg:gitlab/{full}@{}", sha.to_ascii_lowercase())
}

fn source(body: &Value, full: &str) -> String {
    optional_text(body, "project.web_url")
        .map(str::to_string)
        .unwrap_or_else(|| format!("gitlab:{full}"))
}

/// `<tier>/<service>` → (tier, Some(service)); anything else as it is.
fn split_environment(environment: &str) -> (&str, Option<&str>) {
    match environment.split_once('/') {
        Some((tier, service)) if !tier.is_empty() && !service.is_empty() => (tier, Some(service)),
        _ => (environment, None),
    }
}

/// Translates one delivery.
pub fn translate(
    config: &GitlabConfig,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Outcome, FieldError> {
    translate_payload(config, headers, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Gitlab))
}

fn translate_payload(
    config: &GitlabConfig,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Outcome, FieldError> {
    let event = headers
        .get("x-gitlab-event")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| field_error("X-Gitlab-Event", "missing: the header names the event"))?;
    if !body.is_object() {
        return Err(field_error("body", "expected a JSON object"));
    }
    match event {
        "Deployment Hook" => deployment(config, body),
        "Pipeline Hook" => pipeline(config, body),
        "Push Hook" => push(config, body),
        "Merge Request Hook" => merge_request(config, body),
        other => Ok(Outcome::Ignored(format!("event `{other}`"))),
    }
}

fn deployment(config: &GitlabConfig, body: &Value) -> Result<Outcome, FieldError> {
    let status = text(body, "status")?;
    let failed = match status {
        "success" => false,
        "failed" => true,
        other => return Ok(Outcome::Ignored(format!("deployment `{other}`"))),
    };
    let (full, name) = project(body)?;
    // Older payloads name the commit only in `commit_url` (…/-/commit/<sha>).
    let sha = match optional_text(body, "sha") {
        Some(sha) => sha.to_string(),
        None => text(body, "commit_url")?
            .rsplit('/')
            .next()
            .filter(|s| s.len() >= 7 && s.chars().all(|c| c.is_ascii_hexdigit()))
            .ok_or_else(|| field_error("commit_url", "does not end in a commit sha"))?
            .to_string(),
    };
    let (environment, named) = split_environment(text(body, "environment")?);
    let service = named
        .map(str::to_string)
        .unwrap_or_else(|| mapped_service(&config.services, &full, &name));
    let at = time(body, "status_changed_at")?;
    let id = format!(
        "gitlab:{full}:deployment:{}:{status}",
        id_text(body, "deployment_id")?
    );
    let mut event = emit::deployment(
        &id,
        &source(body, &full),
        &at,
        &service,
        environment,
        Some(&commit_id(&full, &sha)),
        failed,
    );
    if super::rework_ref(&config.rework_refs, optional_text(body, "ref")) {
        super::mark_rework(&mut event);
    }
    Ok(Outcome::Events(vec![event]))
}

fn pipeline(config: &GitlabConfig, body: &Value) -> Result<Outcome, FieldError> {
    let name = optional_text(body, "object_attributes.name");
    let reference = optional_text(body, "object_attributes.ref");
    let Some(listed) = config.deploy_pipelines.iter().find(|p| {
        p.name.as_deref().is_none_or(|n| Some(n) == name)
            && p.reference.as_deref().is_none_or(|r| Some(r) == reference)
    }) else {
        return Ok(Outcome::Ignored("pipeline: not a deploy pipeline".into()));
    };
    let status = text(body, "object_attributes.status")?;
    let failed = match status {
        "success" => false,
        "failed" => true,
        other => return Ok(Outcome::Ignored(format!("pipeline `{other}`"))),
    };
    let (full, project_name) = project(body)?;
    let sha = text(body, "object_attributes.sha")?;
    let at = time(body, "object_attributes.finished_at")?;
    let service = listed
        .service
        .clone()
        .unwrap_or_else(|| mapped_service(&config.services, &full, &project_name));
    let id = format!(
        "gitlab:{full}:pipeline:{}",
        id_text(body, "object_attributes.id")?
    );
    let mut event = emit::deployment(
        &id,
        &source(body, &full),
        &at,
        &service,
        &listed.environment,
        Some(&commit_id(&full, sha)),
        failed,
    );
    if super::rework_ref(&config.rework_refs, reference) {
        super::mark_rework(&mut event);
    }
    Ok(Outcome::Events(vec![event]))
}

fn push(config: &GitlabConfig, body: &Value) -> Result<Outcome, FieldError> {
    let reference = text(body, "ref")?;
    let after = text(body, "after")?;
    if !reference.starts_with("refs/heads/") {
        return Ok(Outcome::Ignored(format!("push of `{reference}`")));
    }
    if after == NO_COMMIT {
        return Ok(Outcome::Ignored(format!("push deleting `{reference}`")));
    }
    let (full, name) = project(body)?;
    let before = optional_text(body, "before").filter(|b| *b != NO_COMMIT);
    let changes = super::pushed_commits(body, |sha| commit_id(&full, sha))?;
    // A push has no time of its own in GitLab's payload: its newest
    // commit's, or (none pushed) the time it came.
    let at = super::latest(changes.iter().map(|(_, t)| t)).unwrap_or_else(|| {
        chrono::DateTime::from_timestamp(super::super::request::unix_now(), 0)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    });
    let service = mapped_service(&config.services, &full, &name);
    let id = format!(
        "gitlab:{full}:push:{reference}:{}",
        after.to_ascii_lowercase()
    );
    Ok(Outcome::Events(vec![emit::revision(
        &id,
        &source(body, &full),
        &at,
        &service,
        &full,
        &commit_id(&full, after),
        before.map(|b| commit_id(&full, b)).as_deref(),
        &changes,
    )]))
}

fn merge_request(config: &GitlabConfig, body: &Value) -> Result<Outcome, FieldError> {
    let action = optional_text(body, "object_attributes.action").unwrap_or("");
    if action != "merge" {
        return Ok(Outcome::Ignored(format!("merge request `{action}`")));
    }
    let (full, name) = project(body)?;
    // A merge commit, a squash commit, or (fast-forward) the last commit.
    let merged = optional_text(body, "object_attributes.merge_commit_sha")
        .or_else(|| optional_text(body, "object_attributes.squash_commit_sha"))
        .map_or_else(|| text(body, "object_attributes.last_commit.id"), Ok)?;
    let opened = time(body, "object_attributes.created_at")?;
    let service = mapped_service(&config.services, &full, &name);
    let number = id_text(body, "object_attributes.id")?;
    let id = format!("gitlab:{full}:merge_request:{number}:merged");
    let mut events = Vec::with_capacity(2);
    if super::labelled(body, "labels", "title", &config.rework_labels) {
        events.push(emit::change_rework(
            &format!("gitlab:{full}:merge_request:{number}:rework"),
            &source(body, &full),
            &opened,
            &service,
            &full,
            &commit_id(&full, merged),
        ));
    }
    events.push(emit::change_created(
        &id,
        &source(body, &full),
        &opened,
        &service,
        &full,
        &commit_id(&full, merged),
    ));
    Ok(Outcome::Events(events))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{DeliveryKind, DeploymentOutcome};
    use serde_json::json;

    fn config() -> GitlabConfig {
        GitlabConfig {
            token: Secret::from("gl-token"),
            previous_token: None,
            services: BTreeMap::new(),
            deploy_pipelines: vec![DeployPipeline {
                name: None,
                reference: Some("main".into()),
                environment: "production".into(),
                service: None,
            }],
            rework_refs: vec!["hotfix/*".into()],
            rework_labels: vec!["hotfix".into()],
        }
    }

    fn headers(event: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-gitlab-event", event.parse().unwrap());
        headers
    }

    fn decoded(outcome: Outcome) -> Vec<crate::model::delivery::DeliveryEvent> {
        match outcome {
            Outcome::Events(values) => crate::cdevents::decode_values(&values).unwrap(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    #[test]
    fn an_environment_folder_names_the_service_and_the_tier() {
        let body = json!({
            "object_kind": "deployment", "status": "failed", "deployment_id": 15,
            "status_changed_at": "2021-04-28 21:50:00 +0200",
            "environment": "production/checkout",
            "commit_url": "http://gitlab/acme/shop/-/commit/279484c09fbe69ededfced8c1bb6e6d24616b468",
            "project": { "path_with_namespace": "Acme/Shop" },
        });
        let events = decoded(translate(&config(), &headers("Deployment Hook"), &body).unwrap());
        assert_eq!(events[0].id, "gitlab:acme/shop:deployment:15:failed");
        assert_eq!(events[0].time, 1_619_639_400_000_000_000);
        let DeliveryKind::Deployment(d) = &events[0].kind else {
            panic!()
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str(), d.outcome),
            ("checkout", "production", DeploymentOutcome::Failure)
        );
        assert_eq!(
            d.artifact.as_deref(),
            Some("pkg:gitlab/acme/shop@279484c09fbe69ededfced8c1bb6e6d24616b468")
        );
    }

    #[test]
    fn deployments_of_hotfix_refs_are_rework() {
        let body = |reference: &str| {
            json!({
                "object_kind": "deployment", "status": "success", "deployment_id": 16,
                "status_changed_at": "2021-04-28 21:50:00 +0200", "environment": "production",
                "ref": reference,
                "commit_url": "http://gitlab/acme/shop/-/commit/279484c09fbe69ededfced8c1bb6e6d24616b468",
                "project": { "path_with_namespace": "acme/shop" },
            })
        };
        let rework = |reference: &str| {
            let events = decoded(
                translate(&config(), &headers("Deployment Hook"), &body(reference)).unwrap(),
            );
            let DeliveryKind::Deployment(d) = &events[0].kind else {
                panic!()
            };
            d.rework
        };
        assert!(rework("hotfix/checkout-500s"));
        assert!(!rework("main"));
    }

    #[test]
    fn deploy_pipelines_by_ref_and_others_ignored() {
        let pipeline = |reference: &str, status: &str| {
            json!({
                "object_kind": "pipeline",
                "object_attributes": { "id": 31, "ref": reference, "status": status, "sha": "bcbb5ec3",
                                       "finished_at": "2016-08-12 15:26:29 UTC" },
                "project": { "path_with_namespace": "acme/shop" },
            })
        };
        let events = decoded(
            translate(
                &config(),
                &headers("Pipeline Hook"),
                &pipeline("main", "success"),
            )
            .unwrap(),
        );
        assert_eq!(events[0].id, "gitlab:acme/shop:pipeline:31");
        assert_eq!(events[0].time, 1_471_015_589_000_000_000);
        assert!(matches!(
            translate(
                &config(),
                &headers("Pipeline Hook"),
                &pipeline("feature", "success")
            ),
            Ok(Outcome::Ignored(_))
        ));
        assert!(matches!(
            translate(
                &config(),
                &headers("Pipeline Hook"),
                &pipeline("main", "canceled")
            ),
            Ok(Outcome::Ignored(_))
        ));
    }

    #[test]
    fn tokens_right_wrong_missing_and_rotated() {
        let with = |token: &str| {
            let mut headers = headers("Push Hook");
            headers.insert("x-gitlab-token", token.parse().unwrap());
            headers
        };
        let mut config = config();
        assert_eq!(verify(&config, &with("gl-token"), b""), Ok(()));
        assert!(verify(&config, &with("gl-tokem"), b"").is_err());
        assert!(verify(&config, &headers("Push Hook"), b"").is_err());
        config.previous_token = Some(Secret::from("old-token"));
        assert_eq!(verify(&config, &with("old-token"), b""), Ok(()));
    }

    #[test]
    fn a_pipeline_entry_needs_a_name_or_a_ref() {
        let mut config = config();
        config.deploy_pipelines[0].reference = None;
        let mut errors = Vec::new();
        config.validate("receivers.webhook.gitlab", &mut errors);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("receivers.webhook.gitlab.deploy_pipelines[0]"));
    }
}
