//! Scenario tests with hand-computed figures, window boundaries, and the
//! order-independence property.

use proptest::prelude::*;

use super::levels::{Level, ProfileName};
use super::*;
use crate::model::delivery::{
    DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, LinkedChange,
};
use crate::processors::dora::DeployPipeline;
use crate::processors::red::SeriesErrors;
use crate::settings::ConfigDuration;

/// 2024-05-01T00:00:00Z.
const T0: Nanos = 1_714_521_600_000_000_000;
const HOUR: Nanos = 3_600_000_000_000;
const DAY: Nanos = 24 * HOUR;

fn t(day: i64, hour: i64) -> Nanos {
    T0 + day * DAY + hour * HOUR
}

fn event(id: &str, time: Nanos, kind: DeliveryKind) -> DeliveryEvent {
    DeliveryEvent {
        id: id.to_string(),
        time,
        kind,
    }
}

fn deploy(
    id: &str,
    time: Nanos,
    env: &str,
    artifact: &str,
    outcome: DeploymentOutcome,
) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::Deployment(Deployment {
            rework: false,
            team: None,
            service: "checkout".into(),
            environment: env.into(),
            artifact: Some(artifact.into()),
            outcome,
            changes: Vec::new(),
            ..Default::default()
        }),
    )
}

fn created(id: &str, time: Nanos, change: &str) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::Change {
            change: change.into(),
            stage: ChangeStage::Created,
        },
    )
}

fn merged(id: &str, time: Nanos, change: &str) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::Change {
            change: change.into(),
            stage: ChangeStage::Merged,
        },
    )
}

fn packaged(id: &str, time: Nanos, artifact: &str, change: &str) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::ArtifactLink {
            artifact: artifact.into(),
            change: change.into(),
        },
    )
}

fn opened(id: &str, time: Nanos, incident: &str, artifact: Option<&str>) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::IncidentOpened {
            incident: incident.into(),
            service: "checkout".into(),
            environment: "production".into(),
            artifact: artifact.map(Into::into),
            details: Default::default(),
        },
    )
}

fn resolved(id: &str, time: Nanos, incident: &str) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::IncidentResolved {
            incident: incident.into(),
        },
    )
}

fn config() -> DoraConfig {
    DoraConfig {
        deploy_pipelines: vec![DeployPipeline {
            pipeline: "deploy-checkout".into(),
            service: "checkout".into(),
            environment: "production".into(),
        }],
        ..DoraConfig::default()
    }
}

use DeploymentOutcome::{Rollback, Success};

/// A month of checkout's history; the figures are worked out by hand in
/// `a_month_of_history_gives_hand_computed_figures`.
fn month() -> Vec<DeliveryEvent> {
    let mut d3 = deploy("d3", t(12, 0), "production", "a3", Success);
    if let DeliveryKind::Deployment(d) = &mut d3.kind {
        d.changes = vec![LinkedChange {
            id: "c4".into(),
            time: Some(t(11, 18)),
        }];
    }
    vec![
        created("e-c1", t(1, 0), "c1"),
        packaged("e-a1", t(1, 12), "a1", "c1"),
        deploy("d1", t(2, 0), "production", "a1", Success),
        created("e-c2", t(9, 0), "c2"),
        created("e-c3", t(9, 12), "c3"),
        packaged("e-a2-c2", t(9, 20), "a2", "c2"),
        packaged("e-a2-c3", t(9, 20), "a2", "c3"),
        deploy("d2", t(10, 0), "production", "a2", Success),
        d3,
        opened("i1-open", t(12, 6), "i1", None),
        resolved("i1-resolved", t(12, 8), "i1"),
        deploy("d4", t(12, 10), "production", "a2", Rollback),
        created("e-c5", t(19, 0), "c5"),
        merged("e-c5-merged", t(19, 12), "c5"),
        packaged("e-a5", t(19, 13), "a5", "c5"),
        deploy("d5", t(20, 0), "production", "a5", Success),
        event(
            "d6",
            t(24, 0),
            DeliveryKind::PipelineFailed {
                pipeline: "deploy-checkout".into(),
                service: None,
                environment: None,
            },
        ),
        created("e-c6", t(23, 3), "c6"),
        packaged("e-a7", t(23, 4), "a7", "c6"),
        deploy("d7", t(24, 3), "production", "a7", Success),
        created("e-c7", t(24, 0), "c7"),
        packaged("e-a8", t(24, 1), "a8", "c7"),
        deploy("s1", t(24, 2), "staging", "a8", Success),
        deploy("d8", t(24, 6), "production", "a8", Success),
        opened("i2-open", t(24, 9), "i2", Some("a7")),
        resolved("i2-resolved", t(24, 10), "i2"),
        deploy("d9", t(27, 0), "production", "a8", Success),
        opened("i3-open", t(29, 0), "i3", None),
        event(
            "other",
            t(29, 1),
            DeliveryKind::Other {
                event_type: "build.started".into(),
            },
        ),
    ]
}

/// Quantiles are exact (nearest rank over the kept history).
fn exact(got: Option<f64>, want: f64) -> bool {
    got == Some(want)
}

fn production(snapshot: &DoraSnapshot) -> &SeriesFigures {
    snapshot
        .series
        .iter()
        .find(|s| s.service == "checkout" && s.environment == "production")
        .expect("production series")
}

