//! Native sources on the webhook listener: the services' own webhooks,
//! each translated into the CDEvents it means and applied as if those had
//! come to `POST /cdevents`.
//!
//! - [`github`]: `POST /github` (deployments, deploy workflows, pushes,
//!   merged pull requests).
//! - [`gitlab`]: `POST /gitlab` (deployments, deploy pipelines, pushes,
//!   merged merge requests).
//! - [`pagerduty`]: `POST /pagerduty` (incidents, Webhooks v3).
//! - [`alertmanager`]: `POST /alertmanager` (alerts as incidents).
//! - [`argocd`]: `POST /argocd` (Argo CD notifications: syncs as deployments).
//! - [`flux`]: `POST /flux` (Flux's notification-controller, `generic-hmac`).
//!
//! Translating into CDEvents rather than straight into the model is what
//! keeps the tiers one: a sidecar forwards on its Kafka exporter exactly
//! the events it applied, keyed by service, and the cluster tier reads them
//! as any other CDEvents. The event ids are the source's own ids of the
//! fact (a deployment status id, a pushed revision, a pull request), not of
//! the delivery: a redelivery and the same fact sent by a second hook (the
//! repository's and the organisation's) are one event.

pub mod alertmanager;
pub mod argocd;
pub mod flux;
pub mod github;
pub mod gitlab;
pub mod pagerduty;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use metrics::counter;
use serde_json::{Value, json};

use super::Admission;
use super::request::{admit_and_read, answer, refuse_on, submit, unauthorized_on};
use crate::flow::PipelineSink;
use crate::instruments;
use crate::settings::Secret;

/// What a source made of one delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// CDEvents to apply (and forward).
    Events(Vec<Value>),
    /// A well-formed delivery doraflow has no use for: accepted, counted
    /// and otherwise ignored; says what it was.
    Ignored(String),
    /// Answered and nothing applied (GitHub's `ping`).
    Pong(Value),
}

impl Outcome {
    /// The events marked as `source`'s (`customData.source`), so the tool's
    /// name goes with them through the Kafka hop to the report.
    pub fn stamped(mut self, source: crate::model::delivery::Source) -> Outcome {
        if let Outcome::Events(events) = &mut self {
            for event in events {
                if let Some(custom) = event.get_mut("customData").and_then(Value::as_object_mut) {
                    custom.insert("source".to_string(), json!(source.as_str()));
                } else if let Some(map) = event.as_object_mut() {
                    map.insert(
                        "customData".to_string(),
                        json!({ "source": source.as_str() }),
                    );
                }
            }
        }
        self
    }
}

/// A field doraflow needs that a payload lacks or has wrong: a 400 naming it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's path in the payload, e.g. `deployment.sha`.
    pub field: String,
    /// What was wrong with it.
    pub problem: String,
}

fn field_error(field: &str, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.to_string(),
        problem: problem.into(),
    }
}

/// Follows `path` (dot-separated) from `root`.
fn at<'a>(root: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(root, |v, key| v.get(key))
}

/// The string at `path`, required and non-empty.
fn text<'a>(root: &'a Value, path: &str) -> Result<&'a str, FieldError> {
    match at(root, path) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) => Err(field_error(path, "empty")),
        None | Some(Value::Null) => Err(field_error(path, "missing")),
        Some(_) => Err(field_error(path, "expected a string")),
    }
}

/// The string at `path` if there is a non-empty one.
fn optional_text<'a>(root: &'a Value, path: &str) -> Option<&'a str> {
    at(root, path)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

/// An id at `path`: a number or a non-empty string, as text.
fn id_text(root: &Value, path: &str) -> Result<String, FieldError> {
    match at(root, path) {
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => Err(field_error(path, "missing")),
        Some(_) => Err(field_error(path, "expected a number or a string")),
    }
}

/// A timestamp at `path` in any form these services write, as RFC 3339 in
/// UTC: RFC 3339 (`2019-05-15T15:20:55Z`, `...-05:00`), GitLab's
/// `2021-04-28 21:50:00 +0200` and `2016-08-12 15:23:28 UTC`.
fn time(root: &Value, path: &str) -> Result<String, FieldError> {
    let raw = text(root, path)?;
    parse_time(raw).ok_or_else(|| {
        field_error(
            path,
            format!("`{raw}` is not a timestamp (RFC 3339, or `YYYY-MM-DD hh:mm:ss +hhmm|UTC`)"),
        )
    })
}

