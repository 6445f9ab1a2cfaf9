//! Argo CD notifications: `POST /argocd`.
//!
//! Argo CD's notification controller posts what its templates say; the
//! templates doraflow reads are shipped in `deploy/argocd/notifications.yaml`
//! (a webhook service `doraflow`, three templates and triggers). Each body
//! names the event and the Application's state:
//!
//! | `event` (trigger) | becomes |
//! |---|---|
//! | `deployed` (`on-deployed`: synced and healthy, once per commit) | a deployment of the commit `revision`, at the sync's `finishedAt` |
//! | `sync-failed` (`on-sync-failed`) | a failed deployment of it |
//! | `health-degraded` (`on-health-degraded`) | the deployment of the last sync failed: one report of it with `deployed` (same tool, commit and time) |
//! | anything else | accepted, counted, ignored |
//!
//! The service is the Application's label `doraflow.io/service`, else its
//! entry in `services`, else its name; the environment its label
//! `doraflow.io/environment`, else `environments`, else `environment`. A
//! repository on github.com or gitlab.com gives the artifact the GitHub and
//! GitLab sources give (`pkg:github/<owner>/<repo>@<sha>`), so pushes link
//! their commits to it and the reports of one deployment are one. Argo CD
//! authenticates with the bearer token its webhook service sends
//! (`headers: [{name: Authorization, value: Bearer $doraflow-token}]`).

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FieldError, Outcome, emit, field_error, parse_time};
use crate::settings::Secret;

/// `receivers.webhook.argocd`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgocdConfig {
    /// The bearer token Argo CD's webhook service sends, from
    /// `${env:NAME}` or `${file:PATH}`.
    pub bearer_token: Secret,
    /// Application → service. Default: the Application's label
    /// `doraflow.io/service`, else its name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Application → environment. Default: its label
    /// `doraflow.io/environment`, else `environment`.
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    /// The environment of an Application named nowhere. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_environment() -> String {
    "production".to_string()
}

/// Checks the bearer token, in constant time.
pub fn verify(
    config: &ArgocdConfig,
    headers: &HeaderMap,
    _body: &[u8],
) -> Result<(), &'static str> {
    super::bearer(&config.bearer_token, headers)
}

/// What Argo CD's templates fill in for a field they have no value for.
const NO_VALUE: &str = "<no value>";

/// The string at `field`, unless empty or Argo CD's `<no value>`.
fn filled<'a>(body: &'a Value, field: &str) -> Option<&'a str> {
    body.get(field)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != NO_VALUE)
}

fn required<'a>(body: &'a Value, field: &str) -> Result<&'a str, FieldError> {
    filled(body, field).ok_or_else(|| field_error(field, "missing (or `<no value>`)"))
}

/// A label of the Application (`labels` is `toJson .app.metadata.labels`).
fn label<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get("labels")
        .and_then(|l| l.get(name))
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// The artifact id of `revision` in the repository at `url`: the GitHub
/// and GitLab sources' own for github.com and gitlab.com, else
/// `git:<url>@<revision>`.
fn artifact(url: &str, revision: &str) -> String {
    let revision = revision.to_ascii_lowercase();
    let path = url
        .trim()
        .trim_end_matches('/')
        .trim_end_matches(".git")
        .replace("git@github.com:", "https://github.com/")
        .replace("git@gitlab.com:", "https://gitlab.com/");
    for (host, kind) in [("github.com/", "github"), ("gitlab.com/", "gitlab")] {
        if let Some((_, repo)) = path.split_once(host)
            && !repo.is_empty()
        {
            return format!("pkg:{kind}/{repo}@{revision}");
        }
    }
    format!("git:{}@{revision}", url.trim())
}

/// Translates one notification.
pub fn translate(config: &ArgocdConfig, body: &Value) -> Result<Outcome, FieldError> {
    translate_payload(config, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Argocd))
}

