//! `receivers.kafka`: a consumer group member that feeds the pipeline.
//!
//! At-least-once, in order per partition: a message's offset is stored for
//! the next commit only once the pipeline has applied what it carried, and
//! offsets are stored in the order the messages came. Batches are pipelined
//! (up to `max_in_flight` handed over ahead of their acknowledgement), so the
//! engine never idles waiting for the consumer.
//!
//! It runs on a thread of its own with librdkafka's `BaseConsumer`: the
//! rebalance callback then runs on that thread too and can block until every
//! batch in flight is applied and its offset committed, before the partitions
//! go to another member. That is the clean hand-over that keeps counts exact
//! across replicas.
//!
//! A message that cannot be decoded goes to the dead-letter topic with the
//! error and its origin in headers, is counted, and consumption goes on. When
//! the pipeline's queue is full the consumer pauses its partitions (librdkafka
//! then stops fetching) and resumes once the queue takes the batch again, so
//! memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use metrics::{Counter, counter, gauge};
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::changelog::ChangelogWriter;
use super::config::{KafkaFormat, KafkaReceiverConfig, StartFrom};
use crate::cdevents::{self, BinaryContext};
use crate::flow::{KafkaSource, PipelineSink, SubmitError};
use crate::instruments;
use crate::model::{Signal, Telemetry, TraceSummary};
use crate::otlp::{self, Encoding};
use crate::processors::Applied;
use crate::storage::{DurableOffsets, KafkaDurability};

/// How long one poll waits for a message; also how quickly a stop is seen.
const POLL: Duration = Duration::from_millis(100);

/// A batch of merged trace messages stops growing at this many spans (and
/// at `max_batch_messages` messages).
const BATCH_SPANS: u64 = 65_536;

/// Starts the consumer on a blocking thread; it runs until `stop` is
/// cancelled, then hands everything in flight to the pipeline, commits and
/// leaves the group.
pub fn start(
    config: KafkaReceiverConfig,
    sink: PipelineSink,
    stop: CancellationToken,
    durability: Option<KafkaDurability>,
    changelog: Option<ChangelogLink>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let receiver = Receiver::new(config, sink, durability, changelog)?;
    Ok(tokio::task::spawn_blocking(move || receiver.run(&stop)))
}

/// What the consumer needs to move partitions' state with the partitions,
/// when the group's changelog is on.
pub struct ChangelogLink {
    /// The changelog topic.
    pub topic: String,
    /// Its writer (the consumer writes the fences of its restores).
    pub writer: ChangelogWriter,
    /// The engine's side: builds a partition's state from its records,
    /// installs it, and drops what is no longer owned.
    pub states: Arc<dyn PartitionStates>,
}

/// Records of one partition's changelog: (key, value), in order.
pub type ChangelogRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// Per partition rebuilt, the input offsets its state covers, or why it
/// could not be rebuilt.
pub type Installed = Vec<(i32, Result<Vec<crate::proto::KafkaOffset>, String>)>;

/// The pipeline was stopped: nothing more can be installed or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pipeline has stopped")]
pub struct Stopped;

/// What the consumer asks of whoever owns the partitions' state (the
/// pipeline's engine), as a trait so that the consumer, a receiver, needs
/// none of the pipeline's types. Blocking: called from the consumer's
/// rebalance callbacks.
pub trait PartitionStates: Send + Sync {
    /// The fence record (key, value) a restore of `partition` writes and
    /// reads up to.
    fn fence(&self, partition: i32) -> (Vec<u8>, Vec<u8>);
    /// Rebuilds each partition's state from its records and installs it;
    /// per partition, the input offsets its state covers, or why it could
    /// not be rebuilt.
    fn install(&self, parts: Vec<(i32, ChangelogRecords)>) -> Result<Installed, Stopped>;
    /// Of the partitions kept aside at a clean hand-over, `partitions` are
    /// owned again untouched: their state comes back; the others kept aside
    /// are forgotten. Returns those that came back.
    fn resume(&self, partitions: Vec<i32>) -> Result<Vec<i32>, Stopped>;
    /// `partitions` are no longer owned (their state is flushed); with
    /// `keep`, their state is kept aside in case they come back.
    fn drop_partitions(&self, partitions: Vec<i32>, keep: bool);
}

/// A (topic, partition).
type PartitionKey = (Arc<str>, i32);

/// The changelog side of the rebalance callbacks.
struct ChangelogSide {
    link: ChangelogLink,
    config: KafkaReceiverConfig,
    /// The input partitions (numbers) whose state this replica holds.
    owned: Mutex<std::collections::BTreeSet<i32>>,
    /// Offsets restored partitions' state covers, for the loop to skip to.
    resume: Mutex<Vec<(PartitionKey, Option<i64>)>>,
    /// Partitions handed over cleanly at the last revocation, whose state
    /// the engine keeps aside in case they come back.
    suspended: Mutex<std::collections::BTreeSet<i32>>,
    /// A restore that failed: the receiver stops (and doraflow with it)
    /// rather than consume a partition without its state.
    failed: Mutex<Option<String>>,
}