fn parse_time(raw: &str) -> Option<String> {
    let raw = raw.trim();
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(raw)
        .or_else(|_| DateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S %z"))
        .map(|t| t.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            let local = raw.strip_suffix(" UTC")?;
            NaiveDateTime::parse_from_str(local, "%Y-%m-%d %H:%M:%S")
                .ok()
                .map(|t| t.and_utc())
        })?;
    Some(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// The latest of `times` (RFC 3339, as [`time`] writes them), compared as
/// instants rather than as text.
fn latest<'a>(times: impl Iterator<Item = &'a String>) -> Option<String> {
    times
        .filter_map(|t| DateTime::parse_from_rfc3339(t).ok().map(|at| (at, t)))
        .max_by_key(|(at, _)| *at)
        .map(|(_, t)| t.clone())
}

/// A push's `commits`: each one's id (as `id` makes it) and timestamp.
fn pushed_commits(
    body: &Value,
    id: impl Fn(&str) -> String,
) -> Result<Vec<(String, String)>, FieldError> {
    let commits = match body.get("commits") {
        Some(Value::Array(commits)) => commits.as_slice(),
        None | Some(Value::Null) => &[],
        Some(_) => return Err(field_error("commits", "expected an array")),
    };
    commits
        .iter()
        .enumerate()
        .map(|(i, commit)| {
            let in_commit =
                |e: FieldError| field_error(&format!("commits[{i}].{}", e.field), e.problem);
            Ok((
                id(text(commit, "id").map_err(in_commit)?),
                time(commit, "timestamp").map_err(in_commit)?,
            ))
        })
        .collect()
}

/// Whether `reference` (a branch or tag, `refs/heads/` stripped) matches
/// one of `patterns`, where `*` matches any run of characters.
fn rework_ref(patterns: &[String], reference: Option<&str>) -> bool {
    let Some(reference) = reference else {
        return false;
    };
    let reference = reference
        .strip_prefix("refs/heads/")
        .or_else(|| reference.strip_prefix("refs/tags/"))
        .unwrap_or(reference);
    patterns.iter().any(|p| glob(p, reference))
}

/// `*`-only glob matching, whole string.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Whether any of the label names at `path` (an array of objects with
/// `field`) is one of `wanted`.
fn labelled(body: &Value, path: &str, field: &str, wanted: &[String]) -> bool {
    at(body, path)
        .and_then(Value::as_array)
        .is_some_and(|labels| {
            labels.iter().any(|l| {
                l.get(field)
                    .and_then(Value::as_str)
                    .is_some_and(|name| wanted.iter().any(|w| w.eq_ignore_ascii_case(name)))
            })
        })
}

/// Marks a deployment CDEvent as rework (`customData.rework: true`).
fn mark_rework(event: &mut Value) {
    if let Some(custom) = event.get_mut("customData").and_then(Value::as_object_mut) {
        custom.insert("rework".to_string(), Value::Bool(true));
    }
}

/// Repository → service: the configured table (by full path, then by
/// name), else the repository's name.
fn mapped_service(
    services: &std::collections::BTreeMap<String, String>,
    full_name: &str,
    name: &str,
) -> String {
    services
        .get(full_name)
        .or_else(|| services.get(name))
        .cloned()
        .unwrap_or_else(|| name.to_string())
}

/// The CDEvents a source emits, in the v0.4.1 shape. `customData.service`
/// is on every one: it keys the event on the Kafka exporter, so a
/// revision lands in the partition of the deployments that use it.
mod emit {
    use serde_json::{Value, json};

    fn context(id: &str, source: &str, event_type: &str, time: &str) -> Value {
        json!({
            "version": "0.4.1",
            "id": id,
            "source": source,
            "type": event_type,
            "timestamp": time,
        })
    }

    /// A `change.*` event of `subject` in `repository`, with `custom`
    /// (which carries the service) as its `customData`.
    fn change(
        id: &str,
        source: &str,
        time: &str,
        event_type: &str,
        subject: &str,
        repository: &str,
        custom: Value,
    ) -> Value {
        json!({
            "context": context(id, source, event_type, time),
            "subject": {
                "id": subject,
                "source": source,
                "type": "change",
                "content": { "repository": { "id": repository, "source": source } },
            },
            "customData": custom,
            "customDataContentType": "application/json",
        })
    }

    /// A deployment of `service` to `environment`; `failed` adds
    /// doraflow's `customData.outcome: failure`.
    pub fn deployment(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        environment: &str,
        artifact: Option<&str>,
        failed: bool,
    ) -> Value {
        let mut content = json!({ "environment": { "id": environment } });
        if let Some(artifact) = artifact {
            content["artifactId"] = json!(artifact);
        }
        let mut custom = json!({ "service": service });
        if failed {
            custom["outcome"] = json!("failure");
        }
        json!({
            "context": context(id, source, "dev.cdevents.service.deployed.0.2.0", time),
            "subject": { "id": service, "source": source, "type": "service", "content": content },
            "customData": custom,
            "customDataContentType": "application/json",
        })
    }

    /// A revision of `repository` (a push), with the commits it added and
    /// the revision before it: a `change.merged` of the head commit with
    /// the graph in `customData`.
    #[allow(clippy::too_many_arguments)]
    pub fn revision(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        repository: &str,
        revision: &str,
        parent: Option<&str>,
        commits: &[(String, String)],
    ) -> Value {
        let changes: Vec<Value> = commits
            .iter()
            .map(|(id, time)| json!({ "id": id, "timestamp": time }))
            .collect();
        let mut custom = json!({ "service": service, "revision": revision, "changes": changes });
        if let Some(parent) = parent {
            custom["parent"] = json!(parent);
        }
        let merged = "dev.cdevents.change.merged.0.2.0";
        change(id, source, time, merged, revision, repository, custom)
    }

    /// An incident of `service` in `environment` opened (or, `reopened`,
    /// opened again: doraflow's `customData.reopened`).
    #[allow(clippy::too_many_arguments)]
    pub fn incident_opened(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        environment: &str,
        incident: &str,
        description: Option<&str>,
        reopened: bool,
    ) -> Value {
        let mut content = json!({
            "environment": { "id": environment },
            "service": { "id": service },
        });
        if let Some(description) = description {
            content["description"] = json!(description);
        }
        let mut custom = json!({ "service": service });
        if reopened {
            custom["reopened"] = json!(true);
        }
        let predicate = if reopened { "reported" } else { "detected" };
        json!({
            "context": context(id, source, &format!("dev.cdevents.incident.{predicate}.0.2.0"), time),
            "subject": { "id": incident, "source": source, "type": "incident", "content": content },
            "customData": custom,
            "customDataContentType": "application/json",
        })
    }

    /// An incident resolved.
    pub fn incident_resolved(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        environment: &str,
        incident: &str,
    ) -> Value {
        json!({
            "context": context(id, source, "dev.cdevents.incident.resolved.0.2.0", time),
            "subject": {
                "id": incident,
                "source": source,
                "type": "incident",
                "content": { "environment": { "id": environment }, "service": { "id": service } },
            },
            "customData": { "service": service },
            "customDataContentType": "application/json",
        })
    }

    /// A pull request's merge commit `change`, merged at `time`, whose work
    /// began with the first of the `commits` commits ending at `head`.
    #[allow(clippy::too_many_arguments)]
    pub fn change_from_commits(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        repository: &str,
        subject: &str,
        head: &str,
        commits: u64,
    ) -> Value {
        let custom = json!({
            "service": service,
            "firstCommitOf": { "revision": head, "commits": commits },
        });
        let merged = "dev.cdevents.change.merged.0.2.0";
        change(id, source, time, merged, subject, repository, custom)
    }

    /// `change` labelled rework (a hotfix pull or merge request).
    pub fn change_rework(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        repository: &str,
        subject: &str,
    ) -> Value {
        let custom = json!({ "service": service, "rework": true });
        let updated = "dev.cdevents.change.updated.0.2.0";
        change(id, source, time, updated, subject, repository, custom)
    }

    /// A change merged at `time` (a pull request's merge commit).
    pub fn change_merged(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        repository: &str,
        subject: &str,
    ) -> Value {
        let custom = json!({ "service": service });
        let merged = "dev.cdevents.change.merged.0.2.0";
        change(id, source, time, merged, subject, repository, custom)
    }

    /// A change (a merged pull request's merge commit) created at `time`.
    pub fn change_created(
        id: &str,
        source: &str,
        time: &str,
        service: &str,
        repository: &str,
        subject: &str,
    ) -> Value {
        let custom = json!({ "service": service });
        let created = "dev.cdevents.change.created.0.3.0";
        change(id, source, time, created, subject, repository, custom)
    }
}

/// Checks a bearer token (Alertmanager's, Argo CD's), in constant time.
fn bearer(token: &Secret, headers: &HeaderMap) -> Result<(), &'static str> {
    if super::authorized(Some(token), headers) {
        Ok(())
    } else {
        Err("a valid bearer token is required")
    }
}

