//! One test per rule, with exact transitions; `for` shortened where it matters.

use super::*;

const S: Nanos = 1_000_000_000;
const T0: Nanos = 1_714_521_600 * S;

fn facts(f: Facts) -> BTreeMap<(String, String), Facts> {
    BTreeMap::from([(("checkout".to_string(), "production".to_string()), f)])
}

fn processor(yaml_rules: &[(&str, RuleOverride)]) -> AlertsProcessor {
    AlertsProcessor::new(&AlertsConfig {
        rules: yaml_rules
            .iter()
            .map(|(n, o)| (n.to_string(), o.clone()))
            .collect(),
        ..AlertsConfig::default()
    })
}

fn states(transitions: &[Transition]) -> Vec<(&'static str, State)> {
    transitions.iter().map(|t| (t.alertname, t.state)).collect()
}

#[test]
fn high_error_rate_fires_at_once_and_resolves() {
    let mut alerts = processor(&[]);
    // Too few requests: 50 of 50 failed is not enough to judge.
    let few = Facts {
        requests: 50,
        errors: 50,
        ..Facts::default()
    };
    assert!(alerts.evaluate(&facts(few), T0).is_empty());
    let bad = Facts {
        requests: 200,
        errors: 3,
        ..Facts::default()
    };
    let fired = alerts.evaluate(&facts(bad.clone()), T0 + S);
    assert_eq!(states(&fired), [("HighErrorRate", State::Firing)]);
    assert_eq!(fired[0].value, 0.015);
    assert_eq!(fired[0].threshold, 0.01);
    assert_eq!(fired[0].severity, Severity::Critical);
    assert_eq!(
        fired[0].summary,
        "checkout (production): error ratio 1.50% > 1.00%"
    );
    assert!(alerts.evaluate(&facts(bad), T0 + 2 * S).is_empty());
    assert_eq!(alerts.active().len(), 1);
    // Exactly 1% is not above 1%.
    let at_threshold = Facts {
        requests: 300,
        errors: 3,
        ..Facts::default()
    };
    let resolved = alerts.evaluate(&facts(at_threshold), T0 + 3 * S);
    assert_eq!(states(&resolved), [("HighErrorRate", State::Resolved)]);
    assert!(alerts.active().is_empty());
}

#[test]
fn high_latency_waits_for_its_for_and_a_cleared_pending_alert_says_nothing() {
    let mut alerts = processor(&[(
        "HighLatencyP95",
        RuleOverride {
            for_: Some("10s".parse().unwrap()),
            ..Default::default()
        },
    )]);
    let slow = Facts {
        requests: 10,
        p95_seconds: Some(0.6),
        ..Facts::default()
    };
    assert_eq!(
        states(&alerts.evaluate(&facts(slow.clone()), T0)),
        [("HighLatencyP95", State::Pending)]
    );
    assert!(alerts.evaluate(&facts(slow.clone()), T0 + 9 * S).is_empty());
    assert_eq!(
        states(&alerts.evaluate(&facts(slow.clone()), T0 + 10 * S)),
        [("HighLatencyP95", State::Firing)]
    );
    let fast = Facts {
        requests: 10,
        p95_seconds: Some(0.4),
        ..Facts::default()
    };
    assert_eq!(
        states(&alerts.evaluate(&facts(fast.clone()), T0 + 11 * S)),
        [("HighLatencyP95", State::Resolved)]
    );
    // Pending, then cleared before `for`: no transition, no alert.
    assert_eq!(
        states(&alerts.evaluate(&facts(slow), T0 + 20 * S)),
        [("HighLatencyP95", State::Pending)]
    );
    assert!(alerts.evaluate(&facts(fast), T0 + 21 * S).is_empty());
    assert!(alerts.active().is_empty());
}

#[test]
fn slow_recovery_fires_past_an_hour_and_resolves_with_the_incident() {
    let mut alerts = processor(&[]);
    let open = Facts {
        oldest_open_incident: Some(T0),
        ..Facts::default()
    };
    assert!(
        alerts
            .evaluate(&facts(open.clone()), T0 + 3_600 * S)
            .is_empty()
    );
    let fired = alerts.evaluate(&facts(open), T0 + 3_601 * S);
    assert_eq!(states(&fired), [("SlowRecovery", State::Firing)]);
    assert_eq!(fired[0].value, 3_601.0);
    let resolved = alerts.evaluate(&facts(Facts::default()), T0 + 4_000 * S);
    assert_eq!(states(&resolved), [("SlowRecovery", State::Resolved)]);
}