impl ChangelogSide {
    /// Restores the state of every partition number in `assigned` not held
    /// yet. A fence of its own goes to each changelog partition first (one
    /// transaction). A partition this replica handed over cleanly at the
    /// last rebalance, and to which nobody wrote since but that fence, gets
    /// the state kept then (no one else owned it meanwhile); every other
    /// one is read up to its fence (one reader), and its task built and
    /// installed.
    fn restore(&self, assigned: &std::collections::BTreeSet<i32>) {
        let wanted: Vec<i32> = {
            let owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
            assigned.difference(&owned).copied().collect()
        };
        if let Err(e) = self.restore_all(&wanted) {
            tracing::error!(topic = self.link.topic, partitions = ?wanted, error = %e, "cannot restore partitions' state");
            *self.failed.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(format!("changelog `{}`: {e}", self.link.topic));
        }
    }

    fn restore_all(&self, wanted: &[i32]) -> anyhow::Result<()> {
        use super::changelog::{Entry, FencedRead};
        let started = std::time::Instant::now();
        let kept: Vec<i32> =
            std::mem::take(&mut *self.suspended.lock().unwrap_or_else(|e| e.into_inner()))
                .into_iter()
                .collect();
        // Where this replica's own writes ended, before the fences.
        let own_end: HashMap<i32, i64> = kept
            .iter()
            .filter(|p| wanted.contains(p))
            .filter_map(|&p| self.link.writer.last_written(p).map(|o| (p, o)))
            .collect();
        let fences: Vec<FencedRead> = wanted
            .iter()
            .map(|&partition| {
                let (key, value) = self.link.states.fence(partition);
                FencedRead {
                    partition,
                    start: None,
                    key,
                    value,
                }
            })
            .collect();
        if !wanted.is_empty() {
            self.link
                .writer
                .fences(
                    fences
                        .iter()
                        .map(|f| Entry {
                            partition: f.partition,
                            key: f.key.clone(),
                            value: Some(f.value.clone()),
                        })
                        .collect(),
                )
                .map_err(|e| anyhow::anyhow!("cannot write the fences: {e}"))?;
        }
        // Kept partitions nobody wrote to since: only the fence follows.
        let checks: Vec<FencedRead> = fences
            .iter()
            .filter_map(|f| {
                own_end.get(&f.partition).map(|end| FencedRead {
                    partition: f.partition,
                    start: Some(end + 1),
                    key: f.key.clone(),
                    value: f.value.clone(),
                })
            })
            .collect();
        let untouched: Vec<i32> = if checks.is_empty() {
            Vec::new()
        } else {
            super::changelog::read_partitions(&self.config, &self.link.topic, &checks)?
                .into_iter()
                .filter(|(_, read)| read.records == 0)
                .map(|(p, _)| p)
                .collect()
        };
        let resumed = self.link.states.resume(untouched)?;
        for &partition in &resumed {
            self.owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(partition);
            tracing::info!(
                topic = self.link.topic,
                partition,
                seconds = started.elapsed().as_secs_f64(),
                "partition state kept: nobody owned it since this replica handed it over"
            );
        }
        let full: Vec<FencedRead> = fences
            .into_iter()
            .filter(|f| !resumed.contains(&f.partition))
            .collect();
        if full.is_empty() {
            return Ok(());
        }
        let mut read = super::changelog::read_partitions(&self.config, &self.link.topic, &full)?;
        let read_seconds = started.elapsed().as_secs_f64();
        // Records read per partition (overwritten ones too), for the log.
        let mut counts: HashMap<i32, usize> = HashMap::new();
        let parts: Vec<(i32, ChangelogRecords)> = full
            .iter()
            .map(|f| {
                let records = read.remove(&f.partition).unwrap_or_default();
                counts.insert(f.partition, records.records);
                (f.partition, records.pieces)
            })
            .collect();
        let mut installed: HashMap<i32, Result<Vec<crate::proto::KafkaOffset>, String>> =
            self.link.states.install(parts)?.into_iter().collect();
        for f in &full {
            let partition = f.partition;
            let count = counts.get(&partition).copied().unwrap_or_default();
            let offsets = installed
                .remove(&partition)
                .unwrap_or_else(|| Err("its restore stopped unexpectedly".into()))
                .map_err(|e| anyhow::anyhow!("partition {partition}: {e}"))?;
            self.owned
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(partition);
            counter!(instruments::CHANGELOG_RESTORES).increment(1);
            tracing::info!(
                topic = self.link.topic,
                partition,
                records = count,
                read_seconds,
                seconds = started.elapsed().as_secs_f64(),
                "partition state restored from the changelog"
            );
            // Where the state of each input topic's partition ends; one it
            // holds nothing of is read from the committed offset, whatever
            // was read of it before.
            let mut resume = self.resume.lock().unwrap_or_else(|e| e.into_inner());
            for t in &self.config.topics {
                let next = offsets
                    .iter()
                    .find(|o| o.topic == t.topic)
                    .map(|o| o.next_offset);
                resume.push(((Arc::from(t.topic.as_str()), partition), next));
            }
        }
        Ok(())
    }

    /// Hands the partition numbers in `revoked` back (flushed already):
    /// their series leave the engine. After a clean flush (`kept`) the
    /// engine keeps their state aside, hidden, in case they come back.
    fn drop_partitions(&self, revoked: &std::collections::BTreeSet<i32>, kept: bool) {
        let partitions: Vec<i32> = {
            let mut owned = self.owned.lock().unwrap_or_else(|e| e.into_inner());
            let gone: Vec<i32> = owned.intersection(revoked).copied().collect();
            for p in &gone {
                owned.remove(p);
            }
            gone
        };
        if partitions.is_empty() {
            return;
        }
        if kept {
            self.suspended
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(partitions.iter().copied());
        }
        self.link.states.drop_partitions(partitions, kept);
    }
}

