//! Exporter `otlp`: pushes the computed figures as OTLP metrics to a
//! collector, over gRPC or HTTP (protobuf), every `interval`.
//!
//! What is pushed is what `/metrics` shows of the processors, walked by the
//! same code ([`exposition::write_dora`], [`exposition::write_red`]): the
//! `dora_*` and `dora_service_*` families and `doraflow_alerts_firing`, with
//! the Prometheus names, labels as attributes. Counters become cumulative
//! monotonic sums (integers), histograms cumulative histograms, the rest
//! gauges; a gauge without a value (`NaN` in the text) is left out. The
//! figures are exact at each push (the windows end at the push), so a push
//! that fails is not queued: it is retried with backoff until the next one
//! is due, which carries the newer figures. At shutdown, once the pipeline
//! has drained, one last push carries everything applied.
//!
//! The OpenTelemetry SDK's metrics (instruments recorded as data arrives,
//! aggregated by the SDK) do not fit figures computed whole at each push,
//! so the request is built from the OTLP protobuf types directly and sent
//! with tonic or reqwest, as the SDK's exporter does.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use metrics::counter;
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde::Deserialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::exporters::exposition::{self, Families, Kind};
use crate::flow::{Figures, PipelineReader};
use crate::instruments;
use crate::processors::alerts::State;
use crate::processors::dora::HistogramCounts;
use crate::settings::{ClientAuth, ConfigDuration};
use crate::transport::codec::RawCodec;

/// `exporters.otlp`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpExporterConfig {
    /// The collector: `http://host:4317` for gRPC, `http://host:4318` for
    /// HTTP (`/v1/metrics` is added unless the URL ends with it).
    pub endpoint: String,
    /// `grpc` (default) or `http/protobuf`.
    #[serde(default)]
    pub protocol: Protocol,
    /// How often the figures are pushed. Default `60s`.
    #[serde(default = "default_interval")]
    pub interval: ConfigDuration,
    /// How long one attempt may take. Default `10s`.
    #[serde(default = "default_timeout")]
    pub timeout: ConfigDuration,
    /// `gzip` or `none` (default).
    #[serde(default)]
    pub compression: Compression,
    /// Credentials: `{ bearer_token: … }` or `{ basic_auth: { username, password } }`.
    #[serde(default)]
    pub auth: Option<ClientAuth>,
    /// More headers (gRPC metadata) sent with every push, e.g. a tenant:
    /// `{ x-scope-orgid: team-a }`. Not for secrets: use `auth`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// TLS for an `https://` endpoint: extra CA, client certificate.
    #[serde(default)]
    pub tls: Option<crate::tls::ClientTls>,
}

