//! Incidents derived from the error ratio of a real doraflow process: OTLP
//! spans push checkout's error ratio over 1% and an incident opens; enough
//! good requests bring it back below and, after `resolve_after`, it resolves.

mod common;

use std::time::{Duration, Instant};

use common::Doraflow;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

fn wait_for(
    doraflow: &Doraflow,
    what: &str,
    check: impl Fn(&common::Metrics) -> bool,
) -> common::Metrics {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = doraflow.metrics();
        if check(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within 20 s:\n{}",
            m.0
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn an_error_ratio_over_the_threshold_opens_and_then_resolves_an_incident() {
    let doraflow = Doraflow::start_full(
        "window: 5m, slice: 10s",
        "derived_incidents: { evaluation_interval: 100ms, resolve_after: 1s }",
        256,
    );
    let l = [("service", "checkout"), ("environment", "production")];
    let mut client = TraceServiceClient::connect(doraflow.grpc_url())
        .await
        .unwrap();
    // 5 errors in 100 requests: 5% > 1%.
    client.export(common::checkout_spans(95, 5)).await.unwrap();
    wait_for(&doraflow, "an open incident", |m| {
        m.get("dora_incidents_open", &l) == Some(1.0)
    });
    // 900 more good requests: 5 in 1000 = 0.5%.
    client.export(common::checkout_spans(900, 0)).await.unwrap();
    let m = wait_for(&doraflow, "the incident's resolution", |m| {
        m.get("dora_incidents_open", &l) == Some(0.0)
    });
    assert_eq!(m.get("dora_incident_duration_seconds_count", &l), Some(1.0));
    let ttr = m
        .get(
            "dora_mean_time_to_restore_seconds",
            &[l[0], l[1], ("window", "7d")],
        )
        .unwrap();
    // Opened at the first evaluation after the bad batch, resolved as of the
    // first evaluation after the good one: well under the 20 s the test waits.
    assert!(ttr > 0.0 && ttr < 20.0, "{ttr}");
}
