//! A task: the processors' state of one owner, as Kafka Streams has a task
//! per input partition.
//!
//! The engine keeps one task for what the local receivers (OTLP, webhook)
//! bring, and, with the Kafka changelog on, one per input partition this
//! replica owns: everything consumed from partition `p` of any input topic
//! goes to task `p`, and only there. That is what lets a partition's state
//! move whole to another replica: the task is written to the changelog as
//! it changes ([`Task::changelog_entries`]), rebuilt from it on the new
//! owner ([`Task::from_changelog`]), and dropped by the old one.
//!
//! Snapshots pool the tasks, so a replica shows each series it owns once,
//! with the figures one processor holding all its series would give.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;

use crate::config::{Config, DoraConfig, PipelineConfig, RedConfig};
use crate::kafka::changelog::Entry;
use crate::model::Telemetry;
use crate::model::delivery::DeliveryEvent;
use crate::processors::Applied;
use crate::processors::alerts::{AlertsConfig, AlertsProcessor};
use crate::processors::dora::DoraProcessor;
use crate::processors::red::RedProcessor;
use crate::proto::{self, ChangelogRecord, KafkaOffset, changelog_record::Record};

/// The processors of one owner.
pub struct Task {
    pub(super) red: Option<RedProcessor>,
    pub(super) dora: Option<DoraProcessor>,
    pub(super) alerts: Option<AlertsProcessor>,
    /// With a changelog: what changed since the last flush.
    changes: Option<Changes>,
}

/// What a partition's task changed since its last changelog flush, besides
/// the `red` series (which mark themselves).
#[derive(Default)]
struct Changes {
    /// Delivery events applied, as written.
    events: Vec<proto::EventRecord>,
    /// Alerts evaluated with a transition, or utilization observed.
    alerts: bool,
    /// The series whose alerts record is in the changelog now (to delete
    /// the record of a series whose alerts are all gone).
    alert_keys: BTreeSet<Vec<u8>>,
    /// Pruning forgot something: the baselines and horizon changed.
    pruned: bool,
    /// Per input topic, the next offset of this partition to apply.
    next: BTreeMap<Arc<str>, i64>,
    offsets_changed: bool,
}

/// Builds empty tasks: the processors a pipeline names, as configured.
#[derive(Clone)]
pub struct TaskFactory {
    red: Option<RedConfig>,
    dora: Option<DoraConfig>,
    alerts: Option<AlertsConfig>,
    default_environment: String,
    red_window: String,
    dependencies_window: String,
    /// Production deployments are kept for PagerDuty change events.
    keep_production: bool,
}

/// Changelog record keys (see `ChangelogRecord` in the checkpoint schema).
mod keys {
    pub const EVENT: u8 = b'e';
    pub const RED: u8 = b'r';
    pub const ALERTS: u8 = b'a';
    pub const PRUNED: u8 = b'p';
    pub const OFFSET: u8 = b'o';
    pub const FENCE: u8 = b'f';

    /// A key for a series: the kind, then service 0x1f environment.
    pub fn series(kind: u8, service: &str, environment: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(2 + service.len() + environment.len());
        key.push(kind);
        key.extend_from_slice(service.as_bytes());
        key.push(0x1f);
        key.extend_from_slice(environment.as_bytes());
        key
    }

    pub fn event(fingerprint: u128) -> Vec<u8> {
        let mut key = Vec::with_capacity(17);
        key.push(EVENT);
        key.extend_from_slice(&fingerprint.to_be_bytes());
        key
    }

    pub fn offset(topic: &str) -> Vec<u8> {
        let mut key = Vec::with_capacity(1 + topic.len());
        key.push(OFFSET);
        key.extend_from_slice(topic.as_bytes());
        key
    }
}

/// The fence record a restore writes and reads up to: a key and a token of
/// this process and moment.
pub fn fence(partition: i32) -> (Vec<u8>, Vec<u8>) {
    let token = format!(
        "{}:{}:{partition}",
        std::process::id(),
        crate::clock::Clock::now_ns(&crate::clock::SystemClock)
    );
    let value = ChangelogRecord {
        record: Some(Record::Fence(token)),
    }
    .encode_to_vec();
    (vec![keys::FENCE], value)
}

