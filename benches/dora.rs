//! The `dora` processor: events applied per second in process, the memory a
//! month of history takes, and how long a snapshot of it takes.
//!
//! `cargo bench --bench dora`. The memory figure (printed, not timed) is for
//! 30 days of 500 services × 50 deployments a day, each deployment with its
//! artifact and one change (change.created, artifact.packaged,
//! service.deployed): 750,000 deployments, 2.25 million events.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use doraflow::config::DoraConfig;
use doraflow::model::delivery::{
    ChangeStage, DeliveryEvent, DeliveryKind, Deployment, DeploymentOutcome,
};
use doraflow::processors::dora::DoraProcessor;

/// Counts live heap bytes, to measure the processor's state.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const T0: i64 = 1_714_521_600_000_000_000;
const DAY: i64 = 86_400_000_000_000;

/// The three events of the `n`-th deployment of a history of `services`
/// services deploying `per_day` times a day.
fn deployment_events(n: u64, services: u64, per_day: u64) -> [DeliveryEvent; 3] {
    let service = n % services;
    let slot = n / services;
    let time = T0 + (slot as i64) * DAY / per_day as i64 + (service as i64) * 1_000_000;
    let change = format!("{:040x}", n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let artifact = format!("pkg:oci/service-{service:03}@sha256:{:064x}", n);
    [
        DeliveryEvent {
            id: format!("{:08x}-change-{n}", n),
            time: time - 3_600_000_000_000,
            kind: DeliveryKind::Change {
                change: change.clone(),
                stage: ChangeStage::Created,
            },
        },
        DeliveryEvent {
            id: format!("{:08x}-artifact-{n}", n),
            time: time - 1_800_000_000_000,
            kind: DeliveryKind::ArtifactLink {
                artifact: artifact.clone(),
                change,
            },
        },
        DeliveryEvent {
            id: format!("{:08x}-deploy-{n}", n),
            time,
            kind: DeliveryKind::Deployment(Deployment {
                rework: false,
                team: None,
                service: format!("service-{service:03}"),
                environment: "production".into(),
                artifact: Some(artifact),
                outcome: if n.is_multiple_of(20) {
                    DeploymentOutcome::Failure
                } else {
                    DeploymentOutcome::Success
                },
                changes: Vec::new(),
                ..Default::default()
            }),
        },
    ]
}

fn month_of_history(_: &mut Criterion) {
    let (services, per_day, days) = (500u64, 50u64, 30u64);
    let deployments = services * per_day * days;
    let before = LIVE.load(Ordering::Relaxed);
    let mut dora = DoraProcessor::new(&DoraConfig::default());
    let started = Instant::now();
    for chunk in (0..deployments).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<DeliveryEvent> = chunk
            .iter()
            .flat_map(|&n| deployment_events(n, services, per_day))
            .collect();
        dora.apply(&events);
    }
    let applied_in = started.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let started = Instant::now();
    let snapshot = dora.snapshot(T0 + days as i64 * DAY);
    let snapshot_in = started.elapsed();
    eprintln!(
        "dora history: {deployments} deployments ({} events) applied in {:.2} s ({:.0} events/s); \
         state {:.1} MiB = {:.0} bytes per deployment (with its change and artifact); \
         snapshot of {} series in {:.0} ms",
        deployments * 3,
        applied_in.as_secs_f64(),
        (deployments * 3) as f64 / applied_in.as_secs_f64(),
        bytes as f64 / (1024.0 * 1024.0),
        bytes as f64 / deployments as f64,
        snapshot.series.len(),
        snapshot_in.as_secs_f64() * 1_000.0,
    );
}

