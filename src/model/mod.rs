//! The internal data model: what receivers hand to processors.
//!
//! Receivers reduce each request to a summary holding only what the
//! processors read, grouped by resource (one group per `ResourceSpans`,
//! `ResourceLogs`, `ResourceMetrics`), so that a processor looks its series up
//! once per group rather than once per span. Strings are zero-copy slices of
//! the request body.

pub mod delivery;
pub mod spans;

use bytes::Bytes;

/// The service identity of one resource: `service.name` and the environment,
/// as raw UTF-8 checked by the decoder. An empty environment means the resource
/// named none; the pipeline's default environment applies.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResourceIdentity {
    /// `service.name`, or `unknown_service` when the resource has none.
    pub service: Bytes,
    /// `deployment.environment.name`, else `deployment.environment`, else empty.
    pub environment: Bytes,
}

/// The service name OpenTelemetry SDKs use when none is configured.
pub const UNKNOWN_SERVICE: &[u8] = b"unknown_service";

/// The requests (entry spans) of one resource within a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestGroup {
    /// Whose requests these are.
    pub identity: ResourceIdentity,
    /// Where this group's latencies sit in [`TraceSummary::latencies_ns`].
    pub latencies: std::ops::Range<usize>,
    /// How many of them are errors.
    pub errors: u64,
}

/// One trace export request, reduced to its requests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TraceSummary {
    /// One entry per resource that had at least one request.
    pub groups: Vec<RequestGroup>,
    /// Latency of every request, in nanoseconds, grouped by `groups`.
    pub latencies_ns: Vec<u64>,
    /// Every span in the request, entry spans or not.
    pub spans: u64,
    /// Spans refused as invalid (an entry span that ends before it starts).
    pub rejected_spans: u64,
    /// Set before decoding: read [`Self::details`] too, with these keys
    /// (a pipeline with the `dependencies` processor).
    pub detail_keys: Option<std::sync::Arc<spans::SpanKeys>>,
    /// With `detail_keys`: the spans the `dependencies` processor reads
    /// (CLIENT, PRODUCER, CONSUMER, SERVER with a parent, and any with the
    /// cache hit attribute), in request order.
    pub details: Vec<spans::SpanDetail>,
    /// The resources of [`Self::details`].
    pub detail_resources: Vec<ResourceIdentity>,
    /// The text attributes of [`Self::details`], each detail's together.
    pub detail_attributes: Vec<spans::Text>,
    /// The attribute values of [`Self::details`], one after another.
    pub detail_text: Vec<u8>,
}

impl TraceSummary {
    /// Requests in the batch.
    pub fn requests(&self) -> u64 {
        self.latencies_ns.len() as u64
    }

    /// Appends `other`'s requests after this one's, as if both had come in
    /// one export request.
    pub fn append(&mut self, other: TraceSummary) {
        let shift = self.latencies_ns.len();
        self.latencies_ns.extend_from_slice(&other.latencies_ns);
        self.groups
            .extend(other.groups.into_iter().map(|group| RequestGroup {
                latencies: group.latencies.start + shift..group.latencies.end + shift,
                ..group
            }));
        self.spans += other.spans;
        self.rejected_spans += other.rejected_spans;
        if other.details.is_empty() {
            return;
        }
        let resources = self.detail_resources.len() as u32;
        let attributes = self.detail_attributes.len() as u32;
        let text = self.detail_text.len() as u32;
        self.detail_resources.extend(other.detail_resources);
        self.detail_text.extend_from_slice(&other.detail_text);
        self.detail_attributes
            .extend(other.detail_attributes.into_iter().map(|t| spans::Text {
                start: t.start + text,
                ..t
            }));
        self.details.extend(other.details.into_iter().map(|mut d| {
            d.resource += resources;
            d.attributes.0 += attributes;
            d
        }));
    }

    /// The value of `d`'s text attribute `attr`; empty when it has none.
    pub fn text(&self, d: &spans::SpanDetail, attr: spans::Attr) -> &[u8] {
        let (first, n) = (d.attributes.0 as usize, d.attributes.1 as usize);
        let Some(t) = self
            .detail_attributes
            .get(first..first + n)
            .and_then(|all| all.iter().find(|t| t.attr == attr as u8))
        else {
            return &[];
        };
        let start = t.start as usize;
        self.detail_text
            .get(start..start + t.len as usize)
            .unwrap_or_default()
    }
}

/// Log records of one resource within a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogGroup {
    /// Whose records these are.
    pub identity: ResourceIdentity,
    /// Log records of the resource.
    pub records: u64,
    /// Records with severity ERROR or above (severity_number >= 17).
    pub errors: u64,
}

/// One logs export request, reduced to error counts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogSummary {
    /// One entry per resource.
    pub groups: Vec<LogGroup>,
    /// Every log record in the request.
    pub records: u64,
    /// Log records that describe a deployment.
    pub deployments: Vec<LogDeployment>,
}

/// A log record describing a deployment, by the OpenTelemetry semantic
/// conventions (`deployment.id`, `deployment.status`,
/// `deployment.environment.name`, `service.name`, `vcs.ref.head.revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogDeployment {
    /// `deployment.id`: the de-duplication key, when present.
    pub id: Option<String>,
    /// `deployment.status`, e.g. `succeeded` or `failed`.
    pub status: Option<String>,
    /// `service.name` on the record, overriding the resource's.
    pub service: Option<String>,
    /// `deployment.environment.name` on the record, overriding the resource's.
    pub environment: Option<String>,
    /// `vcs.ref.head.revision`: the change deployed.
    pub revision: Option<String>,
    /// The record's time (else its observed time), ns since the epoch.
    pub time: u64,
    /// The resource the record came from.
    pub resource: ResourceIdentity,
}

