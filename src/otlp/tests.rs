//! Decoder tests: exact summaries of hand-built requests, a differential check
//! of the wire reader against a full `opentelemetry-proto` decode, and
//! malformed input.

use std::sync::Arc;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use proptest::prelude::*;
use prost::Message;

use super::*;

use super::synth::{attr, resource, trace_request};

fn span(kind: i32, start: u64, end: u64, status: i32, http_status: Option<i64>) -> Span {
    let kind = SpanKind::try_from(kind).unwrap_or(SpanKind::Unspecified);
    let status = StatusCode::try_from(status).unwrap_or(StatusCode::Unset);
    super::synth::span(kind, start, end, status, http_status)
}

fn request(groups: Vec<(Resource, Vec<Span>)>) -> ExportTraceServiceRequest {
    trace_request(groups)
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const INTERNAL: i32 = 1;
const CONSUMER: i32 = 5;
const OK: i32 = 1;
const ERROR: i32 = 2;

#[test]
fn entry_spans_become_requests_with_exact_latency_and_errors() {
    let req = request(vec![
        (
            resource(Some("checkout"), Some("production")),
            vec![
                span(SERVER, 1_000, 5_000, OK, Some(200)),
                span(SERVER, 1_000, 2_000, 0, Some(503)), // HTTP 5xx: error
                span(SERVER, 1_000, 1_500, 0, Some(404)), // 4xx: not an error
                span(CLIENT, 0, 9_000, ERROR, None),      // not a request
                span(INTERNAL, 0, 9_000, ERROR, None),    // not a request
                span(CONSUMER, 10, 20, ERROR, None),      // a request, an error
            ],
        ),
        (
            resource(None, None),
            vec![span(SERVER, 7, 3, OK, None)], // ends before it starts
        ),
    ]);
    let summary = traces_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!(summary.spans, 7);
    assert_eq!(summary.rejected_spans, 1);
    assert_eq!(summary.latencies_ns, vec![4_000, 1_000, 500, 10]);
    assert_eq!(summary.groups.len(), 1);
    let group = &summary.groups[0];
    assert_eq!(&group.identity.service[..], b"checkout");
    assert_eq!(&group.identity.environment[..], b"production");
    assert_eq!(group.latencies, 0..4);
    assert_eq!(group.errors, 2);
}

#[test]
fn missing_service_and_legacy_environment_attribute() {
    let mut res = resource(None, None);
    res.attributes.push(attr(
        "deployment.environment",
        Value::StringValue("staging".into()),
    ));
    let req = request(vec![(res, vec![span(SERVER, 0, 1, 0, None)])]);
    let summary = traces_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!(&summary.groups[0].identity.service[..], b"unknown_service");
    assert_eq!(&summary.groups[0].identity.environment[..], b"staging");
}

#[test]
fn legacy_http_status_code_and_string_values_count() {
    let mut a = span(SERVER, 0, 1, 0, None);
    a.attributes
        .push(attr("http.status_code", Value::IntValue(500)));
    let mut b = span(SERVER, 0, 1, 0, None);
    b.attributes.push(attr(
        "http.response.status_code",
        Value::StringValue("502".into()),
    ));
    let req = request(vec![(resource(Some("a"), None), vec![a, b])]);
    let summary = traces_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!(summary.groups[0].errors, 2);
}

#[test]
fn json_and_protobuf_give_the_same_summary() {
    let req = request(vec![(
        resource(Some("cart"), Some("prod")),
        vec![
            span(
                SERVER,
                1_700_000_000_000_000_000,
                1_700_000_000_250_000_000,
                0,
                Some(500),
            ),
            span(CONSUMER, 5, 10, OK, None),
        ],
    )]);
    let json = serde_json::to_vec(&req).unwrap();
    let from_json = decode(Signal::Traces, Encoding::Json, Bytes::from(json)).unwrap();
    let from_proto = decode(
        Signal::Traces,
        Encoding::Protobuf,
        Bytes::from(req.encode_to_vec()),
    )
    .unwrap();
    assert_eq!(from_json, from_proto);
}

#[test]
fn otlp_json_as_written_by_other_clients() {
    // The OTLP/JSON examples' shape: hex ids, 64-bit integers as strings, enum integers.
    let json = r#"{"resourceSpans":[{"resource":{"attributes":[
        {"key":"service.name","value":{"stringValue":"web"}}]},
      "scopeSpans":[{"scope":{"name":"x"},"spans":[
        {"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
         "name":"GET /","kind":2,"startTimeUnixNano":"1544712660000000000",
         "endTimeUnixNano":"1544712661000000000",
         "attributes":[{"key":"http.response.status_code","value":{"intValue":"500"}}],
         "status":{}}]}]}]}"#;
    let Telemetry::Traces(summary) = decode(
        Signal::Traces,
        Encoding::Json,
        Bytes::from_static(json.as_bytes()),
    )
    .unwrap() else {
        panic!("not traces");
    };
    assert_eq!(summary.latencies_ns, vec![1_000_000_000]);
    assert_eq!(summary.groups[0].errors, 1);
}

