//! Every decoder of client input under arbitrary and mutated bytes: OTLP
//! protobuf (traces, logs, metrics) and OTLP/JSON, the per-service split,
//! CDEvents JSON (structured, batch, binary mode), and the config YAML. Each
//! must return a value or an error with a message, and never panic.
//!
//! Mutations start from valid inputs (realistic OTLP requests, CDEvents, the
//! example pipelines) and flip, insert, delete, duplicate and truncate bytes,
//! which reaches far deeper than random bytes. The number of cases per
//! target comes from `DORAFLOW_FUZZ_CASES` (default 1,000 in the suite);
//! `scripts/fuzz` runs a million per target in release mode.

use bytes::Bytes;
use doraflow::cdevents::{self, BinaryContext};
use doraflow::config::Config;
use doraflow::model::Signal;
use doraflow::otlp::{self, Encoding, wire};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use proptest::prelude::*;
use prost::Message;

fn cases() -> u32 {
    std::env::var("DORAFLOW_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        // Shrinking a failure is worth it; a long hunt for one is not.
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Duplicate(usize, usize),
    Truncate(usize),
    /// A byte that means something to the decoders: varint continuation,
    /// a wire type, a JSON delimiter.
    Special(usize, u8),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Edit::Flip(at, 1 << (bit % 8))),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Edit::Insert(at, b)),
        any::<usize>().prop_map(Edit::Delete),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Edit::Duplicate(at, n)),
        any::<usize>().prop_map(Edit::Truncate),
        (
            any::<usize>(),
            prop::sample::select(vec![
                0x80u8, 0xff, 0x00, 0x0a, 0x12, 0x1a, 0x22, 0x08, 0x0f, b'{', b'}', b'[', b']',
                b'"', b'\\', b':', b',', b'0', b'-', b'e', b'\n',
            ])
        )
            .prop_map(|(at, b)| Edit::Special(at, b)),
    ]
}

fn mutate(seed: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut out = seed.to_vec();
    for e in edits {
        let len = out.len();
        match *e {
            Edit::Flip(at, mask) if len > 0 => out[at % len] ^= mask,
            Edit::Insert(at, b) => out.insert(at % (len + 1), b),
            Edit::Delete(at) if len > 0 => {
                out.remove(at % len);
            }
            Edit::Duplicate(at, n) if len > 0 => {
                let start = at % len;
                let end = (start + n).min(len);
                let copy = out[start..end].to_vec();
                out.splice(start..start, copy);
            }
            Edit::Truncate(at) if len > 0 => out.truncate(at % len),
            Edit::Special(at, b) if len > 0 => out[at % len] = b,
            _ => {}
        }
    }
    out
}

fn seed_traces() -> Vec<u8> {
    doraflow::otlp::synth::realistic_batch(24, 7).encode_to_vec()
}

