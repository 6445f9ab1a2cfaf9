//! Attribution: why each failed change counts (reason, sources, evidence),
//! and one deployment reported by several tools counted once. Figures
//! worked out by hand.

use proptest::prelude::*;

use super::tests::through_checkpoint;
use super::*;
use crate::model::delivery::{
    DeliveryKind, Deployment, DeploymentOutcome, IncidentDetails, Source,
};

/// 2024-05-01T00:00:00Z.
const T0: Nanos = 1_714_521_600_000_000_000;
const MINUTE: Nanos = 60_000_000_000;
const HOUR: Nanos = 60 * MINUTE;

const SHA_A: &str = "9f8e7d6c5b4a39281706f5e4d3c2b1a098765432";
const SHA_B: &str = "0123456789abcdef0123456789abcdef01234567";

fn deployment(
    id: &str,
    time: Nanos,
    source: Source,
    artifact: Option<&str>,
    revision: Option<&str>,
    outcome: DeploymentOutcome,
) -> DeliveryEvent {
    DeliveryEvent {
        id: id.into(),
        time,
        kind: DeliveryKind::Deployment(Deployment {
            service: "shop".into(),
            environment: "production".into(),
            artifact: artifact.map(Into::into),
            revision: revision.map(Into::into),
            outcome,
            source,
            ..Default::default()
        }),
    }
}

fn incident(id: &str, time: Nanos, artifact: Option<&str>, source: Source) -> DeliveryEvent {
    DeliveryEvent {
        id: format!("{id}:opened"),
        time,
        kind: DeliveryKind::IncidentOpened {
            incident: id.into(),
            service: "shop".into(),
            environment: "production".into(),
            artifact: artifact.map(Into::into),
            details: IncidentDetails {
                source,
                urgency: Some("high".into()),
                ..Default::default()
            },
        },
    }
}

fn shop(snapshot: &DoraSnapshot) -> &SeriesFigures {
    snapshot
        .series
        .iter()
        .find(|s| s.service == "shop")
        .expect("the shop series")
}

/// Five deployments an hour apart, each failed for another reason (one
/// for two: the stronger counts), and one that did not fail.
fn five_reasons() -> Vec<DeliveryEvent> {
    use DeploymentOutcome::{Failure, Rollback, Success};
    let art = |n: u32| format!("pkg:oci/shop@v{n}");
    vec![
        // 1: failed outright; an incident in its window too (weaker).
        deployment("d1", T0, Source::Github, Some(&art(1)), None, Failure),
        incident("inc-1", T0 + 10 * MINUTE, None, Source::Pagerduty),
        // 2: rolled back by 3.
        deployment(
            "d2",
            T0 + HOUR,
            Source::Argocd,
            Some(&art(2)),
            None,
            Success,
        ),
        deployment(
            "d3",
            T0 + 2 * HOUR,
            Source::Argocd,
            Some(&art(1)),
            None,
            Rollback,
        ),
        // 4: an incident naming its artifact, opened after 5 deployed.
        deployment(
            "d4",
            T0 + 3 * HOUR,
            Source::Cdevents,
            Some(&art(4)),
            None,
            Success,
        ),
        deployment(
            "d5",
            T0 + 4 * HOUR,
            Source::Cdevents,
            Some(&art(5)),
            None,
            Success,
        ),
        incident(
            "inc-4",
            T0 + 4 * HOUR + 5 * MINUTE,
            Some(&art(4)),
            Source::Alertmanager,
        ),
        // 6: an incident in its window, naming nothing.
        deployment(
            "d6",
            T0 + 5 * HOUR,
            Source::Gitlab,
            Some(&art(6)),
            None,
            Success,
        ),
        incident(
            "inc-6",
            T0 + 5 * HOUR + 30 * MINUTE,
            None,
            Source::Pagerduty,
        ),
    ]
}