/// Checks a `sha256=<hex>` HMAC of `body` (GitHub's, Flux's) against the
/// secret and the previous one; every secret is tried, so the time does
/// not say which one matched.
fn sha256_signed(
    given: &str,
    secret: &Secret,
    previous: Option<&Secret>,
    body: &[u8],
) -> Result<(), &'static str> {
    let matched = std::iter::once(secret)
        .chain(previous)
        .fold(false, |any, secret| hmac_matches(secret, body, given) | any);
    if matched {
        Ok(())
    } else {
        Err("the signature does not match")
    }
}

/// HMAC-SHA256 of `body` under `secret`, compared in constant time with
/// the hex digest `given` (which may carry a `sha256=` prefix).
fn hmac_matches(secret: &Secret, body: &[u8], given_hex: &str) -> bool {
    use hmac::{KeyInit, Mac};
    let Some(given) = super::request::decode_hex(given_hex.trim()) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose().as_bytes()) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

#[derive(Clone)]
struct Shared {
    sink: PipelineSink,
    admission: Admission,
    max_body: usize,
    config: std::sync::Arc<NativeSources>,
}

/// The native sources configured on the webhook listener (its `github`,
/// `gitlab`, `pagerduty` and `alertmanager` sections).
#[derive(Debug, Clone, Default)]
pub struct NativeSources {
    /// `POST /github`.
    pub github: Option<github::GithubConfig>,
    /// `POST /gitlab`.
    pub gitlab: Option<gitlab::GitlabConfig>,
    /// `POST /pagerduty`.
    pub pagerduty: Option<pagerduty::PagerdutyConfig>,
    /// `POST /alertmanager`.
    pub alertmanager: Option<alertmanager::AlertmanagerSourceConfig>,
    /// `POST /argocd`.
    pub argocd: Option<argocd::ArgocdConfig>,
    /// `POST /flux`.
    pub flux: Option<flux::FluxConfig>,
}

