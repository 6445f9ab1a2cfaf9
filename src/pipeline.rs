//! Builds components from config, wires them with bounded channels, and owns
//! their lifecycle.
//!
//! Data flows one way: receivers → [`PipelineSink`] (a bounded queue) → the
//! engine task, which owns every processor's state → exporters, which read
//! snapshots through [`PipelineReader`]. A receiver never waits for queue
//! space: a full queue is answered at once with back-pressure
//! (RESOURCE_EXHAUSTED / 429), so memory stays bounded. Each batch carries an
//! acknowledgement, so an export call returns only once its data is applied
//! and the client's partial-success answer is exact.
//!
//! Shutdown is ordered: stop the receivers, let the engine drain the queue,
//! then stop the exporters.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use bytes::Bytes;
use metrics::{counter, gauge};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::exporters::AlertSink;
use crate::exporters::pagerduty::{ChangeEvent, ChangeSink};
use crate::exporters::prometheus::{self, PrometheusExporter};
use crate::exporters::{alertmanager, pagerduty};
use crate::instruments;
use crate::model::{Signal, Telemetry};
use crate::processors::Applied;
use crate::processors::alerts::{ActiveAlert, AlertsProcessor, State as AlertState, Transition};
use crate::processors::dora::{DoraProcessor, DoraSnapshot};
use crate::processors::red::{RedProcessor, RedSnapshot};
use crate::receivers::{otlp_grpc, otlp_http, webhook};

/// One batch on its way to the engine, with the acknowledgement to send back.
struct Envelope {
    item: Telemetry,
    ack: oneshot::Sender<Applied>,
    /// The batch as it is forwarded, with its reserved place in the
    /// forwarding queue: sent once the batch is applied.
    forward: Option<(mpsc::OwnedPermit<Forward>, Forward)>,
    /// The Kafka message it came from, for the checkpoint's offsets.
    source: Option<KafkaSource>,
}

/// Where a batch read from Kafka came from.
#[derive(Debug, Clone)]
pub struct KafkaSource {
    /// The topic.
    pub topic: Arc<str>,
    /// The partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
}

/// A batch as a forwarding exporter (Kafka) sends it on: the bytes as
/// received, not the summary the processors read.
#[derive(Debug, Clone)]
pub enum Forward {
    /// An OTLP export request, protobuf-encoded.
    Otlp {
        /// Its signal.
        signal: Signal,
        /// The request.
        body: Bytes,
    },
    /// CDEvents, each structured JSON with its partition key.
    Events(Vec<ForwardEvent>),
}

/// One CDEvent to forward.
#[derive(Debug, Clone)]
pub struct ForwardEvent {
    /// The partition key: the event's service (see [`crate::cdevents::forward_key`]).
    pub key: String,
    /// The event, structured-mode JSON.
    pub json: Bytes,
}

/// Why a batch was not accepted into the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// The queue is full: the client should retry later.
    #[error("the pipeline queue is full")]
    Full,
    /// The pipeline is shutting down.
    #[error("the pipeline is shutting down")]
    Closed,
}

/// The receivers' end of a pipeline's queue.
#[derive(Clone)]
pub struct PipelineSink {
    tx: mpsc::Sender<Envelope>,
    forward: Option<mpsc::Sender<Forward>>,
    /// The memory limiter, if the pipeline has one.
    memory: Option<crate::memory::MemoryGate>,
}

impl PipelineSink {
    /// Queues a batch and waits until it is applied. Refuses at once when the
    /// queue is full.
    pub async fn submit(&self, item: Telemetry) -> Result<Applied, SubmitError> {
        self.submit_forwarding(item, None).await
    }

