//! Shared helpers of the integration tests: a doraflow process on free
//! loopback ports, and a reader of its `/metrics`.
#![allow(dead_code)]

pub mod certs;
pub mod kafka;
pub mod pagerduty;
pub mod sources;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port, below the kernel's ephemeral range (32768 and up
/// on Linux). Ports from `bind(0)` come from that range, which every
/// outgoing connection of every test also draws from: a port picked there
/// and released could be taken by a client socket before doraflow binds it
/// (seen as `Address already in use`). Below it only listeners compete, and
/// each candidate is bound once to check it is free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    // Test binaries run one after another, tests of one binary in parallel:
    // start each process somewhere else and walk from there.
    let start = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let candidate = LOW + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        if TcpListener::bind(("127.0.0.1", candidate as u16)).is_ok() {
            return candidate as u16;
        }
    }
    panic!("no free loopback port between {LOW} and {}", LOW + SPAN);
}

/// A running `doraflow run --config ...`, killed on drop.
pub struct Doraflow {
    pub child: Child,
    pub grpc: u16,
    pub http: u16,
    pub webhook: u16,
    pub prometheus: u16,
    pub config: PathBuf,
    _dir: TempDir,
}

/// A temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "doraflow-test-{tag}-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Doraflow {
    /// Starts doraflow with the given `processors.red` settings (YAML flow map
    /// body) on free ports and waits until it is ready.
    pub fn start(red: &str) -> Doraflow {
        Self::start_with(red, 256)
    }

    pub fn start_with(red: &str, queue_size: usize) -> Doraflow {
        Self::start_full(red, "windows: [7d, 30d]", queue_size)
    }

    /// With the given `processors.red` and `processors.dora` settings.
    pub fn start_full(red: &str, dora: &str, queue_size: usize) -> Doraflow {
        Self::start_config(red, dora, "interval: 5s", queue_size)
    }

    /// With the given `processors.red`, `processors.dora` and `processors.alerts` settings.
    pub fn start_config(red: &str, dora: &str, alerts: &str, queue_size: usize) -> Doraflow {
        Self::start_exporting(red, dora, alerts, queue_size, "")
    }

    /// As `start_config`, with more exporters: `exporters` is their YAML
    /// (indented two spaces, under `exporters:`), each also put in the pipeline.
    pub fn start_exporting(
        red: &str,
        dora: &str,
        alerts: &str,
        queue_size: usize,
        exporters: &str,
    ) -> Doraflow {
        Self::start_processors(red, dora, alerts, None, queue_size, exporters)
    }

    /// As `start_exporting`, with a `dependencies` processor (its settings)
    /// when given.
    pub fn start_processors(
        red: &str,
        dora: &str,
        alerts: &str,
        dependencies: Option<&str>,
        queue_size: usize,
        exporters: &str,
    ) -> Doraflow {
        let (dependencies, listed) = match dependencies {
            Some(settings) => (
                format!("  dependencies: {{ {settings} }}\n"),
                ", dependencies",
            ),
            None => (String::new(), ""),
        };
        let extra: String = exporters
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   ") && l.trim_end().ends_with(':'))
            .map(|l| format!(", {}", l.trim().trim_end_matches(':')))
            .collect();
        let (grpc, http, prometheus) = (free_port(), free_port(), free_port());
        let webhook = free_port();
        let text =
                format!(
                "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
    http: {{ endpoint: \"127.0.0.1:{http}\" }}
    default_environment: test
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\" }}
processors:
  red: {{ {red} }}
  dora: {{ {dora} }}
  alerts: {{ {alerts} }}
{dependencies}exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
{exporters}
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [red, dora, alerts{listed}], exporters: [prometheus{extra}], queue_size: {queue_size} }}
"
            );
        let mut doraflow = Self::start_yaml(&text, prometheus, grpc, webhook);
        doraflow.http = http;
        doraflow
    }

    /// Runs `config` (YAML), whose Prometheus exporter listens on
    /// `prometheus`, and waits until it is ready. Other ports are as given
    /// (0 where the config has no such listener).
    pub fn start_yaml(config_text: &str, prometheus: u16, grpc: u16, webhook: u16) -> Doraflow {
        Self::start_yaml_env(config_text, prometheus, grpc, webhook, &[])
    }

    /// As [`Doraflow::start_yaml`], with these environment variables set.
    pub fn start_yaml_env(
        config_text: &str,
        prometheus: u16,
        grpc: u16,
        webhook: u16,
        env: &[(&str, &str)],
    ) -> Doraflow {
        let dir = TempDir::new("yaml");
        let config = dir.0.join("doraflow.yaml");
        std::fs::write(&config, config_text).expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_doraflow"))
            .args(["run", "--config"])
            .arg(&config)
            // DORAFLOW_TEST_LOG=info shows more of the processes' logs.
            .env(
                "DORAFLOW_LOG",
                std::env::var("DORAFLOW_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn doraflow");
        let doraflow = Doraflow {
            child,
            grpc,
            http: 0,
            webhook,
            prometheus,
            config,
            _dir: dir,
        };
        wait_ready(prometheus);
        doraflow
    }

    /// Sends SIGTERM and waits (up to 30 s) for a clean exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "doraflow exited with {status} after SIGTERM"
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "doraflow did not exit within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn webhook_url(&self) -> String {
        format!("http://127.0.0.1:{}/cdevents", self.webhook)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// `/metrics`, parsed.
    pub fn metrics(&self) -> Metrics {
        scrape(self.prometheus)
    }
}

