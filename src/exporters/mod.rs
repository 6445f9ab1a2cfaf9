//! Exporters: where results go.
//!
//! - [`prometheus`]: `/metrics` (text exposition), `/healthz`, `/readyz`, `/api/v1/dora`.
//! - [`exposition`]: the DORA and per-service families, as text or for OTLP.
//! - [`otlp`]: the same families pushed as OTLP metrics to a collector.
//! - [`pagerduty`]: alert transitions to the PagerDuty Events API v2.
//! - [`alertmanager`]: alert transitions to Alertmanager, and as Alertmanager webhooks.

pub mod alertmanager;
pub mod exposition;
pub mod otlp;
pub mod pagerduty;
pub mod prometheus;

use metrics::counter;
use tokio::sync::mpsc;

use crate::instruments;
use crate::processors::alerts::{State, Transition};

/// Checks an exporter's `url` (at `{path}.url`): http(s), and no
/// credentials in it: a `user:password@` would be a secret written in the
/// config, and URLs show up in logs and error messages.
pub(crate) fn check_url(path: &str, url: &str, errors: &mut Vec<String>) {
    match reqwest::Url::parse(url) {
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            errors.push(format!(
                "{path}.url: must not hold credentials (`user:password@`): give them as {path}.auth.basic_auth, the password from `${{env:NAME}}` or `${{file:PATH}}` ({})",
                crate::config::LITERAL_SECRET
            ));
        }
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
        _ => errors.push(format!("{path}.url: must be an http(s) URL, got `{url}`")),
    }
}

/// The queue an alert exporter takes transitions from. The pipeline never
/// waits on it: a full queue drops the transition and counts it.
#[derive(Clone)]
pub struct AlertSink {
    exporter: &'static str,
    tx: mpsc::Sender<Transition>,
}

impl AlertSink {
    /// A sink for `exporter` holding at most `capacity` transitions.
    pub fn new(exporter: &'static str, capacity: usize) -> (AlertSink, mpsc::Receiver<Transition>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (AlertSink { exporter, tx }, rx)
    }

    /// Whether this exporter keeps re-sending what fires (Alertmanager),
    /// and so must be told of alerts restored firing at start.
    pub fn resends_firing(&self) -> bool {
        self.exporter == "alertmanager"
    }

    /// Queues a firing or resolved transition (pending ones page nobody).
    pub fn send(&self, t: &Transition) {
        if t.state == State::Pending {
            return;
        }
        if self.tx.try_send(t.clone()).is_err() {
            counter!(instruments::EXPORTER_DROPPED, "exporter" => self.exporter, "reason" => "queue_full")
                .increment(1);
        }
    }
}
