//! The changelog topic of a consumer group (`<group_id>.changelog`): the
//! state of record of what the group consumes, as Kafka Streams keeps it.
//!
//! The state of each input partition (every series and every piece of
//! processor state made from what was consumed from partition `p` of the
//! input topics) is written to partition `p` of the changelog, one record
//! per piece, keyed by the piece ([`crate::proto::ChangelogRecord`] says
//! which keys hold what). The owner writes the pieces that changed, and the
//! input offsets they cover, in one Kafka transaction per flush, and the
//! consumer commits the input offsets only once that transaction is
//! committed: the changelog is never behind the committed offsets.
//!
//! A replica given a partition reads its changelog partition to the end
//! before it consumes the input. "The end" is found with a fence: the
//! replica writes a record with a token of its own and reads until it sees
//! it, which needs neither the broker's high watermark nor compaction (the
//! last record of a key wins, a tombstone deletes). It reads committed
//! records only, so a flush cut short by a crash is not half applied.

use std::collections::HashMap;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::oneshot;

use super::config::KafkaReceiverConfig;
use crate::proto::KafkaOffset;
use crate::storage::DurableOffsets;

/// How long a transaction may take to commit.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a restore waits for the next record before it gives up.
const READ_STALL: Duration = Duration::from_secs(60);

/// One record to write: a piece of partition `partition`'s state, or its
/// tombstone (`value: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The changelog partition: the input partition the state belongs to.
    pub partition: i32,
    /// The piece's key.
    pub key: Vec<u8>,
    /// The piece, encoded, or `None` to delete it.
    pub value: Option<Vec<u8>>,
}

/// What the writer thread is asked to do, in order.
enum Command {
    Flush {
        entries: Vec<Entry>,
        offsets: Vec<KafkaOffset>,
        done: Vec<oneshot::Sender<bool>>,
    },
    Fences {
        fences: Vec<Entry>,
        done: oneshot::Sender<Result<(), String>>,
    },
    Forget {
        partitions: Vec<i32>,
    },
}

/// Notes the offset of every record delivered, per partition, and logs
/// the ones the broker refused.
struct WriterContext {
    written: Written,
}

/// Per changelog partition, the offset of the last record this process
/// wrote there: a replica that gets a partition back checks that nothing
/// came after it but its own fence before it reuses the state it kept.
type Written = std::sync::Arc<std::sync::Mutex<HashMap<i32, i64>>>;

impl ClientContext for WriterContext {
    fn error(&self, error: KafkaError, reason: &str) {
        // A broker down is seen by the consumer too, and logged there.
        tracing::debug!(error = %error, "changelog producer: {reason}");
    }
}

impl ProducerContext for WriterContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
                let last = written.entry(message.partition()).or_insert(-1);
                *last = (*last).max(message.offset());
            }
            // The transaction then fails to commit and is written again.
            Err((e, _)) => tracing::warn!(error = %e, "changelog record not delivered"),
        }
    }
}

/// The changelog's producer, on a thread of its own (commits block).
/// Cloned handles share the thread; it ends when the last one is dropped.
#[derive(Clone)]
pub struct ChangelogWriter {
    tx: std_mpsc::Sender<Command>,
    written: Written,
}

impl ChangelogWriter {
    /// Starts the writer of `topic`: a transactional producer whose
    /// committed flushes advance `durable`, which the consumer commits up to.
    pub fn start(
        config: &KafkaReceiverConfig,
        topic: &str,
        durable: DurableOffsets,
    ) -> anyhow::Result<ChangelogWriter> {
        let mut client = ClientConfig::new();
        // lz4 rather than zstd: the changelog is written on the consume
        // path, and zstd's CPU cost there was a measured 20% of the
        // spans per CPU-second (BENCHMARKS.md); lz4 keeps most of the
        // size saving for a fraction of it. The user's settings may
        // override both.
        client.set("compression.type", "lz4").set("linger.ms", "5");
        for (key, value) in &config.settings {
            client.set(key, value);
        }
        // A transactional id of this process alone: two replicas never
        // share one (which would fence each other); a restarted replica
        // takes a new one.
        let transactional_id = format!(
            "{topic}-{}-{}",
            std::process::id(),
            crate::clock::Clock::now_ns(&crate::clock::SystemClock)
        );
        let written = Written::default();
        let producer: BaseProducer<WriterContext> = client
            .set("bootstrap.servers", &config.brokers)
            .set("client.id", format!("{}-changelog", config.client_id))
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .create_with_context(WriterContext {
                written: written.clone(),
            })
            .map_err(|e| {
                anyhow::anyhow!("receivers.kafka.changelog: cannot create the producer: {e}")
            })?;
        producer
            .init_transactions(TRANSACTION_TIMEOUT)
            .map_err(|e| {
                anyhow::anyhow!(
                    "receivers.kafka.changelog: the broker refused transactions on `{topic}`: {e}"
                )
            })?;
        let (tx, rx) = std_mpsc::channel();
        let topic = topic.to_string();
        std::thread::Builder::new()
            .name("doraflow-changelog".into())
            .spawn(move || write_loop(producer, &topic, &durable, &rx))?;
        Ok(ChangelogWriter { tx, written })
    }

