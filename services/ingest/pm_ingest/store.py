"""PostgreSQL side of intake: investigations with their outbox rows, dedup claims, deploy events,
domain lookups and the audit log.

Dedup is enforced by constraints, never by read-then-write: the partial unique index
`investigations_one_active_per_ticket` (one queued or running investigation per ticket) and the
primary key of `intake_dedup` (alert fingerprints and sender delivery ids inside their window).
An investigation, its outbox row and its audit row are written by one statement (pm_intake's,
which the orchestrator's health and post-deploy checks share), so they exist together or not at
all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from pm_intake import (
    Active,
    ActiveConflict,
    AlertDuplicate,
    Audit,
    NewInvestigation,
    audit_arguments,
    create_alert,
    create_investigations,
    jsonable,
)

log = logging.getLogger(__name__)

# Re-exported for ingest's modules: the investigation values live in pm_intake.
__all__ = [
    "Active",
    "ActiveConflict",
    "AlertDuplicate",
    "Audit",
    "AuditLog",
    "DomainResolver",
    "Intake",
    "IntakeStore",
    "NewInvestigation",
    "StoredResponse",
]

MESSAGE_TYPE_DEPLOY = "pm.events.v1.DeployRecorded"

# How long a stopping process keeps trying to write the rejections still queued.
FINAL_FLUSH_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The answer given to a delivery, replayed to the sender's retries."""

    request_sha256: str
    status: int
    body: Mapping[str, Any]


_CLAIM = """
INSERT INTO intake_dedup (dedup_key, kind, source, investigation_id, response, expires_at)
VALUES ($1, $2, $3, $4, $5::jsonb, now() + make_interval(secs => $6))
ON CONFLICT (dedup_key) DO UPDATE
    SET kind = EXCLUDED.kind, source = EXCLUDED.source, investigation_id = EXCLUDED.investigation_id,
        response = EXCLUDED.response, expires_at = EXCLUDED.expires_at, created_at = now()
    WHERE intake_dedup.expires_at <= now()
       -- A delivery claimed by a process that died before answering is taken over after a minute.
       OR (intake_dedup.kind = 'delivery' AND NOT coalesce(intake_dedup.response ? 'status', false)
           AND intake_dedup.created_at < now() - interval '60 seconds')
RETURNING dedup_key
"""


class Intake:
    """One intake decision on one connection; every write of it commits or rolls back together."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def replayed(self, key: str, source: str, request_sha256: str, window_seconds: int) -> StoredResponse | None:
        """Claim a sender's delivery id; the first answer when it was already claimed."""
        pending = {"request_sha256": request_sha256}
        claimed = await self._conn.fetchval(_CLAIM, key, "delivery", source, None, pending, float(window_seconds))
        if claimed is not None:
            return None
        stored = await self._conn.fetchval("SELECT response FROM intake_dedup WHERE dedup_key = $1", key)
        data = stored if isinstance(stored, dict) else {}
        return StoredResponse(
            request_sha256=str(data.get("request_sha256", "")),
            status=int(data.get("status", 409)),
            body=data.get("body") or {"error": "Delivery is being processed"},
        )

    async def remember(self, key: str, response: StoredResponse, investigation_id: uuid.UUID | None) -> None:
        """Store the answer to a claimed delivery id for its retries."""
        value = {"request_sha256": response.request_sha256, "status": response.status, "body": dict(response.body)}
        await self._conn.execute(
            "UPDATE intake_dedup SET response = $2::jsonb, investigation_id = $3 WHERE dedup_key = $1",
            key,
            value,
            investigation_id,
        )

    async def forget(self, key: str) -> None:
        """Release a delivery id whose request was refused, so its retry is handled afresh."""
        await self._conn.execute("DELETE FROM intake_dedup WHERE dedup_key = $1 AND kind = 'delivery'", key)

    async def create(self, invs: Sequence[NewInvestigation], audit: Audit) -> None:
        """Insert investigations with their outbox and audit rows; ActiveConflict when any ticket is active."""
        await create_investigations(self._conn, invs, audit)

    async def create_alert(
        self, inv: NewInvestigation, audit: Audit, key: str, source: str, window_seconds: int
    ) -> None:
        """Create an alert's investigation unless its fingerprint was seen inside the window
        (AlertDuplicate), or ActiveConflict when its ticket is active; nothing is written then."""
        await create_alert(self._conn, inv, audit, key, source, window_seconds)

    async def record_deploy(
        self, deploy: Mapping[str, Any], audit: Audit, event: bytes, event_id: uuid.UUID, stream: str
    ) -> bool:
        """Insert a deploy event (and its outbox and audit rows); False when its delivery id was seen."""
        deploy_id = await self._conn.fetchval(
            """
            WITH d AS (
                INSERT INTO deploy_events (id, service, version, environment, deployer, deployed_at, commit_sha,
                                           pipeline_url, commit_url, domain, metadata, delivery_id, check_due_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12, $13)
                ON CONFLICT (delivery_id) DO NOTHING
                RETURNING id
            ), ob AS (
                INSERT INTO outbox (id, stream, aggregate_id, message_type, payload, priority)
                SELECT $14, $15, d.id, $16, $17, 2 FROM d
            ), au AS (
                INSERT INTO audit_log (identity, auth_method, source, action, resource_type, resource_id, outcome,
                                       request_id, remote_addr, details)
                SELECT $18, $19, $20, $21, 'deploy_event', d.id::text, 'accepted', $22, $23, $24::jsonb FROM d
            )
            SELECT id FROM d
            """,
            deploy["id"],
            deploy["service"],
            deploy["version"],
            deploy["environment"],
            deploy["deployer"],
            deploy["deployed_at"],
            deploy.get("commit_sha"),
            deploy.get("pipeline_url"),
            deploy.get("commit_url"),
            deploy.get("domain"),
            jsonable(deploy.get("metadata") or {}),
            deploy.get("delivery_id"),
            deploy["check_due_at"],
            event_id,
            stream,
            MESSAGE_TYPE_DEPLOY,
            event,
            *audit_arguments(audit),
        )
        return deploy_id is not None


