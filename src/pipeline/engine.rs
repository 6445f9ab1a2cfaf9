//! The engine: the one task that owns every processor's state. It applies
//! each batch from the queue, answers the read side, and on its clocks
//! derives incidents, evaluates alerts, prunes history and checkpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::exporters::AlertSink;
use crate::exporters::pagerduty::{ChangeEvent, ChangeSink};
use crate::instruments;
use crate::kafka::changelog::ChangelogWriter;
use crate::model::Telemetry;
use crate::processors::Applied;
use crate::processors::alerts::{ActiveAlert, AlertsProcessor, State as AlertState};
use crate::processors::dependencies::{DependencyProcessor, DependencySnapshot};
use crate::processors::dora::{DoraProcessor, DoraSnapshot};
use crate::processors::red::{RedProcessor, RedSnapshot};

use super::task::{Task, TaskFactory};
use super::{Envelope, Figures, Forward, ForwardEvent, KafkaSource, PipelineQueue, Query};

/// Owns every processor's state; the only task that touches it.
pub(super) struct Engine {
    /// What the local receivers bring (all of it without a changelog).
    pub(super) local: Task,
    /// With the Kafka changelog: per input partition owned, its state.
    pub(super) partitions: BTreeMap<i32, Task>,
    /// Partitions handed over cleanly during a rebalance, kept aside
    /// (hidden) until it ends: one that comes back untouched is not read
    /// from the changelog again.
    pub(super) suspended: BTreeMap<i32, Task>,
    /// Builds empty tasks.
    pub(super) factory: TaskFactory,
    /// How often alert rules are evaluated, with an `alerts` processor.
    pub(super) alert_interval: Option<std::time::Duration>,
    /// Where alert transitions go besides the log and the gauge.
    pub(super) alert_sinks: Vec<AlertSink>,
    /// Where production deployments go as PagerDuty change events.
    pub(super) change_sink: Option<ChangeSink>,
    pub(super) clock: Arc<dyn Clock>,
    /// Where derived incidents are forwarded (a Kafka exporter), if anywhere.
    pub(super) forward: Option<mpsc::Sender<Forward>>,
    /// The storage writer and what checkpoints need, with `storage`.
    pub(super) storage: Option<EngineStorage>,
    /// The changelog writer and what flushes need, with the changelog.
    pub(super) changelog: Option<EngineChangelog>,
    /// Told the figures once the queue has drained at shutdown (the OTLP
    /// exporter's last push).
    pub(super) last_figures: Option<oneshot::Sender<Figures>>,
    /// The `dependencies` processor, if the pipeline has one. One per
    /// replica, not per partition: the service graph pairs spans of
    /// different services, which different partitions hold.
    pub(super) dependencies: Option<DependencyProcessor>,
}

/// The engine's side of the Kafka changelog.
pub(super) struct EngineChangelog {
    pub(super) writer: ChangelogWriter,
    /// How often what changed is flushed (the commit interval).
    pub(super) interval: std::time::Duration,
    /// Flushes asked for (a hand-over, a stop), each told once committed.
    pub(super) requests: Option<mpsc::Receiver<oneshot::Sender<bool>>>,
    /// Partitions installed (restored) and dropped by the Kafka consumer.
    pub(super) control: Option<mpsc::Receiver<Ownership>>,
}

/// A change of the partitions this replica owns, from the Kafka consumer.
pub enum Ownership {
    /// A partition's task, restored from the changelog, to own from now on.
    Install {
        /// The input partition.
        partition: i32,
        /// Its state.
        task: Box<Task>,
        /// Told once installed.
        done: oneshot::Sender<()>,
    },
    /// Partitions no longer owned (their state is flushed already): their
    /// series leave the exposition, the alerts and the report.
    Drop {
        /// The input partitions.
        partitions: Vec<i32>,
        /// Keep their state aside, hidden: it is all in the changelog, and
        /// the partitions may come back at the end of the rebalance.
        keep: bool,
        /// Told once dropped.
        done: oneshot::Sender<()>,
    },
    /// Of the partitions kept aside, these are owned again, untouched by
    /// anyone since: their state comes back as it was. The others kept
    /// aside are forgotten. Told which came back.
    Resume {
        /// The input partitions.
        partitions: Vec<i32>,
        /// Told the partitions whose state came back.
        done: oneshot::Sender<Vec<i32>>,
    },
}

