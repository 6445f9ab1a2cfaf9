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

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use metrics::counter;
use tokio::sync::mpsc;

use crate::instruments;
use crate::processors::alerts::{State, Transition};

/// Checks the URL an exporter calls, at `key`: http(s) with a host, and no
/// credentials in it: a `user:password@` would be a secret written in the
/// config, and URLs show up in logs and error messages. `example` is shown
/// with a malformed URL; `auth` is where the exporter takes credentials
/// instead, if it does.
pub(crate) fn check_url(
    key: &str,
    url: &str,
    example: Option<&str>,
    auth: Option<&str>,
    errors: &mut Vec<String>,
) {
    match reqwest::Url::parse(url) {
        Ok(parsed) if !parsed.username().is_empty() || parsed.password().is_some() => {
            let instead = match auth {
                Some(auth) => format!(
                    "give them as {auth}, the secret from `${{env:NAME}}` or `${{file:PATH}}` ({})",
                    crate::settings::LITERAL_SECRET
                ),
                None => crate::settings::LITERAL_SECRET.to_string(),
            };
            errors.push(format!(
                "{key}: must not hold credentials (`user:password@`): {instead}"
            ));
        }
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
        _ => {
            let such_as = example.map(|e| format!(" such as {e}")).unwrap_or_default();
            errors.push(format!(
                "{key}: must be an http(s) URL{such_as}, got `{url}`"
            ));
        }
    }
}

/// The transitions handed to one alert exporter and not yet delivered (or
/// given up): what a checkpoint keeps of its queue, so that a restart while
/// PagerDuty cannot be reached does not lose the page.
#[derive(Clone, Default)]
pub struct Outbox(Arc<Mutex<OutboxState>>);

#[derive(Default)]
struct OutboxState {
    next: u64,
    pending: BTreeMap<u64, Transition>,
}

impl Outbox {
    fn hold(&self, t: Transition) -> u64 {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let id = state.next;
        state.next += 1;
        state.pending.insert(id, t);
        id
    }

    fn release(&self, id: u64) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .remove(&id);
    }

    /// What waits, oldest first.
    pub fn pending(&self) -> Vec<Transition> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .values()
            .cloned()
            .collect()
    }
}

/// A transition taken from an alert exporter's queue. It leaves the
/// exporter's [`Outbox`] when dropped: once delivered, refused or given up.
pub struct Queued {
    transition: Transition,
    id: u64,
    outbox: Outbox,
    /// Not a transition: the alert's series went to another replica, which
    /// goes on firing it; an exporter that re-sends what fires stops
    /// re-sending it, and sends nothing (no resolve).
    pub handed_over: bool,
}

impl std::ops::Deref for Queued {
    type Target = Transition;
    fn deref(&self) -> &Transition {
        &self.transition
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.outbox.release(self.id);
    }
}

/// The queue an alert exporter takes transitions from. The pipeline never
/// waits on it: a full queue drops the transition and counts it.
#[derive(Clone)]
pub struct AlertSink {
    exporter: &'static str,
    tx: mpsc::Sender<Queued>,
    outbox: Outbox,
}

impl AlertSink {
    /// A sink for `exporter` holding at most `capacity` transitions.
    pub fn new(exporter: &'static str, capacity: usize) -> (AlertSink, mpsc::Receiver<Queued>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            AlertSink {
                exporter,
                tx,
                outbox: Outbox::default(),
            },
            rx,
        )
    }

    /// The exporter's name (`pagerduty`, `alertmanager`, `webhook`).
    pub fn exporter(&self) -> &'static str {
        self.exporter
    }

    /// The transitions queued to this exporter and not yet delivered.
    pub fn undelivered(&self) -> Vec<Transition> {
        self.outbox.pending()
    }

    /// Whether this exporter keeps re-sending what fires (Alertmanager),
    /// and so must be told of alerts restored firing at start.
    pub fn resends_firing(&self) -> bool {
        self.exporter == "alertmanager"
    }

    /// Tells an exporter that re-sends what fires (Alertmanager) that
    /// these firing alerts are another replica's now: it stops re-sending
    /// them without resolving them. Others heard of them already and are
    /// told nothing.
    pub fn hand_over(&self, firing: &[Transition]) {
        if !self.resends_firing() {
            return;
        }
        for t in firing {
            let queued = Queued {
                transition: t.clone(),
                // Nothing to deliver, so nothing for the outbox to keep.
                id: u64::MAX,
                outbox: Outbox::default(),
                handed_over: true,
            };
            if self.tx.try_send(queued).is_err() {
                counter!(instruments::EXPORTER_DROPPED, "exporter" => self.exporter, "reason" => "queue_full")
                    .increment(1);
            }
        }
    }

    /// Queues a firing or resolved transition (pending ones page nobody).
    pub fn send(&self, t: &Transition) {
        if t.state == State::Pending {
            return;
        }
        let queued = Queued {
            transition: t.clone(),
            id: self.outbox.hold(t.clone()),
            outbox: self.outbox.clone(),
            handed_over: false,
        };
        // A transition refused here leaves the outbox as `queued` is dropped.
        if self.tx.try_send(queued).is_err() {
            counter!(instruments::EXPORTER_DROPPED, "exporter" => self.exporter, "reason" => "queue_full")
                .increment(1);
        }
    }
}
