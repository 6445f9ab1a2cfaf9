//! The regression check end to end on the processors: spans into `red`,
//! deployments into `dora`, the derive tick every slice, figures worked out
//! by hand.

use prost::Message;

use super::regression::RegressionConfig;
use super::tests::through_checkpoint;
use super::*;
use crate::model::Telemetry;
use crate::processors::red::{RedConfig, RedProcessor};

const S: Nanos = 1_000_000_000;
/// The deployment: 2025-11-24T16:00:00Z, on a slice boundary.
const T: Nanos = 1_764_000_000 * S;
const SLICE: Nanos = 10 * S;

fn config() -> DoraConfig {
    DoraConfig {
        regression: Some(RegressionConfig::default()),
        ..DoraConfig::default()
    }
}

fn red() -> RedProcessor {
    RedProcessor::new(&RedConfig::default(), "unknown")
}

/// `requests` spans of `service` in production, 2 ms each, `errors` of them failed.
fn spans(service: &str, requests: u64, errors: u64) -> Telemetry {
    use crate::otlp::synth::{resource, span, trace_request};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    let t0 = T as u64;
    let spans = (0..requests)
        .map(|i| {
            let status = if i < errors {
                StatusCode::Error
            } else {
                StatusCode::Ok
            };
            span(SpanKind::Server, t0, t0 + 2_000_000, status, None)
        })
        .collect();
    let body =
        trace_request(vec![(resource(Some(service), Some("production")), spans)]).encode_to_vec();
    crate::otlp::decode_borrowed(
        crate::model::Signal::Traces,
        crate::otlp::Encoding::Protobuf,
        &body,
    )
    .expect("valid")
}

fn deployed(service: &str, at: Nanos) -> DeliveryEvent {
    DeliveryEvent {
        id: format!("deploy-{service}-{at}"),
        time: at,
        kind: DeliveryKind::Deployment(Deployment {
            service: service.into(),
            environment: "production".into(),
            ..Default::default()
        }),
    }
}

