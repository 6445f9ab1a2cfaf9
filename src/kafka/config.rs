//! `receivers.kafka` and `exporters.kafka`.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::model::Signal;
use crate::settings::ConfigDuration;

/// `receivers.kafka`: a consumer group member reading CDEvents and OTLP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaReceiverConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The consumer group; replicas with the same id share the partitions.
    /// Default `doraflow`.
    #[serde(default = "default_group_id")]
    pub group_id: String,
    /// The client id brokers see. Default `doraflow`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Topics to read and how each is encoded.
    pub topics: Vec<KafkaTopic>,
    /// Where a message that cannot be decoded goes, with the error and its
    /// origin in headers. Without it such messages are counted and skipped.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Where a group with no committed offset starts: `earliest` or
    /// `latest`. Default `earliest` (nothing already on the topic is missed).
    #[serde(default)]
    pub start_from: StartFrom,
    /// How often the offsets of applied messages are committed. Default `1s`.
    /// A crash re-reads at most this much, and de-duplication absorbs it.
    #[serde(default = "default_commit_interval")]
    pub commit_interval: ConfigDuration,
    /// How long the group waits for a silent member before moving its
    /// partitions. Default `45s` (librdkafka's default).
    #[serde(default = "default_session_timeout")]
    pub session_timeout: ConfigDuration,
    /// Heartbeat period; a third of `session_timeout` or less. Default `3s`.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval: ConfigDuration,
    /// Messages (or merged batches of consecutive trace messages of one
    /// partition) handed to the pipeline ahead of their acknowledgement.
    /// Default 64, at most the pipeline's `queue_size` is useful.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// At most this many consecutive OTLP trace messages of one partition,
    /// already fetched, are merged into one pipeline batch (one hand-over
    /// and acknowledgement rather than one each). Default 64; 1 hands every
    /// message over on its own.
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// Extra librdkafka properties (e.g. `security.protocol`, `fetch.max.bytes`).
    /// The ones doraflow's guarantees rest on cannot be set here.
    #[serde(default)]
    pub settings: KafkaSettings,
    /// The group's changelog topic: the state of record of what is
    /// consumed from Kafka, kept per input partition, so that a partition's
    /// state follows it to whichever replica owns it.
    #[serde(default)]
    pub changelog: ChangelogConfig,
}

/// `receivers.kafka.changelog`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogConfig {
    /// Default `true`. Off, the state of what is consumed is one replica's
    /// own (kept in `storage.dir` if there is one), as for a single
    /// instance: replicas in one group then each show part of a series.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The topic; default `<group_id>.changelog`. Created if missing
    /// (compacted, with as many partitions as the input topics).
    #[serde(default)]
    pub topic: Option<String>,
}

impl Default for ChangelogConfig {
    fn default() -> Self {
        ChangelogConfig {
            enabled: true,
            topic: None,
        }
    }
}

const fn default_true() -> bool {
    true
}

impl KafkaReceiverConfig {
    /// The changelog topic, if the changelog is on.
    pub fn changelog_topic(&self) -> Option<String> {
        self.changelog.enabled.then(|| {
            self.changelog
                .topic
                .clone()
                .unwrap_or_else(|| format!("{}.changelog", self.group_id))
        })
    }
}

/// One topic the receiver reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaTopic {
    /// The topic's name.
    pub topic: String,
    /// How its messages are encoded.
    pub format: KafkaFormat,
    /// For `otlp_proto` and `otlp_json`: which signal the topic carries.
    #[serde(default)]
    pub signal: Option<SignalName>,
}

/// How a topic's messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaFormat {
    /// A CDEvent per message: structured (the CloudEvent, a bare CDEvent or a
    /// JSON array of them) or binary mode (`ce_*` headers, the CDEvent in the value).
    Cdevents,
    /// An OTLP export request, protobuf (the OpenTelemetry Collector's Kafka
    /// exporter's default).
    OtlpProto,
    /// An OTLP export request, OTLP/JSON.
    OtlpJson,
}

impl KafkaFormat {
    /// The config spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            KafkaFormat::Cdevents => "cdevents",
            KafkaFormat::OtlpProto => "otlp_proto",
            KafkaFormat::OtlpJson => "otlp_json",
        }
    }
}

/// An OTLP signal, as spelled in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalName {
    /// Spans.
    Traces,
    /// Log records.
    Logs,
    /// Metric data points.
    Metrics,
}

impl From<SignalName> for Signal {
    fn from(s: SignalName) -> Signal {
        match s {
            SignalName::Traces => Signal::Traces,
            SignalName::Logs => Signal::Logs,
            SignalName::Metrics => Signal::Metrics,
        }
    }
}

/// Where a group without committed offsets starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartFrom {
    /// The oldest message still on the topic.
    #[default]
    Earliest,
    /// Only messages produced from now on.
    Latest,
}