#[test]
fn deployment_failed_fires_and_resolves_on_the_next_success_or_after_a_day() {
    let mut alerts = processor(&[]);
    let failed = Facts {
        latest_deployment: Some((T0, true)),
        ..Facts::default()
    };
    assert_eq!(
        states(&alerts.evaluate(&facts(failed.clone()), T0 + S)),
        [("DeploymentFailed", State::Firing)]
    );
    let fixed = Facts {
        latest_deployment: Some((T0 + 60 * S, false)),
        ..Facts::default()
    };
    assert_eq!(
        states(&alerts.evaluate(&facts(fixed), T0 + 61 * S)),
        [("DeploymentFailed", State::Resolved)]
    );
    // A failure older than the 24h lookback is already over.
    let old = Facts {
        latest_deployment: Some((T0, true)),
        ..Facts::default()
    };
    assert!(alerts.evaluate(&facts(old), T0 + 86_401 * S).is_empty());
}

#[test]
fn rules_can_be_disabled_and_unknown_ones_are_named() {
    let config = AlertsConfig {
        rules: BTreeMap::from([
            (
                "HighErrorRate".into(),
                RuleOverride {
                    enabled: Some(false),
                    ..Default::default()
                },
            ),
            ("HighErorRate".into(), RuleOverride::default()),
        ]),
        ..AlertsConfig::default()
    };
    assert_eq!(
        config.rules().iter().map(|r| r.name).collect::<Vec<_>>(),
        [
            "HighLatencyP95",
            "HighCpuUsage",
            "HighMemoryUsage",
            "SlowRecovery",
            "DeploymentFailed"
        ]
    );
    let mut errors = Vec::new();
    config.validate("processors.alerts", &mut errors);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].starts_with(
        "processors.alerts.rules.HighErorRate: unknown rule, expected one of HighErrorRate"
    ));
}

#[test]
fn a_backfilled_month_pages_nobody() {
    use crate::model::delivery::{DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome};
    use crate::processors::dora::DoraConfig;
    use crate::processors::dora::DoraProcessor;
    let day = 86_400 * S;
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    let mut events = Vec::new();
    for d in 0..30 {
        events.push(DeliveryEvent {
            id: format!("deploy-{d}"),
            time: T0 + d * day,
            kind: DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: "checkout".into(),
                environment: "production".into(),
                artifact: None,
                outcome: if d % 3 == 0 {
                    DeploymentOutcome::Failure
                } else {
                    DeploymentOutcome::Success
                },
                changes: Vec::new(),
                ..Default::default()
            }),
        });
        events.push(DeliveryEvent {
            id: format!("open-{d}"),
            time: T0 + d * day + 3_600 * S,
            kind: DeliveryKind::IncidentOpened {
                incident: format!("i-{d}"),
                service: "checkout".into(),
                environment: "production".into(),
                artifact: None,
                details: Default::default(),
            },
        });
        events.push(DeliveryEvent {
            id: format!("resolve-{d}"),
            time: T0 + d * day + 5 * 3_600 * S,
            kind: DeliveryKind::IncidentResolved {
                incident: format!("i-{d}"),
            },
        });
    }
    // The last failed deployment (day 27) is three days before now.
    dora.apply(&events);
    let mut alerts = processor(&[]);
    let now = T0 + 30 * day;
    assert!(alerts.evaluate(&dora.alert_facts(now), now).is_empty());
}

fn reading(
    instance: &str,
    resource: crate::model::Resource,
    value: f64,
) -> crate::model::Utilization {
    crate::model::Utilization {
        identity: crate::model::ResourceIdentity {
            service: bytes::Bytes::from_static(b"checkout"),
            environment: bytes::Bytes::from_static(b"production"),
        },
        instance: instance.into(),
        resource,
        value,
    }
}

#[test]
fn high_cpu_is_pending_for_five_minutes_then_fires_on_the_busiest_instance() {
    use crate::model::Resource::Cpu;
    let mut alerts = processor(&[]);
    let none = BTreeMap::new();
    let m = 60 * S;
    alerts.observe_utilization(
        &[reading("pod-a", Cpu, 0.5), reading("pod-b", Cpu, 0.9)],
        T0,
    );
    assert_eq!(
        states(&alerts.evaluate(&none, T0)),
        [("HighCpuUsage", State::Pending)]
    );
    alerts.observe_utilization(&[reading("pod-b", Cpu, 0.9)], T0 + 4 * m);
    assert!(alerts.evaluate(&none, T0 + 4 * m).is_empty());
    alerts.observe_utilization(&[reading("pod-b", Cpu, 0.85)], T0 + 5 * m - S);
    let fired = alerts.evaluate(&none, T0 + 5 * m);
    assert_eq!(states(&fired), [("HighCpuUsage", State::Firing)]);
    // The 1m window is (4m, 5m]: the 4m reading is exactly 1m old and out.
    assert_eq!(fired[0].value, 0.85);
    assert_eq!(
        fired[0].summary,
        "checkout (production): CPU utilization 85% > 80%"
    );
    alerts.observe_utilization(&[reading("pod-b", Cpu, 0.5)], T0 + 6 * m);
    assert_eq!(
        states(&alerts.evaluate(&none, T0 + 6 * m)),
        [("HighCpuUsage", State::Resolved)]
    );
}