impl Drop for Doraflow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 30 s for `/readyz` on `port` to answer 200.
pub fn wait_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if get(port, "/readyz").is_ok_and(|(status, _)| status == 200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("doraflow on port {port} not ready within 30 s");
}

/// A minimal blocking HTTP GET over a real socket: (status, body).
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

pub fn scrape(port: u16) -> Metrics {
    let (status, body) = get(port, "/metrics").expect("scrape /metrics");
    assert_eq!(status, 200, "{body}");
    Metrics(body)
}

/// The text of one scrape.
#[derive(Debug, Clone)]
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        want.sort();
        self.0.lines().find_map(|line| {
            if line.starts_with('#') {
                return None;
            }
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, mut got) = match series.split_once('{') {
                Some((metric, rest)) => (metric, parse_labels(rest.strip_suffix('}')?)),
                None => (series, Vec::new()),
            };
            got.sort();
            (metric == name && got == want).then(|| value.parse().ok())?
        })
    }

    /// As `get`, 0 when the sample is absent (counters not yet created).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }

    /// Every sample line of `name`.
    pub fn samples(&self, name: &str) -> Vec<&str> {
        self.0
            .lines()
            .filter(|l| {
                l.starts_with(name) && matches!(l.as_bytes().get(name.len()), Some(b'{' | b' '))
            })
            .collect()
    }
}

fn parse_labels(text: &str) -> Vec<(String, String)> {
    let mut labels = Vec::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(if escaped == 'n' { '\n' } else { escaped });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key.trim_start_matches(',').trim().to_string(), value));
        rest = &after[end..];
    }
    labels
}

/// Whether `got` is `want` within HDR precision (2 significant digits: the
/// reported value is the highest equivalent of the true one, < 1% above).
pub fn within_hdr(got: f64, want: f64) -> bool {
    got >= want * 0.999_999 && got <= want * 1.01
}

/// The Python interpreter with the OpenTelemetry SDK, if the test script set one up.
pub fn python_with_otel_sdk() -> Option<PathBuf> {
    std::env::var_os("DORAFLOW_TEST_PYTHON").map(PathBuf::from)
}

