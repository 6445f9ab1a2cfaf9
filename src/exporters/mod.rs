//! Exporters: where results go.
//!
//! - [`prometheus`]: `/metrics` (text exposition), `/healthz`, `/readyz`, `/api/v1/dora`.
//! - [`exposition`]: the text format of the DORA families.
//! - [`pagerduty`]: alert transitions to the PagerDuty Events API v2.
//! - [`alertmanager`]: alert transitions to Alertmanager, and as Alertmanager webhooks.

pub mod alertmanager;
pub mod exposition;
pub mod pagerduty;
pub mod prometheus;

use metrics::counter;
use tokio::sync::mpsc;

use crate::instruments;
use crate::processors::alerts::{State, Transition};

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
