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
    pub fn from_changelog(
        factory: &TaskFactory,
        records: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(Task, Vec<KafkaOffset>), String> {
        let mut task = factory.build_changelogged();
        let mut events = Vec::new();
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

impl Changes {
    fn record_events(&mut self, events: &[DeliveryEvent]) {
        self.events.extend(
            events
                .iter()
                .map(crate::processors::dora::state::event_record),
        );
    }
}
