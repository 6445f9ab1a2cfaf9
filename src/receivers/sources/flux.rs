//! Flux's notification-controller: `POST /flux`, from a Provider of type
//! `generic-hmac`.
//!
//! The controller signs each body with the `token` of the Provider's
//! secret: `X-Signature: sha256=<hex HMAC-SHA256 of the body>`, checked
//! here against `secret` (or `previous_secret` while it rotates). Each
//! body is one Flux event about a Kustomization or HelmRelease:
//!
//! | event | becomes |
//! |---|---|
//! | `severity: error` (`ReconciliationFailed`, `HealthCheckFailed`, `UpgradeFailed`, ...) | a failed deployment of `metadata.revision` |
//! | `ReconciliationSucceeded`, `InstallSucceeded`, `UpgradeSucceeded` | a deployment of it |
//! | `RollbackSucceeded` (HelmRelease) | a rollback |
//! | anything else, or another kind of object | accepted, counted, ignored |
//!
//! Flux reports a reconciliation again and again while nothing changes:
//! the event's id is the object, the revision and the outcome, so a
//! revision is deployed once (and fails once) however often it is
//! reported. The service is the object's name (or its entry in
//! `services`), the environment its entry in `environments`, else
//! `environment`.

use std::collections::BTreeMap;

use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FieldError, Outcome, emit, field_error, optional_text, text, time};
use crate::settings::Secret;

/// `receivers.webhook.flux`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FluxConfig {
    /// The `token` of the Provider's secret, from `${env:NAME}` or `${file:PATH}`.
    pub secret: Secret,
    /// The token before the current one, accepted too while a rotation is
    /// under way. Default: none.
    #[serde(default)]
    pub previous_secret: Option<Secret>,
    /// Object name (or `namespace/name`) → service. Default: its name.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Object name (or `namespace/name`) → environment. Default: `environment`.
    #[serde(default)]
    pub environments: BTreeMap<String, String>,
    /// The environment of an object named nowhere. Default `production`.
    #[serde(default = "default_environment")]
    pub environment: String,
}

fn default_environment() -> String {
    "production".to_string()
}

/// Checks `X-Signature: sha256=<hex>` against the secret (or the previous one).
pub fn verify(config: &FluxConfig, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let header = headers
        .get("x-signature")
        .ok_or("the X-Signature header is missing")?
        .to_str()
        .map_err(|_| "X-Signature is not text")?
        .trim();
    let given = match header.split_once('=') {
        Some(("sha256", hex)) => hex,
        Some((other, _)) if !other.is_empty() => {
            return Err("X-Signature: only sha256 is read (Flux's generic-hmac signs with it)");
        }
        _ => return Err("X-Signature is not `sha256=<64 hex digits>`"),
    };
    super::sha256_signed(given, &config.secret, config.previous_secret.as_ref(), body)
}

/// The revision the event is about: `metadata.revision`, else a
/// controller-prefixed `metadata.<group>/revision`.
fn revision(body: &Value) -> Option<&str> {
    optional_text(body, "metadata.revision").or_else(|| {
        body.get("metadata")
            .and_then(Value::as_object)?
            .iter()
            .find(|(k, _)| k.ends_with("/revision"))
            .and_then(|(_, v)| v.as_str())
            .filter(|s| !s.trim().is_empty())
    })
}

/// Translates one event.
pub fn translate(config: &FluxConfig, body: &Value) -> Result<Outcome, FieldError> {
    translate_payload(config, body)
        .map(|outcome| outcome.stamped(crate::model::delivery::Source::Flux))
}