    /// True while the pipeline's memory limiter refuses new data: receivers
    /// then refuse a request before reading its body.
    pub fn memory_refusing(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.refusing())
    }

    /// The memory limiter's spike room, bytes, if the pipeline has one.
    pub fn memory_spike_bytes(&self) -> Option<u64> {
        self.memory.as_ref().map(|m| m.spike_bytes())
    }

    /// Whether the pipeline forwards what it receives (a Kafka exporter):
    /// receivers then keep the bytes as received for [`Self::submit_forwarding`].
    pub fn forwards(&self) -> bool {
        self.forward.is_some()
    }

    /// As [`Self::submit`], and once applied the batch is forwarded as
    /// `forward`. A full forwarding queue refuses the batch like a full
    /// pipeline queue: nothing is applied, the client retries.
    pub async fn submit_forwarding(
        &self,
        item: Telemetry,
        forward: Option<Forward>,
    ) -> Result<Applied, SubmitError> {
        let applied = self.enqueue(item, forward).map_err(|(e, _)| e)?;
        applied.await.map_err(|_| SubmitError::Closed)
    }

    /// Queues a batch without waiting: the receiver gets the batch back when
    /// the queue is full, to retry, and otherwise a receiver for the
    /// acknowledgement. For receivers that pipeline their batches (Kafka).
    #[allow(clippy::result_large_err)]
    pub fn enqueue(
        &self,
        item: Telemetry,
        forward: Option<Forward>,
    ) -> Result<oneshot::Receiver<Applied>, (SubmitError, Telemetry)> {
        self.enqueue_from(item, forward, None)
    }

    /// As [`Self::enqueue`], for a batch read from a Kafka message: with
    /// storage, the checkpoint records the partition's offset.
    #[allow(clippy::result_large_err)]
    pub fn enqueue_from(
        &self,
        item: Telemetry,
        forward: Option<Forward>,
        source: Option<KafkaSource>,
    ) -> Result<oneshot::Receiver<Applied>, (SubmitError, Telemetry)> {
        // Above the memory limiter's soft limit, push back like a full queue.
        if self.memory.as_ref().is_some_and(|m| m.refusing()) {
            return Err((SubmitError::Full, item));
        }
        let forward = match (&self.forward, forward) {
            (Some(tx), Some(f)) => match tx.clone().try_reserve_owned() {
                Ok(permit) => Some((permit, f)),
                Err(mpsc::error::TrySendError::Full(_)) => return Err((SubmitError::Full, item)),
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err((SubmitError::Closed, item));
                }
            },
            _ => None,
        };
        let (ack, applied) = oneshot::channel();
        self.tx
            .try_send(Envelope {
                item,
                ack,
                forward,
                source,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(e) => (SubmitError::Full, e.item),
                mpsc::error::TrySendError::Closed(e) => (SubmitError::Closed, e.item),
            })?;
        Ok(applied)
    }
}

/// The engine's end of a pipeline's queue.
pub struct PipelineQueue {
    rx: mpsc::Receiver<Envelope>,
}

/// A bounded queue of `capacity` batches: receivers submit into the sink, the
/// engine drains the queue. Holding the queue without draining it stalls the
/// pipeline, which is how tests exercise back-pressure.
pub fn queue(capacity: usize) -> (PipelineSink, PipelineQueue) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (
        PipelineSink {
            tx,
            forward: None,
            memory: None,
        },
        PipelineQueue { rx },
    )
}

/// As [`queue`], with applied batches forwarded into `forward`.
pub fn forwarding_queue(
    capacity: usize,
    forward: mpsc::Sender<Forward>,
) -> (PipelineSink, PipelineQueue) {
    let (mut sink, queue) = queue(capacity);
    sink.forward = Some(forward);
    (sink, queue)
}

/// The processors' figures at one instant, as pushed by the OTLP exporter.
#[derive(Debug, Default)]
pub struct Figures {
    /// The `red` processor's, if the pipeline has one.
    pub red: Option<RedSnapshot>,
    /// The `dora` processor's, if the pipeline has one.
    pub dora: Option<DoraSnapshot>,
    /// The alerts pending or firing, if the pipeline has an `alerts` processor.
    pub alerts: Option<Vec<ActiveAlert>>,
}

enum Query {
    Report(oneshot::Sender<crate::report::ReportInputs>, usize),
    Figures(oneshot::Sender<Figures>),
    Red(oneshot::Sender<Option<RedSnapshot>>),
    Dora(oneshot::Sender<Option<DoraSnapshot>>),
    Alerts(oneshot::Sender<Option<Vec<ActiveAlert>>>),
}

