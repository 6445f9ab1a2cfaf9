//! TLS on every listener and for the HTTP clients, with certificates the
//! test makes itself (rcgen): the official OpenTelemetry Python SDK exports
//! over gRPC and HTTP with TLS; plaintext to a TLS port gets nothing in; a
//! renewed certificate is served without a restart; the webhook with mTLS
//! refuses a client without a certificate; the PagerDuty exporter trusts a
//! configured CA, and without it refuses the endpoint.

mod common;

use std::process::Command;
use std::time::Duration;

use common::certs::{ca, leaf, write};
use common::{Metrics, TempDir, free_port};
use rcgen::ExtendedKeyUsagePurpose;

/// A client that trusts only `ca`, optionally presenting a certificate.
fn client(ca: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if let Some((cert, key)) = identity {
        builder = builder
            .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

async fn metrics(client: &reqwest::Client, port: u16) -> Metrics {
    let body = client
        .get(format!("https://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .expect("metrics over TLS")
        .text()
        .await
        .unwrap();
    Metrics(body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listener_serves_tls_a_real_sdk_gets_in_plaintext_does_not_and_renewals_need_no_restart()
 {
    let dir = TempDir::new("tls");
    let first = ca("doraflow test CA 1");
    let (cert, key) = leaf(
        &first,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let cert_file = write(&dir.0, "server.pem", &cert);
    let key_file = write(&dir.0, "server.key", &key);
    let ca_file = write(&dir.0, "ca.pem", &first.pem);
    let (client_cert, client_key) = leaf(&first, &["ci"], ExtendedKeyUsagePurpose::ClientAuth);
    let (grpc, http, webhook, prometheus) = (free_port(), free_port(), free_port(), free_port());
    let tls = format!(
        "tls: {{ cert_file: \"{}\", key_file: \"{}\", reload_interval: 200ms }}",
        cert_file.display(),
        key_file.display()
    );
    let mtls = format!(
        "tls: {{ cert_file: \"{}\", key_file: \"{}\", client_ca_file: \"{}\" }}",
        cert_file.display(),
        key_file.display(),
        ca_file.display()
    );
    let config = dir.0.join("doraflow.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\", {tls} }}
    http: {{ endpoint: \"127.0.0.1:{http}\", {tls} }}
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\", {mtls} }}
processors:
  red: {{ window: 5m, slice: 10s }}
  dora: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\", {tls} }}
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [red, dora], exporters: [prometheus] }}
"
        ),
    )
    .unwrap();
    let _doraflow = common::spawn(&config);
    let trusting_first = client(&first.pem, None);
    common::eventually_within("ready over TLS", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", prometheus)).is_ok()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = trusting_first
            .get(format!("https://127.0.0.1:{prometheus}/readyz"))
            .send()
            .await
            && r.status() == 200
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready over TLS");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Plaintext to the TLS ports: nothing gets in.
    let plain = reqwest::Client::new();
    let body = prost::Message::encode_to_vec(&common::checkout_spans(10, 0));
    let answer = plain
        .post(format!("http://127.0.0.1:{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await;
    assert!(answer.is_err(), "plaintext HTTP got an answer: {answer:?}");
    let plain_grpc = opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient::connect(
        format!("http://127.0.0.1:{grpc}"),
    )
    .await;
    if let Ok(mut plain_grpc) = plain_grpc {
        plain_grpc
            .export(common::checkout_spans(10, 0))
            .await
            .expect_err("plaintext gRPC refused");
    }

    // The official Python SDK over TLS, trusting the test's CA.
    if let Some(python) = common::python_with_otel_sdk() {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/python/otel_sdk_client.py"
        );
        for (protocol, endpoint, service) in [
            ("grpc", format!("127.0.0.1:{grpc}"), "py-grpc-tls"),
            ("http", format!("https://127.0.0.1:{http}"), "py-http-tls"),
        ] {
            let output = Command::new(&python)
                // requests prefers these to the exporter's own CA file (a
                // session's `verify` loses to them): the client must trust
                // the test's CA alone.
                .env_remove("REQUESTS_CA_BUNDLE")
                .env_remove("CURL_CA_BUNDLE")
                .args([script, "--protocol", protocol, "--endpoint", &endpoint])
                .args(["--service", service, "--env", "production", "--ca"])
                .arg(&ca_file)
                .output()
                .expect("run the Python SDK client");
            assert!(
                output.status.success(),
                "{protocol} over TLS failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let m = metrics(&trusting_first, prometheus).await;
        for service in ["py-grpc-tls", "py-http-tls"] {
            let l = [("service", service), ("environment", "production")];
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
        }
    } else {
        common::say_skipped(
            "tls: the Python SDK part",
            "DORAFLOW_TEST_PYTHON is not set (scripts/test sets it)",
        );
    }
    let answer = trusting_first
        .post(format!("https://127.0.0.1:{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .expect("HTTPS");
    assert_eq!(answer.status(), 200);

    // The webhook asks for a client certificate signed by the CA.
    let event = format!(
        r#"{{"context":{{"specversion":"0.5.1","id":"d1","source":"/ci","type":"dev.cdevents.service.deployed.0.3.0","timestamp":"{}"}},"subject":{{"id":"service/checkout","content":{{"environment":{{"id":"production"}}}}}}}}"#,
        common::rfc3339(common::unix_now() - 60)
    );
    let post = |client: &reqwest::Client| {
        client
            .post(format!("https://127.0.0.1:{webhook}/cdevents"))
            .header("content-type", "application/json")
            .body(event.clone())
            .send()
    };
    assert!(
        post(&trusting_first).await.is_err(),
        "no client certificate, no entry"
    );
    let with_certificate = client(&first.pem, Some((&client_cert, &client_key)));
    assert_eq!(post(&with_certificate).await.expect("mTLS").status(), 202);

    let m = metrics(&trusting_first, prometheus).await;
    assert_eq!(
        m.get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        Some(10.0),
        "only the HTTPS request counted"
    );
    assert_eq!(
        m.get(
            "dora_deployments_total",
            &[
                ("service", "checkout"),
                ("environment", "production"),
                ("outcome", "success")
            ]
        ),
        Some(1.0)
    );
    assert!(
        m.counter(
            "doraflow_tls_handshake_failures_total",
            &[("reason", "refused")]
        ) >= 2.0,
        "refused handshakes are counted"
    );

    // Renewal: a certificate from another CA replaces the files; every
    // listener serves it without a restart.
    let second = ca("doraflow test CA 2");
    let (cert, key) = leaf(
        &second,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    write(&dir.0, "server.key", &key);
    write(&dir.0, "server.pem", &cert);
    let trusting_second = client(&second.pem, None);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = trusting_second
            .get(format!("https://127.0.0.1:{prometheus}/readyz"))
            .send()
            .await;
        if fresh.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the renewed certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A fresh client that trusts only the old CA is now refused.
    let fresh_first = client(&first.pem, None);
    assert!(
        fresh_first
            .get(format!("https://127.0.0.1:{prometheus}/readyz"))
            .send()
            .await
            .is_err()
    );
    // Each listener watches the files on its own clock: the HTTP receiver
    // may pick the renewal up a moment after the Prometheus one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let answer = loop {
        let sent = trusting_second
            .post(format!("https://127.0.0.1:{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(prost::Message::encode_to_vec(&common::checkout_spans(
                10, 0,
            )))
            .send()
            .await;
        match sent {
            Ok(answer) => break answer,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "the HTTP receiver serves the renewed certificate: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(answer.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pagerduty_exporter_trusts_a_configured_ca_and_refuses_an_unknown_one() {
    use std::sync::{Arc, Mutex};

    let dir = TempDir::new("tls-client");
    let authority = ca("doraflow test CA");
    let (cert, key) = leaf(
        &authority,
        &["127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let server_tls = doraflow::tls::ServerTls {
        cert_file: write(&dir.0, "pd.pem", &cert),
        key_file: write(&dir.0, "pd.key", &key),
        client_ca_file: None,
        reload_interval: doraflow::config::ConfigDuration::from_secs(10),
    };
    let ca_file = write(&dir.0, "ca.pem", &authority.pem);
    // An HTTPS endpoint that takes any event.
    let received = Arc::new(Mutex::new(0usize));
    let port = free_port();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let app = axum::Router::new().route(
        "/v2/enqueue",
        axum::routing::post({
            let received = received.clone();
            move || async move {
                *received.lock().unwrap() += 1;
                (axum::http::StatusCode::ACCEPTED, "{\"status\":\"success\"}")
            }
        }),
    );
    tokio::spawn({
        let stop = stop.clone();
        async move {
            doraflow::receivers::serve_http(
                listener,
                app,
                Some(&server_tls),
                doraflow::receivers::HttpLimits::default(),
                stop,
            )
            .await
        }
    });
    let url = format!("https://127.0.0.1:{port}/v2/enqueue");

    for (trusted, tls) in [
        (false, String::new()),
        (
            true,
            format!("    tls: {{ ca_file: \"{}\" }}\n", ca_file.display()),
        ),
    ] {
        let doraflow = common::Doraflow::start_exporting(
            "window: 5m, slice: 10s",
            "derived_incidents: { enabled: false }",
            "interval: 100ms",
            256,
            &format!(
                "  pagerduty:\n    url: \"{url}\"\n    routing_key: \"{key}\"\n    initial_backoff: 10ms\n    max_backoff: 50ms\n{tls}",
                key = common::secret_ref("R0UT1NGK3Y0123456789abcdefABCDEF"),
            ),
        );
        common::send_checkout_spans(&doraflow, 197, 3).await;
        if trusted {
            common::eventually("the trigger over HTTPS", || *received.lock().unwrap() == 1).await;
        } else {
            common::eventually("refused for an unknown CA", || {
                doraflow.metrics().counter(
                    "doraflow_exporter_failed_total",
                    &[("exporter", "pagerduty"), ("reason", "retryable")],
                ) >= 3.0
            })
            .await;
            assert_eq!(*received.lock().unwrap(), 0, "nothing reached the endpoint");
        }
    }
    stop.cancel();
}