#[test]
fn logs_count_error_severity_per_resource() {
    let record = |severity: i32| LogRecord {
        severity_number: severity,
        body: Some(AnyValue {
            value: Some(Value::StringValue("boom".into())),
        }),
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(Some("api"), Some("production"))),
            scope_logs: vec![ScopeLogs {
                log_records: vec![record(9), record(16), record(17), record(21), record(24)],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let summary = logs_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!(summary.records, 5);
    assert_eq!(summary.groups[0].errors, 3);
    assert_eq!(&summary.groups[0].identity.service[..], b"api");
}

#[test]
fn deployment_log_records_become_deployments() {
    let record = |attrs: Vec<(&str, &str)>, time: u64| LogRecord {
        time_unix_nano: time,
        observed_time_unix_nano: 77,
        attributes: attrs
            .into_iter()
            .map(|(k, v)| attr(k, Value::StringValue(v.into())))
            .collect(),
        ..Default::default()
    };
    let req = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(resource(Some("checkout"), Some("staging"))),
            scope_logs: vec![ScopeLogs {
                log_records: vec![
                    record(
                        vec![
                            ("deployment.id", "dep-7"),
                            ("deployment.status", "failed"),
                            ("deployment.environment.name", "production"),
                            ("vcs.ref.head.revision", "abc123"),
                        ],
                        1_000,
                    ),
                    record(vec![("deployment.status", "succeeded")], 0),
                    record(vec![("http.route", "/x")], 5),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let summary = logs_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
    assert_eq!(summary.records, 3);
    assert_eq!(summary.deployments.len(), 2);
    use crate::model::delivery::{DeliveryKind, DeploymentOutcome};
    let first = summary.deployments[0].to_event("unknown");
    assert_eq!(first.id, "dep-7");
    assert_eq!(first.time, 1_000);
    let DeliveryKind::Deployment(d) = first.kind else {
        panic!()
    };
    assert_eq!(
        (d.service.as_str(), d.environment.as_str()),
        ("checkout", "production")
    );
    assert_eq!(d.outcome, DeploymentOutcome::Failure);
    assert_eq!(d.changes[0].id, "abc123");
    // No id: one derived from service, environment and time; observed time stands in.
    let second = summary.deployments[1].to_event("unknown");
    assert_eq!(second.id, "otlp-log:checkout:staging:77");
    let DeliveryKind::Deployment(d) = second.kind else {
        panic!()
    };
    assert_eq!(d.outcome, DeploymentOutcome::Success);
}

#[test]
fn malformed_protobuf_is_an_error_not_a_panic() {
    let good = request(vec![(
        resource(Some("a"), None),
        vec![span(SERVER, 0, 10, 0, Some(200))],
    )])
    .encode_to_vec();
    // Every truncation of a valid message either fails or decodes a prefix;
    // none may panic. A cut inside the outer length-delimited field must fail.
    for cut in 1..good.len() {
        let result = traces_protobuf(&Bytes::copy_from_slice(&good[..cut]));
        assert!(result.is_err(), "truncation at {cut} accepted");
    }
    for garbage in [
        &b"\xff\xff\xff"[..],
        b"\x0a\x05abc",
        b"\x0b",
        b"not protobuf at all",
    ] {
        assert!(traces_protobuf(&Bytes::copy_from_slice(garbage)).is_err());
    }
    assert!(matches!(
        decode(
            Signal::Traces,
            Encoding::Json,
            Bytes::from_static(b"{\"resourceSpans\": [")
        ),
        Err(DecodeError::Json(_))
    ));
}

/// The reference semantics, computed over the full decode.
/// (service, latencies, errors) of one resource.
type ReferenceGroup = (String, Vec<u64>, u64);

fn reference(req: &ExportTraceServiceRequest) -> (u64, u64, Vec<ReferenceGroup>) {
    let mut spans = 0;
    let mut rejected = 0;
    let mut groups = Vec::new();
    for rs in &req.resource_spans {
        let identity = identity_of(
            rs.resource
                .as_ref()
                .map(|r| &r.attributes[..])
                .unwrap_or(&[]),
        );
        let mut latencies = Vec::new();
        let mut errors = 0;
        for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            spans += 1;
            if span.kind != SERVER && span.kind != CONSUMER {
                continue;
            }
            if span.end_time_unix_nano < span.start_time_unix_nano {
                rejected += 1;
                continue;
            }
            let http_error = span.kind == SERVER
                && span.attributes.iter().any(|kv| {
                    kv.key == "http.response.status_code"
                        && matches!(kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(Value::IntValue(c)) if *c >= 500)
                });
            let status_error = span.status.as_ref().is_some_and(|s| s.code == ERROR);
            errors += u64::from(http_error || status_error);
            latencies.push(span.end_time_unix_nano - span.start_time_unix_nano);
        }
        if !latencies.is_empty() {
            groups.push((
                String::from_utf8(identity.service.to_vec()).unwrap(),
                latencies,
                errors,
            ));
        }
    }
    (spans, rejected, groups)
}

/// `body` cut at the given places (in order, repeats allowed: empty pieces).
fn cut<'a>(body: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut start = 0;
    for end in at.into_iter().chain([body.len()]) {
        pieces.push(&body[start..end]);
        start = end;
    }
    pieces
}

/// Logs of two services, one record per `(severity, deployment id)`: with
/// an id, the record carries a deployment.
fn log_request(records: &[(i32, Option<String>)]) -> ExportLogsServiceRequest {
    let record = |(severity, id): &(i32, Option<String>)| LogRecord {
        time_unix_nano: 1_000,
        severity_number: *severity,
        attributes: id
            .iter()
            .map(|id| attr("deployment.id", Value::StringValue(id.clone())))
            .collect(),
        ..Default::default()
    };
    let (a, b) = records.split_at(records.len() / 2);
    ExportLogsServiceRequest {
        resource_logs: [("api", a), ("web", b)]
            .into_iter()
            .map(|(service, records)| ResourceLogs {
                resource: Some(resource(Some(service), Some("prod"))),
                scope_logs: vec![ScopeLogs {
                    log_records: records.iter().map(record).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

prop_compose! {
    fn arb_span()(kind in 0i32..6, start in 0u64..1_000_000, len in 0u64..1_000_000,
                  backwards in proptest::bool::weighted(0.05), status in 0i32..3,
                  http in proptest::option::of(prop_oneof![Just(200i64), Just(404), Just(500), Just(503)])) -> Span {
        let end = if backwards { start.saturating_sub(len + 1) } else { start + len };
        span(kind, start, end, status, http)
    }
}

prop_compose! {
    /// A span of any kind with ids, maybe a parent and a link, and some of
    /// the attributes the `dependencies` processor reads, in any order.
    fn arb_detail_span()(base in arb_span(), id in 1u8..6, parent in 0u8..6,
                         link in proptest::option::of(1u8..6),
                         attrs in proptest::collection::vec(0usize..8, 0..6)) -> Span {
        let mut span = base;
        span.span_id = vec![id; 8];
        span.parent_span_id = if parent == 0 { Vec::new() } else { vec![parent; 8] };
        span.links = link.into_iter().map(|l| opentelemetry_proto::tonic::trace::v1::span::Link {
            trace_id: vec![1; 16],
            span_id: vec![l; 8],
            ..Default::default()
        }).collect();
        for a in attrs {
            span.attributes.push(match a {
                0 => attr("db.system.name", Value::StringValue("postgresql".into())),
                1 => attr("server.address", Value::StringValue("db.internal".into())),
                2 => attr("cache.hit", Value::BoolValue(a % 2 == 0)),
                3 => attr("http.response.status_code", Value::IntValue(503)),
                4 => attr("messaging.system", Value::StringValue("kafka".into())),
                5 => attr("db.operation.name", Value::StringValue("SELECT".into())),
                6 => attr("cache.hit", Value::StringValue("miss".into())),
                _ => attr("peer.service", Value::IntValue(7)),
            });
        }
        span
    }
}

/// The summary of `body` with span details.
fn detailed(body: &[u8]) -> TraceSummary {
    let keys = Arc::new(crate::model::spans::SpanKeys::default());
    traces_protobuf_with(&Bytes::copy_from_slice(body), Some(&keys)).unwrap()
}

proptest! {
    /// Reading span details changes nothing `red` reads, and the details
    /// agree with a full decode; read in pieces, borrowed or appended, they
    /// are the same.
    #[test]
    fn span_details_agree_with_full_decode_and_leave_red_alone(
        a in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_detail_span(), 0..12)),
            0..4),
        b in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_detail_span(), 0..12)),
            0..4),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        use crate::model::spans::{Attr, SpanKind as Kind};
        let build = |groups: Vec<(Option<String>, Vec<Span>)>| request(groups.into_iter()
            .map(|(svc, spans)| (resource(svc.as_deref(), Some("prod")), spans))
            .collect());
        let (ra, rb) = (build(a), build(b));
        let (a, b) = (ra.encode_to_vec(), rb.encode_to_vec());
        let plain = traces_protobuf(&Bytes::copy_from_slice(&a)).unwrap();
        let with = detailed(&a);
        prop_assert_eq!(&with.groups, &plain.groups);
        prop_assert_eq!(&with.latencies_ns, &plain.latencies_ns);
        prop_assert_eq!((with.spans, with.rejected_spans), (plain.spans, plain.rejected_spans));
        // The reference: every span a detail is kept for, in order.
        let mut expected = Vec::new();
        for rs in &ra.resource_spans {
            for span in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let first = |key: &str| span.attributes.iter().find(|kv| kv.key == key)
                    .and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref());
                let hit = match first("cache.hit") {
                    Some(Value::BoolValue(b)) => Some(*b),
                    Some(Value::StringValue(s)) if s == "miss" => Some(false),
                    _ => None,
                };
                let kind = Kind::from_otlp(span.kind as u64);
                let hit = hit.filter(|_| kind != Kind::Server);
                let wanted = matches!(kind, Kind::Client | Kind::Producer | Kind::Consumer)
                    || (kind == Kind::Server && !span.parent_span_id.is_empty())
                    || hit.is_some();
                if !wanted || span.end_time_unix_nano < span.start_time_unix_nano {
                    continue;
                }
                // An INTERNAL span is read for its cache attributes only, a
                // SERVER span for its HTTP status only.
                let http_error = kind != Kind::Internal
                    && matches!(first("http.response.status_code"), Some(Value::IntValue(c)) if *c >= 500);
                let error = http_error || span.status.as_ref().is_some_and(|s| s.code == ERROR);
                let system = match first("db.system.name") {
                    Some(Value::StringValue(s)) if kind != Kind::Server => s.clone(),
                    _ => String::new(),
                };
                expected.push((kind, error, span.span_id[0], span.parent_span_id.first().copied(),
                    span.links.first().map(|l| l.span_id[0]), hit, system,
                    span.end_time_unix_nano - span.start_time_unix_nano));
            }
        }
        let got: Vec<_> = with.details.iter().map(|d| (d.kind, d.error, d.span_id[0],
            d.has_parent().then_some(d.parent_span_id[0]), d.link.map(|l| l.1[0]), d.cache_hit,
            String::from_utf8(with.text(d, Attr::DbSystemName).to_vec()).unwrap(),
            d.duration_ns())).collect();
        prop_assert_eq!(got, expected);
        // In pieces.
        let mut stream = StreamDecode::new_with(Signal::Traces, a.len(),
            with.detail_keys.as_ref()).unwrap();
        for piece in cut(&a, &cuts) {
            stream.push(piece).unwrap();
        }
        match stream.finish().unwrap() {
            Telemetry::Traces(t) => prop_assert_eq!(&t, &with),
            other => panic!("not traces: {other:?}"),
        }
        // Borrowed and appended: the summary of both in one request.
        let borrowed = |body: &[u8]| match decode_borrowed_with(Signal::Traces, Encoding::Protobuf,
            body, with.detail_keys.as_ref()).unwrap() {
            Telemetry::Traces(t) => t,
            other => panic!("not traces: {other:?}"),
        };
        let mut appended = borrowed(&a);
        appended.append(borrowed(&b));
        prop_assert_eq!(appended, detailed(&[a.as_slice(), b.as_slice()].concat()));
    }

    /// The borrowed reader (Kafka) equals the shared one, and two requests'
    /// summaries appended (Kafka's merged batches) equal the summary of
    /// both in one request: protobuf concatenation of two requests is the
    /// request holding both resource lists.
    #[test]
    fn borrowed_and_appended_summaries_equal_the_shared_one(
        a in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_span(), 0..20)),
            0..5),
        b in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_span(), 0..20)),
            0..5),
    ) {
        let encode = |groups: Vec<(Option<String>, Vec<Span>)>| {
            request(groups.into_iter()
                .map(|(svc, spans)| (resource(svc.as_deref(), Some("prod")), spans))
                .collect()).encode_to_vec()
        };
        let (a, b) = (encode(a), encode(b));
        let both = [a.as_slice(), b.as_slice()].concat();
        let shared = |body: &[u8]| traces_protobuf(&Bytes::copy_from_slice(body)).unwrap();
        let borrowed = |body: &[u8]| match decode_borrowed(Signal::Traces, Encoding::Protobuf, body).unwrap() {
            Telemetry::Traces(t) => t,
            other => panic!("not traces: {other:?}"),
        };
        prop_assert_eq!(borrowed(&a), shared(&a));
        let mut appended = borrowed(&a);
        appended.append(borrowed(&b));
        prop_assert_eq!(appended, shared(&both));
    }

    /// A request read in pieces, cut anywhere (inside keys, lengths,
    /// resources and spans), gives exactly what reading it whole gives.
    #[test]
    fn a_request_read_in_pieces_equals_it_read_whole(
        groups in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_span(), 0..20)),
            0..5),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let body = request(groups.into_iter()
            .map(|(svc, spans)| (resource(svc.as_deref(), Some("prod")), spans))
            .collect()).encode_to_vec();
        let whole = traces_protobuf(&Bytes::copy_from_slice(&body)).unwrap();
        let pieces = cut(&body, &cuts);
        let mut stream = StreamDecode::new(Signal::Traces, body.len()).unwrap();
        for piece in &pieces {
            stream.push(piece).unwrap();
        }
        prop_assert_eq!(stream.remaining(), 0);
        match stream.finish().unwrap() {
            Telemetry::Traces(t) => prop_assert_eq!(t, whole),
            other => panic!("not traces: {other:?}"),
        }
    }

    /// Bytes changed or cut short: read in pieces, a request is refused
    /// exactly when it is refused read whole, and nothing panics.
    #[test]
    fn a_malformed_request_in_pieces_fails_as_it_fails_whole(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        short in 0usize..4,
    ) {
        let mut bytes = request(vec![
            (resource(Some("svc"), Some("prod")), vec![span(SERVER, 1, 9, 0, Some(500)), span(CONSUMER, 2, 4, 2, None)]),
            (resource(Some("other"), None), vec![span(SERVER, 5, 7, 1, Some(200))]),
        ]).encode_to_vec();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        let whole = traces_protobuf(&Bytes::copy_from_slice(&bytes));
        // The declared length may exceed what comes: a body cut short.
        let declared = bytes.len() + short;
        let mut stream = StreamDecode::new(Signal::Traces, declared).unwrap();
        let mut result = Ok(());
        for piece in cut(&bytes, &cuts) {
            result = result.and_then(|()| stream.push(piece));
        }
        let streamed = result.and_then(|()| stream.finish());
        if short > 0 {
            prop_assert!(streamed.is_err());
        } else {
            match (whole, streamed) {
                (Ok(w), Ok(Telemetry::Traces(s))) => prop_assert_eq!(w, s),
                (Err(_), Err(_)) => {}
                (w, s) => prop_assert!(false, "whole {w:?}, in pieces {s:?}"),
            }
        }
    }

    /// Logs read in pieces equal logs read whole.
    #[test]
    fn logs_read_in_pieces_equal_logs_read_whole(
        records in proptest::collection::vec((0i32..24, proptest::option::of("[a-z]{1,6}")), 0..30),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let body = log_request(&records).encode_to_vec();
        let whole = logs_protobuf(&Bytes::copy_from_slice(&body)).unwrap();
        let mut stream = StreamDecode::new(Signal::Logs, body.len()).unwrap();
        for piece in cut(&body, &cuts) {
            stream.push(piece).unwrap();
        }
        match stream.finish().unwrap() {
            Telemetry::Logs(l) => prop_assert_eq!(l, whole),
            other => panic!("not logs: {other:?}"),
        }
    }

    #[test]
    fn wire_reader_agrees_with_full_decode(
        groups in proptest::collection::vec(
            (proptest::option::of("[a-z]{1,8}"), proptest::collection::vec(arb_span(), 0..20)),
            0..5)
    ) {
        let req = request(groups.into_iter()
            .map(|(svc, spans)| (resource(svc.as_deref(), Some("prod")), spans))
            .collect());
        let summary = traces_protobuf(&Bytes::from(req.encode_to_vec())).unwrap();
        let (spans, rejected, expected) = reference(&req);
        prop_assert_eq!(summary.spans, spans);
        prop_assert_eq!(summary.rejected_spans, rejected);
        let got: Vec<_> = summary.groups.iter().map(|g| (
            String::from_utf8(g.identity.service.to_vec()).unwrap(),
            summary.latencies_ns[g.latencies.clone()].to_vec(),
            g.errors,
        )).collect();
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let body = Bytes::from(bytes);
        let _ = traces_protobuf(&body);
        let _ = logs_protobuf(&body);
        let _ = decode(Signal::Metrics, Encoding::Protobuf, body.clone());
        let _ = decode(Signal::Traces, Encoding::Json, body);
    }

    #[test]
    fn mutated_requests_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)) {
        let mut bytes = request(vec![(resource(Some("svc"), Some("prod")),
            vec![span(SERVER, 1, 9, 0, Some(500)), span(CONSUMER, 2, 4, 2, None)])]).encode_to_vec();
        for (index, byte) in flips {
            let i = index.index(bytes.len());
            bytes[i] = byte;
        }
        let _ = traces_protobuf(&Bytes::from(bytes));
    }
}