fn translate_payload(config: &ArgocdConfig, body: &Value) -> Result<Outcome, FieldError> {
    let event = required(body, "event")?;
    let failed = match event {
        "deployed" => false,
        "sync-failed" | "health-degraded" => true,
        other => return Ok(Outcome::Ignored(format!("Argo CD event `{other}`"))),
    };
    let application = required(body, "application")?;
    let revision = required(body, "revision")?;
    // The sync's end; a failed sync that never ended, its start.
    let (field, raw) = match filled(body, "finishedAt") {
        Some(at) => ("finishedAt", at),
        None => (
            "startedAt",
            required(body, "startedAt").map_err(|_| {
                field_error(
                    "finishedAt",
                    "missing (and no startedAt): when did the sync end?",
                )
            })?,
        ),
    };
    let at = parse_time(raw)
        .ok_or_else(|| field_error(field, format!("`{raw}` is not an RFC 3339 timestamp")))?;
    let service = label(body, "doraflow.io/service")
        .or_else(|| config.services.get(application).map(String::as_str))
        .unwrap_or(application);
    let environment = label(body, "doraflow.io/environment")
        .or_else(|| config.environments.get(application).map(String::as_str))
        .unwrap_or(&config.environment);
    let namespace = filled(body, "namespace").unwrap_or("argocd");
    let artifact = filled(body, "repoURL").map(|url| artifact(url, revision));
    let source = match filled(body, "argocdUrl") {
        Some(url) => format!(
            "{}/applications/{namespace}/{application}",
            url.trim_end_matches('/')
        ),
        None => format!("argocd:{namespace}/{application}"),
    };
    let id = format!("argocd:{namespace}/{application}:{revision}:{raw}:{event}");
    let mut deployment = emit::deployment(
        &id,
        &source,
        &at,
        service,
        environment,
        artifact.as_deref(),
        failed,
    );
    deployment["customData"]["revision"] = json!(revision);
    Ok(Outcome::Events(vec![deployment]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{DeliveryKind, DeploymentOutcome, Source};

    fn config() -> ArgocdConfig {
        ArgocdConfig {
            bearer_token: Secret::from("t0ken"),
            services: BTreeMap::from([("shop-prod".to_string(), "shop".to_string())]),
            environments: BTreeMap::new(),
            environment: "production".into(),
        }
    }

    /// A body as the shipped template renders it.
    fn body(event: &str) -> Value {
        json!({
            "event": event,
            "application": "shop-prod",
            "namespace": "argocd",
            "project": "default",
            "labels": { "team": "payments" },
            "argocdUrl": "https://argocd.example.com",
            "repoURL": "https://github.com/acme/shop.git",
            "revision": "9F8E7D6C5B4A39281706F5E4D3C2B1A098765432",
            "phase": "Succeeded",
            "startedAt": "2024-05-01T11:58:00Z",
            "finishedAt": "2024-05-01T12:00:00Z",
            "health": "Healthy",
            "syncStatus": "Synced",
        })
    }

    fn decoded(outcome: Outcome) -> crate::model::delivery::DeliveryEvent {
        let Outcome::Events(values) = outcome else {
            panic!("{outcome:?}")
        };
        crate::cdevents::decode_values(&values).unwrap().remove(0)
    }

    #[test]
    fn a_deployed_notification_is_a_deployment_of_its_commit() {
        let event = decoded(translate(&config(), &body("deployed")).unwrap());
        assert_eq!(event.time, 1_714_564_800_000_000_000);
        let DeliveryKind::Deployment(d) = event.kind else {
            panic!()
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str()),
            ("shop", "production")
        );
        assert_eq!(d.outcome, DeploymentOutcome::Success);
        assert_eq!(d.source, Source::Argocd);
        assert_eq!(
            d.artifact.as_deref(),
            Some("pkg:github/acme/shop@9f8e7d6c5b4a39281706f5e4d3c2b1a098765432")
        );
        assert_eq!(
            d.revision.as_deref(),
            Some("9F8E7D6C5B4A39281706F5E4D3C2B1A098765432")
        );
    }

    #[test]
    fn failed_syncs_and_degraded_health_are_failed_deployments() {
        for event in ["sync-failed", "health-degraded"] {
            let decoded = decoded(translate(&config(), &body(event)).unwrap());
            assert!(decoded.id.ends_with(event), "{}", decoded.id);
            let DeliveryKind::Deployment(d) = decoded.kind else {
                panic!()
            };
            assert_eq!(d.outcome, DeploymentOutcome::Failure);
        }
    }

    #[test]
    fn labels_name_the_service_and_environment_and_gaps_are_errors() {
        let mut b = body("deployed");
        b["labels"] =
            json!({ "doraflow.io/service": "checkout", "doraflow.io/environment": "staging" });
        let DeliveryKind::Deployment(d) = decoded(translate(&config(), &b).unwrap()).kind else {
            panic!()
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str()),
            ("checkout", "staging")
        );

        let mut b = body("deployed");
        b["revision"] = json!("<no value>");
        let error = translate(&config(), &b).unwrap_err();
        assert_eq!(error.field, "revision");
        let mut b = body("deployed");
        b["finishedAt"] = json!("<no value>");
        b["startedAt"] = json!("<no value>");
        assert_eq!(translate(&config(), &b).unwrap_err().field, "finishedAt");
        let mut b = body("deployed");
        b["finishedAt"] = json!("yesterday");
        assert_eq!(translate(&config(), &b).unwrap_err().field, "finishedAt");
        assert!(matches!(
            translate(&config(), &body("sync-running")).unwrap(),
            Outcome::Ignored(_)
        ));
    }

    #[test]
    fn repositories_give_the_git_hosts_artifact_ids() {
        let sha = "ABC1234";
        assert_eq!(
            artifact("git@github.com:acme/shop.git", sha),
            "pkg:github/acme/shop@abc1234"
        );
        assert_eq!(
            artifact("https://gitlab.com/acme/platform/shop", sha),
            "pkg:gitlab/acme/platform/shop@abc1234"
        );
        assert_eq!(
            artifact("https://git.example.com/shop.git", sha),
            "git:https://git.example.com/shop.git@abc1234"
        );
    }
}
