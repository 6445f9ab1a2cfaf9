//! Exporter `pagerduty`: alert transitions to the PagerDuty Events API v2.
//!
//! A firing alert is a `trigger`, a resolved one a `resolve`, both with the
//! same `dedup_key` per (alertname, service, environment), so PagerDuty keeps
//! one incident per episode. Delivery runs in its own task behind a bounded
//! queue: retries with exponential backoff and jitter on 429, 5xx and network
//! errors (honouring `Retry-After`), by default until the endpoint takes the
//! event (one at a time, so a resolve never overtakes its trigger), no retry
//! on other 4xx (logged and
//! counted), and a circuit breaker that stops sending after repeated failures
//! and lets one probe through after a cool-down. The routing key is never
//! logged.

use std::time::Duration;

use metrics::counter;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exporters::{AlertSink, Queued};
use crate::instruments;
use crate::processors::alerts::{State, Transition};
use crate::settings::{ConfigDuration, Secret};

/// `exporters.pagerduty`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The Events API v2 endpoint. Default `https://events.pagerduty.com/v2/enqueue`.
    #[serde(default = "default_url")]
    pub url: String,
    /// The integration's routing key, usually `${env:PAGERDUTY_ROUTING_KEY}`.
    pub routing_key: Secret,
    /// Transitions waiting to be sent; beyond it they are dropped and counted. Default 1024.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Attempts per event before it is dropped and counted; 0 (the
    /// default) retries until the endpoint takes it, so an outage of any
    /// length delays a page but never loses it.
    #[serde(default)]
    pub max_attempts: u32,
    /// First retry delay, doubled each time up to `max_backoff`. Default `1s`.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: ConfigDuration,
    /// Longest retry delay. Default `60s`.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: ConfigDuration,
    /// Consecutive failed attempts that open the circuit. Default 10.
    #[serde(default = "default_breaker_threshold")]
    pub circuit_breaker_threshold: u32,
    /// How long an open circuit waits before a probe. Default `30s`.
    #[serde(default = "default_breaker_cooldown")]
    pub circuit_breaker_cooldown: ConfigDuration,
    /// A link put in `custom_details.dashboard` (e.g. doraflow's own `/`).
    #[serde(default)]
    pub dashboard_url: Option<String>,
    /// Send every production deployment of the last 24 hours as a PagerDuty
    /// change event too. Default false.
    #[serde(default)]
    pub change_events: bool,
    /// The Change Events endpoint; default `url` with `/v2/change/enqueue`.
    #[serde(default)]
    pub change_url: Option<String>,
    /// TLS: an extra CA (a proxy in front of PagerDuty), a client
    /// certificate. The system's roots are always trusted.
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTls>,
}

fn default_url() -> String {
    "https://events.pagerduty.com/v2/enqueue".to_string()
}
const fn default_queue_size() -> usize {
    1024
}
fn default_initial_backoff() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_max_backoff() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
const fn default_breaker_threshold() -> u32 {
    10
}
fn default_breaker_cooldown() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

impl PagerDutyConfig {
    /// Checks the values; every problem with its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        super::check_url(&format!("{path}.url"), &self.url, None, None, errors);
        if self.routing_key.expose().trim().is_empty() {
            errors.push(format!("{path}.routing_key: must not be empty"));
        }
        if self.queue_size == 0 {
            errors.push(format!("{path}.queue_size: must be at least 1"));
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
        }
    }
}

/// The stable deduplication key of an alert.
pub fn dedup_key(t: &Transition) -> String {
    format!("doraflow/{}/{}/{}", t.alertname, t.service, t.environment)
}

