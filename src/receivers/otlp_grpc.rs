//! OTLP over gRPC: TraceService, LogsService and MetricsService `Export`.
//!
//! The services are written against tonic's server machinery with a codec
//! that hands over the raw request bytes, so the body goes straight to the
//! targeted reader in [`crate::otlp::wire`] instead of a full prost decode.
//! Status codes follow the OTLP specification: INVALID_ARGUMENT for malformed
//! data (not retryable), RESOURCE_EXHAUSTED with `RetryInfo` when the pipeline
//! is full, UNAVAILABLE while shutting down (both retryable).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::Frame;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::codegen::{Body, BoxFuture, EnabledCompressionEncodings, StdError, http};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use metrics::counter;

use super::{Admission, ExportOutcome, RETRY_AFTER_SECS, export, response_protobuf};
use crate::flow::{Forward, PipelineSink};
use crate::instruments;
use crate::model::{Signal, Telemetry};
use crate::otlp::{self, DecodeError, Encoding};
use crate::receivers::config::GrpcServerConfig;
use crate::settings::ReceiverAuth;
use crate::transport::{authorized, listener};

pub use crate::transport::codec::{RawCodec, RawCoder};

/// The gRPC names of one OTLP signal's service.
pub trait OtlpService: Send + Sync + 'static {
    /// The signal served.
    const SIGNAL: Signal;
    /// The service's full name.
    const NAME: &'static str;
    /// The `Export` method's path.
    const EXPORT_PATH: &'static str;
}

/// `opentelemetry.proto.collector.trace.v1.TraceService`.
#[derive(Debug, Clone, Copy)]
pub struct TraceService;
/// `opentelemetry.proto.collector.logs.v1.LogsService`.
#[derive(Debug, Clone, Copy)]
pub struct LogsService;
/// `opentelemetry.proto.collector.metrics.v1.MetricsService`.
#[derive(Debug, Clone, Copy)]
pub struct MetricsService;

impl OtlpService for TraceService {
    const SIGNAL: Signal = Signal::Traces;
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
}
impl OtlpService for LogsService {
    const SIGNAL: Signal = Signal::Logs;
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    const EXPORT_PATH: &'static str = "/opentelemetry.proto.collector.logs.v1.LogsService/Export";
}
impl OtlpService for MetricsService {
    const SIGNAL: Signal = Signal::Metrics;
    const NAME: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    const EXPORT_PATH: &'static str =
        "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
}

/// The tower service of one OTLP gRPC service.
pub struct OtlpGrpc<S> {
    sink: PipelineSink,
    admission: Admission,
    auth: Option<ReceiverAuth>,
    max_decoding_message_size: usize,
    compression: EnabledCompressionEncodings,
    _service: PhantomData<S>,
}

impl<S> Clone for OtlpGrpc<S> {
    fn clone(&self) -> Self {
        OtlpGrpc {
            sink: self.sink.clone(),
            admission: self.admission.clone(),
            auth: self.auth.clone(),
            max_decoding_message_size: self.max_decoding_message_size,
            compression: self.compression,
            _service: PhantomData,
        }
    }
}

impl<S: OtlpService> OtlpGrpc<S> {
    /// Serves `S` into `sink`, refusing requests larger than
    /// `max_decoding_message_size` bytes (after decompression), and any
    /// request that `admission` does not let in before reading its body;
    /// with `auth`, a request without the bearer token is refused first.
    pub fn new(
        sink: PipelineSink,
        admission: Admission,
        auth: Option<ReceiverAuth>,
        max_decoding_message_size: usize,
    ) -> Self {
        let mut compression = EnabledCompressionEncodings::default();
        compression.enable(CompressionEncoding::Gzip);
        compression.enable(CompressionEncoding::Zstd);
        OtlpGrpc {
            sink,
            admission,
            auth,
            max_decoding_message_size,
            compression,
            _service: PhantomData,
        }
    }
}

impl<S: OtlpService> NamedService for OtlpGrpc<S> {
    const NAME: &'static str = S::NAME;
}

/// RESOURCE_EXHAUSTED with `RetryInfo`: the pipeline is full or memory is
/// short; retry later.
fn backpressure() -> Status {
    Status::with_error_details(
        Code::ResourceExhausted,
        "the pipeline is full; retry later",
        ErrorDetails::with_retry_info(Some(Duration::from_secs(RETRY_AFTER_SECS))),
    )
}

