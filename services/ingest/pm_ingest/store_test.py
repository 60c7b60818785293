"""Intake writes against real PostgreSQL: one statement, all or nothing, dedup by constraints."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from pm_db import apply_migrations, open_pool
from pm_ingest.intake import PRIORITY_ALERT
from pm_ingest.store import ActiveConflict, AlertDuplicate, Audit, IntakeStore, NewInvestigation
from pm_intake import new_investigation
from pm_testing import fresh_database, stack_env

AUDIT = Audit(identity="webhook:grafana-alert", auth_method="signature", source="grafana-alert", action="webhook",
              outcome="accepted")  # fmt: skip


@pytest.fixture()
async def store() -> AsyncIterator[IntakeStore]:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        async with open_pool(dsn, max_size=4, reset_on_release=False) as pool:
            yield IntakeStore(pool)


def _alert(ticket: str) -> NewInvestigation:
    return new_investigation(
        ticket_id=ticket,
        domain="cart",
        mode="fast",
        trigger_source="grafana_alert",
        priority=PRIORITY_ALERT,
        requested_by="grafana",
    )


async def _counts(pool: asyncpg.Pool) -> tuple[int, int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM investigations), (SELECT count(*) FROM outbox),"
        " (SELECT count(*) FROM audit_log), (SELECT count(*) FROM intake_dedup)"
    )
    return (row[0], row[1], row[2], row[3])


async def test_an_alert_is_created_once_per_fingerprint_window(store: IntakeStore) -> None:
    first = _alert("GRAFANA-fp1")
    async with store.autocommit() as intake:
        await intake.create_alert(first, AUDIT, "grafana:fp1", "grafana-alert", 3600)
    assert await _counts(store.pool) == (1, 1, 1, 1)
    # The investigation ends; the same fingerprint inside the window still makes nothing new.
    await store.pool.execute("UPDATE investigations SET status = 'completed', completed_at = now()")
    with pytest.raises(AlertDuplicate) as dup:
        async with store.autocommit() as intake:
            await intake.create_alert(_alert("GRAFANA-fp1"), AUDIT, "grafana:fp1", "grafana-alert", 3600)
    assert dup.value.investigation_id == first.id
    assert await _counts(store.pool) == (1, 1, 1, 1)
    # After the window, it is claimed again.
    await store.pool.execute("UPDATE intake_dedup SET expires_at = now() - interval '1 second'")
    async with store.autocommit() as intake:
        await intake.create_alert(_alert("GRAFANA-fp1"), AUDIT, "grafana:fp1", "grafana-alert", 3600)
    assert await _counts(store.pool) == (2, 2, 2, 1)


async def test_a_new_fingerprint_for_an_active_ticket_writes_nothing(store: IntakeStore) -> None:
    async with store.autocommit() as intake:
        await intake.create_alert(_alert("GRAFANA-x"), AUDIT, "grafana:a", "grafana-alert", 3600)
    with pytest.raises(ActiveConflict) as conflict:
        async with store.autocommit() as intake:
            await intake.create_alert(_alert("GRAFANA-x"), AUDIT, "grafana:b", "grafana-alert", 3600)
    assert [a.ticket_id for a in conflict.value.active] == ["GRAFANA-x"]
    # Neither the second claim nor its outbox or audit rows were kept.
    assert await _counts(store.pool) == (1, 1, 1, 1)