#[test]
fn a_month_of_history_gives_hand_computed_figures() {
    let mut dora = DoraProcessor::new(&config());
    dora.apply(&month());
    let snapshot = dora.snapshot(t(30, 0));
    assert_eq!(snapshot.events_applied, 29);
    assert_eq!(snapshot.ignored, 1);
    let prod = production(&snapshot);
    assert!(prod.production);
    assert_eq!(prod.open_incidents, 1);
    assert_eq!(prod.deployments_total["success"], 7);
    assert_eq!(prod.deployments_total["failure"], 1);
    assert_eq!(prod.deployments_total["rollback"], 1);
    // Failed changes: d3 (incident i1 after it, and rolled back by d4), d6
    // (its pipeline failed), d7 (incident i2 names its artifact a7, though d8
    // came between).
    assert_eq!(prod.failed_changes_total, 3);

    let [week, month] = [&prod.windows[0], &prod.windows[1]];
    assert_eq!((week.window.as_str(), month.window.as_str()), ("7d", "30d"));

    // 30d = (day 0, day 30]: successes d1 d2 d3 d5 d7 d8 d9 = 7, over 30 days.
    assert_eq!(month.deployments, 7);
    assert_eq!(month.failed_deployments, 1);
    assert_eq!(month.rollbacks, 1);
    assert_eq!(month.deployment_frequency_per_day, 7.0 / 30.0);
    // 8 counted deployments (all but the rollback), 3 failed.
    assert_eq!(month.change_failure_ratio, Some(3.0 / 8.0));
    assert_eq!(month.failed_changes, 3);
    // Lead times at first production deployment: c1 1d, c2 1d, c3 12h, c4 6h
    // (linked in customData), c5 1d (created, not merged), c6 1d, c7 6h (its
    // staging deployment and its redeployment d9 do not count).
    let lt = month.lead_time;
    assert_eq!(lt.count, 7);
    assert_eq!(lt.mean, Some(432_000.0 / 7.0));
    assert!(exact(lt.p50, 86_400.0), "{lt:?}");
    assert!(exact(lt.p95, 86_400.0), "{lt:?}");
    // Incidents resolved in the window: i1 2h, i2 1h.
    let ttr = month.time_to_restore;
    assert_eq!((ttr.count, ttr.mean), (2, Some(5_400.0)));
    assert!(
        exact(ttr.p50, 3_600.0) && exact(ttr.p95, 7_200.0),
        "{ttr:?}"
    );
    // Recovery: d3 8h (i1 resolved before the rollback), d6 3h (d7), d7 3h (d8).
    let rec = month.failed_deployment_recovery;
    assert_eq!((rec.count, rec.mean), (3, Some(16_800.0)));
    assert!(
        exact(rec.p50, 10_800.0) && exact(rec.p95, 28_800.0),
        "{rec:?}"
    );
    assert_eq!(
        month.levels,
        MetricLevels {
            deployment_frequency: Some(Level::High),
            lead_time: Some(Level::High),
            change_failure_rate: Some(Level::Low),
            time_to_restore: Some(Level::High),
        }
    );

    // 7d = (day 23, day 30]: d6 (failed), d7, d8, d9.
    assert_eq!(week.deployments, 3);
    assert_eq!(week.deployment_frequency_per_day, 3.0 / 7.0);
    assert_eq!(week.change_failure_ratio, Some(0.5));
    assert_eq!(
        (week.lead_time.count, week.lead_time.mean),
        (2, Some(54_000.0))
    );
    assert!(exact(week.lead_time.p50, 21_600.0) && exact(week.lead_time.p95, 86_400.0));
    assert_eq!(
        (week.time_to_restore.count, week.time_to_restore.mean),
        (1, Some(3_600.0))
    );
    assert_eq!(
        (
            week.failed_deployment_recovery.count,
            week.failed_deployment_recovery.mean
        ),
        (2, Some(10_800.0))
    );
    assert_eq!(week.levels.lead_time, Some(Level::Elite));

    // Staging counts c7 once, at its staging deployment: 2h.
    let staging = snapshot
        .series
        .iter()
        .find(|s| s.environment == "staging")
        .unwrap();
    assert!(!staging.production);
    assert_eq!(staging.windows[1].lead_time.mean, Some(7_200.0));
    assert_eq!(staging.windows[1].change_failure_ratio, Some(0.0));
}

#[test]
fn window_boundaries_are_exclusive_at_the_start_and_inclusive_at_now() {
    let mut dora = DoraProcessor::new(&DoraConfig {
        windows: vec!["7d".parse::<ConfigDuration>().unwrap()],
        ..DoraConfig::default()
    });
    let now = t(30, 0);
    dora.apply(&[
        deploy("outside", now - 7 * DAY, "production", "a", Success),
        deploy("inside", now - 7 * DAY + 1, "production", "b", Success),
        deploy("now", now, "production", "c", Success),
        deploy("future", now + 1, "production", "d", Success),
    ]);
    let snapshot = dora.snapshot(now);
    assert_eq!(production(&snapshot).windows[0].deployments, 2);
}

#[test]
fn an_incident_beyond_the_failure_window_fails_nothing() {
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&[
        deploy("d1", t(1, 0), "production", "a1", Success),
        opened("late", t(2, 0) + 1, "i", None),
        opened("artifact-late", t(2, 1), "j", Some("a1")),
    ]);
    let prod = production(&dora.snapshot(t(5, 0))).clone();
    assert_eq!(prod.windows[0].change_failure_ratio, Some(0.0));
    assert_eq!(prod.open_incidents, 2);
    assert_eq!(
        prod.windows[0].levels.change_failure_rate,
        Some(Level::Elite)
    );
}

#[test]
fn duplicates_count_once() {
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    let events = month();
    dora.apply(&events);
    dora.apply(&events[..5]);
    let snapshot = dora.snapshot(t(30, 0));
    assert_eq!(snapshot.duplicates, 5);
    assert_eq!(production(&snapshot).deployments_total["success"], 7);
}

#[test]
fn the_profile_changes_levels() {
    let mut dora = DoraProcessor::new(&DoraConfig {
        profile: ProfileName::Dora2021,
        ..config()
    });
    dora.apply(&month());
    let snapshot = dora.snapshot(t(30, 0));
    // 2021: lead time < 1 week is high, failure rate 16-30% is high; 37.5% is low.
    let month = &production(&snapshot).windows[1];
    assert_eq!(month.levels.lead_time, Some(Level::High));
    assert_eq!(month.levels.change_failure_rate, Some(Level::Low));
    // 2021 deployment frequency: high is weekly to monthly.
    assert_eq!(month.levels.deployment_frequency, Some(Level::High));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn order_and_duplicates_do_not_change_the_figures(
        order in Just(month()).prop_shuffle(),
        duplicated in proptest::collection::vec(0usize..29, 0..15),
        split in 1usize..29,
    ) {
        let mut expected = DoraProcessor::new(&config());
        expected.apply(&month());
        let mut shuffled = DoraProcessor::new(&config());
        let mut events = order.clone();
        events.extend(duplicated.iter().map(|&i| order[i].clone()));
        // In two batches, as a replay would deliver them.
        let (first, second) = events.split_at(split.min(events.len()));
        shuffled.apply(first);
        shuffled.apply(second);
        let (a, b) = (expected.snapshot(t(30, 0)), shuffled.snapshot(t(30, 0)));
        prop_assert_eq!(a.series, b.series);
        prop_assert_eq!(a.events_applied, b.events_applied);
    }
}

