//! The receivers' configuration: `receivers.otlp` (gRPC and HTTP servers)
//! and `receivers.webhook` (with its native sources' sections).

use serde::Deserialize;

use crate::settings::{ConfigDuration, ReceiverAuth, Secret};

/// `receivers.otlp`: the OTLP receiver. At least one of `grpc` and `http`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpReceiverConfig {
    /// The gRPC listener (TraceService, LogsService, MetricsService).
    pub grpc: Option<GrpcServerConfig>,
    /// The HTTP listener (`/v1/traces`, `/v1/logs`, `/v1/metrics`).
    pub http: Option<HttpServerConfig>,
    /// Environment of a resource that has neither `deployment.environment.name`
    /// nor `deployment.environment`. Default `unknown`.
    #[serde(default = "default_environment")]
    pub default_environment: String,
    /// Require a bearer token on both listeners. Default: none required.
    #[serde(default)]
    pub auth: Option<ReceiverAuth>,
}

/// `receivers.webhook.signature`: an HMAC-SHA256 of each request, keyed by
/// a shared secret, as GitHub signs its webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSignature {
    /// The shared key, from `${env:NAME}` or `${file:PATH}`.
    pub secret: Secret,
    /// The header with `sha256=<hex>`. Default `X-Hub-Signature-256`.
    #[serde(default = "default_signature_header")]
    pub header: String,
    /// If set, the header with the Unix time (seconds) the sender signed at;
    /// it is then required, the signature covers `<timestamp>.<body>`, and a
    /// request older (or newer) than `max_age` is refused as a replay.
    /// Default: none (the body alone is signed, GitHub's form).
    #[serde(default)]
    pub timestamp_header: Option<String>,
    /// How far the timestamp may be from now. Default `5m`.
    #[serde(default = "default_signature_max_age")]
    pub max_age: ConfigDuration,
}

fn default_signature_header() -> String {
    "X-Hub-Signature-256".to_string()
}

fn default_signature_max_age() -> ConfigDuration {
    ConfigDuration::from_secs(300)
}

fn default_environment() -> String {
    "unknown".to_string()
}

/// `receivers.webhook`: CDEvents over HTTP, `POST /cdevents`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookReceiverConfig {
    /// `host:port` to listen on. Default `127.0.0.1:8088`.
    #[serde(default = "default_webhook_endpoint")]
    pub endpoint: String,
    /// Require a bearer token. Default: none required.
    #[serde(default)]
    pub auth: Option<ReceiverAuth>,
    /// Require a valid HMAC-SHA256 signature of each request. Default: none.
    #[serde(default)]
    pub signature: Option<WebhookSignature>,
    /// Largest request body accepted, in MiB. Default 4, at most 256.
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_request_body_size_mib: usize,
    /// Requests read and decoded at once on this listener; more are refused
    /// before their body is read (429). Default: with a memory limiter, as
    /// many largest bodies as its spike room holds (at least 2); without
    /// one, no limit.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    /// Default: plaintext.
    #[serde(default)]
    pub tls: Option<crate::tls::ServerTls>,
    /// A client must send its request headers within this long, or its
    /// connection is closed. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// Connections open at once; more wait in the kernel's backlog.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// GitHub's own webhooks on `POST /github`. Default: off.
    #[serde(default)]
    pub github: Option<crate::receivers::sources::github::GithubConfig>,
    /// GitLab's own webhooks on `POST /gitlab`. Default: off.
    #[serde(default)]
    pub gitlab: Option<crate::receivers::sources::gitlab::GitlabConfig>,
    /// PagerDuty's Webhooks v3 on `POST /pagerduty`. Default: off.
    #[serde(default)]
    pub pagerduty: Option<crate::receivers::sources::pagerduty::PagerdutyConfig>,
    /// Alertmanager's webhook on `POST /alertmanager`. Default: off.
    #[serde(default)]
    pub alertmanager: Option<crate::receivers::sources::alertmanager::AlertmanagerSourceConfig>,
    /// Argo CD's notifications on `POST /argocd`. Default: off.
    #[serde(default)]
    pub argocd: Option<crate::receivers::sources::argocd::ArgocdConfig>,
    /// Flux's notification-controller (`generic-hmac`) on `POST /flux`. Default: off.
    #[serde(default)]
    pub flux: Option<crate::receivers::sources::flux::FluxConfig>,
}

fn default_webhook_endpoint() -> String {
    "127.0.0.1:8088".to_string()
}

/// A gRPC listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcServerConfig {
    /// `host:port` to listen on. Default `127.0.0.1:4317`.
    #[serde(default = "default_grpc_endpoint")]
    pub endpoint: String,
    /// Largest request accepted, in MiB after decompression. Default 4, at most 256.
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_recv_msg_size_mib: usize,
    /// Requests read and decoded at once on this listener; more are refused
    /// before their body is read (RESOURCE_EXHAUSTED). Default: with a
    /// memory limiter, as many largest requests as its spike room holds (at
    /// least 2), so that requests in flight cannot take the process over
    /// the hard limit between two readings; without one, no limit.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    /// Default: plaintext.
    #[serde(default)]
    pub tls: Option<crate::tls::ServerTls>,
    /// Connections open at once; more wait in the kernel's backlog.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// HTTP/2 streams (requests) open at once on one connection, announced
    /// to the client in its SETTINGS. Default 100.
    #[serde(default = "default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// A request must arrive whole and be answered within this long, or it
    /// is cancelled (CANCELLED): a client trickling its body holds a stream
    /// no longer. Default `30s`.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: ConfigDuration,
}

const fn default_max_concurrent_streams() -> u32 {
    100
}

fn default_request_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(30)
}

/// Checks a listener's timeout (named `timeout_key`) and connection limit.
pub(crate) fn check_limits(
    path: &str,
    (timeout_key, timeout): (&str, &ConfigDuration),
    max_connections: usize,
    errors: &mut Vec<String>,
) {
    if timeout.get().is_zero() {
        errors.push(format!("{path}.{timeout_key}: must be longer than 0"));
    }
    if max_connections == 0 {
        errors.push(format!("{path}.max_connections: must be at least 1"));
    }
}

fn default_header_read_timeout() -> ConfigDuration {
    ConfigDuration::from_secs(10)
}

const fn default_max_connections() -> usize {
    1_024
}

fn default_grpc_endpoint() -> String {
    "127.0.0.1:4317".to_string()
}

const fn default_max_recv_msg_size_mib() -> usize {
    4
}

/// An HTTP listener of the OTLP receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpServerConfig {
    /// `host:port` to listen on. Default `127.0.0.1:4318`.
    #[serde(default = "default_http_endpoint")]
    pub endpoint: String,
    /// Largest request body accepted, in MiB after decompression. Default 4, at most 256.
    #[serde(default = "default_max_recv_msg_size_mib")]
    pub max_request_body_size_mib: usize,
    /// Requests read and decoded at once on this listener; more are refused
    /// before their body is read (429). Default: with a memory limiter, as
    /// many largest bodies as its spike room holds (at least 2); without
    /// one, no limit.
    #[serde(default)]
    pub max_concurrent_requests: Option<usize>,
    /// Serve TLS (and with `client_ca_file`, require client certificates).
    /// Default: plaintext.
    #[serde(default)]
    pub tls: Option<crate::tls::ServerTls>,
    /// A client must send its request headers within this long, or its
    /// connection is closed. Default `10s`.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: ConfigDuration,
    /// Connections open at once; more wait in the kernel's backlog.
    /// Default 1024.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
}

fn default_http_endpoint() -> String {
    "127.0.0.1:4318".to_string()
}
