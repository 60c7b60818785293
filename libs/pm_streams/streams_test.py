"""Integration tests of the stream bus against the real Redis of the test stack: delivery, reclaim,
dead letters, and the trace context a message carries from its producer to its handler."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis.asyncio import Redis

from pm.events.v1 import events_pb2
from pm_errors import Unavailable
from pm_streams import DEAD_LETTER_SUFFIX, GROUP_ORCHESTRATOR, STREAM_INVESTIGATIONS, Delivery, StreamBus
from pm_telemetry import configure_logging, trace_context
from pm_testing import stack_env, unique_name, wait_for


def _request(investigation_id: str) -> events_pb2.InvestigationRequested:
    return events_pb2.InvestigationRequested(
        event_id=f"evt-{investigation_id}", investigation_id=investigation_id, ticket_id="PAY-1"
    )


@pytest.fixture()
async def redis() -> AsyncIterator[Redis]:
    client = Redis.from_url(stack_env().redis_url)
    yield client
    await client.aclose()


async def test_message_published_before_the_consumer_started_is_delivered_and_acked(redis: Redis) -> None:
    namespace = unique_name("t") + ":"
    publisher = StreamBus(stack_env().redis_url, namespace=namespace)
    await publisher.broker.connect()
    await publisher.publish(STREAM_INVESTIGATIONS, _request("inv-1"), message_id="evt-inv-1")

    received: list[tuple[events_pb2.InvestigationRequested, Delivery]] = []

    async def handle(message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        received.append((message, delivery))

    consumer = StreamBus(stack_env().redis_url, namespace=namespace, polling_ms=100)
    consumer.subscribe(
        STREAM_INVESTIGATIONS,
        group=GROUP_ORCHESTRATOR,
        consumer="o-1",
        message_type=events_pb2.InvestigationRequested,
        handler=handle,
    )
    await consumer.start()
    try:

        async def delivered() -> bool:
            return bool(received)

        await wait_for(delivered, timeout=10, what="delivery")
        message, delivery = received[0]
        assert message.investigation_id == "inv-1"
        assert delivery.message_id == "evt-inv-1"
        assert delivery.delivery_count == 1

        async def acked() -> bool:
            return await consumer.pending(STREAM_INVESTIGATIONS, GROUP_ORCHESTRATOR) == 0

        await wait_for(acked, timeout=10, what="ack")
    finally:
        await consumer.close()
        await publisher.close()


async def test_failed_message_is_reclaimed_and_redelivered(redis: Redis) -> None:
    namespace = unique_name("t") + ":"
    bus = StreamBus(stack_env().redis_url, namespace=namespace, polling_ms=100)
    counts: list[int] = []

    async def flaky(message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        counts.append(delivery.delivery_count)
        if len(counts) == 1:
            raise RuntimeError("worker crashed mid-step")

    bus.subscribe(
        STREAM_INVESTIGATIONS,
        group=GROUP_ORCHESTRATOR,
        consumer="o-1",
        message_type=events_pb2.InvestigationRequested,
        handler=flaky,
        reclaim_idle_ms=300,
    )
    await bus.start()
    try:
        await bus.publish(STREAM_INVESTIGATIONS, _request("inv-2"), message_id="evt-inv-2")

        async def handled_twice() -> bool:
            return len(counts) >= 2 and await bus.pending(STREAM_INVESTIGATIONS, GROUP_ORCHESTRATOR) == 0

        await wait_for(handled_twice, timeout=20, what="redelivery after reclaim")
        assert counts[:2] == [1, 2]
    finally:
        await bus.close()


async def test_poison_message_goes_to_the_dead_letter_stream(redis: Redis) -> None:
    namespace = unique_name("t") + ":"
    bus = StreamBus(stack_env().redis_url, namespace=namespace, polling_ms=100)

    async def always_fails(message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        raise RuntimeError("cannot handle")

    bus.subscribe(
        STREAM_INVESTIGATIONS,
        group=GROUP_ORCHESTRATOR,
        consumer="o-1",
        message_type=events_pb2.InvestigationRequested,
        handler=always_fails,
        reclaim_idle_ms=200,
        max_deliveries=2,
    )
    await bus.start()
    dead_stream = bus.name(STREAM_INVESTIGATIONS) + DEAD_LETTER_SUFFIX
    try:
        await bus.publish(STREAM_INVESTIGATIONS, _request("inv-3"), message_id="evt-inv-3")

        async def dead_lettered() -> bool:
            return int(await redis.xlen(dead_stream)) == 1

        await wait_for(dead_lettered, timeout=20, what="dead letter")
        entries = await redis.xrange(dead_stream)
        assert entries is not None
        ((_, fields),) = entries
        assert fields is not None
        assert fields[b"message_id"] == b"evt-inv-3"
        data = fields[b"data"]
        assert isinstance(data, bytes)
        assert events_pb2.InvestigationRequested.FromString(data).investigation_id == "inv-3"

        async def acked() -> bool:
            return await bus.pending(STREAM_INVESTIGATIONS, GROUP_ORCHESTRATOR) == 0

        await wait_for(acked, timeout=10, what="ack of the dead-lettered message")
    finally:
        await bus.close()


async def test_ping_reports_unreachable_redis() -> None:
    bus = StreamBus("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(Unavailable, match="redis unreachable"):
            async with asyncio.timeout(10):
                await bus.ping()
    finally:
        await bus.close()


def _recording_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


async def test_a_handled_message_continues_the_publishers_trace_and_its_log_lines_carry_it() -> None:
    provider, exporter = _recording_provider()
    namespace = unique_name("t") + ":"
    publisher = StreamBus(stack_env().redis_url, namespace=namespace, tracer_provider=provider)
    consumer = StreamBus(stack_env().redis_url, namespace=namespace, polling_ms=100, tracer_provider=provider)
    lines = io.StringIO()
    configure_logging("orchestrator", "info", lines)
    handled: list[trace.SpanContext] = []

    async def handle(message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        handled.append(trace.get_current_span().get_span_context())
        logging.getLogger("engine").info("starting")

    consumer.subscribe(
        STREAM_INVESTIGATIONS,
        group=GROUP_ORCHESTRATOR,
        consumer="o-1",
        message_type=events_pb2.InvestigationRequested,
        handler=handle,
    )
    await publisher.connect()
    await consumer.start()
    try:
        with provider.get_tracer("test").start_as_current_span("request") as request:
            await publisher.publish(STREAM_INVESTIGATIONS, _request("inv-9"), message_id="evt-inv-9")

        async def delivered() -> bool:
            return bool(handled)

        await wait_for(delivered, timeout=10, what="delivery")
    finally:
        await consumer.close()
        await publisher.close()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    send, process = spans["send pm.investigations"], spans["process pm.investigations"]
    trace_id = request.get_span_context().trace_id
    assert {s.context.trace_id for s in (send, process)} == {trace_id}
    assert send.parent is not None
    assert send.parent.span_id == request.get_span_context().span_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert (send.kind, process.kind) == (trace.SpanKind.PRODUCER, trace.SpanKind.CONSUMER)
    assert process.attributes is not None
    assert (process.attributes["messaging.consumer.group.name"], process.attributes["pm.investigation_id"]) == (
        GROUP_ORCHESTRATOR,
        "inv-9",
    )
    assert handled == [process.context]
    line = next(json.loads(x) for x in lines.getvalue().splitlines() if '"starting"' in x)
    assert line["trace_id"] == format(trace_id, "032x")
    assert line["span_id"] == format(process.context.span_id, "016x")
    assert line["investigation_id"] == "inv-9"


async def test_a_message_without_headers_continues_the_trace_its_body_names() -> None:
    provider, exporter = _recording_provider()
    namespace = unique_name("t") + ":"
    bus = StreamBus(stack_env().redis_url, namespace=namespace, polling_ms=100, tracer_provider=provider)
    received: list[str] = []

    async def handle(message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        received.append(message.investigation_id)

    bus.subscribe(
        STREAM_INVESTIGATIONS,
        group=GROUP_ORCHESTRATOR,
        consumer="o-1",
        message_type=events_pb2.InvestigationRequested,
        handler=handle,
    )
    await bus.start()
    try:
        with provider.get_tracer("test").start_as_current_span("intake") as intake:
            message = _request("inv-10")
            message.trace_context.update(trace_context())
        # Written by hand, as a producer that does not trace would: no trace headers.
        await bus._admin.xadd(bus.name(STREAM_INVESTIGATIONS), {"__data__": message.SerializeToString()})

        async def delivered() -> bool:
            return bool(received)

        await wait_for(delivered, timeout=10, what="delivery")
    finally:
        await bus.close()
    (process,) = (s for s in exporter.get_finished_spans() if s.name == "process pm.investigations")
    assert process.context.trace_id == intake.get_span_context().trace_id
    assert process.parent is not None
    assert process.parent.span_id == intake.get_span_context().span_id
