//! The decode → red hot path, in process, on realistic OTLP trace batches
//! (`doraflow::otlp::synth::realistic_batch`: ~800-byte spans, 10 attributes,
//! 50 services × 20 routes, 2% errors), 512 and 1000 spans a batch.
//!
//! `cargo bench --bench hot_path`. Throughput is in spans (elements).

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use doraflow::config::RedConfig;
use doraflow::model::Telemetry;
use doraflow::otlp::synth::realistic_batch;
use doraflow::otlp::traces_protobuf;
use doraflow::processors::red::RedProcessor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use std::hint::black_box;

fn hot_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("traces");
    for spans in [512usize, 1000] {
        let bodies: Vec<Bytes> = (0..8)
            .map(|seed| Bytes::from(realistic_batch(spans, seed).encode_to_vec()))
            .collect();
        group.throughput(Throughput::Elements(spans as u64));

        group.bench_with_input(
            BenchmarkId::new("decode_wire", spans),
            &bodies,
            |b, bodies| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    black_box(traces_protobuf(&bodies[i % bodies.len()]).expect("valid"))
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new("decode_full_prost", spans),
            &bodies,
            |b, bodies| {
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    black_box(
                        ExportTraceServiceRequest::decode(bodies[i % bodies.len()].clone())
                            .expect("valid"),
                    )
                })
            },
        );

        group.bench_with_input(
            BenchmarkId::new("decode_and_red", spans),
            &bodies,
            |b, bodies| {
                let mut red = RedProcessor::new(&RedConfig::default(), "unknown");
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    let summary =
                        traces_protobuf(&bodies[i as usize % bodies.len()]).expect("valid");
                    // Advance time 1 ms a batch so slices rotate as they would live.
                    black_box(red.apply(&Telemetry::Traces(summary), i * 1_000_000))
                })
            },
        );
    }
    group.finish();
}

/// Not a timing: the heap a series' window holds once a full `5m` window of
/// the realistic workload has passed through it, printed for BENCHMARKS.md.
fn window_memory(_: &mut Criterion) {
    let config = RedConfig::default();
    let mut red = RedProcessor::new(&config, "unknown");
    let slices = 30u64;
    // Enough batches that every slice of every series sees hundreds of spans.
    for i in 0..slices * 20 {
        let summary =
            traces_protobuf(&Bytes::from(realistic_batch(1000, i).encode_to_vec())).expect("valid");
        let now = i * 10_000_000_000 / 20;
        red.apply(&Telemetry::Traces(summary), now);
    }
    let snapshot = red.snapshot(slices * 10_000_000_000 - 1);
    let per_series = snapshot.window_bytes as f64 / snapshot.series.len() as f64;
    let requests: u64 = snapshot.series.iter().map(|s| s.stats.requests).sum();
    eprintln!(
        "window memory: {} series, {} requests in the window, {:.0} heap bytes per series ({:.1} per slice)",
        snapshot.series.len(),
        requests,
        per_series,
        per_series / slices as f64
    );
}

criterion_group!(benches, hot_path, window_memory);
criterion_main!(benches);