/// The partition numbers of a partition list.
fn numbers(list: &rdkafka::TopicPartitionList) -> std::collections::BTreeSet<i32> {
    list.elements().iter().map(|e| e.partition()).collect()
}

/// A message handed to the pipeline, waiting for its acknowledgement.
struct InFlight {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    ack: Ack,
    /// Dead-lettered or skipped: nothing to wait for.
    dead: bool,
    items: u64,
    signal: &'static str,
}

/// Where a batch in flight stands.
#[derive(Default)]
enum Ack {
    /// Handed to the pipeline, not yet applied.
    Pending(oneshot::Receiver<Applied>),
    /// Nothing more to wait for.
    #[default]
    Done,
}

/// A decoded batch the pipeline's queue had no room for yet.
struct Held {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    item: Telemetry,
    items: u64,
    signal: &'static str,
}

/// Consecutive trace messages of one partition, decoded and merged, not yet
/// handed to the pipeline.
struct Pending {
    topic: Arc<str>,
    partition: i32,
    /// The offset of the last message merged: the batch covers every
    /// message of the partition from the first merged one to it.
    offset: i64,
    /// Messages merged.
    messages: usize,
    traces: TraceSummary,
}

/// State the consumer loop shares with the rebalance callback (same thread).
#[derive(Default)]
struct Shared {
    in_flight: Mutex<VecDeque<InFlight>>,
    /// Set by a revocation: held batches of lost partitions must go.
    revoked: AtomicBool,
    /// With storage: offsets are stored only as far as a checkpoint holds
    /// their effects.
    durable: Option<DurableOffsets>,
    /// With storage: asks the engine for a checkpoint.
    checkpoint: Option<tokio::sync::mpsc::Sender<oneshot::Sender<bool>>>,
    /// With storage: per partition, what is settled and not yet stored.
    progress: Mutex<HashMap<(Arc<str>, i32), Progress>>,
    /// With the changelog: restores and drops partitions' state.
    changelog: Option<ChangelogSide>,
    /// Set when a restore left offsets to skip to.
    resumed: AtomicBool,
    /// The error the consumer context was just told of: librdkafka's error
    /// events go to the context's `error` (with a reason) and are then
    /// returned by `poll` too, so it is logged once, not twice.
    reported: Mutex<Option<RDKafkaErrorCode>>,
}

/// How far a partition's messages are settled, applied and stored.
#[derive(Debug, Clone, Copy)]
struct Progress {
    /// The latest offset settled (applied, dead-lettered or skipped).
    settled: i64,
    /// The latest offset applied by the pipeline.
    applied: i64,
    /// The latest offset stored for the next commit.
    stored: i64,
}

impl Shared {
    fn in_flight(&self) -> MutexGuard<'_, VecDeque<InFlight>> {
        // A panic elsewhere cannot leave the queue half-updated: recover it.
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn progress(&self) -> MutexGuard<'_, HashMap<(Arc<str>, i32), Progress>> {
        self.progress.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// With storage, asks for a checkpoint and waits until it is durable,
    /// then stores what it covers. Before a hand-over and at shutdown.
    /// Returns whether it became durable.
    fn checkpoint<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>) -> bool {
        let Some(checkpoint) = &self.checkpoint else {
            return false;
        };
        let (done, durable) = oneshot::channel();
        // Fails only if the engine is gone, and then the reply does too.
        let _ = checkpoint.blocking_send(done);
        let durable = durable.blocking_recv() == Ok(true);
        if !durable {
            tracing::warn!(
                "no durable checkpoint before the commit; offsets stay where the last one left them"
            );
        }
        store_durable(consumer, self);
        durable
    }
}

/// librdkafka callbacks: rebalances and logs.
struct GroupContext {
    shared: Arc<Shared>,
    group: String,
}

impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(group = self.group, error = %error, "Kafka consumer: {reason}");
        *self
            .shared
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = error.rdkafka_error_code();
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Hand-over: everything consumed from these partitions is applied
            // and committed before another member starts on them.
            let settled = settle(consumer, &self.shared, Wait::All);
            let flushed = self.shared.checkpoint(consumer);
            let committed = match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => true,
                Err(e) if is_no_offset(&e) => true,
                Err(e) => {
                    tracing::warn!(group = self.group, error = %e, "commit before hand-over failed");
                    false
                }
            };
            self.shared.revoked.store(true, Ordering::Release);
            if let Some(changelog) = &self.shared.changelog {
                // Flushed and committed above: the state can go, and be
                // kept aside if it is all in the changelog and committed.
                changelog.drop_partitions(&numbers(partitions), flushed && committed);
            }
            tracing::info!(
                group = self.group,
                partitions = partitions.count(),
                settled,
                "partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        counter!(instruments::KAFKA_REBALANCES, "group" => self.group.clone()).increment(1);
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        gauge!(instruments::KAFKA_PARTITIONS, "group" => self.group.clone()).set(assigned as f64);
        if let (Rebalance::Assign(partitions), Some(changelog)) =
            (rebalance, &self.shared.changelog)
        {
            // Before any message of them is read: the loop skips what the
            // restored state covers.
            changelog.restore(&numbers(partitions));
            self.shared.resumed.store(true, Ordering::Release);
        }
        match rebalance {
            Rebalance::Assign(partitions) => tracing::info!(
                group = self.group,
                assigned = partitions.count(),
                "partitions assigned"
            ),
            Rebalance::Error(e) => {
                tracing::warn!(group = self.group, error = %e, "rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

fn is_no_offset(e: &KafkaError) -> bool {
    matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
}

/// How long [`settle`] waits for batches not yet applied.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Not at all: settle what is applied already.
    No,
    /// For the oldest one, then settle what is applied already.
    Oldest,
    /// For every one (hand-over and shutdown).
    All,
}

/// Settles the batches in flight, oldest first: stores the offset of each
/// one applied, in order. Returns how many were settled.
fn settle<C: ConsumerContext>(consumer: &BaseConsumer<C>, shared: &Shared, wait: Wait) -> usize {
    // Only the consumer thread touches the queue (the rebalance callback runs
    // on it too), so waiting with the lock held blocks nobody.
    let mut queue = shared.in_flight();
    let mut settled = 0;
    while let Some(front) = queue.front_mut() {
        let block = wait == Wait::All || (wait == Wait::Oldest && settled == 0);
        let applied = match std::mem::take(&mut front.ack) {
            Ack::Done => Some(None),
            Ack::Pending(ack) if block => Some(ack.blocking_recv().ok()),
            Ack::Pending(mut ack) => match ack.try_recv() {
                Ok(applied) => Some(Some(applied)),
                Err(oneshot::error::TryRecvError::Empty) => {
                    front.ack = Ack::Pending(ack);
                    None
                }
                Err(oneshot::error::TryRecvError::Closed) => Some(None),
            },
        };
        let Some(applied) = applied else { break };
        let Some(done) = queue.pop_front() else { break };
        if done.dead {
            store(consumer, shared, &done);
            settled += 1;
            continue;
        }
        let Some(applied) = applied else {
            // The engine stopped without applying it: leave the offset
            // uncommitted so it is read again.
            tracing::warn!(
                topic = %done.topic,
                partition = done.partition,
                offset = done.offset,
                "pipeline stopped before applying a message; it will be read again"
            );
            queue.clear();
            break;
        };
        counter!(instruments::RECEIVER_ACCEPTED, "receiver" => "kafka", "transport" => "kafka", "signal" => done.signal)
            .increment(done.items.saturating_sub(applied.refused));
        if applied.refused > 0 {
            counter!(instruments::RECEIVER_REFUSED, "receiver" => "kafka", "reason" => "series_limit")
                .increment(applied.refused);
        }
        store(consumer, shared, &done);
        settled += 1;
    }
    drop(queue);
    if settled > 0 || shared.durable.is_some() {
        store_durable(consumer, shared);
    }
    settled
}

/// Stores a settled message's offset for the next commit; with storage,
/// notes it and leaves storing to [`store_durable`].
fn store<C: ConsumerContext>(consumer: &BaseConsumer<C>, shared: &Shared, done: &InFlight) {
    if shared.durable.is_some() {
        let mut progress = shared.progress();
        let p = progress
            .entry((done.topic.clone(), done.partition))
            .or_insert(Progress {
                settled: -1,
                applied: -1,
                stored: -1,
            });
        p.settled = p.settled.max(done.offset);
        if !done.dead {
            p.applied = p.applied.max(done.offset);
        }
        return;
    }
    store_offset(consumer, &done.topic, done.partition, done.offset);
}

fn store_offset<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    // librdkafka stores `offset + 1`: the next message to read.
    if let Err(e) = consumer.store_offset(topic, partition, offset) {
        tracing::debug!(topic, partition, error = %e, "offset not stored");
    }
}

/// With storage: stores, per partition, the settled offsets a durable
/// checkpoint covers. Messages applied after the checkpoint stay
/// uncommitted, so a crash re-reads them; dead-lettered and skipped ones
/// after the last applied one need no checkpoint.
fn store_durable<C: ConsumerContext>(consumer: &BaseConsumer<C>, shared: &Shared) {
    let Some(durable) = &shared.durable else {
        return;
    };
    let mut progress = shared.progress();
    for ((topic, partition), p) in progress.iter_mut() {
        let next = durable.get(topic, *partition).unwrap_or(-1);
        let storable = if p.applied < next {
            p.settled
        } else {
            next - 1
        };
        if storable > p.stored {
            store_offset(consumer, topic, *partition, storable);
            p.stored = storable;
        }
    }
}

/// What a topic carries.
#[derive(Clone, Copy)]
struct TopicFormat {
    format: KafkaFormat,
    signal: Option<Signal>,
}

/// Counts dead-letter deliveries.
struct DeadLetterContext;

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            tracing::error!(error = %e, "dead-letter message not delivered");
            counter!(instruments::KAFKA_DEAD_LETTER_FAILED).increment(1);
        }
    }
}

