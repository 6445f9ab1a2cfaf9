//! The YAML configuration: schema, `${env:..}` substitution, durations and validation.
//!
//! The structs here are the documentation of every key: each field says its
//! unit, default and limits. Parsing rejects unknown keys and names the key
//! path (`receivers.otlp.grpc.bogus`); [`Config::validate`] then collects every
//! cross-field problem in one run, each prefixed with its path.

mod env;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Deserialize;

pub use crate::exporters::prometheus::PrometheusConfig;
pub use crate::processors::dora::config::{DeployPipeline, DerivedIncidentsConfig, DoraConfig};
pub use crate::processors::red::RedConfig;
use crate::receivers::config::check_limits;
pub use crate::receivers::config::{
    GrpcServerConfig, HttpServerConfig, OtlpReceiverConfig, WebhookReceiverConfig, WebhookSignature,
};
pub use crate::settings::{
    BasicAuth, ClientAuth, ConfigDuration, DurationError, ReceiverAuth, Secret,
};
pub use env::{EnvError, substitute, substitute_recording};

/// The embedded default pipeline, run by `doraflow` with no arguments.
pub const DEFAULT_PIPELINE_YAML: &str = include_str!("../../pipelines/default.yaml");

/// Everything wrong with a configuration, each problem on its own line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `${env:..}` substitution failed.
    #[error("{0}")]
    Env(#[from] EnvError),
    /// The YAML does not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// Key path of the problem, e.g. `receivers.otlp.grpc.endpoint`.
        path: String,
        /// The parser's message, with line, column and the offending text.
        message: String,
    },
    /// Cross-field checks failed; one message per problem, each with its path.
    #[error("{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where data comes in.
    #[serde(default)]
    pub receivers: Receivers,
    /// What is computed.
    #[serde(default)]
    pub processors: Processors,
    /// Where results go.
    #[serde(default)]
    pub exporters: Exporters,
    /// Where the processors' state is checkpointed; without it, state
    /// lives in memory only.
    #[serde(default)]
    pub storage: Option<crate::storage::StorageConfig>,
    /// Which receivers, processors and exporters run together.
    pub pipelines: BTreeMap<String, PipelineConfig>,
}

/// Configured receivers, by kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receivers {
    /// OTLP over gRPC and HTTP.
    pub otlp: Option<OtlpReceiverConfig>,
    /// CDEvents webhook.
    pub webhook: Option<WebhookReceiverConfig>,
    /// Kafka consumer group member.
    pub kafka: Option<crate::kafka::KafkaReceiverConfig>,
}

