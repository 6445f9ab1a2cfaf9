//! Exporters `alertmanager` and `webhook`: alert transitions to an
//! Alertmanager's `POST /api/v2/alerts`, and to any HTTP endpoint in the
//! Alertmanager webhook format (version 4).
//!
//! Alertmanager forgets an alert that is not re-sent, so the `alertmanager`
//! exporter re-sends every firing alert each `resend_interval` with `endsAt`
//! four intervals ahead (as Prometheus does), and sends `endsAt` = now on
//! resolve. A failed push is logged and counted; the next re-send repairs it.

use std::collections::BTreeMap;
use std::time::Duration;

use metrics::counter;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::exporters::{AlertSink, Queued};
use crate::instruments;
use crate::processors::alerts::{State, Transition};
use crate::settings::{ClientAuth, ConfigDuration};

/// `exporters.alertmanager`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerConfig {
    /// The Alertmanager's base URL, e.g. `http://127.0.0.1:9093`.
    pub url: String,
    /// How often firing alerts are re-sent. Default `1m`.
    #[serde(default = "default_resend")]
    pub resend_interval: ConfigDuration,
    /// Transitions waiting to be sent. Default 1024.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// `generatorURL` of every alert (e.g. doraflow's `/api/v1/alerts`).
    #[serde(default)]
    pub generator_url: Option<String>,
    /// TLS for an `https://` URL: extra CA, client certificate.
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTls>,
    /// Credentials, for an Alertmanager with `basic_auth_users` or behind
    /// a proxy: `{ basic_auth: { username, password } }` or `{ bearer_token }`.
    #[serde(default)]
    pub auth: Option<ClientAuth>,
}

/// `exporters.webhook`: Alertmanager webhook (version 4) payloads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookExporterConfig {
    /// Where to POST.
    pub url: String,
    /// Transitions waiting to be sent. Default 1024.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// TLS for an `https://` URL: extra CA, client certificate.
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTls>,
    /// Credentials: `{ bearer_token }` or `{ basic_auth: { username, password } }`.
    #[serde(default)]
    pub auth: Option<ClientAuth>,
}

fn default_resend() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}
const fn default_queue_size() -> usize {
    1024
}

impl AlertmanagerConfig {
    /// Checks the values; every problem with its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        super::check_url(
            &format!("{path}.url"),
            &self.url,
            None,
            Some(&format!("{path}.auth.basic_auth")),
            errors,
        );
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
        }
        if let Some(auth) = &self.auth {
            auth.validate(&format!("{path}.auth"), errors);
        }
        if self.resend_interval.get().is_zero() {
            errors.push(format!("{path}.resend_interval: must be longer than 0"));
        }
    }
}

impl WebhookExporterConfig {
    /// Checks the values; every problem with its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        super::check_url(
            &format!("{path}.url"),
            &self.url,
            None,
            Some(&format!("{path}.auth.basic_auth")),
            errors,
        );
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
        }
        if let Some(auth) = &self.auth {
            auth.validate(&format!("{path}.auth"), errors);
        }
    }
}

fn rfc3339(nanos: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos).to_rfc3339()
}

fn labels(t: &Transition) -> Value {
    json!({
        "alertname": t.alertname,
        "service": t.service,
        "environment": t.environment,
        "severity": t.severity.as_str(),
    })
}

fn annotations(t: &Transition) -> Value {
    json!({
        "summary": t.summary,
        "value": t.value.to_string(),
        "threshold": t.threshold.to_string(),
    })
}

/// One alert as Alertmanager's API v2 takes it.
fn api_alert(
    t: &Transition,
    starts_at: i64,
    ends_at: i64,
    generator_url: &Option<String>,
) -> Value {
    let mut alert = json!({
        "labels": labels(t),
        "annotations": annotations(t),
        "startsAt": rfc3339(starts_at),
        "endsAt": rfc3339(ends_at),
    });
    if let Some(url) = generator_url {
        alert["generatorURL"] = json!(url);
    }
    alert
}

/// Starts the Alertmanager exporter.
pub fn start_alertmanager(
    config: AlertmanagerConfig,
    stop: CancellationToken,
) -> (AlertSink, tokio::task::JoinHandle<()>) {
    let (sink, rx) = AlertSink::new("alertmanager", config.queue_size);
    (sink, tokio::spawn(run_alertmanager(config, rx, stop)))
}

/// What an exporter posts with: the client, and its `authorization`.
struct Poster {
    client: reqwest::Client,
    authorization: Option<String>,
    exporter: &'static str,
}

impl Poster {
    fn new(
        exporter: &'static str,
        tls: Option<&crate::tls::ClientTls>,
        auth: Option<&ClientAuth>,
    ) -> Option<Poster> {
        // Validated at start, so this fails only if the files changed since.
        let client = crate::tls::http_client(tls, Duration::from_secs(10))
            .map_err(|e| tracing::error!(error = %format!("{e:#}"), "cannot build an HTTP client"))
            .ok()?;
        Some(Poster {
            client,
            authorization: auth.and_then(ClientAuth::header_value),
            exporter,
        })
    }

