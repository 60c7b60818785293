"""The audit record of tool calls (mcp_tool_calls): one row per call, under the id reports cite."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

_INSERT = """
INSERT INTO mcp_tool_calls (id, investigation_id, step_id, phase, agent_role, agent_name, server_name, tool_name,
                            capability, arguments, result_digest, result_excerpt, result_bytes, truncated, status,
                            error_message, attempts, duration_ms, idempotency_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::jsonb, $11, $12, $13, $14, $15, $16, $17, $18, $19)
ON CONFLICT (idempotency_key) DO NOTHING
RETURNING id
"""

_COLUMNS = """id, investigation_id, step_id, phase, agent_role, agent_name, server_name, tool_name, capability,
arguments, result_digest, result_excerpt, result_bytes, truncated, status, error_message, attempts, duration_ms,
idempotency_key, created_at"""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One row of mcp_tool_calls; `arguments` and `result_excerpt` are already redacted."""

    id: uuid.UUID
    investigation_id: uuid.UUID | None
    step_id: uuid.UUID | None
    phase: str
    agent_role: str
    agent_name: str
    server_name: str
    tool_name: str
    capability: str | None
    arguments: dict[str, Any]
    result_digest: str | None
    result_excerpt: str | None
    result_bytes: int
    truncated: bool
    status: str
    error_message: str | None
    attempts: int
    duration_ms: int
    idempotency_key: str | None


def _record(row: asyncpg.Record) -> CallRecord:
    values = dict(row)
    values.pop("created_at", None)
    for text in ("phase", "agent_role", "agent_name"):
        values[text] = values[text] or ""
    return CallRecord(**values)


class CallStore:
    """Reads and writes tool-call records."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def investigation_status(self, investigation_id: uuid.UUID) -> str | None:
        """The investigation's status, or None when it does not exist."""
        status = await self._pool.fetchval("SELECT status FROM investigations WHERE id = $1", investigation_id)
        return str(status) if status is not None else None

    async def by_idempotency_key(self, key: str) -> CallRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM mcp_tool_calls WHERE idempotency_key = $1", key)
        return _record(row) if row else None

    async def get(self, call_id: uuid.UUID) -> CallRecord | None:
        row = await self._pool.fetchrow(f"SELECT {_COLUMNS} FROM mcp_tool_calls WHERE id = $1", call_id)
        return _record(row) if row else None

    async def insert(self, record: CallRecord) -> CallRecord:
        """Store `record`; when its idempotency key is already taken, the first record wins and is returned."""
        inserted = await self._pool.fetchval(
            _INSERT,
            record.id,
            record.investigation_id,
            record.step_id,
            record.phase or None,
            record.agent_role or None,
            record.agent_name or None,
            record.server_name,
            record.tool_name,
            record.capability,
            record.arguments,
            record.result_digest,
            record.result_excerpt,
            record.result_bytes,
            record.truncated,
            record.status,
            record.error_message,
            record.attempts,
            record.duration_ms,
            record.idempotency_key,
        )
        if inserted is None and record.idempotency_key:
            first = await self.by_idempotency_key(record.idempotency_key)
            if first is not None:
                return first
        return record