#[test]
fn high_memory_needs_its_for_too() {
    use crate::model::Resource::Memory;
    let mut alerts = processor(&[(
        "HighMemoryUsage",
        RuleOverride {
            for_: Some("0s".parse().unwrap()),
            ..Default::default()
        },
    )]);
    let none = BTreeMap::new();
    alerts.observe_utilization(&[reading("host", Memory, 0.85)], T0);
    assert!(
        alerts.evaluate(&none, T0).is_empty(),
        "85% is not above 85%"
    );
    alerts.observe_utilization(&[reading("host", Memory, 0.95)], T0 + 61 * S);
    assert_eq!(
        states(&alerts.evaluate(&none, T0 + 61 * S)),
        [("HighMemoryUsage", State::Firing)]
    );
    // No readings for a minute: nothing holds, the alert resolves.
    assert_eq!(
        states(&alerts.evaluate(&none, T0 + 122 * S)),
        [("HighMemoryUsage", State::Resolved)]
    );
}

fn enabled() -> RuleOverride {
    RuleOverride {
        enabled: Some(true),
        ..RuleOverride::default()
    }
}

#[test]
fn the_dependency_rules_are_off_unless_configured_on() {
    let failing = Facts {
        dependencies: vec![DependencyFact {
            name: "postgresql shop SELECT orders".into(),
            calls: 100,
            errors: 50,
            p95_seconds: Some(2.0),
        }],
        caches: vec![CacheFact {
            name: "redis".into(),
            lookups: 1_000,
            hit_ratio: Some(0.1),
        }],
        queues: vec![("orders".into(), 1e6)],
        ..Facts::default()
    };
    let mut alerts = processor(&[]);
    assert!(alerts.evaluate(&facts(failing), T0).is_empty());
    let names: Vec<_> = alerts.rule_table().iter().map(|r| r.alertname).collect();
    assert!(!names.contains(&"DependencyErrorRate"), "{names:?}");
}

#[test]
fn dependency_rules_name_the_worst_dependency_cache_and_queue() {
    let mut alerts = processor(&[
        ("DependencyErrorRate", enabled()),
        ("DependencyLatencyP95", enabled()),
        (
            "LowCacheHitRate",
            RuleOverride {
                for_: Some("0s".parse().unwrap()),
                ..enabled()
            },
        ),
        ("QueueBacklog", enabled()),
    ]);
    let dependency = |name: &str, calls, errors, p95| DependencyFact {
        name: name.into(),
        calls,
        errors,
        p95_seconds: Some(p95),
    };
    let f = Facts {
        dependencies: vec![
            // 10% errors but too few calls (20 needed) to judge.
            dependency("http payments GET", 10, 1, 0.1),
            dependency("postgresql shop SELECT orders", 200, 12, 0.2),
            dependency("redis cache.internal GET", 400, 0, 0.9),
        ],
        caches: vec![
            CacheFact {
                name: "redis".into(),
                lookups: 500,
                hit_ratio: Some(0.62),
            },
            CacheFact {
                name: "local".into(),
                lookups: 50,
                hit_ratio: Some(0.0),
            },
        ],
        queues: vec![
            ("orders (lag)".into(), 1_500.0),
            ("refunds (lag)".into(), 3.0),
        ],
        ..Facts::default()
    };
    let fired = alerts.evaluate(&facts(f.clone()), T0);
    let got: Vec<_> = fired
        .iter()
        .map(|t| (t.alertname, t.state, t.summary.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "DependencyErrorRate",
                State::Firing,
                "checkout (production): calls to postgresql shop SELECT orders fail at 6.00% > 5.00%"
            ),
            (
                "DependencyLatencyP95",
                State::Firing,
                "checkout (production): calls to redis cache.internal GET take 900 ms at p95 > 500 ms"
            ),
            (
                "LowCacheHitRate",
                State::Firing,
                "checkout (production): cache redis hits 62.0% < 80.0%"
            ),
            (
                "QueueBacklog",
                State::Pending,
                "checkout (production): queue orders (lag) holds 1500 > 1000"
            ),
        ]
    );
    // The backlog holds for five minutes: firing.
    let later = alerts.evaluate(&facts(f), T0 + 300 * S);
    assert_eq!(states(&later), [("QueueBacklog", State::Firing)]);
    // Nothing left to look at: all resolve.
    let resolved = alerts.evaluate(&facts(Facts::default()), T0 + 301 * S);
    assert_eq!(resolved.len(), 4);
    assert!(resolved.iter().all(|t| t.state == State::Resolved));
}