#[test]
fn incidents_are_derived_from_the_error_ratio() {
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    let s = 1_000_000_000;
    let health = |requests, errors| {
        vec![SeriesErrors {
            service: "checkout".into(),
            environment: "production".into(),
            requests,
            errors,
        }]
    };
    dora.apply(&[deploy("d1", T0 + 5 * s, "production", "a1", Success)]);
    // Too few requests to count, then 0.5%: nothing.
    assert!(dora.observe_errors(&health(50, 50), T0).is_empty());
    assert!(dora.observe_errors(&health(200, 1), T0).is_empty());
    // 2.5% > 1%: opens at 10 s.
    let opened = dora.observe_errors(&health(200, 5), T0 + 10 * s);
    assert_eq!(opened.len(), 1);
    assert_eq!(opened[0].event.time, T0 + 10 * s);
    assert!(dora.observe_errors(&health(300, 5), T0 + 20 * s).is_empty());
    // Below at 30 s, above again at 40 s, below for good from 50 s.
    assert!(dora.observe_errors(&health(600, 5), T0 + 30 * s).is_empty());
    assert!(dora.observe_errors(&health(400, 5), T0 + 40 * s).is_empty());
    assert!(
        dora.observe_errors(&health(1000, 5), T0 + 50 * s)
            .is_empty()
    );
    assert!(
        dora.observe_errors(&health(1000, 5), T0 + 350 * s - 1)
            .is_empty()
    );
    let resolved = dora.observe_errors(&health(1000, 5), T0 + 350 * s);
    assert_eq!(resolved.len(), 1);
    // Resolved as of when the ratio went back below: 40 s after it opened.
    assert_eq!(resolved[0].event.time, T0 + 50 * s);
    let snapshot = dora.snapshot(T0 + 400 * s);
    let prod = production(&snapshot);
    assert_eq!(prod.open_incidents, 0);
    assert_eq!(prod.windows[0].time_to_restore.mean, Some(40.0));
    // The derived incident came 5 s after d1: a failed change.
    assert_eq!(prod.windows[0].change_failure_ratio, Some(1.0));
}

#[test]
fn pruning_forgets_old_history_but_not_what_the_counters_counted() {
    let config = DoraConfig {
        retention: "31d".parse().unwrap(),
        ..config()
    };
    let mut dora = DoraProcessor::new(&config);
    let old = [
        deploy("old-d", t(-40, 0), "production", "a0", Success),
        opened("old-i-open", t(-40, 1), "old-i", None),
        resolved("old-i-resolved", t(-35, 0), "old-i"),
    ];
    dora.apply(&old);
    dora.apply(&month());
    let now = t(30, 0);
    let before = dora.snapshot(now);
    assert_eq!(production(&before).deployments_total["success"], 8);
    assert_eq!(production(&before).failed_changes_total, 4);

    // Cut-off: day -1. The old deployment and incident go; totals stay.
    assert_eq!(dora.prune(now), 1);
    let after = dora.snapshot(now);
    assert_eq!(after.series, before.series);
    // An event from before the cut-off is dropped, not counted again.
    dora.apply(&old[..1]);
    assert_eq!(dora.snapshot(now).series, before.series);
    assert_eq!(dora.snapshot(now).expired, 1);

    // A month later nearly everything is forgotten, the counters remain.
    let later = t(60, 0);
    let counted = dora.snapshot(later);
    assert!(dora.prune(later) > 0);
    let pruned = dora.snapshot(later);
    let (a, b) = (production(&counted), production(&pruned));
    assert_eq!(a.deployments_total, b.deployments_total);
    assert_eq!(a.failed_changes_total, b.failed_changes_total);
    assert_eq!(a.lead_times, b.lead_times);
    assert_eq!(a.incident_durations, b.incident_durations);
    assert_eq!(b.windows[1].deployments, 0);
    assert_eq!(dora.series_count(), 0);
}

#[test]
fn the_series_cap_refuses_new_series_only() {
    let mut dora = DoraProcessor::new(&DoraConfig {
        max_series: 1,
        ..DoraConfig::default()
    });
    let applied = dora.apply(&[
        deploy("d1", t(1, 0), "production", "a", Success),
        deploy("d2", t(2, 0), "staging", "a", Success),
        deploy("d3", t(3, 0), "production", "b", Success),
    ]);
    assert_eq!(applied.refused, 1);
    assert!(applied.reason.unwrap().contains("max_series = 1"));
    let snapshot = dora.snapshot(t(4, 0));
    assert_eq!(snapshot.series.len(), 1);
    assert_eq!(production(&snapshot).deployments_total["success"], 2);
    // Refused, not seen: once there is room it can still come.
    assert_eq!(snapshot.events_applied, 2);
}

#[test]
fn the_earliest_open_event_says_what_an_incident_affects() {
    let other = event(
        "i-open-2",
        t(2, 5),
        DeliveryKind::IncidentOpened {
            incident: "i".into(),
            service: "cart".into(),
            environment: "production".into(),
            artifact: None,
            details: Default::default(),
        },
    );
    let first = opened("i-open-1", t(2, 1), "i", None);
    let mut a = DoraProcessor::new(&DoraConfig::default());
    a.apply(&[first.clone(), other.clone()]);
    let mut b = DoraProcessor::new(&DoraConfig::default());
    b.apply(&[other, first]);
    assert_eq!(a.snapshot(t(3, 0)).series, b.snapshot(t(3, 0)).series);
    assert_eq!(production(&a.snapshot(t(3, 0))).open_incidents, 1);
}

