//! The in-process hot path, run a given number of times, for instruction
//! counts under valgrind (`scripts/bench-instructions`). Instruction counts
//! do not move with a noisy neighbour the way wall-clock time does, so they
//! compare changes across runs and machines.
//!
//! `hot_path_instructions MODE SPANS ITERATIONS`, MODE one of
//! `decode_wire`, `decode_full_prost`, `decode_and_red`. The batches are
//! built before the loop; running with 0 iterations measures that set-up,
//! which the script subtracts.

use std::hint::black_box;

use bytes::Bytes;
use doraflow::config::RedConfig;
use doraflow::model::Telemetry;
use doraflow::otlp::synth::realistic_batch;
use doraflow::otlp::traces_protobuf;
use doraflow::processors::red::RedProcessor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(spans), Some(iterations)) = (
        args.get(1),
        args.get(2).and_then(|s| s.parse::<usize>().ok()),
        args.get(3).and_then(|s| s.parse::<u64>().ok()),
    ) else {
        eprintln!(
            "usage: hot_path_instructions decode_wire|decode_full_prost|decode_and_red SPANS ITERATIONS"
        );
        std::process::exit(2);
    };
    let bodies: Vec<Bytes> = (0..8)
        .map(|seed| Bytes::from(realistic_batch(spans, seed).encode_to_vec()))
        .collect();
    let mut red = RedProcessor::new(&RedConfig::default(), "unknown");
    // Warm the red state (series created, slices allocated) outside the
    // measured loop, as a long-running process has it.
    if mode == "decode_and_red" {
        for (i, body) in bodies.iter().enumerate() {
            let summary = traces_protobuf(body).expect("valid");
            red.apply(&Telemetry::Traces(summary), i as u64 * 1_000_000);
        }
    }
    for i in 0..iterations {
        let body = &bodies[i as usize % bodies.len()];
        match mode.as_str() {
            "decode_wire" => {
                black_box(traces_protobuf(body).expect("valid"));
            }
            "decode_full_prost" => {
                black_box(ExportTraceServiceRequest::decode(body.clone()).expect("valid"));
            }
            "decode_and_red" => {
                let summary = traces_protobuf(body).expect("valid");
                black_box(red.apply(&Telemetry::Traces(summary), (i + 8) * 1_000_000));
            }
            other => {
                eprintln!("unknown mode {other}");
                std::process::exit(2);
            }
        }
    }
}