/// The Events API v2 body of a transition; `None` for `pending`, which
/// PagerDuty does not hear of.
pub fn event(config: &PagerDutyConfig, t: &Transition) -> Option<Value> {
    let action = match t.state {
        State::Firing => "trigger",
        State::Resolved => "resolve",
        State::Pending => return None,
    };
    let mut body = json!({
        "routing_key": config.routing_key.expose(),
        "event_action": action,
        "dedup_key": dedup_key(t),
    });
    if t.state == State::Firing {
        let timestamp = chrono::DateTime::from_timestamp_nanos(t.at).to_rfc3339();
        let summary: String = t.summary.chars().take(1024).collect();
        body["client"] = json!("doraflow");
        body["payload"] = json!({
            "summary": summary,
            "source": format!("doraflow/{}/{}", t.service, t.environment),
            "severity": t.severity.as_str(),
            "timestamp": timestamp,
            "component": t.service,
            "group": t.environment,
            "class": t.alertname,
            "custom_details": {
                "value": t.value,
                "threshold": t.threshold,
                "window": t.window,
                "dashboard": config.dashboard_url,
            },
        });
    }
    Some(body)
}

enum Attempt {
    Delivered,
    /// Refused for good (a 4xx other than 429).
    Rejected(u16),
    /// Try again, after at least this long if the server said.
    Retry(Option<Duration>),
}

async fn attempt(client: &reqwest::Client, url: &str, body: &Value) -> Attempt {
    match client.post(url).json(body).send().await {
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match status {
                200..=299 => Attempt::Delivered,
                429 | 500..=599 => Attempt::Retry(retry_after),
                other => Attempt::Rejected(other),
            }
        }
        Err(_) => Attempt::Retry(None),
    }
}

/// A little jitter (0–25%) so that many doraflows do not retry in step.
fn jittered(delay: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    delay + delay.mul_f64(f64::from(nanos % 1_000) / 4_000.0)
}

/// A deployment for PagerDuty's Change Events API.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeEvent {
    /// The service deployed.
    pub service: String,
    /// The (production) environment.
    pub environment: String,
    /// When, ns since the epoch.
    pub at: i64,
    /// `success`, `failure` or `rollback`.
    pub outcome: &'static str,
    /// The artifact deployed, if known.
    pub artifact: Option<String>,
}

/// The queue end for change events.
#[derive(Clone)]
pub struct ChangeSink {
    tx: mpsc::Sender<ChangeEvent>,
}

impl ChangeSink {
    /// Queues a change event; counts it as dropped when the queue is full.
    pub fn send(&self, change: ChangeEvent) {
        if self.tx.try_send(change).is_err() {
            counter!(instruments::EXPORTER_DROPPED, "exporter" => "pagerduty", "reason" => "queue_full")
                .increment(1);
        }
    }
}

/// The Change Events API body of a deployment.
pub fn change_event(config: &PagerDutyConfig, change: &ChangeEvent) -> Value {
    let verb = match change.outcome {
        "failure" => "failed to deploy",
        "rollback" => "rolled back",
        _ => "deployed",
    };
    let artifact = change.artifact.as_deref().unwrap_or("an unnamed artifact");
    json!({
        "routing_key": config.routing_key.expose(),
        "payload": {
            "summary": format!("{} {verb} {artifact} to {}", change.service, change.environment)
                .chars().take(1024).collect::<String>(),
            "timestamp": chrono::DateTime::from_timestamp_nanos(change.at).to_rfc3339(),
            "source": format!("doraflow/{}/{}", change.service, change.environment),
            "custom_details": {
                "service": change.service,
                "environment": change.environment,
                "outcome": change.outcome,
                "artifact": change.artifact,
            },
        },
    })
}

impl PagerDutyConfig {
    /// Where change events go: `change_url`, else `url` with
    /// `/v2/enqueue` replaced by `/v2/change/enqueue`.
    pub fn change_url(&self) -> String {
        self.change_url
            .clone()
            .unwrap_or_else(|| self.url.replace("/v2/enqueue", "/v2/change/enqueue"))
    }
}

/// Starts the delivery task, with a change-event queue when
/// `change_events` is on; the task ends once the sinks are dropped and the
/// queues drained, or when `stop` is cancelled.
pub fn start(
    config: PagerDutyConfig,
    stop: CancellationToken,
) -> (AlertSink, Option<ChangeSink>, tokio::task::JoinHandle<()>) {
    let (sink, rx) = AlertSink::new("pagerduty", config.queue_size);
    let (changes, change_rx) = if config.change_events {
        let (tx, rx) = mpsc::channel(config.queue_size.max(1));
        (Some(ChangeSink { tx }), Some(rx))
    } else {
        (None, None)
    };
    let task = tokio::spawn(deliver(config, rx, change_rx, stop));
    (sink, changes, task)
}

