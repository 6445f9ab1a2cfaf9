//! Hand-computed figures of the `dependencies` processor, from requests
//! encoded as an SDK would and decoded by the wire reader with span details.

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::{Link, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{Span, Status};
use prost::Message;

use super::*;
use crate::otlp::synth::{attr, resource, string_attr, trace_request};

const MS: u64 = 1_000_000;
const S: u64 = 1_000_000_000;
const T0: u64 = 1_700_000_000 * S;

struct SpanSpec {
    kind: SpanKind,
    trace: u8,
    id: u8,
    parent: u8,
    start_ms: u64,
    duration_ms: u64,
    error: bool,
    attributes: Vec<(&'static str, Value)>,
}

fn s(v: &str) -> Value {
    Value::StringValue(v.into())
}

fn spec(kind: SpanKind, duration_ms: u64, attributes: Vec<(&'static str, Value)>) -> SpanSpec {
    SpanSpec {
        kind,
        trace: 1,
        id: 0,
        parent: 0,
        start_ms: 0,
        duration_ms,
        error: false,
        attributes,
    }
}

fn span(spec: &SpanSpec) -> Span {
    let start = T0 + spec.start_ms * MS;
    Span {
        trace_id: vec![spec.trace; 16],
        span_id: if spec.id == 0 {
            Vec::new()
        } else {
            vec![spec.id; 8]
        },
        parent_span_id: if spec.parent == 0 {
            Vec::new()
        } else {
            vec![spec.parent; 8]
        },
        name: "span".into(),
        kind: spec.kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: start + spec.duration_ms * MS,
        attributes: spec
            .attributes
            .iter()
            .map(|(k, v)| attr(k, v.clone()))
            .collect(),
        status: spec.error.then(|| Status {
            code: StatusCode::Error as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

fn summary(config: &DependenciesConfig, groups: Vec<(&str, Vec<Span>)>) -> TraceSummary {
    let request = trace_request(
        groups
            .into_iter()
            .map(|(service, spans)| (resource(Some(service), Some("production")), spans))
            .collect(),
    );
    let keys = Arc::new(config.span_keys());
    crate::otlp::traces_protobuf_with(&Bytes::from(request.encode_to_vec()), Some(&keys))
        .expect("valid")
}

fn one(snapshot: &DependencySnapshot, dependency: &str, operation: &str) -> DependencyFigures {
    snapshot
        .dependencies
        .iter()
        .find(|d| d.dependency == dependency && d.operation == operation)
        .unwrap_or_else(|| {
            panic!(
                "no {dependency} {operation} in {:#?}",
                snapshot.dependencies
            )
        })
        .clone()
}

/// Asserts the p50, p95 and p99 of `stats` are `want` ms, to the HDR
/// precision of 2 significant digits: an HDR quantile is the top of its
/// bucket, at most 1% above the value.
fn assert_quantiles_ms(stats: &WindowStats, want: [u64; 3]) {
    let got = stats.quantiles_us.expect("calls in the window");
    for (got, want) in got.into_iter().zip(want) {
        let want = want * 1_000;
        assert!(
            got >= want && (got as f64) < want as f64 * 1.01,
            "{got} µs vs {want} µs"
        );
    }
}

#[test]
fn database_and_http_calls_are_series_named_by_the_semantic_conventions() {
    let config = DependenciesConfig::default();
    let mut p = DependencyProcessor::new(&config, "unknown");
    let db = |ms, operation: &str, error| SpanSpec {
        error,
        ..spec(
            SpanKind::Client,
            ms,
            vec![
                ("db.system.name", s("postgresql")),
                ("db.namespace", s("shop")),
                ("db.operation.name", s(operation)),
                ("db.collection.name", s("orders")),
                ("server.address", s("db.internal")),
            ],
        )
    };
    let spans = vec![
        span(&db(10, "SELECT", false)),
        span(&db(20, "select", true)),
        span(&db(30, "SELECT", false)),
        span(&db(400, "INSERT", false)),
        // Older names: `db.system`, `db.name`, a whole query in `db.operation`.
        span(&spec(
            SpanKind::Client,
            5,
            vec![
                ("db.system", s("MySQL")),
                ("db.name", s("legacy")),
                ("db.operation", s("UPDATE accounts SET x = 1")),
            ],
        )),
        span(&spec(
            SpanKind::Client,
            100,
            vec![
                ("http.request.method", s("POST")),
                ("server.address", s("payments.internal")),
                ("http.response.status_code", Value::IntValue(503)),
            ],
        )),
        span(&spec(
            SpanKind::Client,
            7,
            vec![
                ("rpc.system", s("grpc")),
                ("rpc.service", s("inventory.v1.Stock")),
                ("rpc.method", s("Reserve")),
            ],
        )),
        // Neither a client nor messaging: no series.
        span(&spec(
            SpanKind::Internal,
            1,
            vec![("db.system.name", s("redis"))],
        )),
    ];
    let summary = summary(&config, vec![("checkout", spans)]);
    assert_eq!(summary.details.len(), 7);
    p.apply_traces(&summary, T0);
    let snapshot = p.snapshot(T0 + S);
    assert_eq!(snapshot.dependencies.len(), 5);
    let select = one(&snapshot, "shop", "SELECT orders");
    assert_eq!(
        (
            select.service.as_str(),
            select.environment.as_str(),
            select.kind,
            select.system.as_str()
        ),
        (
            "checkout",
            "production",
            DependencyType::Database,
            "postgresql"
        )
    );
    assert_eq!((select.calls, select.errors), (3, 1));
    assert_eq!((select.window.requests, select.window.errors), (3, 1));
    // Nearest rank of {10, 20, 30} ms: p50 20, p95 and p99 30 (HDR, 2 digits).
    assert_quantiles_ms(&select.window, [20, 30, 30]);
    assert_eq!(one(&snapshot, "shop", "INSERT orders").calls, 1);
    let legacy = one(&snapshot, "legacy", "UPDATE");
    assert_eq!(legacy.system, "mysql");
    let http = one(&snapshot, "payments.internal", "POST");
    assert_eq!(
        (http.kind, http.system.as_str(), http.errors),
        (DependencyType::Http, "http", 1)
    );
    let rpc = one(&snapshot, "inventory.v1.Stock", "Reserve");
    assert_eq!(
        (rpc.kind, rpc.system.as_str()),
        (DependencyType::Rpc, "grpc")
    );
    // Out of the window: the counters stay, the window empties.
    let later = p.snapshot(T0 + 301 * S);
    let select = one(&later, "shop", "SELECT orders");
    assert_eq!((select.calls, select.window.requests), (3, 0));
    assert_eq!(select.window.quantiles_us, None);
}

#[test]
fn cache_lookups_count_hits_per_cache() {
    let config = DependenciesConfig::default();
    let mut p = DependencyProcessor::new(&config, "unknown");
    let lookup = |hit: Value| {
        span(&spec(
            SpanKind::Client,
            1,
            vec![
                ("db.system.name", s("redis")),
                ("db.operation.name", s("GET")),
                ("cache.hit", hit),
            ],
        ))
    };
    let named = span(&spec(
        SpanKind::Internal,
        1,
        vec![("cache.name", s("sessions")), ("cache.hit", s("miss"))],
    ));
    let summary = summary(
        &config,
        vec![(
            "web",
            vec![
                lookup(Value::BoolValue(true)),
                lookup(Value::BoolValue(true)),
                lookup(Value::BoolValue(false)),
                lookup(s("HIT")),
                named,
            ],
        )],
    );
    p.apply_traces(&summary, T0);
    let snapshot = p.snapshot(T0);
    let redis = snapshot
        .caches
        .iter()
        .find(|c| c.cache == "redis")
        .expect("redis");
    assert_eq!((redis.lookups, redis.hits, redis.window_lookups), (4, 3, 4));
    assert_eq!(redis.hit_ratio, Some(0.75));
    let sessions = snapshot
        .caches
        .iter()
        .find(|c| c.cache == "sessions")
        .expect("sessions");
    assert_eq!((sessions.lookups, sessions.hits), (1, 0));
    assert_eq!(sessions.hit_ratio, Some(0.0));
    // The redis spans are database calls too; the internal one is not.
    assert_eq!(snapshot.dependencies.len(), 1);
    assert_eq!(snapshot.dependencies[0].calls, 4);
}

#[test]
fn a_message_waits_from_its_producer_to_its_consumer() {
    let mut config = DependenciesConfig::default();
    config.messaging.creation_time_attribute = Some("message.created_ns".into());
    let mut p = DependencyProcessor::new(&config, "unknown");
    let messaging = |op: &str| {
        vec![
            ("messaging.system", s("kafka")),
            ("messaging.destination.name", s("orders")),
            ("messaging.operation.type", s(op)),
        ]
    };
    let producer = SpanSpec {
        id: 10,
        start_ms: 0,
        ..spec(SpanKind::Producer, 2, messaging("send"))
    };
    // A child of the producer's span: waited 250 - 2 = 248 ms.
    let child = SpanSpec {
        id: 11,
        parent: 10,
        start_ms: 250,
        ..spec(SpanKind::Consumer, 40, messaging("process"))
    };
    // Linked to the producer's span, in another trace: waited 1000 - 2 ms.
    let linked = SpanSpec {
        trace: 2,
        id: 12,
        start_ms: 1_000,
        ..spec(SpanKind::Consumer, 60, messaging("process"))
    };
    let mut linked = span(&linked);
    linked.links = vec![Link {
        trace_id: vec![1; 16],
        span_id: vec![10; 8],
        ..Default::default()
    }];
    // With the creation time attribute: waited 3000 - 2500 = 500 ms, unpaired.
    let mut stamped = spec(SpanKind::Consumer, 20, messaging("process"));
    stamped.trace = 3;
    stamped.id = 13;
    stamped.start_ms = 3_000;
    stamped.attributes.push((
        "message.created_ns",
        Value::IntValue((T0 + 2_500 * MS) as i64),
    ));
    let consumed = summary(
        &config,
        vec![("shipping", vec![span(&child), linked, span(&stamped)])],
    );
    let produced = summary(&config, vec![("orders", vec![span(&producer)])]);
    // The consumer's spans arrive first: they wait for the producer's.
    p.apply_traces(&consumed, T0);
    p.apply_traces(&produced, T0 + S);
    let snapshot = p.snapshot(T0 + 2 * S);
    let process = snapshot
        .dependencies
        .iter()
        .find(|d| d.service == "shipping")
        .expect("consumer series");
    assert_eq!(
        (
            process.kind,
            process.system.as_str(),
            process.dependency.as_str(),
            process.operation.as_str()
        ),
        (DependencyType::Messaging, "kafka", "orders", "process")
    );
    assert_eq!(process.calls, 3);
    assert_quantiles_ms(&process.window, [40, 60, 60]);
    let wait = process.wait.expect("waits known");
    // Only the child pairs: the producer's span id is taken by then.
    assert_eq!(wait.requests, 2);
    assert_quantiles_ms(&wait, [248, 500, 500]);
    let send = snapshot
        .dependencies
        .iter()
        .find(|d| d.service == "orders")
        .expect("producer series");
    assert_eq!((send.operation.as_str(), send.wait), ("send", None));
    let graph = snapshot.graph.expect("graph");
    let edge = &graph.edges[0];
    assert_eq!(
        (
            edge.client.as_str(),
            edge.server.as_str(),
            edge.connection_type
        ),
        ("orders", "shipping", Connection::MessagingSystem)
    );
    assert_eq!(edge.requests, 1);
    // The linked consumer found the producer's place taken: unpaired at once.
    assert_eq!(
        graph.unpaired,
        [Unmatched {
            client: String::new(),
            server: "shipping".into(),
            connection_type: Connection::MessagingSystem,
            spans: 1,
        }]
    );
    let messaging = edge
        .messaging_seconds
        .as_ref()
        .expect("messaging histogram");
    assert!((messaging.sum - 0.248).abs() < 1e-9, "{}", messaging.sum);
}

/// A → B → C over HTTP, B's spans arriving before A's, and a call of C's to
/// an uninstrumented service that never answers with a span.
#[test]
fn the_service_graph_of_three_services_is_exact() {
    let mut config = DependenciesConfig::default();
    config.service_graph.wait = "2s".parse().expect("duration");
    let mut p = DependencyProcessor::new(&config, "unknown");
    let http = |address: &str| {
        vec![
            ("http.request.method", s("GET")),
            ("server.address", s(address)),
        ]
    };
    let a_client = SpanSpec {
        id: 1,
        parent: 9,
        ..spec(SpanKind::Client, 120, http("b"))
    };
    let b_server = SpanSpec {
        id: 2,
        parent: 1,
        start_ms: 5,
        ..spec(SpanKind::Server, 100, vec![])
    };
    let b_client = SpanSpec {
        id: 3,
        parent: 2,
        start_ms: 10,
        error: true,
        ..spec(SpanKind::Client, 50, http("c"))
    };
    let c_server = SpanSpec {
        id: 4,
        parent: 3,
        start_ms: 12,
        ..spec(SpanKind::Server, 45, vec![])
    };
    let c_client = SpanSpec {
        id: 5,
        parent: 4,
        start_ms: 13,
        ..spec(SpanKind::Client, 30, http("ledger.external"))
    };
    let b = summary(&config, vec![("b", vec![span(&b_server), span(&b_client)])]);
    let c = summary(&config, vec![("c", vec![span(&c_server), span(&c_client)])]);
    let a = summary(&config, vec![("a", vec![span(&a_client)])]);
    p.apply_traces(&b, T0);
    p.apply_traces(&c, T0);
    p.apply_traces(&a, T0 + S / 2);
    let graph = p.snapshot(T0 + S).graph.expect("graph");
    let edges: Vec<_> = graph
        .edges
        .iter()
        .map(|e| (e.client.as_str(), e.server.as_str(), e.requests, e.failed))
        .collect();
    assert_eq!(edges, [("a", "b", 1, 0), ("b", "c", 1, 1)]);
    let ab = &graph.edges[0];
    assert_eq!(ab.connection_type, Connection::Direct);
    assert!((ab.server_seconds.sum - 0.100).abs() < 1e-9);
    assert!((ab.client_seconds.sum - 0.120).abs() < 1e-9);
    // 0.1 s falls in the bucket (0.05, 0.1]: the seventh bound.
    assert_eq!(ab.server_seconds.buckets[6], 1);
    assert_eq!(graph.waiting, 1);
    assert!(graph.unpaired.is_empty());
    // Two seconds after it started waiting, C's call to the ledger expires.
    let graph = p.snapshot(T0 + 2 * S).graph.expect("graph");
    assert_eq!(graph.waiting, 0);
    assert_eq!(
        graph.unpaired,
        [Unmatched {
            client: "c".into(),
            server: String::new(),
            connection_type: Connection::Direct,
            spans: 1,
        }]
    );
    assert_eq!(graph.edges.len(), 2);
}

#[test]
fn database_calls_are_edges_at_once_and_a_full_store_drops() {
    let mut config = DependenciesConfig::default();
    config.service_graph.max_items = 2;
    let mut p = DependencyProcessor::new(&config, "unknown");
    let db = spec(
        SpanKind::Client,
        8,
        vec![
            ("db.system.name", s("postgresql")),
            ("db.namespace", s("shop")),
        ],
    );
    let waiting: Vec<Span> = (1..=3)
        .map(|id| {
            span(&SpanSpec {
                id,
                ..spec(SpanKind::Client, 1, vec![])
            })
        })
        .collect();
    let mut spans = vec![span(&db)];
    spans.extend(waiting);
    p.apply_traces(&summary(&config, vec![("api", spans)]), T0);
    let graph = p.snapshot(T0).graph.expect("graph");
    assert_eq!(graph.edges.len(), 1);
    let e = &graph.edges[0];
    assert_eq!(
        (
            e.client.as_str(),
            e.server.as_str(),
            e.connection_type,
            e.requests
        ),
        ("api", "shop", Connection::Database, 1)
    );
    assert_eq!(graph.waiting, 2);
    assert_eq!(graph.dropped.len(), 1);
    assert_eq!(
        (graph.dropped[0].client.as_str(), graph.dropped[0].spans),
        ("api", 1)
    );
}

#[test]
fn past_the_cap_new_series_go_to_the_overflow_series() {
    let config = DependenciesConfig {
        max_series: 2,
        ..DependenciesConfig::default()
    };
    let mut p = DependencyProcessor::new(&config, "unknown");
    let call = |address: &str| {
        span(&spec(
            SpanKind::Client,
            1,
            vec![
                ("http.request.method", s("GET")),
                ("server.address", s(address)),
            ],
        ))
    };
    let spans = vec![call("a"), call("b"), call("c"), call("d"), call("a")];
    p.apply_traces(&summary(&config, vec![("web", spans)]), T0);
    let snapshot = p.snapshot(T0);
    let calls: Vec<_> = snapshot
        .dependencies
        .iter()
        .map(|d| (d.service.as_str(), d.dependency.as_str(), d.calls))
        .collect();
    assert_eq!(
        calls,
        [("web", "a", 2), ("web", "b", 1), (OVERFLOW, OVERFLOW, 2)]
    );
    assert_eq!(p.series_count(), 3);
}

#[test]
fn queue_lengths_keep_the_last_and_the_largest_in_the_window() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
        number_data_point,
    };
    let mut config = DependenciesConfig::default();
    config.messaging.queue_metrics = vec!["messaging.kafka.consumer.lag".into()];
    let mut p = DependencyProcessor::new(&config, "unknown");
    let keys = Arc::new(config.span_keys());
    let request = |values: &[(&str, i64)], name: &str| ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(Some("shipping"), Some("production"))),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: name.into(),
                    data: Some(Data::Gauge(Gauge {
                        data_points: values
                            .iter()
                            .map(|(topic, v)| NumberDataPoint {
                                attributes: vec![string_attr("messaging.destination.name", topic)],
                                value: Some(number_data_point::Value::AsInt(*v)),
                                ..Default::default()
                            })
                            .collect(),
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let decode = |r: ExportMetricsServiceRequest| match crate::otlp::decode_with(
        crate::model::Signal::Metrics,
        crate::otlp::Encoding::Protobuf,
        Bytes::from(r.encode_to_vec()),
        Some(&keys),
    ) {
        Ok(crate::model::Telemetry::Metrics(m)) => m,
        other => panic!("{other:?}"),
    };
    let lag = "messaging.kafka.consumer.lag";
    p.apply_metrics(&decode(request(&[("orders", 40), ("refunds", 3)], lag)), T0);
    p.apply_metrics(&decode(request(&[("orders", 900)], lag)), T0 + 60 * S);
    p.apply_metrics(&decode(request(&[("orders", 12)], lag)), T0 + 120 * S);
    // Not a configured metric.
    p.apply_metrics(&decode(request(&[("orders", 5)], "other.gauge")), T0);
    let snapshot = p.snapshot(T0 + 120 * S);
    let figures: Vec<_> = snapshot
        .queues
        .iter()
        .map(|q| (q.destination.as_str(), q.last, q.max))
        .collect();
    assert_eq!(
        figures,
        [("orders", 12.0, Some(900.0)), ("refunds", 3.0, Some(3.0))]
    );
    // Five minutes after the 900, it has left the window.
    let later = p.snapshot(T0 + 361 * S);
    assert_eq!(later.queues[0].max, Some(12.0));
    assert_eq!(later.queues[1].max, None);
}

#[test]
fn cache_hit_ratios_from_the_metrics_of_a_cache() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        AggregationTemporality, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
        metric::Data, number_data_point,
    };
    let mut config = DependenciesConfig::default();
    config.cache.metrics = vec![CacheMetrics {
        hits: "redis.keyspace.hits".into(),
        misses: "redis.keyspace.misses".into(),
        cache: None,
    }];
    let mut p = DependencyProcessor::new(&config, "unknown");
    let keys = Arc::new(config.span_keys());
    // The collector's redis receiver: cumulative sums since the server started.
    let request = |hits: i64, misses: i64, temporality: AggregationTemporality| {
        let sum = |name: &str, v: i64| Metric {
            name: name.into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    value: Some(number_data_point::Value::AsInt(v)),
                    ..Default::default()
                }],
                aggregation_temporality: temporality as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        };
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(resource(Some("cart"), Some("production"))),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![
                        sum("redis.keyspace.hits", hits),
                        sum("redis.keyspace.misses", misses),
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    };
    let decode = |r: ExportMetricsServiceRequest| match crate::otlp::decode_with(
        crate::model::Signal::Metrics,
        crate::otlp::Encoding::Protobuf,
        Bytes::from(r.encode_to_vec()),
        Some(&keys),
    ) {
        Ok(crate::model::Telemetry::Metrics(m)) => m,
        other => panic!("{other:?}"),
    };
    let cumulative = AggregationTemporality::Cumulative;
    // The first points are the baseline: 10,000 hits and 500 misses before
    // doraflow looked count nothing.
    p.apply_metrics(&decode(request(10_000, 500, cumulative)), T0);
    assert!(p.snapshot(T0).caches.is_empty());
    // +900 hits, +100 misses.
    p.apply_metrics(&decode(request(10_900, 600, cumulative)), T0 + 60 * S);
    // The server restarted: 30 hits and 70 misses since.
    p.apply_metrics(&decode(request(30, 70, cumulative)), T0 + 120 * S);
    let snapshot = p.snapshot(T0 + 120 * S);
    let redis = &snapshot.caches[0];
    assert_eq!(
        (redis.cache.as_str(), redis.lookups, redis.hits),
        ("redis", 1_100, 930)
    );
    assert_eq!(redis.window_lookups, 1_100);
    let ratio = redis.hit_ratio.expect("lookups");
    assert!((ratio - 930.0 / 1_100.0).abs() < 1e-12, "{ratio}");
    // Delta sums count as they come.
    p.apply_metrics(
        &decode(request(50, 50, AggregationTemporality::Delta)),
        T0 + 400 * S,
    );
    let later = p.snapshot(T0 + 400 * S);
    // The first 1,000 left the window at 360 s; the restart's 100 are in
    // it until 420 s, with the 100 of the delta.
    assert_eq!(
        (later.caches[0].lookups, later.caches[0].window_lookups),
        (1_200, 200)
    );
    assert_eq!(later.caches[0].hit_ratio, Some(80.0 / 200.0));
}

#[test]
fn a_checkpointed_processor_restores_to_the_same_figures() {
    let mut config = DependenciesConfig::default();
    config.messaging.queue_metrics = vec!["lag".into()];
    let mut p = DependencyProcessor::new(&config, "unknown");
    let http = vec![
        ("http.request.method", s("GET")),
        ("server.address", s("b")),
    ];
    let client = SpanSpec {
        id: 1,
        ..spec(SpanKind::Client, 30, http)
    };
    let server = SpanSpec {
        id: 2,
        parent: 1,
        error: true,
        ..spec(SpanKind::Server, 20, vec![])
    };
    let db = spec(
        SpanKind::Client,
        4,
        vec![
            ("db.system.name", s("redis")),
            ("cache.hit", Value::BoolValue(false)),
        ],
    );
    p.apply_traces(
        &summary(&config, vec![("a", vec![span(&client), span(&db)])]),
        T0,
    );
    p.apply_traces(&summary(&config, vec![("b", vec![span(&server)])]), T0 + S);
    // One waiting for a partner that is never seen: expired, counted.
    let lonely = SpanSpec {
        id: 9,
        ..spec(SpanKind::Client, 1, vec![])
    };
    p.apply_traces(&summary(&config, vec![("a", vec![span(&lonely)])]), T0);
    // The figures, not the memory (capacities differ after a restore).
    let figures = |mut s: DependencySnapshot| {
        s.heap_bytes = 0;
        s
    };
    let before = figures(p.snapshot(T0 + 20 * S));
    assert_eq!(before.graph.as_ref().expect("graph").unpaired.len(), 1);
    let bytes = prost::Message::encode_to_vec(&p.to_state());
    let state = <crate::proto::DependenciesState as prost::Message>::decode(bytes.as_slice())
        .expect("decodes");
    let mut restored = DependencyProcessor::new(&config, "unknown");
    assert_eq!(restored.restore(&state), Ok(Vec::new()));
    assert_eq!(figures(restored.snapshot(T0 + 20 * S)), before);
    // New calls land in the restored series, not beside them.
    p.apply_traces(&summary(&config, vec![("a", vec![span(&db)])]), T0 + 30 * S);
    restored.apply_traces(&summary(&config, vec![("a", vec![span(&db)])]), T0 + 30 * S);
    assert_eq!(
        figures(restored.snapshot(T0 + 31 * S)),
        figures(p.snapshot(T0 + 31 * S))
    );
    assert_eq!(restored.series_count(), 3);
    // Restoring twice is refused.
    assert!(restored.restore(&state).is_err());
}