impl Receivers {
    /// Names of the receivers configured (and available in this version).
    pub fn configured(&self) -> Vec<&'static str> {
        [
            self.otlp.is_some().then_some("otlp"),
            self.webhook.is_some().then_some("webhook"),
            self.kafka.is_some().then_some("kafka"),
            self.otlp.is_some().then_some("otlp"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Configured processors, by kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Processors {
    /// Service health: requests, errors, latency.
    pub red: Option<RedConfig>,
    /// DORA metrics from delivery events.
    pub dora: Option<DoraConfig>,
    /// Alert rules on the current state.
    pub alerts: Option<crate::processors::alerts::AlertsConfig>,
    /// Dependencies, queues, caches and the service graph from spans.
    pub dependencies: Option<crate::processors::dependencies::DependenciesConfig>,
    /// Refuse new data above a memory limit.
    pub memory_limiter: Option<crate::memory::MemoryLimiterConfig>,
}

impl Processors {
    /// Names of the processors configured (and available in this version).
    pub fn configured(&self) -> Vec<&'static str> {
        [
            self.red.is_some().then_some("red"),
            self.dora.is_some().then_some("dora"),
            self.alerts.is_some().then_some("alerts"),
            self.dependencies.is_some().then_some("dependencies"),
            self.memory_limiter.is_some().then_some("memory_limiter"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// Configured exporters, by kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exporters {
    /// Prometheus scrape endpoint and the read API.
    pub prometheus: Option<PrometheusConfig>,
    /// PagerDuty Events API v2.
    pub pagerduty: Option<crate::exporters::pagerduty::PagerDutyConfig>,
    /// Alertmanager's `/api/v2/alerts`.
    pub alertmanager: Option<crate::exporters::alertmanager::AlertmanagerConfig>,
    /// Alertmanager webhook (version 4) payloads to any URL.
    pub webhook: Option<crate::exporters::alertmanager::WebhookExporterConfig>,
    /// Kafka producer: forwards OTLP and CDEvents keyed by service.
    pub kafka: Option<crate::kafka::KafkaExporterConfig>,
    /// OTLP metrics pushed to a collector.
    pub otlp: Option<crate::exporters::otlp::OtlpExporterConfig>,
}

impl Exporters {
    /// Names of the exporters configured (and available in this version).
    pub fn configured(&self) -> Vec<&'static str> {
        [
            self.prometheus.is_some().then_some("prometheus"),
            self.pagerduty.is_some().then_some("pagerduty"),
            self.alertmanager.is_some().then_some("alertmanager"),
            self.webhook.is_some().then_some("webhook"),
            self.kafka.is_some().then_some("kafka"),
            self.otlp.is_some().then_some("otlp"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// `pipelines.<name>`: components that run together, by name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Receiver kinds feeding the pipeline, e.g. `[otlp]`.
    pub receivers: Vec<String>,
    /// Processor kinds, in order, e.g. `[red]`.
    #[serde(default)]
    pub processors: Vec<String>,
    /// Exporter kinds, e.g. `[prometheus]`.
    pub exporters: Vec<String>,
    /// Batches waiting for the processors before receivers push back. Default 256.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// How long a stop (SIGTERM, SIGINT) may take to drain the queue, flush
    /// the exporters and write the last checkpoint before doraflow gives up
    /// and exits non-zero. Default `30s`.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout: ConfigDuration,
}

fn default_shutdown_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

const fn default_queue_size() -> usize {
    256
}

/// `message` with every value from the environment or a file cut out: a
/// parser's message may quote the text it choked on, and that text may be
/// a secret (a token that YAML read as a number, say).
fn redact(mut message: String, from_outside: &[String]) -> String {
    let mut values: Vec<&String> = from_outside.iter().filter(|v| v.len() >= 4).collect();
    // Longest first, so that a value containing another is cut whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for value in values {
        if message.contains(value.as_str()) {
            message = message.replace(value.as_str(), "<redacted>");
        }
    }
    message
}

impl Config {
    /// Parses config text: substitutes `${env:..}` from the process environment,
    /// parses YAML, and validates.
    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_with_env(text, |name| std::env::var(name).ok())
    }

    /// As [`Config::from_yaml`], with an explicit environment lookup.
    pub fn from_yaml_with_env(
        text: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut from_outside = Vec::new();
        let text = substitute_recording(text, lookup, &mut from_outside)?;
        let mut path = String::new();
        let parsed = crate::settings::parsing_config(from_outside.clone(), || {
            serde_saphyr::with_deserializer_from_str(&text, |de| {
                let mut track = serde_path_to_error::Track::new();
                let result =
                    Config::deserialize(serde_path_to_error::Deserializer::new(de, &mut track));
                if result.is_err() {
                    path = track.path().to_string();
                }
                result
            })
        });
        let config = parsed.map_err(|err| ConfigError::Parse {
            path: if path.is_empty() || path == "." {
                "config".to_string()
            } else {
                path
            },
            message: redact(err.to_string(), &from_outside),
        })?;
        config.validate().map_err(ConfigError::Invalid)?;
        Ok(config)
    }

    /// The embedded default pipeline.
    pub fn default_pipeline() -> Result<Config, ConfigError> {
        Self::from_yaml(DEFAULT_PIPELINE_YAML)
    }

    /// Cross-field checks; returns every problem found, each prefixed with its key path.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        if let Some(otlp) = &self.receivers.otlp {
            if otlp.grpc.is_none() && otlp.http.is_none() {
                errors.push("receivers.otlp: needs at least one of `grpc` and `http`".into());
            }
            if let Some(grpc) = &otlp.grpc {
                check_endpoint("receivers.otlp.grpc.endpoint", &grpc.endpoint, &mut errors);
                if let Some(tls) = &grpc.tls {
                    tls.validate("receivers.otlp.grpc.tls", &mut errors);
                }
                check_limits(
                    "receivers.otlp.grpc",
                    ("request_timeout", &grpc.request_timeout),
                    grpc.max_connections,
                    &mut errors,
                );
                if grpc.max_concurrent_streams == 0 {
                    errors.push(
                        "receivers.otlp.grpc.max_concurrent_streams: must be at least 1".into(),
                    );
                }
                check_size(
                    "receivers.otlp.grpc.max_recv_msg_size_mib",
                    grpc.max_recv_msg_size_mib,
                    &mut errors,
                );
            }
            if let Some(http) = &otlp.http {
                check_endpoint("receivers.otlp.http.endpoint", &http.endpoint, &mut errors);
                if let Some(tls) = &http.tls {
                    tls.validate("receivers.otlp.http.tls", &mut errors);
                }
                check_limits(
                    "receivers.otlp.http",
                    ("header_read_timeout", &http.header_read_timeout),
                    http.max_connections,
                    &mut errors,
                );
                check_size(
                    "receivers.otlp.http.max_request_body_size_mib",
                    http.max_request_body_size_mib,
                    &mut errors,
                );
            }
            if otlp.default_environment.is_empty() {
                errors.push("receivers.otlp.default_environment: must not be empty".into());
            }
        }
        if let Some(webhook) = &self.receivers.webhook {
            check_endpoint("receivers.webhook.endpoint", &webhook.endpoint, &mut errors);
            if let Some(gitlab) = &webhook.gitlab {
                gitlab.validate("receivers.webhook.gitlab", &mut errors);
            }
            if let Some(tls) = &webhook.tls {
                tls.validate("receivers.webhook.tls", &mut errors);
            }
            check_limits(
                "receivers.webhook",
                ("header_read_timeout", &webhook.header_read_timeout),
                webhook.max_connections,
                &mut errors,
            );
            check_size(
                "receivers.webhook.max_request_body_size_mib",
                webhook.max_request_body_size_mib,
                &mut errors,
            );
        }
        if let Some(kafka) = &self.receivers.kafka {
            kafka.validate("receivers.kafka", &mut errors);
        }
        if let Some(kafka) = &self.exporters.kafka {
            kafka.validate("exporters.kafka", &mut errors);
        }
        if let (Some(receiver), Some(exporter)) = (&self.receivers.kafka, &self.exporters.kafka) {
            for topic in exporter.written_topics() {
                if receiver.topic(topic).is_some() {
                    errors.push(format!(
                        "exporters.kafka.topics: `{topic}` is also read by receivers.kafka; forwarding into it would loop"
                    ));
                }
            }
        }
        if let Some(red) = &self.processors.red {
            red.validate("processors.red", &mut errors);
        }
        if let Some(dora) = &self.processors.dora {
            dora.validate("processors.dora", &mut errors);
            if let Some(regression) = &dora.regression {
                let red = self.processors.red.as_ref().map(|r| (&r.window, &r.slice));
                regression.validate("processors.dora.regression", red, &mut errors);
            }
        }
        if let Some(alerts) = &self.processors.alerts {
            alerts.validate("processors.alerts", &mut errors);
        }
        if let Some(dependencies) = &self.processors.dependencies {
            dependencies.validate("processors.dependencies", &mut errors);
        }
        if let Some(limiter) = &self.processors.memory_limiter {
            limiter.validate("processors.memory_limiter", &mut errors);
        }
        if let Some(storage) = &self.storage {
            storage.validate("storage", &mut errors);
        }
        if let Some(pagerduty) = &self.exporters.pagerduty {
            pagerduty.validate("exporters.pagerduty", &mut errors);
        }
        if let Some(otlp) = &self.exporters.otlp {
            otlp.validate("exporters.otlp", &mut errors);
        }
        if let Some(alertmanager) = &self.exporters.alertmanager {
            alertmanager.validate("exporters.alertmanager", &mut errors);
        }
        if let Some(webhook) = &self.exporters.webhook {
            webhook.validate("exporters.webhook", &mut errors);
        }
        if let Some(prometheus) = &self.exporters.prometheus {
            check_endpoint(
                "exporters.prometheus.endpoint",
                &prometheus.endpoint,
                &mut errors,
            );
            if let Some(tls) = &prometheus.tls {
                tls.validate("exporters.prometheus.tls", &mut errors);
            }
        }
        self.validate_pipelines(&mut errors);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn validate_pipelines(&self, errors: &mut Vec<String>) {
        if self.pipelines.is_empty() {
            errors.push("pipelines: at least one pipeline is needed".into());
        }
        if self.pipelines.len() > 1 {
            errors.push(format!(
                "pipelines: this version runs one pipeline, found {} ({})",
                self.pipelines.len(),
                self.pipelines
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for (name, pipeline) in &self.pipelines {
            let path = format!("pipelines.{name}");
            if pipeline.receivers.is_empty() {
                errors.push(format!("{path}.receivers: at least one receiver is needed"));
            }
            if pipeline.exporters.is_empty() {
                errors.push(format!("{path}.exporters: at least one exporter is needed"));
            }
            if pipeline.queue_size == 0 {
                errors.push(format!("{path}.queue_size: must be at least 1"));
            }
            let sections = [
                (
                    "receivers",
                    &pipeline.receivers,
                    self.receivers.configured(),
                ),
                (
                    "processors",
                    &pipeline.processors,
                    self.processors.configured(),
                ),
                (
                    "exporters",
                    &pipeline.exporters,
                    self.exporters.configured(),
                ),
            ];
            for (section, named, configured) in sections {
                for name in named.iter().filter(|n| !configured.contains(&n.as_str())) {
                    errors.push(format!(
                        "{path}.{section}: `{name}` is not configured under `{section}` (configured: {})",
                        if configured.is_empty() {
                            "none".to_string()
                        } else {
                            configured.join(", ")
                        }
                    ));
                }
            }
        }
    }

    /// The one pipeline this version runs.
    pub fn pipeline(&self) -> Option<(&str, &PipelineConfig)> {
        self.pipelines
            .iter()
            .next()
            .map(|(name, pipeline)| (name.as_str(), pipeline))
    }
}

fn check_endpoint(path: &str, endpoint: &str, errors: &mut Vec<String>) {
    if endpoint.parse::<SocketAddr>().is_err() {
        errors.push(format!(
            "{path}: `{endpoint}` is not a `host:port` socket address such as 127.0.0.1:4317"
        ));
    }
}

fn check_size(path: &str, mib: usize, errors: &mut Vec<String>) {
    if !(1..=256).contains(&mib) {
        errors.push(format!("{path}: must be between 1 and 256, got {mib}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, |name| (name == "PORT").then(|| "5317".into()))
    }

    const MINIMAL: &str = "
receivers:
  otlp:
    grpc: { endpoint: \"127.0.0.1:${env:PORT}\" }
processors:
  red: { window: 1m, slice: 5s }
exporters:
  prometheus: {}
pipelines:
  main: { receivers: [otlp], processors: [red], exporters: [prometheus] }
";

    #[test]
    fn parses_with_defaults_and_env() {
        let config = parse(MINIMAL).unwrap();
        let otlp = config.receivers.otlp.as_ref().unwrap();
        assert_eq!(otlp.grpc.as_ref().unwrap().endpoint, "127.0.0.1:5317");
        assert!(otlp.http.is_none());
        assert_eq!(otlp.default_environment, "unknown");
        let red = config.processors.red.as_ref().unwrap();
        assert_eq!(red.window.as_str(), "1m");
        assert_eq!(red.max_series, 10_000);
        assert_eq!(red.significant_digits, 2);
        assert_eq!(
            config.exporters.prometheus.as_ref().unwrap().endpoint,
            "127.0.0.1:9464"
        );
    }

    #[test]
    fn the_embedded_default_pipeline_is_valid() {
        let config = Config::default_pipeline().unwrap();
        let (name, pipeline) = config.pipeline().unwrap();
        assert_eq!(name, "main");
        assert_eq!(pipeline.receivers, ["otlp", "webhook"]);
        assert_eq!(pipeline.processors, ["red", "dora", "alerts"]);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = MINIMAL.replace("red: { window: 1m,", "red: { windw: 1m,");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("processors.red.windw: "), "{err}");
        assert!(err.contains("unknown field `windw`"), "{err}");
    }

    #[test]
    fn duration_without_unit_is_named() {
        let text = MINIMAL.replace("slice: 5s", "slice: 5");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("processors.red.slice: "), "{err}");
    }

    #[test]
    fn the_otlp_exporter_is_read_with_defaults_and_checked() {
        let text = MINIMAL.replace(
            "  prometheus: {}",
            "  prometheus: {}\n  otlp: { endpoint: \"http://collector:4317\" }",
        );
        let config = parse(&text).unwrap();
        let otlp = config.exporters.otlp.as_ref().unwrap();
        assert_eq!(otlp.protocol, crate::exporters::otlp::Protocol::Grpc);
        assert_eq!(otlp.interval.get(), std::time::Duration::from_secs(60));
        assert_eq!(otlp.timeout.get(), std::time::Duration::from_secs(10));
        assert!(config.exporters.configured().contains(&"otlp"));

        let text = MINIMAL.replace(
            "  prometheus: {}",
            "  prometheus: {}\n  otlp: { endpoint: \"collector:4317\", protocol: http/protobuf, interval: 0s, headers: { Authorization: x, x-tenant: \"a\\u0001\" } }",
        );
        let err = parse(&text).unwrap_err().to_string();
        for problem in [
            "exporters.otlp.endpoint: must be an http(s) URL such as http://collector:4317, got `collector:4317`",
            "exporters.otlp.interval: must be longer than 0",
            "exporters.otlp.headers: `Authorization` is not a valid header name",
            "exporters.otlp.headers.x-tenant: the value must be printable ASCII",
        ] {
            assert!(err.contains(problem), "{problem} not in {err}");
        }
        let text = MINIMAL.replace(
            "  prometheus: {}",
            "  prometheus: {}\n  otlp: { endpoint: \"http://c:4317\", protocol: thrift }",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("exporters.otlp.protocol: "), "{err}");
    }

    #[test]
    fn every_cross_field_problem_is_reported_at_once() {
        let text = "
receivers:
  otlp:
    grpc: { endpoint: \"nowhere\" }
processors:
  red: { window: 25s, slice: 10s, max_series: 0, significant_digits: 4 }
exporters:
  prometheus: {}
pipelines:
  main: { receivers: [otlp, kafka], processors: [red, enrich], exporters: [prometheus] }
";
        let ConfigError::Invalid(errors) = parse(text).unwrap_err() else {
            panic!("expected validation errors");
        };
        let expected_prefixes = [
            "receivers.otlp.grpc.endpoint: `nowhere`",
            "processors.red.window: must be a whole multiple of slice (10s), got 25s",
            "processors.red.max_series: must be at least 1",
            "processors.red.significant_digits: must be 1, 2 or 3, got 4",
            "pipelines.main.receivers: `kafka` is not configured",
            "pipelines.main.processors: `enrich` is not configured",
        ];
        assert_eq!(errors.len(), expected_prefixes.len(), "{errors:#?}");
        for (error, prefix) in errors.iter().zip(expected_prefixes) {
            assert!(error.starts_with(prefix), "{error:?} vs {prefix:?}");
        }
    }

    fn with_secrets(text: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(text, |name| match name {
            "TOKEN" => Some("t0ken-from-env".into()),
            "NUMERIC" => Some("8675309123".into()),
            "KAFKA_PASSWORD" => Some("kafka-pa55word".into()),
            _ => None,
        })
    }

    fn alertmanager_with_auth(auth: &str) -> String {
        format!(
            "receivers:\n  otlp:\n    grpc: {{}}\nexporters:\n  prometheus: {{}}\n  alertmanager: {{ url: \"http://am:9093\", auth: {auth} }}\npipelines:\n  main: {{ receivers: [otlp], exporters: [prometheus, alertmanager] }}\n"
        )
    }

    #[test]
    fn exporter_credentials_are_one_kind_and_become_the_authorization_header() {
        let config = with_secrets(&alertmanager_with_auth(
            "{ basic_auth: { username: doraflow, password: \"${env:TOKEN}\" } }",
        ))
        .unwrap();
        let auth = config.exporters.alertmanager.unwrap().auth.unwrap();
        // base64("doraflow:t0ken-from-env")
        assert_eq!(
            auth.header_value().as_deref(),
            Some("Basic ZG9yYWZsb3c6dDBrZW4tZnJvbS1lbnY=")
        );
        let config = with_secrets(&alertmanager_with_auth(
            "{ bearer_token: \"${env:TOKEN}\" }",
        ))
        .unwrap();
        let auth = config.exporters.alertmanager.unwrap().auth.unwrap();
        assert_eq!(
            auth.header_value().as_deref(),
            Some("Bearer t0ken-from-env")
        );

        for (auth, problem) in [
            (
                "{ bearer_token: \"${env:TOKEN}\", basic_auth: { username: u, password: \"${env:TOKEN}\" } }",
                "exporters.alertmanager.auth: give bearer_token or basic_auth, not both",
            ),
            (
                "{}",
                "exporters.alertmanager.auth: give bearer_token or basic_auth",
            ),
            (
                "{ basic_auth: { username: \"a:b\", password: \"${env:TOKEN}\" } }",
                "exporters.alertmanager.auth.basic_auth.username: must not be empty or hold `:`",
            ),
            (
                "{ basic_auth: { username: u, password: written-here } }",
                "exporters.alertmanager.auth.basic_auth.password: ",
            ),
        ] {
            let err = with_secrets(&alertmanager_with_auth(auth))
                .unwrap_err()
                .to_string();
            assert!(err.contains(problem), "{problem} not in {err}");
        }
    }

    fn otlp_with_token(token: &str) -> String {
        format!(
            "receivers:\n  otlp:\n    grpc: {{}}\n    auth: {{ bearer_token: \"{token}\" }}\nexporters:\n  prometheus: {{}}\npipelines:\n  main: {{ receivers: [otlp], exporters: [prometheus] }}\n"
        )
    }

    #[test]
    fn a_secret_written_in_the_config_is_refused_with_its_path() {
        for literal in ["t0ken-from-env", "${env:UNSET:-a-default-t0ken}"] {
            let err = with_secrets(&otlp_with_token(literal))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("receivers.otlp.auth.bearer_token: ")
                    && err.contains("a secret must come from `${env:NAME}` or `${file:PATH}`"),
                "{literal}: {err}"
            );
        }
        let config = with_secrets(&otlp_with_token("${env:TOKEN}")).unwrap();
        let auth = config.receivers.otlp.unwrap().auth.unwrap();
        assert!(auth.bearer_token.matches(b"t0ken-from-env"));
        let err = with_secrets(&otlp_with_token("${env:UNSET:-}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("receivers.otlp.auth.bearer_token: ")
                && err.contains("a secret must not be empty"),
            "{err}"
        );
    }

    #[test]
    fn a_parse_error_never_quotes_a_value_from_the_environment() {
        // Unquoted, the token reads as a YAML number, and the parser's
        // message would quote it.
        let text = otlp_with_token("${env:NUMERIC}").replace('"', "");
        let err = with_secrets(&text).err().map(|e| e.to_string());
        if let Some(err) = err {
            assert!(!err.contains("8675309123"), "{err}");
        }
        let err = with_secrets(&format!(
            "{}\nbroken: [${{env:TOKEN}}",
            otlp_with_token("${env:TOKEN}")
        ))
        .unwrap_err()
        .to_string();
        assert!(!err.contains("t0ken-from-env"), "{err}");
    }

    #[test]
    fn kafka_secret_settings_come_from_outside_and_never_show() {
        let kafka = |password: &str| {
            format!(
                "receivers:\n  kafka:\n    brokers: 127.0.0.1:9092\n    topics: [{{ topic: t, format: cdevents }}]\n    settings: {{ security.protocol: sasl_plaintext, sasl.mechanism: PLAIN, sasl.username: doraflow, sasl.password: \"{password}\" }}\nexporters:\n  prometheus: {{}}\npipelines:\n  main: {{ receivers: [kafka], exporters: [prometheus] }}\n"
            )
        };
        let err = with_secrets(&kafka("kafka-pa55word"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("receivers.kafka.settings: ")
                && err.contains("`sasl.password`: a secret must come from"),
            "{err}"
        );
        let config = with_secrets(&kafka("${env:KAFKA_PASSWORD}")).unwrap();
        let settings = &config.receivers.kafka.as_ref().unwrap().settings;
        assert_eq!(settings["sasl.password"], "kafka-pa55word");
        let shown = format!("{config:?}");
        assert!(!shown.contains("kafka-pa55word"), "{shown}");
        assert!(shown.contains("\"sasl.username\": \"doraflow\""), "{shown}");
    }

    #[test]
    fn credentials_in_an_exporter_url_are_refused_and_not_echoed() {
        let err = with_secrets(
            "receivers:\n  otlp:\n    grpc: {}\nexporters:\n  prometheus: {}\n  alertmanager: { url: \"https://doraflow:hunter22@am.example:9093\" }\npipelines:\n  main: { receivers: [otlp], exporters: [prometheus, alertmanager] }\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("exporters.alertmanager.url: must not hold credentials"),
            "{err}"
        );
        assert!(!err.contains("hunter22"), "{err}");
    }
}
