"""New investigations: the event that announces them, and the one-statement writes on real PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_db import apply_migrations, open_pool
from pm_intake import (
    ActiveConflict,
    AlertDuplicate,
    Audit,
    NewInvestigation,
    create_alert,
    create_investigations,
    new_investigation,
)
from pm_streams import STREAM_INVESTIGATIONS, STREAM_INVESTIGATIONS_URGENT
from pm_testing import fresh_database, stack_env

AUDIT = Audit(identity="scheduler", auth_method="system", source="health_check", action="health_check",
              outcome="accepted")  # fmt: skip


def _check(ticket: str) -> NewInvestigation:
    return new_investigation(
        ticket_id=ticket,
        domain="shop",
        mode="fast",
        trigger_source="health_check",
        priority=types_pb2.PRIORITY_HEALTH_CHECK,
        requested_by="scheduler",
        trigger_context={"health_check": {"service": "cart"}},
        event_context=events_pb2.InvestigationRequested(health_check=events_pb2.HealthCheckContext(service="cart")),
    )


def test_the_event_carries_the_investigation_and_its_trigger_context() -> None:
    inv = _check("HC-1")
    event = events_pb2.InvestigationRequested.FromString(inv.event)
    assert event.investigation_id == str(inv.id)
    assert event.event_id == str(inv.event_id)
    assert event.trigger_source == types_pb2.TRIGGER_SOURCE_HEALTH_CHECK
    assert event.mode == types_pb2.MODE_FAST
    assert event.health_check.service == "cart"
    assert inv.stream == STREAM_INVESTIGATIONS_URGENT


def test_tickets_and_batches_go_to_the_ordinary_stream() -> None:
    inv = new_investigation(
        ticket_id="A-1", domain=None, mode="balanced", trigger_source="api", priority=types_pb2.PRIORITY_TICKET,
        requested_by="key:x",
    )  # fmt: skip
    assert inv.stream == STREAM_INVESTIGATIONS


@pytest.fixture()
async def conn() -> AsyncIterator[asyncpg.Connection]:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        # The pool's connections encode jsonb parameters, as the services' do.
        async with open_pool(dsn, max_size=1) as pool, pool.acquire() as connection:
            yield connection


async def _count(conn: asyncpg.Connection) -> tuple[int, int, int]:
    row = await conn.fetchrow(
        "SELECT (SELECT count(*) FROM investigations), (SELECT count(*) FROM outbox), (SELECT count(*) FROM audit_log)"
    )
    return (row[0], row[1], row[2])


async def test_a_conflict_inside_the_callers_transaction_leaves_it_usable(conn: asyncpg.Connection) -> None:
    first = _check("HC-same")
    await create_alert(conn, first, AUDIT, "health_check:shop:cart", "health_check", 3600)
    async with conn.transaction():
        await conn.execute("CREATE TEMP TABLE marker (id int)")
        # Another fingerprint for the same active ticket: the statement fails, inside a savepoint.
        with pytest.raises(ActiveConflict) as conflict:
            await create_alert(conn, _check("HC-same"), AUDIT, "health_check:other", "health_check", 3600)
        assert [a.investigation_id for a in conflict.value.active] == [first.id]
        # The same fingerprint inside its window.
        with pytest.raises(AlertDuplicate) as duplicate:
            await create_alert(conn, _check("HC-2"), AUDIT, "health_check:shop:cart", "health_check", 3600)
        assert duplicate.value.investigation_id == first.id
        # The caller's transaction goes on.
        await conn.execute("INSERT INTO marker VALUES (1)")
    assert await conn.fetchval("SELECT count(*) FROM marker") == 1
    assert await _count(conn) == (1, 1, 1)
    assert await conn.fetchval("SELECT count(*) FROM intake_dedup") == 1


async def test_investigations_are_written_with_their_outbox_and_audit_rows(conn: asyncpg.Connection) -> None:
    invs = [_check(f"HC-{i}") for i in range(3)]
    async with conn.transaction():
        await create_investigations(conn, invs, AUDIT)
    assert await _count(conn) == (3, 3, 3)
    outbox = await conn.fetch("SELECT aggregate_id, id, stream FROM outbox")
    assert {(r["aggregate_id"], r["id"]) for r in outbox} == {(i.id, i.event_id) for i in invs}
    with pytest.raises(ActiveConflict):
        async with conn.transaction():
            await create_investigations(conn, [_check("HC-new"), _check("HC-1")], AUDIT)
    assert await _count(conn) == (3, 3, 3)