#[test]
fn utilization_gauges_become_busy_shares() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::{
        Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric::Data,
        number_data_point::Value as Number,
    };
    let point = |value: f64, attrs: Vec<(&str, Value)>| NumberDataPoint {
        time_unix_nano: 42,
        value: Some(Number::AsDouble(value)),
        attributes: attrs.into_iter().map(|(k, v)| attr(k, v)).collect(),
        ..Default::default()
    };
    let s = |v: &str| Value::StringValue(v.into());
    let gauge = |name: &str, points| Metric {
        name: name.into(),
        data: Some(Data::Gauge(Gauge {
            data_points: points,
        })),
        ..Default::default()
    };
    let mut res = resource(Some("checkout"), Some("production"));
    res.attributes.push(attr("k8s.pod.name", s("checkout-1")));
    let req = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(res),
            scope_metrics: vec![ScopeMetrics {
                metrics: vec![
                    gauge(
                        "system.cpu.utilization",
                        vec![
                            point(
                                0.5,
                                vec![
                                    ("cpu.mode", s("user")),
                                    ("cpu.logical_number", Value::IntValue(0)),
                                ],
                            ),
                            point(
                                0.2,
                                vec![
                                    ("cpu.mode", s("system")),
                                    ("cpu.logical_number", Value::IntValue(0)),
                                ],
                            ),
                            point(
                                0.3,
                                vec![
                                    ("cpu.mode", s("idle")),
                                    ("cpu.logical_number", Value::IntValue(0)),
                                ],
                            ),
                            point(
                                0.1,
                                vec![
                                    ("cpu.mode", s("user")),
                                    ("cpu.logical_number", Value::IntValue(1)),
                                ],
                            ),
                            point(
                                0.9,
                                vec![
                                    ("cpu.mode", s("idle")),
                                    ("cpu.logical_number", Value::IntValue(1)),
                                ],
                            ),
                        ],
                    ),
                    gauge(
                        "system.memory.utilization",
                        vec![
                            point(0.6, vec![("state", s("used"))]),
                            point(0.4, vec![("state", s("free"))]),
                        ],
                    ),
                    gauge("container.cpu.utilization", vec![point(0.25, vec![])]),
                    gauge("http.server.active_requests", vec![point(7.0, vec![])]),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let Telemetry::Metrics(summary) = decode(
        Signal::Metrics,
        Encoding::Protobuf,
        Bytes::from(req.encode_to_vec()),
    )
    .unwrap() else {
        panic!("not metrics")
    };
    assert_eq!(summary.points, 9);
    let got: Vec<(crate::model::Resource, f64, &str)> = summary
        .utilization
        .iter()
        .map(|u| (u.resource, u.value, u.instance.as_str()))
        .collect();
    use crate::model::Resource::{Cpu, Memory};
    // CPU: (0.5 + 0.2 + 0.1) busy over 2 logical CPUs.
    assert_eq!(
        got,
        [
            (Cpu, (0.5 + 0.2 + 0.1) / 2.0, "checkout-1"),
            (Memory, 0.6, "checkout-1"),
            (Cpu, 0.25, "checkout-1")
        ]
    );
}

#[test]
fn requests_split_by_service_into_valid_requests_byte_for_byte() {
    let req = request(vec![
        (
            resource(Some("checkout"), Some("production")),
            vec![span(SERVER, 1, 2, OK, None), span(CLIENT, 1, 3, OK, None)],
        ),
        (
            resource(Some("payments"), None),
            vec![span(SERVER, 1, 5, ERROR, None)],
        ),
        (
            resource(Some("checkout"), Some("production")),
            vec![span(SERVER, 2, 9, OK, None)],
        ),
        (resource(None, None), vec![span(INTERNAL, 1, 2, OK, None)]),
    ]);
    let body = Bytes::from(req.encode_to_vec());
    let parts = wire::split_by_service(&body).unwrap();
    let names: Vec<&[u8]> = parts.iter().map(|(s, _)| s.as_ref()).collect();
    assert_eq!(names, [&b"checkout"[..], b"payments", b"unknown_service"]);
    let decoded: Vec<ExportTraceServiceRequest> = parts
        .iter()
        .map(|(_, part)| ExportTraceServiceRequest::decode(part.clone()).unwrap())
        .collect();
    assert_eq!(
        decoded[0].resource_spans,
        vec![req.resource_spans[0].clone(), req.resource_spans[2].clone()]
    );
    assert_eq!(
        decoded[1].resource_spans,
        vec![req.resource_spans[1].clone()]
    );
    assert_eq!(
        decoded[2].resource_spans,
        vec![req.resource_spans[3].clone()]
    );
    // Nothing lost, nothing added.
    let total: usize = parts.iter().map(|(_, p)| p.len()).sum();
    assert_eq!(total, body.len());
}

#[test]
fn a_request_of_one_service_is_forwarded_without_a_copy() {
    let req = request(vec![
        (
            resource(Some("checkout"), None),
            vec![span(SERVER, 1, 2, OK, None)],
        ),
        (
            resource(Some("checkout"), None),
            vec![span(SERVER, 1, 3, OK, None)],
        ),
    ]);
    let body = Bytes::from(req.encode_to_vec());
    let parts = wire::split_by_service(&body).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].1, body);
    // Two entries are concatenated, which here is the whole body again.
    let single = request(vec![(
        resource(Some("a"), None),
        vec![span(SERVER, 1, 2, OK, None)],
    )]);
    let single = Bytes::from(single.encode_to_vec());
    let parts = wire::split_by_service(&single).unwrap();
    assert_eq!(parts[0].1.as_ptr(), single.as_ptr(), "no copy");
}