    /// Writes `entries` and `offsets` (the input offsets they cover) in one
    /// transaction; once it is committed the offsets become durable and
    /// `done` hears `true`. A flush that fails is carried into the next one.
    pub fn flush(
        &self,
        entries: Vec<Entry>,
        offsets: Vec<KafkaOffset>,
        done: Vec<oneshot::Sender<bool>>,
    ) {
        let _ = self.tx.send(Command::Flush {
            entries,
            offsets,
            done,
        });
    }

    /// Forgets what failed flushes left to write of `partitions`: they went
    /// to another replica, which restores them from what was committed (and
    /// reads the input again from there), so writing it later would put
    /// stale state over theirs.
    pub fn forget(&self, partitions: Vec<i32>) {
        let _ = self.tx.send(Command::Forget { partitions });
    }

    /// The offset of the last record this process wrote to `partition`.
    pub fn last_written(&self, partition: i32) -> Option<i64> {
        self.written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&partition)
            .copied()
    }

    /// Writes fence records (one per partition restored) in one
    /// transaction and waits until it is committed.
    pub fn fences(&self, fences: Vec<Entry>) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Command::Fences { fences, done })
            .map_err(|_| "the changelog writer has stopped".to_string())?;
        result
            .blocking_recv()
            .map_err(|_| "the changelog writer has stopped".to_string())?
    }
}

fn write_loop(
    producer: BaseProducer<WriterContext>,
    topic: &str,
    durable: &DurableOffsets,
    rx: &std_mpsc::Receiver<Command>,
) {
    // Entries of flushes that failed, by (partition, key): written with the
    // next flush, the later value of a key winning.
    let mut carry: HashMap<(i32, Vec<u8>), Option<Vec<u8>>> = HashMap::new();
    let mut carried_offsets: Vec<KafkaOffset> = Vec::new();
    while let Ok(command) = rx.recv() {
        match command {
            Command::Flush {
                entries,
                offsets,
                done,
            } => {
                let entries: Vec<Entry> = if carry.is_empty() {
                    entries
                } else {
                    for e in entries {
                        carry.insert((e.partition, e.key), e.value);
                    }
                    carry
                        .drain()
                        .map(|((partition, key), value)| Entry {
                            partition,
                            key,
                            value,
                        })
                        .collect()
                };
                let mut offsets_all = std::mem::take(&mut carried_offsets);
                offsets_all.extend(offsets);
                let result = transaction(&producer, topic, entries.iter());
                match result {
                    Ok(()) => {
                        durable.set(&offsets_all);
                        for d in done {
                            let _ = d.send(true);
                        }
                    }
                    Err(e) => {
                        tracing::error!(
                            topic,
                            error = %e,
                            records = entries.len(),
                            "changelog flush failed; it is written again with the next one, and offsets are not committed meanwhile"
                        );
                        metrics::counter!(crate::instruments::CHANGELOG_FAILURES).increment(1);
                        for e in entries {
                            carry.insert((e.partition, e.key), e.value);
                        }
                        carried_offsets = offsets_all;
                        for d in done {
                            let _ = d.send(false);
                        }
                    }
                }
            }
            Command::Forget { partitions } => {
                carry.retain(|(partition, _), _| !partitions.contains(partition));
                carried_offsets.retain(|o| !partitions.contains(&o.partition));
            }
            Command::Fences { fences, done } => {
                let _ = done
                    .send(transaction(&producer, topic, fences.iter()).map_err(|e| e.to_string()));
            }
        }
    }
}