/// The native routes `config` turns on, sharing the listener's admission.
pub(super) fn router(
    sink: PipelineSink,
    admission: Admission,
    max_body: usize,
    config: NativeSources,
) -> Router {
    let config = std::sync::Arc::new(config);
    let shared = Shared {
        sink,
        admission,
        max_body,
        config: config.clone(),
    };
    let mut router = Router::new();
    if config.github.is_some() {
        router = router.route("/github", post(route::<github::GithubConfig>));
    }
    if config.gitlab.is_some() {
        router = router.route("/gitlab", post(route::<gitlab::GitlabConfig>));
    }
    if config.pagerduty.is_some() {
        router = router.route("/pagerduty", post(route::<pagerduty::PagerdutyConfig>));
    }
    if config.alertmanager.is_some() {
        router = router.route(
            "/alertmanager",
            post(route::<alertmanager::AlertmanagerSourceConfig>),
        );
    }
    if config.argocd.is_some() {
        router = router.route("/argocd", post(route::<argocd::ArgocdConfig>));
    }
    if config.flux.is_some() {
        router = router.route("/flux", post(route::<flux::FluxConfig>));
    }
    router.with_state(shared)
}

/// A native source: its route's name, its section of the listener's
/// config, its check and its translation.
trait Source: Send + Sync + 'static {
    /// The route's name, also the `receiver` label.
    const NAME: &'static str;
    /// Whether a form-encoded body (`payload=<json>`) is read too.
    const FORM: bool = false;
    /// Its section, if configured.
    fn section(config: &NativeSources) -> Option<&Self>;
    /// The signature or token check.
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str>;
    /// The payload into CDEvents.
    fn translate(&self, headers: &HeaderMap, body: &Value) -> Result<Outcome, FieldError>;
}