async fn deliver(
    config: PagerDutyConfig,
    mut rx: mpsc::Receiver<Queued>,
    mut changes: Option<mpsc::Receiver<ChangeEvent>>,
    stop: CancellationToken,
) {
    // Validated at start, so this fails only if the files changed since.
    let client = match crate::tls::http_client(config.tls.as_ref(), Duration::from_secs(10)) {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "pagerduty exporter: cannot build an HTTP client");
            return;
        }
    };
    let change_url = config.change_url();
    let mut failures = 0u32;
    loop {
        // `held` stays in the exporter's outbox (and so in checkpoints)
        // until it is delivered or given up, when it is dropped.
        let (url, body, what, held) = tokio::select! {
            t = rx.recv() => {
                let Some(t) = t else { return };
                let Some(body) = event(&config, &t) else { continue };
                let what = dedup_key(&t);
                (config.url.as_str(), body, what, Some(t))
            }
            Some(change) = async { match changes.as_mut() { Some(c) => c.recv().await, None => None } } => {
                let what = format!("change event {}/{}", change.service, change.environment);
                (change_url.as_str(), change_event(&config, &change), what, None)
            }
            _ = stop.cancelled() => return,
        };
        if send(&client, &config, url, &body, &what, &mut failures, &stop)
            .await
            .is_none()
        {
            return;
        }
        drop(held);
    }
}

/// Sends one event with retries; `Some(delivered)`, or `None` if stopped.
async fn send(
    client: &reqwest::Client,
    config: &PagerDutyConfig,
    url: &str,
    body: &Value,
    what: &str,
    failures: &mut u32,
    stop: &CancellationToken,
) -> Option<bool> {
    let mut backoff = config.initial_backoff.get();
    let mut attempt_number = 0u32;
    loop {
        attempt_number = attempt_number.saturating_add(1);
        if *failures >= config.circuit_breaker_threshold {
            // Open circuit: wait out the cool-down, then this attempt is the probe.
            tracing::warn!(
                failures = *failures,
                "pagerduty exporter: circuit open, probing after the cool-down"
            );
            counter!(instruments::EXPORTER_CIRCUIT_OPENED, "exporter" => "pagerduty").increment(1);
            tokio::select! {
                _ = tokio::time::sleep(config.circuit_breaker_cooldown.get()) => {}
                _ = stop.cancelled() => return None,
            }
        }
        match attempt(client, url, body).await {
            Attempt::Delivered => {
                *failures = 0;
                counter!(instruments::EXPORTER_SENT, "exporter" => "pagerduty").increment(1);
                return Some(true);
            }
            Attempt::Rejected(status) => {
                *failures = 0;
                tracing::error!(
                    status,
                    what,
                    "pagerduty exporter: event refused, not retried"
                );
                counter!(instruments::EXPORTER_FAILED, "exporter" => "pagerduty", "reason" => "rejected").increment(1);
                return Some(false);
            }
            Attempt::Retry(retry_after) => {
                *failures += 1;
                counter!(instruments::EXPORTER_FAILED, "exporter" => "pagerduty", "reason" => "retryable").increment(1);
                if attempt_number == config.max_attempts {
                    tracing::error!(
                        what,
                        "pagerduty exporter: event dropped after {} attempts",
                        config.max_attempts
                    );
                    counter!(instruments::EXPORTER_DROPPED, "exporter" => "pagerduty", "reason" => "retries_exhausted")
                        .increment(1);
                    return Some(false);
                }
                let delay = retry_after.unwrap_or(backoff).max(jittered(backoff));
                backoff = (backoff * 2).min(config.max_backoff.get());
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_routing_key_never_shows_in_debug_output() {
        let config: PagerDutyConfig =
            serde_json::from_value(json!({"routing_key": "s3cr3t-routing-key"})).unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
