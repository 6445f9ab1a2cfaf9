//! The engine: the one task that owns every processor's state. It applies
//! each batch from the queue, answers the read side, and on its clocks
//! derives incidents, evaluates alerts, prunes history and checkpoints.

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
use crate::model::Telemetry;
use crate::processors::Applied;
use crate::processors::alerts::{AlertsProcessor, State as AlertState};
use crate::processors::dora::DoraProcessor;
use crate::processors::red::RedProcessor;

use super::build::{Processors, processors};
use super::{Envelope, Figures, Forward, ForwardEvent, PipelineQueue, Query};

/// Owns every processor's state; the only task that touches it.
pub(super) struct Engine {
    pub(super) red: Option<RedProcessor>,
    pub(super) dora: Option<DoraProcessor>,
    pub(super) alerts: Option<(AlertsProcessor, std::time::Duration)>,
    /// Where alert transitions go besides the log and the gauge.
    pub(super) alert_sinks: Vec<AlertSink>,
    /// Where production deployments go as PagerDuty change events.
    pub(super) change_sink: Option<ChangeSink>,
    pub(super) default_environment: String,
    pub(super) clock: Arc<dyn Clock>,
    /// Where derived incidents are forwarded (a Kafka exporter), if anywhere.
    pub(super) forward: Option<mpsc::Sender<Forward>>,
    /// The storage writer and what checkpoints need, with `storage`.
    pub(super) storage: Option<EngineStorage>,
    /// Told the figures once the queue has drained at shutdown (the OTLP
    /// exporter's last push).
    pub(super) last_figures: Option<oneshot::Sender<Figures>>,
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