struct Receiver {
    consumer: Arc<BaseConsumer<GroupContext>>,
    shared: Arc<Shared>,
    sink: PipelineSink,
    topics: HashMap<String, TopicFormat>,
    names: HashMap<String, Arc<str>>,
    dead_letter: Option<(BaseProducer<DeadLetterContext>, String)>,
    group: String,
    max_in_flight: usize,
    held: VecDeque<Held>,
    paused: bool,
    /// Per partition, the first offset not yet settled here: not handed to
    /// the pipeline (or dead-lettered) in this run, nor held by the restored
    /// checkpoint. A message below it is already applied: the broker
    /// re-delivers such messages after a commit was lost (a broker outage, a
    /// session that expired), and counting them again would count twice.
    next: HashMap<(Arc<str>, i32), i64>,
    /// `doraflow_kafka_consumed_messages_total` of each topic, looked up
    /// once rather than per message.
    consumed: HashMap<String, Counter>,
    /// Trace messages being merged into one batch. Messages already
    /// fetched are read without waiting, up to `max_batch_messages`, and
    /// consecutive trace messages of one partition go to the pipeline as
    /// one batch: one hand-over and one acknowledgement for many messages
    /// rather than one each (a thread switch each way).
    pending: Option<Pending>,
    max_batch_messages: usize,
}