impl TaskFactory {
    /// The processors `pipeline` names in `config`, and the alert rules'
    /// evaluation interval if it has an `alerts` processor.
    pub fn new(config: &Config, pipeline: &PipelineConfig) -> (TaskFactory, Option<Duration>) {
        let uses = |list: &[String], kind: &str| list.iter().any(|c| c == kind);
        let default_environment = config
            .receivers
            .otlp
            .as_ref()
            .filter(|_| uses(&pipeline.receivers, "otlp"))
            .map(|o| o.default_environment.clone())
            .unwrap_or_else(|| "unknown".to_string());
        let alerts = config
            .processors
            .alerts
            .clone()
            .filter(|_| uses(&pipeline.processors, "alerts"));
        let interval = alerts.as_ref().map(|a| a.interval.get());
        let factory = TaskFactory {
            red: config
                .processors
                .red
                .clone()
                .filter(|_| uses(&pipeline.processors, "red")),
            dora: config
                .processors
                .dora
                .clone()
                .filter(|_| uses(&pipeline.processors, "dora")),
            alerts,
            red_window: config
                .processors
                .red
                .as_ref()
                .map_or_else(|| "5m".to_string(), |r| r.window.as_str().to_string()),
            dependencies_window: config
                .processors
                .dependencies
                .as_ref()
                .map_or_else(|| "5m".to_string(), |d| d.window.as_str().to_string()),
            default_environment,
            keep_production: false,
        };
        (factory, interval)
    }

    /// The environment of resources that name none.
    pub fn default_environment(&self) -> &str {
        &self.default_environment
    }

    /// Tasks built from now on keep their production deployments (see
    /// [`DoraProcessor::keep_production_deployments`]).
    pub fn keep_production_deployments(&mut self) {
        self.keep_production = true;
    }

    /// An empty task.
    pub fn build(&self) -> Task {
        let mut dora = self.dora.as_ref().map(DoraProcessor::new);
        if let Some(dora) = dora.as_mut().filter(|_| self.keep_production) {
            dora.keep_production_deployments();
        }
        Task {
            dora,
            red: self
                .red
                .as_ref()
                .map(|c| RedProcessor::new(c, &self.default_environment)),
            alerts: self.alerts.as_ref().map(|c| {
                AlertsProcessor::new(c)
                    .with_default_environment(&self.default_environment)
                    .with_red_window(&self.red_window)
                    .with_dependencies_window(&self.dependencies_window)
            }),
            changes: None,
        }
    }

    /// An empty task of an input partition, whose changes are kept for
    /// the changelog.
    pub fn build_changelogged(&self) -> Task {
        let mut task = self.build();
        if let Some(dora) = task.dora.as_mut() {
            dora.keep_forgotten();
        }
        task.changes = Some(Changes::default());
        task
    }
}

impl Task {
    /// Applies one batch at `now`; `default_environment` goes to the
    /// deployments of log records that name none.
    pub fn apply(&mut self, item: &Telemetry, now: u64, default_environment: &str) -> Applied {
        if let Telemetry::Delivery(events) = item {
            let Some(dora) = self.dora.as_mut() else {
                return Applied::default();
            };
            let applied = dora.apply(events);
            if let Some(changes) = self.changes.as_mut() {
                changes.record_events(events);
            }
            return applied;
        }
        if let (Telemetry::Metrics(metrics), Some(alerts)) = (item, self.alerts.as_mut())
            && !metrics.utilization.is_empty()
        {
            alerts.observe_utilization(&metrics.utilization, now as i64);
            if let Some(changes) = self.changes.as_mut() {
                changes.alerts = true;
            }
        }
        if let (Telemetry::Logs(logs), Some(dora)) = (item, self.dora.as_mut())
            && !logs.deployments.is_empty()
        {
            let events: Vec<_> = logs
                .deployments
                .iter()
                .map(|d| d.to_event(default_environment))
                .collect();
            dora.apply(&events);
            if let Some(changes) = self.changes.as_mut() {
                changes.record_events(&events);
            }
        }
        self.red
            .as_mut()
            .map(|red| red.apply(item, now))
            .unwrap_or_default()
    }

