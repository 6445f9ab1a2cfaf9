//! State brought back at start: the storage folder's checkpoint and log,
//! and the alert transitions it held undelivered.

use std::collections::BTreeMap;
use std::sync::Arc;

use metrics::gauge;

use crate::clock::{Clock, SystemClock};
use crate::exporters::AlertSink;
use crate::instruments;
use crate::processors::alerts::{AlertsProcessor, State as AlertState, Transition};

use super::task::Task;

/// Alert transitions the checkpoint held undelivered go to their exporters
/// again: the last one of each alert only (a trigger and its resolve both
/// undelivered need only the resolve; PagerDuty and Alertmanager take
/// either twice without harm). Rules no longer configured are skipped.
pub(super) fn resume_outbox(
    alerts: &AlertsProcessor,
    outbox: &[crate::proto::OutboxRecord],
    sinks: &[AlertSink],
) {
    let mut last: BTreeMap<(&str, &str, &str, &str), &crate::proto::OutboxRecord> = BTreeMap::new();
    for r in outbox {
        last.insert((&r.exporter, &r.alertname, &r.service, &r.environment), r);
    }
    let mut resent = 0;
    for ((exporter, ..), r) in last {
        let Some(sink) = sinks.iter().find(|s| s.exporter() == exporter) else {
            continue;
        };
        let state = if r.resolved {
            AlertState::Resolved
        } else {
            AlertState::Firing
        };
        if let Some(t) = alerts.transition(
            &r.alertname,
            &r.service,
            &r.environment,
            state,
            r.at_ns,
            r.value,
        ) {
            sink.send(&t);
            resent += 1;
        }
    }
    if resent > 0 {
        tracing::info!(
            transitions = resent,
            "alert transitions undelivered at the last stop are sent again"
        );
    }
}

/// Alerts restored firing (from the checkpoint) are handed to the
/// exporters that must keep re-sending them: Alertmanager forgets an alert
/// that is not re-sent within its `endsAt`, and its exporter learns what
/// fires only from transitions, which a restored alert does not make again.
/// PagerDuty and webhooks heard of it already and are not told twice.
pub(super) fn resume_firing(alerts: &AlertsProcessor, sinks: &[AlertSink]) {
    let firing = firing_transitions(alerts);
    for sink in sinks.iter().filter(|s| s.resends_firing()) {
        for t in &firing {
            sink.send(t);
        }
    }
    if !firing.is_empty() {
        tracing::info!(
            alerts = firing.len(),
            "alerts restored firing; Alertmanager is told again"
        );
    }
}

/// The storage folder opened, its state restored into the processors.
/// Returns the storage, the log segment to go on in, the Kafka offsets
/// the checkpoint holds, and the alert transitions it held undelivered.
#[allow(clippy::type_complexity)]
pub(super) fn restore_storage(
    config: &crate::storage::StorageConfig,
    task: &mut Task,
    dependencies: Option<&mut crate::processors::dependencies::DependencyProcessor>,
) -> anyhow::Result<(
    crate::storage::Storage,
    u64,
    std::collections::HashMap<(Arc<str>, i32), i64>,
    Vec<crate::proto::OutboxRecord>,
)> {
    let Task {
        red, dora, alerts, ..
    } = task;
    let storage = crate::storage::Storage::open(&config.dir)?;
    let restored = storage.restore()?;
    let refuse = |what: &str, e: String| {
        anyhow::anyhow!(
            "{}: the {what} state cannot be restored: {e}; refusing to start on a damaged state (move the file away to start empty)",
            config.dir.join("checkpoint.pb").display()
        )
    };
    let mut kafka_next = std::collections::HashMap::new();
    if let Some(checkpoint) = &restored.checkpoint {
        if let (Some(state), Some(dora)) = (&checkpoint.dora, dora.as_mut()) {
            dora.restore(state).map_err(|e| refuse("dora", e))?;
        }
        if let (Some(state), Some(alerts)) = (&checkpoint.alerts, alerts.as_mut()) {
            let dropped = alerts.restore(state).map_err(|e| refuse("alerts", e))?;
            if !dropped.is_empty() {
                tracing::warn!(
                    ?dropped,
                    "alerts of rules no longer configured were dropped"
                );
            }
            for alert in alerts.active() {
                if alert.state == AlertState::Firing {
                    gauge!(
                        instruments::ALERTS_FIRING,
                        "alertname" => alert.alertname,
                        "service" => alert.service,
                        "environment" => alert.environment,
                        "severity" => alert.severity.as_str()
                    )
                    .set(1.0);
                }
            }
        }
        if let (Some(state), Some(red)) = (&checkpoint.red, red.as_mut()) {
            let reset = red.restore(state).map_err(|e| refuse("red", e))?;
            if !reset.is_empty() {
                tracing::warn!(
                    ?reset,
                    "red windows recorded with another window or precision start empty"
                );
            }
        }
        if let (Some(state), Some(dependencies)) = (&checkpoint.dependencies, dependencies) {
            let reset = dependencies
                .restore(state)
                .map_err(|e| refuse("dependencies", e))?;
            if !reset.is_empty() {
                tracing::warn!(
                    ?reset,
                    "dependencies windows recorded with another window or precision start empty"
                );
            }
        }
        for o in &checkpoint.kafka_offsets {
            kafka_next.insert((Arc::from(o.topic.as_str()), o.partition), o.next_offset);
        }
    }
    let mut events = 0;
    if let Some(dora) = dora.as_mut() {
        for batch in &restored.batches {
            events += batch.len();
            dora.replay(batch);
        }
    }
    tracing::info!(
        dir = %config.dir.display(),
        checkpoint = restored.checkpoint.is_some(),
        checkpoint_age_s = restored.checkpoint.as_ref().map(|c| {
            (SystemClock.now_ns() as i64 - c.written_at_ns) as f64 / 1e9
        }),
        log_events = events,
        truncated_bytes = restored.truncated,
        "state restored"
    );
    let outbox = restored.checkpoint.map(|c| c.outbox).unwrap_or_default();
    Ok((storage, restored.next_segment, kafka_next, outbox))
}