/// The exporters' read access to the processors' state.
#[derive(Clone)]
pub struct PipelineReader {
    tx: mpsc::Sender<Query>,
}

impl PipelineReader {
    /// The `red` processor's figures now, `None` if the pipeline has no `red`
    /// processor or has stopped.
    pub async fn red_snapshot(&self) -> Option<RedSnapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.tx.send(Query::Red(reply)).await.ok()?;
        snapshot.await.ok().flatten()
    }

    /// The alerts pending or firing now, `None` if the pipeline has no
    /// `alerts` processor or has stopped.
    pub async fn active_alerts(&self) -> Option<Vec<ActiveAlert>> {
        let (reply, alerts) = oneshot::channel();
        self.tx.send(Query::Alerts(reply)).await.ok()?;
        alerts.await.ok().flatten()
    }

    /// Everything the report is made of, at one instant; `None` if the
    /// pipeline has stopped.
    pub async fn report_inputs(&self) -> Option<crate::report::ReportInputs> {
        self.report_inputs_with_days(0).await
    }

    /// As [`Self::report_inputs`], with the production figures of each of
    /// the last `days` days (the dashboard's trend).
    pub async fn report_inputs_with_days(
        &self,
        days: usize,
    ) -> Option<crate::report::ReportInputs> {
        let (reply, inputs) = oneshot::channel();
        self.tx.send(Query::Report(reply, days)).await.ok()?;
        inputs.await.ok()
    }

    /// Every processor's figures at one instant; `None` if the pipeline has
    /// stopped.
    pub async fn figures(&self) -> Option<Figures> {
        let (reply, figures) = oneshot::channel();
        self.tx.send(Query::Figures(reply)).await.ok()?;
        figures.await.ok()
    }

    /// The `dora` processor's figures now, `None` if the pipeline has no
    /// `dora` processor or has stopped.
    pub async fn dora_snapshot(&self) -> Option<DoraSnapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.tx.send(Query::Dora(reply)).await.ok()?;
        snapshot.await.ok().flatten()
    }
}

/// Owns every processor's state; the only task that touches it.
struct Engine {
    red: Option<RedProcessor>,
    dora: Option<DoraProcessor>,
    alerts: Option<(AlertsProcessor, std::time::Duration)>,
    /// Where alert transitions go besides the log and the gauge.
    alert_sinks: Vec<AlertSink>,
    /// Where production deployments go as PagerDuty change events.
    change_sink: Option<ChangeSink>,
    default_environment: String,
    clock: Arc<dyn Clock>,
    /// Where derived incidents are forwarded (a Kafka exporter), if anywhere.
    forward: Option<mpsc::Sender<Forward>>,
    /// The storage writer and what checkpoints need, with `storage`.
    storage: Option<EngineStorage>,
    /// Told the figures once the queue has drained at shutdown (the OTLP
    /// exporter's last push).
    last_figures: Option<oneshot::Sender<Figures>>,
}

/// The engine's side of `storage`.
struct EngineStorage {
    writer: crate::storage::Writer,
    /// The log segment being appended to.
    segment: u64,
    interval: std::time::Duration,
    /// Per Kafka partition, the next offset to apply.
    kafka_next: std::collections::HashMap<(Arc<str>, i32), i64>,
    /// Checkpoints asked for (a Kafka hand-over), each told once durable.
    requests: Option<mpsc::Receiver<oneshot::Sender<bool>>>,
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
    async fn run_to_end(
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

/// The processors a pipeline names, and its default environment.
struct Processors {
    red: Option<RedProcessor>,
    dora: Option<DoraProcessor>,
    alerts: Option<(AlertsProcessor, std::time::Duration)>,
    default_environment: String,
}

fn processors(config: &Config, pipeline: &crate::config::PipelineConfig) -> Processors {
    let uses = |list: &[String], kind: &str| list.iter().any(|c| c == kind);
    let default_environment = config
        .receivers
        .otlp
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "otlp"))
        .map(|o| o.default_environment.clone())
        .unwrap_or_else(|| "unknown".to_string());
    let red = config
        .processors
        .red
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "red"))
        .map(|c| RedProcessor::new(c, &default_environment));
    let dora = config
        .processors
        .dora
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "dora"))
        .map(DoraProcessor::new);
    let red_window = config
        .processors
        .red
        .as_ref()
        .map(|r| r.window.as_str().to_string());
    let alerts = config
        .processors
        .alerts
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "alerts"))
        .map(|c| {
            (
                AlertsProcessor::new(c)
                    .with_default_environment(&default_environment)
                    .with_red_window(red_window.as_deref().unwrap_or("5m")),
                c.interval.get(),
            )
        });
    Processors {
        red,
        dora,
        alerts,
        default_environment,
    }
}

