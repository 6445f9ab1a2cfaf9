//! The Kafka receiver and exporter against a real Kafka-protocol broker
//! (Tansu, started by `scripts/test`, which sets `DORAFLOW_TEST_KAFKA`).
//! Messages are produced and read back with librdkafka, the one the
//! `rdkafka` crate builds. Every test makes its own topics and groups.

mod common;

use std::time::Duration;

use common::kafka::{
    Record, broker, create_topic, create_topic_with, keyed, produce, produce_with, unique,
};
use common::{Doraflow, Metrics, free_port, say_skipped};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use serde_json::{Value, json};

/// A message read back.
#[derive(Debug)]
struct Read {
    key: Option<String>,
    payload: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// Reads `n` messages from `topic` with a fresh group, from the start.
fn read(broker: &str, topic: &str, n: usize) -> Vec<Read> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < n && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(Read {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    out
}

const HOUR: i64 = 3_600;

fn timestamp(seconds_ago: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64;
    chrono::DateTime::from_timestamp(now - seconds_ago, 0)
        .expect("a valid time")
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A `service.deployed` CDEvent (v0.5) to production, an hour ago.
fn deployed(id: &str, service: &str) -> Value {
    json!({
        "context": {"specversion": "0.5.1", "id": id, "source": "/ci", "type": "dev.cdevents.service.deployed.0.3.0", "timestamp": timestamp(HOUR)},
        "subject": {"id": format!("service/{service}"), "content": {"environment": {"id": "production"}, "artifactId": format!("pkg:oci/{service}@sha256:1")}}
    })
}

/// Deployment `d{i}` of `svc{i % 4}`, keyed by its service.
fn deployment_of(i: usize) -> Record {
    let service = format!("svc{}", i % 4);
    keyed(
        &service,
        deployed(&format!("d{i}"), &service)
            .to_string()
            .into_bytes(),
    )
}

fn deployments(m: &Metrics, service: &str) -> f64 {
    m.counter(
        "dora_deployments_total",
        &[
            ("service", service),
            ("environment", "production"),
            ("outcome", "success"),
        ],
    )
}

fn requests(m: &Metrics, service: &str) -> f64 {
    m.counter(
        "dora_service_requests_total",
        &[("service", service), ("environment", "production")],
    )
}

/// The `receivers.kafka` section (indented for `receivers:`), test timings.
fn kafka_receiver(broker: &str, group: &str, topics: &str, extra: &str) -> String {
    format!(
        "  kafka:
    brokers: \"{broker}\"
    group_id: \"{group}\"
    session_timeout: 6s
    heartbeat_interval: 1s
    topics: {topics}
{extra}"
    )
}

fn cluster_config(receiver: &str, prometheus: u16) -> String {
    format!(
        "receivers:
{receiver}
processors:
  red: {{ window: 5m, slice: 10s }}
  dora: {{ windows: [7d, 30d] }}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [kafka], processors: [red, dora], exporters: [prometheus] }}
"
    )
}

fn start_cluster(receiver: &str) -> Doraflow {
    let prometheus = free_port();
    Doraflow::start_yaml(&cluster_config(receiver, prometheus), prometheus, 0, 0)
}

/// Polls `/metrics` of every process until `check` holds (60 s at most:
/// joining a group takes a few seconds on the test broker).
async fn until(what: &str, processes: &[&Doraflow], check: impl Fn(&[Metrics]) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let metrics: Vec<Metrics> = processes.iter().map(|p| p.metrics()).collect();
        if check(&metrics) {
            return;
        }
        if std::time::Instant::now() > deadline {
            // What each process showed, to tell which figure was off.
            for (i, m) in metrics.iter().enumerate() {
                for family in ["dora_deployments_total", "dora_service_requests_total"] {
                    eprintln!("process {i}: {:?}", m.samples(family));
                }
            }
            panic!("{what} did not happen within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cdevents_and_otlp_from_kafka_reach_metrics_exactly_and_broken_messages_are_dead_lettered()
{
    let Some(broker) = broker("kafka: cdevents and otlp") else {
        return;
    };
    let (events, spans_topic, json_topic, dlq) = (
        unique("events"),
        unique("spans"),
        unique("spans-json"),
        unique("dlq"),
    );
    create_topic(&broker, &events, 3).await;
    create_topic(&broker, &spans_topic, 3).await;
    create_topic(&broker, &json_topic, 1).await;
    create_topic(&broker, &dlq, 1).await;

    // CDEvents, all keyed `checkout` (one partition, in order): two
    // deployments, a broken message, then a batch of two and one in binary
    // mode after it. `payments` gets one on its own key.
    let binary = deployed("co-5", "checkout");
    let mut binary_record = keyed(
        "checkout",
        json!({ "subject": binary["subject"] })
            .to_string()
            .into_bytes(),
    );
    binary_record.headers = vec![
        ("ce_specversion", "1.0".to_string()),
        ("ce_id", "co-5".to_string()),
        ("ce_type", "dev.cdevents.service.deployed.0.3.0".to_string()),
        ("ce_source", "/ci".to_string()),
        ("ce_time", timestamp(HOUR)),
    ];
    let records = vec![
        keyed(
            "checkout",
            deployed("co-1", "checkout").to_string().into_bytes(),
        ),
        keyed(
            "checkout",
            deployed("co-2", "checkout").to_string().into_bytes(),
        ),
        keyed("checkout", b"{\"context\": not json".to_vec()),
        keyed(
            "checkout",
            json!([deployed("co-3", "checkout"), deployed("co-4", "checkout")])
                .to_string()
                .into_bytes(),
        ),
        binary_record,
        keyed(
            "payments",
            deployed("pay-1", "payments").to_string().into_bytes(),
        ),
    ];
    produce(&broker, &events, &records);
    // OTLP protobuf: 5 requests of 20 checkout spans (2 errors each), and a
    // malformed one between them; OTLP/JSON: 7 spans of payments.
    let mut otlp: Vec<Record> = (0..5)
        .map(|_| {
            keyed(
                "checkout",
                common::service_spans("checkout", 18, 2).encode_to_vec(),
            )
        })
        .collect();
    otlp.insert(2, keyed("checkout", vec![0x0a, 0xff, 0x01]));
    produce(&broker, &spans_topic, &otlp);
    let json_request =
        serde_json::to_vec(&common::service_spans("payments", 7, 0)).expect("OTLP/JSON");
    produce(&broker, &json_topic, &[keyed("payments", json_request)]);

    let topics = format!(
        "[{{ topic: \"{events}\", format: cdevents }}, {{ topic: \"{spans_topic}\", format: otlp_proto, signal: traces }}, {{ topic: \"{json_topic}\", format: otlp_json, signal: traces }}]"
    );
    let receiver = kafka_receiver(
        &broker,
        &unique("group"),
        &topics,
        &format!("    dead_letter_topic: \"{dlq}\""),
    );
    let doraflow = start_cluster(&receiver);
    until("every message applied", &[&doraflow], |m| {
        deployments(&m[0], "checkout") == 5.0
            && deployments(&m[0], "payments") == 1.0
            && requests(&m[0], "checkout") == 100.0
            && requests(&m[0], "payments") == 7.0
    })
    .await;
    // Offsets are settled (and acceptance counted) just after the apply.
    let accepted = |m: &Metrics, signal: &str| {
        m.counter(
            "doraflow_receiver_accepted_items_total",
            &[
                ("receiver", "kafka"),
                ("transport", "kafka"),
                ("signal", signal),
            ],
        )
    };
    until("acceptance counted", &[&doraflow], |m| {
        accepted(&m[0], "traces") >= 107.0 && accepted(&m[0], "events") >= 6.0
    })
    .await;
    let m = doraflow.metrics();
    assert_eq!(accepted(&m, "traces"), 107.0);
    assert_eq!(accepted(&m, "events"), 6.0);
    assert_eq!(
        m.counter(
            "dora_service_errors_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        10.0
    );
    assert_eq!(
        m.counter(
            "doraflow_kafka_dead_letter_messages_total",
            &[("topic", &events), ("result", "sent")]
        ),
        1.0
    );
    assert_eq!(
        m.counter(
            "doraflow_kafka_dead_letter_messages_total",
            &[("topic", &spans_topic), ("result", "sent")]
        ),
        1.0
    );
    // The dead letters, read back: the bytes as sent, the error and the origin.
    let mut dead = read(&broker, &dlq, 2);
    assert_eq!(dead.len(), 2, "dead letters: {dead:?}");
    dead.sort_by_key(|d| d.payload.len());
    let header = |d: &Read, key: &str| {
        d.headers
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no header {key} in {:?}", d.headers))
    };
    let otlp_dead = &dead[0];
    assert_eq!(otlp_dead.payload, vec![0x0a, 0xff, 0x01]);
    assert_eq!(header(otlp_dead, "doraflow.source.topic"), spans_topic);
    assert_eq!(header(otlp_dead, "doraflow.source.offset"), "2");
    assert!(
        header(otlp_dead, "doraflow.error").contains("malformed protobuf"),
        "{:?}",
        otlp_dead.headers
    );
    let event_dead = &dead[1];
    assert_eq!(event_dead.payload, b"{\"context\": not json".to_vec());
    assert_eq!(event_dead.key.as_deref(), Some("checkout"));
    assert_eq!(header(event_dead, "doraflow.source.topic"), events);
    assert_eq!(header(event_dead, "doraflow.source.offset"), "2");
    assert!(
        header(event_dead, "doraflow.error").starts_with("malformed JSON"),
        "{:?}",
        event_dead.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_before_committing_rereads_and_counts_every_deployment_once() {
    let Some(broker) = broker("kafka: crash before commit") else {
        return;
    };
    let topic = unique("crash");
    create_topic(&broker, &topic, 2).await;
    // 20 deployments over 4 services, and 5 of them delivered twice (as a
    // producer's retry would): 25 messages, 20 deployments.
    let mut records: Vec<Record> = (0..20).map(deployment_of).collect();
    for i in 0..5 {
        records.push(deployment_of(i));
    }
    produce(&broker, &topic, &records);
    let group = unique("crash-group");
    // Commits only at shutdown: a SIGKILL leaves nothing committed.
    let receiver = kafka_receiver(
        &broker,
        &group,
        &format!("[{{ topic: \"{topic}\", format: cdevents }}]"),
        "    commit_interval: 1h",
    );
    let consumed = |m: &Metrics| {
        m.counter(
            "doraflow_kafka_consumed_messages_total",
            &[("topic", &topic)],
        )
    };
    let total = |m: &Metrics| {
        (0..4)
            .map(|i| deployments(m, &format!("svc{i}")))
            .sum::<f64>()
    };

    let mut first = start_cluster(&receiver);
    until("all 25 messages consumed", &[&first], |m| {
        consumed(&m[0]) == 25.0
    })
    .await;
    assert_eq!(total(&first.metrics()), 20.0);
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    // The restart reads all 25 again (nothing was committed); the duplicates
    // are recognised by their event id.
    let mut second = start_cluster(&receiver);
    until("all 25 messages read again", &[&second], |m| {
        consumed(&m[0]) == 25.0
    })
    .await;
    let m = second.metrics();
    for i in 0..4 {
        assert_eq!(deployments(&m, &format!("svc{i}")), 5.0, "svc{i}");
    }
    // A clean stop flushes the changelog and commits: the next member
    // restores the state from the changelog and reads only what came after.
    second.terminate();
    let third = start_cluster(&receiver);
    until("partitions assigned", &[&third], |m| {
        m[0].counter("doraflow_kafka_assigned_partitions", &[("group", &group)]) == 2.0
    })
    .await;
    produce(
        &broker,
        &topic,
        &[keyed(
            "svc0",
            deployed("d-late", "svc0").to_string().into_bytes(),
        )],
    );
    until("the new message consumed", &[&third], |m| {
        consumed(&m[0]) >= 1.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = third.metrics();
    assert_eq!(
        consumed(&m),
        1.0,
        "only the message after the commit is read"
    );
    // svc0's 5 earlier deployments came along in the changelog: 5 + 1.
    assert_eq!(deployments(&m, "svc0"), 6.0);
    assert_eq!(deployments(&m, "svc1"), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pipeline_pauses_the_partitions_and_loses_nothing() {
    let Some(broker) = broker("kafka: back-pressure") else {
        return;
    };
    let topic = unique("pressure");
    create_topic(&broker, &topic, 2).await;
    // 200 requests of 25 spans each into a pipeline that queues one batch.
    // Every pause purges librdkafka's fetched messages and a resume fetches
    // again, so this runs at a few messages a second on the test broker:
    // fewer messages, and more time than `until` gives.
    let records: Vec<Record> = (0..200)
        .map(|i| {
            let service = format!("svc{}", i % 2);
            keyed(
                &service,
                common::service_spans(&service, 24, 1).encode_to_vec(),
            )
        })
        .collect();
    produce(&broker, &topic, &records);
    let prometheus = free_port();
    let receiver = kafka_receiver(
        &broker,
        &unique("pressure-group"),
        &format!("[{{ topic: \"{topic}\", format: otlp_proto, signal: traces }}]"),
        // One message a batch: merged, 400 small messages are a few batches
        // the pipeline keeps up with, and nothing would push back.
        "    max_batch_messages: 1\n",
    );
    let config = cluster_config(&receiver, prometheus).replace(
        "exporters: [prometheus] }",
        "exporters: [prometheus], queue_size: 1 }",
    );
    // The engine held 5 ms after each batch (a debug-build test aid): the
    // one-batch queue fills for certain, not only when the scheduler lets
    // the consumer run ahead.
    let hold = [("DORAFLOW_TEST_ENGINE_HOLD_MS", "5")];
    let doraflow = Doraflow::start_yaml_env(&config, prometheus, 0, 0, &hold);
    common::eventually_within("every span counted", Duration::from_secs(180), || {
        let m = doraflow.metrics();
        requests(&m, "svc0") + requests(&m, "svc1") >= 5_000.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = doraflow.metrics();
    assert_eq!(requests(&m, "svc0"), 2_500.0);
    assert_eq!(requests(&m, "svc1"), 2_500.0);
    assert_eq!(
        m.counter(
            "dora_service_errors_total",
            &[("service", "svc0"), ("environment", "production")]
        ),
        100.0
    );
    let pauses: f64 = m
        .samples("doraflow_kafka_pauses_total")
        .iter()
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert!(pauses > 0.0, "the consumer never paused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_and_events_sent_to_the_sidecar_show_up_on_the_cluster() {
    let Some(broker) = broker("kafka: sidecar to cluster") else {
        return;
    };
    let (spans_topic, events) = (unique("side-spans"), unique("side-events"));
    create_topic(&broker, &spans_topic, 3).await;
    create_topic(&broker, &events, 3).await;
    let (grpc, webhook, sidecar_prometheus) = (free_port(), free_port(), free_port());
    let sidecar = Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\" }}
exporters:
  kafka:
    brokers: \"{broker}\"
    topics: {{ traces: \"{spans_topic}\", cdevents: \"{events}\" }}
    compression: zstd
  prometheus: {{ endpoint: \"127.0.0.1:{sidecar_prometheus}\" }}
pipelines:
  sidecar: {{ receivers: [otlp, webhook], exporters: [kafka, prometheus] }}
"
        ),
        sidecar_prometheus,
        grpc,
        webhook,
    );
    let cluster = start_cluster(&kafka_receiver(
        &broker,
        &unique("cluster"),
        &format!(
            "[{{ topic: \"{spans_topic}\", format: otlp_proto, signal: traces }}, {{ topic: \"{events}\", format: cdevents }}]"
        ),
        "",
    ));

    // One request with two services: the sidecar splits it by service.
    use doraflow::otlp::synth::{resource, span, trace_request};
    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let t0 = 1_764_000_000_000_000_000u64;
    let server = |status| span(SpanKind::Server, t0, t0 + 3_000_000, status, None);
    let request = trace_request(vec![
        (
            resource(Some("checkout"), Some("production")),
            vec![
                server(StatusCode::Ok),
                server(StatusCode::Error),
                server(StatusCode::Ok),
            ],
        ),
        (
            resource(Some("payments"), Some("production")),
            vec![server(StatusCode::Ok); 4],
        ),
        (
            resource(Some("checkout"), Some("production")),
            vec![server(StatusCode::Ok)],
        ),
    ]);
    let mut client = TraceServiceClient::connect(sidecar.grpc_url())
        .await
        .expect("connect");
    client.export(request).await.expect("export");
    let http = reqwest::Client::new();
    let answer = http
        .post(sidecar.webhook_url())
        .header("content-type", "application/cloudevents-batch+json")
        .body(json!([deployed("s-1", "checkout"), deployed("s-2", "payments")]).to_string())
        .send()
        .await
        .expect("webhook");
    assert_eq!(answer.status(), 202);

    until(
        "the cluster counted what the sidecar got",
        &[&cluster],
        |m| {
            requests(&m[0], "checkout") == 4.0
                && requests(&m[0], "payments") == 4.0
                && deployments(&m[0], "checkout") == 1.0
                && deployments(&m[0], "payments") == 1.0
        },
    )
    .await;
    let m = cluster.metrics();
    assert_eq!(
        m.counter(
            "dora_service_errors_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        1.0
    );
    // Delivery reports: 2 OTLP parts (one per service) and 2 events.
    let s = sidecar.metrics();
    assert_eq!(
        s.counter("doraflow_exporter_sent_total", &[("exporter", "kafka")]),
        4.0
    );
    // The parts are keyed by service, each a valid request of its own.
    let parts = read(&broker, &spans_topic, 2);
    let mut keys: Vec<_> = parts.iter().filter_map(|p| p.key.clone()).collect();
    keys.sort();
    assert_eq!(keys, ["checkout", "payments"]);
    for part in &parts {
        let decoded =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                part.payload.as_slice(),
            )
            .expect("a valid request");
        let spans: usize = decoded
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans, 4, "{:?}", part.key);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_doraflow_derives_are_forwarded_as_cdevents_keyed_by_service() {
    let Some(broker) = broker("kafka: derived incidents forwarded") else {
        return;
    };
    let (spans_topic, events) = (unique("derived-spans"), unique("derived-events"));
    create_topic(&broker, &spans_topic, 1).await;
    create_topic(&broker, &events, 1).await;
    let doraflow = Doraflow::start_exporting(
        "window: 5m, slice: 10s",
        "derived_incidents: { evaluation_interval: 100ms, resolve_after: 1h }",
        "interval: 5s",
        256,
        &format!(
            "  kafka:\n    brokers: \"{broker}\"\n    topics: {{ traces: \"{spans_topic}\", cdevents: \"{events}\" }}\n"
        ),
    );
    // 10 errors in 110 requests: 9% > 1%, over the 100 requests needed.
    common::send_checkout_spans(&doraflow, 100, 10).await;
    let forwarded = read(&broker, &events, 1);
    assert_eq!(forwarded.len(), 1, "no derived incident on {events}");
    let incident = &forwarded[0];
    assert_eq!(incident.key.as_deref(), Some("checkout"));
    assert!(
        incident.headers.contains(&(
            "content-type".to_string(),
            "application/cloudevents+json".to_string()
        )),
        "{:?}",
        incident.headers
    );
    let event: Value = serde_json::from_slice(&incident.payload).expect("JSON");
    assert_eq!(
        event["context"]["type"],
        "dev.cdevents.incident.detected.0.3.0"
    );
    assert_eq!(event["subject"]["content"]["service"]["id"], "checkout");
    assert_eq!(
        event["subject"]["content"]["environment"]["id"],
        "production"
    );
    // It decodes as the incident it is, so a cluster tier counts it.
    let decoded = doraflow::cdevents::decode_event(&event).expect("a valid CDEvent");
    assert!(matches!(
        decoded.kind,
        doraflow::model::delivery::DeliveryKind::IncidentOpened { ref service, .. } if service == "checkout"
    ));
    // The spans went on as one request of one service.
    let spans = read(&broker, &spans_topic, 1);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].key.as_deref(), Some("checkout"));
    assert_eq!(
        spans[0].payload,
        common::checkout_spans(100, 10).encode_to_vec()
    );
}

/// With the changelog (the default) it holds what Kafka brought and the
/// storage checkpoint holds nothing of it; without, the checkpoint does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_changelog_a_sigkill_loses_nothing_and_counts_nothing_twice() {
    a_sigkill_loses_nothing_and_counts_nothing_twice(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_storage_a_sigkill_after_a_checkpoint_loses_nothing_and_counts_nothing_twice() {
    a_sigkill_loses_nothing_and_counts_nothing_twice(false).await
}

async fn a_sigkill_loses_nothing_and_counts_nothing_twice(changelog: bool) {
    let Some(broker) = broker("kafka: crash with storage") else {
        return;
    };
    let events = unique("crash-storage-events");
    let spans = unique("crash-storage-spans");
    create_topic(&broker, &events, 2).await;
    create_topic(&broker, &spans, 2).await;
    let group = unique("crash-storage-group");
    let dir = common::TempDir::new("kafka-storage");
    let receiver = kafka_receiver(
        &broker,
        &group,
        &format!(
            "[{{ topic: \"{events}\", format: cdevents }}, {{ topic: \"{spans}\", format: otlp_proto, signal: traces }}]"
        ),
        if changelog {
            "    commit_interval: 200ms"
        } else {
            "    commit_interval: 200ms\n    changelog: { enabled: false }"
        },
    );
    let storage = format!(
        "storage:\n  dir: \"{}\"\n  checkpoint_interval: 1h\n",
        dir.0.join("state").display()
    );
    let start = || {
        let prometheus = free_port();
        let text = format!("{}{storage}", cluster_config(&receiver, prometheus));
        Doraflow::start_yaml(&text, prometheus, 0, 0)
    };
    // Phase `p`: 40 deployments and 40 span messages of 10 spans (1 error)
    // over 4 services; phase 1 also delivers 5 of its deployments twice.
    let phase = |p: usize| -> (Vec<Record>, Vec<Record>) {
        let mut e: Vec<Record> = (p * 40..p * 40 + 40).map(deployment_of).collect();
        if p == 1 {
            for i in 40..45 {
                e.push(deployment_of(i));
            }
        }
        let s = (0..40)
            .map(|i| {
                let service = format!("svc{}", i % 4);
                keyed(
                    &service,
                    common::service_spans(&service, 9, 1).encode_to_vec(),
                )
            })
            .collect();
        (e, s)
    };
    let consumed = |m: &Metrics| {
        m.counter(
            "doraflow_kafka_consumed_messages_total",
            &[("topic", &events)],
        ) + m.counter(
            "doraflow_kafka_consumed_messages_total",
            &[("topic", &spans)],
        )
    };
    let totals = |m: &Metrics| {
        (
            (0..4)
                .map(|i| deployments(m, &format!("svc{i}")))
                .sum::<f64>(),
            (0..4).map(|i| requests(m, &format!("svc{i}"))).sum::<f64>(),
        )
    };

    let mut first = start();
    let (e, s) = phase(0);
    produce(&broker, &events, &e);
    produce(&broker, &spans, &s);
    until("phase 1 applied", &[&first], |m| {
        totals(&m[0]) == (40.0, 400.0)
    })
    .await;
    // A clean stop: the last checkpoint holds phase 1, its offsets committed.
    first.terminate();
    let mut first = start();
    until("phase 1 restored", &[&first], |m| {
        totals(&m[0]) == (40.0, 400.0)
    })
    .await;
    let (e, s) = phase(1);
    produce(&broker, &events, &e);
    produce(&broker, &spans, &s);
    until("phase 2 applied", &[&first], |m| {
        consumed(&m[0]) == 85.0 && totals(&m[0]) == (80.0, 800.0)
    })
    .await;
    // Without the changelog: killed with no checkpoint since (the interval
    // is an hour): phase 2 is applied and its deployments logged, its spans
    // in no checkpoint, so its offsets must not have been committed
    // (checked sensitive: committing applied offsets at once loses phase
    // 2's spans here). With it: the changelog flushed every 200 ms holds
    // phase 2, and offsets are committed only as far as it does.
    // Time for several auto-commits (every 200 ms) before the kill.
    tokio::time::sleep(Duration::from_secs(1)).await;
    first.child.kill().expect("SIGKILL");
    first.child.wait().expect("reaped");

    let second = start();
    until(
        "every message accounted for after the restart",
        &[&second],
        |m| totals(&m[0]) == (80.0, 800.0),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = second.metrics();
    assert_eq!(totals(&m), (80.0, 800.0), "nothing counted twice");
    for i in 0..4 {
        let service = format!("svc{i}");
        assert_eq!(deployments(&m, &service), 20.0, "{service}");
        assert_eq!(requests(&m, &service), 200.0, "{service}");
        assert_eq!(
            m.counter(
                "dora_service_errors_total",
                &[("service", &service), ("environment", "production")]
            ),
            20.0,
            "{service}"
        );
    }
}

/// A Tansu of the test's own on S3 storage (moto's server, which
/// `scripts/test` starts and names in `DORAFLOW_TEST_S3`): unlike the shared
/// in-memory broker it can be killed and started again with its topics,
/// messages and committed offsets, as a real broker restarts.
struct OwnBroker {
    tansu: String,
    s3: String,
    bucket: String,
    address: String,
    child: Option<std::process::Child>,
}

impl OwnBroker {
    /// The broker's own bucket, then the broker; `None` (said plainly) when
    /// the S3 server or Tansu is not there.
    async fn start(test: &str) -> Option<OwnBroker> {
        let (Ok(tansu), Ok(s3)) = (
            std::env::var("DORAFLOW_TEST_TANSU"),
            std::env::var("DORAFLOW_TEST_S3"),
        ) else {
            say_skipped(
                test,
                "no Tansu or S3 server (DORAFLOW_TEST_TANSU or DORAFLOW_TEST_S3 unset; scripts/test starts them)",
            );
            return None;
        };
        let bucket = unique("doraflow-broker");
        let created = reqwest::Client::new()
            .put(format!("{s3}/{bucket}"))
            .send()
            .await
            .expect("the S3 server answers");
        assert!(
            created.status().is_success(),
            "bucket: {}",
            created.status()
        );
        let mut broker = OwnBroker {
            tansu,
            s3,
            bucket,
            address: format!("127.0.0.1:{}", free_port()),
            child: None,
        };
        broker.restart();
        Some(broker)
    }

    /// Starts the broker on its address and bucket; returns once it listens.
    fn restart(&mut self) {
        let url = format!("tcp://{}", self.address);
        let child = std::process::Command::new(&self.tansu)
            .args(["broker", "--storage-engine"])
            .arg(format!("s3://{}/", self.bucket))
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .env("AWS_ENDPOINT", &self.s3)
            .env("AWS_ALLOW_HTTP", "true")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Tansu starts");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&self.address).is_err() {
            assert!(std::time::Instant::now() < deadline, "Tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: no goodbye to its clients.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_killed_and_restarted_mid_stream_loses_nothing_and_counts_nothing_twice() {
    let test = "kafka: broker restart";
    if broker(test).is_none() {
        return;
    }
    let Some(mut own) = OwnBroker::start(test).await else {
        return;
    };
    let broker = own.address.clone();
    let events = unique("restart-events");
    let spans = unique("restart-spans");
    create_topic(&broker, &events, 2).await;
    create_topic(&broker, &spans, 2).await;
    // A phase: 60 deployments and 300 span messages of 10 spans (1 error)
    // over 4 services.
    let phase = |p: usize| -> (Vec<Record>, Vec<Record>) {
        let e = (p * 60..p * 60 + 60).map(deployment_of).collect();
        let s = (0..300)
            .map(|i| {
                let service = format!("svc{}", i % 4);
                keyed(
                    &service,
                    common::service_spans(&service, 9, 1).encode_to_vec(),
                )
            })
            .collect();
        (e, s)
    };
    let totals = |m: &Metrics| {
        (
            (0..4)
                .map(|i| deployments(m, &format!("svc{i}")))
                .sum::<f64>(),
            (0..4).map(|i| requests(m, &format!("svc{i}"))).sum::<f64>(),
        )
    };
    let receiver = kafka_receiver(
        &broker,
        &unique("restart-group"),
        &format!(
            "[{{ topic: \"{events}\", format: cdevents }}, {{ topic: \"{spans}\", format: otlp_proto, signal: traces }}]"
        ),
        "    commit_interval: 200ms",
    );
    let mut doraflow = start_cluster(&receiver);
    let (e, s) = phase(0);
    produce(&broker, &events, &e);
    produce(&broker, &spans, &s);
    until("phase 1 applied", &[&doraflow], |m| {
        totals(&m[0]) == (60.0, 3000.0)
    })
    .await;
    // Phase 2, then the broker killed as soon as it has acknowledged it:
    // doraflow is then fetching and applying it, its offsets not yet
    // committed.
    let (e, s) = phase(1);
    produce(&broker, &events, &e);
    produce(&broker, &spans, &s);
    own.kill();
    let at_kill = totals(&doraflow.metrics());
    eprintln!("broker killed with {at_kill:?} of (120, 6000) applied");
    // Phase 3 is produced while the broker is down: the producer holds it
    // and delivers it once the broker is back.
    let (e, s) = phase(2);
    let producer = {
        let (broker, events, spans) = (broker.clone(), events.clone(), spans.clone());
        std::thread::spawn(move || {
            produce(&broker, &events, &e);
            produce(&broker, &spans, &s);
        })
    };
    // Down for longer than the session timeout (6 s): the member's session
    // expires, its last offsets uncommitted, and it must join again;
    // doraflow keeps running and serving meanwhile.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(
        doraflow.child.try_wait().expect("status").is_none(),
        "doraflow exited while the broker was down"
    );
    // /metrics answers meanwhile. Once the session has expired the member
    // no longer owns the partitions, so (with the changelog) it shows
    // none of their series rather than figures another member may own.
    let during = totals(&doraflow.metrics());
    assert!(
        during.1 >= at_kill.1 || during == (0.0, 0.0),
        "/metrics while the broker is down: {during:?}, {at_kill:?} at the kill"
    );
    own.restart();
    until("all three phases applied", &[&doraflow], |m| {
        totals(&m[0]) == (180.0, 9000.0)
    })
    .await;
    producer.join().expect("phase 3 produced");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let m = doraflow.metrics();
    assert_eq!(totals(&m), (180.0, 9000.0), "nothing counted twice");
    for i in 0..4 {
        let service = format!("svc{i}");
        assert_eq!(deployments(&m, &service), 45.0, "{service}");
        assert_eq!(requests(&m, &service), 2250.0, "{service}");
        assert_eq!(
            m.counter(
                "dora_service_errors_total",
                &[("service", &service), ("environment", "production")]
            ),
            225.0,
            "{service}"
        );
    }
    eprintln!(
        "re-delivered and skipped: {}",
        m.counter(
            "doraflow_kafka_skipped_messages_total",
            &[("topic", &spans)]
        ) + m.counter(
            "doraflow_kafka_skipped_messages_total",
            &[("topic", &events)]
        )
    );
    assert!(
        m.samples("doraflow_component_failures_total").is_empty(),
        "no component failed"
    );
    doraflow.terminate();
}

/// SIGTERM drains within `pipelines.<name>.shutdown_timeout`; a drain that
/// cannot finish (here the broker is gone, so the consumer's final commit
/// and leaving the group hang) is cut off at the timeout and the exit
/// status says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_stuck_past_shutdown_timeout_exits_non_zero() {
    let test = "kafka: shutdown timeout";
    if broker(test).is_none() {
        return;
    }
    let Some(mut own) = OwnBroker::start(test).await else {
        return;
    };
    let broker = own.address.clone();
    let events = unique("stuck-events");
    create_topic(&broker, &events, 1).await;
    produce(
        &broker,
        &events,
        &(0..8).map(deployment_of).collect::<Vec<_>>(),
    );
    let receiver = kafka_receiver(
        &broker,
        &unique("stuck-group"),
        &format!("[{{ topic: \"{events}\", format: cdevents }}]"),
        "",
    );
    let prometheus = free_port();
    let config = cluster_config(&receiver, prometheus).replace(
        "exporters: [prometheus] }",
        "exporters: [prometheus], shutdown_timeout: 2s }",
    );
    let mut doraflow = Doraflow::start_yaml(&config, prometheus, 0, 0);
    until("applied", &[&doraflow], |m| {
        (0..4)
            .map(|i| deployments(&m[0], &format!("svc{i}")))
            .sum::<f64>()
            == 8.0
    })
    .await;
    // With the broker gone the consumer's final commit and leaving the
    // group cannot finish.
    own.kill();
    let asked = std::time::Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &doraflow.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let status = loop {
        if let Some(status) = doraflow.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(20),
            "doraflow did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = asked.elapsed();
    eprintln!("exited with {status} after {took:?}");
    // Not a clean stop: a supervisor must know (and restart it).
    assert_eq!(status.code(), Some(1), "{status}");
    // Bounded by the 2 s timeout (plus the runtime's 1 s for stuck
    // threads), not by the broker's own timeouts.
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

/// `receivers.kafka.settings` reach librdkafka: doraflow reads a broker
/// that is reachable only over TLS (a TLS terminator in front of Tansu,
/// advertised as the broker's address, as a cloud Kafka's load balancer
/// is), trusting the test's own CA through `ssl.ca.location`. The TLS
/// proxy stands in for the broker's own TLS, which this Tansu build does not
/// serve (`--cert` is accepted and plaintext served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_behind_tls_is_read_with_the_tls_settings_passed_to_librdkafka() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let test = "a_broker_behind_tls_is_read_with_the_tls_settings_passed_to_librdkafka";
    let Ok(tansu) = std::env::var("DORAFLOW_TEST_TANSU") else {
        say_skipped(
            test,
            "no Tansu (DORAFLOW_TEST_TANSU unset; scripts/test sets it)",
        );
        return;
    };
    let dir = common::TempDir::new("kafka-tls");
    let ca = common::certs::ca("doraflow kafka test CA");
    let (cert, key) = common::certs::leaf(
        &ca,
        &["localhost", "127.0.0.1"],
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
    );
    let ca_file = common::certs::write(&dir.0, "ca.pem", &ca.pem);
    let ca_file = ca_file.to_str().unwrap().to_string();

    // The broker listens in plaintext on `inner` and tells clients to
    // connect to `outer`, where only TLS is spoken.
    let (inner, outer) = (free_port(), free_port());
    let _broker = common::Process(
        std::process::Command::new(&tansu)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{inner}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{outer}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start Tansu"),
    );
    common::eventually("the broker listens", || {
        std::net::TcpStream::connect(("127.0.0.1", inner)).is_ok()
    })
    .await;
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(rustls_pemfile_certs(&cert), {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap()
    })
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", outer))
        .await
        .unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let proxy = tokio::spawn({
        let handshakes = handshakes.clone();
        async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, handshakes) = (acceptor.clone(), handshakes.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    if let Ok(mut broker) =
                        tokio::net::TcpStream::connect(("127.0.0.1", inner)).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
                    }
                });
            }
        }
    });

    let tls = [
        ("security.protocol", "ssl"),
        ("ssl.ca.location", ca_file.as_str()),
    ];
    let address = format!("127.0.0.1:{outer}");
    let topic = unique("dora-tls");
    create_topic_with(&address, &topic, 2, &tls).await;
    let records: Vec<Record> = (0..12).map(deployment_of).collect();
    produce_with(&address, &topic, &records, &tls);
    let before = handshakes.load(Ordering::SeqCst);

    let doraflow = start_cluster(&kafka_receiver(
        &address,
        &unique("g-tls"),
        &format!("[{{ topic: \"{topic}\", format: cdevents }}]"),
        &format!("    settings: {{ security.protocol: ssl, ssl.ca.location: \"{ca_file}\" }}\n"),
    ));
    until("12 deployments over TLS", &[&doraflow], |m| {
        (0..4)
            .map(|s| deployments(&m[0], &format!("svc{s}")))
            .sum::<f64>()
            == 12.0
    })
    .await;
    let m = doraflow.metrics();
    for s in 0..4 {
        assert_eq!(deployments(&m, &format!("svc{s}")), 3.0, "svc{s}");
    }
    assert!(
        handshakes.load(Ordering::SeqCst) > before,
        "doraflow made no TLS connection"
    );
    proxy.abort();
}

/// The certificates of a PEM chain.
fn rustls_pemfile_certs(pem: &str) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect()
}

/// GitHub and PagerDuty deliveries to a sidecar go out on Kafka as the
/// CDEvents they mean, keyed by service, and the cluster tier computes
/// the same figures from them: push a1 @N-10h, a2 @N-8h; a2 deployed to
/// production @N-2h (lead 8h and 6h: mean 7h); PagerDuty incident
/// triggered @N-1h, resolved @N-30m (30 min to restore, the deployment a
/// failed change).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_source_deliveries_reach_the_cluster_as_cdevents_keyed_by_service() {
    let Some(broker) = broker("kafka: native sources to cluster") else {
        return;
    };
    let events = unique("native-events");
    create_topic(&broker, &events, 3).await;
    let dir = common::TempDir::new("native-sidecar");
    let (github_secret, pagerduty_secret) = ("gh-secret", "pd-secret");
    std::fs::write(dir.0.join("gh"), github_secret).unwrap();
    std::fs::write(dir.0.join("pd"), pagerduty_secret).unwrap();
    let (webhook, sidecar_prometheus) = (free_port(), free_port());
    let sidecar = Doraflow::start_yaml(
        &format!(
            "receivers:
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    github: {{ secret: \"${{file:{gh}}}\" }}
    pagerduty: {{ secret: \"${{file:{pd}}}\", services: {{ \"Shop API\": shop }} }}
exporters:
  kafka:
    brokers: \"{broker}\"
    topics: {{ cdevents: \"{events}\" }}
  prometheus: {{ endpoint: \"127.0.0.1:{sidecar_prometheus}\" }}
pipelines:
  sidecar: {{ receivers: [webhook], exporters: [kafka, prometheus] }}
",
            gh = dir.0.join("gh").display(),
            pd = dir.0.join("pd").display(),
        ),
        sidecar_prometheus,
        0,
        webhook,
    );
    let cluster = start_cluster(&kafka_receiver(
        &broker,
        &unique("native-cluster"),
        &format!("[{{ topic: \"{events}\", format: cdevents }}]"),
        "",
    ));
    let n = common::unix_now();
    let repository =
        json!({ "full_name": "acme/shop", "name": "shop", "pushed_at": n - 8 * 3_600 });
    let push = json!({
        "ref": "refs/heads/main", "before": "0000000000000000000000000000000000000000", "after": "a2",
        "commits": [{ "id": "a1", "timestamp": common::rfc3339(n - 10 * 3_600) },
                    { "id": "a2", "timestamp": common::rfc3339(n - 8 * 3_600) }],
        "repository": repository,
    });
    let status = json!({
        "action": "created",
        "deployment_status": { "id": 1, "state": "success", "environment": "production",
                               "created_at": common::rfc3339(n - 2 * 3_600) },
        "deployment": { "id": 10, "sha": "a2", "environment": "production", "payload": {} },
        "repository": { "full_name": "acme/shop", "name": "shop" },
    });
    let http = reqwest::Client::new();
    for (event, body) in [("push", push), ("deployment_status", status)] {
        let bytes = body.to_string().into_bytes();
        let answer = http
            .post(format!("http://127.0.0.1:{webhook}/github"))
            .header("content-type", "application/json")
            .header("x-github-event", event)
            .header(
                "x-hub-signature-256",
                common::sources::sign(github_secret, &bytes),
            )
            .body(bytes)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 202, "{event}");
    }
    let opened = n - 3_600;
    for (event_type, id, at) in [
        ("incident.triggered", "E1", opened),
        ("incident.resolved", "E2", n - 1_800),
    ] {
        let (status, answer) = common::sources::page(
            &http,
            webhook,
            pagerduty_secret,
            event_type,
            id,
            "Q1",
            opened,
            at,
        )
        .await;
        assert_eq!(status, 202, "{answer}");
    }
    until(
        "the cluster counted the deployment and the incident",
        &[&cluster],
        |m| {
            deployments(&m[0], "shop") == 1.0
                && m[0].get(
                    "dora_mean_time_to_restore_seconds",
                    &[
                        ("service", "shop"),
                        ("environment", "production"),
                        ("window", "7d"),
                    ],
                ) == Some(1_800.0)
        },
    )
    .await;
    let m = cluster.metrics();
    let week = [
        ("service", "shop"),
        ("environment", "production"),
        ("window", "7d"),
    ];
    assert_eq!(m.get("dora_change_failure_ratio", &week), Some(1.0));
    let (status, api) = common::get(cluster.prometheus, "/api/v1/dora").unwrap();
    assert_eq!(status, 200);
    let api: Value = serde_json::from_str(&api).unwrap();
    let shop = api["dora"]["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "shop")
        .expect("shop on the cluster");
    assert_eq!(
        shop["windows"][0]["lead_time"]["mean"],
        json!(7.0 * 3_600.0)
    );
    // Four CDEvents, every one keyed by the service.
    let records = read(&broker, &events, 4);
    let keys: Vec<_> = records.iter().filter_map(|r| r.key.clone()).collect();
    assert_eq!(keys, ["shop"; 4]);
    for record in &records {
        let value: Value = serde_json::from_slice(&record.payload).unwrap();
        assert!(
            value["context"]["type"]
                .as_str()
                .unwrap()
                .starts_with("dev.cdevents.")
        );
    }
    drop(sidecar);
}