impl Receiver {
    fn new(
        config: KafkaReceiverConfig,
        sink: PipelineSink,
        durability: Option<KafkaDurability>,
        changelog: Option<ChangelogLink>,
    ) -> anyhow::Result<Self> {
        let (mut shared, restored) = match durability {
            Some(d) => (
                Shared {
                    durable: Some(d.durable),
                    checkpoint: Some(d.checkpoint),
                    ..Shared::default()
                },
                d.resume,
            ),
            None => (Shared::default(), HashMap::new()),
        };
        let co_partitioned = changelog.is_some();
        shared.changelog = changelog.map(|link| ChangelogSide {
            link,
            config: config.clone(),
            owned: Mutex::default(),
            resume: Mutex::default(),
            suspended: Mutex::default(),
            failed: Mutex::default(),
        });
        let shared = Arc::new(shared);
        let mut client = ClientConfig::new();
        // What librdkafka prefetches while the pipeline is busy or paused:
        // 16 MiB rather than its 64 MiB default. `settings` may change it.
        client.set("queued.max.messages.kbytes", "16384");
        for (key, value) in &config.settings {
            client.set(key, value);
        }
        client
            .set("bootstrap.servers", &config.brokers)
            .set("group.id", &config.group_id)
            .set("client.id", &config.client_id)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.get().as_millis().to_string(),
            )
            .set(
                "auto.offset.reset",
                match config.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                config.session_timeout.get().as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                config.heartbeat_interval.get().as_millis().to_string(),
            )
            .set("enable.partition.eof", "false");
        if co_partitioned {
            // Partition p of every input topic goes to one member, as a
            // partition's state is made of all of them (spans and events of
            // a service land in partitions of the same number).
            client.set("partition.assignment.strategy", "range");
        }
        let consumer: BaseConsumer<GroupContext> = client
            .create_with_context(GroupContext {
                shared: shared.clone(),
                group: config.group_id.clone(),
            })
            .map_err(|e| anyhow::anyhow!("receivers.kafka: cannot create the consumer: {e}"))?;
        let names: Vec<&str> = config.topics.iter().map(|t| t.topic.as_str()).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| anyhow::anyhow!("receivers.kafka: cannot subscribe to {names:?}: {e}"))?;
        let dead_letter = match &config.dead_letter_topic {
            Some(topic) => {
                let mut producer = ClientConfig::new();
                for (key, value) in &config.settings {
                    producer.set(key, value);
                }
                let producer: BaseProducer<DeadLetterContext> = producer
                    .set("bootstrap.servers", &config.brokers)
                    .set("client.id", format!("{}-dead-letter", config.client_id))
                    .set("enable.idempotence", "true")
                    .create_with_context(DeadLetterContext)
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "receivers.kafka.dead_letter_topic: cannot create the producer: {e}"
                        )
                    })?;
                Some((producer, topic.clone()))
            }
            None => None,
        };
        Ok(Receiver {
            consumer: Arc::new(consumer),
            shared,
            sink,
            topics: config
                .topics
                .iter()
                .map(|t| {
                    (
                        t.topic.clone(),
                        TopicFormat {
                            format: t.format,
                            signal: t.signal.map(Signal::from),
                        },
                    )
                })
                .collect(),
            names: config
                .topics
                .iter()
                .map(|t| (t.topic.clone(), Arc::from(t.topic.as_str())))
                .collect(),
            consumed: config
                .topics
                .iter()
                .map(|t| {
                    let counter = counter!(instruments::KAFKA_CONSUMED, "topic" => t.topic.clone());
                    (t.topic.clone(), counter)
                })
                .collect(),
            pending: None,
            max_batch_messages: config.max_batch_messages,
            dead_letter,
            group: config.group_id,
            max_in_flight: config.max_in_flight,
            held: VecDeque::new(),
            paused: false,
            next: restored
                .into_iter()
                .map(|((topic, partition), next)| ((Arc::from(topic.as_str()), partition), next))
                .collect(),
        })
    }

    fn run(mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        tracing::info!(group = self.group, topics = ?self.topics.keys().collect::<Vec<_>>(), "Kafka receiver started");
        let result = self.consume(stop);
        // Hand over cleanly: everything consumed is applied, stored and
        // committed before the consumer leaves the group.
        let settled = settle(&self.consumer, &self.shared, Wait::All);
        self.shared.checkpoint(&*self.consumer);
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => {}
            Err(e) if is_no_offset(&e) => {}
            Err(e) => tracing::warn!(group = self.group, error = %e, "final commit failed"),
        }
        if let Some((producer, _)) = &self.dead_letter {
            let _ = producer.flush(Duration::from_secs(10));
        }
        tracing::info!(
            group = self.group,
            settled,
            unapplied = self.held.len(),
            "Kafka receiver stopped"
        );
        result
    }

    fn consume(&mut self, stop: &CancellationToken) -> anyhow::Result<()> {
        // Messages borrow the consumer, not the receiver's other state.
        let consumer = self.consumer.clone();
        while !stop.is_cancelled() {
            if let Some(e) = self.restore_failed() {
                return Err(anyhow::anyhow!(e));
            }
            settle(&self.consumer, &self.shared, Wait::No);
            if self.shared.revoked.swap(false, Ordering::AcqRel) {
                self.drop_revoked();
            }
            if !self.held.is_empty() {
                match self.offer_held() {
                    Ok(true) => {}
                    Ok(false) => {
                        // Still full: keep the group alive, wait a little.
                        self.pause();
                        if let Some(message) = consumer.poll(Duration::from_millis(20)) {
                            // Fetched before the pause took hold: queue it behind.
                            match message {
                                Ok(message) => self.handle(&message),
                                Err(e) => poll_error(&self.shared, &e),
                            }
                            self.flush();
                        }
                        continue;
                    }
                    Err(()) => return Ok(()),
                }
            }
            if self.shared.in_flight().len() >= self.max_in_flight {
                settle(&self.consumer, &self.shared, Wait::Oldest);
                continue;
            }
            match consumer.poll(POLL) {
                None => continue,
                Some(Ok(message)) => self.handle(&message),
                Some(Err(e)) => poll_error(&self.shared, &e),
            }
            // What librdkafka has fetched already, without waiting.
            for _ in 1..self.max_batch_messages {
                match consumer.poll(Duration::ZERO) {
                    None => break,
                    Some(Ok(message)) => self.handle(&message),
                    Some(Err(e)) => poll_error(&self.shared, &e),
                }
            }
            self.flush();
        }
        self.flush();
        Ok(())
    }

    /// Offers the held batches to the pipeline in order. `Ok(true)` once all
    /// went, `Ok(false)` if the queue is still full, `Err` if it closed.
    fn offer_held(&mut self) -> Result<bool, ()> {
        while let Some(held) = self.held.pop_front() {
            let source = KafkaSource {
                topic: held.topic.clone(),
                partition: held.partition,
                offset: held.offset,
            };
            match self.sink.enqueue_from(held.item, None, Some(source)) {
                Ok(ack) => {
                    self.settled_up_to(&held.topic, held.partition, held.offset);
                    self.shared.in_flight().push_back(InFlight {
                        topic: held.topic,
                        partition: held.partition,
                        offset: held.offset,
                        ack: Ack::Pending(ack),
                        dead: false,
                        items: held.items,
                        signal: held.signal,
                    });
                }
                Err((SubmitError::Full, item)) => {
                    self.held.push_front(Held { item, ..held });
                    return Ok(false);
                }
                Err((SubmitError::Closed, _)) => return Err(()),
            }
        }
        self.resume();
        Ok(true)
    }

    fn pause(&mut self) {
        if self.paused {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment()
            && self.consumer.pause(&assignment).is_ok()
        {
            self.paused = true;
            counter!(instruments::KAFKA_PAUSES, "group" => self.group.clone()).increment(1);
            tracing::debug!(group = self.group, "pipeline full: partitions paused");
        }
    }

    fn resume(&mut self) {
        if !self.paused {
            return;
        }
        if let Ok(assignment) = self.consumer.assignment() {
            let _ = self.consumer.resume(&assignment);
        }
        self.paused = false;
        tracing::debug!(group = self.group, "partitions resumed");
    }

    /// Drops held batches of partitions this member no longer owns: their
    /// offsets were not stored, so the new owner reads them.
    fn drop_revoked(&mut self) {
        let Ok(assignment) = self.consumer.assignment() else {
            return;
        };
        let owned: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        self.held.retain(|h| {
            owned
                .iter()
                .any(|(t, p)| **t == *h.topic && *p == h.partition)
        });
        // A fresh assignment starts unpaused.
        self.paused = false;
    }

    /// Queues a message that never goes to the pipeline (dead-lettered, or
    /// skipped as already checkpointed): settled in its turn, nothing to wait for.
    fn settled_here(&self, topic: Arc<str>, message: &BorrowedMessage<'_>, signal: &'static str) {
        self.shared.in_flight().push_back(InFlight {
            topic,
            partition: message.partition(),
            offset: message.offset(),
            ack: Ack::Done,
            dead: true,
            items: 0,
            signal,
        });
    }

    /// Notes that messages up to `offset` of a partition are settled here.
    fn settled_up_to(&mut self, topic: &Arc<str>, partition: i32, offset: i64) {
        let next = self.next.entry((topic.clone(), partition)).or_insert(0);
        *next = (*next).max(offset + 1);
    }

    /// A restore that failed, if one did.
    fn restore_failed(&self) -> Option<String> {
        let changelog = self.shared.changelog.as_ref()?;
        changelog
            .failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Takes the offsets restored partitions' state covers: their messages
    /// below them are applied already.
    fn take_resumed(&mut self) {
        let Some(changelog) = self.shared.changelog.as_ref() else {
            return;
        };
        let resume =
            std::mem::take(&mut *changelog.resume.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, next) in resume {
            // What the restored state holds, not what this replica read
            // before: a flush that failed before the partition went (the
            // broker down, say) left messages read here out of the
            // changelog, and they must be applied again. (A message
            // dead-lettered after the last flush may be dead-lettered twice.)
            match next {
                Some(next) => self.next.insert(key, next),
                None => self.next.remove(&key),
            };
        }
    }

    fn handle(&mut self, message: &BorrowedMessage<'_>) {
        if self.shared.resumed.swap(false, Ordering::AcqRel) {
            self.take_resumed();
        }
        let topic_name = message.topic();
        let Some(topic) = self.names.get(topic_name).cloned() else {
            return;
        };
        let Some(format) = self.topics.get(topic_name).copied() else {
            return;
        };
        if let Some(consumed) = self.consumed.get(topic_name) {
            consumed.increment(1);
        }
        let signal = format.signal.map(Signal::as_str).unwrap_or("events");
        let (partition, offset) = (message.partition(), message.offset());
        let merged = self
            .pending
            .as_ref()
            .is_some_and(|p| p.topic == topic && p.partition == partition && offset <= p.offset);
        if merged
            || self
                .next
                .get(&(topic.clone(), partition))
                .is_some_and(|next| offset < *next)
        {
            // Applied already (in the restored checkpoint, or earlier in
            // this run), or in the batch being merged: not twice.
            counter!(instruments::KAFKA_SKIPPED, "topic" => topic.to_string()).increment(1);
            // Settled in order: after the batch before it.
            self.flush();
            self.settled_here(topic, message, signal);
            return;
        }
        let decoded = decode(
            format,
            message.payload().unwrap_or_default(),
            message.headers(),
            self.sink.span_detail(),
        );
        let item = match decoded {
            Ok(item) => item,
            Err(problem) => {
                self.flush();
                self.dead_letter(message, &problem);
                self.settled_up_to(&topic, message.partition(), message.offset());
                self.settled_here(topic, message, signal);
                return;
            }
        };
        if let Telemetry::Traces(t) = &item
            && t.rejected_spans > 0
        {
            counter!(instruments::RECEIVER_REFUSED, "receiver" => "kafka", "reason" => "invalid")
                .increment(t.rejected_spans);
        }
        let item = match item {
            Telemetry::Traces(traces) => {
                if let Some(p) = &mut self.pending
                    && p.topic == topic
                    && p.partition == partition
                    && p.messages < self.max_batch_messages
                    && p.traces.spans < BATCH_SPANS
                {
                    p.traces.append(traces);
                    p.offset = offset;
                    p.messages += 1;
                    return;
                }
                self.flush();
                self.pending = Some(Pending {
                    topic,
                    partition,
                    offset,
                    messages: 1,
                    traces,
                });
                return;
            }
            other => other,
        };
        self.flush();
        self.submit(topic, partition, offset, item, signal);
    }

    /// Hands the pending merged batch to the pipeline, unless its partition
    /// was revoked meanwhile (its messages' offsets were not stored, so the
    /// new owner reads them).
    fn flush(&mut self) {
        let Some(p) = self.pending.take() else {
            return;
        };
        if self.shared.revoked.load(Ordering::Acquire)
            && !self.consumer.assignment().is_ok_and(|a| {
                a.elements()
                    .iter()
                    .any(|e| e.topic() == &*p.topic && e.partition() == p.partition)
            })
        {
            return;
        }
        self.submit(
            p.topic,
            p.partition,
            p.offset,
            Telemetry::Traces(p.traces),
            Signal::Traces.as_str(),
        );
    }

    /// Hands a batch covering a partition's messages up to `offset` to the
    /// pipeline, or holds it (and pauses) while the pipeline is full.
    fn submit(
        &mut self,
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        item: Telemetry,
        signal: &'static str,
    ) {
        let items = item.items();
        // Order per partition: nothing overtakes a held batch.
        let item = if self.held.is_empty() {
            let source = KafkaSource {
                topic: topic.clone(),
                partition,
                offset,
            };
            match self.sink.enqueue_from(item, None, Some(source)) {
                Ok(ack) => {
                    self.settled_up_to(&topic, partition, offset);
                    self.shared.in_flight().push_back(InFlight {
                        topic,
                        partition,
                        offset,
                        ack: Ack::Pending(ack),
                        dead: false,
                        items,
                        signal,
                    });
                    return;
                }
                // Full (or closing, which the loop sees next): hold it, pause.
                Err((_, item)) => {
                    self.pause();
                    item
                }
            }
        } else {
            item
        };
        self.held.push_back(Held {
            topic,
            partition,
            offset,
            item,
            items,
            signal,
        });
    }

    /// Sends an undecodable message to the dead-letter topic, waiting for
    /// the broker's acknowledgement so its offset is committed only after.
    fn dead_letter(&self, message: &BorrowedMessage<'_>, problem: &str) {
        counter!(instruments::RECEIVER_REFUSED, "receiver" => "kafka", "reason" => "malformed")
            .increment(1);
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            error = problem,
            "undecodable Kafka message"
        );
        let Some((producer, dead_letter_topic)) = &self.dead_letter else {
            counter!(instruments::KAFKA_DEAD_LETTERS, "topic" => message.topic().to_string(), "result" => "skipped")
                .increment(1);
            return;
        };
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        let headers = headers
            .insert(Header {
                key: "doraflow.error",
                value: Some(problem),
            })
            .insert(Header {
                key: "doraflow.source.topic",
                value: Some(message.topic()),
            })
            .insert(Header {
                key: "doraflow.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "doraflow.source.offset",
                value: Some(&offset),
            });
        let payload = message.payload().unwrap_or_default();
        let mut record = BaseRecord::to(dead_letter_topic)
            .payload(payload)
            .headers(headers);
        if let Some(key) = message.key() {
            record = record.key(key);
        }
        let mut attempt = record;
        loop {
            match producer.send(attempt) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    producer.poll(Duration::from_millis(100));
                    attempt = back;
                }
                Err((e, _)) => {
                    tracing::error!(error = %e, "cannot queue a dead-letter message");
                    counter!(instruments::KAFKA_DEAD_LETTERS, "topic" => message.topic().to_string(), "result" => "failed")
                        .increment(1);
                    return;
                }
            }
        }
        match producer.flush(Duration::from_secs(30)) {
            Ok(()) => {
                counter!(instruments::KAFKA_DEAD_LETTERS, "topic" => message.topic().to_string(), "result" => "sent")
                    .increment(1);
            }
            Err(e) => {
                tracing::error!(error = %e, "dead-letter message not confirmed in 30 s");
                counter!(instruments::KAFKA_DEAD_LETTERS, "topic" => message.topic().to_string(), "result" => "failed")
                    .increment(1);
            }
        }
    }
}