fn default_group_id() -> String {
    "doraflow".to_string()
}
fn default_client_id() -> String {
    "doraflow".to_string()
}
fn default_commit_interval() -> ConfigDuration {
    ConfigDuration::from_secs(1)
}
fn default_session_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(45)
}
fn default_heartbeat_interval() -> ConfigDuration {
    ConfigDuration::from_secs(3)
}
const fn default_max_in_flight() -> usize {
    64
}
const fn default_max_batch_messages() -> usize {
    64
}

/// Extra librdkafka properties. Those holding secrets (`sasl.password`,
/// `ssl.key.password`, ...) must come from `${env:NAME}` or `${file:PATH}`
/// and are redacted from `Debug`.
#[derive(Clone, Default)]
pub struct KafkaSettings(BTreeMap<String, String>);

/// librdkafka properties whose values are secrets.
const SECRET_SETTINGS: &[&str] = &[
    "sasl.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl_key",
];

fn is_secret_setting(key: &str) -> bool {
    SECRET_SETTINGS.contains(&key)
}

impl<'de> Deserialize<'de> for KafkaSettings {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let settings = BTreeMap::<String, String>::deserialize(deserializer)?;
        for (key, value) in &settings {
            if is_secret_setting(key) && !crate::settings::secret_from_outside(value) {
                return Err(serde::de::Error::custom(format!(
                    "`{key}`: {}",
                    crate::settings::LITERAL_SECRET
                )));
            }
        }
        Ok(KafkaSettings(settings))
    }
}

impl std::ops::Deref for KafkaSettings {
    type Target = BTreeMap<String, String>;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'a> IntoIterator for &'a KafkaSettings {
    type Item = (&'a String, &'a String);
    type IntoIter = std::collections::btree_map::Iter<'a, String, String>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, value)| {
                let shown = if is_secret_setting(key) {
                    "<redacted>"
                } else {
                    value.as_str()
                };
                (key, shown)
            }))
            .finish()
    }
}

/// librdkafka properties doraflow sets itself: overriding them would break
/// at-least-once delivery, the group, or the idempotent producer.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "client.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "enable.partition.eof",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "compression.type",
    "compression.codec",
    "message.timeout.ms",
    "delivery.timeout.ms",
    // The changelog: partition p of every input topic to one member, and
    // the changelog read and written in transactions.
    "partition.assignment.strategy",
    "transactional.id",
    "isolation.level",
];

fn check_settings(path: &str, settings: &BTreeMap<String, String>, errors: &mut Vec<String>) {
    for key in settings.keys() {
        if RESERVED.contains(&key.as_str()) {
            errors.push(format!(
                "{path}.settings.{key}: set by doraflow itself (use the matching doraflow key, if any)"
            ));
        }
    }
}

fn check_brokers(path: &str, brokers: &str, errors: &mut Vec<String>) {
    if brokers.split(',').all(|b| b.trim().is_empty()) {
        errors.push(format!(
            "{path}.brokers: needs at least one `host:port` broker"
        ));
    }
}

impl KafkaReceiverConfig {
    /// Cross-field checks, each problem prefixed with its key path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        check_brokers(path, &self.brokers, errors);
        if self.group_id.trim().is_empty() {
            errors.push(format!("{path}.group_id: must not be empty"));
        }
        if self.topics.is_empty() {
            errors.push(format!("{path}.topics: at least one topic is needed"));
        }
        for (i, t) in self.topics.iter().enumerate() {
            let at = format!("{path}.topics[{i}]");
            if t.topic.trim().is_empty() {
                errors.push(format!("{at}.topic: must not be empty"));
            }
            if self.topics[..i].iter().any(|o| o.topic == t.topic) {
                errors.push(format!("{at}.topic: `{}` is listed twice", t.topic));
            }
            match (t.format, t.signal) {
                (KafkaFormat::Cdevents, Some(_)) => errors.push(format!(
                    "{at}.signal: only for `otlp_proto` and `otlp_json` topics"
                )),
                (KafkaFormat::OtlpProto | KafkaFormat::OtlpJson, None) => errors.push(format!(
                    "{at}.signal: `{}` needs one of traces, logs, metrics",
                    t.format.as_str()
                )),
                _ => {}
            }
            if self.dead_letter_topic.as_deref() == Some(t.topic.as_str()) {
                errors.push(format!(
                    "{path}.dead_letter_topic: `{}` is also read by the receiver",
                    t.topic
                ));
            }
        }
        if let Some(changelog) = self.changelog_topic()
            && (self.topics.iter().any(|t| t.topic == changelog)
                || self.dead_letter_topic.as_deref() == Some(changelog.as_str()))
        {
            errors.push(format!(
                "{path}.changelog.topic: `{changelog}` is an input or the dead-letter topic; the changelog needs a topic of its own"
            ));
        }
        if self.commit_interval.get().is_zero() {
            errors.push(format!("{path}.commit_interval: must be longer than 0"));
        }
        let session = self.session_timeout.get();
        if session < std::time::Duration::from_secs(1) {
            errors.push(format!("{path}.session_timeout: must be at least 1s"));
        }
        if self.heartbeat_interval.get().is_zero() || self.heartbeat_interval.get() * 3 > session {
            errors.push(format!(
                "{path}.heartbeat_interval: must be above 0 and at most a third of session_timeout"
            ));
        }
        if self.max_in_flight == 0 {
            errors.push(format!("{path}.max_in_flight: must be at least 1"));
        }
        if self.max_batch_messages == 0 {
            errors.push(format!("{path}.max_batch_messages: must be at least 1"));
        }
        check_settings(path, &self.settings, errors);
    }

    /// The topic's entry, by name.
    pub fn topic(&self, name: &str) -> Option<&KafkaTopic> {
        self.topics.iter().find(|t| t.topic == name)
    }
}

