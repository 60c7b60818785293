"""Tests of JSON logging, redaction, the metrics endpoint and span sampling."""

import io
import json
import logging
import urllib.request

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import Counter

from pm_telemetry import MetricsServer, bind_investigation, configure_logging, configure_tracing, redact


def test_log_lines_are_json_with_investigation_id_and_redacted_extras() -> None:
    stream = io.StringIO()
    configure_logging("ingest", "debug", stream)
    with bind_investigation("inv-1"):
        logging.getLogger("t").info("accepted", extra={"ticket_id": "PAY-1", "api_key": "k-123"})
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert line["message"] == "accepted"
    assert line["service"] == "ingest"
    assert line["investigation_id"] == "inv-1"
    assert line["ticket_id"] == "PAY-1"
    assert line["api_key"] == "[REDACTED]"
    assert "k-123" not in stream.getvalue()


def test_investigation_id_is_unbound_after_the_block() -> None:
    stream = io.StringIO()
    configure_logging("ingest", "info", stream)
    with bind_investigation("inv-2"):
        pass
    logging.getLogger("t").info("later")
    assert "investigation_id" not in json.loads(stream.getvalue().splitlines()[-1])


def test_redact_walks_nested_values() -> None:
    data = {"headers": {"Authorization": "Bearer x"}, "items": [{"password": "p", "ok": 1}]}
    assert redact(data) == {"headers": {"Authorization": "[REDACTED]"}, "items": [{"password": "[REDACTED]", "ok": 1}]}


def test_metrics_server_serves_its_own_registry() -> None:
    with MetricsServer("127.0.0.1", 0) as server:
        Counter("pm_test_events", "events", registry=server.registry).inc(3)
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5).read().decode()
    assert "pm_test_events_total 3.0" in body
    assert "pm_process_resident_memory_bytes" in body


def test_unsampled_spans_are_not_recorded_but_keep_their_trace_ids() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("ingest", "0", exporter=exporter, sample_ratio=0.0)
    with tracing.tracer("t").start_as_current_span("rpc") as span:
        assert not span.is_recording()
        assert span.get_span_context().is_valid
    tracing.shutdown()
    assert exporter.get_finished_spans() == ()


def test_every_span_is_recorded_by_default() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("ingest", "0", exporter=exporter)
    with tracing.tracer("t").start_as_current_span("rpc") as span:
        assert span.is_recording()
    tracing.shutdown()
    assert [s.name for s in exporter.get_finished_spans()] == ["rpc"]