fn translate_payload(config: &FluxConfig, body: &Value) -> Result<Outcome, FieldError> {
    let kind = text(body, "involvedObject.kind")?;
    if !matches!(kind, "Kustomization" | "HelmRelease") {
        return Ok(Outcome::Ignored(format!("an event of a {kind}")));
    }
    let name = text(body, "involvedObject.name")?;
    let namespace = optional_text(body, "involvedObject.namespace").unwrap_or("default");
    let reason = text(body, "reason")?;
    let severity = text(body, "severity")?;
    let (outcome, rollback) = match (severity, reason) {
        ("error", _) => ("failure", false),
        (_, "ReconciliationSucceeded" | "InstallSucceeded" | "UpgradeSucceeded") => {
            ("success", false)
        }
        (_, "RollbackSucceeded") => ("rollback", true),
        _ => return Ok(Outcome::Ignored(format!("{kind} {reason} ({severity})"))),
    };
    let Some(revision) = revision(body) else {
        return Err(field_error("metadata.revision", "missing"));
    };
    let at = time(body, "timestamp")?;
    let qualified = format!("{namespace}/{name}");
    let lookup = |table: &BTreeMap<String, String>| {
        table.get(&qualified).or_else(|| table.get(name)).cloned()
    };
    let service = lookup(&config.services).unwrap_or_else(|| name.to_string());
    let environment = lookup(&config.environments).unwrap_or_else(|| config.environment.clone());
    let id = format!("flux:{kind}/{qualified}:{revision}:{outcome}");
    let source = format!("flux:{kind}/{qualified}");
    let mut event = emit::deployment(
        &id,
        &source,
        &at,
        &service,
        &environment,
        None,
        outcome == "failure",
    );
    if rollback {
        event["context"]["type"] = json!("dev.cdevents.service.rolledback.0.2.0");
    }
    event["customData"]["revision"] = json!(revision);
    Ok(Outcome::Events(vec![event]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{DeliveryKind, DeploymentOutcome, Source, commit_of};

    pub(crate) fn config() -> FluxConfig {
        FluxConfig {
            secret: Secret::from("flux-token"),
            previous_secret: None,
            services: BTreeMap::from([("shop-app".to_string(), "shop".to_string())]),
            environments: BTreeMap::from([("apps/shop-app".to_string(), "production".to_string())]),
            environment: "staging".into(),
        }
    }

    fn event(reason: &str, severity: &str) -> Value {
        json!({
            "involvedObject": {
                "kind": "Kustomization", "namespace": "apps", "name": "shop-app",
                "uid": "7c3b1a52-0d1e-4a47-9a8e-0c5a1b2c3d4e",
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1", "resourceVersion": "81234",
            },
            "severity": severity,
            "timestamp": "2024-05-01T12:00:00Z",
            "message": "Reconciliation finished in 2.1s, next run in 10m0s",
            "reason": reason,
            "metadata": {
                "revision": "main@sha1:9f8e7d6c5b4a39281706f5e4d3c2b1a098765432",
                "summary": "shop production",
            },
            "reportingController": "kustomize-controller",
            "reportingInstance": "kustomize-controller-6b9c8d7f5-x2x9z",
        })
    }

    fn decoded(outcome: Outcome) -> crate::model::delivery::DeliveryEvent {
        let Outcome::Events(values) = outcome else {
            panic!("{outcome:?}")
        };
        crate::cdevents::decode_values(&values).unwrap().remove(0)
    }

    #[test]
    fn reconciliations_are_deployments_of_their_revision_once() {
        let first =
            decoded(translate(&config(), &event("ReconciliationSucceeded", "info")).unwrap());
        assert_eq!(first.time, 1_714_564_800_000_000_000);
        let DeliveryKind::Deployment(d) = &first.kind else {
            panic!()
        };
        assert_eq!(
            (d.service.as_str(), d.environment.as_str()),
            ("shop", "production")
        );
        assert_eq!(d.outcome, DeploymentOutcome::Success);
        assert_eq!(d.source, Source::Flux);
        assert_eq!(
            d.revision.as_deref().and_then(commit_of).as_deref(),
            Some("9f8e7d6c5b4a39281706f5e4d3c2b1a098765432")
        );
        // Reported again ten minutes later: the same event.
        let mut again = event("ReconciliationSucceeded", "info");
        again["timestamp"] = json!("2024-05-01T12:10:00Z");
        assert_eq!(decoded(translate(&config(), &again).unwrap()).id, first.id);
    }

    #[test]
    fn errors_fail_and_rollbacks_roll_back() {
        for (reason, severity, outcome) in [
            ("HealthCheckFailed", "error", DeploymentOutcome::Failure),
            ("ReconciliationFailed", "error", DeploymentOutcome::Failure),
            ("RollbackSucceeded", "info", DeploymentOutcome::Rollback),
            ("UpgradeSucceeded", "info", DeploymentOutcome::Success),
        ] {
            let DeliveryKind::Deployment(d) =
                decoded(translate(&config(), &event(reason, severity)).unwrap()).kind
            else {
                panic!()
            };
            assert_eq!(d.outcome, outcome, "{reason}");
        }
        assert!(matches!(
            translate(&config(), &event("Progressing", "info")).unwrap(),
            Outcome::Ignored(_)
        ));
        let mut source = event("ReconciliationSucceeded", "info");
        source["involvedObject"]["kind"] = json!("GitRepository");
        assert!(matches!(
            translate(&config(), &source).unwrap(),
            Outcome::Ignored(_)
        ));
        let mut bare = event("ReconciliationSucceeded", "info");
        bare["metadata"] = json!({});
        assert_eq!(
            translate(&config(), &bare).unwrap_err().field,
            "metadata.revision"
        );
        let mut prefixed = event("ReconciliationSucceeded", "info");
        prefixed["metadata"] =
            json!({ "kustomize.toolkit.fluxcd.io/revision": "main@sha1:abcdef0" });
        assert!(translate(&config(), &prefixed).is_ok());
    }

    #[test]
    fn the_signature_must_be_the_tokens_hmac_of_the_body() {
        use hmac::{KeyInit, Mac};
        let body = br#"{"involvedObject":{}}"#;
        let sign = |key: &str| {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
            mac.update(body);
            let hex: String = mac
                .finalize()
                .into_bytes()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("sha256={hex}")
        };
        let headers = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert("x-signature", v.parse().unwrap());
            }
            h
        };
        assert_eq!(
            verify(&config(), &headers(Some(&sign("flux-token"))), body),
            Ok(())
        );
        assert_eq!(
            verify(&config(), &headers(Some(&sign("wrong"))), body),
            Err("the signature does not match")
        );
        assert_eq!(
            verify(&config(), &headers(None), body),
            Err("the X-Signature header is missing")
        );
        assert!(verify(&config(), &headers(Some("sha1=abcd")), body).is_err());
        let mut rotating = config();
        rotating.previous_secret = Some(Secret::from("old-token"));
        assert_eq!(
            verify(&rotating, &headers(Some(&sign("old-token"))), body),
            Ok(())
        );
    }
}