fn seed_logs() -> Vec<u8> {
    let text = |s: &str| AnyValue {
        value: Some(any_value::Value::StringValue(s.into())),
    };
    let kv = |k: &str, v: &str| KeyValue {
        key: k.into(),
        value: Some(text(v)),
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(doraflow::otlp::synth::resource(
                Some("checkout"),
                Some("production"),
            )),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    LogRecord {
                        severity_number: 17,
                        body: Some(text("boom")),
                        ..Default::default()
                    },
                    LogRecord {
                        time_unix_nano: 1_764_000_000_000_000_000,
                        attributes: vec![
                            kv("deployment.id", "d-1"),
                            kv("deployment.status", "succeeded"),
                            kv("deployment.environment.name", "production"),
                        ],
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn seed_metrics() -> Vec<u8> {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(doraflow::otlp::synth::resource(
                Some("checkout"),
                Some("production"),
            )),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![Metric {
                    name: "system.cpu.utilization".into(),
                    data: Some(metric::Data::Gauge(Gauge {
                        data_points: vec![NumberDataPoint {
                            value: Some(number_data_point::Value::AsDouble(0.93)),
                            time_unix_nano: 1_764_000_000_000_000_000,
                            ..Default::default()
                        }],
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

fn seed_cdevents() -> Vec<u8> {
    let events: Vec<serde_json::Value> =
        doraflow::cdevents::synth::history(8, 1_764_000_000).collect();
    serde_json::to_vec(&events).expect("JSON")
}

/// The OTLP/JSON of a protobuf seed.
fn json_of(signal: Signal, protobuf: &[u8]) -> Vec<u8> {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    match signal {
        Signal::Traces => {
            serde_json::to_vec(&ExportTraceServiceRequest::decode(protobuf).expect("seed"))
        }
        Signal::Logs => {
            serde_json::to_vec(&ExportLogsServiceRequest::decode(protobuf).expect("seed"))
        }
        Signal::Metrics => {
            serde_json::to_vec(&ExportMetricsServiceRequest::decode(protobuf).expect("seed"))
        }
    }
    .expect("JSON")
}

/// Decodes `body` every way a client's bytes are decoded; errors must say something.
fn decode_everything(signal: Signal, body: &[u8]) {
    let bytes = Bytes::copy_from_slice(body);
    for encoding in [Encoding::Protobuf, Encoding::Json] {
        if let Err(e) = otlp::decode(signal, encoding, bytes.clone()) {
            assert!(!e.to_string().is_empty());
        }
        let _ = otlp::to_protobuf(signal, encoding, &bytes);
    }
    if let Err(e) = wire::split_by_service(&bytes) {
        assert!(!e.to_string().is_empty());
    }
}

fn decode_cdevents(body: &[u8]) {
    for batch in [false, true] {
        if let Err(e) = cdevents::decode_body(body, batch) {
            assert!(!e.to_string().is_empty());
        }
    }
    let context = BinaryContext {
        id: Some("x".into()),
        event_type: Some("dev.cdevents.service.deployed.0.3.0".into()),
        source: Some("/ci".into()),
        time: Some("2024-05-01T12:00:00Z".into()),
    };
    if let Err(e) = cdevents::decode_binary(body, &context) {
        assert!(!e.to_string().is_empty());
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn otlp_decoders_survive_arbitrary_bytes(body in prop::collection::vec(any::<u8>(), 0..1_024)) {
        for signal in [Signal::Traces, Signal::Logs, Signal::Metrics] {
            decode_everything(signal, &body);
        }
    }

    #[test]
    fn otlp_protobuf_decoders_survive_mutated_requests(edits in prop::collection::vec(edit(), 1..8)) {
        for (signal, seed) in [
            (Signal::Traces, seed_traces()),
            (Signal::Logs, seed_logs()),
            (Signal::Metrics, seed_metrics()),
        ] {
            decode_everything(signal, &mutate(&seed, &edits));
        }
    }

    #[test]
    fn otlp_json_decoders_survive_mutated_requests(edits in prop::collection::vec(edit(), 1..8)) {
        for (signal, seed) in [
            (Signal::Traces, seed_traces()),
            (Signal::Logs, seed_logs()),
            (Signal::Metrics, seed_metrics()),
        ] {
            decode_everything(signal, &mutate(&json_of(signal, &seed), &edits));
        }
    }

    #[test]
    fn cdevents_decoders_survive_arbitrary_and_mutated_input(
        body in prop::collection::vec(any::<u8>(), 0..512),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        decode_cdevents(&body);
        decode_cdevents(&mutate(&seed_cdevents(), &edits));
    }

    #[test]
    fn the_config_parser_survives_mutated_pipelines(
        which in 0usize..6,
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let names = ["default", "service-health", "alerting", "sidecar", "cluster", "container"];
        let path = format!("{}/pipelines/{}.yaml", env!("CARGO_MANIFEST_DIR"), names[which]);
        let seed = std::fs::read(path).expect("pipeline");
        let text = String::from_utf8_lossy(&mutate(&seed, &edits)).into_owned();
        if let Err(e) = Config::from_yaml_with_env(&text, |_| Some("x".into())) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn the_seeds_are_valid_so_mutations_start_from_real_input() {
    for (signal, seed) in [
        (Signal::Traces, seed_traces()),
        (Signal::Logs, seed_logs()),
        (Signal::Metrics, seed_metrics()),
    ] {
        let item = otlp::decode(signal, Encoding::Protobuf, Bytes::from(seed.clone()))
            .expect("a valid protobuf seed");
        assert!(item.items() > 0);
        otlp::decode(signal, Encoding::Json, Bytes::from(json_of(signal, &seed)))
            .expect("a valid JSON seed");
    }
    assert_eq!(
        cdevents::decode_body(&seed_cdevents(), true)
            .expect("valid CDEvents")
            .len(),
        8
    );
}
