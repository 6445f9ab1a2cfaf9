//! The flow between the parts: the bounded queue receivers submit into
//! ([`PipelineSink`]), the envelope a batch travels in, what is forwarded
//! to the Kafka exporter, the read side exporters ask for snapshots through
//! ([`PipelineReader`]), and readiness. Below the receivers, exporters and
//! the pipeline, which all use it; the pipeline's engine is its other end.
//!
//! Data flows one way: receivers → [`PipelineSink`] → the engine task, which
//! owns every processor's state → exporters, which read snapshots through
//! [`PipelineReader`]. A receiver never waits for queue space: a full queue
//! is answered at once with back-pressure (RESOURCE_EXHAUSTED / 429), so
//! memory stays bounded. Each batch carries an acknowledgement, so an export
//! call returns only once its data is applied and the client's
//! partial-success answer is exact.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::model::{Signal, Telemetry};
use crate::processors::Applied;
use crate::processors::alerts::ActiveAlert;
use crate::processors::dora::DoraSnapshot;
use crate::processors::red::RedSnapshot;

/// One batch on its way to the engine, with the acknowledgement to send back.
pub(crate) struct Envelope {
    pub(crate) item: Telemetry,
    pub(crate) ack: oneshot::Sender<Applied>,
    /// The batch as it is forwarded, with its reserved place in the
    /// forwarding queue: sent once the batch is applied.
    pub(crate) forward: Option<(mpsc::OwnedPermit<Forward>, Forward)>,
    /// The Kafka message it came from, for the checkpoint's offsets.
    pub(crate) source: Option<KafkaSource>,
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
    pub(crate) memory: Option<crate::memory::MemoryGate>,
    /// With a `dependencies` processor: the span attributes it reads.
    pub(crate) span_keys: Option<Arc<crate::model::spans::SpanKeys>>,
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

    /// What decoders read of spans besides the entry spans (see
    /// [`crate::otlp::Detail`]): the `dependencies` processor's keys.
    pub fn span_detail(&self) -> crate::otlp::Detail<'_> {
        self.span_keys.as_ref()
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
    pub(crate) rx: mpsc::Receiver<Envelope>,
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
            span_keys: None,
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
    /// The `dependencies` processor's, if the pipeline has one.
    pub dependencies: Option<crate::processors::dependencies::DependencySnapshot>,
}

pub(crate) enum Query {
    Report(oneshot::Sender<crate::report::ReportInputs>, usize),
    Figures(oneshot::Sender<Figures>),
    Red(oneshot::Sender<Option<RedSnapshot>>),
    Dora(oneshot::Sender<Option<DoraSnapshot>>),
    Alerts(oneshot::Sender<Option<Vec<ActiveAlert>>>),
    Dependencies(oneshot::Sender<Option<crate::processors::dependencies::DependencySnapshot>>),
}

/// The exporters' read access to the processors' state.
#[derive(Clone)]
pub struct PipelineReader {
    pub(crate) tx: mpsc::Sender<Query>,
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

    /// The `dependencies` processor's figures now, `None` if the pipeline
    /// has no `dependencies` processor or has stopped.
    pub async fn dependencies_snapshot(
        &self,
    ) -> Option<crate::processors::dependencies::DependencySnapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.tx.send(Query::Dependencies(reply)).await.ok()?;
        snapshot.await.ok().flatten()
    }

    /// The `dora` processor's figures now, `None` if the pipeline has no
    /// `dora` processor or has stopped.
    pub async fn dora_snapshot(&self) -> Option<DoraSnapshot> {
        let (reply, snapshot) = oneshot::channel();
        self.tx.send(Query::Dora(reply)).await.ok()?;
        snapshot.await.ok().flatten()
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

    pub(crate) fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }
}
