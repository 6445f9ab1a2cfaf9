//! The official OpenTelemetry Python SDK's OTLP exporters (gRPC and
//! HTTP/protobuf) against a real doraflow process: a client nobody here wrote.
//!
//! Needs `DORAFLOW_TEST_PYTHON`, a Python with the packages of
//! `tests/python/requirements.txt`; `scripts/test` sets it up. Without it the
//! test says plainly that it skipped.

mod common;

use std::process::Command;

use common::{Doraflow, python_with_otel_sdk, within_hdr};

fn run_client(python: &std::path::Path, protocol: &str, endpoint: &str, service: &str) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/otel_sdk_client.py"
    );
    let output = Command::new(python)
        .args([script, "--protocol", protocol, "--endpoint", endpoint])
        .args(["--service", service, "--env", "production"])
        .output()
        .expect("run the Python SDK client");
    assert!(
        output.status.success(),
        "{protocol} client failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn python_sdk_over_grpc_and_http_gives_exact_figures() {
    let Some(python) = python_with_otel_sdk() else {
        common::say_skipped(
            "python_sdk_over_grpc_and_http_gives_exact_figures",
            "DORAFLOW_TEST_PYTHON is not set (scripts/test sets it)",
        );
        return;
    };
    let doraflow = Doraflow::start("window: 5m, slice: 10s");
    run_client(
        &python,
        "grpc",
        &format!("127.0.0.1:{}", doraflow.grpc),
        "py-grpc",
    );
    run_client(&python, "http", &doraflow.http_url(""), "py-http");

    let m = doraflow.metrics();
    for service in ["py-grpc", "py-http"] {
        let l = [("service", service), ("environment", "production")];
        // See the scenario in tests/python/otel_sdk_client.py.
        assert_eq!(
            m.get("dora_service_requests_total", &l),
            Some(100.0),
            "{service}"
        );
        assert_eq!(
            m.get("dora_service_errors_total", &l),
            Some(5.0),
            "{service}"
        );
        assert_eq!(
            m.get("dora_service_log_errors_total", &l),
            Some(4.0),
            "{service}"
        );
        let w = [
            ("service", service),
            ("environment", "production"),
            ("window", "5m"),
        ];
        assert_eq!(
            m.get("dora_service_error_ratio", &w),
            Some(0.05),
            "{service}"
        );
        for (q, want) in [("0.5", 0.050), ("0.95", 0.095), ("0.99", 0.099)] {
            let mut ql = w.to_vec();
            ql.push(("quantile", q));
            let got = m.get("dora_service_latency_seconds", &ql).unwrap();
            assert!(within_hdr(got, want), "{service} p{q}: {got} vs {want}");
        }
    }
    let accepted = |transport, signal| {
        m.get(
            "doraflow_receiver_accepted_items_total",
            &[
                ("receiver", "otlp"),
                ("transport", transport),
                ("signal", signal),
            ],
        )
    };
    // 130 spans and 6 log records each way.
    assert_eq!(accepted("grpc", "traces"), Some(130.0));
    assert_eq!(accepted("http", "traces"), Some(130.0));
    assert_eq!(accepted("grpc", "logs"), Some(6.0));
    assert_eq!(accepted("http", "logs"), Some(6.0));
}

/// The figures of one resource by the reference semantics: (service,
/// environment, latencies, errors).
type Reference = (String, String, Vec<u64>, u64);