/// `exporters.otlp.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP/gRPC.
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `exporters.otlp.compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Bodies as they are.
    #[default]
    None,
    /// gzip.
    Gzip,
}

fn default_interval() -> ConfigDuration {
    ConfigDuration::from_secs(60)
}

fn default_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

impl OtlpExporterConfig {
    /// Checks the values; every problem with its path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        super::check_url(
            &format!("{path}.endpoint"),
            &self.endpoint,
            Some("http://collector:4317"),
            Some(&format!("{path}.auth")),
            errors,
        );
        if self.interval.get().is_zero() {
            errors.push(format!("{path}.interval: must be longer than 0"));
        }
        if self.timeout.get().is_zero() {
            errors.push(format!("{path}.timeout: must be longer than 0"));
        }
        for (name, value) in &self.headers {
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
            if !valid_name {
                errors.push(format!(
                    "{path}.headers: `{name}` is not a valid header name (lowercase letters, digits, `-`, `_`, `.`)"
                ));
            } else if name == "authorization" {
                errors.push(format!(
                    "{path}.headers: set `authorization` with auth (bearer_token or basic_auth), whose secret comes from the environment or a file"
                ));
            }
            if value
                .bytes()
                .any(|b| !(b == b'\t' || (0x20..0x7f).contains(&b)))
            {
                errors.push(format!(
                    "{path}.headers.{name}: the value must be printable ASCII"
                ));
            }
        }
        if let Some(tls) = &self.tls {
            tls.validate(&format!("{path}.tls"), errors);
        }
        if let Some(auth) = &self.auth {
            auth.validate(&format!("{path}.auth"), errors);
        }
    }

    fn http_url(&self) -> String {
        let base = self.endpoint.trim_end_matches('/');
        if base.ends_with("/v1/metrics") {
            base.to_string()
        } else {
            format!("{base}/v1/metrics")
        }
    }
}

/// Data points in one request at most: a collector's default limit on a
/// request is 4 MiB, and a point with its attributes takes about 100 bytes
/// encoded, so 10,000 series (`red.max_series`' default) go in several.
pub const MAX_POINTS_PER_REQUEST: usize = 8_192;

/// Builds the OTLP requests from the families walked into it, encoding each
/// as soon as it holds [`MAX_POINTS_PER_REQUEST`] points: at most one
/// request's messages are held at a time (about 5 MB at the limit), the
/// rest only as encoded bytes.
struct Requests {
    /// The current request's metrics; the last is the family being written.
    metrics: Vec<Metric>,
    /// Points in the current request.
    points: usize,
    max_points: usize,
    /// The requests done, encoded.
    done: Vec<Bytes>,
    resource: Resource,
    scope: InstrumentationScope,
    /// Start of the cumulative sums and histograms: when doraflow started.
    start_ns: u64,
    /// When the figures were taken.
    now_ns: u64,
}

impl Requests {
    fn new(start_ns: u64, now_ns: u64, max_points: usize) -> Self {
        Requests {
            metrics: Vec::new(),
            points: 0,
            max_points: max_points.max(1),
            done: Vec::new(),
            resource: Resource {
                attributes: vec![
                    string_attribute("service.name", "doraflow"),
                    string_attribute("service.version", env!("CARGO_PKG_VERSION")),
                    string_attribute("host.name", &host_name()),
                ],
                ..Default::default()
            },
            scope: InstrumentationScope {
                name: "doraflow".to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
                ..Default::default()
            },
            start_ns,
            now_ns,
        }
    }

    /// Makes room for one more point: a full request is encoded and a new
    /// one begun, continuing the current family.
    fn room(&mut self) {
        if self.points < self.max_points {
            return;
        }
        let carry_on = self.metrics.last().map(empty_like);
        self.encode();
        self.metrics.extend(carry_on);
    }

    /// Encodes the current request, if it holds anything.
    fn encode(&mut self) {
        // A family with nothing in it says nothing: leave it out.
        self.metrics.retain(|m| points(m) > 0);
        if self.metrics.is_empty() {
            return;
        }
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(self.scope.clone()),
                    metrics: std::mem::take(&mut self.metrics),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        self.done.push(Bytes::from(request.encode_to_vec()));
        self.points = 0;
    }

    fn finish(mut self) -> Vec<Bytes> {
        self.encode();
        self.done
    }
}

fn points(metric: &Metric) -> usize {
    match &metric.data {
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        _ => 0,
    }
}

/// `metric` without its points: the same family, continued.
fn empty_like(metric: &Metric) -> Metric {
    let data = metric.data.as_ref().map(|data| match data {
        metric::Data::Sum(s) => metric::Data::Sum(Sum {
            data_points: Vec::new(),
            ..*s
        }),
        metric::Data::Histogram(h) => metric::Data::Histogram(Histogram {
            data_points: Vec::new(),
            ..*h
        }),
        _ => metric::Data::Gauge(Gauge::default()),
    });
    Metric {
        name: metric.name.clone(),
        description: metric.description.clone(),
        unit: metric.unit.clone(),
        metadata: Vec::new(),
        data,
    }
}

fn attributes(labels: &[(&str, &str)]) -> Vec<KeyValue> {
    labels.iter().map(|(k, v)| string_attribute(k, v)).collect()
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..Default::default()
    }
}

/// The unit of a family, from its name's suffix (UCUM, as OTLP wants).
fn unit(name: &str) -> &'static str {
    if name.ends_with("_seconds") {
        "s"
    } else if name.ends_with("_per_day") {
        "1/d"
    } else if name.ends_with("_ratio") {
        "1"
    } else {
        ""
    }
}

impl Families for Requests {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        let data = match kind {
            Kind::Counter => metric::Data::Sum(Sum {
                data_points: Vec::new(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            }),
            Kind::Gauge => metric::Data::Gauge(Gauge::default()),
            Kind::Histogram => metric::Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            }),
        };
        self.metrics.push(Metric {
            name: name.to_string(),
            description: help.to_string(),
            unit: unit(name).to_string(),
            data: Some(data),
            ..Default::default()
        });
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: Option<f64>) {
        let Some(value) = value.filter(|v| v.is_finite()) else {
            return;
        };
        self.room();
        let (start_ns, now_ns) = (self.start_ns, self.now_ns);
        match self.metrics.last_mut().and_then(|m| m.data.as_mut()) {
            Some(metric::Data::Sum(sum)) => sum.data_points.push(NumberDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsInt(value as i64)),
                ..Default::default()
            }),
            Some(metric::Data::Gauge(gauge)) => gauge.data_points.push(NumberDataPoint {
                attributes: attributes(labels),
                time_unix_nano: now_ns,
                value: Some(number_data_point::Value::AsDouble(value)),
                ..Default::default()
            }),
            _ => {
                debug_assert!(false, "a sample outside a counter or gauge family");
                return;
            }
        }
        self.points += 1;
    }

    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], counts: &HistogramCounts) {
        self.room();
        let (start_ns, now_ns) = (self.start_ns, self.now_ns);
        if let Some(metric::Data::Histogram(histogram)) =
            self.metrics.last_mut().and_then(|m| m.data.as_mut())
        {
            histogram.data_points.push(HistogramDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                count: counts.count,
                sum: Some(counts.sum),
                // One count per bound, then the overflow: as OTLP has them.
                bucket_counts: counts.buckets.clone(),
                explicit_bounds: bounds.to_vec(),
                ..Default::default()
            });
            self.points += 1;
        }
    }
}

/// The OTLP requests, encoded, that push `figures` taken at `now_ns`, sums
/// counted from `start_ns`: one, or several of at most
/// [`MAX_POINTS_PER_REQUEST`] data points each.
pub fn requests(figures: &Figures, start_ns: u64, now_ns: u64) -> Vec<Bytes> {
    requests_of(figures, start_ns, now_ns, MAX_POINTS_PER_REQUEST)
}

fn requests_of(figures: &Figures, start_ns: u64, now_ns: u64, max_points: usize) -> Vec<Bytes> {
    let mut out = Requests::new(start_ns, now_ns, max_points);
    if let Some(red) = &figures.red {
        exposition::write_red(red, &mut out);
    }
    if let Some(dependencies) = &figures.dependencies {
        exposition::write_dependencies(dependencies, &mut out);
    }
    if let Some(dora) = &figures.dora {
        exposition::write_dora(dora, &mut out);
    }
    if let Some(alerts) = &figures.alerts {
        out.family(
            instruments::ALERTS_FIRING,
            Kind::Gauge,
            "Alerts firing now (1); pending and resolved alerts are not sent.",
        );
        for a in alerts.iter().filter(|a| a.state == State::Firing) {
            out.sample(
                &[
                    ("alertname", a.alertname),
                    ("service", &a.service),
                    ("environment", &a.environment),
                    ("severity", a.severity.as_str()),
                ],
                Some(1.0),
            );
        }
    }
    out.finish()
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// Why a push failed.
#[derive(Debug)]
enum PushError {
    /// Worth trying again (network, 429/502/503/504, UNAVAILABLE, ...).
    Retryable(String),
    /// The collector refused the request itself; it would refuse it again.
    Rejected(String),
}

/// `MetricsService/Export`: the requests are encoded already, so they go
/// through tonic as bytes (a retry sends the same bytes again).
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";

/// Where pushes go.
enum Client {
    Grpc(tonic::client::Grpc<tonic::transport::Channel>),
    Http {
        client: reqwest::Client,
        url: String,
    },
}

impl Client {
    fn new(config: &OtlpExporterConfig) -> anyhow::Result<Client> {
        let timeout = config.timeout.get();
        match config.protocol {
            Protocol::Grpc => {
                let mut endpoint =
                    tonic::transport::Endpoint::from_shared(config.endpoint.clone())?
                        .timeout(timeout)
                        .connect_timeout(timeout);
                if config.endpoint.starts_with("https://") {
                    endpoint = endpoint.tls_config(grpc_tls(config.tls.as_ref())?)?;
                }
                let mut client = tonic::client::Grpc::new(endpoint.connect_lazy())
                    .max_decoding_message_size(4 << 20);
                if config.compression == Compression::Gzip {
                    client = client.send_compressed(tonic::codec::CompressionEncoding::Gzip);
                }
                Ok(Client::Grpc(client))
            }
            Protocol::HttpProtobuf => Ok(Client::Http {
                client: crate::tls::http_client(config.tls.as_ref(), timeout)?,
                url: config.http_url(),
            }),
        }
    }

    async fn push(
        &mut self,
        config: &OtlpExporterConfig,
        request: &Bytes,
    ) -> Result<(), PushError> {
        let response = match self {
            Client::Grpc(client) => {
                let mut call = tonic::Request::new(request.clone());
                let metadata = call.metadata_mut();
                for (name, value) in &config.headers {
                    // Both were checked when the config was read.
                    if let (Ok(name), Ok(value)) = (
                        tonic::metadata::MetadataKey::from_bytes(name.as_bytes()),
                        value.parse(),
                    ) {
                        metadata.insert(name, value);
                    }
                }
                if let Some(value) = config.auth.as_ref().and_then(ClientAuth::header_value)
                    && let Ok(value) = value.parse()
                {
                    metadata.insert("authorization", value);
                }
                client
                    .ready()
                    .await
                    .map_err(|e| PushError::Retryable(format!("{e}")))?;
                let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
                match client.unary(call, path, RawCodec).await {
                    Ok(response) => ExportMetricsServiceResponse::decode(response.into_inner())
                        .unwrap_or_default(),
                    Err(status) => return Err(grpc_error(&status)),
                }
            }
            Client::Http { client, url } => {
                let mut call = client
                    .post(url.as_str())
                    .header("content-type", "application/x-protobuf");
                let body = match config.compression {
                    Compression::None => request.clone(),
                    Compression::Gzip => {
                        call = call.header("content-encoding", "gzip");
                        Bytes::from(gzip(request))
                    }
                };
                for (name, value) in &config.headers {
                    call = call.header(name, value);
                }
                if let Some(value) = config.auth.as_ref().and_then(ClientAuth::header_value) {
                    call = call.header("authorization", value);
                }
                let response = call
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| PushError::Retryable(format!("{e}")))?;
                let status = response.status();
                let bytes = response.bytes().await.unwrap_or_default();
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
                    let problem = format!("HTTP {status}: {}", text.trim());
                    return Err(match status.as_u16() {
                        429 | 502 | 503 | 504 => PushError::Retryable(problem),
                        _ => PushError::Rejected(problem),
                    });
                }
                ExportMetricsServiceResponse::decode(bytes).unwrap_or_default()
            }
        };
        if let Some(partial) = response.partial_success
            && partial.rejected_data_points > 0
        {
            tracing::warn!(
                rejected = partial.rejected_data_points,
                message = partial.error_message,
                "the collector rejected part of the OTLP metrics push"
            );
        }
        Ok(())
    }
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(body);
    encoder.finish().unwrap_or_default()
}

/// The retryable gRPC codes of the OTLP specification; RESOURCE_EXHAUSTED
/// only when the server says when to retry (`RetryInfo`).
fn grpc_error(status: &tonic::Status) -> PushError {
    use tonic::Code;
    use tonic_types::StatusExt;
    let problem = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => PushError::Retryable(problem),
        Code::ResourceExhausted if status.get_details_retry_info().is_some() => {
            PushError::Retryable(problem)
        }
        _ => PushError::Rejected(problem),
    }
}

fn grpc_tls(
    tls: Option<&crate::tls::ClientTls>,
) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
    let mut config = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some(tls) = tls {
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            config = config.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            let cert = std::fs::read(cert)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?;
            let key = std::fs::read(key)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?;
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
    }
    Ok(config)
}

/// How long the last push, at shutdown, is retried.
const LAST_PUSH_RETRIES: Duration = Duration::from_secs(5);

/// The first wait before a retry, doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Pushes `figures` until it goes through, is refused, or `deadline` comes
/// (when the next push is due, or the shutdown's limit).
async fn push_until(
    client: &mut Client,
    config: &OtlpExporterConfig,
    request: &Bytes,
    deadline: tokio::time::Instant,
    last: bool,
) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        match client.push(config, request).await {
            Ok(()) => {
                counter!(instruments::EXPORTER_SENT, "exporter" => "otlp").increment(1);
                return;
            }
            Err(PushError::Rejected(problem)) => {
                tracing::warn!(problem, "the collector refused the OTLP metrics push");
                counter!(instruments::EXPORTER_FAILED, "exporter" => "otlp", "reason" => "rejected")
                    .increment(1);
                counter!(instruments::EXPORTER_DROPPED, "exporter" => "otlp", "reason" => "rejected")
                    .increment(1);
                return;
            }
            Err(PushError::Retryable(problem)) => {
                counter!(instruments::EXPORTER_FAILED, "exporter" => "otlp", "reason" => "retryable")
                    .increment(1);
                if tokio::time::Instant::now() + backoff >= deadline {
                    if last {
                        tracing::warn!(problem, "the last OTLP metrics push, at shutdown, failed");
                    } else {
                        tracing::warn!(
                            problem,
                            "OTLP metrics push failed; the next push carries newer figures"
                        );
                    }
                    counter!(instruments::EXPORTER_DROPPED, "exporter" => "otlp", "reason" => "retries_exhausted")
                        .increment(1);
                    return;
                }
                tracing::debug!(problem, ?backoff, "OTLP metrics push failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Pushes each of `requests` in turn (see [`push_until`]).
async fn push_all(
    client: &mut Client,
    config: &OtlpExporterConfig,
    requests: &[Bytes],
    deadline: tokio::time::Instant,
    last: bool,
) {
    for request in requests {
        push_until(client, config, request, deadline, last).await;
    }
}

fn now_ns() -> u64 {
    crate::clock::Clock::now_ns(&crate::clock::SystemClock)
}

/// Starts the exporter: a push every `interval` of what `reader` shows, and
/// a last one of `last` (the figures once the pipeline has drained), if it
/// comes before `stop`.
pub fn start(
    config: OtlpExporterConfig,
    reader: PipelineReader,
    last: oneshot::Receiver<Figures>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut client = Client::new(&config)?;
    let start_ns = now_ns();
    Ok(tokio::spawn(async move {
        let every = config.interval.get();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = last;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                figures = &mut last => {
                    if let Ok(figures) = figures {
                        let requests = requests(&figures, start_ns, now_ns());
                        // Retried for a few seconds at most: a collector that is
                        // down must not hold the shutdown up for long.
                        let deadline = tokio::time::Instant::now() + every.min(LAST_PUSH_RETRIES);
                        tokio::select! {
                            _ = stop.cancelled() => {}
                            _ = push_all(&mut client, &config, &requests, deadline, true) => {}
                        }
                    }
                    return;
                }
                _ = tick.tick() => {
                    let Some(figures) = reader.figures().await else { continue };
                    let requests = requests(&figures, start_ns, now_ns());
                    let deadline = tokio::time::Instant::now() + every;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = push_all(&mut client, &config, &requests, deadline, false) => {}
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::processors::alerts::{ActiveAlert, Severity};
    use crate::processors::red::{RedSnapshot, SeriesSnapshot, Totals};
    use crate::window::WindowStats;

    fn attrs(point: &[KeyValue]) -> Vec<(String, String)> {
        point
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    other => panic!("not a string: {other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn alert(alertname: &'static str, state: State) -> ActiveAlert {
        ActiveAlert {
            alertname,
            service: "checkout".into(),
            environment: "prod".into(),
            state,
            since: 0,
            value: 0.05,
            threshold: 0.01,
            severity: Severity::Critical,
            summary: String::new(),
        }
    }

    #[test]
    fn figures_become_sums_gauges_and_firing_alerts() {
        let figures = Figures {
            red: Some(RedSnapshot {
                window: "5m".into(),
                series: vec![
                    SeriesSnapshot {
                        service: "checkout".into(),
                        environment: "prod".into(),
                        stats: WindowStats {
                            requests: 8,
                            errors: 2,
                            quantiles_us: Some([1_500, 250_000, 2_000_000]),
                        },
                        totals: Totals {
                            requests: 10,
                            errors: 3,
                            log_errors: 0,
                        },
                    },
                    SeriesSnapshot {
                        service: "cart".into(),
                        environment: "dev".into(),
                        stats: WindowStats::default(),
                        totals: Totals::default(),
                    },
                ],
                window_bytes: 0,
            }),
            dora: None,
            alerts: Some(vec![
                alert("HighErrorRate", State::Firing),
                alert("HighLatency", State::Pending),
            ]),
            dependencies: None,
        };
        let parts = requests(&figures, 100, 200);
        assert_eq!(parts.len(), 1);
        let request = ExportMetricsServiceRequest::decode(parts[0].clone()).unwrap();
        let rm = &request.resource_metrics[0];
        let resource = attrs(&rm.resource.as_ref().unwrap().attributes);
        assert_eq!(resource[0], ("service.name".into(), "doraflow".into()));
        let metrics = &rm.scope_metrics[0].metrics;
        let names: Vec<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dora_service_requests_total",
                "dora_service_errors_total",
                "dora_service_log_errors_total",
                "dora_service_error_ratio",
                "dora_service_latency_seconds",
                "doraflow_alerts_firing",
            ]
        );

        let Some(metric::Data::Sum(requests)) = &metrics[0].data else {
            panic!("requests_total is not a sum: {:?}", metrics[0]);
        };
        assert!(requests.is_monotonic);
        assert_eq!(
            requests.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let values: Vec<_> = requests
            .data_points
            .iter()
            .map(|p| {
                (
                    attrs(&p.attributes),
                    p.value,
                    p.start_time_unix_nano,
                    p.time_unix_nano,
                )
            })
            .collect();
        assert_eq!(
            values,
            [
                (
                    pairs(&[("service", "checkout"), ("environment", "prod")]),
                    Some(number_data_point::Value::AsInt(10)),
                    100,
                    200
                ),
                (
                    pairs(&[("service", "cart"), ("environment", "dev")]),
                    Some(number_data_point::Value::AsInt(0)),
                    100,
                    200
                ),
            ]
        );

        // A ratio without requests has no value: no point, not NaN.
        let Some(metric::Data::Gauge(ratio)) = &metrics[3].data else {
            panic!("error_ratio is not a gauge");
        };
        assert_eq!(metrics[3].unit, "1");
        assert_eq!(ratio.data_points.len(), 1);
        assert_eq!(
            attrs(&ratio.data_points[0].attributes),
            pairs(&[
                ("service", "checkout"),
                ("environment", "prod"),
                ("window", "5m")
            ])
        );
        assert_eq!(
            ratio.data_points[0].value,
            Some(number_data_point::Value::AsDouble(0.25))
        );

        let Some(metric::Data::Gauge(latency)) = &metrics[4].data else {
            panic!("latency is not a gauge");
        };
        assert_eq!(metrics[4].unit, "s");
        let latency: Vec<_> = latency
            .data_points
            .iter()
            .map(|p| (attrs(&p.attributes)[3].1.clone(), p.value))
            .collect();
        assert_eq!(
            latency,
            [
                (
                    "0.5".into(),
                    Some(number_data_point::Value::AsDouble(0.0015))
                ),
                (
                    "0.95".into(),
                    Some(number_data_point::Value::AsDouble(0.25))
                ),
                ("0.99".into(), Some(number_data_point::Value::AsDouble(2.0))),
            ]
        );

        let Some(metric::Data::Gauge(firing)) = &metrics[5].data else {
            panic!("alerts_firing is not a gauge");
        };
        assert_eq!(firing.data_points.len(), 1);
        assert_eq!(
            attrs(&firing.data_points[0].attributes),
            pairs(&[
                ("alertname", "HighErrorRate"),
                ("service", "checkout"),
                ("environment", "prod"),
                ("severity", "critical"),
            ])
        );
    }

    #[test]
    fn histograms_keep_their_buckets_and_the_overflow() {
        let mut out = Requests::new(1, 2, 100);
        out.family("lead_seconds", Kind::Histogram, "help");
        let counts = HistogramCounts {
            buckets: vec![1, 0, 2],
            sum: 75.0,
            count: 3,
        };
        out.histogram(&[("service", "a")], &[10.0, 20.0], &counts);
        let Some(metric::Data::Histogram(h)) = &out.metrics[0].data else {
            panic!("not a histogram");
        };
        assert_eq!(
            h.aggregation_temporality,
            AggregationTemporality::Cumulative as i32
        );
        let point = &h.data_points[0];
        assert_eq!(point.bucket_counts, [1, 0, 2]);
        assert_eq!(point.explicit_bounds, [10.0, 20.0]);
        assert_eq!((point.count, point.sum), (3, Some(75.0)));
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (1, 2));
    }

    #[test]
    fn retryable_grpc_codes_follow_the_otlp_specification() {
        let retryable =
            |status: tonic::Status| matches!(grpc_error(&status), PushError::Retryable(_));
        assert!(retryable(tonic::Status::unavailable("down")));
        assert!(retryable(tonic::Status::deadline_exceeded("slow")));
        assert!(!retryable(tonic::Status::invalid_argument("bad")));
        assert!(!retryable(tonic::Status::unauthenticated("who")));
        // RESOURCE_EXHAUSTED only with RetryInfo.
        assert!(!retryable(tonic::Status::resource_exhausted("full")));
        use tonic_types::{ErrorDetails, StatusExt};
        assert!(retryable(tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(1))),
        )));
    }

    /// Eight points, at most three a request: cut 3 + 3 + 2, a family
    /// continued in the next request where it is cut, nothing lost or moved.
    #[test]
    fn large_pushes_are_cut_into_requests_in_order() {
        let write = |out: &mut Requests| {
            out.family("a_total", Kind::Counter, "a");
            for i in 0..5 {
                out.sample(&[("i", &i.to_string())], Some(i as f64));
            }
            out.family("empty", Kind::Gauge, "nothing");
            out.sample(&[], None);
            out.family("b", Kind::Gauge, "b");
            for i in 5..8 {
                out.sample(&[("i", &i.to_string())], Some(i as f64));
            }
        };
        let shape = |max: usize| -> Vec<Vec<(String, Vec<i64>)>> {
            let mut out = Requests::new(1, 2, max);
            write(&mut out);
            out.finish()
                .into_iter()
                .map(|bytes| {
                    let r = ExportMetricsServiceRequest::decode(bytes).unwrap();
                    assert_eq!(
                        attrs(&r.resource_metrics[0].resource.as_ref().unwrap().attributes)[0].1,
                        "doraflow"
                    );
                    r.resource_metrics[0].scope_metrics[0]
                        .metrics
                        .iter()
                        .map(|m| {
                            let values = match &m.data {
                                Some(metric::Data::Sum(s)) => {
                                    assert!(s.is_monotonic);
                                    s.data_points.clone()
                                }
                                Some(metric::Data::Gauge(g)) => g.data_points.clone(),
                                _ => Vec::new(),
                            }
                            .iter()
                            .map(|p| match p.value {
                                Some(number_data_point::Value::AsInt(i)) => i,
                                Some(number_data_point::Value::AsDouble(d)) => d as i64,
                                None => -1,
                            })
                            .collect();
                            (m.name.clone(), values)
                        })
                        .collect()
                })
                .collect()
        };
        let name = |n: &str| n.to_string();
        assert_eq!(
            shape(8),
            [vec![
                (name("a_total"), vec![0, 1, 2, 3, 4]),
                (name("b"), vec![5, 6, 7])
            ]]
        );
        assert_eq!(
            shape(3),
            [
                vec![(name("a_total"), vec![0, 1, 2])],
                vec![(name("a_total"), vec![3, 4]), (name("b"), vec![5])],
                vec![(name("b"), vec![6, 7])],
            ]
        );
    }

    #[test]
    fn the_http_url_gets_the_metrics_path_once() {
        let mut config: OtlpExporterConfig =
            serde_saphyr::from_str("endpoint: http://c:4318").unwrap();
        assert_eq!(config.http_url(), "http://c:4318/v1/metrics");
        config.endpoint = "http://c:4318/otlp/v1/metrics".into();
        assert_eq!(config.http_url(), "http://c:4318/otlp/v1/metrics");
        config.endpoint = "http://c:4318/".into();
        assert_eq!(config.http_url(), "http://c:4318/v1/metrics");
    }
}