impl Source for github::GithubConfig {
    const NAME: &'static str = "github";
    const FORM: bool = true;
    fn section(config: &NativeSources) -> Option<&Self> {
        config.github.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        github::verify(self, headers, body)
    }
    fn translate(&self, headers: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        github::translate(self, headers, body)
    }
}

impl Source for gitlab::GitlabConfig {
    const NAME: &'static str = "gitlab";
    fn section(config: &NativeSources) -> Option<&Self> {
        config.gitlab.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        gitlab::verify(self, headers, body)
    }
    fn translate(&self, headers: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        gitlab::translate(self, headers, body)
    }
}

impl Source for pagerduty::PagerdutyConfig {
    const NAME: &'static str = "pagerduty";
    fn section(config: &NativeSources) -> Option<&Self> {
        config.pagerduty.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        pagerduty::verify(self, headers, body)
    }
    fn translate(&self, _: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        pagerduty::translate(self, body)
    }
}

impl Source for alertmanager::AlertmanagerSourceConfig {
    const NAME: &'static str = "alertmanager";
    fn section(config: &NativeSources) -> Option<&Self> {
        config.alertmanager.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        alertmanager::verify(self, headers, body)
    }
    fn translate(&self, _: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        alertmanager::translate(self, body)
    }
}

impl Source for argocd::ArgocdConfig {
    const NAME: &'static str = "argocd";
    fn section(config: &NativeSources) -> Option<&Self> {
        config.argocd.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        argocd::verify(self, headers, body)
    }
    fn translate(&self, _: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        argocd::translate(self, body)
    }
}

impl Source for flux::FluxConfig {
    const NAME: &'static str = "flux";
    fn section(config: &NativeSources) -> Option<&Self> {
        config.flux.as_ref()
    }
    fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        flux::verify(self, headers, body)
    }
    fn translate(&self, _: &HeaderMap, body: &Value) -> Result<Outcome, FieldError> {
        flux::translate(self, body)
    }
}

/// `POST /<source>`.
async fn route<S: Source>(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(config) = S::section(&shared.config) else {
        return answer(StatusCode::NOT_FOUND, json!({ "error": "not configured" }));
    };
    handle(
        &shared,
        S::NAME,
        S::FORM,
        &headers,
        body,
        |headers, body| config.verify(headers, body),
        |headers, value| config.translate(headers, value),
    )
    .await
}