/// `exporters.kafka`: an idempotent producer forwarding OTLP (keyed by
/// `service.name`) and CDEvents (keyed by service), so that a sidecar tier
/// can feed a cluster tier partitioned by service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaExporterConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The client id brokers see. Default `doraflow`.
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Topic per kind of data.
    #[serde(default)]
    pub topics: ExportTopics,
    /// `none`, `gzip`, `lz4`, `snappy` or `zstd`. Default `none`.
    #[serde(default)]
    pub compression: Compression,
    /// Requests waiting for the producer; beyond it receivers push back.
    /// Default 256 (with librdkafka's own buffer of at most 64 MiB behind it).
    #[serde(default = "default_exporter_queue")]
    pub queue_size: usize,
    /// How long the producer keeps trying to deliver a message before it is
    /// counted as failed. Default `2m`.
    #[serde(default = "default_delivery_timeout")]
    pub delivery_timeout: ConfigDuration,
    /// Extra librdkafka properties (e.g. `linger.ms`, `security.protocol`).
    #[serde(default)]
    pub settings: KafkaSettings,
}

/// `exporters.kafka.topics`: the OpenTelemetry Collector's topic names by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportTopics {
    /// OTLP traces. Default `otlp_spans`.
    #[serde(default = "default_traces_topic")]
    pub traces: String,
    /// OTLP logs. Default `otlp_logs`.
    #[serde(default = "default_logs_topic")]
    pub logs: String,
    /// OTLP metrics. Default `otlp_metrics`.
    #[serde(default = "default_metrics_topic")]
    pub metrics: String,
    /// CDEvents, received and derived. Default `dora.events`.
    #[serde(default = "default_events_topic")]
    pub cdevents: String,
}

impl Default for ExportTopics {
    fn default() -> Self {
        ExportTopics {
            traces: default_traces_topic(),
            logs: default_logs_topic(),
            metrics: default_metrics_topic(),
            cdevents: default_events_topic(),
        }
    }
}

impl ExportTopics {
    /// The topic of an OTLP signal.
    pub fn of(&self, signal: Signal) -> &str {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Logs => &self.logs,
            Signal::Metrics => &self.metrics,
        }
    }

    fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("traces", &self.traces),
            ("logs", &self.logs),
            ("metrics", &self.metrics),
            ("cdevents", &self.cdevents),
        ]
    }
}

fn default_traces_topic() -> String {
    "otlp_spans".to_string()
}
fn default_logs_topic() -> String {
    "otlp_logs".to_string()
}
fn default_metrics_topic() -> String {
    "otlp_metrics".to_string()
}
fn default_events_topic() -> String {
    "dora.events".to_string()
}
const fn default_exporter_queue() -> usize {
    256
}
fn default_delivery_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(120)
}

/// Producer compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    /// Uncompressed.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// LZ4.
    Lz4,
    /// Snappy.
    Snappy,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// librdkafka's `compression.type` value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Lz4 => "lz4",
            Compression::Snappy => "snappy",
            Compression::Zstd => "zstd",
        }
    }
}

