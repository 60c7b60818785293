"""The asyncpg connection pool every service shares with its repositories."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from pm_errors import Unavailable


async def _init_connection(conn: asyncpg.Connection) -> None:
    for pg_type in ("json", "jsonb"):
        await conn.set_type_codec(pg_type, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A release hook that leaves the session as it is."""


@asynccontextmanager
async def open_pool(
    dsn: str,
    *,
    min_size: int = 0,
    max_size: int = 10,
    command_timeout: float = 30.0,
    application_name: str = "production-master",
    reset_on_release: bool = True,
) -> AsyncIterator[asyncpg.Pool]:
    """A pool whose connections open on first use, so start-up does not need the database yet.

    JSON and JSONB columns read and write Python values. `reset_on_release=False` skips the
    session reset (advisory locks, LISTEN, SET) asyncpg runs on every release, one round trip
    per request; only for callers that never leave session state behind.
    """
    pool = asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=command_timeout,
        init=_init_connection,
        server_settings={"application_name": application_name},
        **({} if reset_on_release else {"reset": _keep_session}),
    )
    await pool
    try:
        yield pool
    finally:
        await pool.close()


async def ping(pool: asyncpg.Pool, timeout: float = 2.0) -> None:
    """Raise Unavailable unless the database answers `SELECT 1` within `timeout` seconds."""
    try:
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise Unavailable(f"database unreachable: {type(exc).__name__}: {exc}") from exc
