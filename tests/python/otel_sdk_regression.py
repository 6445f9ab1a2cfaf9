"""Drives the regression check of a running doraflow in real time with the
official OpenTelemetry Python SDK (OTLP/gRPC exporter): three services,
one deployment each, one-second slices.

The timeline, T a whole second a few seconds from now (doraflow's `red`
slices are 1 s; spans are counted in the slice they arrive in, so each
slice's spans are sent 0.3 s into it):
  - T-5 .. T-1: every service at its normal: `regress` and `steady` 500
    SERVER spans a slice with 1 error (0.2%), `quiet` 10 spans, no error;
  - T: all three deployed (a CDEvent `service.deployed` each, timestamp T,
    posted to the webhook);
  - T .. T+7: `regress` fails 25 of its 500 (5%); the others unchanged;
  - T+8 .. T+15: `regress` back at 1 in 500.
Prints {"deployed_at": T in ns} on success; exits non-zero when an export
or a post fails or a slice's spans could not be sent within the slice.
"""

import argparse
import json
import sys
import time
import urllib.request

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

MS = 1_000_000


class Checked:
    """Wraps an exporter and counts the exports that failed."""

    def __init__(self, inner):
        self.inner = inner
        self.failures = 0

    def export(self, batch):
        result = self.inner.export(batch)
        if result != SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self):
        return self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def per_slice(service, k):
    """(requests, errors) of `service` in slice T+k."""
    if service == "quiet":
        return 10, 0
    if service == "regress" and 0 <= k < 8:
        return 500, 25
    return 500, 1


def deployed(service, at_s):
    return {
        "context": {
            "specversion": "0.4.1",
            "id": f"deploy-{service}-{at_s}",
            "source": "/ci/python",
            "type": "dev.cdevents.service.deployed.0.2.0",
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at_s)),
        },
        "subject": {
            "id": f"service/{service}",
            "source": "/ci",
            "content": {
                "environment": {"id": "production"},
                "artifactId": f"pkg:oci/{service}@sha256:{at_s:064x}",
            },
        },
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True, help="OTLP/gRPC host:port")
    parser.add_argument("--webhook", required=True, help="the CDEvents webhook URL")
    args = parser.parse_args()

    tracers = {}
    processors = []
    exporters = []
    for service in ("regress", "steady", "quiet"):
        provider = TracerProvider(
            resource=Resource.create(
                {"service.name": service, "deployment.environment.name": "production"}
            )
        )
        # One export per slice, on force_flush.
        exporter = Checked(OTLPSpanExporter(endpoint=args.endpoint, insecure=True))
        exporters.append(exporter)
        processor = BatchSpanProcessor(
            exporter,
            max_queue_size=4096,
            max_export_batch_size=4096,
            schedule_delay_millis=60_000,
        )
        provider.add_span_processor(processor)
        processors.append(processor)
        tracers[service] = provider.get_tracer("doraflow-regression-test")

    deploy_at = int(time.time()) + 7
    for k in range(-5, 16):
        start = deploy_at + k
        time.sleep(max(0.0, start + 0.3 - time.time()))
        if k == 0:
            for service in tracers:
                body = json.dumps(deployed(service, deploy_at)).encode()
                request = urllib.request.Request(
                    args.webhook, data=body, headers={"content-type": "application/json"}
                )
                with urllib.request.urlopen(request, timeout=5) as response:
                    if response.status not in (200, 202):
                        sys.exit(f"the deployment of {service}: HTTP {response.status}")
        for service, tracer in tracers.items():
            requests, errors = per_slice(service, k)
            for i in range(requests):
                begin = time.time_ns()
                span = tracer.start_span("GET /", kind=SpanKind.SERVER, start_time=begin)
                if i < errors:
                    span.set_status(Status(StatusCode.ERROR))
                span.end(end_time=begin + 20 * MS)
        for processor in processors:
            if not processor.force_flush(timeout_millis=5_000):
                sys.exit(f"slice {k}: an export did not finish")
        if any(e.failures for e in exporters):
            sys.exit(f"slice {k}: an export failed")
        if time.time() > start + 0.95:
            sys.exit(f"slice {k}: its spans took past the slice's end")
    for processor in processors:
        processor.shutdown()
    print(json.dumps({"deployed_at": deploy_at * 1_000_000_000}))


if __name__ == "__main__":
    main()
