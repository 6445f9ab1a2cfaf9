use super::*;
use crate::model::delivery::DeliveryKind;

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let path = std::env::temp_dir().join(format!(
            "doraflow-storage-{name}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = fs::remove_dir_all(&path);
        Dir(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn event(id: &str) -> DeliveryEvent {
    DeliveryEvent {
        id: id.into(),
        time: 1_700_000_000_000_000_000,
        kind: DeliveryKind::IncidentResolved {
            incident: format!("incident-{id}"),
        },
    }
}

fn checkpoint(segment: u64) -> Checkpoint {
    Checkpoint {
        format_version: FORMAT_VERSION,
        written_at_ns: 42,
        log_segment: segment,
        kafka_offsets: vec![KafkaOffset {
            topic: "t".into(),
            partition: 3,
            next_offset: 17,
        }],
        ..Checkpoint::default()
    }
}

/// Appends batches through a writer and waits until each is acknowledged.
fn append(writer: &Writer, batches: &[&[&str]]) {
    for ids in batches {
        let events: Vec<_> = ids.iter().map(|id| event(id)).collect();
        let (ack, applied) = oneshot::channel();
        writer.send(Command::Append {
            record: log_record(&events),
            acks: vec![(ack, Applied::default())],
        });
        applied.blocking_recv().expect("acknowledged once durable");
    }
}

fn ids(restored: &Restored) -> Vec<Vec<String>> {
    restored
        .batches
        .iter()
        .map(|b| b.iter().map(|e| e.id.clone()).collect())
        .collect()
}

fn write_checkpoint(writer: &Writer, segment: u64) -> bool {
    let (done, durable) = oneshot::channel();
    writer.send(Command::Checkpoint {
        checkpoint: Box::new(checkpoint(segment)),
        done: vec![done],
    });
    durable.blocking_recv().unwrap()
}

#[test]
fn the_log_after_the_checkpoint_is_replayed_and_older_segments_go() {
    let dir = Dir::new("replay");
    let durable = DurableOffsets::default();
    let writer = Writer::start(Storage::open(&dir.0).unwrap(), 0, durable.clone()).unwrap();
    append(&writer, &[&["a"], &["b", "c"]]);
    assert!(write_checkpoint(&writer, 1));
    assert_eq!(durable.get("t", 3), Some(17));
    append(&writer, &[&["d"]]);
    writer.stop();

    let storage = Storage::open(&dir.0).unwrap();
    assert_eq!(storage.segments().unwrap(), vec![1]);
    let restored = storage.restore().unwrap();
    assert_eq!(restored.checkpoint, Some(checkpoint(1)));
    assert_eq!(ids(&restored), vec![vec!["d".to_string()]]);
    assert_eq!(restored.next_segment, 2);
}

#[test]
fn a_second_process_cannot_take_the_folder() {
    let dir = Dir::new("lock");
    let _first = Storage::open(&dir.0).unwrap();
    let err = Storage::open(&dir.0).err().unwrap();
    assert!(matches!(err, StorageError::Locked(_)), "{err}");
}

#[test]
fn a_torn_tail_is_cut_off_and_earlier_records_kept() {
    let dir = Dir::new("torn");
    let writer =
        Writer::start(Storage::open(&dir.0).unwrap(), 0, DurableOffsets::default()).unwrap();
    append(&writer, &[&["a"], &["b"]]);
    writer.stop();
    let path = dir.0.join("log").join(format!("{:016}.log", 0));
    let whole = fs::metadata(&path).unwrap().len();
    // An append the crash cut in the middle: a header and half a record.
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
    drop(file);
    let restored = Storage::open(&dir.0).unwrap().restore().unwrap();
    assert_eq!(
        ids(&restored),
        vec![vec!["a".to_string()], vec!["b".to_string()]]
    );
    assert_eq!(restored.truncated, 10);
    assert_eq!(fs::metadata(&path).unwrap().len(), whole);
}

#[test]
fn damage_before_the_tail_is_refused() {
    let dir = Dir::new("damaged-log");
    let writer =
        Writer::start(Storage::open(&dir.0).unwrap(), 0, DurableOffsets::default()).unwrap();
    append(&writer, &[&["a"]]);
    // Segment 1 is the newest; segment 0 was complete, so damage there is corruption.
    let (done, durable) = oneshot::channel();
    writer.send(Command::Checkpoint {
        checkpoint: Box::new(Checkpoint {
            log_segment: 1,
            format_version: FORMAT_VERSION,
            ..Checkpoint::default()
        }),
        done: vec![done],
    });
    assert!(durable.blocking_recv().unwrap());
    writer.stop();
    fs::remove_file(dir.0.join("checkpoint.pb")).unwrap();
    let path = dir.0.join("log").join(format!("{:016}.log", 0));
    // Gone: deleted by the checkpoint. Recreate two segments by hand.
    assert!(!path.exists());
    let writer =
        Writer::start(Storage::open(&dir.0).unwrap(), 0, DurableOffsets::default()).unwrap();
    append(&writer, &[&["a"], &["b"]]);
    writer.stop();
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, bytes).unwrap();
    let err = Storage::open(&dir.0)
        .unwrap()
        .restore()
        .unwrap_err()
        .to_string();
    assert!(err.contains("fails its CRC-32"), "{err}");
    assert!(err.contains("refusing to start"), "{err}");
}

#[test]
fn a_damaged_or_newer_checkpoint_is_refused_with_what_is_wrong() {
    let dir = Dir::new("checkpoint");
    let storage = Storage::open(&dir.0).unwrap();
    storage.write_checkpoint(&checkpoint(0)).unwrap();
    let path = dir.0.join("checkpoint.pb");
    let good = fs::read(&path).unwrap();
    assert_eq!(read_checkpoint(&path).unwrap(), Some(checkpoint(0)));

    let refuse = |bytes: &[u8]| {
        fs::write(&path, bytes).unwrap();
        read_checkpoint(&path).unwrap_err().to_string()
    };
    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    assert!(refuse(&flipped).contains("fails its CRC-32"));
    assert!(refuse(&good[..good.len() - 3]).contains("the file has"));
    assert!(refuse(&good[..10]).contains("shorter than the header"));
    assert!(refuse(b"{\"not\": \"ours\"} and some more bytes").contains("bad magic"));
    let mut newer = good.clone();
    newer[8] = 2;
    let err = refuse(&newer);
    assert!(err.contains("format 2 by a newer doraflow"), "{err}");
    // Nothing was replaced along the way.
    assert!(!dir.0.join("checkpoint.pb.tmp").exists());
}
