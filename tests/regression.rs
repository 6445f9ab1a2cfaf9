//! The regression check of a real doraflow process, fed in real time by the
//! official OpenTelemetry Python SDK (`tests/python/otel_sdk_regression.py`
//! has the timeline): a deployment after which the error ratio rises from
//! 0.2% to 5% is a failed change with reason `regression` and its figures;
//! one after which nothing changes is healthy; one with too few requests is
//! not judged; recovery closes the regression's incident with the time to
//! restore the timeline gives.
//!
//! Needs `DORAFLOW_TEST_PYTHON` (`scripts/test` sets it up); without it the
//! test says plainly that it skipped.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Doraflow, python_with_otel_sdk};
use serde_json::Value;

fn dora(doraflow: &Doraflow) -> Value {
    let (status, body) = common::get(doraflow.prometheus, "/api/v1/dora").expect("the API");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("JSON")
}

fn series<'a>(api: &'a Value, service: &str) -> &'a Value {
    api["dora"]["series"]
        .as_array()
        .and_then(|all| all.iter().find(|s| s["service"] == service))
        .unwrap_or_else(|| panic!("no series {service} in {api}"))
}

#[test]
fn python_sdk_spans_judge_a_regression_a_healthy_deployment_and_a_quiet_one() {
    let Some(python) = python_with_otel_sdk() else {
        common::say_skipped(
            "python_sdk_spans_judge_a_regression_a_healthy_deployment_and_a_quiet_one",
            "DORAFLOW_TEST_PYTHON is not set (scripts/test sets it)",
        );
        return;
    };
    // One-second slices; stretches of 5 s before and after each deployment.
    let doraflow = Doraflow::start_full(
        "window: 20s, slice: 1s",
        "regression: { before: 5s, after: 5s }, \
         derived_incidents: { evaluation_interval: 100ms, resolve_after: 1s }",
        4096,
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/otel_sdk_regression.py"
    );
    let output = Command::new(&python)
        .args([
            script,
            "--endpoint",
            &format!("127.0.0.1:{}", doraflow.grpc),
        ])
        .args(["--webhook", &doraflow.webhook_url()])
        .output()
        .expect("run the Python SDK");
    assert!(
        output.status.success(),
        "the SDK's timeline failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed: Value = serde_json::from_slice(&output.stdout).expect("the script's JSON");
    let deployed_at = printed["deployed_at"].as_i64().expect("deployed_at");

    // The regression was found at T+5 s and its recovery at T+13 s; the
    // script ran until T+16 s. Waits (a little) for the last tick.
    let deadline = Instant::now() + Duration::from_secs(10);
    let api = loop {
        let api = dora(&doraflow);
        let regress = series(&api, "regress");
        if regress["open_incidents"] == 0 && regress["windows"][0]["time_to_restore"]["count"] == 1
        {
            break api;
        }
        assert!(Instant::now() < deadline, "no recovery: {regress}");
        std::thread::sleep(Duration::from_millis(100));
    };

    // 5 slices before of 500 spans with 1 error; 5 after with 25.
    let regress = series(&api, "regress");
    let failed = &regress["recent_failed_changes"][0];
    assert_eq!(failed["at"], deployed_at, "{failed}");
    assert_eq!(failed["reason"], "regression", "{failed}");
    let evidence = &failed["evidence"];
    let figures = &evidence["regression"];
    assert_eq!(figures["verdict"], "regression", "{failed}");
    assert_eq!(figures["regressed"], serde_json::json!(["error_ratio"]));
    assert_eq!(
        (&figures["before"]["requests"], &figures["before"]["errors"]),
        (&Value::from(2_500), &Value::from(5)),
        "{figures}"
    );
    assert_eq!(
        (&figures["after"]["requests"], &figures["after"]["errors"]),
        (&Value::from(2_500), &Value::from(125)),
        "{figures}"
    );
    assert_eq!(figures["before"]["error_ratio"], 0.002);
    assert_eq!(figures["after"]["error_ratio"], 0.05);
    // 20 ms spans: p95 within the HDR precision.
    let p95 = figures["after"]["p95_seconds"].as_f64().expect("p95");
    assert!(common::within_hdr(p95, 0.020), "{p95}");
    // Its incident: doraflow's, opened as of the deployment.
    assert_eq!(evidence["incidents"][0]["source"], "doraflow", "{evidence}");
    assert_eq!(
        evidence["incidents"][0]["opened"], deployed_at,
        "{evidence}"
    );
    assert_eq!(regress["failed_changes_by_reason"]["regression"], 1);
    // Bad slices T..T+7; the first healthy 5 s stretch starts at T+8 (the
    // one from T+7 still has 29 errors in 2500: 1.16%): 8 s to restore.
    let week = &regress["windows"][0];
    assert_eq!(week["time_to_restore"]["mean"], 8.0, "{week}");
    assert_eq!(week["failed_deployment_recovery"]["mean"], 8.0, "{week}");
    assert_eq!(week["change_failure_ratio"], 1.0);

    // Nothing changed for steady; quiet had 50 requests a side.
    for (service, verdict, requests, errors) in [
        ("steady", "healthy", 2_500, 5),
        ("quiet", "not_judged", 50, 0),
    ] {
        let s = series(&api, service);
        assert_eq!(s["failed_changes_total"], 0, "{s}");
        let check = &s["recent_deployments"][0]["regression"];
        assert_eq!(check["verdict"], verdict, "{s}");
        for side in ["before", "after"] {
            assert_eq!(check[side]["requests"], requests, "{service} {side}");
            assert_eq!(check[side]["errors"], errors, "{service} {side}");
        }
        assert_eq!(s["windows"][0]["time_to_restore"]["count"], 0, "{s}");
    }
}