fn apply_throughput(c: &mut Criterion) {
    let mut group = c.benchmark_group("dora");
    let batch = 999u64;
    group.throughput(Throughput::Elements(batch));
    group.bench_function("apply_999_events", |b| {
        let mut dora = DoraProcessor::new(&DoraConfig::default());
        let mut n = 0u64;
        b.iter_batched(
            || {
                let events: Vec<DeliveryEvent> = (n..n + batch / 3)
                    .flat_map(|i| deployment_events(i, 500, 50))
                    .collect();
                n += batch / 3;
                events
            },
            |events| black_box(dora.apply(&events)),
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

/// The regression check with 5,000 production series in `red`, each with a
/// deployment whose stretch after it has just ended: the cost of judging
/// one deployment (two stretches of 12 slices merged, the verdict applied),
/// and of a derive tick once everything is judged (what every tick costs).
fn regression_check(c: &mut Criterion) {
    use doraflow::model::{Signal, Telemetry};
    use doraflow::otlp::synth::{resource, span, trace_request};
    use doraflow::processors::dora::regression::RegressionConfig;
    use doraflow::processors::red::{RedConfig, RedProcessor};
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use prost::Message;

    const S: i64 = 1_000_000_000;
    let series = 5_000usize;
    // On a slice boundary; the check runs at T + 2m.
    let t = 1_764_000_000 * S;
    let now = t + 120 * S;
    let mut red = RedProcessor::new(&RedConfig::default(), "unknown");
    // 10 spans a slice for each series, from T - 2m to T + 2m, 2% errors in
    // one series of 50, with latencies of 1 to 10 ms.
    let services: Vec<String> = (0..series).map(|i| format!("svc-{i:04}")).collect();
    for slice in (t - 120 * S..t + 120 * S).step_by(10 * S as usize) {
        let groups = services
            .iter()
            .enumerate()
            .map(|(i, service)| {
                let spans = (0..10u64)
                    .map(|k| {
                        let status = if i % 50 == 0 && k == 0 {
                            StatusCode::Error
                        } else {
                            StatusCode::Ok
                        };
                        let start = slice as u64;
                        span(
                            SpanKind::Server,
                            start,
                            start + (k + 1) * 1_000_000,
                            status,
                            None,
                        )
                    })
                    .collect();
                (resource(Some(service), Some("production")), spans)
            })
            .collect();
        let body = trace_request(groups).encode_to_vec();
        let batch: Telemetry = doraflow::otlp::decode_borrowed(
            Signal::Traces,
            doraflow::otlp::Encoding::Protobuf,
            &body,
        )
        .expect("valid");
        red.apply(&batch, (slice + 5 * S) as u64);
    }
    let config = DoraConfig {
        regression: Some(RegressionConfig::default()),
        ..DoraConfig::default()
    };
    let deployments: Vec<DeliveryEvent> = services
        .iter()
        .map(|service| DeliveryEvent {
            id: format!("deploy-{service}"),
            time: t,
            kind: DeliveryKind::Deployment(Deployment {
                service: service.clone(),
                environment: "production".into(),
                ..Default::default()
            }),
        })
        .collect();
    let fresh = || {
        let mut dora = DoraProcessor::new(&config);
        dora.apply(&deployments);
        dora
    };
    let mut judged = fresh();
    let live = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let verdicts = judged.check_regressions(&mut red, now);
    let took = started.elapsed();
    assert_eq!(verdicts.len(), series, "every deployment judged once");
    drop(verdicts);
    eprintln!(
        "regression check: {series} deployments judged in {:.1} ms ({:.2} µs each, once); \
         {:.0} bytes held per verdict",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / series as f64,
        (LIVE.load(Ordering::Relaxed) - live) as f64 / series as f64,
    );

    let mut group = c.benchmark_group("regression");
    group.throughput(Throughput::Elements(series as u64));
    group.bench_function("judge_5000_deployments", |b| {
        b.iter_batched(
            fresh,
            |mut dora| black_box(dora.check_regressions(&mut red, now)),
            criterion::BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(1));
    group.bench_function("tick_with_5000_judged", |b| {
        b.iter(|| black_box(judged.check_regressions(&mut red, now + 5 * S)))
    });
    group.finish();
}

criterion_group!(
    benches,
    month_of_history,
    apply_throughput,
    regression_check
);
criterion_main!(benches);