/// Sends `entries` in one transaction and commits it; aborts on failure.
fn transaction<'a>(
    producer: &BaseProducer<WriterContext>,
    topic: &str,
    entries: impl Iterator<Item = &'a Entry>,
) -> Result<(), KafkaError> {
    producer.begin_transaction()?;
    let mut written = 0u64;
    let mut bytes = 0u64;
    let sent = (|| {
        for e in entries {
            let mut record = BaseRecord::to(topic).partition(e.partition).key(&e.key);
            if let Some(value) = &e.value {
                record = record.payload(value);
                bytes += value.len() as u64;
            }
            let mut attempt = record;
            loop {
                match producer.send(attempt) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        producer.poll(Duration::from_millis(10));
                        attempt = back;
                    }
                    Err((e, _)) => return Err(e),
                }
            }
            written += 1;
        }
        producer.commit_transaction(TRANSACTION_TIMEOUT)?;
        // Delivery reports (the offsets written) are served by a poll.
        producer.poll(Duration::ZERO);
        Ok(())
    })();
    if let Err(e) = sent {
        if let Err(abort) = producer.abort_transaction(TRANSACTION_TIMEOUT) {
            tracing::warn!(error = %abort, "changelog transaction not aborted");
        }
        return Err(e);
    }
    metrics::counter!(crate::instruments::CHANGELOG_RECORDS).increment(written);
    metrics::counter!(crate::instruments::CHANGELOG_BYTES).increment(bytes);
    Ok(())
}

/// A partition's state pieces by key.
type Pieces = HashMap<Vec<u8>, Vec<u8>>;

/// What [`read_partitions`] read of one partition.
#[derive(Debug, Default)]
pub struct PartitionRead {
    /// The last value of every key still set, in no order.
    pub pieces: Vec<(Vec<u8>, Vec<u8>)>,
    /// Records read before the fence (values and tombstones).
    pub records: usize,
}

/// One partition to read: from `start` (`None`: its beginning) up to the
/// fence record `key`, `value`, which the caller wrote first.
pub struct FencedRead {
    /// The changelog partition.
    pub partition: i32,
    /// The first offset to read.
    pub start: Option<i64>,
    /// The fence's key.
    pub key: Vec<u8>,
    /// The fence's value.
    pub value: Vec<u8>,
}

