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

criterion_group!(benches, hot_path);
criterion_main!(benches);
