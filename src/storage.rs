//! `storage.dir`: the processors' state on disk, so that a restart, even
//! after SIGKILL, loses no accepted event and counts none twice.
//!
//! Two kinds of file:
//! - `checkpoint.pb`: the whole state at one instant (DORA history, open
//!   incidents, de-duplication ids, alert states, `red` windows, Kafka
//!   offsets), written every `checkpoint_interval` and at shutdown,
//!   atomically: a temporary file, fsync, rename over the old one, fsync of
//!   the folder. A crash leaves the old checkpoint or the new one, never a
//!   mixture.
//! - `log/<segment>.log`: the delivery events applied since, appended and
//!   fsynced *before* their sender is acknowledged (group commit: one fsync
//!   for everything queued meanwhile). A checkpoint starts a new segment and
//!   names it; older segments are deleted once it is durable.
//!
//! At start the checkpoint is loaded and the log segments from the one it
//! names are replayed. A checkpoint or a log record that fails its CRC, is
//! truncated where it cannot be, or comes from a newer format is refused with
//! the file, the offset and what is wrong: doraflow does not start on a
//! half-read state. The one exception is the tail of the newest segment: a
//! crash in the middle of an append leaves a partial record there that was
//! never acknowledged, so it is cut off (and logged).
//!
//! Telemetry (spans, logs, metrics) is not logged, only checkpointed: at
//! 1 M spans/s an fsync per batch would cost more than everything else. A
//! Kafka receiver gets exactness for it anyway (offsets are committed only
//! once a checkpoint holding their effects is durable, and a restart skips
//! what the checkpoint already holds); OTLP clients over gRPC/HTTP lose the
//! `red` figures of at most one interval on SIGKILL, never a delivery event.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use metrics::{counter, gauge};
use prost::Message;
use tokio::sync::oneshot;

use crate::instruments;
use crate::model::delivery::DeliveryEvent;
use crate::processors::Applied;
use crate::proto::{Checkpoint, EventRecord, KafkaOffset, LogRecord};

/// `storage`: where the processors' state is kept.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// The folder (created if missing; one doraflow process at a time).
    pub dir: PathBuf,
    /// How often the whole state is checkpointed. Default `10s`. Delivery
    /// events are durable before they are acknowledged whatever this is; it
    /// bounds the log replayed at start and, without Kafka, the `red` figures
    /// a SIGKILL can lose.
    #[serde(default = "default_checkpoint_interval")]
    pub checkpoint_interval: crate::settings::ConfigDuration,
}

fn default_checkpoint_interval() -> crate::settings::ConfigDuration {
    crate::settings::ConfigDuration::from_secs(10)
}

impl StorageConfig {
    /// Cross-field checks, each problem prefixed with its key path.
    pub fn validate(&self, path: &str, errors: &mut Vec<String>) {
        if self.dir.as_os_str().is_empty() {
            errors.push(format!("{path}.dir: must name a folder"));
        }
        if self.checkpoint_interval.get().is_zero() {
            errors.push(format!("{path}.checkpoint_interval: must be longer than 0"));
        }
    }
}

/// The checkpoint format this version writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

/// The first bytes of a checkpoint file.
const CHECKPOINT_MAGIC: &[u8; 8] = b"DFCKPT\r\n";
/// The first bytes of a log segment.
const LOG_MAGIC: &[u8; 8] = b"DFLOG\r\n\0";
/// Magic, format version (u32), CRC-32 of the payload (u32), length (u64).
const CHECKPOINT_HEADER: usize = 8 + 4 + 4 + 8;
/// Magic, format version (u32).
const LOG_HEADER: usize = 8 + 4;
/// Length (u32) and CRC-32 (u32) before each log record.
const RECORD_HEADER: usize = 8;
/// The largest log record read back: a bigger length is corruption.
const MAX_RECORD: usize = 256 << 20;