/// Says plainly, past the test harness's output capture, that a test skipped.
pub fn say_skipped(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// checkout/production: `ok` successful and `errors` failed SERVER spans of 1 ms.
pub fn checkout_spans(
    ok: usize,
    errors: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    service_spans("checkout", ok, errors)
}

/// `service` in production: `ok` successful and `errors` failed SERVER spans of 1 ms.
pub fn service_spans(
    service: &str,
    ok: usize,
    errors: usize,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use doraflow::otlp::synth::{resource, span, trace_request};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let t0 = 1_764_000_000_000_000_000u64;
    let spans = (0..ok + errors)
        .map(|i| {
            let status = if i < errors {
                StatusCode::Error
            } else {
                StatusCode::Ok
            };
            span(SpanKind::Server, t0, t0 + 1_000_000, status, None)
        })
        .collect();
    trace_request(vec![(resource(Some(service), Some("production")), spans)])
}

/// Spans and a metric that give every family of the `dependencies`
/// processor a sample: checkout calls payments (paired), a database and a
/// cache, and sends a message shipping consumes (paired: its wait); shipping
/// reports a consumer lag of 42 on `orders` in `messaging.kafka.consumer.lag`.
/// No SERVER or CONSUMER span of checkout: its `red` figures are untouched.
pub async fn send_dependency_spans(doraflow: &Doraflow) {
    use doraflow::otlp::synth::{attr, resource, span, string_attr, trace_request};
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
        number_data_point,
    };
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let t0 = 1_764_000_000_000_000_000u64;
    let ms = 1_000_000;
    let with = |kind, start: u64, end: u64, id: u8, parent: u8, attributes: Vec<_>| {
        let mut s = span(kind, start, end, StatusCode::Unset, None);
        s.trace_id = vec![7; 16];
        s.span_id = vec![id; 8];
        s.parent_span_id = if parent == 0 {
            Vec::new()
        } else {
            vec![parent; 8]
        };
        s.attributes = attributes;
        s
    };
    let checkout = vec![
        with(
            SpanKind::Client,
            t0,
            t0 + 30 * ms,
            10,
            0,
            vec![
                string_attr("http.request.method", "GET"),
                string_attr("server.address", "payments"),
            ],
        ),
        with(
            SpanKind::Client,
            t0,
            t0 + 5 * ms,
            12,
            0,
            vec![
                string_attr("db.system.name", "postgresql"),
                string_attr("db.namespace", "shop"),
                string_attr("db.operation.name", "SELECT"),
            ],
        ),
        with(
            SpanKind::Client,
            t0,
            t0 + ms,
            13,
            0,
            vec![
                string_attr("db.system.name", "redis"),
                attr("cache.hit", Value::BoolValue(true)),
            ],
        ),
        with(
            SpanKind::Producer,
            t0,
            t0 + ms,
            11,
            0,
            vec![
                string_attr("messaging.system", "kafka"),
                string_attr("messaging.destination.name", "orders"),
            ],
        ),
    ];
    let payments = vec![with(
        SpanKind::Server,
        t0 + ms,
        t0 + 25 * ms,
        20,
        10,
        vec![],
    )];
    let shipping = vec![with(
        SpanKind::Consumer,
        t0 + 100 * ms,
        t0 + 110 * ms,
        21,
        11,
        vec![
            string_attr("messaging.system", "kafka"),
            string_attr("messaging.destination.name", "orders"),
        ],
    )];
    let mut traces = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .expect("connect");
    traces
        .export(trace_request(vec![
            (resource(Some("checkout"), Some("production")), checkout),
            (resource(Some("payments"), Some("production")), payments),
            (resource(Some("shipping"), Some("production")), shipping),
        ]))
        .await
        .expect("export spans");
    let lag = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(Some("shipping"), Some("production"))),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "messaging.kafka.consumer.lag".into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            attributes: vec![string_attr("messaging.destination.name", "orders")],
                            time_unix_nano: t0,
                            value: Some(number_data_point::Value::AsInt(42)),
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    MetricsServiceClient::connect(doraflow.grpc_url())
        .await
        .expect("connect")
        .export(lag)
        .await
        .expect("export metrics");
}

/// Unix time now, seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// RFC 3339 (seconds, UTC) of Unix seconds.
pub fn rfc3339(at: i64) -> String {
    chrono::DateTime::from_timestamp(at, 0)
        .expect("a valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Sends [`checkout_spans`] to `doraflow` over OTLP gRPC.
pub async fn send_checkout_spans(doraflow: &Doraflow, ok: usize, errors: usize) {
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .expect("connect");
    client
        .export(checkout_spans(ok, errors))
        .await
        .expect("export");
}

/// Polls `check` every 50 ms, for at most 20 s, without blocking the
/// runtime (tests serve mock endpoints on it).
pub async fn eventually(what: &str, check: impl Fn() -> bool) {
    eventually_within(what, Duration::from_secs(20), check).await
}

/// As [`eventually`], with its own deadline.
pub async fn eventually_within(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A doraflow process, killed on drop (a failed assertion leaves no orphan).
pub struct Process(pub std::process::Child);

impl Process {
    pub fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs doraflow on `config` (logs at warn to the test's stderr).
pub fn spawn(config: &std::path::Path) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_doraflow"))
            .args(["run", "--config"])
            .arg(config)
            .env("DORAFLOW_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn doraflow"),
    )
}

/// `${file:PATH}` of a file holding `value`: config files may not hold
/// secrets themselves. One file per value, kept for the run's other tests.
pub fn secret_ref(value: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut hash = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hash);
    let dir = std::env::temp_dir().join("doraflow-test-secrets");
    std::fs::create_dir_all(&dir).expect("secrets folder");
    let path = dir.join(format!("{:016x}", hash.finish()));
    if std::fs::read_to_string(&path).ok().as_deref() != Some(value) {
        let tmp = dir.join(format!("{:016x}.{}", hash.finish(), std::process::id()));
        std::fs::write(&tmp, value).expect("write secret");
        std::fs::rename(&tmp, &path).expect("place secret");
    }
    format!("${{file:{}}}", path.display())
}

/// Sends `head` and the first `sent` bytes of a body whose `Content-Length`
/// says more, then hangs up its side: what a client that dies mid-request
/// leaves. The server may answer 400 or close at once; either way nothing
/// of the request may be applied (the caller checks that).
pub fn send_cut_short(port: u16, head: &str, sent: &[u8]) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(sent).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let answer = String::from_utf8_lossy(&response);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
}