/// Each slice of `[from, to)`: its spans in its middle, then the derive
/// tick at its end (the check, then the error ratio's incidents). Returns
/// the events the ticks applied.
fn run(
    red: &mut RedProcessor,
    dora: &mut DoraProcessor,
    from: Nanos,
    to: Nanos,
    traffic: impl Fn(Nanos) -> Vec<(&'static str, u64, u64)>,
) -> Vec<DeliveryEvent> {
    let mut events = Vec::new();
    let mut slice = from;
    while slice < to {
        for (service, requests, errors) in traffic(slice) {
            red.apply(
                &spans(service, requests, errors),
                (slice + SLICE / 2) as u64,
            );
        }
        let now = slice + SLICE;
        events.extend(dora.check_regressions(red, now));
        let counts = red.error_counts(now as u64);
        events.extend(
            dora.observe_errors(&counts, now)
                .into_iter()
                .map(|d| d.event),
        );
        slice = now;
    }
    events
}

/// Two minutes before the deployment at 0.2% errors; shop then fails 6%
/// of its requests for 5 minutes and recovers; steady never changes; quiet
/// has 5 requests a slice.
fn traffic(slice: Nanos) -> Vec<(&'static str, u64, u64)> {
    let shop = if (T..T + 300 * S).contains(&slice) {
        30
    } else {
        1
    };
    vec![("shop", 500, shop), ("steady", 500, 1), ("quiet", 5, 0)]
}

fn verdicts(events: &[DeliveryEvent]) -> Vec<(&str, Verdict, Health, Health, Vec<&str>)> {
    events
        .iter()
        .filter_map(|e| match &e.kind {
            DeliveryKind::Regression(j) => Some((
                j.service.as_str(),
                j.verdict,
                j.before,
                j.after,
                j.regressed.names(),
            )),
            _ => None,
        })
        .collect()
}

/// The figures of `requests` 2 ms spans: 2 ms as the HDR buckets (two
/// significant digits) give it back, the top of its bucket.
fn health(requests: u64, errors: u64) -> Health {
    Health {
        requests,
        errors,
        p95_us: Some(2_007),
        p99_us: Some(2_007),
    }
}

#[test]
fn a_regression_fails_its_deployment_and_recovers_with_the_right_time_to_restore() {
    let (mut red, mut dora) = (red(), DoraProcessor::new(&config()));
    let mut events = run(&mut red, &mut dora, T - 120 * S, T, traffic);
    assert!(events.is_empty(), "nothing to judge yet: {events:?}");
    dora.apply(&[
        deployed("shop", T),
        deployed("steady", T),
        deployed("quiet", T),
    ]);
    events.extend(run(&mut red, &mut dora, T, T + 600 * S, traffic));

    // Judged at T + 2m, on the 12 slices before and the 12 after:
    // 6000 requests each side, 12 errors (0.2%) before; shop's 360 (6%) after.
    let mut judged = verdicts(&events);
    judged.sort_by_key(|j| j.0);
    assert_eq!(
        judged,
        [
            (
                "quiet",
                Verdict::NotJudged,
                health(60, 0),
                health(60, 0),
                vec![]
            ),
            (
                "shop",
                Verdict::Regression,
                health(6_000, 12),
                health(6_000, 360),
                vec!["error_ratio"]
            ),
            (
                "steady",
                Verdict::Healthy,
                health(6_000, 12),
                health(6_000, 12),
                vec![]
            ),
        ]
    );
    // The error ratio over the 5m window passed 1% at T + 20 s (72 errors in
    // 7000 requests): its incident opened, and the regression took it over,
    // opened as of the deployment. The first healthy 2-minute stretch starts
    // at T + 290 s (41 errors in 6000: 0.68%), its first slice still at 6%
    // alone: service was back at T + 300 s. No second incident opened while
    // the window still held the regression's errors.
    let incident = format!("derived:shop:production:{}", T + 20 * S);
    let timeline: Vec<(String, Nanos)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            DeliveryKind::IncidentOpened { incident, .. } => {
                Some((format!("opened {incident}"), e.time))
            }
            DeliveryKind::IncidentResolved { incident } => {
                Some((format!("resolved {incident}"), e.time))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        timeline,
        [
            (format!("opened {incident}"), T + 20 * S),
            (format!("opened {incident}"), T),
            (format!("resolved {incident}"), T + 300 * S),
        ]
    );

    let now = T + 600 * S;
    let check = |dora: &DoraProcessor| {
        let snapshot = dora.snapshot(now);
        let series = |name: &str| {
            snapshot
                .series
                .iter()
                .find(|s| s.service == name)
                .cloned()
                .expect("a series")
        };
        let shop = series("shop");
        assert_eq!(
            shop.failed_changes_by_reason,
            BTreeMap::from([("regression", 1)])
        );
        assert_eq!(shop.open_incidents, 0);
        let week = &shop.windows[0];
        assert_eq!(week.change_failure_ratio, Some(1.0));
        assert_eq!(week.failed_by_cause.regression, 1);
        assert_eq!(
            (week.time_to_restore.count, week.time_to_restore.mean),
            (1, Some(300.0))
        );
        assert_eq!(week.failed_deployment_recovery.mean, Some(300.0));
        let failed = &shop.recent_failed_changes[0];
        assert_eq!(
            (failed.reason, failed.cause),
            (FailureReason::Regression, "regression")
        );
        let regression = failed.evidence.regression.as_ref().expect("its figures");
        assert_eq!(
            (
                regression.before,
                regression.after,
                regression.regressed.as_slice()
            ),
            (
                health(6_000, 12),
                health(6_000, 360),
                ["error_ratio"].as_slice()
            )
        );
        assert_eq!(regression.after.error_ratio(), Some(0.06));
        let evidence = &failed.evidence.incidents;
        assert_eq!(evidence.len(), 1);
        assert_eq!(
            (
                evidence[0].id.as_str(),
                evidence[0].source,
                evidence[0].opened
            ),
            (incident.as_str(), "doraflow", T)
        );
        // The others: no failed change, their verdicts listed.
        for (name, verdict) in [("steady", Verdict::Healthy), ("quiet", Verdict::NotJudged)] {
            let s = series(name);
            assert_eq!(s.failed_changes_total, 0, "{name}");
            assert_eq!(s.windows[0].time_to_restore.count, 0, "{name}");
            let listed = s.recent_deployments[0].regression.as_ref().expect("judged");
            assert_eq!(listed.verdict, verdict, "{name}");
        }
    };
    check(&dora);
    // A checkpoint and the log of events both give it all back.
    check(&through_checkpoint(&dora, &config()));
    let mut replayed = DoraProcessor::new(&config());
    let mut log: Vec<DeliveryEvent> = [
        deployed("shop", T),
        deployed("steady", T),
        deployed("quiet", T),
    ]
    .into_iter()
    .chain(events.iter().cloned())
    .map(|e| state::from_event_record(state::event_record(&e)).expect("round trip"))
    .collect();
    log.sort_by_key(|e| e.time);
    replayed.replay(&log);
    check(&replayed);
}

#[test]
fn a_deployment_judged_once_survives_a_restore_mid_regression() {
    // Stopped at T + 3m, the regression open: the restored processor does
    // not judge again and resolves it as the uninterrupted one does.
    let (mut red, mut dora) = (red(), DoraProcessor::new(&config()));
    run(&mut red, &mut dora, T - 120 * S, T, traffic);
    dora.apply(&[deployed("shop", T)]);
    let first = run(&mut red, &mut dora, T, T + 180 * S, traffic);
    assert_eq!(verdicts(&first).len(), 1);
    let mut restored = through_checkpoint(&dora, &config());
    let rest = run(&mut red, &mut restored, T + 180 * S, T + 600 * S, traffic);
    assert!(verdicts(&rest).is_empty(), "{rest:?}");
    let resolved: Vec<Nanos> = rest
        .iter()
        .filter(|e| matches!(e.kind, DeliveryKind::IncidentResolved { .. }))
        .map(|e| e.time)
        .collect();
    assert_eq!(resolved, [T + 300 * S]);
}

#[test]
fn a_deployment_followed_within_its_stretch_is_not_judged_and_old_ones_never_are() {
    let (mut red, mut dora) = (red(), DoraProcessor::new(&config()));
    run(&mut red, &mut dora, T - 120 * S, T, traffic);
    // A second deployment a minute after the first: the first is
    // superseded (its stretch after shows both); a backfilled one from
    // yesterday is past the window's reach and gets no verdict at all.
    dora.apply(&[
        deployed("steady", T),
        deployed("steady", T + 60 * S),
        deployed("steady", T - 86_400 * S),
    ]);
    let events = run(&mut red, &mut dora, T, T + 200 * S, traffic);
    let judged: Vec<(Nanos, Verdict, bool)> = events
        .iter()
        .filter_map(|e| match &e.kind {
            DeliveryKind::Regression(j) => Some((j.deployed_at, j.verdict, j.superseded)),
            _ => None,
        })
        .collect();
    assert_eq!(
        judged,
        [
            (T, Verdict::NotJudged, true),
            (T + 60 * S, Verdict::Healthy, false)
        ]
    );
}
