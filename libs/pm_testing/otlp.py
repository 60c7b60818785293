"""An OTLP/HTTP trace receiver on loopback, so tests see the spans real processes export.

    with running_otlp_collector() as collector:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, ...}
        ... run services, stop them (their exporters flush on shutdown) ...
        spans = collector.spans()

It decodes `POST /v1/traces` (ExportTraceServiceRequest, protobuf, gzip or not) the way a
collector does and keeps every span with its service name. Any other POST is recorded with its
headers and answered 200, which makes it a callback receiver as well.
"""

from __future__ import annotations

import gzip
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

TRACES_PATH = "/v1/traces"


@dataclass(frozen=True, slots=True)
class CollectedSpan:
    """One exported span, ids as lower-case hex ("" for a root's parent)."""

    service: str
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT, ...
    attributes: Mapping[str, Any]
    status: str  # STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR


@dataclass(frozen=True, slots=True)
class Received:
    """A POST to any other path."""

    path: str
    headers: Mapping[str, str]
    body: bytes


@dataclass
class OtlpCollector:
    """What the receiver has collected so far."""

    endpoint: str = ""
    _spans: list[CollectedSpan] = field(default_factory=list)
    _received: list[Received] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[CollectedSpan]:
        """Every span received, in arrival order."""
        with self._lock:
            return list(self._spans)

    def received(self, path: str) -> list[Received]:
        """The POSTs to `path` (not /v1/traces), in arrival order."""
        with self._lock:
            return [r for r in self._received if r.path == path]

    def _add(self, request: trace_service_pb2.ExportTraceServiceRequest) -> None:
        found: list[CollectedSpan] = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            service = str(resource.get("service.name", ""))
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(
                        CollectedSpan(
                            service=service,
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            kind=trace_pb2.Span.SpanKind.Name(span.kind),
                            attributes=_attributes(span.attributes),
                            status=trace_pb2.Status.StatusCode.Name(span.status.code),
                        )
                    )
        with self._lock:
            self._spans.extend(found)

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)


def _value(value: common_pb2.AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _handler(collector: OtlpCollector) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # - the http.server protocol
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            if self.headers.get("content-encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            if self.path != TRACES_PATH:
                collector._record(Received(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                self._answer(200, b"{}", "application/json")
                return
            try:
                request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            except DecodeError:
                self._answer(400, b"not an ExportTraceServiceRequest", "text/plain")
                return
            collector._add(request)
            reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
            self._answer(200, reply, "application/x-protobuf")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # - the http.server signature
            return

    return Handler


@contextmanager
def running_otlp_collector() -> Iterator[OtlpCollector]:
    """Receive OTLP/HTTP traces on a free loopback port until the block ends."""
    collector = OtlpCollector()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(collector))
    server.daemon_threads = True
    collector.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="otlp-collector", daemon=True)
    thread.start()
    try:
        yield collector
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
