"""New investigations with their outbox and audit rows, written by one statement.

Dedup is enforced by constraints, never by read-then-write: the partial unique index
`investigations_one_active_per_ticket` (one queued or running investigation per ticket) and the
primary key of `intake_dedup` (alert fingerprints inside their window). An investigation, its
outbox row and its audit row exist together or not at all.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_streams import STREAM_INVESTIGATIONS, STREAM_INVESTIGATIONS_URGENT
from pm_telemetry import trace_context

MESSAGE_TYPE_REQUESTED = "pm.events.v1.InvestigationRequested"
MAX_ITERATIONS = {"fast": 1, "balanced": 3, "deep": 5}
MODES = {"fast": types_pb2.MODE_FAST, "balanced": types_pb2.MODE_BALANCED, "deep": types_pb2.MODE_DEEP}
TRIGGERS = {
    "api": types_pb2.TRIGGER_SOURCE_API,
    "batch": types_pb2.TRIGGER_SOURCE_BATCH,
    "jira_webhook": types_pb2.TRIGGER_SOURCE_JIRA_WEBHOOK,
    "slack_command": types_pb2.TRIGGER_SOURCE_SLACK_COMMAND,
    "pagerduty": types_pb2.TRIGGER_SOURCE_PAGERDUTY,
    "grafana_alert": types_pb2.TRIGGER_SOURCE_GRAFANA_ALERT,
    "health_check": types_pb2.TRIGGER_SOURCE_HEALTH_CHECK,
    "post_deploy": types_pb2.TRIGGER_SOURCE_POST_DEPLOY,
}


@dataclass(frozen=True, slots=True)
class NewInvestigation:
    """An investigation to create, with the stream event that announces it."""

    id: uuid.UUID
    ticket_id: str
    domain: str | None
    mode: str
    trigger_source: str
    priority: int
    requested_by: str
    stream: str
    event_id: uuid.UUID
    event: bytes
    callback_url: str | None = None
    batch_id: uuid.UUID | None = None
    trigger_context: Mapping[str, object] = field(default_factory=dict)
    # The request's own limits (wall_seconds, max_tool_calls, max_cost_usd); the orchestrator's
    # settings cap them.
    budget: Mapping[str, float] = field(default_factory=dict)
    # The W3C trace context of the request (investigations.trace_context): later work continues it.
    trace_context: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Audit:
    """One audit_log row: who did what, from where, with which outcome."""

    identity: str
    auth_method: str
    source: str
    action: str
    outcome: str
    reason: str | None = None
    resource_type: str | None = None
    resource_id: str | None = None
    request_id: str | None = None
    remote_addr: str | None = None
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Active:
    """An investigation that is already queued or running for a ticket."""

    investigation_id: uuid.UUID
    ticket_id: str
    status: str


class ActiveConflict(Exception):
    """Some tickets already have an active investigation; nothing was written."""

    def __init__(self, active: Sequence[Active]) -> None:
        super().__init__(f"{len(active)} ticket(s) already active")
        self.active = list(active)


class AlertDuplicate(Exception):
    """The alert's fingerprint was seen inside its window; nothing was written."""

    def __init__(self, investigation_id: uuid.UUID | None) -> None:
        super().__init__("duplicate alert")
        self.investigation_id = investigation_id


