#![warn(missing_docs)]
//! doraflow: OTLP telemetry and CDEvents in; DORA metrics, service health and
//! alerts out.
//!
//! # Layout
//! - [`settings`]: the configuration primitives every component uses
//!   (durations, secrets, credentials): the bottom layer.
//! - [`config`]: the YAML schema assembled from the components' own
//!   configurations, `${env:..}` substitution, validation.
//! - [`model`]: what receivers hand to processors (request summaries, span
//!   details, delivery events).
//! - [`otlp`]: OTLP decoding, protobuf (targeted reader) and JSON.
//! - [`cdevents`]: CDEvents decoding (v0.4 and v0.5) to delivery events.
//! - [`window`]: the rolling ring of sparse HDR-histogram slices.
//! - [`receivers`]: OTLP over gRPC and HTTP, the webhook and its native
//!   sources (GitHub, GitLab, PagerDuty, Alertmanager).
//! - [`processors`]: `red`, `dora`, `alerts`, `dependencies`.
//! - [`exporters`]: Prometheus (`/metrics` and the read API), the OTLP push,
//!   PagerDuty, Alertmanager, webhooks.
//! - [`kafka`]: the Kafka receiver (consumer group), exporter (producer) and
//!   the cluster tier's changelog.
//! - [`replay`]: `doraflow replay`, backfill from files.
//! - [`report`]: the DORA assessment report (Markdown, JSON, HTML) and the dashboard.
//! - [`memory`]: the memory limiter.
//! - [`storage`]: checkpoints and the delivery-event log in `storage.dir`.
//! - [`flow`]: the queue into the engine and the read side out of it,
//!   below every component.
//! - [`pipeline`]: builds components from config, wires channels, owns
//!   lifecycle; its engine owns every processor's state.
//! - [`tls`]: rustls server and client settings, with certificate reload.
//! - [`transport`]: HTTP serving with limits, bearer tokens, a gRPC codec of
//!   bytes: shared by receivers and exporters.
//! - [`instruments`]: every metric doraflow exports, declared once.
//! - [`clock`]: wall-clock time, injectable for tests.
//! - [`proto`]: doraflow's own protobuf messages (checkpoint formats).
//!
//! # The path of a span
//! 1. `receivers/otlp_grpc.rs` accepts an `Export` call (or
//!    `receivers/otlp_http.rs` a `POST /v1/traces`) and, frame by frame,
//!    hands the bytes to `otlp/mod.rs` ([`otlp::StreamDecode`]), whose
//!    targeted reader `otlp/wire.rs` reduces them to a
//!    [`model::TraceSummary`]: per resource, the entry spans' latencies and
//!    errors, and with a `dependencies` processor the span details
//!    (`model/spans.rs`).
//! 2. `receivers/mod.rs` (`export`) submits it to the pipeline's queue
//!    (`pipeline/mod.rs`, [`pipeline::PipelineSink`]) and waits until it is
//!    applied, to answer the client with the exact partial success.
//! 3. `pipeline/engine.rs` takes it off the queue: `dependencies`
//!    (`processors/dependencies/`: `naming.rs` names each call, `graph.rs`
//!    pairs spans into edges) reads the details, and the task of its owner
//!    (`pipeline/task.rs`: the local one, or a Kafka partition's) applies it
//!    to `red` (`processors/red.rs`, windows in `window.rs`).
//! 4. A scrape of `exporters/prometheus.rs` asks the engine for snapshots
//!    ([`pipeline::PipelineReader`]) and `exporters/exposition.rs` writes
//!    them as text; `exporters/otlp.rs` pushes the same families as OTLP.
//!    On the engine's clock, `processors/alerts.rs` evaluates the rules on
//!    the windows, and a transition goes to `exporters/pagerduty.rs`,
//!    `exporters/alertmanager.rs` and the webhook exporter.
//!
//! # The path of a delivery event
//! 1. `receivers/webhook.rs` accepts `POST /cdevents` (or a native source in
//!    `receivers/sources/`, which checks its signature and translates the
//!    payload into CDEvents), and `cdevents.rs` decodes it into
//!    [`model::delivery::DeliveryEvent`]s.
//! 2. The queue, as for spans; with `storage`, `pipeline/engine.rs` appends
//!    the batch to the log (`storage.rs`) and the sender gets its 202 once
//!    the log is fsynced.
//! 3. The task applies it to `dora` (`processors/dora/mod.rs`: the history;
//!    `levels.rs`: the performance levels; `state.rs`: checkpoints), which
//!    computes the four keys from the history whenever they are read: by
//!    `exporters/exposition.rs`, by `report/` (`render.rs`, `advice.rs`, the
//!    dashboard in `dashboard.rs`), and by the alert rules.
//! 4. With Kafka, the sidecar's `kafka/producer.rs` forwards it keyed by
//!    service, and the cluster tier's `kafka/consumer.rs` decodes it into
//!    its partition's task, whose changes `kafka/changelog.rs` writes so
//!    that another replica can take the partition over.

pub mod cdevents;
pub mod clock;
pub mod config;
pub mod exporters;
pub mod flow;
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
pub mod settings;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod window;

/// doraflow's own protobuf messages, generated from `proto/doraflow/v1/`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/doraflow.v1.rs"));
}