#[test]
fn every_failed_change_says_why_from_which_source_and_on_what() {
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&five_reasons());
    let snapshot = dora.snapshot(T0 + 6 * HOUR);
    let s = shop(&snapshot);
    // d1, d2, d4 and d6 failed; d5 did not (the incident named d4's
    // artifact), d3 is a rollback (never a failed change).
    assert_eq!(s.failed_changes_total, 4);
    assert_eq!(
        s.failed_changes_by_reason,
        BTreeMap::from([
            ("deployment_failed", 1),
            ("incident_artifact", 1),
            ("incident_window", 1),
            ("rolled_back", 1),
        ])
    );
    let week = &s.windows[0];
    assert_eq!(
        week.failed_by_cause,
        FailureCauses {
            incident: 2,
            rolled_back: 1,
            deployment_failed: 1,
            regression: 0,
        }
    );
    let recent = &s.recent_failed_changes;
    let reasons: Vec<_> = recent.iter().map(|c| (c.at, c.reason, c.cause)).collect();
    assert_eq!(
        reasons,
        vec![
            (T0 + 5 * HOUR, FailureReason::IncidentWindow, "incident"),
            (T0 + 3 * HOUR, FailureReason::IncidentArtifact, "incident"),
            (T0 + HOUR, FailureReason::RolledBack, "rolled back"),
            (T0, FailureReason::DeploymentFailed, "deployment failed"),
        ]
    );
    assert_eq!(recent[0].sources, vec!["gitlab"]);
    assert_eq!(
        recent[0].evidence.incidents,
        vec![IncidentEvidence {
            id: "inc-6".into(),
            source: "pagerduty",
            opened: T0 + 5 * HOUR + 30 * MINUTE,
            named_the_artifact: false,
        }]
    );
    assert_eq!(
        recent[1].evidence.incidents,
        vec![IncidentEvidence {
            id: "inc-4".into(),
            source: "alertmanager",
            opened: T0 + 4 * HOUR + 5 * MINUTE,
            named_the_artifact: true,
        }]
    );
    assert_eq!(
        recent[2].evidence.rollback,
        Some(RollbackEvidence {
            at: T0 + 2 * HOUR,
            sources: vec!["argocd"],
        })
    );
    // The failed deployment keeps the incident as evidence as well, under
    // the stronger reason.
    assert_eq!(recent[3].sources, vec!["github"]);
    assert_eq!(recent[3].evidence.incidents[0].id, "inc-1");
    assert!(recent[3].evidence.rollback.is_none());
    // Through a checkpoint, the same.
    let restored = through_checkpoint(&dora, &DoraConfig::default());
    assert_eq!(restored.snapshot(T0 + 6 * HOUR).series, snapshot.series);
}

#[test]
fn reasons_pruned_stay_in_the_counter_by_reason() {
    let config = DoraConfig {
        windows: vec![crate::settings::ConfigDuration::from_secs(86_400)],
        retention: crate::settings::ConfigDuration::from_secs(2 * 86_400),
        ..DoraConfig::default()
    };
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&five_reasons());
    let before = shop(&dora.snapshot(T0 + 6 * HOUR))
        .failed_changes_by_reason
        .clone();
    let later = T0 + 10 * 24 * HOUR;
    assert!(dora.prune(later) > 0);
    let restored = through_checkpoint(&dora, &config);
    for d in [&dora, &restored] {
        let snapshot = d.snapshot(later);
        let s = shop(&snapshot);
        assert_eq!(s.failed_changes_by_reason, before);
        assert_eq!(s.failed_changes_total, 4);
    }
}

/// One deployment of SHA_A reported by a CDEvent, GitHub and Argo CD
/// within 15 minutes; one of SHA_B; and SHA_A again by GitHub an hour
/// later (a second deployment of the same commit).
fn reported_thrice() -> Vec<DeliveryEvent> {
    use DeploymentOutcome::Success;
    let github = |sha: &str| format!("pkg:github/acme/shop@{sha}");
    vec![
        deployment(
            "cd-1",
            T0,
            Source::Cdevents,
            Some(&github(SHA_A)),
            None,
            Success,
        ),
        deployment(
            "gh-1",
            T0 + 2 * MINUTE,
            Source::Github,
            Some(&github(SHA_A)),
            None,
            Success,
        ),
        deployment(
            "argo-1",
            T0 + 14 * MINUTE,
            Source::Argocd,
            None,
            Some(&SHA_A.to_uppercase()),
            Success,
        ),
        deployment(
            "gh-2",
            T0 + 30 * MINUTE,
            Source::Github,
            Some(&github(SHA_B)),
            None,
            Success,
        ),
        deployment(
            "argo-2",
            T0 + 31 * MINUTE,
            Source::Argocd,
            None,
            Some(SHA_B),
            Success,
        ),
        deployment(
            "gh-3",
            T0 + 90 * MINUTE,
            Source::Github,
            Some(&github(SHA_A)),
            None,
            Success,
        ),
    ]
}

