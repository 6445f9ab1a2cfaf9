//! A gRPC server that does nothing: the floor under doraflow's OTLP gRPC
//! figures on this machine.
//!
//! It serves `TraceService/Export` with the same tonic server settings as
//! doraflow's receiver (windows, 1 MiB frames, TCP_NODELAY) and the same
//! raw codec, takes each request's message and answers an empty response
//! at once: no decoding, no pipeline. What the load generator measures
//! against it is the cost of HTTP/2, tonic, the kernel and the VM alone.
//!
//! ```sh
//! cargo run --release --example null_grpc -- 127.0.0.1:14317
//! BENCH_SERVER=null scripts/bench-e2e --duration 20 --connections 4   # the same, scripted
//! ```

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use doraflow::receivers::otlp_grpc::RawCodec;
use tonic::codegen::{Body, BoxFuture, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};

const EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

#[derive(Clone)]
struct Null;

impl NamedService for Null {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

struct Discard;

impl UnaryService<Bytes> for Discard {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        drop(request.into_inner());
        Box::pin(async { Ok(tonic::Response::new(Bytes::new())) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Null
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        Box::pin(async move {
            if request.uri().path() != EXPORT {
                return Ok(tonic::Status::unimplemented("unknown method").into_http());
            }
            let mut grpc = Grpc::new(RawCodec).apply_max_message_size_config(Some(16 << 20), None);
            Ok(grpc.unary(Discard, request).await)
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:14317".to_string())
        .parse()?;
    eprintln!("null gRPC server on {address}");
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(16 << 20))
        .initial_connection_window_size(Some(32 << 20))
        .max_frame_size(Some(1 << 20))
        .add_service(Null)
        .serve(address)
        .await?;
    Ok(())
}
