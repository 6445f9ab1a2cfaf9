#![warn(missing_docs)]
//! doraflow: OTLP telemetry and CDEvents in; DORA metrics, service health and
//! alerts out.
//!
//! # Layout
//! - [`config`]: the YAML schema, `${env:..}` substitution, durations, validation.
//! - [`model`]: what receivers hand to processors (request summaries).
//! - [`otlp`]: OTLP decoding, protobuf (targeted reader) and JSON.
//! - [`cdevents`]: CDEvents decoding (v0.4 and v0.5) to delivery events.
//! - [`window`]: the rolling ring of sparse HDR-histogram slices.
//! - [`receivers`]: OTLP over gRPC and HTTP.
//! - [`processors`]: `red` (requests, errors, duration per service).
//! - [`exporters`]: Prometheus `/metrics`, `/healthz`, `/readyz`.
//! - [`kafka`]: the Kafka receiver (consumer group) and exporter (producer).
//! - [`replay`]: `doraflow replay`, backfill from files.
//! - [`report`]: the DORA assessment report (Markdown, JSON, HTML).
//! - [`memory`]: the memory limiter.
//! - [`storage`]: checkpoints and the delivery-event log in `storage.dir`.
//! - [`pipeline`]: builds components from config, wires channels, owns lifecycle.
//! - [`instruments`]: every metric doraflow exports, declared once.
//! - [`clock`]: wall-clock time, injectable for tests.
//! - [`proto`]: doraflow's own protobuf messages (checkpoint formats).

pub mod cdevents;
pub mod clock;
pub mod config;
pub mod exporters;
pub mod instruments;
pub mod kafka;
pub mod memory;
pub mod model;
pub mod otlp;
pub mod pipeline;
pub mod processors;
pub mod receivers;
pub mod replay;
pub mod report;
pub mod storage;
pub mod tls;
pub mod window;

/// doraflow's own protobuf messages, generated from `proto/doraflow/v1/`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/doraflow.v1.rs"));
}