    /// Notes that events derived here (incidents) were applied.
    pub fn derived(&mut self, events: &[DeliveryEvent]) {
        if let Some(changes) = self.changes.as_mut() {
            changes.record_events(events);
        }
    }

    /// Notes that the alerts changed (a transition).
    pub fn alerts_changed(&mut self) {
        if let Some(changes) = self.changes.as_mut() {
            changes.alerts = true;
        }
    }

    /// Notes that pruning forgot history.
    pub fn pruned(&mut self) {
        if let Some(changes) = self.changes.as_mut() {
            changes.pruned = true;
        }
    }

    /// Notes that this partition's messages of `topic` are applied up to
    /// `offset`.
    pub fn applied_up_to(&mut self, topic: &Arc<str>, offset: i64) {
        if let Some(changes) = self.changes.as_mut() {
            let next = changes.next.entry(topic.clone()).or_insert(0);
            if offset + 1 > *next {
                *next = offset + 1;
                changes.offsets_changed = true;
            }
        }
    }

    /// What changed since the last call, as changelog records of
    /// `partition`, and the input offsets they cover (also in the records).
    pub fn changelog_entries(&mut self, partition: i32) -> (Vec<Entry>, Vec<KafkaOffset>) {
        let Some(changes) = self.changes.as_mut() else {
            return (Vec::new(), Vec::new());
        };
        let mut entries = Vec::new();
        let mut put = |key: Vec<u8>, record: Option<Record>| {
            entries.push(Entry {
                partition,
                key,
                value: record.map(|r| ChangelogRecord { record: Some(r) }.encode_to_vec()),
            });
        };
        for event in changes.events.drain(..) {
            let key = keys::event(crate::processors::dora::fingerprint(&event.id));
            put(key, Some(Record::Event(event)));
        }
        if let Some(red) = self.red.as_mut() {
            for series in red.take_changed() {
                let key = keys::series(keys::RED, &series.service, &series.environment);
                put(key, Some(Record::Red(series)));
            }
        }
        if std::mem::take(&mut changes.alerts)
            && let Some(alerts) = self.alerts.as_ref()
        {
            let mut by_series: BTreeMap<Vec<u8>, proto::AlertsState> = BTreeMap::new();
            let state = alerts.to_state();
            for a in state.active {
                by_series
                    .entry(keys::series(keys::ALERTS, &a.service, &a.environment))
                    .or_default()
                    .active
                    .push(a);
            }
            for r in state.readings {
                by_series
                    .entry(keys::series(keys::ALERTS, &r.service, &r.environment))
                    .or_default()
                    .readings
                    .push(r);
            }
            let now: BTreeSet<Vec<u8>> = by_series.keys().cloned().collect();
            for gone in changes.alert_keys.difference(&now) {
                put(gone.clone(), None);
            }
            changes.alert_keys = now;
            for (key, state) in by_series {
                put(key, Some(Record::Alerts(state)));
            }
        }
        if std::mem::take(&mut changes.pruned)
            && let Some(dora) = self.dora.as_mut()
        {
            for id in dora.take_forgotten() {
                put(keys::event(id), None);
            }
            put(
                vec![keys::PRUNED],
                Some(Record::Pruned(dora.pruned_state())),
            );
        }
        let mut offsets = Vec::new();
        if std::mem::take(&mut changes.offsets_changed) {
            for (topic, next) in &changes.next {
                let offset = KafkaOffset {
                    topic: topic.to_string(),
                    partition,
                    next_offset: *next,
                };
                put(keys::offset(topic), Some(Record::Offset(offset.clone())));
                offsets.push(offset);
            }
        }
        (entries, offsets)
    }

