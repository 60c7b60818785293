"""Tests of JSON logging, redaction, the metrics endpoint, span sampling, trace context carriers and
OTLP export."""

import io
import json
import logging
import urllib.request

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import Counter

from pm_telemetry import (
    MetricsServer,
    bind_investigation,
    configure_logging,
    configure_tracing,
    otlp_exporter,
    parent_context,
    redact,
    trace_context,
)
from pm_testing import running_otlp_collector


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


def test_durations_and_header_names_under_secret_looking_keys_are_shown() -> None:
    shown = redact({"secrets_refresh_seconds": 30, "deploy_signature_header": "x-hub-signature-256",
                    "slack_signing_secret": "s3cr3t", "api_key_seconds_ago": "k"})  # fmt: skip
    assert shown == {
        "secrets_refresh_seconds": 30,
        "deploy_signature_header": "x-hub-signature-256",
        "slack_signing_secret": "[REDACTED]",
        "api_key_seconds_ago": "[REDACTED]",
    }


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


def test_without_an_exporter_nothing_is_recorded_but_log_lines_keep_the_ids() -> None:
    stream = io.StringIO()
    configure_logging("worker", "info", stream)
    tracing = configure_tracing("worker", "0")
    assert not tracing.exporting
    with tracing.tracer("t").start_as_current_span("step") as span:
        assert not span.is_recording()
        logging.getLogger("t").info("inside")
        context = span.get_span_context()
    tracing.shutdown()
    line = json.loads(stream.getvalue().splitlines()[-1])
    assert (line["trace_id"], line["span_id"]) == (format(context.trace_id, "032x"), format(context.span_id, "016x"))


def test_a_trace_context_carrier_continues_the_trace_elsewhere() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("orchestrator", "0", exporter=exporter)
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("dispatch") as dispatch:
        carrier = trace_context()
    assert set(carrier) == {"traceparent"}
    with tracer.start_as_current_span("step", context=parent_context(carrier)) as step:
        pass
    tracing.shutdown()
    assert step.get_span_context().trace_id == dispatch.get_span_context().trace_id
    (finished,) = (s for s in exporter.get_finished_spans() if s.name == "step")
    assert finished.parent is not None
    assert finished.parent.span_id == dispatch.get_span_context().span_id


def test_a_missing_or_malformed_carrier_starts_a_new_trace() -> None:
    exporter = InMemorySpanExporter()
    tracing = configure_tracing("orchestrator", "0", exporter=exporter)
    tracer = tracing.tracer("t")
    with tracer.start_as_current_span("outer"):
        for carrier in ({}, {"traceparent": "00-not-a-trace-01"}, None):
            with tracer.start_as_current_span("inner", context=parent_context(carrier)):
                pass
    tracing.shutdown()
    inner = [s for s in exporter.get_finished_spans() if s.name == "inner"]
    assert len(inner) == 3
    assert all(s.parent is None for s in inner)
    assert trace_context() == {}  # no current span here


def test_spans_are_exported_over_otlp_http_to_the_endpoint() -> None:
    with running_otlp_collector() as collector:
        tracing = configure_tracing("pm-registry", "9.9", collector.endpoint)
        assert tracing.exporting
        with tracing.tracer("t").start_as_current_span("tool.call", attributes={"pm.tool.name": "search_logs"}):
            pass
        tracing.shutdown()  # flushes
        (span,) = collector.spans()
    assert (span.service, span.name, span.attributes["pm.tool.name"]) == ("pm-registry", "tool.call", "search_logs")


def test_the_otlp_exporter_follows_protocol_and_endpoints() -> None:
    assert otlp_exporter("http/protobuf", None) is None
    assert type(otlp_exporter("http/protobuf", "http://c:4318")).__module__.endswith("proto.http.trace_exporter")
    assert type(otlp_exporter("grpc", "http://c:4317")).__module__.endswith("proto.grpc.trace_exporter")
    assert type(otlp_exporter("grpc", None, "http://c:4317")).__module__.endswith("proto.grpc.trace_exporter")
    with pytest.raises(ValueError, match="http/protobuf, grpc"):
        otlp_exporter("http/json", "http://c:4318")