impl LogDeployment {
    /// The deployment as a delivery event; `default_environment` applies when
    /// neither the record nor its resource names one.
    pub fn to_event(&self, default_environment: &str) -> delivery::DeliveryEvent {
        use delivery::{DeliveryKind, Deployment, DeploymentOutcome, LinkedChange};
        let service = self
            .service
            .clone()
            .unwrap_or_else(|| String::from_utf8_lossy(&self.resource.service).into_owned());
        let environment = self.environment.clone().unwrap_or_else(|| {
            if self.resource.environment.is_empty() {
                default_environment.to_string()
            } else {
                String::from_utf8_lossy(&self.resource.environment).into_owned()
            }
        });
        let outcome = match self
            .status
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("failed" | "failure" | "error") => DeploymentOutcome::Failure,
            Some("rolled_back" | "rolledback" | "rollback") => DeploymentOutcome::Rollback,
            _ => DeploymentOutcome::Success,
        };
        let time = self.time.min(i64::MAX as u64) as i64;
        delivery::DeliveryEvent {
            id: self
                .id
                .clone()
                .unwrap_or_else(|| format!("otlp-log:{service}:{environment}:{time}")),
            time,
            kind: DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: delivery::service_name(&service).to_string(),
                environment,
                artifact: None,
                outcome,
                changes: self
                    .revision
                    .iter()
                    .map(|id| LinkedChange {
                        id: id.clone(),
                        time: None,
                    })
                    .collect(),
                revision: self.revision.clone(),
                source: delivery::Source::Otlp,
            }),
        }
    }
}

/// Data points of one resource within a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricGroup {
    /// Whose points these are.
    pub identity: ResourceIdentity,
    /// Data points of every metric of the resource.
    pub points: u64,
}

/// One metrics export request, reduced to what the processors read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MetricSummary {
    /// One entry per resource.
    pub groups: Vec<MetricGroup>,
    /// Every data point in the request.
    pub points: u64,
    /// CPU and memory utilization readings, for the alert rules.
    pub utilization: Vec<Utilization>,
    /// Queue lengths, of the metrics a `dependencies` processor names.
    pub queues: Vec<QueueReading>,
    /// Cache hit and miss counts, of the metrics a `dependencies` processor names.
    pub cache_counts: Vec<CacheReading>,
}

/// One cache hit or miss count reported in an OTLP metric.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheReading {
    /// The reporting service.
    pub identity: ResourceIdentity,
    /// The cache, as configured.
    pub cache: String,
    /// Hits (else misses).
    pub hits: bool,
    /// The point's attributes, `key=value` joined: which of the metric's
    /// series it is (a cumulative count is a series of its own).
    pub series: String,
    /// The count.
    pub value: f64,
    /// A cumulative count (a gauge or a cumulative sum), else a delta.
    pub cumulative: bool,
}

impl Eq for CacheReading {}

/// One queue length reported in an OTLP metric.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueReading {
    /// The reporting service.
    pub identity: ResourceIdentity,
    /// The metric's name.
    pub metric: String,
    /// The point's `messaging.destination.name` (else `topic`, else
    /// `queue`) attribute, or empty.
    pub destination: String,
    /// The value.
    pub value: f64,
}

impl Eq for QueueReading {}

/// What a utilization reading measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// `system.cpu.utilization`, `process.cpu.utilization`, `container.cpu.utilization`.
    Cpu,
    /// `system.memory.utilization`, `container.memory.utilization`.
    Memory,
}

/// One utilization reading (0..1) of one instance of a service.
#[derive(Debug, Clone, PartialEq)]
pub struct Utilization {
    /// The service it belongs to.
    pub identity: ResourceIdentity,
    /// The host, container or pod it was measured on (empty if the resource names none).
    pub instance: String,
    /// CPU or memory.
    pub resource: Resource,
    /// The reading, 0..1 (CPU: the busy share, averaged over logical CPUs).
    pub value: f64,
}

impl Eq for Utilization {}

/// A unit of work for a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Telemetry {
    /// A trace export request.
    Traces(TraceSummary),
    /// A logs export request.
    Logs(LogSummary),
    /// A metrics export request.
    Metrics(MetricSummary),
    /// Delivery events (CDEvents), applied all or nothing.
    Delivery(Vec<delivery::DeliveryEvent>),
}

impl Telemetry {
    /// Items carried: spans, log records, data points or events.
    pub fn items(&self) -> u64 {
        match self {
            Telemetry::Traces(t) => t.spans - t.rejected_spans,
            Telemetry::Logs(l) => l.records,
            Telemetry::Metrics(m) => m.points,
            Telemetry::Delivery(events) => events.len() as u64,
        }
    }
}

/// The three OTLP signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Log records.
    Logs,
    /// Metric data points.
    Metrics,
}

impl Signal {
    /// Label value and URL path segment: `traces`, `logs`, `metrics`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }

    /// What one item of the signal is called in OTLP responses and self-metrics.
    pub const fn item(self) -> &'static str {
        match self {
            Signal::Traces => "spans",
            Signal::Logs => "log_records",
            Signal::Metrics => "metric_points",
        }
    }
}