    /// Rebuilds a partition's task from its changelog records (the last
    /// value of each key). Returns it and the input offsets it covers.
    pub fn from_changelog(factory: &TaskFactory, records: ChangelogRecords) -> Restored {
        let mut task = factory.build_changelogged();
        // Nearly every record of a partition is an event.
        let mut events = Vec::with_capacity(records.len());
        let mut red = proto::RedState::default();
        let mut alerts = proto::AlertsState::default();
        let mut pruned = None;
        let mut offsets = Vec::new();
        let Some(changes) = task.changes.as_mut() else {
            return Err("a changelogged task keeps its changes".into());
        };
        for (key, value) in records {
            let record = ChangelogRecord::decode(value.as_slice())
                .map_err(|e| format!("a record of key {:?}: {e}", String::from_utf8_lossy(&key)))?;
            match record.record {
                Some(Record::Event(e)) => events.push(
                    crate::processors::dora::state::from_event_record(e)
                        .map_err(|e| format!("an event record: {e}"))?,
                ),
                Some(Record::Red(series)) => red.series.push(series),
                Some(Record::Alerts(state)) => {
                    changes.alert_keys.insert(key);
                    alerts.active.extend(state.active);
                    alerts.readings.extend(state.readings);
                }
                Some(Record::Pruned(state)) => pruned = Some(state),
                Some(Record::Offset(o)) => {
                    changes
                        .next
                        .insert(Arc::from(o.topic.as_str()), o.next_offset);
                    offsets.push(o);
                }
                Some(Record::Fence(_)) | None => {}
            }
        }
        if let Some(dora) = task.dora.as_mut() {
            if let Some(state) = &pruned {
                dora.restore(state).map_err(|e| format!("dora: {e}"))?;
            }
            // Order does not matter: the history is kept sorted, and what
            // is older than the horizon is dropped as when it came.
            events.sort_by_key(|e| e.time);
            dora.replay(&events);
            // What pruning forgot was deleted already; what it forgets from
            // the replay (events the pruning of the old owner had not yet
            // reached) is deleted with the next flush.
        }
        if let Some(processor) = task.red.as_mut() {
            let reset = processor.restore(&red).map_err(|e| format!("red: {e}"))?;
            if !reset.is_empty() {
                tracing::warn!(
                    ?reset,
                    "red windows recorded with another shape start empty"
                );
            }
        }
        if let Some(processor) = task.alerts.as_mut() {
            processor
                .restore(&alerts)
                .map_err(|e| format!("alerts: {e}"))?;
        }
        Ok((task, offsets))
    }
}

pub use crate::kafka::consumer::ChangelogRecords;

/// What [`Task::from_changelog`] gives for one partition.
pub type Restored = Result<(Task, Vec<KafkaOffset>), String>;

impl Task {
    /// Builds the tasks of several partitions from their records, as
    /// [`Task::from_changelog`] does each, on as many threads as there are
    /// cores (and partitions): a take-over is CPU-bound decoding and
    /// replay, and the partitions share nothing. The results come in no
    /// particular order; a partition whose restore panicked has none.
    pub fn from_changelogs(
        factory: &TaskFactory,
        parts: Vec<(i32, ChangelogRecords)>,
    ) -> Vec<(i32, Restored)> {
        let threads = std::thread::available_parallelism()
            .map_or(1, std::num::NonZeroUsize::get)
            .min(parts.len());
        if threads <= 1 {
            return parts
                .into_iter()
                .map(|(p, records)| (p, Task::from_changelog(factory, records)))
                .collect();
        }
        // Each thread takes the largest partition left (popped from the
        // end): the longest one does not start last.
        let mut queue = parts;
        queue.sort_by_key(|(_, records)| records.len());
        let queue = std::sync::Mutex::new(queue);
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut built = Vec::new();
                        loop {
                            let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                            let Some((p, records)) = next else {
                                return built;
                            };
                            built.push((p, Task::from_changelog(factory, records)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                // A panic in a restore is a bug; its partitions are missing
                // from the results, which the caller says as their failure.
                .flat_map(|w| w.join().unwrap_or_default())
                .collect()
        })
    }
}

impl Changes {
    fn record_events(&mut self, events: &[DeliveryEvent]) {
        self.events.extend(
            events
                .iter()
                .map(crate::processors::dora::state::event_record),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::delivery::{DeploymentOutcome, LinkedChange, Nanos};
    use crate::model::{Signal, delivery::Deployment};
    use crate::otlp::Encoding;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;

    const S: Nanos = 1_000_000_000;
    const DAY: Nanos = 86_400 * S;

    fn factory(retention: &str) -> TaskFactory {
        let config = Config::from_yaml_with_env(
            &format!(
                "receivers:\n  kafka: {{ brokers: k, topics: [{{ topic: t, format: cdevents }}] }}\n\
                 processors:\n  red: {{}}\n  dora: {{ windows: [7d], retention: {retention}, derived_incidents: {{ enabled: false }} }}\n  alerts: {{}}\n\
                 exporters:\n  prometheus: {{}}\n\
                 pipelines:\n  main: {{ receivers: [kafka], processors: [red, dora, alerts], exporters: [prometheus] }}\n"
            ),
            |_| None,
        )
        .expect("valid");
        let (_, pipeline) = config.pipeline().expect("a pipeline");
        TaskFactory::new(&config, pipeline).0
    }

    fn deployment(id: &str, service: &str, at: Nanos, lead: Nanos) -> DeliveryEvent {
        DeliveryEvent {
            id: id.into(),
            time: at,
            kind: crate::model::delivery::DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: service.into(),
                environment: "production".into(),
                artifact: None,
                outcome: DeploymentOutcome::Success,
                changes: vec![LinkedChange {
                    id: format!("change-{id}"),
                    time: Some(at - lead),
                }],
                ..Default::default()
            }),
        }
    }

