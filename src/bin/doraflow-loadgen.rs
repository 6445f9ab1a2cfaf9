//! doraflow-loadgen: sends OTLP gRPC trace batches (or, with `--cdevents`,
//! CDEvents batches to the webhook) at a target rate or as fast as it can,
//! over several connections, and reports what was accepted, refused and how
//! long requests took.
//!
//! Batches are the realistic workload of `doraflow::otlp::synth` (about 800
//! bytes a span, 10 attributes, 50 services × 20 routes, 2% errors), encoded
//! once up front so the generator spends its CPU on sending, not building.
//!
//! ```text
//! doraflow-loadgen --endpoint http://127.0.0.1:4317 --connections 4 --batch 1000 --duration 20
//! doraflow-loadgen --rate 100000 --duration 30 --gzip
//! doraflow-loadgen --cdevents --endpoint http://127.0.0.1:8088/cdevents --batch 100
//! doraflow-loadgen --github SECRET --endpoint http://127.0.0.1:8088/github
//! doraflow-loadgen --kafka 127.0.0.1:9092 --topic otlp_spans --messages 20000 --batch 100
//! ```
//!
//! CDEvents batches are built as they are sent, every event with a fresh id
//! (a resent id would only measure de-duplication): per deployment a
//! `change.created`, an `artifact.packaged` and a `service.deployed`, over 500
//! services.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use doraflow::otlp::synth::realistic_batch_among;
use doraflow::receivers::otlp_grpc::RawCodec;
use hdrhistogram::Histogram;
use prost::Message;
use tokio::sync::Mutex;
use tonic::codec::CompressionEncoding;
use tonic::codegen::http::uri::PathAndQuery;