/// The alerts firing now, as the transitions that made them fire.
pub(super) fn firing_transitions(alerts: &AlertsProcessor) -> Vec<Transition> {
    alerts
        .active()
        .into_iter()
        .filter(|a| a.state == AlertState::Firing)
        .filter_map(|a| {
            alerts.transition(
                a.alertname,
                &a.service,
                &a.environment,
                AlertState::Firing,
                a.since,
                a.value,
            )
        })
        .collect()
}

#[cfg(test)]
mod outbox_tests {
    use super::*;
    use crate::processors::alerts::AlertsConfig;

    fn record(
        exporter: &str,
        service: &str,
        resolved: bool,
        at: i64,
    ) -> crate::proto::OutboxRecord {
        crate::proto::OutboxRecord {
            exporter: exporter.into(),
            alertname: "HighErrorRate".into(),
            service: service.into(),
            environment: "production".into(),
            resolved,
            at_ns: at,
            value: 0.05,
        }
    }

    /// Of each alert's undelivered transitions only the last goes again, to
    /// the exporter it was for; unknown exporters and rules are skipped.
    #[test]
    fn the_last_undelivered_transition_of_each_alert_is_sent_again() {
        let alerts = AlertsProcessor::new(&AlertsConfig::default());
        let (pagerduty, mut pagerduty_rx) = AlertSink::new("pagerduty", 16);
        let (webhook, mut webhook_rx) = AlertSink::new("webhook", 16);
        let mut unknown_rule = record("pagerduty", "cart", false, 5);
        unknown_rule.alertname = "NoSuchRule".into();
        let outbox = [
            record("pagerduty", "checkout", false, 1),
            record("pagerduty", "checkout", true, 2),
            record("pagerduty", "payments", false, 3),
            record("webhook", "checkout", false, 1),
            record("kafka", "checkout", false, 4),
            unknown_rule,
        ];
        resume_outbox(&alerts, &outbox, &[pagerduty.clone(), webhook.clone()]);
        let mut sent = Vec::new();
        while let Ok(t) = pagerduty_rx.try_recv() {
            sent.push(("pagerduty", t.service.clone(), t.state, t.at));
        }
        while let Ok(t) = webhook_rx.try_recv() {
            sent.push(("webhook", t.service.clone(), t.state, t.at));
        }
        assert_eq!(
            sent,
            [
                ("pagerduty", "checkout".to_string(), AlertState::Resolved, 2),
                ("pagerduty", "payments".to_string(), AlertState::Firing, 3),
                ("webhook", "checkout".to_string(), AlertState::Firing, 1),
            ]
        );
        // Taken from the queues and dropped: none of them waits any more.
        assert!(pagerduty.undelivered().is_empty());
        assert!(webhook.undelivered().is_empty());
    }

    /// A transition waits in its exporter's outbox from the moment it is
    /// queued until the exporter is done with it (delivered or given up).
    #[test]
    fn a_queued_transition_waits_until_its_exporter_is_done_with_it() {
        let alerts = AlertsProcessor::new(&AlertsConfig::default());
        let (sink, mut rx) = AlertSink::new("pagerduty", 1);
        let t = |service: &str| {
            alerts
                .transition(
                    "HighErrorRate",
                    service,
                    "production",
                    AlertState::Firing,
                    1,
                    0.05,
                )
                .unwrap()
        };
        sink.send(&t("checkout"));
        // The queue holds one: the second is dropped, and does not wait.
        sink.send(&t("payments"));
        let waiting: Vec<String> = sink.undelivered().into_iter().map(|t| t.service).collect();
        assert_eq!(waiting, ["checkout"]);
        let taken = rx.try_recv().unwrap();
        assert_eq!(sink.undelivered().len(), 1, "still being delivered");
        drop(taken);
        assert!(sink.undelivered().is_empty());
    }
}