/// Counts an error `poll` returned, and logs it unless the consumer
/// context has just logged the same one (see [`Shared::reported`]).
fn poll_error(shared: &Shared, e: &KafkaError) {
    counter!(instruments::KAFKA_ERRORS).increment(1);
    if logged_by_context(shared, e) {
        tracing::debug!(error = %e, "Kafka consumer error (logged above)");
    } else {
        tracing::warn!(error = %e, "Kafka consumer error");
    }
}

/// Whether `e`, returned by `poll`, is the error the context was just told
/// of (and logged); either way the context's report is used up.
fn logged_by_context(shared: &Shared, e: &KafkaError) -> bool {
    let reported = shared
        .reported
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    reported.is_some() && reported == e.rdkafka_error_code()
}

/// Decodes one message by its topic's format.
fn decode(
    format: TopicFormat,
    payload: &[u8],
    headers: Option<&rdkafka::message::BorrowedHeaders>,
    detail: otlp::Detail<'_>,
) -> Result<Telemetry, String> {
    if payload.is_empty() {
        return Err("empty message".to_string());
    }
    match (format.format, format.signal) {
        (KafkaFormat::Cdevents, _) => {
            let events = match binary_context(headers) {
                Some(context) => cdevents::decode_binary(payload, &context)
                    .map(|(event, _)| vec![event])
                    .map_err(|e| e.to_string())?,
                None => cdevents::decode_body(payload, false).map_err(|e| e.to_string())?,
            };
            Ok(Telemetry::Delivery(events))
        }
        (KafkaFormat::OtlpProto, Some(signal)) => {
            otlp::decode_borrowed_with(signal, Encoding::Protobuf, payload, detail)
                .map_err(|e| e.to_string())
        }
        (KafkaFormat::OtlpJson, Some(signal)) => {
            otlp::decode_borrowed_with(signal, Encoding::Json, payload, detail)
                .map_err(|e| e.to_string())
        }
        (_, None) => Err("topic has no signal configured".to_string()),
    }
}