/// What was wrong with the state on disk.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The folder or a file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another doraflow holds the folder.
    #[error("{0}: another doraflow process uses this storage folder")]
    Locked(PathBuf),
    /// A file is damaged or not one of ours.
    #[error(
        "{path}: {problem}; refusing to start on a damaged state (move the file away to start empty)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the byte offset.
        problem: String,
    },
    /// Written by a newer doraflow.
    #[error(
        "{path}: written in format {found} by a newer doraflow; this one reads formats up to {FORMAT_VERSION}"
    )]
    Newer {
        /// The file.
        path: PathBuf,
        /// Its format.
        found: u32,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn corrupt(path: &Path, problem: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// What was on disk at start.
#[derive(Debug, Default)]
pub struct Restored {
    /// The latest checkpoint, if there was one.
    pub checkpoint: Option<Checkpoint>,
    /// The delivery events logged since, batch by batch, in order.
    pub batches: Vec<Vec<DeliveryEvent>>,
    /// The segment the log goes on in.
    pub next_segment: u64,
    /// Bytes cut off the newest segment's tail (an append a crash interrupted).
    pub truncated: u64,
}

/// The storage folder, locked for this process.
pub struct Storage {
    dir: PathBuf,
    /// Held open for the lock.
    _lock: File,
}

impl Storage {
    /// Opens (creating it if needed) and locks `dir`.
    pub fn open(dir: &Path) -> Result<Storage, StorageError> {
        fs::create_dir_all(dir.join("log")).map_err(io_error(dir))?;
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StorageError::Locked(dir.into())),
            Err(fs::TryLockError::Error(e)) => return Err(io_error(&lock_path)(e)),
        }
        Ok(Storage {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.dir.join("checkpoint.pb")
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        self.dir.join("log").join(format!("{segment:016}.log"))
    }

    /// Log segments on disk, in order.
    fn segments(&self) -> Result<Vec<u64>, StorageError> {
        let log = self.dir.join("log");
        let mut segments = Vec::new();
        for entry in fs::read_dir(&log).map_err(io_error(&log))? {
            let entry = entry.map_err(io_error(&log))?;
            let name = entry.file_name();
            let Some(number) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            segments.push(number);
        }
        segments.sort_unstable();
        Ok(segments)
    }

    /// Reads the checkpoint and the log after it. The newest segment's torn
    /// tail is cut off; anything else damaged is an error.
    pub fn restore(&self) -> Result<Restored, StorageError> {
        let checkpoint = read_checkpoint(&self.checkpoint_path())?;
        let from = checkpoint.as_ref().map_or(0, |c| c.log_segment);
        let segments: Vec<u64> = self
            .segments()?
            .into_iter()
            .filter(|s| *s >= from)
            .collect();
        let mut restored = Restored {
            next_segment: segments.last().map_or(from, |s| s + 1),
            checkpoint,
            ..Restored::default()
        };
        for (i, &segment) in segments.iter().enumerate() {
            let newest = i + 1 == segments.len();
            let path = self.segment_path(segment);
            let (batches, valid, len) = read_segment(&path, newest)?;
            if valid < len {
                tracing::warn!(
                    file = %path.display(),
                    at = valid,
                    bytes = len - valid,
                    "the log's last append was interrupted (never acknowledged); cutting it off"
                );
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                file.set_len(valid).map_err(io_error(&path))?;
                file.sync_all().map_err(io_error(&path))?;
                restored.truncated += len - valid;
            }
            restored.batches.extend(batches);
        }
        Ok(restored)
    }

    /// Writes `checkpoint` atomically: temporary file, fsync, rename, fsync
    /// of the folder. Returns the bytes written.
    pub fn write_checkpoint(&self, checkpoint: &Checkpoint) -> Result<u64, StorageError> {
        let path = self.checkpoint_path();
        let tmp = self.dir.join("checkpoint.pb.tmp");
        let payload = checkpoint.encode_to_vec();
        let mut bytes = Vec::with_capacity(CHECKPOINT_HEADER + payload.len());
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&payload);
        let mut file = File::create(&tmp).map_err(io_error(&tmp))?;
        file.write_all(&bytes).map_err(io_error(&tmp))?;
        file.sync_all().map_err(io_error(&tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_error(&path))?;
        sync_dir(&self.dir)?;
        Ok(bytes.len() as u64)
    }

    /// Deletes log segments older than `segment`.
    fn delete_segments_before(&self, segment: u64) -> Result<(), StorageError> {
        for old in self.segments()?.into_iter().filter(|s| *s < segment) {
            let path = self.segment_path(old);
            fs::remove_file(&path).map_err(io_error(&path))?;
        }
        sync_dir(&self.dir.join("log"))
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}

/// Reads and checks a checkpoint file; `None` if there is none.
pub fn read_checkpoint(path: &Path) -> Result<Option<Checkpoint>, StorageError> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path)(e)),
    };
    if bytes.len() < CHECKPOINT_HEADER {
        return Err(corrupt(
            path,
            format!("{} bytes, shorter than the header", bytes.len()),
        ));
    }
    if &bytes[..8] != CHECKPOINT_MAGIC {
        return Err(corrupt(path, "not a doraflow checkpoint (bad magic)"));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version > FORMAT_VERSION {
        return Err(StorageError::Newer {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let crc = word(12);
    let mut len = [0u8; 8];
    len.copy_from_slice(&bytes[16..24]);
    let len = u64::from_le_bytes(len);
    let payload = &bytes[CHECKPOINT_HEADER..];
    if payload.len() as u64 != len {
        return Err(corrupt(
            path,
            format!(
                "the header says {len} bytes of state, the file has {}",
                payload.len()
            ),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(corrupt(path, "the state fails its CRC-32"));
    }
    let checkpoint = Checkpoint::decode(payload)
        .map_err(|e| corrupt(path, format!("the state does not decode: {e}")))?;
    if checkpoint.format_version != version {
        return Err(corrupt(
            path,
            format!(
                "the header says format {version}, the state {}",
                checkpoint.format_version
            ),
        ));
    }
    Ok(Some(checkpoint))
}

/// Reads a log segment: its batches, the length of its valid part and its
/// length. A damaged record ends the valid part if the segment is the
/// newest (`tail_may_tear`), and is an error otherwise.
fn read_segment(
    path: &Path,
    tail_may_tear: bool,
) -> Result<(Vec<Vec<DeliveryEvent>>, u64, u64), StorageError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(io_error(path))?;
    let len = bytes.len() as u64;
    let mut batches = Vec::new();
    if bytes.len() < LOG_HEADER {
        // Created, header not yet durable: nothing was acknowledged from it.
        if tail_may_tear {
            return Ok((batches, 0, len));
        }
        return Err(corrupt(path, "shorter than the header"));
    }
    if &bytes[..8] != LOG_MAGIC {
        return Err(corrupt(path, "not a doraflow log (bad magic)"));
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version > FORMAT_VERSION {
        return Err(StorageError::Newer {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let mut at = LOG_HEADER;
    while at < bytes.len() {
        let damaged = |problem: String| -> Result<_, StorageError> {
            if tail_may_tear {
                Ok(())
            } else {
                Err(corrupt(path, format!("record at byte {at}: {problem}")))
            }
        };
        if bytes.len() - at < RECORD_HEADER {
            damaged("truncated header".into())?;
            break;
        }
        let size =
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]) as usize;
        let crc = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let start = at + RECORD_HEADER;
        if size > MAX_RECORD || bytes.len() - start < size {
            damaged(format!("{size} bytes announced, fewer there"))?;
            break;
        }
        let payload = &bytes[start..start + size];
        if crc32fast::hash(payload) != crc {
            damaged("fails its CRC-32".into())?;
            break;
        }
        let record = LogRecord::decode(payload)
            .map_err(|e| corrupt(path, format!("record at byte {at} does not decode: {e}")))?;
        let events = record
            .events
            .into_iter()
            .map(crate::processors::dora::state::from_event_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(path, format!("record at byte {at}: {e}")))?;
        batches.push(events);
        at = start + size;
    }
    Ok((batches, at as u64, len))
}

/// What the Kafka receiver needs when there is storage.
pub struct KafkaDurability {
    /// Offsets whose effects are durable: commits go no further.
    pub durable: DurableOffsets,
    /// Per (topic, partition), the next offset the restored checkpoint does
    /// not hold: messages before it are skipped, not applied twice.
    pub resume: HashMap<(String, i32), i64>,
    /// Asks the engine for a checkpoint (hand-over, shutdown); the reply
    /// says whether it became durable.
    pub checkpoint: tokio::sync::mpsc::Sender<oneshot::Sender<bool>>,
}

/// Kafka offsets whose effects are durable: the consumer commits up to them.
#[derive(Debug, Clone, Default)]
pub struct DurableOffsets(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl DurableOffsets {
    /// The next offset of `topic`/`partition` whose message is not yet
    /// durable, if any of it is.
    pub fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(topic.to_string(), partition)).copied()
    }

    pub(crate) fn set(&self, offsets: &[KafkaOffset]) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for o in offsets {
            map.insert((o.topic.clone(), o.partition), o.next_offset);
        }
    }
}

/// What the writer thread is asked to do, in order.
pub enum Command {
    /// Append a record; once it is durable, acknowledge.
    Append {
        /// The events.
        record: LogRecord,
        /// The senders to acknowledge, with what to tell them.
        acks: Vec<(oneshot::Sender<Applied>, Applied)>,
    },
    /// Start segment `checkpoint.log_segment`, write the checkpoint, delete
    /// the segments before it; then tell `done`.
    Checkpoint {
        /// The state.
        checkpoint: Box<Checkpoint>,
        /// Told once it is durable (or failed).
        done: Vec<oneshot::Sender<bool>>,
    },
}

/// The engine's handle on the writer thread.
pub struct Writer {
    tx: Option<std::sync::mpsc::Sender<Command>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer on `storage`, appending to `segment`.
    pub fn start(
        storage: Storage,
        segment: u64,
        durable: DurableOffsets,
    ) -> Result<Writer, StorageError> {
        let file = open_segment(&storage.segment_path(segment))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("doraflow-storage".into())
            .spawn(move || {
                WriterThread {
                    storage,
                    file,
                    segment,
                    durable,
                }
                .run(rx)
            })
            .map_err(io_error(Path::new("storage writer thread")))?;
        Ok(Writer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a command. The writer only stops when the engine drops it, so
    /// a send fails only if the thread died; the caller's acks then drop,
    /// which its senders see as the pipeline stopping.
    pub fn send(&self, command: Command) {
        if let Some(tx) = &self.tx
            && tx.send(command).is_err()
        {
            tracing::error!("the storage writer has stopped; state is no longer durable");
        }
    }

    /// Lets the writer finish what is queued and waits for it.
    pub fn stop(mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn open_segment(path: &Path) -> Result<File, StorageError> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_error(path))?;
    let empty = file.metadata().map_err(io_error(path))?.len() == 0;
    if empty {
        let mut header = Vec::with_capacity(LOG_HEADER);
        header.extend_from_slice(LOG_MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.write_all(&header).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))?;
        if let Some(parent) = path.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(file)
}

struct WriterThread {
    storage: Storage,
    file: File,
    segment: u64,
    durable: DurableOffsets,
}

impl WriterThread {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Command>) {
        let mut buffer = Vec::with_capacity(64 << 10);
        let mut acks = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            // Group commit: everything already queued goes in one fsync.
            while let Some(command) = next.take() {
                match command {
                    Command::Append { record, acks: a } => {
                        let payload = record.encode_to_vec();
                        buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                        buffer.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
                        buffer.extend_from_slice(&payload);
                        acks.extend(a);
                    }
                    Command::Checkpoint { checkpoint, done } => {
                        self.flush(&mut buffer, &mut acks);
                        self.checkpoint(&checkpoint, done);
                    }
                }
                if buffer.len() < (4 << 20) {
                    next = rx.try_recv().ok();
                }
            }
            self.flush(&mut buffer, &mut acks);
        }
        self.flush(&mut buffer, &mut acks);
    }

    /// Writes and fsyncs the buffer, then acknowledges. On failure the acks
    /// are dropped: their senders see the batch as not applied and retry
    /// (Kafka re-reads it; HTTP and gRPC clients get an error).
    fn flush(&mut self, buffer: &mut Vec<u8>, acks: &mut Vec<(oneshot::Sender<Applied>, Applied)>) {
        if buffer.is_empty() && acks.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
        let result = self
            .file
            .write_all(buffer)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                counter!(instruments::STORAGE_LOG_BYTES).increment(buffer.len() as u64);
                counter!(instruments::STORAGE_LOG_SYNCS).increment(1);
                tracing::trace!(elapsed = ?started.elapsed(), "log synced");
                for (ack, applied) in acks.drain(..) {
                    let _ = ack.send(applied);
                }
            }
            Err(e) => {
                counter!(instruments::STORAGE_ERRORS, "operation" => "log").increment(1);
                tracing::error!(error = %e, segment = self.segment, "cannot append to the delivery log; the batches are refused");
                acks.clear();
            }
        }
        buffer.clear();
    }

    fn checkpoint(&mut self, checkpoint: &Checkpoint, done: Vec<oneshot::Sender<bool>>) {
        let started = std::time::Instant::now();
        let result = (|| -> Result<u64, StorageError> {
            if checkpoint.log_segment != self.segment {
                self.file = open_segment(&self.storage.segment_path(checkpoint.log_segment))?;
                self.segment = checkpoint.log_segment;
            }
            let bytes = self.storage.write_checkpoint(checkpoint)?;
            self.storage.delete_segments_before(self.segment)?;
            Ok(bytes)
        })();
        let ok = match result {
            Ok(bytes) => {
                self.durable.set(&checkpoint.kafka_offsets);
                gauge!(instruments::STORAGE_CHECKPOINT_BYTES).set(bytes as f64);
                gauge!(instruments::STORAGE_CHECKPOINT_TIME)
                    .set(checkpoint.written_at_ns as f64 / 1e9);
                gauge!(instruments::STORAGE_CHECKPOINT_SECONDS)
                    .set(started.elapsed().as_secs_f64());
                tracing::debug!(bytes, segment = self.segment, "checkpoint written");
                true
            }
            Err(e) => {
                counter!(instruments::STORAGE_ERRORS, "operation" => "checkpoint").increment(1);
                tracing::error!(error = %e, "checkpoint failed; the previous one and the log still hold the state");
                false
            }
        };
        for d in done {
            let _ = d.send(ok);
        }
    }
}

/// Builds a log record from events.
pub fn log_record(events: &[DeliveryEvent]) -> LogRecord {
    LogRecord {
        events: events
            .iter()
            .map(crate::processors::dora::state::event_record)
            .collect::<Vec<EventRecord>>(),
    }
}

#[cfg(test)]
mod tests;