#[test]
fn one_deployment_reported_by_three_tools_counts_once() {
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&reported_thrice());
    let snapshot = dora.snapshot(T0 + 2 * HOUR);
    let s = shop(&snapshot);
    // SHA_A at T0 (three reports), SHA_B at +30m (two), SHA_A at +90m.
    assert_eq!(s.windows[0].deployments, 3);
    assert_eq!(s.deployments_total["success"], 3);
    assert_eq!(snapshot.production[0].deployments, 3);
    // Counted once, listed with every source: a rollback of the first
    // shows whose reports it merged.
    let mut rolled = dora;
    rolled.apply(&[deployment(
        "rb",
        T0 + 100 * MINUTE,
        Source::Cdevents,
        None,
        None,
        DeploymentOutcome::Rollback,
    )]);
    let snapshot = rolled.snapshot(T0 + 2 * HOUR);
    let failed = &shop(&snapshot).recent_failed_changes;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].at, T0 + 90 * MINUTE);
    assert_eq!(failed[0].sources, vec!["github"]);

    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&reported_thrice()[..3]);
    dora.apply(&[incident("inc", T0 + 20 * MINUTE, None, Source::Pagerduty)]);
    let snapshot = dora.snapshot(T0 + HOUR);
    let failed = &shop(&snapshot).recent_failed_changes;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].at, T0);
    assert_eq!(failed[0].sources, vec!["cdevents", "github", "argocd"]);
    assert_eq!(shop(&snapshot).windows[0].change_failure_ratio, Some(1.0));
}

#[test]
fn reports_too_far_apart_or_from_one_tool_are_separate_deployments() {
    use DeploymentOutcome::Success;
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&[
        deployment("a", T0, Source::Github, None, Some(SHA_A), Success),
        // The same tool again: a redeploy of the commit, not a report of the first.
        deployment("b", T0 + MINUTE, Source::Github, None, Some(SHA_A), Success),
        // Another tool, but 16 minutes after the first of its group.
        deployment(
            "c",
            T0 + 16 * MINUTE,
            Source::Argocd,
            None,
            Some(SHA_A),
            Success,
        ),
        // No commit known: never merged.
        deployment("d", T0 + 17 * MINUTE, Source::Otlp, None, None, Success),
    ]);
    let s = dora.snapshot(T0 + HOUR);
    // a; b; c joins b's group (15 minutes after b); d.
    assert_eq!(shop(&s).windows[0].deployments, 3);
    let off = DoraConfig {
        deduplicate_within: crate::settings::ConfigDuration::from_secs(0),
        ..DoraConfig::default()
    };
    let mut every = DoraProcessor::new(&off);
    every.apply(&reported_thrice());
    assert_eq!(
        shop(&every.snapshot(T0 + 2 * HOUR)).windows[0].deployments,
        6
    );
}