/// The engine's side of the Kafka consumer's partitions: builds their
/// tasks from the changelog and hands them to the engine, which owns them.
pub(super) struct EngineStates {
    pub(super) factory: TaskFactory,
    pub(super) ownership: mpsc::Sender<Ownership>,
}

impl crate::kafka::consumer::PartitionStates for EngineStates {
    fn fence(&self, partition: i32) -> (Vec<u8>, Vec<u8>) {
        super::task::fence(partition)
    }

    fn install(
        &self,
        parts: Vec<(i32, crate::kafka::consumer::ChangelogRecords)>,
    ) -> Result<crate::kafka::consumer::Installed, crate::kafka::consumer::Stopped> {
        use crate::kafka::consumer::Stopped;
        let mut out = Vec::new();
        for (partition, built) in Task::from_changelogs(&self.factory, parts) {
            let (task, offsets) = match built {
                Ok(built) => built,
                Err(e) => {
                    out.push((partition, Err(e)));
                    continue;
                }
            };
            let (done, installed) = oneshot::channel();
            self.ownership
                .blocking_send(Ownership::Install {
                    partition,
                    task: Box::new(task),
                    done,
                })
                .map_err(|_| Stopped)?;
            installed.blocking_recv().map_err(|_| Stopped)?;
            out.push((partition, Ok(offsets)));
        }
        Ok(out)
    }

    fn resume(&self, partitions: Vec<i32>) -> Result<Vec<i32>, crate::kafka::consumer::Stopped> {
        use crate::kafka::consumer::Stopped;
        let (done, resumed) = oneshot::channel();
        self.ownership
            .blocking_send(Ownership::Resume { partitions, done })
            .map_err(|_| Stopped)?;
        resumed.blocking_recv().map_err(|_| Stopped)
    }

    fn drop_partitions(&self, partitions: Vec<i32>, keep: bool) {
        let (done, dropped) = oneshot::channel();
        if self
            .ownership
            .blocking_send(Ownership::Drop {
                partitions,
                keep,
                done,
            })
            .is_ok()
        {
            let _ = dropped.blocking_recv();
        }
    }
}

/// The engine's side of `storage`.
pub(super) struct EngineStorage {
    pub(super) writer: crate::storage::Writer,
    /// The log segment being appended to.
    pub(super) segment: u64,
    pub(super) interval: std::time::Duration,
    /// Per Kafka partition, the next offset to apply.
    pub(super) kafka_next: std::collections::HashMap<(Arc<str>, i32), i64>,
    /// Checkpoints asked for (a Kafka hand-over), each told once durable.
    pub(super) requests: Option<mpsc::Receiver<oneshot::Sender<bool>>>,
}

/// The next item of an optional channel; never, without one.
async fn recv_some<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

impl Engine {
    /// [`Self::run`], as a supervised component.
    pub(super) async fn run_to_end(
        self,
        queue: PipelineQueue,
        queries: mpsc::Receiver<Query>,
    ) -> anyhow::Result<()> {
        self.run(queue, queries).await;
        Ok(())
    }

    fn tasks(&self) -> impl Iterator<Item = &Task> {
        std::iter::once(&self.local).chain(self.partitions.values())
    }

    fn tasks_mut(&mut self) -> impl Iterator<Item = &mut Task> {
        std::iter::once(&mut self.local).chain(self.partitions.values_mut())
    }