/// Whether every component has started.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// True once every listener is bound and the engine runs.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
}

/// Runs the configured pipeline until `shutdown` is cancelled, then stops in
/// order: receivers, engine (drained), exporters.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_clock(config, shutdown, Arc::new(SystemClock)).await
}

/// As [`run`], with an explicit clock.
pub async fn run_with_clock(
    config: Config,
    shutdown: CancellationToken,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<()> {
    let (name, pipeline) = config.pipeline().context("no pipeline configured")?;
    let handle = prometheus::install_recorder()?;
    instruments::describe();

    let uses = |list: &[String], kind: &str| list.iter().any(|c| c == kind);
    let otlp = config
        .receivers
        .otlp
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "otlp"));
    let Processors {
        mut red,
        mut dora,
        mut alerts,
        default_environment,
    } = processors(&config, pipeline);
    // State first: a damaged checkpoint stops doraflow before it listens.
    let mut restored = match &config.storage {
        Some(c) => Some(restore(c, &mut red, &mut dora, &mut alerts)?),
        None => None,
    };

    // Bind every listener before serving anything: a taken port fails startup.
    let grpc = match otlp.and_then(|o| o.grpc.as_ref()) {
        Some(c) => Some((bind("receivers.otlp.grpc", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let http = match otlp.and_then(|o| o.http.as_ref()) {
        Some(c) => Some((bind("receivers.otlp.http", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let webhook = match config
        .receivers
        .webhook
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "webhook"))
    {
        Some(c) => Some((bind("receivers.webhook", &c.endpoint).await?, c.clone())),
        None => None,
    };
    let prometheus_listener = match config
        .exporters
        .prometheus
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "prometheus"))
    {
        Some(c) => Some(bind("exporters.prometheus", &c.endpoint).await?),
        None => None,
    };

    // The Kafka exporter first: the queue forwards into it.
    let kafka_exporter = match config
        .exporters
        .kafka
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "kafka"))
    {
        Some(c) => {
            tracing::info!(
                pipeline = name,
                brokers = c.brokers,
                "Kafka exporter started"
            );
            Some(crate::kafka::producer::start(c.clone())?)
        }
        None => None,
    };
    let forward = kafka_exporter.as_ref().map(|(tx, _)| tx.clone());
    let (mut sink, data) = match &forward {
        Some(tx) => forwarding_queue(pipeline.queue_size, tx.clone()),
        None => queue(pipeline.queue_size),
    };
    let limiter_stop = CancellationToken::new();
    let limiter = config
        .processors
        .memory_limiter
        .as_ref()
        .filter(|_| uses(&pipeline.processors, "memory_limiter"))
        .map(|c| {
            tracing::info!(
                pipeline = name,
                limit_mib = c.limit_mib,
                soft_limit_mib = c.soft_bytes() / 1_048_576,
                "memory limiter started"
            );
            let (gate, task) = crate::memory::start(c.clone(), limiter_stop.clone());
            sink.memory = Some(gate);
            task
        });
    let (query_tx, query_rx) = mpsc::channel(16);
    gauge!(instruments::QUEUE_CAPACITY).set(pipeline.queue_size as f64);
    let exporters_stop = CancellationToken::new();
    let mut alert_sinks = Vec::new();
    let mut change_sink = None;
    let mut exporter_tasks = Vec::new();
    if let Some(c) = config
        .exporters
        .pagerduty
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "pagerduty"))
    {
        tracing::info!(
            pipeline = name,
            change_events = c.change_events,
            "PagerDuty exporter started"
        );
        let (sink, changes, task) = pagerduty::start(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        change_sink = changes;
        exporter_tasks.push(task);
    }
    if let Some(c) = config
        .exporters
        .alertmanager
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "alertmanager"))
    {
        tracing::info!(
            pipeline = name,
            url = c.url,
            "Alertmanager exporter started"
        );
        let (sink, task) = alertmanager::start_alertmanager(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        exporter_tasks.push(task);
    }
    if let Some(c) = config
        .exporters
        .webhook
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "webhook"))
    {
        tracing::info!(pipeline = name, "webhook alert exporter started");
        let (sink, task) = alertmanager::start_webhook(c.clone(), exporters_stop.clone());
        alert_sinks.push(sink);
        exporter_tasks.push(task);
    }
    if let (Some(_), Some(dora)) = (&change_sink, dora.as_mut()) {
        dora.keep_production_deployments();
    }
    if let Some((alerts, _)) = &alerts {
        let outbox = restored
            .as_mut()
            .map(|r| std::mem::take(&mut r.3))
            .unwrap_or_default();
        resume_outbox(alerts, &outbox, &alert_sinks);
        resume_firing(alerts, &alert_sinks);
    }
    let (checkpoint_requests, requests) = mpsc::channel(4);
    let (storage, kafka_durability) = match (restored, &config.storage) {
        (Some((storage, segment, kafka_next, _)), Some(c)) => {
            // What the restored checkpoint holds is durable already.
            let durable = crate::storage::DurableOffsets::default();
            durable.set(
                &kafka_next
                    .iter()
                    .map(|((topic, partition), next)| crate::proto::KafkaOffset {
                        topic: topic.to_string(),
                        partition: *partition,
                        next_offset: *next,
                    })
                    .collect::<Vec<_>>(),
            );
            let resume = kafka_next
                .iter()
                .map(|((topic, partition), next)| ((topic.to_string(), *partition), *next))
                .collect();
            let writer = crate::storage::Writer::start(storage, segment, durable.clone())?;
            tracing::info!(dir = %c.dir.display(), "storage open");
            (
                Some(EngineStorage {
                    writer,
                    segment,
                    interval: c.checkpoint_interval.get(),
                    kafka_next,
                    requests: Some(requests),
                }),
                Some(crate::storage::KafkaDurability {
                    durable,
                    resume,
                    checkpoint: checkpoint_requests,
                }),
            )
        }
        _ => (None, None),
    };
    // A component that ends before a stop was asked for fails doraflow:
    // logged, counted, and the process stops (non-zero) rather than run half-dead.
    let failed = CancellationToken::new();
    let stopping = CancellationToken::new();
    let otlp_exporter = config
        .exporters
        .otlp
        .as_ref()
        .filter(|_| uses(&pipeline.exporters, "otlp"));
    let (last_figures, last_figures_rx) = match otlp_exporter {
        Some(_) => {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        }
        None => (None, None),
    };
    let engine = supervise(
        "engine",
        stopping.clone(),
        failed.clone(),
        Engine {
            red,
            dora,
            alerts,
            alert_sinks,
            change_sink,
            default_environment,
            clock,
            forward,
            storage,
            last_figures,
        }
        .run_to_end(data, query_rx),
    );
    let reader = PipelineReader { tx: query_tx };
    if let (Some(c), Some(last)) = (otlp_exporter, last_figures_rx) {
        tracing::info!(
            pipeline = name,
            endpoint = c.endpoint,
            interval = c.interval.as_str(),
            "OTLP metrics exporter started"
        );
        exporter_tasks.push(crate::exporters::otlp::start(
            c.clone(),
            reader.clone(),
            last,
            exporters_stop.clone(),
        )?);
    }
    let readiness = Readiness::default();

    let receivers_stop = CancellationToken::new();
    let mut receivers = Vec::new();
    if let Some((listener, c)) = grpc {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "OTLP gRPC receiver listening");
        receivers.push(supervise(
            "OTLP gRPC receiver",
            stopping.clone(),
            failed.clone(),
            otlp_grpc::serve(
                listener,
                c,
                otlp.and_then(|o| o.auth.clone()),
                sink.clone(),
                receivers_stop.clone(),
            ),
        ));
    }
    if let Some((listener, c)) = http {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "OTLP HTTP receiver listening");
        receivers.push(supervise(
            "OTLP HTTP receiver",
            stopping.clone(),
            failed.clone(),
            otlp_http::serve(
                listener,
                c,
                otlp.and_then(|o| o.auth.clone()),
                sink.clone(),
                receivers_stop.clone(),
            ),
        ));
    }
    if let Some((listener, c)) = webhook {
        tracing::info!(pipeline = name, endpoint = %listener.local_addr()?, "CDEvents webhook receiver listening");
        receivers.push(supervise(
            "webhook receiver",
            stopping.clone(),
            failed.clone(),
            webhook::serve(listener, c, sink.clone(), receivers_stop.clone()),
        ));
    }
    if let Some(c) = config
        .receivers
        .kafka
        .as_ref()
        .filter(|_| uses(&pipeline.receivers, "kafka"))
    {
        tracing::info!(
            pipeline = name,
            brokers = c.brokers,
            group = c.group_id,
            "Kafka receiver started"
        );
        let task = crate::kafka::consumer::start(
            c.clone(),
            sink.clone(),
            receivers_stop.clone(),
            kafka_durability,
        )?;
        receivers.push(supervise(
            "Kafka receiver",
            stopping.clone(),
            failed.clone(),
            async move { task.await.map_err(|e| anyhow::anyhow!("{e}"))? },
        ));
    }
    drop(sink);

    let exporter = prometheus_listener.map(|listener| {
        tracing::info!(pipeline = name, endpoint = ?listener.local_addr().ok(), "Prometheus exporter listening");
        supervise(
            "Prometheus exporter",
            stopping.clone(),
            failed.clone(),
            PrometheusExporter::new(handle, reader.clone(), readiness.clone()).serve(
                listener,
                config.exporters.prometheus.clone(),
                exporters_stop.clone(),
            ),
        )
    });
    readiness.set(true);
    tracing::info!(pipeline = name, "doraflow is ready");

    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = failed.cancelled() => {}
    }
    stopping.cancel();
    let timeout = pipeline.shutdown_timeout.clone();
    let stop = async {
        tracing::info!("shutting down: stopping receivers");
        readiness.set(false);
        receivers_stop.cancel();
        for receiver in receivers {
            if let Ok(Err(e)) = receiver.await {
                tracing::error!(error = %e, "receiver stopped with an error");
            }
        }
        limiter_stop.cancel();
        if let Some(limiter) = limiter {
            let _ = limiter.await;
        }
        tracing::info!("draining the pipeline");
        if let Ok(Err(e)) = engine.await {
            tracing::error!(error = %e, "pipeline engine failed");
        }
        if let Some((tx, task)) = kafka_exporter {
            // Every sender is gone with the receivers and the engine: the
            // exporter sends what is queued, flushes and ends.
            drop(tx);
            tracing::info!("flushing the Kafka exporter");
            let _ = task.await;
        }
        // The engine is gone, so the alert queues only drain now, and the
        // OTLP exporter makes its last push; give them a while.
        let drained = wait_all(exporter_tasks);
        if tokio::time::timeout(std::time::Duration::from_secs(10), drained)
            .await
            .is_err()
        {
            tracing::warn!("exporters still retrying at shutdown; stopping them");
        }
        exporters_stop.cancel();
        if let Some(exporter) = exporter
            && let Ok(Err(e)) = exporter.await
        {
            tracing::error!(error = %e, "exporter stopped with an error");
        }
    };
    if tokio::time::timeout(timeout.get(), stop).await.is_err() {
        anyhow::bail!(
            "the shutdown did not finish within {} (pipelines.{name}.shutdown_timeout); stopping anyway",
            timeout.as_str()
        );
    }
    if failed.is_cancelled() {
        anyhow::bail!("a component failed (see above); doraflow stopped");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Alert transitions the checkpoint held undelivered go to their exporters
/// again: the last one of each alert only (a trigger and its resolve both
/// undelivered need only the resolve; PagerDuty and Alertmanager take
/// either twice without harm). Rules no longer configured are skipped.
fn resume_outbox(
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
fn resume_firing(alerts: &AlertsProcessor, sinks: &[AlertSink]) {
    let firing: Vec<Transition> = alerts
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
        .collect();
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

/// Spawns a component, watching it: if it ends (error, panic, or at all)
/// before `stopping`, that is logged, counted, and `failed` is cancelled so
/// doraflow stops instead of running half-dead.
fn supervise<F>(
    component: &'static str,
    stopping: CancellationToken,
    failed: CancellationToken,
    run: F,
) -> tokio::task::JoinHandle<anyhow::Result<()>>
where
    F: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let inner = tokio::spawn(run);
    tokio::spawn(async move {
        let result = match inner.await {
            Ok(result) => result,
            Err(e) => Err(anyhow::anyhow!("{component} panicked: {e}")),
        };
        if !stopping.is_cancelled() {
            match &result {
                Err(e) => {
                    tracing::error!(component, error = %e, "component failed; stopping doraflow")
                }
                Ok(()) => tracing::error!(
                    component,
                    "component stopped unexpectedly; stopping doraflow"
                ),
            }
            counter!(instruments::COMPONENT_FAILURES, "component" => component).increment(1);
            failed.cancel();
        }
        result
    })
}

/// The storage folder opened, its state restored into the processors.
/// Returns the storage, the log segment to go on in, the Kafka offsets
/// the checkpoint holds, and the alert transitions it held undelivered.
#[allow(clippy::type_complexity)]
fn restore(
    config: &crate::storage::StorageConfig,
    red: &mut Option<RedProcessor>,
    dora: &mut Option<DoraProcessor>,
    alerts: &mut Option<(AlertsProcessor, std::time::Duration)>,
) -> anyhow::Result<(
    crate::storage::Storage,
    u64,
    std::collections::HashMap<(Arc<str>, i32), i64>,
    Vec<crate::proto::OutboxRecord>,
)> {
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
        if let (Some(state), Some((alerts, _))) = (&checkpoint.alerts, alerts.as_mut()) {
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

async fn bind(component: &str, endpoint: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = endpoint
        .parse()
        .with_context(|| format!("{component}: `{endpoint}` is not a socket address"))?;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{component}: cannot listen on {addr}"))
}

/// Waits for every task.
async fn wait_all(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for task in tasks {
        let _ = task.await;
    }
}

#[cfg(test)]
mod supervision_tests {
    use super::*;

    type Component = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

    #[tokio::test]
    async fn a_component_that_fails_panics_or_ends_before_a_stop_stops_doraflow() {
        let failing: [(&str, Component); 3] = [
            (
                "error",
                Box::pin(async { anyhow::bail!("listener closed") }),
            ),
            ("panic", Box::pin(async { panic!("a bug") })),
            ("ended", Box::pin(async { Ok(()) })),
        ];
        for (what, run) in failing {
            let (stopping, failed) = (CancellationToken::new(), CancellationToken::new());
            let result = supervise("test", stopping, failed.clone(), run)
                .await
                .expect("the supervisor itself never panics");
            assert!(failed.is_cancelled(), "{what}: doraflow must stop");
            match what {
                "error" => assert_eq!(result.unwrap_err().to_string(), "listener closed"),
                "panic" => assert!(
                    result.unwrap_err().to_string().starts_with("test panicked"),
                    "{what}"
                ),
                _ => assert!(result.is_ok()),
            }
        }
    }

    #[tokio::test]
    async fn a_component_that_ends_after_the_stop_was_asked_is_no_failure() {
        let (stopping, failed) = (CancellationToken::new(), CancellationToken::new());
        let run = {
            let stopping = stopping.clone();
            async move {
                stopping.cancelled().await;
                Ok(())
            }
        };
        let handle = supervise("test", stopping.clone(), failed.clone(), run);
        stopping.cancel();
        assert!(handle.await.expect("supervisor").is_ok());
        assert!(!failed.is_cancelled());
    }
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