/// A deployment of `service` to production with its change started `lead` earlier.
fn deploy_of(
    id: &str,
    service: &str,
    time: Nanos,
    lead: Nanos,
    outcome: DeploymentOutcome,
) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::Deployment(Deployment {
            rework: false,
            team: None,
            service: service.into(),
            environment: "production".into(),
            artifact: Some(format!("{id}-artifact")),
            outcome,
            changes: vec![LinkedChange {
                id: format!("{id}-change"),
                time: Some(time - lead),
            }],
            ..Default::default()
        }),
    )
}

#[test]
fn production_figures_pool_every_production_series_and_carry_the_previous_window() {
    use DeploymentOutcome::{Failure, Success};
    let config = DoraConfig {
        windows: vec!["7d".parse().unwrap()],
        ..DoraConfig::default()
    };
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&[
        // This week: checkout leads of 1, 2, 3 h; payments 10 h and a failure.
        deploy_of("c1", "checkout", t(10, 0), HOUR, Success),
        deploy_of("c2", "checkout", t(11, 0), 2 * HOUR, Success),
        deploy_of("c3", "checkout", t(12, 0), 3 * HOUR, Success),
        deploy_of("p1", "payments", t(12, 6), 10 * HOUR, Success),
        deploy_of("p2", "payments", t(12, 8), 5 * HOUR, Failure),
        // The week before: one checkout deployment, lead 4 h.
        deploy_of("c0", "checkout", t(4, 0), 4 * HOUR, Success),
        // Staging does not count for production.
        event(
            "s1",
            t(12, 0),
            DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: "checkout".into(),
                environment: "staging".into(),
                artifact: None,
                outcome: Success,
                changes: Vec::new(),
                ..Default::default()
            }),
        ),
    ]);
    let now = t(13, 0);
    let plain = dora.snapshot(now);
    assert_eq!(plain.production.len(), 1);
    assert!(plain.production[0].previous.is_none());
    let snapshot = dora.snapshot_with_trend(now);
    let week = &snapshot.production[0];
    assert_eq!(week.deployments, 4);
    assert_eq!(week.failed_deployments, 1);
    assert_eq!(week.deployment_frequency_per_day, 4.0 / 7.0);
    // Pooled lead times 1, 2, 3, 10 h: nearest-rank p50 is 2 h, p95 10 h.
    assert_eq!(week.lead_time.count, 4);
    assert_eq!(week.lead_time.p50, Some(2.0 * 3_600.0));
    assert_eq!(week.lead_time.p95, Some(10.0 * 3_600.0));
    assert_eq!(week.change_failure_ratio, Some(1.0 / 5.0));
    let before = week.previous.as_deref().expect("the week before");
    assert_eq!(before.deployments, 1);
    assert_eq!(before.lead_time.p50, Some(4.0 * 3_600.0));
    assert!(before.previous.is_none());
    // Per series: the failure is payments' latest failed change.
    let payments = snapshot
        .series
        .iter()
        .find(|s| s.service == "payments")
        .unwrap();
    assert_eq!(
        payments.recent_failed_changes,
        vec![FailedChange {
            at: t(12, 8),
            outcome: "failure",
            cause: "deployment failed",
            reason: FailureReason::DeploymentFailed,
            sources: vec!["cdevents"],
            evidence: Evidence::default(),
        }]
    );
    assert_eq!(
        payments.windows[0].previous.as_ref().unwrap().deployments,
        0
    );
    // The plain snapshot's figures are the same, without the trend.
    let mut without = snapshot.production[0].clone();
    without.previous = None;
    assert_eq!(plain.production[0], without);
}

#[test]
fn the_daily_trend_buckets_production_by_calendar_day() {
    use DeploymentOutcome::{Failure, Success};
    let config = DoraConfig {
        windows: vec!["7d".parse().unwrap()],
        ..DoraConfig::default()
    };
    let mut dora = DoraProcessor::new(&config);
    // Noon UTC on day 10: today is [t(10, 0), now].
    let now = t(10, 12);
    dora.apply(&[
        // Today: two, leads 1 h and 3 h, and a failure.
        deploy_of("a", "checkout", now - HOUR, HOUR, Success),
        deploy_of("b", "payments", now - 2 * HOUR, 3 * HOUR, Success),
        deploy_of("c", "checkout", now - 3 * HOUR, HOUR, Failure),
        // Exactly one day back: yesterday.
        deploy_of("d", "checkout", now - DAY, 5 * HOUR, Success),
        // The last instant of day 8 is day 8's, not day 9's.
        deploy_of("g", "payments", t(9, 0) - 1, HOUR, Success),
        // Day 7; and 40 days back, outside.
        deploy_of("e", "checkout", now - 3 * DAY + HOUR, 2 * HOUR, Success),
        deploy_of("f", "checkout", now - 40 * DAY, HOUR, Success),
    ]);
    let trend = dora.daily_trend(now, 5);
    assert_eq!(trend.len(), 5);
    assert_eq!((trend[4].start, trend[4].end), (t(10, 0), now));
    assert_eq!((trend[0].start, trend[0].end), (t(6, 0), t(7, 0)));
    let deployments: Vec<u64> = trend.iter().map(|d| d.deployments).collect();
    assert_eq!(deployments, [0, 1, 1, 1, 2]);
    assert_eq!(trend[4].failed_changes, 1);
    assert_eq!(trend[4].change_failure_ratio, Some(1.0 / 3.0));
    // Leads 1 h and 3 h: nearest-rank median 1 h.
    assert_eq!(trend[4].lead_time_p50, Some(3_600.0));
    assert_eq!(trend[3].lead_time_p50, Some(5.0 * 3_600.0));
    assert_eq!(trend[0].lead_time_p50, None);
    assert_eq!(trend[0].change_failure_ratio, None);
}

