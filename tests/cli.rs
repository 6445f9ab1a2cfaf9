//! The command line: `validate` on every example pipeline and on bad configs,
//! the default pipeline on its default ports, and a clean exit on SIGTERM.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Doraflow, TempDir, get, wait_ready};

fn doraflow() -> Command {
    Command::new(env!("CARGO_BIN_EXE_doraflow"))
}

/// `doraflow validate` on `yaml`: its exit code and stderr.
fn validate(yaml: &str) -> (Option<i32>, String) {
    let dir = TempDir::new("cli");
    let path = dir.0.join("config.yaml");
    std::fs::write(&path, yaml).unwrap();
    let output = doraflow()
        .arg("validate")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn every_example_pipeline_validates() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            let output = doraflow()
                .arg("validate")
                .arg("--config")
                .arg(&path)
                // Examples take secrets from the environment, as they should.
                .env("PAGERDUTY_ROUTING_KEY", "R0UT1NGK3Y0123456789abcdefABCDEF")
                .env("GITHUB_WEBHOOK_SECRET", "github-secret")
                .env("GITLAB_WEBHOOK_TOKEN", "gitlab-token")
                .env("PAGERDUTY_WEBHOOK_SECRET", "pagerduty-secret")
                .env("ALERTMANAGER_TOKEN", "alertmanager-token")
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 7, "only {checked} example pipelines");
}

#[test]
fn unknown_keys_fail_validation_naming_the_key_path() {
    let (code, stderr) = validate(
        "receivers:\n  otlp:\n    grpc:\n      endpont: \"127.0.0.1:4317\"\nexporters:\n  prometheus: {}\npipelines:\n  main: { receivers: [otlp], exporters: [prometheus] }\n",
    );
    assert_eq!(code, Some(2));
    assert!(stderr.contains("receivers.otlp.grpc.endpont"), "{stderr}");
    assert!(stderr.contains("unknown field `endpont`"), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
}

#[test]
fn validation_reports_every_problem_at_once() {
    let (code, stderr) = validate(
        "receivers:\n  otlp:\n    http: { endpoint: \"localhost\" }\nprocessors:\n  red: { window: 7s, slice: 2s }\nexporters:\n  prometheus: {}\npipelines:\n  main: { receivers: [otlp], processors: [red], exporters: [prometheus, pagerduty] }\n",
    );
    assert_eq!(code, Some(2));
    for expected in [
        "receivers.otlp.http.endpoint: `localhost` is not a `host:port`",
        "processors.red.window: must be a whole multiple of slice (2s), got 7s",
        "pipelines.main.exporters: `pagerduty` is not configured",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in {stderr}"
        );
    }
}

#[test]
fn missing_environment_variables_are_named() {
    let (code, stderr) = validate(
        "exporters:\n  prometheus: { endpoint: \"${env:DORAFLOW_TEST_SURELY_UNSET}\" }\npipelines:\n  main: { receivers: [otlp], exporters: [prometheus] }\n",
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("`DORAFLOW_TEST_SURELY_UNSET` is not set"),
        "{stderr}"
    );
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "doraflow did not exit within 20 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one test that uses the default ports 4317, 4318, 8088 and 9464.
#[test]
fn no_arguments_runs_the_default_pipeline_on_the_default_ports() {
    let mut child = doraflow()
        .env("DORAFLOW_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ready(9464);
    for port in [4317, 4318, 8088] {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            "port {port}"
        );
    }
    let (status, body) = get(9464, "/healthz").unwrap();
    assert_eq!((status, body.trim()), (200, "ok"));
    sigterm(child.id());
    assert_eq!(wait_exit(&mut child).code(), Some(0));
}

#[test]
fn sigterm_after_traffic_drains_and_exits_zero() {
    let mut doraflow = Doraflow::start("window: 5m, slice: 10s");
    let (status, _) = get(doraflow.http, "/v1/traces").unwrap();
    assert_eq!(status, 405, "GET on an export path");
    sigterm(doraflow.child.id());
    assert_eq!(wait_exit(&mut doraflow.child).code(), Some(0));
}

#[test]
fn a_taken_port_fails_startup_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = TempDir::new("cli");
    let path = dir.0.join("taken.yaml");
    std::fs::write(
        &path,
        format!("receivers:\n  otlp:\n    grpc: {{ endpoint: \"127.0.0.1:{port}\" }}\nexporters:\n  prometheus: {{ endpoint: \"127.0.0.1:0\" }}\npipelines:\n  main: {{ receivers: [otlp], exporters: [prometheus] }}\n"),
    )
    .unwrap();
    let output = doraflow()
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "receivers.otlp.grpc: cannot listen on 127.0.0.1:{port}"
        )),
        "{stderr}"
    );
}

#[test]
fn json_logs_are_one_object_per_line_and_errors_name_the_key() {
    let dir = TempDir::new("cli");
    let path = dir.0.join("bad.yaml");
    std::fs::write(
        &path,
        "processors:\n  red: { slice: 5 }\nexporters:\n  prometheus: {}\npipelines:\n  main: { receivers: [otlp], exporters: [prometheus] }\n",
    )
    .unwrap();
    let output = doraflow()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stderr.lines().next().expect("a log line");
    let event: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(event["level"], "ERROR");
    let message = event["fields"]["message"].as_str().unwrap();
    assert!(message.contains("processors.red.slice"), "{message}");
}