    async fn run(mut self, queue: PipelineQueue, mut queries: mpsc::Receiver<Query>) {
        let mut data = queue.rx;
        let (mut requests, checkpoint_every) = match self.storage.as_mut() {
            Some(s) => (s.requests.take(), Some(s.interval)),
            None => (None, None),
        };
        let (mut flushes, mut control, flush_every) = match self.changelog.as_mut() {
            Some(c) => (c.requests.take(), c.control.take(), Some(c.interval)),
            None => (None, None, None),
        };
        let hour = std::time::Duration::from_secs(3_600);
        let every = checkpoint_every.unwrap_or(hour);
        let mut checkpoint = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let every = flush_every.unwrap_or(hour);
        let mut flush = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let depth = gauge!(instruments::QUEUE_DEPTH);
        let interval = match (&self.local.red, &self.local.dora) {
            (Some(_), Some(dora)) => dora.derived_interval(),
            _ => None,
        };
        let mut derive = tokio::time::interval(interval.unwrap_or(hour));
        derive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let alert_interval = self.alert_interval;
        let mut evaluate = tokio::time::interval(alert_interval.unwrap_or(hour));
        evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Delivery history past the retention is forgotten regularly (once
        // an hour on the default retention).
        let has_dora = self.local.dora.is_some();
        let mut prune = tokio::time::interval(
            self.local
                .dora
                .as_ref()
                .map_or(hour, |d| d.prune_interval()),
        );
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A test aid, in debug builds only: the back-pressure tests hold the
        // engine this long after each batch, so that the queue fills for
        // certain on any machine rather than when the scheduler happens to
        // let it.
        #[cfg(debug_assertions)]
        let hold = std::env::var("DORAFLOW_TEST_ENGINE_HOLD_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(std::time::Duration::from_millis);
        loop {
            tokio::select! {
                // Reads first: a scrape must not wait behind a full queue.
                biased;
                Some(query) = queries.recv() => self.answer(query),
                Some(change) = recv_some(&mut control) => self.own(change),
                Some(done) = recv_some(&mut flushes) => self.flush_changelog(vec![done]),
                Some(done) = recv_some(&mut requests) => self.checkpoint(vec![done]),
                _ = flush.tick(), if flush_every.is_some() => self.flush_changelog(Vec::new()),
                _ = checkpoint.tick(), if checkpoint_every.is_some() => self.checkpoint(Vec::new()),
                _ = derive.tick(), if interval.is_some() => self.derive_incidents(),
                _ = evaluate.tick(), if alert_interval.is_some() => self.evaluate_alerts(),
                _ = prune.tick(), if has_dora => self.prune(),
                envelope = data.recv() => {
                    let Some(Envelope { item, ack, forward, source }) = envelope else { break };
                    depth.set(data.len() as f64);
                    let now = self.clock.now_ns();
                    let applied = self.apply(&item, now, source.as_ref());
                    #[cfg(debug_assertions)]
                    if let Some(hold) = hold {
                        tokio::time::sleep(hold).await;
                    }
                    if let Some((permit, forward)) = forward {
                        permit.send(forward);
                    }
                    // With the changelog, what Kafka brought is its task's,
                    // and the changelog (not the storage log) keeps it.
                    let logged = source.is_none() || self.changelog.is_none();
                    match (self.log_record(&item).filter(|_| logged), self.storage.as_mut()) {
                        (Some(record), Some(storage)) => {
                            // Acknowledged once the log holding it is durable.
                            storage.writer.send(crate::storage::Command::Append {
                                record,
                                acks: vec![(ack, applied)],
                            });
                        }
                        // The client may have gone; its data is applied all the same.
                        _ => {
                            let _ = ack.send(applied);
                        }
                    }
                    if let (Some(source), Some(storage)) = (source, self.storage.as_mut())
                        && self.changelog.is_none()
                    {
                        storage
                            .kafka_next
                            .insert((source.topic, source.partition), source.offset + 1);
                    }
                }
            }
        }
        depth.set(0.0);
        tracing::debug!("pipeline drained");
        if let Some(last) = self.last_figures.take() {
            let _ = last.send(self.figures());
        }
        if self.changelog.is_some() {
            let (done, committed) = oneshot::channel();
            self.flush_changelog(vec![done]);
            if committed.await == Ok(true) {
                tracing::info!("final changelog flush committed");
            } else {
                tracing::error!(
                    "the final changelog flush failed; the input offsets after the last one stay uncommitted and are read again"
                );
            }
        }
        if self.storage.is_some() {
            let (done, durable) = oneshot::channel();
            self.checkpoint(vec![done]);
            if let Some(storage) = self.storage.take() {
                let _ = tokio::task::spawn_blocking(move || storage.writer.stop()).await;
            }
            if durable.await == Ok(true) {
                tracing::info!("final checkpoint written");
            } else {
                tracing::error!(
                    "the final checkpoint failed; the log still holds the delivery events"
                );
            }
        }
    }

    /// Installs or drops partitions' tasks as the Kafka consumer says.
    fn own(&mut self, change: Ownership) {
        match change {
            Ownership::Install {
                partition,
                task,
                done,
            } => {
                if let Some(alerts) = task.alerts.as_ref() {
                    firing_gauges(alerts, 1.0);
                    super::restore::resume_firing(alerts, &self.alert_sinks);
                }
                self.partitions.insert(partition, *task);
                let _ = done.send(());
            }
            Ownership::Resume { partitions, done } => {
                let mut resumed = Vec::new();
                for (partition, task) in std::mem::take(&mut self.suspended) {
                    if partitions.contains(&partition) {
                        if let Some(alerts) = task.alerts.as_ref() {
                            firing_gauges(alerts, 1.0);
                            super::restore::resume_firing(alerts, &self.alert_sinks);
                        }
                        self.partitions.insert(partition, task);
                        resumed.push(partition);
                    }
                }
                let _ = done.send(resumed);
            }
            Ownership::Drop {
                partitions,
                keep,
                done,
            } => {
                if let Some(changelog) = &self.changelog {
                    changelog.writer.forget(partitions.clone());
                }
                for partition in partitions {
                    let Some(task) = self.partitions.remove(&partition) else {
                        continue;
                    };
                    // Handed over, not resolved: the new owner fires them
                    // (the same keys), so nothing is sent from here.
                    if let Some(alerts) = task.alerts.as_ref() {
                        firing_gauges(alerts, 0.0);
                        let firing = super::restore::firing_transitions(alerts);
                        for sink in &self.alert_sinks {
                            sink.hand_over(&firing);
                        }
                    }
                    if keep {
                        self.suspended.insert(partition, task);
                    }
                }
                let _ = done.send(());
            }
        }
    }

    /// Hands what every partition's task changed to the changelog writer,
    /// with the input offsets it covers; `done` hears once it is committed.
    fn flush_changelog(&mut self, done: Vec<oneshot::Sender<bool>>) {
        let Some(changelog) = self.changelog.as_ref() else {
            for d in done {
                let _ = d.send(false);
            }
            return;
        };
        let mut entries = Vec::new();
        let mut offsets = Vec::new();
        for (partition, task) in self.partitions.iter_mut() {
            let (e, o) = task.changelog_entries(*partition);
            entries.extend(e);
            offsets.extend(o);
        }
        if entries.is_empty() && done.is_empty() {
            return;
        }
        changelog.writer.flush(entries, offsets, done);
    }

    fn prune(&mut self) {
        let now = self.clock.now_ns() as i64;
        let mut forgotten = 0;
        for task in self.tasks_mut() {
            if let Some(dora) = task.dora.as_mut() {
                let n = dora.prune(now);
                if n > 0 {
                    forgotten += n;
                    task.pruned();
                }
            }
        }
        if forgotten > 0 {
            tracing::info!(forgotten, "delivery history past the retention forgotten");
        }
    }

    /// The delivery events of `item` as a log record, when there is storage
    /// and a `dora` processor that applied them.
    fn log_record(&self, item: &Telemetry) -> Option<crate::proto::LogRecord> {
        if self.storage.is_none() || self.local.dora.is_none() {
            return None;
        }
        match item {
            Telemetry::Delivery(events) if !events.is_empty() => {
                Some(crate::storage::log_record(events))
            }
            Telemetry::Logs(logs) if !logs.deployments.is_empty() => {
                let events: Vec<_> = logs
                    .deployments
                    .iter()
                    .map(|d| d.to_event(self.factory.default_environment()))
                    .collect();
                Some(crate::storage::log_record(&events))
            }
            _ => None,
        }
    }

    /// Hands the local state to the storage writer as a checkpoint; `done`
    /// hears whether it became durable. (With the changelog, the
    /// partitions' state is the changelog's, not the checkpoint's.)
    fn checkpoint(&mut self, done: Vec<oneshot::Sender<bool>>) {
        let Some(storage) = self.storage.as_mut() else {
            for d in done {
                let _ = d.send(false);
            }
            return;
        };
        storage.segment += 1;
        let checkpoint = crate::proto::Checkpoint {
            format_version: crate::storage::FORMAT_VERSION,
            written_at_ns: self.clock.now_ns() as i64,
            log_segment: storage.segment,
            dora: self.local.dora.as_ref().map(DoraProcessor::to_state),
            alerts: self.local.alerts.as_ref().map(AlertsProcessor::to_state),
            red: self.local.red.as_ref().map(RedProcessor::to_state),
            dependencies: self
                .dependencies
                .as_ref()
                .map(DependencyProcessor::to_state),
            outbox: self
                .alert_sinks
                .iter()
                .flat_map(|sink| {
                    sink.undelivered()
                        .into_iter()
                        .map(|t| crate::proto::OutboxRecord {
                            exporter: sink.exporter().to_string(),
                            alertname: t.alertname.to_string(),
                            service: t.service,
                            environment: t.environment,
                            resolved: t.state == AlertState::Resolved,
                            at_ns: t.at,
                            value: t.value,
                        })
                })
                .collect(),
            kafka_offsets: storage
                .kafka_next
                .iter()
                .map(|((topic, partition), next)| crate::proto::KafkaOffset {
                    topic: topic.to_string(),
                    partition: *partition,
                    next_offset: *next,
                })
                .collect(),
        };
        storage.writer.send(crate::storage::Command::Checkpoint {
            checkpoint: Box::new(checkpoint),
            done,
        });
    }

    fn apply(&mut self, item: &Telemetry, now: u64, source: Option<&KafkaSource>) -> Applied {
        if let Some(dependencies) = self.dependencies.as_mut() {
            match item {
                Telemetry::Traces(traces) => dependencies.apply_traces(traces, now),
                Telemetry::Metrics(metrics) => dependencies.apply_metrics(metrics, now),
                _ => {}
            }
        }
        let factory = &self.factory;
        let task = match (source, &self.changelog) {
            (Some(source), Some(_)) => {
                let task = self
                    .partitions
                    .entry(source.partition)
                    // The consumer installs a partition's task before it
                    // reads it; an empty one only if it was never written.
                    .or_insert_with(|| factory.build_changelogged());
                task.applied_up_to(&source.topic, source.offset);
                task
            }
            _ => &mut self.local,
        };
        let applied = task.apply(item, now, factory.default_environment());
        self.send_change_events(now as i64);
        applied
    }

    /// Production deployments of the last day, as PagerDuty change events
    /// (older ones are backfill: nobody needs to hear of them now).
    fn send_change_events(&mut self, now: i64) {
        let Some(sink) = &self.change_sink else {
            return;
        };
        const DAY: i64 = 86_400_000_000_000;
        let tasks = std::iter::once(&mut self.local).chain(self.partitions.values_mut());
        for task in tasks {
            let Some(dora) = task.dora.as_mut() else {
                continue;
            };
            for (d, at) in dora.take_production_deployments() {
                if now - at <= DAY {
                    sink.send(ChangeEvent {
                        service: d.service,
                        environment: d.environment,
                        at,
                        outcome: d.outcome.as_str(),
                        artifact: d.artifact,
                    });
                }
            }
        }
    }

    /// Runs the regression check and feeds the services' error ratios to
    /// `dora` for derived incidents; what they decide is logged like any
    /// delivery event (a partition's in its changelog).
    fn derive_incidents(&mut self) {
        let now = self.clock.now_ns();
        let mut all = Vec::new();
        let tasks = std::iter::once((true, &mut self.local))
            .chain(self.partitions.values_mut().map(|t| (false, t)));
        for (local, task) in tasks {
            let (Some(red), Some(dora)) = (&mut task.red, &mut task.dora) else {
                continue;
            };
            // Verdicts first: a regression's incident takes over the error
            // ratio's, which then does not open another.
            let mut events = dora.check_regressions(red, now as i64);
            let derived = dora.observe_errors(&red.error_counts(now), now as i64);
            if derived.is_empty() && events.is_empty() {
                continue;
            }
            events.extend(derived.iter().map(|d| d.event.clone()));
            task.derived(&events);
            all.push((local, events, derived));
        }
        for (local, events, derived) in all {
            // A partition's derived incidents are in its changelog; the
            // storage log holds the local task's only.
            if let Some(storage) = self.storage.as_ref().filter(|_| local) {
                storage.writer.send(crate::storage::Command::Append {
                    record: crate::storage::log_record(&events),
                    acks: Vec::new(),
                });
            }
            for incident in derived {
                tracing::info!(
                    incident = incident.event.id,
                    service = incident.service,
                    environment = incident.environment,
                    "derived incident event"
                );
                if let Some(forward) = &self.forward {
                    let json = Bytes::from(incident.to_cdevent().to_string());
                    let event = ForwardEvent {
                        key: incident.service.clone(),
                        json,
                    };
                    if forward.try_send(Forward::Events(vec![event])).is_err() {
                        counter!(instruments::EXPORTER_DROPPED, "exporter" => "kafka", "reason" => "queue_full")
                            .increment(1);
                    }
                }
            }
        }
    }

    /// Evaluates the alert rules of every task on its current state and
    /// hands every transition to the alert exporters, the log and the
    /// `doraflow_alerts_firing` gauge.
    fn evaluate_alerts(&mut self) {
        let now = self.clock.now_ns();
        let mut transitions = Vec::new();
        // The dependencies are the replica's, not a partition's: the local
        // task's rules look at them.
        let wanted = self
            .local
            .alerts
            .as_ref()
            .is_some_and(AlertsProcessor::reads_dependencies);
        let mut dependency_facts = self
            .dependencies
            .as_mut()
            .filter(|_| wanted)
            .map(|d| dependency_facts(&d.snapshot(now)));
        for task in std::iter::once(&mut self.local).chain(self.partitions.values_mut()) {
            let Some(alerts) = task.alerts.as_mut() else {
                continue;
            };
            let mut facts = match &task.dora {
                Some(dora) => dora.alert_facts(now as i64),
                None => Default::default(),
            };
            for (series, d) in dependency_facts.take().into_iter().flatten() {
                let f = facts.entry(series).or_default();
                f.dependencies = d.dependencies;
                f.caches = d.caches;
                f.queues = d.queues;
            }
            if let Some(red) = task.red.as_mut() {
                for series in red.snapshot(now).series {
                    let f = facts
                        .entry((series.service, series.environment))
                        .or_default();
                    f.requests = series.stats.requests;
                    f.errors = series.stats.errors;
                    f.p95_seconds = series.stats.quantiles_us.map(|q| q[1] as f64 / 1e6);
                }
            }
            let made = alerts.evaluate(&facts, now as i64);
            if !made.is_empty() {
                task.alerts_changed();
            }
            transitions.extend(made);
        }
        for t in transitions {
            for sink in &self.alert_sinks {
                sink.send(&t);
            }
            let firing = gauge!(
                instruments::ALERTS_FIRING,
                "alertname" => t.alertname,
                "service" => t.service.clone(),
                "environment" => t.environment.clone(),
                "severity" => t.severity.as_str()
            );
            match t.state {
                AlertState::Firing => {
                    firing.set(1.0);
                    tracing::warn!(
                        alertname = t.alertname,
                        service = t.service,
                        environment = t.environment,
                        severity = t.severity.as_str(),
                        value = t.value,
                        threshold = t.threshold,
                        "alert firing: {}",
                        t.summary
                    );
                }
                AlertState::Resolved => {
                    firing.set(0.0);
                    tracing::info!(
                        alertname = t.alertname,
                        service = t.service,
                        environment = t.environment,
                        severity = t.severity.as_str(),
                        "alert resolved: {}",
                        t.summary
                    );
                }
                AlertState::Pending => {
                    tracing::info!(
                        alertname = t.alertname,
                        service = t.service,
                        environment = t.environment,
                        "alert pending: {}",
                        t.summary
                    );
                }
            }
        }
    }

    fn red_snapshot(&mut self, now: u64) -> Option<RedSnapshot> {
        let mut merged: Option<RedSnapshot> = None;
        for task in std::iter::once(&mut self.local).chain(self.partitions.values_mut()) {
            let Some(red) = task.red.as_mut() else {
                continue;
            };
            let snapshot = red.snapshot(now);
            match merged.as_mut() {
                None => merged = Some(snapshot),
                Some(m) => {
                    m.series.extend(snapshot.series);
                    m.window_bytes += snapshot.window_bytes;
                }
            }
        }
        merged
    }

    fn dependencies_snapshot(&mut self, now: u64) -> Option<DependencySnapshot> {
        self.dependencies.as_mut().map(|d| d.snapshot(now))
    }

    fn dora_parts(&self) -> Vec<&DoraProcessor> {
        self.tasks().filter_map(|t| t.dora.as_ref()).collect()
    }

    fn dora_snapshot(&self, now: i64, trend: bool) -> Option<DoraSnapshot> {
        DoraProcessor::snapshot_of(&self.dora_parts(), now, trend)
    }

    fn active_alerts(&self) -> Option<Vec<ActiveAlert>> {
        self.local.alerts.as_ref()?;
        Some(
            self.tasks()
                .filter_map(|t| t.alerts.as_ref())
                .flat_map(AlertsProcessor::active)
                .collect(),
        )
    }

    fn figures(&mut self) -> Figures {
        let now = self.clock.now_ns();
        Figures {
            red: self.red_snapshot(now),
            dora: self.dora_snapshot(now as i64, false),
            alerts: self.active_alerts(),
            dependencies: self.dependencies_snapshot(now),
        }
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Report(reply, days) => {
                let now = self.clock.now_ns();
                let trend = match days {
                    1.. if self.local.dora.is_some() => {
                        DoraProcessor::daily_trend_of(&self.dora_parts(), now as i64, days)
                    }
                    _ => Vec::new(),
                };
                let _ = reply.send(crate::report::ReportInputs {
                    trend,
                    dora: self.dora_snapshot(now as i64, true),
                    red: self.red_snapshot(now),
                    rules: self
                        .local
                        .alerts
                        .as_ref()
                        .map(AlertsProcessor::rule_table)
                        .unwrap_or_default(),
                    active: self.active_alerts().unwrap_or_default(),
                });
            }
            Query::Figures(reply) => {
                let _ = reply.send(self.figures());
            }
            Query::Red(reply) => {
                let now = self.clock.now_ns();
                let _ = reply.send(self.red_snapshot(now));
            }
            Query::Dependencies(reply) => {
                let now = self.clock.now_ns();
                let _ = reply.send(self.dependencies_snapshot(now));
            }
            Query::Alerts(reply) => {
                let _ = reply.send(self.active_alerts());
            }
            Query::Dora(reply) => {
                let now = self.clock.now_ns() as i64;
                let _ = reply.send(self.dora_snapshot(now, false));
            }
        }
    }
}

/// The `dependencies` figures as the alert rules read them, per (service,
/// environment): each series' dependencies, caches and queues.
fn dependency_facts(
    snapshot: &DependencySnapshot,
) -> BTreeMap<(String, String), crate::processors::alerts::Facts> {
    use crate::processors::alerts::{CacheFact, DependencyFact, Facts};
    let mut facts: BTreeMap<(String, String), Facts> = BTreeMap::new();
    fn of<'a>(
        facts: &'a mut BTreeMap<(String, String), Facts>,
        service: &str,
        environment: &str,
    ) -> &'a mut Facts {
        facts
            .entry((service.to_string(), environment.to_string()))
            .or_default()
    }
    for d in &snapshot.dependencies {
        let name = [
            d.system.as_str(),
            d.dependency.as_str(),
            d.operation.as_str(),
        ]
        .into_iter()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        of(&mut facts, &d.service, &d.environment)
            .dependencies
            .push(DependencyFact {
                name,
                calls: d.window.requests,
                errors: d.window.errors,
                p95_seconds: d.window.quantiles_us.map(|q| q[1] as f64 / 1e6),
            });
    }
    for c in &snapshot.caches {
        of(&mut facts, &c.service, &c.environment)
            .caches
            .push(CacheFact {
                name: c.cache.clone(),
                lookups: c.window_lookups,
                hit_ratio: c.hit_ratio,
            });
    }
    for q in &snapshot.queues {
        let name = if q.destination.is_empty() {
            q.metric.clone()
        } else {
            format!("{} ({})", q.destination, q.metric)
        };
        of(&mut facts, &q.service, &q.environment)
            .queues
            .push((name, q.last));
    }
    facts
}