/// tonic answers a message over the size limit with OUT_OF_RANGE (over the
/// limit once decompressed it already says RESOURCE_EXHAUSTED). OTLP
/// clients, grpc-go and the Collector say RESOURCE_EXHAUSTED for both, so
/// the one from tonic's decoder is rewritten; doraflow itself never answers
/// OUT_OF_RANGE, so nothing else is caught by it.
fn too_large_is_resource_exhausted<S: OtlpService>(
    response: http::Response<tonic::body::Body>,
    limit: usize,
) -> http::Response<tonic::body::Body> {
    let status = response.headers().get("grpc-status");
    let too_large = status.is_some_and(|s| s.as_bytes() == b"11");
    let decompressed_too_large = status.is_some_and(|s| s.as_bytes() == b"8")
        && response
            .headers()
            .get("grpc-message")
            .is_some_and(|m| m.as_bytes().starts_with(b"Error%20decompressing"));
    if !too_large && !decompressed_too_large {
        return response;
    }
    counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "grpc", "signal" => S::SIGNAL.as_str(), "result" => "too_large").increment(1);
    Status::resource_exhausted(format!(
        "the request is larger than the limit of {limit} bytes (receivers.otlp.grpc.max_recv_msg_size_mib); send smaller batches"
    ))
    .into_http()
}

struct ExportMethod<S> {
    sink: PipelineSink,
    _service: PhantomData<S>,
}

impl<S: OtlpService> UnaryService<Bytes> for ExportMethod<S> {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        let sink = self.sink.clone();
        Box::pin(async move {
            let streamed = request
                .extensions()
                .get::<StreamedDecode>()
                .and_then(StreamedDecode::take);
            let body = request.into_inner();
            let (decoded, forward) = match streamed {
                // Read as it came (see `StreamedBody`); `body` is empty.
                Some(decoded) => (decoded, None),
                None => {
                    let forward = sink.forwards().then(|| Forward::Otlp {
                        signal: S::SIGNAL,
                        body: body.clone(),
                    });
                    (
                        otlp::decode_with(S::SIGNAL, Encoding::Protobuf, body, sink.span_detail()),
                        forward,
                    )
                }
            };
            match export(&sink, S::SIGNAL, "grpc", decoded, forward).await {
                ExportOutcome::Accepted { rejected, message } => Ok(tonic::Response::new(
                    Bytes::from(response_protobuf(S::SIGNAL, rejected, &message)),
                )),
                ExportOutcome::Malformed(message) => Err(Status::invalid_argument(message)),
                ExportOutcome::Backpressure => Err(backpressure()),
                ExportOutcome::Unavailable => Err(Status::unavailable("doraflow is shutting down")),
            }
        })
    }
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for OtlpGrpc<S>
where
    S: OtlpService,
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
        if request.uri().path() != S::EXPORT_PATH {
            return Box::pin(async { Ok(Status::unimplemented("unknown method").into_http()) });
        }
        if !authorized(
            self.auth.as_ref().map(|a| &a.bearer_token),
            request.headers(),
        ) {
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "grpc", "signal" => S::SIGNAL.as_str(), "result" => "unauthenticated").increment(1);
            return Box::pin(async {
                Ok(Status::unauthenticated("a valid bearer token is required").into_http())
            });
        }
        let Some(admitted) = self.admission.admit() else {
            counter!(instruments::RECEIVER_REQUESTS, "receiver" => "otlp", "transport" => "grpc", "signal" => S::SIGNAL.as_str(), "result" => "backpressure").increment(1);
            return Box::pin(async { Ok(backpressure().into_http()) });
        };
        let method = ExportMethod::<S> {
            sink: self.sink.clone(),
            _service: PhantomData,
        };
        let compression = self.compression;
        let max = self.max_decoding_message_size;
        // Traces and logs are read frame by frame as they arrive, unless the
        // raw request is wanted whole (forwarded to Kafka) or compressed.
        let stream = S::SIGNAL != Signal::Metrics
            && !self.sink.forwards()
            && request.headers().get("grpc-encoding").is_none();
        let detail = self.sink.span_detail().cloned();
        Box::pin(async move {
            let mut grpc = Grpc::new(RawCodec)
                .apply_compression_config(compression, compression)
                .apply_max_message_size_config(Some(max), None);
            let response = if stream {
                let slot = StreamedDecode::default();
                let mut request = request.map(|body| {
                    StreamedBody::new(body, S::SIGNAL, max, slot.clone(), detail.as_ref())
                });
                request.extensions_mut().insert(slot);
                grpc.unary(method, request).await
            } else {
                grpc.unary(method, request).await
            };
            drop(admitted);
            Ok(too_large_is_resource_exhausted::<S>(response, max))
        })
    }
}