#[test]
fn logs_and_metrics_split_too_and_garbage_is_an_error() {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::metrics::v1::ResourceMetrics;
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![
            ResourceLogs {
                resource: Some(resource(Some("a"), None)),
                ..Default::default()
            },
            ResourceLogs {
                resource: Some(resource(Some("b"), None)),
                ..Default::default()
            },
        ],
    };
    let parts = wire::split_by_service(&Bytes::from(logs.encode_to_vec())).unwrap();
    assert_eq!(parts.len(), 2);
    let b = ExportLogsServiceRequest::decode(parts[1].1.clone()).unwrap();
    assert_eq!(b.resource_logs, vec![logs.resource_logs[1].clone()]);
    let metrics = ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(Some("m"), None)),
            ..Default::default()
        }],
    };
    let parts = wire::split_by_service(&Bytes::from(metrics.encode_to_vec())).unwrap();
    assert_eq!(parts[0].0.as_ref(), b"m");
    assert!(wire::split_by_service(&Bytes::from_static(&[0x0a, 0xff, 0x01])).is_err());
}

/// A span whose kind is written after its attributes (legal protobuf,
/// though no encoder here does it) still has its HTTP status read: the
/// one-pass reader looks at the attributes again once the span turns out to
/// be SERVER. And with the kind first, as usual, the first status
/// attribute decides.
#[test]
fn the_http_status_is_read_whatever_the_field_order() {
    fn field(out: &mut Vec<u8>, number: u32, bytes: &[u8]) {
        prost::encoding::encode_key(number, prost::encoding::WireType::LengthDelimited, out);
        prost::encoding::encode_varint(bytes.len() as u64, out);
        out.extend_from_slice(bytes);
    }
    let body = |kind_last: bool, statuses: &[i64]| {
        let mut s = span(if kind_last { 0 } else { SERVER }, 10, 30, 0, None);
        s.attributes = statuses
            .iter()
            .map(|c| attr("http.response.status_code", Value::IntValue(*c)))
            .collect();
        let mut span_bytes = s.encode_to_vec();
        if kind_last {
            prost::encoding::encode_key(6, prost::encoding::WireType::Varint, &mut span_bytes);
            prost::encoding::encode_varint(SERVER as u64, &mut span_bytes);
        }
        let mut scope = Vec::new();
        field(&mut scope, 2, &span_bytes);
        let mut resource_spans = Vec::new();
        field(
            &mut resource_spans,
            1,
            &resource(Some("svc"), Some("prod")).encode_to_vec(),
        );
        field(&mut resource_spans, 2, &scope);
        let mut request = Vec::new();
        field(&mut request, 1, &resource_spans);
        Bytes::from(request)
    };
    for (kind_last, statuses, error) in [
        (true, &[503][..], 1),
        (true, &[200, 503][..], 0),
        (true, &[503, 200][..], 1),
        (false, &[503, 200][..], 1),
        (false, &[200, 503][..], 0),
        (true, &[][..], 0),
    ] {
        let summary = traces_protobuf(&body(kind_last, statuses)).unwrap();
        assert_eq!(summary.groups.len(), 1, "{kind_last} {statuses:?}");
        assert_eq!(summary.groups[0].errors, error, "{kind_last} {statuses:?}");
        assert_eq!(summary.latencies_ns, vec![20]);
    }
}