    fn spans(service: &str, ok: usize, errors: usize) -> Telemetry {
        use crate::otlp::synth::{resource, span, trace_request};
        let t0 = 1_764_000_000_000_000_000u64;
        let spans = (0..ok + errors)
            .map(|i| {
                let status = if i < errors {
                    StatusCode::Error
                } else {
                    StatusCode::Ok
                };
                span(SpanKind::Server, t0, t0 + 2_000_000, status, None)
            })
            .collect();
        let body = trace_request(vec![(resource(Some(service), Some("production")), spans)])
            .encode_to_vec();
        crate::otlp::decode_borrowed(Signal::Traces, Encoding::Protobuf, &body).expect("valid")
    }

    /// The changelog as a broker keeps it: the last value of each key, a
    /// tombstone deleting it.
    fn compact(log: &[Entry]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut state = BTreeMap::new();
        for e in log {
            match &e.value {
                Some(v) => state.insert(e.key.clone(), v.clone()),
                None => state.remove(&e.key),
            };
        }
        state.into_iter().collect()
    }

    type Figures = Vec<(String, u64, Option<f64>, u64, u64)>;

    /// Per series: successful deployments, lead time p50, requests, errors.
    fn figures(task: &mut Task, now: Nanos) -> Figures {
        let dora = task.dora.as_ref().expect("dora").snapshot(now);
        let red = task.red.as_mut().expect("red").snapshot(now as u64);
        let mut out: Figures = dora
            .series
            .iter()
            .map(|s| {
                let r = red.series.iter().find(|r| r.service == s.service);
                (
                    s.service.clone(),
                    s.deployments_total["success"],
                    s.windows[0].lead_time.p50,
                    r.map_or(0, |r| r.totals.requests),
                    r.map_or(0, |r| r.totals.errors),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// What a task wrote to its changelog, over several flushes, rebuilds it
    /// exactly: DORA history, `red` counters, the offsets it covers; a flush
    /// after nothing changed writes nothing.
    #[test]
    fn a_task_rebuilt_from_its_changelog_shows_the_same_figures() {
        let factory = factory("90d");
        let now = 1_764_000_000 * S;
        let topic: Arc<str> = Arc::from("events");
        let mut task = factory.build_changelogged();
        let mut log = Vec::new();
        task.apply(
            &Telemetry::Delivery(vec![
                deployment("d1", "checkout", now - 3 * DAY, 3_600 * S),
                deployment("d2", "checkout", now - 2 * DAY, 7_200 * S),
                deployment("d3", "cart", now - DAY, 600 * S),
            ]),
            now as u64,
            "unknown",
        );
        task.applied_up_to(&topic, 2);
        task.apply(&spans("checkout", 9, 1), now as u64, "unknown");
        task.apply(&spans("cart", 5, 0), now as u64, "unknown");
        task.applied_up_to(&Arc::from("spans"), 7);
        let (entries, offsets) = task.changelog_entries(3);
        assert!(entries.iter().all(|e| e.partition == 3));
        assert_eq!(
            offsets
                .iter()
                .map(|o| (o.topic.as_str(), o.next_offset))
                .collect::<Vec<_>>(),
            [("events", 3), ("spans", 8)]
        );
        log.extend(entries);
        // Nothing changed: nothing to write.
        assert_eq!(task.changelog_entries(3), (Vec::new(), Vec::new()));
        // A replayed event (same id) and more spans of one series.
        task.apply(
            &Telemetry::Delivery(vec![deployment("d3", "cart", now - DAY, 600 * S)]),
            now as u64,
            "unknown",
        );
        task.apply(&spans("cart", 2, 2), now as u64, "unknown");
        task.applied_up_to(&topic, 3);
        let (entries, _) = task.changelog_entries(3);
        let red_keys = entries.iter().filter(|e| e.key[0] == keys::RED).count();
        assert_eq!(red_keys, 1, "only the series that changed");
        log.extend(entries);

        let want = figures(&mut task, now);
        let plain: Vec<_> = want.iter().map(|f| (f.0.as_str(), f.1, f.3, f.4)).collect();
        assert_eq!(plain, [("cart", 1, 9, 2), ("checkout", 2, 10, 1)]);
        // Lead times within the HDR precision: 10 min and 1 h (p50 of 1 h, 2 h).
        assert!((want[0].2.expect("cart") - 600.0).abs() <= 6.0, "{want:?}");
        assert!(
            (want[1].2.expect("checkout") - 3_600.0).abs() <= 36.0,
            "{want:?}"
        );
        let (mut rebuilt, offsets) = Task::from_changelog(&factory, compact(&log)).expect("valid");
        assert_eq!(figures(&mut rebuilt, now), want);
        let mut offsets: Vec<_> = offsets
            .iter()
            .map(|o| (o.topic.clone(), o.next_offset))
            .collect();
        offsets.sort();
        assert_eq!(
            offsets,
            [("events".to_string(), 4), ("spans".to_string(), 8)]
        );
    }

    /// After a prune, the changelog holds the baselines and deletes the
    /// events forgotten: a rebuilt task counts every deployment once,
    /// whether or not the broker compacted.
    #[test]
    fn pruned_history_is_deleted_from_the_changelog_and_kept_in_the_baselines() {
        let factory = factory("10d");
        let now = 1_764_000_000 * S;
        let mut task = factory.build_changelogged();
        let events: Vec<DeliveryEvent> = (0..20)
            .map(|d| deployment(&format!("d{d}"), "checkout", now - d * DAY, 60 * S))
            .collect();
        task.apply(&Telemetry::Delivery(events), now as u64, "unknown");
        let mut log = task.changelog_entries(0).0;
        let forgotten = task.dora.as_mut().expect("dora").prune(now);
        assert_eq!(forgotten, 9, "d11..d19 are before the 10-day cut-off");
        task.pruned();
        let flushed = task.changelog_entries(0).0;
        let tombstones = flushed.iter().filter(|e| e.value.is_none()).count();
        assert_eq!(tombstones, 9);
        log.extend(flushed);
        let total = |t: &Task| {
            t.dora.as_ref().expect("dora").snapshot(now).series[0].deployments_total["success"]
        };
        assert_eq!(total(&task), 20);
        // Compacted or not: the last record of each key wins either way.
        let (rebuilt, _) = Task::from_changelog(&factory, compact(&log)).expect("valid");
        assert_eq!(total(&rebuilt), 20);
        let in_window = |t: &Task| {
            t.dora.as_ref().expect("dora").snapshot(now).series[0].windows[0].deployments
        };
        assert_eq!(in_window(&rebuilt), in_window(&task));
    }
}