/// Checkpoints `dora` through the wire format into a fresh processor.
pub(super) fn through_checkpoint(dora: &DoraProcessor, config: &DoraConfig) -> DoraProcessor {
    use prost::Message;
    let bytes = dora.to_state().encode_to_vec();
    let state = crate::proto::DoraState::decode(bytes.as_slice()).unwrap();
    let mut restored = DoraProcessor::new(config);
    restored.restore(&state).unwrap();
    restored
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// Stopping anywhere, checkpointing, restoring and going on (with the
    /// events around the stop delivered again) gives the figures of an
    /// uninterrupted run: nothing lost, nothing counted twice.
    #[test]
    fn a_checkpoint_restores_exactly_wherever_it_is_taken(
        order in Just(month()).prop_shuffle(),
        split in 0usize..29,
        redelivered in 0usize..5,
    ) {
        let mut expected = DoraProcessor::new(&config());
        expected.apply(&order);
        let mut before = DoraProcessor::new(&config());
        before.apply(&order[..split]);
        let mut after = through_checkpoint(&before, &config());
        after.apply(&order[split.saturating_sub(redelivered)..]);
        let (a, b) = (expected.snapshot(t(30, 0)), after.snapshot(t(30, 0)));
        prop_assert_eq!(a.series, b.series);
        prop_assert_eq!(a.events_applied, b.events_applied);
        prop_assert_eq!(b.duplicates, redelivered.min(split) as u64);
    }
}

#[test]
fn a_checkpoint_keeps_pruned_baselines_derived_state_and_the_horizon() {
    let config = DoraConfig {
        retention: "31d".parse().unwrap(),
        ..config()
    };
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&[deploy("old-d", t(-40, 0), "production", "a0", Success)]);
    dora.apply(&month());
    dora.prune(t(30, 0));
    let health = vec![SeriesErrors {
        service: "checkout".into(),
        environment: "production".into(),
        requests: 1000,
        errors: 100,
    }];
    assert_eq!(dora.observe_errors(&health, t(30, 0)).len(), 1);
    let mut restored = through_checkpoint(&dora, &config);
    assert_eq!(restored.snapshot(t(30, 1)), dora.snapshot(t(30, 1)));
    // The horizon holds: an expired event stays expired.
    restored.apply(&[deploy("older", t(-39, 0), "production", "a0", Success)]);
    assert_eq!(restored.snapshot(t(30, 1)).expired, 1);
    // The derived incident is still open: no second one opens.
    assert!(restored.observe_errors(&health, t(30, 2)).is_empty());
}

#[test]
fn log_records_give_back_the_events() {
    use prost::Message;
    let mut events = month();
    events.push(event(
        "pf",
        t(3, 0),
        DeliveryKind::PipelineFailed {
            pipeline: "p".into(),
            service: Some("s".into()),
            environment: None,
        },
    ));
    for e in events {
        let bytes = state::event_record(&e).encode_to_vec();
        let record = crate::proto::EventRecord::decode(bytes.as_slice()).unwrap();
        assert_eq!(state::from_event_record(record).unwrap(), e);
    }
}

#[test]
fn a_bad_state_is_refused_and_changes_nothing() {
    let mut dora = DoraProcessor::new(&config());
    dora.apply(&month());
    let mut state = dora.to_state();
    state.series[0].deployments.reverse();
    let mut target = DoraProcessor::new(&config());
    target.apply(&month()[..3]);
    let before = target.snapshot(t(30, 0));
    let err = target.restore(&state).unwrap_err();
    assert!(err.contains("out of order"), "{err}");
    assert_eq!(target.snapshot(t(30, 0)), before);
    let mut state = dora.to_state();
    state.series[0].deployments[0].outcome = 9;
    assert!(target.restore(&state).unwrap_err().contains("outcome 9"));
}

#[test]
fn history_is_pruned_every_sixtieth_of_the_retention_between_10_s_and_an_hour() {
    use crate::settings::ConfigDuration;
    use std::time::Duration;
    let every = |retention: u64| {
        DoraProcessor::new(&DoraConfig {
            retention: ConfigDuration::from_secs(retention),
            ..DoraConfig::default()
        })
        .prune_interval()
    };
    // The default 90 days: hourly.
    assert_eq!(
        DoraProcessor::new(&DoraConfig::default()).prune_interval(),
        Duration::from_secs(3_600)
    );
    assert_eq!(every(61 * 60), Duration::from_secs(61));
    assert_eq!(every(300), Duration::from_secs(10));
}

/// The borrowed look-up of a series finds what the owned key holds, in the
/// tuple's order and by its hash.
#[test]
fn series_found_by_borrowed_names() {
    let names = [("a", "z"), ("ab", "a"), ("a", "b"), ("", "x"), ("b", "")];
    let mut ordered = BTreeMap::new();
    let mut hashed = HashMap::new();
    for (n, (service, environment)) in names.iter().enumerate() {
        ordered.insert((service.to_string(), environment.to_string()), n);
        hashed.insert((service.to_string(), environment.to_string()), n);
    }
    for (n, name) in names.iter().enumerate() {
        assert_eq!(ordered.get(series_name(name)), Some(&n), "{name:?}");
        assert_eq!(hashed.get(series_name(name)), Some(&n), "{name:?}");
    }
    assert_eq!(ordered.get(series_name(&("a", "x"))), None);
    assert_eq!(hashed.get(series_name(&("ab", ""))), None);
    let order: Vec<usize> = ordered.values().copied().collect();
    assert_eq!(order, vec![3, 2, 0, 1, 4]);
}

fn revision(
    id: &str,
    time: Nanos,
    rev: &str,
    parent: Option<&str>,
    commits: &[(&str, Nanos)],
) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::Revision {
            revision: rev.into(),
            parent: parent.map(Into::into),
            changes: commits
                .iter()
                .map(|(c, at)| LinkedChange {
                    id: (*c).into(),
                    time: Some(*at),
                })
                .collect(),
        },
    )
}

fn reopened(id: &str, time: Nanos, incident: &str) -> DeliveryEvent {
    event(
        id,
        time,
        DeliveryKind::IncidentReopened {
            incident: incident.into(),
        },
    )
}