class IntakeStore:
    """Opens intake decisions on the pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Intake]:
        """An intake decision inside one transaction."""
        async with self.pool.acquire() as conn, conn.transaction():
            yield Intake(conn)

    @contextlib.asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Intake]:
        """An intake decision of single, self-contained statements (no explicit transaction)."""
        async with self.pool.acquire() as conn:
            yield Intake(conn)


class DomainResolver:
    """Domain configs by Jira project and by service name, cached for a few seconds."""

    def __init__(self, pool: asyncpg.Pool, ttl_seconds: float = 10.0) -> None:
        self._pool = pool
        self._ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, str | None]] = {}

    async def _cached(self, kind: str, key: str, query: str) -> str | None:
        now = time.monotonic()
        hit = self._cache.get((kind, key))
        if hit is not None and hit[0] > now:
            return hit[1]
        name = await self._pool.fetchval(query, key)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(kind, key)] = (now + self._ttl, name)
        return str(name) if name is not None else None

    async def for_jira_project(self, project: str) -> str | None:
        """The domain whose config names this Jira project."""
        return await self._cached(
            "jira",
            project.upper(),
            "SELECT name FROM domain_configs WHERE jira_project = $1 ORDER BY created_at LIMIT 1",
        )

    async def for_service(self, service: str) -> str | None:
        """The domain that lists this service (or PagerDuty service) in its config."""
        return await self._cached(
            "service",
            service,
            """
            SELECT name FROM domain_configs
            WHERE services @> ARRAY[$1::text]
               OR settings -> 'pagerduty_services' ? $1
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(
                       CASE WHEN jsonb_typeof(settings -> 'primary_services') = 'array'
                            THEN settings -> 'primary_services' ELSE '[]'::jsonb END) AS s
                   WHERE s ->> 'name' = $1)
            ORDER BY created_at LIMIT 1
            """,
        )


class AuditLog:
    """Audit rows of rejected requests, written in batches off the request path.

    Accepted writes are audited in the same statement as the write itself; rejections have no
    write to ride on, so they are queued here and flushed every `interval` seconds.
    """

    def __init__(self, pool: asyncpg.Pool, *, interval: float = 0.2, capacity: int = 50_000) -> None:
        self._pool = pool
        self._interval = interval
        self._queue: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue(maxsize=capacity)
        self.dropped = 0

    def record(self, entry: Audit, occurred_at: datetime) -> None:
        """Queue a row; counts it as dropped when the queue is full (the database is down for long)."""
        row = (
            occurred_at,
            entry.identity,
            entry.auth_method,
            entry.source,
            entry.action,
            entry.resource_type,
            entry.resource_id,
            entry.outcome,
            entry.reason,
            entry.request_id,
            entry.remote_addr,
            jsonable(entry.details),
        )
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1

    async def flush(self) -> int:
        """Write everything queued; returns the number of rows written."""
        rows: list[tuple[Any, ...]] = []
        while not self._queue.empty() and len(rows) < 5000:
            rows.append(self._queue.get_nowait())
        if not rows:
            return 0
        try:
            await self._pool.executemany(
                """
                INSERT INTO audit_log (occurred_at, identity, auth_method, source, action, resource_type, resource_id,
                                       outcome, reason, request_id, remote_addr, details)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)
                """,
                rows,
            )
        except (asyncpg.PostgresError, OSError) as exc:
            log.warning("audit rows not written yet (%s); retrying", type(exc).__name__)
            for row in rows:
                with contextlib.suppress(asyncio.QueueFull):
                    self._queue.put_nowait(row)
            return 0
        return len(rows)

    async def run(self) -> None:
        """Flush periodically until cancelled, then once more (for at most FINAL_FLUSH_SECONDS)."""
        try:
            while True:
                await asyncio.sleep(self._interval)
                await self.flush()
        finally:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FINAL_FLUSH_SECONDS):
                    await self.flush()