    async fn post(&self, url: &str, body: &Value) {
        let mut request = self.client.post(url).json(body);
        if let Some(value) = &self.authorization {
            request = request.header("authorization", value);
        }
        post(request, self.exporter).await;
    }
}

async fn post(request: reqwest::RequestBuilder, exporter: &'static str) {
    match request.send().await {
        Ok(response) if response.status().is_success() => {
            counter!(instruments::EXPORTER_SENT, "exporter" => exporter).increment(1);
        }
        Ok(response) => {
            let status = response.status().as_u16();
            tracing::warn!(exporter, status, "alert push refused");
            counter!(instruments::EXPORTER_FAILED, "exporter" => exporter, "reason" => "rejected")
                .increment(1);
        }
        Err(e) => {
            tracing::warn!(exporter, error = %e, "alert push failed");
            counter!(instruments::EXPORTER_FAILED, "exporter" => exporter, "reason" => "retryable")
                .increment(1);
        }
    }
}

async fn run_alertmanager(
    config: AlertmanagerConfig,
    mut rx: mpsc::Receiver<Queued>,
    stop: CancellationToken,
) {
    let Some(poster) = Poster::new("alertmanager", config.tls.as_ref(), config.auth.as_ref())
    else {
        return;
    };
    let url = format!("{}/api/v2/alerts", config.url.trim_end_matches('/'));
    let resend = config.resend_interval.get();
    let ends_ahead = 4 * resend.as_nanos() as i64;
    // Firing alerts: (alertname, service, environment) -> (latest transition, startsAt).
    let mut firing: BTreeMap<(&'static str, String, String), (Transition, i64)> = BTreeMap::new();
    let mut ticker = tokio::time::interval(resend);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            t = rx.recv() => {
                let Some(t) = t else { return };
                let key = (t.alertname, t.service.clone(), t.environment.clone());
                if t.handed_over {
                    firing.remove(&key);
                    continue;
                }
                let body = match t.state {
                    State::Firing => {
                        firing.insert(key, (Transition::clone(&t), t.at));
                        json!([api_alert(&t, t.at, t.at + ends_ahead, &config.generator_url)])
                    }
                    State::Resolved => {
                        let starts = firing.remove(&key).map_or(t.at, |(_, s)| s);
                        json!([api_alert(&t, starts, t.at, &config.generator_url)])
                    }
                    State::Pending => continue,
                };
                poster.post(&url, &body).await;
            }
            _ = ticker.tick(), if !firing.is_empty() => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as i64)
                    .unwrap_or(0);
                let body: Vec<Value> = firing
                    .values()
                    .map(|(t, starts)| api_alert(t, *starts, now + ends_ahead, &config.generator_url))
                    .collect();
                poster.post(&url, &Value::Array(body)).await;
            }
            _ = stop.cancelled() => return,
        }
    }
}

/// The Alertmanager webhook (version 4) payload of one transition.
pub fn webhook_payload(t: &Transition, starts_at: i64) -> Value {
    let status = if t.state == State::Resolved {
        "resolved"
    } else {
        "firing"
    };
    let ends_at = if t.state == State::Resolved {
        rfc3339(t.at)
    } else {
        "0001-01-01T00:00:00Z".to_string()
    };
    let key = format!("doraflow/{}/{}/{}", t.alertname, t.service, t.environment);
    json!({
        "version": "4",
        "groupKey": key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "doraflow",
        "groupLabels": {"alertname": t.alertname},
        "commonLabels": labels(t),
        "commonAnnotations": annotations(t),
        "externalURL": "",
        "alerts": [{
            "status": status,
            "labels": labels(t),
            "annotations": annotations(t),
            "startsAt": rfc3339(starts_at),
            "endsAt": ends_at,
            "generatorURL": "",
            "fingerprint": format!("{:016x}", fingerprint(&key)),
        }],
    })
}

fn fingerprint(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Starts the webhook exporter.
pub fn start_webhook(
    config: WebhookExporterConfig,
    stop: CancellationToken,
) -> (AlertSink, tokio::task::JoinHandle<()>) {
    let (sink, mut rx) = AlertSink::new("webhook", config.queue_size);
    let task = tokio::spawn(async move {
        let Some(poster) = Poster::new("webhook", config.tls.as_ref(), config.auth.as_ref()) else {
            return;
        };
        let mut started: BTreeMap<(&'static str, String, String), i64> = BTreeMap::new();
        loop {
            let t = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return },
                _ = stop.cancelled() => return,
            };
            let key = (t.alertname, t.service.clone(), t.environment.clone());
            let starts_at = match t.state {
                State::Firing => *started.entry(key).or_insert(t.at),
                State::Resolved => started.remove(&key).unwrap_or(t.at),
                State::Pending => continue,
            };
            poster
                .post(&config.url, &webhook_payload(&t, starts_at))
                .await;
        }
    });
    (sink, task)
}