/// Pushes r1 (c1 @d1 0h, c2 @d1 2h), r2 after r1 (c3 @d2 0h), r3 after r2
/// (c4 @d3 0h). Production deploys r2 @d2 6h (takes c3 and, through r1,
/// c1 and c2: lead 6h, 28h, 30h), fails r3 @d3 1h, deploys r3 @d3 4h (c4:
/// 4h; the walk stops at r2). Staging deploys r3 @d3 2h: c1..c4, first time.
/// Incident i1 opens @d4 0h, resolves @d4 1h, is reopened @d4 2h and
/// resolves again @d4 5h: restored after 5h, not 1h.
fn pushed_and_reopened() -> Vec<DeliveryEvent> {
    vec![
        revision(
            "p1",
            t(1, 2),
            "r1",
            None,
            &[("c1", t(1, 0)), ("c2", t(1, 2))],
        ),
        revision("p2", t(2, 0), "r2", Some("r1"), &[("c3", t(2, 0))]),
        revision("p3", t(3, 0), "r3", Some("r2"), &[("c4", t(3, 0))]),
        deploy("d1", t(2, 6), "production", "r2", Success),
        deploy(
            "d2",
            t(3, 1),
            "production",
            "r3",
            DeploymentOutcome::Failure,
        ),
        deploy("d3", t(3, 4), "production", "r3", Success),
        deploy("s1", t(3, 2), "staging", "r3", Success),
        opened("i1-open", t(4, 0), "i1", None),
        resolved("i1-res", t(4, 1), "i1"),
        reopened("i1-reopen", t(4, 2), "i1"),
        resolved("i1-res2", t(4, 5), "i1"),
    ]
}

