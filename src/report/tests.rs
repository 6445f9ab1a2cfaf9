use super::*;

#[test]
fn durations_ratios_and_frequencies_read_as_people_write_them() {
    assert_eq!(format_duration(None), "—");
    assert_eq!(format_duration(Some(0.0)), "0 s");
    assert_eq!(format_duration(Some(0.000_35)), "0.350 ms");
    assert_eq!(format_duration(Some(0.25)), "250 ms");
    assert_eq!(format_duration(Some(45.0)), "45.0 s");
    assert_eq!(format_duration(Some(750.0)), "12.5 min");
    assert_eq!(format_duration(Some(7_200.0)), "2.00 h");
    assert_eq!(format_duration(Some(108_000.0)), "1.25 d");
    assert_eq!(format_duration(Some(30.0 * 86_400.0)), "30.0 d");
    assert_eq!(format_ratio(Some(1.0 / 3.0)), "33.3%");
    assert_eq!(format_ratio(None), "—");
    assert_eq!(format_frequency(4.0 / 30.0), "0.133/day");
    assert_eq!(format_frequency(12.0), "12.0/day");
    assert_eq!(format_frequency(0.0), "0/day");
    assert_eq!(format_level(Some(Level::Elite)), "elite");
}

fn report_with_service(name: &str) -> Report {
    let mut dora = crate::processors::dora::DoraProcessor::new(&Default::default());
    dora.apply(&[crate::model::delivery::DeliveryEvent {
        id: "d1".into(),
        time: 1_714_521_600_000_000_000,
        kind: crate::model::delivery::DeliveryKind::Deployment(
            crate::model::delivery::Deployment {
                rework: false,
                team: None,
                service: name.into(),
                environment: "production".into(),
                artifact: None,
                outcome: crate::model::delivery::DeploymentOutcome::Success,
                changes: Vec::new(),
                ..Default::default()
            },
        ),
    }]);
    let now = 1_714_521_600_000_000_000 + 3_600_000_000_000;
    build(
        &ReportInputs {
            dora: Some(dora.snapshot_with_trend(now)),
            ..Default::default()
        },
        now,
    )
}

#[test]
fn names_from_input_are_escaped_in_html() {
    let report = report_with_service("<script>alert(1)</script>");
    let page = html(&report);
    assert!(!page.contains("<script>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; (production)"));
}

#[test]
fn without_dora_or_alerts_the_report_says_so() {
    let report = build(&ReportInputs::default(), 0);
    let md = markdown(&report);
    assert!(md.contains("No DORA figures: the pipeline has no `dora` processor."));
    assert!(md.contains("No alert rules: the pipeline has no `alerts` processor."));
    assert!(html(&report).contains("<code>dora</code>"));
}

#[test]
fn a_lone_deployment_is_below_high_on_frequency_only() {
    let report = report_with_service("checkout");
    assert_eq!(report.summary_window.as_deref(), Some("30d"));
    assert_eq!(report.below_high.len(), 1);
    let drag = &report.below_high[0].drags[0];
    assert_eq!(drag.metric, "deployment_frequency");
    assert_eq!(drag.value, 1.0 / 30.0);
    assert_eq!(drag.level, Level::Medium);
    assert_eq!(drag.high_needs, 1.0 / 7.0);
    assert_eq!(report.below_high[0].drags.len(), 1);
}

/// checkout (lead 1h) and cart (lead 3h, and a failed deployment) are team
/// payments; its row pools them over 30 days: 2 deployments (0.0667/day), lead
/// p50 1h, 1 failed change of 3 (33.3%).
#[test]
fn teams_get_a_row_of_their_pooled_figures() {
    use crate::model::delivery::{
        DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, LinkedChange,
    };
    let mut config = crate::processors::dora::DoraConfig::default();
    config.teams.insert("checkout".into(), "payments".into());
    config.teams.insert("cart".into(), "payments".into());
    let now = 1_714_521_600_000_000_000i64;
    let hour = 3_600_000_000_000i64;
    let deploy = |id: &str, service: &str, ago: i64, outcome, lead: i64| DeliveryEvent {
        id: id.into(),
        time: now - ago,
        kind: DeliveryKind::Deployment(Deployment {
            service: service.into(),
            environment: "production".into(),
            artifact: None,
            outcome,
            changes: vec![LinkedChange {
                id: format!("{id}-c"),
                time: Some(now - ago - lead),
            }],
            rework: false,
            team: None,
            ..Default::default()
        }),
    };
    let mut dora = crate::processors::dora::DoraProcessor::new(&config);
    dora.apply(&[
        deploy("a", "checkout", 2 * hour, DeploymentOutcome::Success, hour),
        deploy("b", "cart", 3 * hour, DeploymentOutcome::Success, 3 * hour),
        deploy("c", "cart", hour, DeploymentOutcome::Failure, hour),
    ]);
    let report = build(
        &ReportInputs {
            dora: Some(dora.snapshot_with_trend(now)),
            ..Default::default()
        },
        now,
    );
    assert_eq!(report.teams.len(), 1);
    assert_eq!(report.teams[0].services, ["cart", "checkout"]);
    let md = markdown(&report);
    assert!(md.contains("## Teams, last 30d"), "{md}");
    assert!(
        md.contains("| payments (production) | cart, checkout | 0.0667/day (medium) | 1.00 h (elite) | 33.3% (low) | — (—) | 0.0% |"),
        "{md}"
    );
}
