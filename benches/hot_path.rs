//! The decode → red hot path, in process, on realistic OTLP trace batches
//! (`doraflow::otlp::synth::realistic_batch`: ~800-byte spans, 10 attributes,
//! 50 services × 20 routes, 2% errors), 512 and 1000 spans a batch.
//!
//! Also the Kafka consumer's path (100-span messages read in place and
//! merged), a gRPC message gathered from its frames or read as they come,
//! and the scrape's rendering of 5,000 series.
//!
//! `cargo bench --bench hot_path`. Throughput is in spans (elements).

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use doraflow::config::RedConfig;
use doraflow::exporters::exposition::render_red;
use doraflow::model::{Signal, Telemetry, TraceSummary};
use doraflow::otlp::synth::{realistic_batch, realistic_batch_among};
use doraflow::otlp::{
    Encoding, StreamDecode, decode_borrowed, traces_protobuf, traces_protobuf_with,
};
use doraflow::processors::dependencies::{DependenciesConfig, DependencyProcessor};
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

        // The decode alone, reading the span details as well.
        group.bench_with_input(
            BenchmarkId::new("decode_wire_details", spans),
            &bodies,
            |b, bodies| {
                let keys = std::sync::Arc::new(DependenciesConfig::default().span_keys());
                let mut i = 0;
                b.iter(|| {
                    i += 1;
                    black_box(
                        traces_protobuf_with(&bodies[i % bodies.len()], Some(&keys))
                            .expect("valid"),
                    )
                })
            },
        );

        // With the `dependencies` processor: the span details read too
        // (the third of the spans that are CLIENT call one HTTP dependency
        // per service; every span with a parent waits in the service
        // graph's store, which fills and then drops, counted).
        group.bench_with_input(
            BenchmarkId::new("decode_red_dependencies", spans),
            &bodies,
            |b, bodies| {
                let config = DependenciesConfig::default();
                let mut red = RedProcessor::new(&RedConfig::default(), "unknown");
                let mut dependencies = DependencyProcessor::new(&config, "unknown");
                let keys = dependencies.span_keys().clone();
                let mut i = 0u64;
                b.iter(|| {
                    i += 1;
                    let summary =
                        traces_protobuf_with(&bodies[i as usize % bodies.len()], Some(&keys))
                            .expect("valid");
                    dependencies.apply_traces(&summary, i * 1_000_000);
                    black_box(red.apply(&Telemetry::Traces(summary), i * 1_000_000))
                })
            },
        );
    }
    group.finish();
}

/// The Kafka consumer's path: 100-span messages (the `bench-kafka`
/// workload) decoded from a borrowed buffer, one at a time and merged 16 to
/// a batch as the consumer does, beside the shared-body reader.
fn kafka_path(c: &mut Criterion) {
    let mut group = c.benchmark_group("kafka_messages");
    let messages: Vec<Vec<u8>> = (0..16)
        .map(|seed| realistic_batch(100, seed).encode_to_vec())
        .collect();
    group.throughput(Throughput::Elements(16 * 100));
    group.bench_function("shared_copy_16x100", |b| {
        b.iter(|| {
            for m in &messages {
                // What the consumer did before: copy the payload, then read it.
                black_box(traces_protobuf(&Bytes::copy_from_slice(m)).expect("valid"));
            }
        })
    });
    group.bench_function("borrowed_16x100", |b| {
        b.iter(|| {
            for m in &messages {
                black_box(decode_borrowed(Signal::Traces, Encoding::Protobuf, m).expect("valid"));
            }
        })
    });
    group.bench_function("borrowed_merged_red_16x100", |b| {
        let mut red = RedProcessor::new(&RedConfig::default(), "unknown");
        let mut i = 0u64;
        b.iter(|| {
            let mut batch = TraceSummary::default();
            for m in &messages {
                let Ok(Telemetry::Traces(t)) =
                    decode_borrowed(Signal::Traces, Encoding::Protobuf, m)
                else {
                    panic!("valid")
                };
                batch.append(t);
            }
            i += 1;
            black_box(red.apply(&Telemetry::Traces(batch), i * 1_000_000))
        })
    });
    group.finish();
}