#[test]
fn a_failure_report_makes_the_merged_deployment_failed() {
    use DeploymentOutcome::{Failure, Success};
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.apply(&[
        deployment("gh", T0, Source::Github, None, Some(SHA_A), Success),
        deployment(
            "argo",
            T0 + 3 * MINUTE,
            Source::Argocd,
            None,
            Some(SHA_A),
            Failure,
        ),
    ]);
    let s = dora.snapshot(T0 + HOUR);
    let w = &shop(&s).windows[0];
    assert_eq!((w.deployments, w.failed_deployments), (0, 1));
    assert_eq!(shop(&s).deployments_total["failure"], 1);
    assert_eq!(
        shop(&s).recent_failed_changes[0].reason,
        FailureReason::DeploymentFailed
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn merged_reports_do_not_depend_on_the_order_of_arrival(
        order in Just(reported_thrice()).prop_shuffle(),
        split in 0usize..6,
    ) {
        let mut expected = DoraProcessor::new(&DoraConfig::default());
        expected.apply(&reported_thrice());
        let mut before = DoraProcessor::new(&DoraConfig::default());
        before.apply(&order[..split]);
        let mut after = through_checkpoint(&before, &DoraConfig::default());
        after.apply(&order[split..]);
        let now = T0 + 2 * HOUR;
        prop_assert_eq!(expected.snapshot(now).series, after.snapshot(now).series);
    }
}

fn paged(id: &str, time: Nanos, source: Source, details: IncidentDetails) -> [DeliveryEvent; 2] {
    [
        DeliveryEvent {
            id: format!("{id}:opened"),
            time,
            kind: DeliveryKind::IncidentOpened {
                incident: id.into(),
                service: "shop".into(),
                environment: "production".into(),
                artifact: None,
                details: IncidentDetails { source, ..details },
            },
        },
        DeliveryEvent {
            id: format!("{id}:resolved"),
            time: time + 30 * MINUTE,
            kind: DeliveryKind::IncidentResolved {
                incident: id.into(),
            },
        },
    ]
}

#[test]
fn incident_filters_decide_per_source_which_incidents_count() {
    use DeploymentOutcome::Success;
    let config: DoraConfig = serde_json::from_value(serde_json::json!({
        "incident_filters": {
            "pagerduty": { "urgency": ["high"] },
            "alertmanager": { "severity": ["critical"], "labels": { "team": ["payments"] } },
            "doraflow": { "counted": false },
        }
    }))
    .unwrap();
    let mut errors = Vec::new();
    config.validate("processors.dora", &mut errors);
    assert!(errors.is_empty(), "{errors:?}");
    let labelled = |severity: &str, team: &str| IncidentDetails {
        severity: Some(severity.into()),
        labels: vec![("team".into(), team.into())],
        ..Default::default()
    };
    let urgency = |u: &str| IncidentDetails {
        urgency: Some(u.into()),
        ..Default::default()
    };
    // Six deployments two hours apart, each followed by one incident.
    let mut events = Vec::new();
    let incidents = [
        (Source::Pagerduty, urgency("HIGH")), // counts (any case)
        (Source::Pagerduty, urgency("low")),  // not
        (Source::Pagerduty, IncidentDetails::default()), // not: no urgency
        (Source::Alertmanager, labelled("critical", "payments")), // counts
        (Source::Alertmanager, labelled("critical", "search")), // not
        (Source::Doraflow, IncidentDetails::default()), // not: the source is off
        (Source::Cdevents, IncidentDetails::default()), // counts: no filter
    ];
    for (n, (source, details)) in incidents.into_iter().enumerate() {
        let at = T0 + 2 * HOUR * n as Nanos;
        events.push(deployment(
            &format!("d{n}"),
            at,
            Source::Cdevents,
            None,
            None,
            Success,
        ));
        events.extend(paged(&format!("i{n}"), at + 10 * MINUTE, source, details));
    }
    let mut dora = DoraProcessor::new(&config);
    dora.apply(&events);
    let now = T0 + 20 * HOUR;
    let snapshot = dora.snapshot(now);
    let week = &shop(&snapshot).windows[0];
    assert_eq!(week.failed_changes, 3);
    assert_eq!(week.change_failure_ratio, Some(3.0 / 7.0));
    assert_eq!(week.time_to_restore.count, 3);
    assert_eq!(snapshot.incidents_filtered_out, 4);
    let counted: Vec<_> = shop(&snapshot)
        .recent_failed_changes
        .iter()
        .map(|c| c.evidence.incidents[0].id.clone())
        .collect();
    assert_eq!(counted, ["i6", "i3", "i0"]);
    // Unfiltered, all seven count.
    let mut all = DoraProcessor::new(&DoraConfig::default());
    all.apply(&events);
    assert_eq!(shop(&all.snapshot(now)).windows[0].failed_changes, 7);
    // An open low-urgency page is no open incident for the alerts either.
    let mut open = DoraProcessor::new(&config);
    open.apply(&paged("low", T0, Source::Pagerduty, urgency("low"))[..1]);
    assert!(open.alert_facts(T0 + HOUR).is_empty());
}

#[test]
fn a_filter_for_a_source_that_does_not_exist_is_refused() {
    let config: DoraConfig = serde_json::from_value(serde_json::json!({
        "incident_filters": { "opsgenie": { "priority": ["P1"] } }
    }))
    .unwrap();
    let mut errors = Vec::new();
    config.validate("processors.dora", &mut errors);
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].starts_with(
            "processors.dora.incident_filters.opsgenie: not a source (one of cdevents, otlp, github"
        ),
        "{errors:?}"
    );
    let unknown: Result<DoraConfig, _> = serde_json::from_value(serde_json::json!({
        "incident_filters": { "pagerduty": { "urgent": ["high"] } }
    }));
    assert!(
        unknown
            .unwrap_err()
            .to_string()
            .contains("unknown field `urgent`")
    );
}

#[test]
fn a_deployment_reported_again_by_another_tool_is_not_news() {
    use DeploymentOutcome::Success;
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    dora.keep_production_deployments();
    dora.apply(&reported_thrice());
    let told: Vec<(Nanos, Source)> = dora
        .take_production_deployments()
        .into_iter()
        .map(|(d, at)| (at, d.source))
        .collect();
    // SHA_A's first report, SHA_B's first, and SHA_A's redeploy an hour on.
    assert_eq!(
        told,
        [
            (T0, Source::Cdevents),
            (T0 + 30 * MINUTE, Source::Github),
            (T0 + 90 * MINUTE, Source::Github),
        ]
    );
    dora.apply(&[deployment(
        "late",
        T0 + 91 * MINUTE,
        Source::Argocd,
        None,
        Some(SHA_A),
        Success,
    )]);
    assert!(dora.take_production_deployments().is_empty());
}