/// One delivery: admitted, read, its signature checked (401 and nothing
/// applied), parsed, translated (400 naming the field) and applied. With
/// `form` (GitHub's other content type) a form body carries the JSON in
/// its `payload` field; the signature covers the body as sent.
#[allow(clippy::too_many_arguments)]
async fn handle(
    shared: &Shared,
    receiver: &'static str,
    form: bool,
    headers: &HeaderMap,
    body: Body,
    check: impl FnOnce(&HeaderMap, &[u8]) -> Result<(), &'static str>,
    translate: impl FnOnce(&HeaderMap, &Value) -> Result<Outcome, FieldError>,
) -> Response {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let form_body = match media_type.as_str() {
        "application/json" => false,
        "application/x-www-form-urlencoded" if form => true,
        _ => {
            return answer(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                json!({ "error": format!(
                    "unsupported content type `{media_type}`: set the webhook's content type to application/json"
                ) }),
            );
        }
    };
    let (bytes, _admitted) =
        match admit_and_read(receiver, &shared.admission, body, shared.max_body).await {
            Ok(read) => read,
            Err(response) => return response,
        };
    if let Err(problem) = check(headers, &bytes) {
        tracing::debug!(receiver, problem, "delivery with a bad signature refused");
        return unauthorized_on(receiver, problem);
    }
    let payload = if form_body {
        match form_urlencoded::parse(&bytes).find(|(key, _)| key == "payload") {
            Some((_, payload)) => payload.into_owned().into_bytes(),
            None => {
                return refuse_on(
                    receiver,
                    "malformed",
                    "a form-encoded delivery must carry its JSON in `payload`".to_string(),
                );
            }
        }
    } else {
        bytes.to_vec()
    };
    let value: Value = match serde_json::from_slice(&payload) {
        Ok(value) => value,
        Err(e) => return refuse_on(receiver, "malformed", format!("malformed JSON: {e}")),
    };
    match translate(headers, &value) {
        Err(e) => refuse_on(receiver, "malformed", e.to_string()),
        Ok(Outcome::Pong(body)) => {
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "ping")
                .increment(1);
            answer(StatusCode::OK, body)
        }
        Ok(Outcome::Ignored(what)) => {
            tracing::debug!(receiver, what, "delivery ignored");
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => receiver, "result" => "ignored")
                .increment(1);
            answer(StatusCode::OK, json!({ "accepted": 0, "ignored": what }))
        }
        Ok(Outcome::Events(values)) => match crate::cdevents::decode_values(&values) {
            Ok(events) => submit(receiver, &shared.sink, events, &values).await,
            // The translation is ours; a refusal here is still the
            // payload's (a field of the wrong form), so a 400.
            Err(e) => refuse_on(receiver, "malformed", e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_form_these_services_write() {
        assert_eq!(
            parse_time("2019-05-15T15:20:55Z").as_deref(),
            Some("2019-05-15T15:20:55Z")
        );
        assert_eq!(
            parse_time("2019-05-15T15:19:25-05:00").as_deref(),
            Some("2019-05-15T20:19:25Z")
        );
        assert_eq!(
            parse_time("2021-04-28 21:50:00 +0200").as_deref(),
            Some("2021-04-28T19:50:00Z")
        );
        assert_eq!(
            parse_time("2016-08-12 15:23:28 UTC").as_deref(),
            Some("2016-08-12T15:23:28Z")
        );
        assert_eq!(
            parse_time("2024-01-01T00:00:00.250Z").as_deref(),
            Some("2024-01-01T00:00:00.250Z")
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn rework_refs_match_as_globs() {
        let patterns = vec![
            "hotfix/*".to_string(),
            "*-fix".to_string(),
            "release".to_string(),
        ];
        assert!(rework_ref(&patterns, Some("refs/heads/hotfix/login")));
        assert!(rework_ref(&patterns, Some("hotfix/")));
        assert!(rework_ref(&patterns, Some("payment-fix")));
        assert!(rework_ref(&patterns, Some("release")));
        assert!(!rework_ref(&patterns, Some("release-2")));
        assert!(!rework_ref(&patterns, Some("main")));
        assert!(!rework_ref(&patterns, None));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXcYYb"));
    }

    #[test]
    fn repositories_map_to_services_by_path_then_name() {
        let mut table = std::collections::BTreeMap::new();
        table.insert("acme/shop".to_string(), "checkout".to_string());
        table.insert("billing-api".to_string(), "billing".to_string());
        assert_eq!(mapped_service(&table, "acme/shop", "shop"), "checkout");
        assert_eq!(
            mapped_service(&table, "acme/billing-api", "billing-api"),
            "billing"
        );
        assert_eq!(mapped_service(&table, "acme/cart", "cart"), "cart");
    }

    #[test]
    fn signatures_compare_as_hmac_sha256_hex() {
        let secret = Secret::from("It's a Secret to Everybody");
        // GitHub's documented example: "Hello, World!" under this secret.
        let want = "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(hmac_matches(&secret, b"Hello, World!", want));
        assert!(!hmac_matches(&secret, b"Hello, World?", want));
        assert!(!hmac_matches(&secret, b"Hello, World!", "abc"));
    }
}