/// A gRPC request's message as it comes in HTTP/2 frames (two of up to
/// 400 KB from tonic's client, or 16 KB ones from grpc-go): gathered into
/// one buffer the way tonic's decoder does, then read; or read frame by
/// frame as it comes (`StreamDecode`).
fn grpc_frames(c: &mut Criterion) {
    let mut group = c.benchmark_group("grpc_frames");
    let body = Bytes::from(realistic_batch(1000, 0).encode_to_vec());
    group.throughput(Throughput::Elements(1000));
    for (name, frame) in [("two_frames", 400 * 1024), ("16k_frames", 16 * 1024)] {
        let frames: Vec<Bytes> = (0..body.len())
            .step_by(frame)
            .map(|at| body.slice(at..(at + frame).min(body.len())))
            .collect();
        group.bench_function(format!("gathered_then_read_1000/{name}"), |b| {
            b.iter(|| {
                // tonic: an 8 KB buffer, each frame put in, the message split off.
                let mut buf = bytes::BytesMut::with_capacity(8 * 1024);
                for f in &frames {
                    buf.extend_from_slice(f);
                }
                let message = buf.split().freeze();
                black_box(traces_protobuf(&message).expect("valid"))
            })
        });
        group.bench_function(format!("read_as_it_comes_1000/{name}"), |b| {
            b.iter(|| {
                let mut stream = StreamDecode::new(Signal::Traces, body.len()).expect("traces");
                for f in &frames {
                    stream.push(f).expect("valid");
                }
                black_box(stream.finish().expect("valid"))
            })
        });
    }
    group.finish();
}

/// The `/metrics` text of the `red` families for 5,000 series.
fn scrape(c: &mut Criterion) {
    let mut red = RedProcessor::new(
        &RedConfig {
            max_series: 10_000,
            ..RedConfig::default()
        },
        "unknown",
    );
    for i in 0..100u64 {
        let body = realistic_batch_among(1000, i, 50, 5000).encode_to_vec();
        let summary = traces_protobuf(&Bytes::from(body)).expect("valid");
        red.apply(&Telemetry::Traces(summary), i * 1_000_000);
    }
    let snapshot = red.snapshot(100 * 1_000_000);
    assert_eq!(snapshot.series.len(), 5000);
    c.bench_function("render_red_5000_series", |b| {
        b.iter(|| {
            let mut out = String::new();
            render_red(&snapshot, &mut out);
            black_box(out.len())
        })
    });
    // The same series as an OTLP push (`exporters.otlp`), encoded.
    let figures = doraflow::pipeline::Figures {
        red: Some(snapshot),
        ..Default::default()
    };
    let parts = doraflow::exporters::otlp::requests(&figures, 1, 2);
    let bytes: usize = parts.iter().map(|r| r.len()).sum();
    eprintln!(
        "OTLP push of 5,000 series: {} requests, {bytes} bytes encoded",
        parts.len()
    );
    c.bench_function("otlp_push_5000_series", |b| {
        b.iter(|| {
            let parts = doraflow::exporters::otlp::requests(&figures, 1, 2);
            black_box(parts.iter().map(|r| r.len()).sum::<usize>())
        })
    });
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

/// 5,000 dependency series (one HTTP dependency of each of 5,000 services)
/// through a full `5m` window: the heap they hold, printed, and the
/// rendering of their families for a scrape, timed.
fn dependency_series(c: &mut Criterion) {
    let config = DependenciesConfig::default();
    let mut dependencies = DependencyProcessor::new(&config, "unknown");
    let keys = dependencies.span_keys().clone();
    let slices = 30u64;
    let batches = slices * 20;
    for i in 0..batches {
        let body = realistic_batch_among(1000, i, 50, 5000).encode_to_vec();
        let summary = traces_protobuf_with(&Bytes::from(body), Some(&keys)).expect("valid");
        dependencies.apply_traces(&summary, i * 10_000_000_000 / 20);
    }
    let snapshot = dependencies.snapshot(slices * 10_000_000_000 - 1);
    assert_eq!(snapshot.dependencies.len(), 5000);
    let calls: u64 = snapshot
        .dependencies
        .iter()
        .map(|d| d.window.requests)
        .sum();
    let graph = snapshot.graph.as_ref().expect("graph");
    eprintln!(
        "dependency memory: {} series, {calls} calls in the window, {} heap bytes in all ({:.0} per series; the graph's store {} waiting, {} edges)",
        snapshot.dependencies.len(),
        snapshot.heap_bytes,
        snapshot.heap_bytes as f64 / snapshot.dependencies.len() as f64,
        graph.waiting,
        graph.edges.len(),
    );
    c.bench_function("render_dependencies_5000_series", |b| {
        b.iter(|| {
            let mut out = String::new();
            doraflow::exporters::exposition::render_dependencies(&snapshot, &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    hot_path,
    kafka_path,
    grpc_frames,
    scrape,
    window_memory,
    dependency_series
);
criterion_main!(benches);