/// The request decoded by [`StreamedBody`] as it arrived, handed to
/// [`ExportMethod`] through the request's extensions.
#[derive(Clone, Default)]
struct StreamedDecode(Arc<Mutex<Option<Result<Telemetry, DecodeError>>>>);

impl StreamedDecode {
    fn take(&self) -> Option<Result<Telemetry, DecodeError>> {
        self.0.lock().ok()?.take()
    }

    fn put(&self, decoded: Result<Telemetry, DecodeError>) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(decoded);
        }
    }
}

/// A gRPC request body that decodes its OTLP message frame by frame as the
/// frames arrive (`otlp::StreamDecode`), instead of tonic gathering the
/// message into one buffer first: that copy of every byte was a tenth of
/// doraflow's CPU, and a request of two frames is half read when its
/// second frame comes. No frame is held once read, so h2 reuses its read
/// buffer as before.
///
/// tonic still frames the call (headers, limits, status, trailers): it is
/// handed an empty message in place of the one decoded, and the method
/// takes the decoded request from [`StreamedDecode`]. A compressed message
/// or one over `max` is passed through untouched for tonic to handle as
/// always; so is anything after the first message.
struct StreamedBody<B> {
    inner: std::pin::Pin<Box<B>>,
    state: Streaming,
    /// Frames to hand on before reading more (at most two).
    queued: VecDeque<Bytes>,
    signal: Signal,
    max: usize,
    slot: StreamedDecode,
    detail: Option<std::sync::Arc<crate::model::spans::SpanKeys>>,
}

enum Streaming {
    /// Reading the 5-byte message prefix.
    Prefix { prefix: [u8; 5], have: usize },
    /// Decoding the message; after an error, reading past the rest of it.
    Message {
        // Boxed: a summary under way is large, the other states small.
        decode: Result<Box<otlp::StreamDecode>, DecodeError>,
        remaining: usize,
    },
    /// Everything else goes to tonic as it comes.
    Through,
}

/// gRPC's prefix of an empty, uncompressed message.
const EMPTY_MESSAGE: [u8; 5] = [0; 5];

impl<B> StreamedBody<B> {
    fn new(
        inner: B,
        signal: Signal,
        max: usize,
        slot: StreamedDecode,
        detail: otlp::Detail<'_>,
    ) -> Self {
        StreamedBody {
            inner: Box::pin(inner),
            state: Streaming::Prefix {
                prefix: [0; 5],
                have: 0,
            },
            queued: VecDeque::new(),
            signal,
            max,
            slot,
            detail: detail.cloned(),
        }
    }

