//! Compiles doraflow's own protobuf schemas in `proto/` with a pure-Rust
//! compiler (protox): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        [
            "proto/doraflow/v1/window.proto",
            "proto/doraflow/v1/checkpoint.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(files)?;
    Ok(())
}
