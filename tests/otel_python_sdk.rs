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