/// Sets `doraflow_alerts_firing` of `alerts`' firing alerts to `value`: 1
/// when a partition's task arrives, 0 when it leaves (the new owner shows 1).
fn firing_gauges(alerts: &AlertsProcessor, value: f64) {
    for alert in alerts.active() {
        if alert.state == AlertState::Firing {
            gauge!(
                instruments::ALERTS_FIRING,
                "alertname" => alert.alertname,
                "service" => alert.service,
                "environment" => alert.environment,
                "severity" => alert.severity.as_str()
            )
            .set(value);
        }
    }
}

/// The processors of a configuration's pipeline, run in-process over
/// recorded data: `doraflow replay`. No receivers, no exporters: nothing
/// pages, nothing is forwarded. Alerts are evaluated once, at the end, for
/// the report.
pub struct Replayer {
    engine: Engine,
}

impl Replayer {
    /// The processors `config`'s pipeline names, as `run` would build them.
    pub fn new(config: &Config) -> anyhow::Result<Replayer> {
        let (_, pipeline) = config.pipeline().context("no pipeline configured")?;
        let (factory, alert_interval) = TaskFactory::new(config, pipeline);
        Ok(Replayer {
            engine: Engine {
                local: factory.build(),
                partitions: BTreeMap::new(),
                suspended: BTreeMap::new(),
                factory,
                alert_interval,
                alert_sinks: Vec::new(),
                change_sink: None,
                clock: Arc::new(SystemClock),
                forward: None,
                storage: None,
                changelog: None,
                last_figures: None,
                // The report reads none of its figures.
                dependencies: None,
            },
        })
    }

    /// Applies one batch, as the engine applies a received one.
    pub fn apply(&mut self, item: &Telemetry) -> Applied {
        let now = self.engine.clock.now_ns();
        self.engine.apply(item, now, None)
    }

    /// Evaluates the alert rules once and returns what the report is made of.
    pub fn finish(&mut self) -> crate::report::ReportInputs {
        self.engine.evaluate_alerts();
        let (reply, mut inputs) = oneshot::channel();
        self.engine.answer(Query::Report(reply, 0));
        inputs.try_recv().unwrap_or_default()
    }
}
