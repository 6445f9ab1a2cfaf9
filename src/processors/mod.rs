//! Processors: what doraflow computes from the received data.
//!
//! - [`red`]: per-(service, environment) requests, errors and latency.
//! - [`dependencies`]: what services call (databases, peers, queues,
//!   caches) and the service graph.
//! - [`dora`]: the four DORA metrics from delivery events.
//! - [`alerts`]: the assessment's alert rules on the current state.

pub mod alerts;
pub mod dependencies;
pub mod dora;
pub mod red;

/// What a processor did with one batch, reported back to the receiver so the
/// client gets an exact OTLP partial-success answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Items refused (e.g. spans of a new series beyond `max_series`).
    pub refused: u64,
    /// Why, for the client.
    pub reason: Option<String>,
}
