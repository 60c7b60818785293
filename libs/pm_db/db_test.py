"""Integration tests of the pool and the migrations against the real PostgreSQL 16 + pgvector."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from pm_db import Migration, MigrationError, apply_migrations, load_migrations, open_pool, pending_migrations, ping
from pm_errors import Unavailable
from pm_testing import fresh_database, stack_env

EXPECTED_TABLES = {
    "investigations",
    "intake_dedup",
    "outbox",
    "investigation_steps",
    "agent_runs",
    "hypotheses",
    "reports",
    "mcp_tool_calls",
    "investigation_events",
    "deliveries",
    "deploy_events",
    "domain_configs",
    "feedback",
    "recommendations",
    "knowledge_entries",
    "incident_embeddings",
    "audit_log",
    "scheduled_job_runs",
    "schema_migrations",
}


async def _tables(dsn: str) -> set[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_migrations_create_the_full_schema_and_a_rerun_changes_nothing() -> None:
    async with fresh_database(stack_env()) as dsn:
        first = await apply_migrations(dsn)
        assert first.applied == tuple(m.version for m in load_migrations())
        assert await _tables(dsn) == EXPECTED_TABLES
        conn = await asyncpg.connect(dsn)
        try:
            schema_before = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY 1, 2"
            )
            assert await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        finally:
            await conn.close()
        second = await apply_migrations(dsn)
        assert second.applied == ()
        assert await pending_migrations(dsn) == ()
        conn = await asyncpg.connect(dsn)
        try:
            schema_after = await conn.fetch(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = 'public' ORDER BY 1, 2"
            )
            assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(load_migrations())
        finally:
            await conn.close()
        assert schema_after == schema_before


async def test_concurrent_runners_apply_each_migration_once() -> None:
    async with fresh_database(stack_env()) as dsn:
        reports = await asyncio.gather(*(apply_migrations(dsn) for _ in range(4)))
        applied = [v for r in reports for v in r.applied]
        assert sorted(applied) == sorted(m.version for m in load_migrations())


async def test_a_changed_migration_is_refused() -> None:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        changed = tuple(Migration(m.version, m.sql + "\n-- edited") for m in load_migrations())
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await apply_migrations(dsn, changed)


async def test_a_failing_migration_leaves_nothing_behind() -> None:
    async with fresh_database(stack_env()) as dsn:
        broken = (Migration("0001_broken.sql", "CREATE TABLE half_done (id int); SELECT no_such_function();"),)
        with pytest.raises(MigrationError, match="0001_broken.sql failed"):
            await apply_migrations(dsn, broken)
        assert "half_done" not in await _tables(dsn)
        assert await pending_migrations(dsn, broken) == ("0001_broken.sql",)


async def _insert_investigation(conn: asyncpg.Connection, ticket: str, status: str = "queued") -> None:
    terminal = status in ("completed", "failed", "cancelled")
    await conn.execute(
        "INSERT INTO investigations (id, ticket_id, status, completed_at) "
        "VALUES (gen_random_uuid(), $1, $2, CASE WHEN $3 THEN now() END)",
        ticket,
        status,
        terminal,
    )


async def test_only_one_active_investigation_per_ticket() -> None:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            await _insert_investigation(conn, "PAY-1", "completed")
            await _insert_investigation(conn, "PAY-1")
            with pytest.raises(asyncpg.UniqueViolationError):
                await _insert_investigation(conn, "PAY-1", "running")
            await _insert_investigation(conn, "PAY-2", "running")
        finally:
            await conn.close()


async def test_step_identity_is_unique_per_attempt() -> None:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        conn = await asyncpg.connect(dsn)
        try:
            inv = await conn.fetchval(
                "INSERT INTO investigations (id, ticket_id) VALUES (gen_random_uuid(), 'X-1') RETURNING id"
            )
            insert = (
                "INSERT INTO investigation_steps "
                "(id, investigation_id, phase, agent_role, iteration, attempt, task_id) "
                "VALUES (gen_random_uuid(), $1, 'gather', 'gather.logs', 0, $2, $3)"
            )
            await conn.execute(insert, inv, 1, "t-1")
            await conn.execute(insert, inv, 2, "t-2")
            with pytest.raises(asyncpg.UniqueViolationError):
                await conn.execute(insert, inv, 1, "t-3")
        finally:
            await conn.close()


async def test_jsonb_round_trips_as_python_values() -> None:
    async with fresh_database(stack_env()) as dsn:
        await apply_migrations(dsn)
        async with open_pool(dsn) as pool:
            await ping(pool)
            value = await pool.fetchval(
                "INSERT INTO domain_configs (id, name, settings) "
                "VALUES (gen_random_uuid(), 'payments', $1) RETURNING settings",
                {"jira_project": "pay", "threshold": 1.5},
            )
            assert value == {"jira_project": "pay", "threshold": 1.5}
            assert await pool.fetchval("SELECT jira_project FROM domain_configs WHERE name = 'payments'") == "PAY"


async def test_ping_reports_an_unreachable_database() -> None:
    async with open_pool("postgresql://pm@127.0.0.1:1/none") as pool:
        with pytest.raises(Unavailable, match="database unreachable"):
            await ping(pool, timeout=2)