impl KafkaExporterConfig {
    /// Cross-field checks, each problem prefixed with its key path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        check_brokers(path, &self.brokers, errors);
        for (key, topic) in self.topics.all() {
            if topic.trim().is_empty() {
                errors.push(format!("{path}.topics.{key}: must not be empty"));
            }
        }
        if self.queue_size == 0 {
            errors.push(format!("{path}.queue_size: must be at least 1"));
        }
        if self.delivery_timeout.get() < std::time::Duration::from_secs(1) {
            errors.push(format!("{path}.delivery_timeout: must be at least 1s"));
        }
        check_settings(path, &self.settings, errors);
    }

    /// Every topic the exporter writes.
    pub fn written_topics(&self) -> Vec<&str> {
        self.topics.all().iter().map(|(_, t)| *t).collect()
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_yaml_with_env(text, |_| None).map_err(|e| match e {
            ConfigError::Invalid(errors) => errors.join("\n"),
            other => other.to_string(),
        })
    }

    #[test]
    fn a_cluster_member_with_defaults() {
        let config = parse(
            "receivers:
  kafka:
    brokers: \"k1:9092,k2:9092\"
    dead_letter_topic: dlq
    topics:
      - { topic: dora.events, format: cdevents }
      - { topic: otlp_spans, format: otlp_proto, signal: traces }
exporters:
  prometheus: {}
pipelines:
  main: { receivers: [kafka], exporters: [prometheus] }
",
        )
        .unwrap();
        let kafka = config.receivers.kafka.unwrap();
        assert_eq!(kafka.group_id, "doraflow");
        assert_eq!(kafka.commit_interval.as_str(), "1s");
        assert_eq!(kafka.session_timeout.as_str(), "45s");
        assert_eq!(kafka.max_in_flight, 64);
        assert_eq!(kafka.max_batch_messages, 64);
        assert_eq!(kafka.start_from, super::StartFrom::Earliest);
        assert_eq!(
            kafka.topic("otlp_spans").and_then(|t| t.signal),
            Some(super::SignalName::Traces)
        );
    }

    #[test]
    fn every_receiver_problem_is_named_with_its_path() {
        let err = parse(
            "receivers:
  kafka:
    brokers: \" \"
    group_id: \"\"
    dead_letter_topic: a
    session_timeout: 6s
    heartbeat_interval: 3s
    settings: { enable.auto.commit: \"true\", fetch.max.bytes: \"1048576\" }
    topics:
      - { topic: a, format: cdevents, signal: logs }
      - { topic: b, format: otlp_json }
      - { topic: b, format: otlp_proto, signal: metrics }
exporters:
  prometheus: {}
pipelines:
  main: { receivers: [kafka], exporters: [prometheus] }
",
        )
        .unwrap_err();
        for expected in [
            "receivers.kafka.brokers: needs at least one `host:port` broker",
            "receivers.kafka.group_id: must not be empty",
            "receivers.kafka.topics[0].signal: only for `otlp_proto` and `otlp_json` topics",
            "receivers.kafka.dead_letter_topic: `a` is also read by the receiver",
            "receivers.kafka.topics[1].signal: `otlp_json` needs one of traces, logs, metrics",
            "receivers.kafka.topics[2].topic: `b` is listed twice",
            "receivers.kafka.heartbeat_interval: must be above 0 and at most a third of session_timeout",
            "receivers.kafka.settings.enable.auto.commit: set by doraflow itself",
        ] {
            assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
        }
        assert!(!err.contains("fetch.max.bytes"), "{err}");
    }

    #[test]
    fn an_unknown_format_is_refused_with_the_choices() {
        let err = parse(
            "receivers:
  kafka:
    brokers: k:9092
    topics: [{ topic: a, format: avro }]
exporters:
  prometheus: {}
pipelines:
  main: { receivers: [kafka], exporters: [prometheus] }
",
        )
        .unwrap_err();
        assert!(err.starts_with("receivers.kafka.topics[0].format"), "{err}");
        assert!(err.contains("cdevents"), "{err}");
    }

    #[test]
    fn the_exporter_defaults_to_the_collectors_topics_and_refuses_a_loop() {
        let config = parse(
            "receivers:
  otlp: { grpc: {} }
exporters:
  kafka: { brokers: \"k:9092\" }
pipelines:
  main: { receivers: [otlp], exporters: [kafka] }
",
        )
        .unwrap();
        let kafka = config.exporters.kafka.unwrap();
        assert_eq!(
            kafka.written_topics(),
            ["otlp_spans", "otlp_logs", "otlp_metrics", "dora.events"]
        );
        assert_eq!(kafka.compression, super::Compression::None);
        assert_eq!(kafka.queue_size, 256);

        let err = parse(
            "receivers:
  kafka:
    brokers: k:9092
    topics: [{ topic: otlp_spans, format: otlp_proto, signal: traces }]
exporters:
  kafka: { brokers: \"k:9092\", queue_size: 0, compression: zstd }
pipelines:
  main: { receivers: [kafka], exporters: [kafka] }
",
        )
        .unwrap_err();
        assert!(
            err.contains("exporters.kafka.topics: `otlp_spans` is also read by receivers.kafka"),
            "{err}"
        );
        assert!(
            err.contains("exporters.kafka.queue_size: must be at least 1"),
            "{err}"
        );
    }
}
