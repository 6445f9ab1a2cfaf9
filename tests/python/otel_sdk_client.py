"""Sends a known set of spans and logs to doraflow with the official
OpenTelemetry Python SDK and its OTLP exporters (gRPC or HTTP/protobuf).

The scenario, for the resource (service.name=SERVICE,
deployment.environment.name=ENV):
  - 100 SERVER spans lasting 1..100 ms; spans 1-3 have status ERROR, spans
    4-5 have http.response.status_code 503 (status unset): 5 errors;
  - 20 CLIENT spans with status ERROR and 10 INTERNAL spans: not requests;
  - logs: 3 at ERROR, 1 at CRITICAL, 2 at INFO: 4 error logs; one of the
    INFO records is a failed deployment by the OpenTelemetry semantic
    conventions (deployment.id, deployment.status=failed,
    deployment.environment.name=ENV, vcs.ref.head.revision).
Exits non-zero when an export fails.
"""

import argparse
import logging
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

MS = 1_000_000
T0 = 1_764_000_000_000_000_000


class Checked:
    """Wraps an exporter and remembers whether every export succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.failures = 0

    def export(self, batch):
        result = self.inner.export(batch)
        ok = result in (SpanExportResult.SUCCESS,) or getattr(result, "name", "") == "SUCCESS"
        if not ok:
            self.failures += 1
        return result

    def shutdown(self):
        return self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def exporters(protocol, endpoint, ca=None, token=None):
    headers = {"authorization": "Bearer " + token} if token else None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        if ca:
            # TLS, trusting only the test's CA.
            import grpc

            with open(ca, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            return (
                OTLPSpanExporter(endpoint=endpoint, insecure=False, credentials=credentials, headers=headers),
                OTLPLogExporter(endpoint=endpoint, insecure=False, credentials=credentials, headers=headers),
            )
        return (
            OTLPSpanExporter(endpoint=endpoint, insecure=True, headers=headers),
            OTLPLogExporter(endpoint=endpoint, insecure=True, headers=headers),
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return (
        OTLPSpanExporter(endpoint=endpoint + "/v1/traces", certificate_file=ca, headers=headers),
        OTLPLogExporter(endpoint=endpoint + "/v1/logs", certificate_file=ca, headers=headers),
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--env", required=True)
    parser.add_argument("--ca", help="PEM CA file: connect over TLS, trusting it")
    parser.add_argument("--token", help="bearer token to send")
    args = parser.parse_args()

    resource = Resource.create(
        {"service.name": args.service, "deployment.environment.name": args.env}
    )
    span_exporter, log_exporter = exporters(args.protocol, args.endpoint, args.ca, args.token)
    spans = Checked(span_exporter)
    logs = Checked(log_exporter)

    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracer = provider.get_tracer("doraflow-test")
    for i in range(1, 101):
        span = tracer.start_span("GET /orders", kind=SpanKind.SERVER, start_time=T0)
        span.set_attribute("http.request.method", "GET")
        if i <= 3:
            span.set_status(Status(StatusCode.ERROR, "boom"))
            span.set_attribute("http.response.status_code", 200)
        elif i <= 5:
            span.set_attribute("http.response.status_code", 503)
        else:
            span.set_attribute("http.response.status_code", 200)
        span.end(end_time=T0 + i * MS)
    for _ in range(20):
        span = tracer.start_span("SELECT", kind=SpanKind.CLIENT, start_time=T0)
        span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=T0 + 900 * MS)
    for _ in range(10):
        span = tracer.start_span("work", kind=SpanKind.INTERNAL, start_time=T0)
        span.end(end_time=T0 + 5 * MS)
    provider.shutdown()

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    logger = logging.getLogger("doraflow-test")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(LoggingHandler(logger_provider=logger_provider))
    for _ in range(3):
        logger.error("payment failed")
    logger.critical("database down")
    logger.info(
        "deployment finished",
        extra={
            "deployment.id": f"{args.service}-deploy-1",
            "deployment.status": "failed",
            "deployment.environment.name": args.env,
            "vcs.ref.head.revision": "4f1c2e9",
        },
    )
    logger.info("order shipped")
    logger_provider.shutdown()

    if spans.failures or logs.failures:
        print(f"export failures: spans={spans.failures} logs={logs.failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