#[test]
fn a_deployed_revision_takes_the_commits_of_the_revisions_before_it() {
    let mut dora = DoraProcessor::new(&config());
    dora.apply(&pushed_and_reopened());
    let snapshot = dora.snapshot(t(6, 0));
    let week = &production(&snapshot).windows[0];
    // Lead times 4h, 6h, 28h, 30h: mean 17h, p50 6h, p95 30h.
    assert_eq!(week.lead_time.mean, Some(17.0 * 3_600.0));
    assert_eq!(week.lead_time.p50, Some(6.0 * 3_600.0));
    assert_eq!(week.lead_time.p95, Some(30.0 * 3_600.0));
    let staging = snapshot
        .series
        .iter()
        .find(|s| s.environment == "staging")
        .unwrap();
    // c4 2h, c3 26h, c2 48h, c1 50h: mean 31.5h.
    assert_eq!(staging.windows[0].lead_time.mean, Some(31.5 * 3_600.0));
    // The reopened incident: restored at the resolution after the reopening.
    assert_eq!(week.time_to_restore.mean, Some(5.0 * 3_600.0));
    assert_eq!(production(&snapshot).open_incidents, 0);
    // Between the reopening and the second resolution it is open.
    let during = dora.snapshot(t(4, 3));
    assert_eq!(production(&during).open_incidents, 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn revisions_and_reopenings_in_any_order_and_through_a_checkpoint(
        order in Just(pushed_and_reopened()).prop_shuffle(),
        split in 0usize..11,
    ) {
        let mut expected = DoraProcessor::new(&config());
        expected.apply(&pushed_and_reopened());
        let mut before = DoraProcessor::new(&config());
        before.apply(&order[..split]);
        let mut after = through_checkpoint(&before, &config());
        after.apply(&order[split..]);
        let (a, b) = (expected.snapshot(t(6, 0)), after.snapshot(t(6, 0)));
        prop_assert_eq!(a.series, b.series);
    }
}

#[test]
fn revision_and_reopen_records_give_back_the_events() {
    for e in pushed_and_reopened() {
        let back = super::state::from_event_record(super::state::event_record(&e)).unwrap();
        assert_eq!(back, e);
    }
}

#[test]
fn a_pull_request_dated_from_its_first_commit_walks_its_branch() {
    let pull_request = |commits: u32| {
        event(
            "pr",
            t(2, 0),
            DeliveryKind::ChangeFromCommits {
                change: "m".into(),
                head: "f2".into(),
                commits,
            },
        )
    };
    let history = |commits: u32| {
        vec![
            // The branch: f1 (x1 @d1 0h, x2 @d1 3h), then f2 (x3 @d1 6h).
            revision(
                "pf1",
                t(1, 3),
                "f1",
                None,
                &[("x1", t(1, 0)), ("x2", t(1, 3))],
            ),
            revision("pf2", t(1, 6), "f2", Some("f1"), &[("x3", t(1, 6))]),
            pull_request(commits),
            // Squashed onto main as m, deployed @d2 4h.
            revision("pm", t(2, 0), "r1", None, &[("m", t(2, 0))]),
            deploy("d1", t(2, 4), "production", "r1", Success),
        ]
    };
    let lead = |events: &[DeliveryEvent]| {
        let mut dora = DoraProcessor::new(&config());
        dora.apply(events);
        production(&dora.snapshot(t(6, 0))).windows[0]
            .lead_time
            .mean
    };
    // Three commits: x1 is the first, 28h before the deployment.
    assert_eq!(lead(&history(3)), Some(28.0 * 3_600.0));
    // Two: the newest two are x3 and x2; x2 @d1 3h is the first: 25h.
    assert_eq!(lead(&history(2)), Some(25.0 * 3_600.0));
    // The branch never pushed: the merge commit's own time, 4h.
    let unseen: Vec<_> = history(3).into_iter().skip(2).collect();
    assert_eq!(lead(&unseen), Some(4.0 * 3_600.0));
    // Any order, and through a checkpoint.
    let mut reversed = history(3);
    reversed.reverse();
    let mut dora = DoraProcessor::new(&config());
    dora.apply(&reversed[..2]);
    let mut after = through_checkpoint(&dora, &config());
    after.apply(&reversed[2..]);
    assert_eq!(
        production(&after.snapshot(t(6, 0))).windows[0]
            .lead_time
            .mean,
        Some(28.0 * 3_600.0)
    );
    let record = super::state::event_record(&pull_request(3));
    assert_eq!(
        super::state::from_event_record(record).unwrap(),
        pull_request(3)
    );
}

/// d1 @d1 0h; incident i1 opens @d1 2h, resolved @d1 6h; d2 @d1 4h is the
/// next deployment while it is open: rework; d3 @d1 5h is not (only the
/// next one); d4 @d2 0h is marked rework by its producer; i2 opens @d3 0h,
/// resolved @d3 1h, and d5 @d3 2h comes after it: not rework; a rollback
/// @d3 3h is not a change. 2 of 5 deployments: 0.4; without the incident
/// rule only d4: 0.2.
#[test]
fn rework_is_marked_or_the_next_deployment_while_an_incident_is_open() {
    let marked = {
        let mut d = deploy("d4", t(2, 0), "production", "a4", Success);
        if let DeliveryKind::Deployment(dep) = &mut d.kind {
            dep.rework = true;
        }
        d
    };
    let events = vec![
        deploy("d1", t(1, 0), "production", "a1", Success),
        opened("i1-open", t(1, 2), "i1", None),
        deploy("d2", t(1, 4), "production", "a2", Success),
        deploy("d3", t(1, 5), "production", "a3", Success),
        resolved("i1-res", t(1, 6), "i1"),
        marked,
        opened("i2-open", t(3, 0), "i2", None),
        resolved("i2-res", t(3, 1), "i2"),
        deploy("d5", t(3, 2), "production", "a5", Success),
        deploy("r1", t(3, 3), "production", "a4", Rollback),
    ];
    let rework = |config: &DoraConfig| {
        let mut dora = DoraProcessor::new(config);
        dora.apply(&events);
        let snapshot = dora.snapshot(t(6, 0));
        let week = production(&snapshot).windows[0].clone();
        (week.rework_deployments, week.rework_ratio)
    };
    assert_eq!(rework(&config()), (2, Some(0.4)));
    let without = DoraConfig {
        rework_after_incident: false,
        ..config()
    };
    assert_eq!(rework(&without), (1, Some(0.2)));
    // Through a checkpoint, the mark is kept.
    let mut dora = DoraProcessor::new(&without);
    dora.apply(&events);
    let restored = through_checkpoint(&dora, &without);
    assert_eq!(
        production(&restored.snapshot(t(6, 0))).windows[0].rework_deployments,
        1
    );
}

/// Team `payments` owns checkout and cart; search has no team. In the
/// week before d6: checkout deploys c1..c3 (lead 1h, 2h, 3h) and fails c4;
/// cart deploys k1 (lead 10h), made a failed change by an incident 1h
/// later, resolved 2h after that; search deploys s1 (lead 20h).
///
/// Team, pooled: 4 successful deployments (4/7 a day), lead times 1, 2, 3,
/// 10 h (mean 4h, where the mean of the services' means is 6h), 2 failed
/// changes of 5 (0.4, where the mean of the services' rates is 0.625),
/// restore 2h. The organisation adds search: lead mean 7.2h, 2 of 6.
#[test]
fn teams_and_the_organisation_pool_their_series_not_average_them() {
    let mut config = config();
    config.teams.insert("checkout".into(), "payments".into());
    config.teams.insert("cart".into(), "payments".into());
    let events = vec![
        deploy_of("c1", "checkout", t(1, 0), HOUR, Success),
        deploy_of("c2", "checkout", t(2, 0), 2 * HOUR, Success),
        deploy_of("c3", "checkout", t(3, 0), 3 * HOUR, Success),
        deploy_of("c4", "checkout", t(4, 0), HOUR, DeploymentOutcome::Failure),
        deploy_of("k1", "cart", t(2, 0), 10 * HOUR, Success),
        event(
            "k-open",
            t(2, 1),
            DeliveryKind::IncidentOpened {
                incident: "k-inc".into(),
                service: "cart".into(),
                environment: "production".into(),
                artifact: None,
                details: Default::default(),
            },
        ),
        resolved("k-res", t(2, 3), "k-inc"),
        deploy_of("s1", "search", t(3, 0), 20 * HOUR, Success),
    ];
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&events);
    let snapshot = dora.snapshot(t(6, 0));
    assert_eq!(snapshot.teams.len(), 1);
    let team = &snapshot.teams[0];
    assert_eq!(team.team.as_deref(), Some("payments"));
    assert_eq!(team.environment, "production");
    assert_eq!(team.services, ["cart", "checkout"]);
    let week = &team.windows[0];
    assert_eq!(week.deployments, 4);
    assert_eq!(week.deployment_frequency_per_day, 4.0 / 7.0);
    assert_eq!(week.lead_time.mean, Some(4.0 * 3_600.0));
    assert_eq!(week.lead_time.p50, Some(2.0 * 3_600.0));
    assert_eq!(week.change_failure_ratio, Some(0.4));
    assert_eq!(week.time_to_restore.mean, Some(2.0 * 3_600.0));
    // Averaging the services would have said otherwise.
    let service = |name: &str| {
        snapshot
            .series
            .iter()
            .find(|s| s.service == name)
            .unwrap()
            .windows[0]
            .clone()
    };
    let (checkout, cart) = (service("checkout"), service("cart"));
    let mean_of_means = (checkout.lead_time.mean.unwrap() + cart.lead_time.mean.unwrap()) / 2.0;
    assert_eq!(mean_of_means, 6.0 * 3_600.0);
    let mean_of_rates =
        (checkout.change_failure_ratio.unwrap() + cart.change_failure_ratio.unwrap()) / 2.0;
    assert_eq!(mean_of_rates, 0.625);
    // The organisation: every series of the environment.
    assert_eq!(snapshot.organisation.len(), 1);
    let org = &snapshot.organisation[0];
    assert_eq!(org.team, None);
    assert_eq!(org.services, ["cart", "checkout", "search"]);
    assert_eq!(org.windows[0].lead_time.mean, Some(25_920.0));
    assert_eq!(org.windows[0].change_failure_ratio, Some(2.0 / 6.0));
    assert_eq!(org.windows[0], snapshot.production[0]);
}

/// A hotfix-labelled change m (in revision r2, after r1) makes the first
/// deployment that carries it rework: d2 of r2; d1 of r1 is not, nor is
/// d3 redeploying r2. 1 of 3.
#[test]
fn a_change_labelled_rework_makes_its_first_deployment_rework() {
    let events = vec![
        revision("p1", t(1, 0), "r1", None, &[("a", t(1, 0))]),
        revision("p2", t(2, 0), "r2", Some("r1"), &[("m", t(2, 0))]),
        event(
            "m-rework",
            t(2, 0),
            DeliveryKind::ChangeRework { change: "m".into() },
        ),
        deploy("d1", t(1, 2), "production", "r1", Success),
        deploy("d2", t(2, 2), "production", "r2", Success),
        deploy("d3", t(3, 0), "production", "r2", Success),
    ];
    let mut dora = DoraProcessor::new(&config());
    dora.apply(&events);
    let week = production(&dora.snapshot(t(6, 0))).windows[0].clone();
    assert_eq!(week.rework_deployments, 1);
    assert_eq!(week.rework_ratio, Some(1.0 / 3.0));
    let restored = through_checkpoint(&dora, &config());
    assert_eq!(
        production(&restored.snapshot(t(6, 0))).windows[0].rework_deployments,
        1
    );
    let record = super::state::event_record(&events[2]);
    assert_eq!(super::state::from_event_record(record).unwrap(), events[2]);
}