/// Binary-mode CloudEvents attributes from Kafka headers (`ce_*`), if the
/// message is in binary mode (it has `ce_specversion`).
fn binary_context(headers: Option<&rdkafka::message::BorrowedHeaders>) -> Option<BinaryContext> {
    let headers = headers?;
    let get = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
    };
    get("ce_specversion")?;
    Some(BinaryContext {
        id: get("ce_id"),
        event_type: get("ce_type"),
        source: get("ce_source"),
        time: get("ce_time"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// librdkafka's error events reach the context's `error` and then come
    /// back from `poll`: the second sight of the same error is not logged
    /// again; another error, or one the context was not told of, is.
    #[test]
    fn an_error_the_context_logged_is_not_logged_again_when_poll_returns_it() {
        let shared = Shared::default();
        let down = KafkaError::MessageConsumption(RDKafkaErrorCode::AllBrokersDown);
        assert!(!logged_by_context(&shared, &down), "never reported");

        *shared.reported.lock().unwrap() = Some(RDKafkaErrorCode::AllBrokersDown);
        assert!(logged_by_context(&shared, &down));
        // Used up: the next one like it is a new error.
        assert!(!logged_by_context(&shared, &down));

        *shared.reported.lock().unwrap() = Some(RDKafkaErrorCode::BrokerTransportFailure);
        assert!(!logged_by_context(&shared, &down), "a different error");
    }
}
