//! The cluster tier's restore: a partition's state rebuilt from its
//! changelog records (decoded, the DORA history replayed, the `red`
//! windows restored), as a replica does when it is given the partition.
//!
//! `cargo bench --bench changelog`. The history: 1,000 services with 30
//! days of 20 deployments a day (600,000 `service.deployed` events, each
//! linking its change), and each service's `red` series; figures are
//! history events a second. Reading the records from the broker is timed
//! separately (`scripts/bench-kafka`, `BENCH_ONLY=restore`).

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use doraflow::config::Config;
use doraflow::model::delivery::{
    DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome, LinkedChange,
};
use doraflow::pipeline::{Task, TaskFactory};
use doraflow::proto::{ChangelogRecord, changelog_record::Record};
use prost::Message;

const DAY: i64 = 86_400_000_000_000;
const SERVICES: usize = 1_000;
const PER_DAY: usize = 20;
const DAYS: usize = 30;

fn factory() -> TaskFactory {
    let config = Config::from_yaml_with_env(
        "receivers:\n  kafka: { brokers: k, topics: [{ topic: t, format: cdevents }] }\n\
         processors:\n  red: {}\n  dora: {}\n  alerts: {}\n\
         exporters:\n  prometheus: {}\n\
         pipelines:\n  main: { receivers: [kafka], processors: [red, dora, alerts], exporters: [prometheus] }\n",
        |_| None,
    )
    .expect("the bench config is valid");
    let (_, pipeline) = config.pipeline().expect("a pipeline");
    TaskFactory::new(&config, pipeline).0
}

/// The changelog records of a partition holding `services` services' history.
fn records(services: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let now = doraflow::clock::Clock::now_ns(&doraflow::clock::SystemClock) as i64;
    let start = now - DAYS as i64 * DAY;
    let mut out = Vec::with_capacity(services * PER_DAY * DAYS + services);
    for n in 0..services * PER_DAY * DAYS {
        let service = n % services;
        let slot = (n / services) as i64;
        let time = start + slot * DAY / PER_DAY as i64 + service as i64 * 1_000_000;
        let event = DeliveryEvent {
            id: format!("deploy-{n:08}"),
            time,
            kind: DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: format!("service-{service:04}"),
                environment: "production".into(),
                artifact: Some(format!("pkg:oci/service-{service:04}@sha256:{n:064x}")),
                outcome: DeploymentOutcome::Success,
                changes: vec![LinkedChange {
                    id: format!("{:040x}", (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
                    time: Some(time - 3_600_000_000_000),
                }],
                ..Default::default()
            }),
        };
        let record = ChangelogRecord {
            record: Some(Record::Event(
                doraflow::processors::dora::state::event_record(&event),
            )),
        };
        out.push((format!("e{n}").into_bytes(), record.encode_to_vec()));
    }
    for service in 0..services {
        let record = ChangelogRecord {
            record: Some(Record::Red(doraflow::proto::RedSeriesRecord {
                service: format!("service-{service:04}"),
                environment: "production".into(),
                window: None,
                requests_total: 1_000_000,
                errors_total: 1_000,
                log_errors_total: 10,
            })),
        };
        out.push((format!("r{service}").into_bytes(), record.encode_to_vec()));
    }
    out
}

fn restore(c: &mut Criterion) {
    let factory = factory();
    let records = records(SERVICES);
    let events = (SERVICES * PER_DAY * DAYS) as u64;
    let bytes: usize = records.iter().map(|(k, v)| k.len() + v.len()).sum();
    eprintln!(
        "changelog of {SERVICES} services x {DAYS} days x {PER_DAY} deployments a day: {} records, {:.1} MiB",
        records.len(),
        bytes as f64 / 1_048_576.0
    );
    let mut group = c.benchmark_group("changelog");
    group.sample_size(10);
    group.throughput(Throughput::Elements(events));
    group.bench_function("restore_600k_history_events", |b| {
        b.iter_batched(
            || records.clone(),
            |records| {
                let (task, offsets) =
                    Task::from_changelog(&factory, records).expect("a valid changelog");
                black_box((task, offsets))
            },
            BatchSize::LargeInput,
        )
    });
    // A take-over of four partitions of 250 services each (the same
    // 600,000 events), built on every core as the consumer does.
    let parts: Vec<(i32, doraflow::pipeline::ChangelogRecords)> =
        (0..4).map(|p| (p, crate::records(SERVICES / 4))).collect();
    group.bench_function("restore_600k_history_events_4_partitions", |b| {
        b.iter_batched(
            || parts.clone(),
            |parts| black_box(Task::from_changelogs(&factory, parts)),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, restore);
criterion_main!(benches);