/// Sends OTLP gRPC trace batches and reports throughput and latency.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The collector's OTLP gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:4317")]
    endpoint: String,
    /// Concurrent connections, each sending one request at a time.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Spans per request.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Target spans per second over all connections; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Compress requests with gzip.
    #[arg(long)]
    gzip: bool,
    /// Services per OTLP batch (one `ResourceSpans` each); 1 is what a
    /// sidecar beside one service sees.
    #[arg(long, default_value_t = 50)]
    services: usize,
    /// Services over all batches: batch k takes `--services` of them from
    /// the k×services-th on (with `--distinct` at least total/services,
    /// every one is fed). Default: `--services`.
    #[arg(long)]
    total_services: Option<usize>,
    /// Distinct pre-built batches to cycle through.
    #[arg(long, default_value_t = 16)]
    distinct: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Send CDEvents batches to a webhook instead of OTLP spans; `--batch` is
    /// then events per request.
    #[arg(long)]
    cdevents: bool,
    /// Produce OTLP trace requests (protobuf, `--batch` spans each) to Kafka
    /// at these brokers instead, as the OpenTelemetry Collector's Kafka
    /// exporter writes them, with an idempotent producer.
    #[arg(long)]
    kafka: Option<String>,
    /// The topic for `--kafka`.
    #[arg(long, default_value = "otlp_spans")]
    topic: String,
    /// With `--kafka`: produce the synthetic delivery history (`--events`
    /// CDEvents, as `--write-history` writes it) keyed by service, as
    /// doraflow's Kafka exporter keys them, instead of OTLP requests.
    #[arg(long)]
    history: bool,
    /// Messages to produce with `--kafka` (then `--duration` is not used).
    #[arg(long, default_value_t = 10_000)]
    messages: u64,
    /// Write a synthetic delivery history of `--events` CDEvents to this
    /// JSON-lines file (for `doraflow replay`) and exit.
    #[arg(long)]
    write_history: Option<std::path::PathBuf>,
    /// Send a JSON-lines file of CDEvents to the webhook (`--endpoint`) in
    /// batches of `--batch`, one request at a time per connection, and exit.
    #[arg(long)]
    send_history: Option<std::path::PathBuf>,
    /// Events for `--write-history`.
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    /// The history's end, Unix seconds (default: now).
    #[arg(long)]
    now: Option<i64>,
    /// With `--cdevents`: timestamp every event this many seconds before
    /// the moment it is sent, instead of spreading them over the hour
    /// before the start (a soak with a short `retention` then sees events
    /// leave the history at the rate they come).
    #[arg(long)]
    cdevents_age: Option<i64>,
    /// Send GitHub deliveries to `POST /github` instead, signed with this
    /// secret as GitHub signs: each worker alternates a `push` of a new
    /// revision (one commit) and the `deployment_status` that deploys it,
    /// over 50 repositories, one delivery a request as GitHub sends them.
    #[arg(long)]
    github: Option<String>,
}

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Default)]
struct Totals {
    sent_spans: AtomicU64,
    accepted_spans: AtomicU64,
    refused_requests: AtomicU64,
    failed_requests: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.connections > 0 && args.batch > 0,
        "connections and batch must be > 0"
    );
    if let Some(path) = args.write_history.clone() {
        return write_history(&args, &path);
    }
    if let Some(path) = args.send_history.clone() {
        return send_history(&args, &path).await;
    }
    if args.cdevents {
        return cdevents(args).await;
    }
    if let Some(secret) = args.github.clone() {
        return github(args, secret).await;
    }
    if let Some(brokers) = args.kafka.clone() {
        return kafka(args, &brokers);
    }
    let batches: Arc<Vec<Bytes>> = Arc::new(
        (0..args.distinct.max(1))
            .map(|seed| {
                Bytes::from(
                    realistic_batch_among(
                        args.batch,
                        seed as u64,
                        args.services,
                        args.total_services.unwrap_or(args.services),
                    )
                    .encode_to_vec(),
                )
            })
            .collect(),
    );
    let bytes_per_span = batches[0].len() as f64 / args.batch as f64;
    let totals = Arc::new(Totals::default());
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    // Each connection sends one request every `period` to reach the target rate.
    let period = (args.rate > 0).then(|| {
        Duration::from_secs_f64(args.batch as f64 * args.connections as f64 / args.rate as f64)
    });
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for worker in 0..args.connections {
        let channel = tonic::transport::Endpoint::from_shared(args.endpoint.clone())?
            .initial_stream_window_size(Some(16 << 20))
            .initial_connection_window_size(Some(32 << 20))
            .connect()
            .await?;
        let mut client = tonic::client::Grpc::new(channel);
        if args.gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        let (batches, totals, latencies) = (batches.clone(), totals.clone(), latencies.clone());
        let batch = args.batch as u64;
        let connections = args.connections;
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            // Connections staggered over the period, as independent clients
            // are: started together they would arrive in bursts of
            // `connections` requests and queue behind each other.
            let mut next = Instant::now()
                + period.map_or(Duration::ZERO, |p| p * worker as u32 / connections as u32);
            let mut i = worker;
            while Instant::now() < deadline {
                if let Some(period) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += period;
                }
                let body = batches[i % batches.len()].clone();
                i += 1;
                if client.ready().await.is_err() {
                    totals.failed_requests.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let sent = Instant::now();
                let result = client
                    .unary::<Bytes, Bytes, _>(
                        tonic::Request::new(body),
                        PathAndQuery::from_static(EXPORT),
                        RawCodec,
                    )
                    .await;
                let _ = local.record(sent.elapsed().as_micros() as u64);
                totals.sent_spans.fetch_add(batch, Ordering::Relaxed);
                match result {
                    Ok(_) => {
                        totals.accepted_spans.fetch_add(batch, Ordering::Relaxed);
                    }
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        totals.refused_requests.fetch_add(1, Ordering::Relaxed);
                        // Back off as told rather than spin on a full pipeline.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(_) => {
                        totals.failed_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = latencies.lock().await.add(&local);
        }));
    }
    let (elapsed, latency) = finish(workers, start, &latencies).await?;
    let accepted = totals.accepted_spans.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "seconds": elapsed,
        "connections": args.connections,
        "batch": args.batch,
        "services": args.services,
        "total_services": args.total_services.unwrap_or(args.services),
        "gzip": args.gzip,
        "bytes_per_span": bytes_per_span,
        "target_spans_per_second": args.rate,
        "sent_spans": totals.sent_spans.load(Ordering::Relaxed),
        "accepted_spans": accepted,
        "accepted_spans_per_second": accepted as f64 / elapsed,
        "refused_requests": totals.refused_requests.load(Ordering::Relaxed),
        "failed_requests": totals.failed_requests.load(Ordering::Relaxed),
        "export_latency_us": latency,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Waits for the workers; the run's seconds and its latency figures (µs).