/// Reads partitions of the changelog `topic`, each from its start up to its
/// fence, with one reader.
pub fn read_partitions(
    config: &KafkaReceiverConfig,
    topic: &str,
    fences: &[FencedRead],
) -> anyhow::Result<HashMap<i32, PartitionRead>> {
    let mut client = ClientConfig::new();
    for (key, value) in &config.settings {
        client.set(key, value);
    }
    let consumer: BaseConsumer = client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", format!("{}.changelog-restore", config.group_id))
        .set(
            "client.id",
            format!("{}-changelog-restore", config.client_id),
        )
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // The fence is the last record: no waiting for more data.
        .set("fetch.wait.max.ms", "10")
        .set("enable.partition.eof", "false")
        .create()
        .map_err(|e| anyhow::anyhow!("changelog `{topic}`: cannot create a reader: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    for f in fences {
        let start = f.start.map_or(Offset::Beginning, Offset::Offset);
        assignment
            .add_partition_offset(topic, f.partition, start)
            .map_err(|e| anyhow::anyhow!("changelog `{topic}`: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| anyhow::anyhow!("changelog `{topic}`: {e}"))?;
    // Per partition: the last value of each key, and records read.
    let mut state: HashMap<i32, (Pieces, usize)> = HashMap::new();
    let mut open: HashMap<i32, (&[u8], &[u8])> = fences
        .iter()
        .map(|f| (f.partition, (f.key.as_slice(), f.value.as_slice())))
        .collect();
    let mut last = Instant::now();
    while !open.is_empty() {
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            if last.elapsed() > READ_STALL {
                anyhow::bail!(
                    "changelog `{topic}` partitions {:?}: no record for {} s before the fence",
                    open.keys().collect::<Vec<_>>(),
                    READ_STALL.as_secs()
                );
            }
            continue;
        };
        last = Instant::now();
        let message = message.map_err(|e| anyhow::anyhow!("changelog `{topic}`: {e}"))?;
        let partition = message.partition();
        let Some(fence) = open.get(&partition) else {
            // Past its fence: written after the restore began.
            continue;
        };
        let key = message.key().unwrap_or_default();
        let (pieces, records) = state.entry(partition).or_default();
        match message.payload() {
            Some(value) if key == fence.0 && value == fence.1 => {
                open.remove(&partition);
                continue;
            }
            Some(value) => {
                pieces.insert(key.to_vec(), value.to_vec());
            }
            None => {
                pieces.remove(key);
            }
        }
        *records += 1;
    }
    Ok(fences
        .iter()
        .map(|f| {
            let (pieces, records) = state.remove(&f.partition).unwrap_or_default();
            let read = PartitionRead {
                pieces: pieces.into_iter().collect(),
                records,
            };
            (f.partition, read)
        })
        .collect())
}

/// The partitions of the input topics (the most any of them has; they
/// should all have the same), waiting up to `wait` for them to exist.
pub fn input_partitions(config: &KafkaReceiverConfig, wait: Duration) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = metadata_client(config)
        .create()
        .map_err(|e| anyhow::anyhow!("receivers.kafka: cannot create a client: {e}"))?;
    let start = Instant::now();
    loop {
        let mut counts = Vec::new();
        for t in &config.topics {
            let metadata = consumer
                .fetch_metadata(Some(&t.topic), Duration::from_secs(10))
                .map_err(|e| anyhow::anyhow!("receivers.kafka: metadata of `{}`: {e}", t.topic))?;
            let n = metadata
                .topics()
                .first()
                .filter(|m| m.error().is_none())
                .map_or(0, |m| m.partitions().len() as i32);
            counts.push((t.topic.as_str(), n));
        }
        let most = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
        if counts.iter().all(|(_, n)| *n > 0) {
            if counts.iter().any(|(_, n)| *n != most) {
                tracing::warn!(
                    ?counts,
                    "the input topics have different partition counts: a service's spans and events may then land in partitions of different numbers, owned by different replicas"
                );
            }
            return Ok(most);
        }
        if start.elapsed() >= wait {
            let missing: Vec<&str> = counts
                .iter()
                .filter(|(_, n)| *n == 0)
                .map(|(t, _)| *t)
                .collect();
            anyhow::bail!(
                "receivers.kafka: the input topics {missing:?} do not exist; with the changelog on, doraflow needs them to size it"
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Creates the changelog topic if missing: compacted, `partitions`
/// partitions. An existing one with fewer partitions than the input is an
/// error (state of the partitions past its end would have nowhere to go).
pub async fn ensure_topic(
    config: &KafkaReceiverConfig,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    for (key, value) in &config.settings {
        client.set(key, value);
    }
    let admin: AdminClient<DefaultClientContext> = client
        .set("bootstrap.servers", &config.brokers)
        .create()
        .map_err(|e| anyhow::anyhow!("receivers.kafka.changelog: cannot create a client: {e}"))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let results = admin
        .create_topics(&[new], &AdminOptions::new())
        .await
        .map_err(|e| anyhow::anyhow!("receivers.kafka.changelog: cannot create `{topic}`: {e}"))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions, "changelog topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let existing = tokio::task::spawn_blocking({
                    let config = config.clone();
                    let topic = topic.to_string();
                    move || topic_partitions(&config, &topic)
                })
                .await??;
                if existing < partitions {
                    anyhow::bail!(
                        "receivers.kafka.changelog: `{topic}` has {existing} partitions, fewer than the input's {partitions}; give it {partitions} or name another topic"
                    );
                }
            }
            Err((_, e)) => {
                anyhow::bail!("receivers.kafka.changelog: cannot create `{topic}`: {e}")
            }
        }
    }
    Ok(())
}

fn topic_partitions(config: &KafkaReceiverConfig, topic: &str) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = metadata_client(config).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map_or(0, |m| m.partitions().len() as i32))
}

/// A client for metadata look-ups, with the receiver's settings (TLS, SASL).
fn metadata_client(config: &KafkaReceiverConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in &config.settings {
        client.set(key, value);
    }
    client.set("bootstrap.servers", &config.brokers).set(
        "group.id",
        format!("{}.changelog-metadata", config.group_id),
    );
    client
}
