//! Who may send: bearer tokens on the OTLP receivers (gRPC metadata and
//! HTTP header) and on the webhook, HMAC-SHA256 signed webhooks with a
//! replay window, secrets from files and the environment, and no secret in
//! any log line.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Metrics, TempDir, free_port};
use hmac::{KeyInit, Mac};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;

const OTLP_TOKEN: &str = "otlp-t0ken-5f2b9c0e";
const WEBHOOK_TOKEN: &str = "w3bhook-t0ken-77aa31";
const SIGNING_KEY: &str = "s1gning-k3y-9d1e4f02";
const API_TOKEN: &str = "ap1-t0ken-3c4d5e6f";
const ROUTING_KEY: &str = "R0UT1NGK3Yf00dfeed0123456789abcd";

fn sign(timestamp: i64, body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SIGNING_KEY.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{body}").as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

fn deployment(id: &str) -> String {
    format!(
        r#"{{"context":{{"specversion":"0.5.1","id":"{id}","source":"/ci","type":"dev.cdevents.service.deployed.0.3.0","timestamp":"{}"}},"subject":{{"id":"service/checkout","content":{{"environment":{{"id":"production"}}}}}}}}"#,
        common::rfc3339(common::unix_now() - 60)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_the_token_and_a_valid_signature_get_in_and_no_secret_is_logged() {
    let dir = TempDir::new("security");
    let token_file = dir.0.join("otlp-token");
    std::fs::write(&token_file, format!("{OTLP_TOKEN}\n")).unwrap();
    let (grpc, http, webhook, prometheus) = (free_port(), free_port(), free_port(), free_port());
    let config = dir.0.join("doraflow.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
    http: {{ endpoint: \"127.0.0.1:{http}\" }}
    auth: {{ bearer_token: \"${{file:{}}}\" }}
  webhook:
    endpoint: \"127.0.0.1:{webhook}\"
    auth: {{ bearer_token: \"${{env:DORAFLOW_TEST_WEBHOOK_TOKEN}}\" }}
    signature:
      secret: \"${{env:DORAFLOW_TEST_SIGNING_KEY}}\"
      timestamp_header: X-Signature-Timestamp
      max_age: 5m
processors:
  red: {{}}
  dora: {{}}
  alerts: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\", api_token: \"${{env:DORAFLOW_TEST_API_TOKEN}}\" }}
  pagerduty:
    url: \"http://127.0.0.1:{pagerduty}/v2/enqueue\"
    routing_key: \"${{env:DORAFLOW_TEST_ROUTING_KEY}}\"
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [red, dora, alerts], exporters: [prometheus, pagerduty] }}
",
            token_file.display(),
            pagerduty = free_port(),
        ),
    )
    .unwrap();
    // Every log line, at debug, to a file.
    let log = dir.0.join("doraflow.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["run", "--config"])
        .arg(&config)
        .env("DORAFLOW_LOG", "debug")
        .env("DORAFLOW_TEST_WEBHOOK_TOKEN", WEBHOOK_TOKEN)
        .env("DORAFLOW_TEST_SIGNING_KEY", SIGNING_KEY)
        .env("DORAFLOW_TEST_API_TOKEN", API_TOKEN)
        .env("DORAFLOW_TEST_ROUTING_KEY", ROUTING_KEY)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn doraflow");
    common::wait_ready(prometheus);

    // OTLP gRPC: the token as metadata.
    let mut client = TraceServiceClient::connect(format!("http://127.0.0.1:{grpc}"))
        .await
        .expect("connect");
    for token in [None, Some("wrong"), Some(&OTLP_TOKEN[..8])] {
        let mut request = tonic::Request::new(common::checkout_spans(10, 0));
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        let status = client.export(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    let mut request = tonic::Request::new(common::checkout_spans(9, 1));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {OTLP_TOKEN}").parse().unwrap(),
    );
    client.export(request).await.expect("the right token");

    // OTLP HTTP: the token as a header.
    let http_client = reqwest::Client::new();
    let body = common::checkout_spans(10, 0).encode_to_vec();
    for token in [None, Some("wrong")] {
        let mut request = http_client
            .post(format!("http://127.0.0.1:{http}/v1/traces"))
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status(), 401, "{token:?}");
        assert_eq!(answer.headers()["www-authenticate"], "Bearer");
        let status = tonic_types::Status::decode(answer.bytes().await.unwrap()).unwrap();
        assert_eq!(status.code, tonic::Code::Unauthenticated as i32);
    }
    let answer = http_client
        .post(format!("http://127.0.0.1:{http}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .bearer_auth(OTLP_TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);

    // The webhook: token and signature both.
    let now = common::unix_now();
    let post = |token: &str, timestamp: Option<i64>, signature: Option<String>, body: String| {
        let mut request = http_client
            .post(format!("http://127.0.0.1:{webhook}/cdevents"))
            .header("content-type", "application/json")
            .bearer_auth(token)
            .body(body);
        if let Some(t) = timestamp {
            request = request.header("X-Signature-Timestamp", t.to_string());
        }
        if let Some(s) = signature {
            request = request.header("X-Hub-Signature-256", s);
        }
        request.send()
    };
    let d1 = deployment("d1");
    let refused = [
        (
            "wrong token",
            post("wrong", Some(now), Some(sign(now, &d1)), d1.clone()),
        ),
        (
            "no signature",
            post(WEBHOOK_TOKEN, Some(now), None, d1.clone()),
        ),
        (
            "no timestamp",
            post(WEBHOOK_TOKEN, None, Some(sign(now, &d1)), d1.clone()),
        ),
        (
            "signature of another body",
            post(
                WEBHOOK_TOKEN,
                Some(now),
                Some(sign(now, &deployment("d2"))),
                d1.clone(),
            ),
        ),
        (
            "signature of another time",
            post(
                WEBHOOK_TOKEN,
                Some(now),
                Some(sign(now - 1, &d1)),
                d1.clone(),
            ),
        ),
        (
            "a replay from 10 minutes ago",
            post(
                WEBHOOK_TOKEN,
                Some(now - 600),
                Some(sign(now - 600, &d1)),
                d1.clone(),
            ),
        ),
        (
            "not hex",
            post(
                WEBHOOK_TOKEN,
                Some(now),
                Some("sha256=zz".to_string()),
                d1.clone(),
            ),
        ),
    ];
    for (what, answer) in refused {
        let answer = answer.await.unwrap();
        assert_eq!(answer.status(), 401, "{what}");
    }
    let answer = post(WEBHOOK_TOKEN, Some(now), Some(sign(now, &d1)), d1.clone())
        .await
        .unwrap();
    assert_eq!(answer.status(), 202);

    // Only what got in is applied.
    let m = Metrics(common::get(prometheus, "/metrics").expect("metrics").1);
    let checkout = [("service", "checkout"), ("environment", "production")];
    assert_eq!(m.get("dora_service_requests_total", &checkout), Some(20.0));
    assert_eq!(m.get("dora_service_errors_total", &checkout), Some(1.0));
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
    assert_eq!(
        m.get(
            "doraflow_receiver_requests_total",
            &[("receiver", "webhook"), ("result", "unauthenticated")]
        ),
        Some(7.0)
    );

    // Stop, then read every line it logged.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < deadline, "no exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.lines().count() > 5, "too little logged:\n{logged}");
    assert!(logged.contains("bad signature"), "the refusals are logged");
    for secret in [
        OTLP_TOKEN,
        WEBHOOK_TOKEN,
        SIGNING_KEY,
        API_TOKEN,
        ROUTING_KEY,
    ] {
        assert!(
            !logged.contains(secret),
            "a secret in the log:\n{}",
            logged
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test]
async fn the_read_api_asks_for_its_own_token_and_metrics_stay_open() {
    const API_TOKEN: &str = "r3ad-ap1-t0ken-c0ffee";
    let dir = TempDir::new("api-token");
    let (grpc, prometheus) = (free_port(), free_port());
    let config = dir.0.join("doraflow.yaml");
    std::fs::write(
        &config,
        format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\" }}
processors:
  dora: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\", api_token: \"${{env:DORAFLOW_TEST_API_TOKEN}}\" }}
pipelines:
  main: {{ receivers: [otlp], processors: [dora], exporters: [prometheus] }}
"
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_doraflow"))
        .args(["run", "--config"])
        .arg(&config)
        .env("DORAFLOW_TEST_API_TOKEN", API_TOKEN)
        .env("DORAFLOW_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn doraflow");
    common::wait_ready(prometheus);
    let client = reqwest::Client::new();
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(format!("http://127.0.0.1:{prometheus}{path}"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    for path in [
        "/api/v1/dora",
        "/api/v1/alerts",
        "/api/v1/dashboard",
        "/report",
    ] {
        assert_eq!(get(path, None).await.unwrap().status(), 401, "{path}");
        assert_eq!(
            get(path, Some("wrong")).await.unwrap().status(),
            401,
            "{path}"
        );
        assert_eq!(
            get(path, Some(API_TOKEN)).await.unwrap().status(),
            200,
            "{path}"
        );
    }
    for path in ["/metrics", "/healthz", "/readyz", "/"] {
        assert_eq!(get(path, None).await.unwrap().status(), 200, "{path}");
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_is_dropped_at_the_header_timeout_while_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let (http, webhook, prometheus) = (free_port(), free_port(), free_port());
    let mut doraflow = common::Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    http: {{ endpoint: \"127.0.0.1:{http}\", header_read_timeout: 1s }}
  webhook: {{ endpoint: \"127.0.0.1:{webhook}\", header_read_timeout: 1s, max_connections: 4 }}
processors:
  red: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp, webhook], processors: [red], exporters: [prometheus] }}
"
        ),
        prometheus,
        0,
        webhook,
    );
    doraflow.http = http;
    for port in [http, webhook] {
        // Headers begun and never finished.
        let mut slow = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        slow.write_all(b"POST /v1/traces HTTP/1.1\r\nhost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let started = std::time::Instant::now();
        // Others are served meanwhile, on the same listener.
        let answer = if port == http {
            reqwest::Client::new()
                .post(doraflow.http_url("/v1/traces"))
                .header("content-type", "application/x-protobuf")
                .body(prost::Message::encode_to_vec(&common::checkout_spans(
                    10, 0,
                )))
        } else {
            reqwest::Client::new()
                .post(doraflow.webhook_url())
                .header("content-type", "application/json")
                .body("[]")
        }
        .send()
        .await
        .unwrap();
        assert_eq!(answer.status(), if port == http { 200 } else { 400 });
        // The slow one is closed at the timeout (hyper answers 408 first
        // or just closes): either way its read ends.
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
        let took = started.elapsed();
        assert!(
            read.is_ok(),
            "port {port}: the slow connection was not closed"
        );
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(4),
            "port {port}: closed after {took:?}"
        );
    }
    // Past max_connections (4), a fifth waits in the backlog until one goes.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", webhook))
            .await
            .unwrap();
        c.write_all(b"POST /cdevents HTTP/1.1\r\nhost: x\r\n")
            .await
            .unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let answer = reqwest::Client::new()
        .post(doraflow.webhook_url())
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(
        answer.status(),
        400,
        "an empty batch is refused, but answered"
    );
    assert!(
        waited >= Duration::from_millis(500),
        "the fifth connection was served at once ({waited:?}), not after a slot freed"
    );
}

/// gRPC: a client that never sends its request message is cancelled at
/// `request_timeout` while other requests on the same connection are
/// served; a connection gets at most `max_concurrent_streams` requests at
/// once; past `max_connections` a new connection is not served until one
/// closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_slow_requests_time_out_and_streams_and_connections_are_bounded() {
    use doraflow::receivers::otlp_grpc::RawCodec;
    use tonic::codegen::http::uri::PathAndQuery;

    let (grpc, prometheus) = (free_port(), free_port());
    let doraflow = common::Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\", request_timeout: 1s, max_concurrent_streams: 2, max_connections: 2 }}
processors:
  red: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp], processors: [red], exporters: [prometheus] }}
"
        ),
        prometheus,
        grpc,
        0,
    );
    let connect = || async {
        tonic::transport::Endpoint::from_shared(doraflow.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap()
    };
    // A request whose message never comes: the body stays open, empty.
    let slow = |channel: tonic::transport::Channel| async move {
        let mut raw = tonic::client::Grpc::new(channel);
        raw.ready().await.unwrap();
        let started = std::time::Instant::now();
        let status = raw
            .client_streaming::<_, bytes::Bytes, bytes::Bytes, _>(
                tonic::Request::new(tokio_stream::pending::<bytes::Bytes>()),
                PathAndQuery::from_static(
                    "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                ),
                RawCodec,
            )
            .await
            .unwrap_err();
        (status, started.elapsed())
    };
    let export = |channel: tonic::transport::Channel| async move {
        let started = std::time::Instant::now();
        TraceServiceClient::new(channel)
            .export(common::checkout_spans(10, 0))
            .await
            .map(|_| started.elapsed())
    };

    let a = connect().await;
    let first = tokio::spawn(slow(a.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Served beside the slow one, at once.
    let took = export(a.clone()).await.unwrap();
    assert!(took < Duration::from_millis(500), "export took {took:?}");
    let (status, took) = first.await.unwrap();
    assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "cancelled after {took:?}"
    );

    // Two slow requests fill the connection's two streams: a third request
    // on it waits for one of them to end at the timeout.
    let slow_ones = [tokio::spawn(slow(a.clone())), tokio::spawn(slow(a.clone()))];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = export(a.clone()).await.unwrap();
    assert!(
        took >= Duration::from_millis(500),
        "a third stream was served at once ({took:?}) past max_concurrent_streams 2"
    );
    for slow_one in slow_ones {
        assert_eq!(slow_one.await.unwrap().0.code(), tonic::Code::Cancelled);
    }

    // Connections: `a` and `b` hold both slots; `c` is not served until
    // `b` closes.
    let b = connect().await;
    export(b.clone()).await.unwrap();
    let c = tokio::spawn({
        let url = doraflow.grpc_url();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect_lazy();
            export(channel).await
        }
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !c.is_finished(),
        "a third connection was served past max_connections 2"
    );
    drop(b);
    let took = tokio::time::timeout(Duration::from_secs(5), c)
        .await
        .expect("the third connection served once a slot freed")
        .unwrap()
        .unwrap();
    assert!(took >= Duration::from_millis(600), "{took:?}");
    let m = doraflow.metrics();
    assert_eq!(
        m.get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        Some(40.0)
    );
}

/// A gRPC client that connects and sends nothing (not even HTTP/2's
/// preface, before which no keepalive ping goes) is closed after
/// `FIRST_BYTES_WITHIN` (10 s), giving its connection slot back: with
/// `max_connections: 1` an export waits for that, then is served.
#[tokio::test]
async fn a_grpc_client_that_sends_nothing_gives_its_connection_slot_back() {
    use tokio::io::AsyncReadExt;
    let (grpc, prometheus) = (free_port(), free_port());
    let doraflow = common::Doraflow::start_yaml(
        &format!(
            "receivers:
  otlp:
    grpc: {{ endpoint: \"127.0.0.1:{grpc}\", max_connections: 1 }}
processors:
  red: {{}}
exporters:
  prometheus: {{ endpoint: \"127.0.0.1:{prometheus}\" }}
pipelines:
  main: {{ receivers: [otlp], processors: [red], exporters: [prometheus] }}
"
        ),
        prometheus,
        grpc,
        0,
    );
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", grpc))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let channel = tonic::transport::Endpoint::from_shared(doraflow.grpc_url())
        .unwrap()
        .connect_lazy();
    tokio::time::timeout(
        Duration::from_secs(30),
        TraceServiceClient::new(channel).export(common::checkout_spans(10, 0)),
    )
    .await
    .expect("the export served once the silent connection was closed")
    .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(8),
        "served after {took:?}, while the silent connection held the only slot"
    );
    // It got the server's SETTINGS, then its end: closed.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut got))
        .await
        .expect("the silent connection closed");
    assert!(
        read.is_ok()
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );
    assert_eq!(
        doraflow.metrics().get(
            "dora_service_requests_total",
            &[("service", "checkout"), ("environment", "production")]
        ),
        Some(10.0)
    );
}