/// doraflow's semantics computed over prost's full decode: SERVER and
/// CONSUMER spans are requests; one is an error when its status is ERROR
/// or, for SERVER, when the first `http.response.status_code` or
/// `http.status_code` attribute (int, double or numeric string) is 5xx.
fn reference(
    request: &opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> (u64, Vec<Reference>) {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    let mut spans = 0;
    let mut groups = Vec::new();
    for rs in &request.resource_spans {
        let attribute = |key: &str| {
            rs.resource.as_ref().and_then(|r| {
                r.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
                    match kv.value.as_ref()?.value.as_ref()? {
                        Value::StringValue(s) => Some(s.clone()),
                        _ => None,
                    }
                })
            })
        };
        let service = attribute("service.name").unwrap_or_else(|| "unknown_service".into());
        let environment = attribute("deployment.environment.name")
            .or_else(|| attribute("deployment.environment"))
            .unwrap_or_default();
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            spans += 1;
            if span.kind != 2 && span.kind != 5 {
                continue;
            }
            let status_error = span.status.as_ref().is_some_and(|s| s.code == 2);
            let http_error = span.kind == 2
                && span
                    .attributes
                    .iter()
                    .find(|kv| {
                        kv.key == "http.response.status_code" || kv.key == "http.status_code"
                    })
                    .map(
                        |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(Value::IntValue(i)) => *i,
                            Some(Value::DoubleValue(d)) => *d as i64,
                            Some(Value::StringValue(s)) => s.trim().parse().unwrap_or(0),
                            _ => 0,
                        },
                    )
                    .is_some_and(|code| code >= 500);
            errors += u64::from(status_error || http_error);
            latencies.push(span.end_time_unix_nano - span.start_time_unix_nano);
        }
        if !latencies.is_empty() {
            groups.push((service, environment, latencies, errors));
        }
    }
    (spans, groups)
}

/// The targeted wire reader (the hot path) and a full decode agree on
/// payloads the Python SDK encoded itself: 40 requests, up to 200 spans each.
#[test]
fn the_wire_reader_agrees_with_a_full_decode_on_python_sdk_payloads() {
    use prost::Message;
    let Some(python) = python_with_otel_sdk() else {
        common::say_skipped(
            "the_wire_reader_agrees_with_a_full_decode_on_python_sdk_payloads",
            "no Python with the OpenTelemetry SDK (DORAFLOW_TEST_PYTHON unset; scripts/test sets it up)",
        );
        return;
    };
    let dir = common::TempDir::new("sdk-payloads");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/sdk_trace_payloads.py"
    );
    let output = Command::new(python)
        .arg(script)
        .arg(&dir.0)
        .arg("40")
        .output()
        .expect("run the payload writer");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (mut spans, mut errors) = (0, 0);
    for n in 0..40 {
        let body = bytes::Bytes::from(std::fs::read(dir.0.join(format!("{n}.pb"))).unwrap());
        let full =
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                body.clone(),
            )
            .expect("the SDK's payload decodes");
        let summary = doraflow::otlp::traces_protobuf(&body).expect("the wire reader reads it");
        let (want_spans, want) = reference(&full);
        assert_eq!(summary.spans, want_spans, "payload {n}");
        assert_eq!(summary.rejected_spans, 0, "payload {n}");
        let got: Vec<Reference> = summary
            .groups
            .iter()
            .map(|g| {
                (
                    String::from_utf8(g.identity.service.to_vec()).unwrap(),
                    String::from_utf8(g.identity.environment.to_vec()).unwrap(),
                    summary.latencies_ns[g.latencies.clone()].to_vec(),
                    g.errors,
                )
            })
            .collect();
        assert_eq!(got, want, "payload {n}");
        // The reader Kafka messages go through (identities copied out of
        // a borrowed body) gives the same summary.
        let borrowed = doraflow::otlp::decode_borrowed(
            doraflow::model::Signal::Traces,
            doraflow::otlp::Encoding::Protobuf,
            &body,
        )
        .expect("the borrowed reader reads it");
        assert_eq!(
            borrowed,
            doraflow::model::Telemetry::Traces(summary),
            "payload {n}"
        );
        spans += want_spans;
        errors += want.iter().map(|g| g.3).sum::<u64>();
    }
    // The payloads exercise what they should.
    assert!(spans > 2_000, "{spans} spans");
    assert!(errors > 100, "{errors} errors");
}