async fn finish(
    workers: Vec<tokio::task::JoinHandle<()>>,
    start: Instant,
    latencies: &Mutex<Histogram<u64>>,
) -> anyhow::Result<(f64, serde_json::Value)> {
    for worker in workers {
        worker.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let latencies = latencies.lock().await;
    let figures = serde_json::json!({
        "p50": latencies.value_at_quantile(0.5),
        "p99": latencies.value_at_quantile(0.99),
        "max": latencies.max(),
    });
    Ok((elapsed, figures))
}

/// A batch of `events` CDEvents (a multiple of 3) starting at deployment
/// `n`, timestamped in the hour before `now`, or all at `at`.
fn cdevents_batch(n: u64, events: usize, now: i64, at: Option<i64>) -> String {
    let mut out = String::with_capacity(events * 420);
    out.push('[');
    for i in 0..(events as u64).div_ceil(3) {
        let d = n + i;
        let service = d % 500;
        let time =
            chrono::DateTime::from_timestamp(at.unwrap_or(now - 3_600 + (d % 3_000) as i64), 0)
                .unwrap_or_default()
                .to_rfc3339();
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            concat!(
                r#"{{"context":{{"specversion":"0.5.1","id":"c-{d}","source":"/git","type":"dev.cdevents.change.created.0.4.0","timestamp":"{t}"}},"subject":{{"id":"change-{d}","source":"/git"}}}},"#,
                r#"{{"context":{{"specversion":"0.5.1","id":"a-{d}","source":"/ci","type":"dev.cdevents.artifact.packaged.0.3.0","timestamp":"{t}"}},"subject":{{"id":"pkg:oci/service-{s}@sha256:{d:064x}","source":"/ci","content":{{"change":{{"id":"change-{d}"}}}}}}}},"#,
                r#"{{"context":{{"specversion":"0.5.1","id":"d-{d}","source":"/cd","type":"dev.cdevents.service.deployed.0.3.0","timestamp":"{t}"}},"subject":{{"id":"service/service-{s}","source":"/cd","content":{{"environment":{{"id":"production"}},"artifactId":"pkg:oci/service-{s}@sha256:{d:064x}"}}}}}}"#
            ),
            d = d,
            s = service,
            t = time,
        ));
    }
    out.push(']');
    out
}