    async fn run(mut self, queue: PipelineQueue, mut queries: mpsc::Receiver<Query>) {
        let mut data = queue.rx;
        let (mut requests, checkpoint_every) = match self.storage.as_mut() {
            Some(s) => (s.requests.take(), Some(s.interval)),
            None => (None, None),
        };
        let every = checkpoint_every.unwrap_or(std::time::Duration::from_secs(3_600));
        let mut checkpoint = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let depth = gauge!(instruments::QUEUE_DEPTH);
        let interval = match (&self.red, &self.dora) {
            (Some(_), Some(dora)) => dora.derived_interval(),
            _ => None,
        };
        let mut derive =
            tokio::time::interval(interval.unwrap_or(std::time::Duration::from_secs(3600)));
        derive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let alert_interval = self.alerts.as_ref().map(|(_, every)| *every);
        let mut evaluate =
            tokio::time::interval(alert_interval.unwrap_or(std::time::Duration::from_secs(3_600)));
        evaluate.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Delivery history past the retention is forgotten regularly (once
        // an hour on the default retention).
        let mut prune = tokio::time::interval(
            self.dora
                .as_ref()
                .map_or(std::time::Duration::from_secs(3_600), |d| {
                    d.prune_interval()
                }),
        );
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // Reads first: a scrape must not wait behind a full queue.
                biased;
                Some(query) = queries.recv() => self.answer(query),
                Some(done) = recv_some(&mut requests) => self.checkpoint(vec![done]),
                _ = checkpoint.tick(), if checkpoint_every.is_some() => self.checkpoint(Vec::new()),
                _ = derive.tick(), if interval.is_some() => self.derive_incidents(),
                _ = evaluate.tick(), if alert_interval.is_some() => self.evaluate_alerts(),
                _ = prune.tick(), if self.dora.is_some() => {
                    let now = self.clock.now_ns() as i64;
                    if let Some(dora) = self.dora.as_mut() {
                        let forgotten = dora.prune(now);
                        if forgotten > 0 {
                            tracing::info!(forgotten, "delivery history past the retention forgotten");
                        }
                    }
                }
                envelope = data.recv() => {
                    let Some(Envelope { item, ack, forward, source }) = envelope else { break };
                    depth.set(data.len() as f64);
                    let now = self.clock.now_ns();
                    let applied = self.apply(&item, now);
                    if let Some((permit, forward)) = forward {
                        permit.send(forward);
                    }
                    match (self.log_record(&item), self.storage.as_mut()) {
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
                    if let (Some(source), Some(storage)) = (source, self.storage.as_mut()) {
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

    /// The delivery events of `item` as a log record, when there is storage
    /// and a `dora` processor that applied them.
    fn log_record(&self, item: &Telemetry) -> Option<crate::proto::LogRecord> {
        if self.storage.is_none() || self.dora.is_none() {
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
                    .map(|d| d.to_event(&self.default_environment))
                    .collect();
                Some(crate::storage::log_record(&events))
            }
            _ => None,
        }
    }

    /// Hands the whole state to the storage writer as a checkpoint; `done`
    /// hears whether it became durable.
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
            dora: self.dora.as_ref().map(DoraProcessor::to_state),
            alerts: self.alerts.as_ref().map(|(a, _)| a.to_state()),
            red: self.red.as_ref().map(RedProcessor::to_state),
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

    fn apply(&mut self, item: &Telemetry, now: u64) -> Applied {
        let applied = self.apply_to_processors(item, now);
        self.send_change_events(now as i64);
        applied
    }

    /// Production deployments of the last day, as PagerDuty change events
    /// (older ones are backfill: nobody needs to hear of them now).
    fn send_change_events(&mut self, now: i64) {
        let (Some(sink), Some(dora)) = (&self.change_sink, self.dora.as_mut()) else {
            return;
        };
        const DAY: i64 = 86_400_000_000_000;
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

    fn apply_to_processors(&mut self, item: &Telemetry, now: u64) -> Applied {
        if let Telemetry::Delivery(events) = item {
            return self
                .dora
                .as_mut()
                .map(|dora| dora.apply(events))
                .unwrap_or_default();
        }
        if let (Telemetry::Metrics(metrics), Some((alerts, _))) = (item, self.alerts.as_mut())
            && !metrics.utilization.is_empty()
        {
            alerts.observe_utilization(&metrics.utilization, now as i64);
        }
        if let (Telemetry::Logs(logs), Some(dora)) = (item, self.dora.as_mut())
            && !logs.deployments.is_empty()
        {
            let events: Vec<_> = logs
                .deployments
                .iter()
                .map(|d| d.to_event(&self.default_environment))
                .collect();
            dora.apply(&events);
        }
        self.red
            .as_mut()
            .map(|red| red.apply(item, now))
            .unwrap_or_default()
    }

    /// Feeds the services' error ratios to `dora` for derived incidents.
    fn derive_incidents(&mut self) {
        if let (Some(red), Some(dora)) = (&self.red, &mut self.dora) {
            let now = self.clock.now_ns();
            let derived = dora.observe_errors(&red.error_counts(now), now as i64);
            if let Some(storage) = &self.storage
                && !derived.is_empty()
            {
                let events: Vec<_> = derived.iter().map(|d| d.event.clone()).collect();
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

    /// Evaluates the alert rules on the current state and hands every
    /// transition to the alert exporters (this version: the log and the
    /// `doraflow_alerts_firing` gauge).
    fn evaluate_alerts(&mut self) {
        let Some((alerts, _)) = self.alerts.as_mut() else {
            return;
        };
        let now = self.clock.now_ns();
        let mut facts = match &self.dora {
            Some(dora) => dora.alert_facts(now as i64),
            None => Default::default(),
        };
        if let Some(red) = self.red.as_mut() {
            for series in red.snapshot(now).series {
                let f = facts
                    .entry((series.service, series.environment))
                    .or_default();
                f.requests = series.stats.requests;
                f.errors = series.stats.errors;
                f.p95_seconds = series.stats.quantiles_us.map(|q| q[1] as f64 / 1e6);
            }
        }
        for t in alerts.evaluate(&facts, now as i64) {
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

    fn figures(&mut self) -> Figures {
        let now = self.clock.now_ns();
        Figures {
            red: self.red.as_mut().map(|red| red.snapshot(now)),
            dora: self.dora.as_ref().map(|dora| dora.snapshot(now as i64)),
            alerts: self.alerts.as_ref().map(|(a, _)| a.active()),
        }
    }

    fn answer(&mut self, query: Query) {
        match query {
            Query::Report(reply, days) => {
                let now = self.clock.now_ns();
                let _ = reply.send(crate::report::ReportInputs {
                    trend: match (&self.dora, days) {
                        (Some(dora), 1..) => dora.daily_trend(now as i64, days),
                        _ => Vec::new(),
                    },
                    dora: self
                        .dora
                        .as_ref()
                        .map(|d| d.snapshot_with_trend(now as i64)),
                    red: self.red.as_mut().map(|red| red.snapshot(now)),
                    rules: self
                        .alerts
                        .as_ref()
                        .map(|(a, _)| a.rule_table())
                        .unwrap_or_default(),
                    active: self
                        .alerts
                        .as_ref()
                        .map(|(a, _)| a.active())
                        .unwrap_or_default(),
                });
            }
            Query::Figures(reply) => {
                let _ = reply.send(self.figures());
            }
            Query::Red(reply) => {
                let now = self.clock.now_ns();
                let _ = reply.send(self.red.as_mut().map(|red| red.snapshot(now)));
            }
            Query::Alerts(reply) => {
                let _ = reply.send(self.alerts.as_ref().map(|(a, _)| a.active()));
            }
            Query::Dora(reply) => {
                let now = self.clock.now_ns() as i64;
                let _ = reply.send(self.dora.as_ref().map(|dora| dora.snapshot(now)));
            }
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
        let Processors {
            red,
            dora,
            alerts,
            default_environment,
        } = processors(config, pipeline);
        Ok(Replayer {
            engine: Engine {
                red,
                dora,
                alerts,
                alert_sinks: Vec::new(),
                change_sink: None,
                default_environment,
                clock: Arc::new(SystemClock),
                forward: None,
                storage: None,
                last_figures: None,
            },
        })
    }

    /// Applies one batch, as the engine applies a received one.
    pub fn apply(&mut self, item: &Telemetry) -> Applied {
        let now = self.engine.clock.now_ns();
        self.engine.apply(item, now)
    }

    /// Evaluates the alert rules once and returns what the report is made of.
    pub fn finish(&mut self) -> crate::report::ReportInputs {
        self.engine.evaluate_alerts();
        let (reply, mut inputs) = oneshot::channel();
        self.engine.answer(Query::Report(reply, 0));
        inputs.try_recv().unwrap_or_default()
    }
}
