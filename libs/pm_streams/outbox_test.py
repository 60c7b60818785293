"""The outbox relay against real PostgreSQL and Redis: priority order, once-only, outages, and the
trace each message continues."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from pm.events.v1 import events_pb2
from pm_db import apply_migrations, open_pool
from pm_errors import Unavailable
from pm_streams import StreamBus
from pm_streams.outbox import OutboxRelay
from pm_telemetry import trace_context
from pm_testing import fresh_database, stack_env, unique_name


@pytest.fixture()
async def pool() -> AsyncIterator[asyncpg.Pool]:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        async with open_pool(dsn, max_size=4) as pool:
            yield pool


async def _row(pool: asyncpg.Pool, priority: int, stream: str = "pm.investigations") -> uuid.UUID:
    row_id = uuid.uuid4()
    await pool.execute(
        "INSERT INTO outbox (id, stream, message_type, payload, priority) VALUES ($1, $2, 'test.Message', $3, $4)",
        row_id,
        stream,
        row_id.bytes,
        priority,
    )
    return row_id


async def test_rows_go_out_highest_priority_first_and_only_once(pool: asyncpg.Pool) -> None:
    bus = StreamBus(stack_env().redis_url, namespace=unique_name("t") + ":")
    await bus.connect()
    try:
        relay = OutboxRelay(pool, bus, CollectorRegistry(), batch_size=1)
        batch = await _row(pool, 4)
        ticket = await _row(pool, 3)
        alert = await _row(pool, 1, "pm.investigations.urgent")
        order: list[uuid.UUID] = []
        for _ in range(3):
            assert await relay.publish_pending() == 1
            published = {r["id"] for r in await pool.fetch("SELECT id FROM outbox WHERE published_at IS NOT NULL")}
            new = published - set(order)
            assert len(new) == 1
            order.append(new.pop())
        assert order == [alert, ticket, batch]
        assert await relay.publish_pending() == 0
        assert await bus._admin.xlen(bus.name("pm.investigations")) == 2
        assert await bus._admin.xlen(bus.name("pm.investigations.urgent")) == 1
        entry = await pool.fetchval("SELECT stream_entry_id FROM outbox WHERE id = $1", alert)
        assert entry
    finally:
        await bus.close()


async def test_nothing_is_claimed_or_lost_while_redis_is_unreachable(pool: asyncpg.Pool) -> None:
    bus = StreamBus("redis://127.0.0.1:1/0")
    await bus.connect()
    try:
        relay = OutboxRelay(pool, bus, CollectorRegistry())
        row = await _row(pool, 3)
        with pytest.raises(Unavailable):
            await relay.publish_pending()
        state = await pool.fetchrow("SELECT published_at, attempts FROM outbox WHERE id = $1", row)
        assert state["published_at"] is None
    finally:
        await bus.close()


async def test_each_row_is_published_in_the_trace_its_message_was_written_in(pool: asyncpg.Pool) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bus = StreamBus(stack_env().redis_url, namespace=unique_name("t") + ":", tracer_provider=provider)
    await bus.connect()
    try:
        with provider.get_tracer("test").start_as_current_span("engine.dispatch") as dispatch:
            task = events_pb2.AgentTask(
                task_id="t-1", investigation_id=str(uuid.uuid4()), trace_context=trace_context()
            )
        row_id = uuid.uuid4()
        await pool.execute(
            "INSERT INTO outbox (id, stream, message_type, payload) VALUES ($1, 'pm.agent.tasks', $2, $3)",
            row_id,
            task.DESCRIPTOR.full_name,
            task.SerializeToString(),
        )
        untraced = await _row(pool, 3)  # a message type this process does not know: a trace of its own
        # The relay publishes outside any request's context.
        relay = OutboxRelay(pool, bus, CollectorRegistry())
        assert await relay.publish_pending() == 2
        entries = await bus._admin.xrange(bus.name("pm.agent.tasks"))
    finally:
        await bus.close()
    sends = {s.attributes["messaging.message.id"]: s for s in exporter.get_finished_spans() if s.attributes}
    send = sends[str(row_id)]
    assert send.name == "send pm.agent.tasks"
    assert send.context.trace_id == dispatch.get_span_context().trace_id
    assert send.parent is not None
    assert send.parent.span_id == dispatch.get_span_context().span_id
    assert sends[str(untraced)].parent is None
    # The headers carry the send span on to the consumer.
    assert entries is not None
    ((_, fields),) = entries
    assert fields is not None
    data = fields[b"__data__"]
    assert isinstance(data, bytes)
    assert f"{send.context.trace_id:032x}-{send.context.span_id:016x}".encode() in data