/// `sha256=` + the hex HMAC-SHA256 of `body`, GitHub's signature.
fn github_signature(secret: &str, body: &[u8]) -> String {
    use hmac::{KeyInit, Mac};
    use std::fmt::Write as _;
    let mut mac =
        hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let mut out = String::with_capacity(71);
    out.push_str("sha256=");
    for byte in mac.finalize().into_bytes() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// Delivery `k` of `worker`: a push of revision k (after k-1) when k is
/// even, else the deployment_status deploying it.
fn github_delivery(worker: u64, k: u64, now: i64) -> (&'static str, String) {
    // Never all zeros: that is GitHub's "no commit".
    let revision = |k: u64| format!("{:08x}{k:032x}", worker + 1);
    let repo = (worker * 7 + k / 2) % 50;
    let at = rfc3339_seconds(now);
    if k.is_multiple_of(2) {
        let (before, after) = (revision(k.saturating_sub(2)), revision(k));
        let commit = rfc3339_seconds(now - 3_600);
        (
            "push",
            format!(
                r#"{{"ref":"refs/heads/main","before":"{before}","after":"{after}","created":false,"deleted":false,"forced":false,"commits":[{{"id":"{after}","timestamp":"{commit}","message":"change","distinct":true}}],"head_commit":{{"id":"{after}","timestamp":"{commit}"}},"repository":{{"full_name":"acme/service-{repo}","name":"service-{repo}","pushed_at":{now}}}}}"#
            ),
        )
    } else {
        let sha = revision(k - 1);
        let id = worker * 1_000_000_000 + k;
        (
            "deployment_status",
            format!(
                r#"{{"action":"created","deployment_status":{{"id":{id},"state":"success","environment":"production","created_at":"{at}"}},"deployment":{{"id":{id},"sha":"{sha}","ref":"main","environment":"production","payload":{{}}}},"repository":{{"full_name":"acme/service-{repo}","name":"service-{repo}"}}}}"#
            ),
        )
    }
}

fn rfc3339_seconds(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn github(args: Args, secret: String) -> anyhow::Result<()> {
    let endpoint = if args.endpoint.ends_with(":4317") {
        "http://127.0.0.1:8088/github".to_string()
    } else {
        args.endpoint.clone()
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .build()?;
    let totals = Arc::new(Totals::default());
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let secret = Arc::new(secret);
    let mut workers = Vec::new();
    for worker in 0..args.connections as u64 {
        let (client, endpoint, totals, latencies, secret) = (
            client.clone(),
            endpoint.clone(),
            totals.clone(),
            latencies.clone(),
            secret.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut k = 0u64;
            while Instant::now() < deadline {
                let (event, body) = github_delivery(worker, k, now);
                k += 1;
                let signature = github_signature(&secret, body.as_bytes());
                let sent = Instant::now();
                let result = client
                    .post(&endpoint)
                    .header("content-type", "application/json")
                    .header("x-github-event", event)
                    .header("x-hub-signature-256", signature)
                    .body(body)
                    .send()
                    .await;
                let _ = local.record(sent.elapsed().as_micros() as u64);
                totals.sent_spans.fetch_add(1, Ordering::Relaxed);
                match result.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        totals.accepted_spans.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(429) => {
                        totals.refused_requests.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        totals.failed_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = latencies.lock().await.add(&local);
        }));
    }
    let (elapsed, latency) = finish(workers, start, &latencies).await?;
    let accepted = totals.accepted_spans.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "mode": "github",
        "seconds": elapsed,
        "connections": args.connections,
        "sent_deliveries": totals.sent_spans.load(Ordering::Relaxed),
        "applied_deliveries": accepted,
        "applied_deliveries_per_second": accepted as f64 / elapsed,
        "refused_requests": totals.refused_requests.load(Ordering::Relaxed),
        "failed_requests": totals.failed_requests.load(Ordering::Relaxed),
        "request_latency_us": latency,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

async fn cdevents(args: Args) -> anyhow::Result<()> {
    let endpoint = if args.endpoint.ends_with(":4317") {
        "http://127.0.0.1:8088/cdevents".to_string()
    } else {
        args.endpoint.clone()
    };
    let events = (args.batch / 3).max(1) * 3;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .tcp_nodelay(true)
        .build()?;
    let totals = Arc::new(Totals::default());
    let latencies = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let period = (args.rate > 0).then(|| {
        Duration::from_secs_f64(events as f64 * args.connections as f64 / args.rate as f64)
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for worker in 0..args.connections as u64 {
        let (client, endpoint, totals, latencies) = (
            client.clone(),
            endpoint.clone(),
            totals.clone(),
            latencies.clone(),
        );
        let age = args.cdevents_age;
        workers.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut next = Instant::now();
            // Each worker owns its own range of deployment numbers.
            let mut n = worker * 1_000_000_000;
            while Instant::now() < deadline {
                if let Some(period) = period {
                    tokio::time::sleep_until(next.into()).await;
                    next += period;
                }
                let at = age.map(|age| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(now, |d| d.as_secs() as i64)
                        - age
                });
                let body = cdevents_batch(n, events, now, at);
                n += (events / 3) as u64;
                let sent = Instant::now();
                let result = client
                    .post(&endpoint)
                    .header("content-type", "application/cloudevents-batch+json")
                    .body(body)
                    .send()
                    .await;
                let _ = local.record(sent.elapsed().as_micros() as u64);
                totals
                    .sent_spans
                    .fetch_add(events as u64, Ordering::Relaxed);
                match result.map(|r| r.status().as_u16()) {
                    Ok(202) => {
                        totals
                            .accepted_spans
                            .fetch_add(events as u64, Ordering::Relaxed);
                    }
                    Ok(429) => {
                        totals.refused_requests.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    _ => {
                        totals.failed_requests.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let _ = latencies.lock().await.add(&local);
        }));
    }
    let (elapsed, latency) = finish(workers, start, &latencies).await?;
    let accepted = totals.accepted_spans.load(Ordering::Relaxed);
    let report = serde_json::json!({
        "mode": "cdevents",
        "seconds": elapsed,
        "connections": args.connections,
        "events_per_request": events,
        "sent_events": totals.sent_spans.load(Ordering::Relaxed),
        "accepted_events": accepted,
        "accepted_events_per_second": accepted as f64 / elapsed,
        "refused_requests": totals.refused_requests.load(Ordering::Relaxed),
        "failed_requests": totals.failed_requests.load(Ordering::Relaxed),
        "request_latency_us": latency,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Produces `--messages` OTLP trace requests to Kafka and waits until the
/// broker acknowledged every one.
fn kafka(args: Args, brokers: &str) -> anyhow::Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::types::RDKafkaErrorCode;
    if args.history {
        return kafka_history(&args, brokers);
    }
    let batches: Vec<Vec<u8>> = (0..args.distinct.max(1))
        .map(|seed| {
            realistic_batch_among(
                args.batch,
                seed as u64,
                args.services,
                args.total_services.unwrap_or(args.services),
            )
            .encode_to_vec()
        })
        .collect();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()?;
    let start = Instant::now();
    let mut bytes = 0u64;
    for i in 0..args.messages {
        let payload = &batches[i as usize % batches.len()];
        bytes += payload.len() as u64;
        let mut record = BaseRecord::<(), [u8]>::to(&args.topic).payload(payload.as_slice());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(120))?;
    let elapsed = start.elapsed().as_secs_f64();
    let report = serde_json::json!({
        "mode": "kafka",
        "seconds": elapsed,
        "messages": args.messages,
        "spans_per_message": args.batch,
        "messages_per_second": args.messages as f64 / elapsed,
        "spans_per_second": (args.messages * args.batch as u64) as f64 / elapsed,
        "mib_per_second": bytes as f64 / elapsed / 1_048_576.0,
    });
    if args.json {
        println!("{report}");
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Produces the synthetic delivery history to `--topic`, each event keyed
/// by its service, and waits until the broker acknowledged every one.
fn kafka_history(args: &Args, brokers: &str) -> anyhow::Result<()> {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use rdkafka::types::RDKafkaErrorCode;
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    };
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()?;
    let start = Instant::now();
    for value in doraflow::cdevents::synth::history(args.events, now) {
        let event = doraflow::cdevents::decode_event(&value)?;
        let key = doraflow::cdevents::forward_key(&value, &event);
        let payload = value.to_string();
        let mut record = BaseRecord::<str, str>::to(&args.topic)
            .key(key.as_str())
            .payload(payload.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => anyhow::bail!("produce failed: {e}"),
            }
        }
    }
    producer.flush(Duration::from_secs(300))?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"mode": "kafka-history", "events": args.events, "seconds": elapsed, "now": now})
    );
    Ok(())
}

fn write_history(args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    use std::io::Write;
    let now = match args.now {
        Some(now) => now,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs() as i64,
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for event in doraflow::cdevents::synth::history(args.events, now) {
        writeln!(file, "{event}")?;
    }
    file.flush()?;
    println!(
        "{}",
        serde_json::json!({"written": args.events, "now": now, "path": path})
    );
    Ok(())
}

/// Sends the lines of `path` as batches to the webhook, `--connections` requests in flight.
async fn send_history(args: &Args, path: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let bodies: Vec<String> = lines
        .chunks(args.batch.max(1))
        .map(|chunk| format!("[{}]", chunk.join(",")))
        .collect();
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (client, bodies, next, endpoint) = (
            client.clone(),
            bodies.clone(),
            next.clone(),
            args.endpoint.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(body) = bodies.get(i) else {
                    return Ok::<(), anyhow::Error>(());
                };
                loop {
                    let response = client
                        .post(&endpoint)
                        .header("content-type", "application/cloudevents-batch+json")
                        .body(body.clone())
                        .send()
                        .await?;
                    match response.status().as_u16() {
                        202 => break,
                        // Back-pressure: wait as told, then send it again.
                        429 | 503 => tokio::time::sleep(Duration::from_millis(50)).await,
                        other => {
                            anyhow::bail!("webhook answered {other}: {}", response.text().await?)
                        }
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "mode": "send_history",
            "events": lines.len(),
            "seconds": seconds,
            "events_per_second": lines.len() as f64 / seconds,
        })
    );
    Ok(())
}