    /// Reads one DATA frame's bytes, queueing what tonic is to see.
    fn read(&mut self, mut data: Bytes) {
        while !data.is_empty() {
            match &mut self.state {
                Streaming::Through => {
                    self.queued.push_back(data);
                    return;
                }
                Streaming::Prefix { prefix, have } => {
                    let n = (5 - *have).min(data.len());
                    prefix[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data.advance(n);
                    if *have < 5 {
                        continue;
                    }
                    let len =
                        u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
                    let decode = match (
                        prefix[0],
                        otlp::StreamDecode::new_with(self.signal, len, self.detail.as_ref()),
                    ) {
                        (0, Some(decode)) if len <= self.max => decode,
                        _ => {
                            // Compressed, too large or not ours: tonic's.
                            self.queued.push_back(Bytes::copy_from_slice(prefix));
                            self.state = Streaming::Through;
                            continue;
                        }
                    };
                    self.state = Streaming::Message {
                        decode: Ok(Box::new(decode)),
                        remaining: len,
                    };
                    self.finish_if_read();
                }
                Streaming::Message { decode, remaining } => {
                    let piece = data.split_to((*remaining).min(data.len()));
                    *remaining -= piece.len();
                    if let Ok(d) = decode
                        && let Err(e) = d.push(&piece)
                    {
                        *decode = Err(e);
                    }
                    self.finish_if_read();
                }
            }
        }
    }

    /// Once the whole message is read: the result to the method, an empty
    /// message to tonic.
    fn finish_if_read(&mut self) {
        if let Streaming::Message { remaining: 0, .. } = self.state
            && let Streaming::Message { decode, .. } =
                std::mem::replace(&mut self.state, Streaming::Through)
        {
            self.slot.put(decode.and_then(|d| d.finish()));
            self.queued.push_back(Bytes::from_static(&EMPTY_MESSAGE));
        }
    }

    /// The body ended: what tonic must see of a message cut short.
    fn end(&mut self) {
        match std::mem::replace(&mut self.state, Streaming::Through) {
            Streaming::Prefix { prefix, have } if have > 0 => {
                self.queued
                    .push_back(Bytes::copy_from_slice(&prefix[..have]));
            }
            // A message that promises more than came (tonic reports a stream
            // ended early only with bytes left unread): tonic's answer, as if
            // it had read the message itself.
            Streaming::Message { .. } => {
                self.queued
                    .push_back(Bytes::from_static(&[0, 0, 0, 0, 2, 0]));
            }
            _ => {}
        }
    }
}

impl<B: Body> Body for StreamedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        loop {
            if let Some(data) = this.queued.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            match std::task::ready!(this.inner.as_mut().poll_frame(cx)) {
                None => {
                    this.end();
                    if this.queued.is_empty() {
                        return Poll::Ready(None);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(mut data) => {
                        let data = data.copy_to_bytes(data.remaining());
                        this.read(data);
                    }
                    Err(frame) => {
                        // Trailers: no data of `B::Data` in them.
                        if let Ok(trailers) = frame.into_trailers() {
                            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                        }
                    }
                },
            }
        }
    }
}

/// Serves the three OTLP services on `listener` until `stop` is cancelled;
/// in-flight requests finish first.
pub async fn serve(
    listener: TcpListener,
    config: GrpcServerConfig,
    auth: Option<ReceiverAuth>,
    sink: PipelineSink,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let max = config.max_recv_msg_size_mib * 1024 * 1024;
    let admission = Admission::new(sink.clone(), config.max_concurrent_requests, max);
    if let Some(limit) = admission.limit() {
        tracing::info!(limit, "OTLP gRPC: concurrent requests limited");
    }
    let mut server = tonic::transport::Server::builder()
        // OTLP requests are often hundreds of KB: with HTTP/2's default 64 KB
        // windows a request stalls for a window update every 64 KB. A window
        // of one whole request lets it arrive in one go; memory stays bounded
        // by the message size limit per stream.
        .initial_stream_window_size(Some(max.min(16 << 20) as u32))
        .initial_connection_window_size(Some((max * 2).min(32 << 20) as u32))
        // Frames of up to 1 MiB (HTTP/2's default is 16 KiB): a client that
        // honours it sends a request in a few frames, read in a few
        // syscalls rather than one per 16 KiB.
        .max_frame_size(Some(1 << 20))
        .max_concurrent_streams(config.max_concurrent_streams)
        .timeout(config.request_timeout.get())
        // A peer that vanished without a FIN (a pulled cable, a dead NAT
        // entry) is found by pings and its connection slot given back.
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    let router = server
        .add_service(OtlpGrpc::<TraceService>::new(
            sink.clone(),
            admission.clone(),
            auth.clone(),
            max,
        ))
        .add_service(OtlpGrpc::<LogsService>::new(
            sink.clone(),
            admission.clone(),
            auth.clone(),
            max,
        ))
        .add_service(OtlpGrpc::<MetricsService>::new(sink, admission, auth, max));
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    match &config.tls {
        Some(tls) => {
            let reloading = crate::tls::Reloading::start(tls, crate::tls::ALPN_H2, stop.clone())?;
            let connections = listener::tls(listener, reloading, stop.clone());
            router
                .serve_with_incoming_shutdown(
                    listener::slotted(
                        connections,
                        slots,
                        Some(listener::FIRST_BYTES_WITHIN),
                        stop.clone(),
                    ),
                    stop.cancelled_owned(),
                )
                .await?;
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    listener::slotted(
                        listener::plain(listener),
                        slots,
                        Some(listener::FIRST_BYTES_WITHIN),
                        stop.clone(),
                    ),
                    stop.cancelled_owned(),
                )
                .await?;
        }
    }
    Ok(())
}