/// Teams named by deployments (`customData.team`): the latest deployment's
/// wins whatever the arrival order, the configured table wins over them,
/// they survive a checkpoint, and at most `MAX_LEARNED_TEAMS` are learned.
#[test]
fn deployments_name_their_team_and_the_table_overrides_them() {
    let named = |id: &str, service: &str, at: Nanos, team: &str| {
        let mut d = deploy_of(id, service, at, HOUR, Success);
        if let DeliveryKind::Deployment(dep) = &mut d.kind {
            dep.team = Some(team.into());
        }
        d
    };
    let mut config = config();
    config.teams.insert("search".into(), "discovery".into());
    let events = vec![
        named("c2", "checkout", t(2, 0), "checkout-team"),
        named("c1", "checkout", t(1, 0), "payments"),
        named("k1", "cart", t(1, 0), "payments"),
        named("s1", "search", t(1, 0), "payments"),
    ];
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&events);
    let teams = |snapshot: &DoraSnapshot| -> Vec<(String, Vec<String>)> {
        snapshot
            .teams
            .iter()
            .map(|t| (t.team.clone().unwrap(), t.services.clone()))
            .collect()
    };
    let want = vec![
        ("checkout-team".to_string(), vec!["checkout".to_string()]),
        ("discovery".to_string(), vec!["search".to_string()]),
        ("payments".to_string(), vec!["cart".to_string()]),
    ];
    assert_eq!(teams(&dora.snapshot(t(6, 0))), want);
    let restored = through_checkpoint(&dora, &config);
    assert_eq!(teams(&restored.snapshot(t(6, 0))), want);
    // 120 services each naming its own team: 100 teams learned.
    let many: Vec<_> = (0..120)
        .map(|i| {
            named(
                &format!("m{i}"),
                &format!("svc{i}"),
                t(1, 0),
                &format!("team{i}"),
            )
        })
        .collect();
    let mut dora = DoraProcessor::new(&DoraConfig {
        max_series: 1_000,
        ..DoraConfig::default()
    });
    dora.apply(&many);
    assert_eq!(dora.snapshot(t(6, 0)).teams.len(), MAX_LEARNED_TEAMS);
}

#[test]
fn a_dst_crossing_week_in_berlin_is_bucketed_by_local_days() {
    use DeploymentOutcome::Success;
    let config = DoraConfig {
        windows: vec!["7d".parse().unwrap()],
        timezone: Some("Europe/Berlin".into()),
        ..DoraConfig::default()
    };
    let mut errors = Vec::new();
    config.validate("processors.dora", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let at = |s: &str| crate::cdevents::parse_timestamp("t", s).unwrap();
    let events = [
        // 00:30 on the 27th in Berlin (+01:00), still the 26th in UTC.
        deploy_of(
            "a",
            "checkout",
            at("2024-03-27T00:30:00+01:00"),
            HOUR,
            Success,
        ),
        deploy_of(
            "b",
            "checkout",
            at("2024-03-30T23:30:00+01:00"),
            HOUR,
            Success,
        ),
        // The 31st: from 00:30 (+01:00, the 30th in UTC) to 23:30 (+02:00).
        deploy_of(
            "c",
            "checkout",
            at("2024-03-31T00:30:00+01:00"),
            HOUR,
            Success,
        ),
        deploy_of(
            "d",
            "payments",
            at("2024-03-31T23:30:00+02:00"),
            HOUR,
            Success,
        ),
        // 00:30 on 1 April (+02:00): the 31st in UTC.
        deploy_of(
            "e",
            "checkout",
            at("2024-04-01T00:30:00+02:00"),
            HOUR,
            Success,
        ),
        deploy_of(
            "f",
            "payments",
            at("2024-04-02T09:00:00+02:00"),
            HOUR,
            Success,
        ),
    ];
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&events);
    let now = at("2024-04-02T12:00:00+02:00");
    let trend = dora.daily_trend(now, 7);
    let dates: Vec<&str> = trend.iter().map(|d| d.date.as_str()).collect();
    assert_eq!(
        dates,
        [
            "2024-03-27",
            "2024-03-28",
            "2024-03-29",
            "2024-03-30",
            "2024-03-31",
            "2024-04-01",
            "2024-04-02"
        ]
    );
    let deployments: Vec<u64> = trend.iter().map(|d| d.deployments).collect();
    assert_eq!(deployments, [1, 0, 0, 1, 2, 1, 1]);
    // The day of the change is 23 hours long: local midnight to local midnight.
    assert_eq!(trend[4].start, at("2024-03-31T00:00:00+01:00"));
    assert_eq!(trend[4].end, at("2024-04-01T00:00:00+02:00"));
    assert_eq!(trend[4].end - trend[4].start, 23 * HOUR);
    assert_eq!(trend[6].end, now);
    // The same deployments in UTC days: the 26th to the 1st differ.
    let mut utc = DoraProcessor::new(&DoraConfig {
        timezone: None,
        ..config.clone()
    });
    utc.apply(&events);
    let utc_days: Vec<u64> = utc
        .daily_trend(now, 7)
        .iter()
        .map(|d| d.deployments)
        .collect();
    // 27th..2nd in UTC: a fell on the 26th, b and c on the 30th, d and e on the 31st.
    assert_eq!(utc_days, [0, 0, 0, 2, 2, 0, 1]);
    // A name the database does not know is refused.
    let bad = DoraConfig {
        timezone: Some("Mars/Olympus_Mons".into()),
        ..DoraConfig::default()
    };
    let mut errors = Vec::new();
    bad.validate("processors.dora", &mut errors);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]
            .starts_with("processors.dora.timezone: `Mars/Olympus_Mons` is not an IANA time zone"),
        "{errors:?}"
    );
}
