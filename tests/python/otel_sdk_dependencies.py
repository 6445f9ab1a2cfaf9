"""Sends one checkout through three services with the official OpenTelemetry
Python SDK, with the semantic-convention attribute names of its own
`opentelemetry-semantic-conventions` package, and exports each service's
spans with the OTLP exporter (gRPC or HTTP/protobuf) in an order chosen to
test pairing: checkout's first (its SERVER span before frontend's CLIENT
span), then worker's, then frontend's.

The scenario (every span in one trace, context propagated as instrumented
libraries propagate it):
  frontend  SERVER  GET /checkout (root)                     0 - 130 ms
  frontend  CLIENT  GET  server.address=checkout             0 - 120 ms
  checkout  SERVER  GET /pay (child of frontend's CLIENT)    5 - 105 ms
  checkout  CLIENT  postgresql shop SELECT orders x3: 10, 20 (ERROR), 30 ms
  checkout  CLIENT  redis GET, cache.hit True, True, False, True: 1 ms each
  checkout  PRODUCER kafka orders send                      48 - 50 ms
  worker    CONSUMER kafka orders process (child of the PRODUCER) 300 - 340 ms
  worker    CLIENT  POST server.address=ledger.external (never answered
            by an instrumented server)                     305 - 335 ms
Exits non-zero when an export fails.
"""

import argparse
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import messaging_attributes as messaging
from opentelemetry.semconv.attributes import db_attributes as db
from opentelemetry.semconv.attributes import http_attributes as http
from opentelemetry.semconv.attributes import server_attributes as server
from opentelemetry.trace import SpanKind, Status, StatusCode

MS = 1_000_000
T0 = 1_764_000_000_000_000_000


def provider(service, env):
    memory = InMemorySpanExporter()
    p = TracerProvider(
        resource=Resource.create({"service.name": service, "deployment.environment.name": env})
    )
    p.add_span_processor(SimpleSpanProcessor(memory))
    return p, memory


def otlp(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint + "/v1/traces")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--env", default="production")
    args = parser.parse_args()

    frontend, frontend_spans = provider("frontend", args.env)
    checkout, checkout_spans = provider("checkout", args.env)
    worker, worker_spans = provider("worker", args.env)
    ft = frontend.get_tracer("shop")
    ct = checkout.get_tracer("shop")
    wt = worker.get_tracer("shop")

    root = ft.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=T0)
    call = ft.start_span(
        "GET",
        kind=SpanKind.CLIENT,
        start_time=T0,
        context=trace.set_span_in_context(root),
        attributes={http.HTTP_REQUEST_METHOD: "GET", server.SERVER_ADDRESS: "checkout"},
    )
    served = ct.start_span(
        "GET /pay",
        kind=SpanKind.SERVER,
        start_time=T0 + 5 * MS,
        context=trace.set_span_in_context(call),
        attributes={http.HTTP_REQUEST_METHOD: "GET", http.HTTP_RESPONSE_STATUS_CODE: 200},
    )
    inside = trace.set_span_in_context(served)
    for i, ms in enumerate([10, 20, 30]):
        q = ct.start_span(
            "SELECT orders",
            kind=SpanKind.CLIENT,
            start_time=T0 + 6 * MS,
            context=inside,
            attributes={
                db.DB_SYSTEM_NAME: "postgresql",
                db.DB_NAMESPACE: "shop",
                db.DB_OPERATION_NAME: "SELECT",
                db.DB_COLLECTION_NAME: "orders",
                server.SERVER_ADDRESS: "db.internal",
            },
        )
        if i == 1:
            q.set_status(Status(StatusCode.ERROR, "deadlock detected"))
        q.end(end_time=T0 + 6 * MS + ms * MS)
    for hit in [True, True, False, True]:
        c = ct.start_span(
            "GET",
            kind=SpanKind.CLIENT,
            start_time=T0 + 40 * MS,
            context=inside,
            attributes={
                db.DB_SYSTEM_NAME: "redis",
                db.DB_OPERATION_NAME: "GET",
                server.SERVER_ADDRESS: "cache.internal",
                "cache.hit": hit,
            },
        )
        c.end(end_time=T0 + 41 * MS)
    publish = ct.start_span(
        "send orders",
        kind=SpanKind.PRODUCER,
        start_time=T0 + 48 * MS,
        context=inside,
        attributes={
            messaging.MESSAGING_SYSTEM: "kafka",
            messaging.MESSAGING_DESTINATION_NAME: "orders",
            messaging.MESSAGING_OPERATION_TYPE: "send",
        },
    )
    publish.end(end_time=T0 + 50 * MS)
    served.end(end_time=T0 + 105 * MS)
    call.end(end_time=T0 + 120 * MS)
    root.end(end_time=T0 + 130 * MS)

    consumed = wt.start_span(
        "process orders",
        kind=SpanKind.CONSUMER,
        start_time=T0 + 300 * MS,
        context=trace.set_span_in_context(publish),
        attributes={
            messaging.MESSAGING_SYSTEM: "kafka",
            messaging.MESSAGING_DESTINATION_NAME: "orders",
            messaging.MESSAGING_OPERATION_TYPE: "process",
        },
    )
    ledger = wt.start_span(
        "POST",
        kind=SpanKind.CLIENT,
        start_time=T0 + 305 * MS,
        context=trace.set_span_in_context(consumed),
        attributes={http.HTTP_REQUEST_METHOD: "POST", server.SERVER_ADDRESS: "ledger.external"},
    )
    ledger.end(end_time=T0 + 335 * MS)
    consumed.end(end_time=T0 + 340 * MS)

    exporter = otlp(args.protocol, args.endpoint)
    failures = 0
    for memory in (checkout_spans, worker_spans, frontend_spans):
        result = exporter.export(memory.get_finished_spans())
        if result != SpanExportResult.SUCCESS:
            failures += 1
    exporter.shutdown()
    if failures:
        print(f"{failures} exports failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