def _now_ts() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def new_investigation(
    *,
    ticket_id: str,
    domain: str | None,
    mode: str,
    trigger_source: str,
    priority: int,
    requested_by: str,
    callback_url: str | None = None,
    batch_id: uuid.UUID | None = None,
    trigger_context: Mapping[str, object] | None = None,
    event_context: events_pb2.InvestigationRequested | None = None,
    budget: Mapping[str, float] | None = None,
) -> NewInvestigation:
    """A NewInvestigation with its InvestigationRequested event (carrying the current trace context)."""
    investigation_id = uuid.uuid4()
    event_id = uuid.uuid4()
    carrier = trace_context()
    event = events_pb2.InvestigationRequested()
    if event_context is not None:
        event.CopyFrom(event_context)
    event.event_id = str(event_id)
    event.investigation_id = str(investigation_id)
    event.ticket_id = ticket_id
    event.domain = domain or ""
    event.mode = MODES[mode]
    event.trigger_source = TRIGGERS[trigger_source]
    event.priority = priority  # type: ignore[assignment]
    event.callback_url = callback_url or ""
    event.requested_by = requested_by
    event.requested_at.CopyFrom(_now_ts())
    event.trace_context.update(carrier)
    return NewInvestigation(
        id=investigation_id,
        ticket_id=ticket_id,
        domain=domain,
        mode=mode,
        trigger_source=trigger_source,
        priority=priority,
        requested_by=requested_by,
        stream=STREAM_INVESTIGATIONS_URGENT if priority <= types_pb2.PRIORITY_HEALTH_CHECK else STREAM_INVESTIGATIONS,
        event_id=event_id,
        event=event.SerializeToString(),
        callback_url=callback_url,
        batch_id=batch_id,
        trigger_context=dict(trigger_context or {}),
        budget=dict(budget or {}),
        trace_context=carrier,
    )


_INSERT_INVESTIGATIONS = """
WITH new AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::smallint[], $7::text[],
                         $8::text[], $9::uuid[], $10::text[], $11::integer[], $12::uuid[], $13::text[], $14::bytea[],
                         $15::text[], $24::text[])
        AS t(id, ticket_id, domain, mode, trigger_source, priority, requested_by, callback_url, batch_id,
             trigger_context, max_iterations, event_id, stream, payload, budget, trace_context)
), inv AS (
    INSERT INTO investigations (id, ticket_id, domain, mode, trigger_source, priority, requested_by, callback_url,
                                batch_id, trigger_context, max_iterations, budget, trace_context)
    SELECT id, ticket_id, domain, mode, trigger_source, priority, requested_by, callback_url, batch_id,
           trigger_context::jsonb, max_iterations, budget::jsonb, trace_context::jsonb
    FROM new
    ON CONFLICT (ticket_id) WHERE status IN ('queued', 'running') DO NOTHING
    RETURNING id
), ob AS (
    INSERT INTO outbox (id, stream, aggregate_id, message_type, payload, priority)
    SELECT new.event_id, new.stream, new.id, $16, new.payload, new.priority FROM new JOIN inv USING (id)
), au AS (
    INSERT INTO audit_log (identity, auth_method, source, action, resource_type, resource_id, outcome, reason,
                           request_id, remote_addr, details)
    SELECT $17, $18, $19, $20, 'investigation', inv.id::text, 'accepted', NULL, $21, $22, $23::jsonb FROM inv
)
SELECT id FROM inv
"""

# The same, for one alert: the fingerprint is claimed in the same statement. An alert seen inside
# its window inserts nothing (claim is empty). A claimed alert whose ticket is already active
# inserts no investigation, so the claim's foreign key fails at the end of the statement and
# everything is undone: the caller then reports the active investigation.
_INSERT_ALERT = _INSERT_INVESTIGATIONS.replace(
    "WITH new AS (\n    SELECT * FROM unnest(",
    """WITH claim AS (
    INSERT INTO intake_dedup (dedup_key, kind, source, investigation_id, expires_at)
    VALUES ($25, 'alert_fingerprint', $26, ($1::uuid[])[1], now() + make_interval(secs => $27))
    ON CONFLICT (dedup_key) DO UPDATE
        SET kind = EXCLUDED.kind, source = EXCLUDED.source, investigation_id = EXCLUDED.investigation_id,
            response = NULL, expires_at = EXCLUDED.expires_at, created_at = now()
        WHERE intake_dedup.expires_at <= now()
    RETURNING dedup_key
), new AS (
    SELECT * FROM unnest(""",
).replace(
    "event_id, stream, payload, budget, trace_context)\n)",
    "event_id, stream, payload, budget, trace_context)\n    WHERE EXISTS (SELECT 1 FROM claim)\n)",
)

