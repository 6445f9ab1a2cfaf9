"""Writes OTLP trace requests exactly as the official OpenTelemetry Python
SDK encodes them (its OTLP exporters' own encoder), for the differential
test of doraflow's targeted wire reader against a full decode.

Spans of every kind over three resources (one without an environment, one
with the older `deployment.environment`), statuses, the current and the
older HTTP status attribute as int, string and double, events, links and
long attribute values. Deterministic: a seeded random generator.

Usage: sdk_trace_payloads.py OUT_DIR COUNT  (writes OUT_DIR/0.pb ...)
"""

import random
import sys

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

KINDS = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]
T0 = 1_764_000_000_000_000_000


def main():
    out, count = sys.argv[1], int(sys.argv[2])
    rng = random.Random(20261129)
    resources = [
        Resource.create({"service.name": "checkout", "deployment.environment.name": "production"}),
        Resource.create({"service.name": "cart", "deployment.environment": "staging", "k8s.pod.name": "cart-1"}),
        Resource.create({"service.name": "search"}),
    ]
    memory = InMemorySpanExporter()
    tracers = []
    for resource in resources:
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(memory))
        tracers.append(provider.get_tracer("doraflow-differential", "1.0"))
    for n in range(count):
        memory.clear()
        for _ in range(rng.randint(1, 200)):
            tracer = rng.choice(tracers)
            kind = rng.choice(KINDS)
            start = T0 + rng.randint(0, 10**9)
            span = tracer.start_span("GET /api/orders/{id}", kind=kind, start_time=start)
            span.set_attribute("http.request.method", "GET")
            span.set_attribute("url.full", "https://shop.example.com/api/orders/" + "x" * rng.randint(0, 300))
            which = rng.random()
            code = rng.choice([200, 201, 404, 499, 500, 503])
            if which < 0.4:
                span.set_attribute("http.response.status_code", code)
            elif which < 0.55:
                span.set_attribute("http.status_code", code)
            elif which < 0.65:
                span.set_attribute("http.response.status_code", str(code))
            elif which < 0.7:
                span.set_attribute("http.response.status_code", float(code))
            elif which < 0.75:
                # Both: the first one written decides.
                span.set_attribute("http.response.status_code", code)
                span.set_attribute("http.status_code", 200 if code >= 500 else 503)
            if rng.random() < 0.2:
                span.set_status(Status(StatusCode.ERROR, "boom"))
            elif rng.random() < 0.2:
                span.set_status(Status(StatusCode.OK))
            if rng.random() < 0.2:
                span.add_event("retry", {"attempt": 2})
            if rng.random() < 0.1:
                span.add_link(span.get_span_context(), {"link.kind": "follows"})
            span.end(end_time=start + rng.randint(0, 5 * 10**8))
        request = encode_spans(memory.get_finished_spans())
        with open(f"{out}/{n}.pb", "wb") as f:
            f.write(request.SerializeToString())


if __name__ == "__main__":
    main()