_ACTIVE = """
SELECT id, ticket_id, status FROM investigations
WHERE ticket_id = ANY($1::text[]) AND status IN ('queued', 'running')
"""


def jsonable(value: Mapping[str, object]) -> dict[str, Any]:
    """A JSON object for a jsonb parameter (the pool's codec encodes it); odd values become strings."""
    result: dict[str, Any] = json.loads(json.dumps(dict(value), default=str))
    return result


def audit_arguments(audit: Audit) -> tuple[object, ...]:
    """The audit columns of an accepted write, in the order the statements bind them: identity,
    auth_method, source, action, request_id, remote_addr, details."""
    return (
        audit.identity,
        audit.auth_method,
        audit.source,
        audit.action,
        audit.request_id,
        audit.remote_addr,
        jsonable(audit.details),
    )


def _insert_args(invs: Sequence[NewInvestigation], audit: Audit) -> list[Any]:
    return [
        [i.id for i in invs],
        [i.ticket_id for i in invs],
        [i.domain for i in invs],
        [i.mode for i in invs],
        [i.trigger_source for i in invs],
        [i.priority for i in invs],
        [i.requested_by for i in invs],
        [i.callback_url for i in invs],
        [i.batch_id for i in invs],
        [json.dumps(i.trigger_context, separators=(",", ":"), default=str) for i in invs],
        [MAX_ITERATIONS[i.mode] for i in invs],
        [i.event_id for i in invs],
        [i.stream for i in invs],
        [i.event for i in invs],
        [json.dumps(dict(i.budget), separators=(",", ":")) for i in invs],
        MESSAGE_TYPE_REQUESTED,
        *audit_arguments(audit),
        [json.dumps(dict(i.trace_context), separators=(",", ":")) for i in invs],
    ]


async def create_investigations(conn: asyncpg.Connection, invs: Sequence[NewInvestigation], audit: Audit) -> None:
    """Insert investigations with their outbox and audit rows; ActiveConflict when any ticket is active.

    With several investigations the caller must hold a transaction: on conflict its rollback
    undoes the rows already created.
    """
    created_ids: set[uuid.UUID] = set()
    for _ in range(3):
        created = await conn.fetch(_INSERT_INVESTIGATIONS, *_insert_args(invs, audit))
        created_ids = {r["id"] for r in created}
        if len(created_ids) == len(invs):
            return
        rows = await conn.fetch(_ACTIVE, [i.ticket_id for i in invs])
        active = [Active(r["id"], r["ticket_id"], r["status"]) for r in rows if r["id"] not in created_ids]
        if active or len(invs) > 1:
            raise ActiveConflict(active)
        # The blocking investigation ended between the insert and the lookup; nothing was
        # written, so inserting again is safe.
    raise ActiveConflict([])


async def create_alert(
    conn: asyncpg.Connection, inv: NewInvestigation, audit: Audit, key: str, source: str, window_seconds: float
) -> None:
    """Create an alert's investigation unless its fingerprint `key` was seen inside the window.

    One statement: AlertDuplicate when the fingerprint is taken, ActiveConflict when the ticket
    already has an active investigation; nothing is written in either case. Inside the caller's
    transaction the statement runs in a savepoint, so a conflict leaves that transaction usable.
    """
    args = (*_insert_args([inv], audit), key, source, float(window_seconds))
    try:
        if conn.is_in_transaction():
            async with conn.transaction():
                created = await conn.fetch(_INSERT_ALERT, *args)
        else:
            created = await conn.fetch(_INSERT_ALERT, *args)
    except asyncpg.ForeignKeyViolationError:
        rows = await conn.fetch(_ACTIVE, [inv.ticket_id])
        raise ActiveConflict([Active(r["id"], r["ticket_id"], r["status"]) for r in rows]) from None
    if not created:
        existing = await conn.fetchval("SELECT investigation_id FROM intake_dedup WHERE dedup_key = $1", key)
        raise AlertDuplicate(existing)
