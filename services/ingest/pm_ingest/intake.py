"""Intake use cases: API submissions and batches. Transport-free; grpc_api adapts them.

Every decision is audited: accepted writes in the same statement as the write, rejections
through the batched AuditLog. A submission answers 202 as soon as its investigation and outbox
row are committed; the relay publishes it to the stream after commit.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from pm.common.v1 import types_pb2
from pm_auth import Identity
from pm_errors import Conflict, InvalidArgument, PmError
from pm_ingest.store import ActiveConflict, Audit, AuditLog, IntakeStore, NewInvestigation, StoredResponse
from pm_intake import new_investigation

PRIORITY_ALERT = types_pb2.PRIORITY_ALERT
PRIORITY_TICKET = types_pb2.PRIORITY_TICKET
PRIORITY_BATCH = types_pb2.PRIORITY_BATCH

QUEUED_MESSAGE = "Investigation has been queued for processing."
ACTIVE_EXISTS = "Active investigation already exists for this ticket"


def status_url(investigation_id: uuid.UUID) -> str:
    """Where a client polls the investigation."""
    return f"/api/v1/investigations/{investigation_id}"


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request and from where (for audit rows and requested_by)."""

    identity: str
    auth_method: str
    request_id: str | None = None
    remote_addr: str | None = None

    @classmethod
    def of(cls, identity: Identity, request_id: str | None, remote_addr: str | None) -> Caller:
        """An authenticated API caller."""
        return cls(identity.subject, identity.method, request_id, remote_addr)

    def audit(self, source: str, action: str, outcome: str, **fields: Any) -> Audit:
        """An audit row for this caller."""
        return Audit(
            identity=self.identity,
            auth_method=self.auth_method,
            source=source,
            action=action,
            outcome=outcome,
            request_id=self.request_id,
            remote_addr=self.remote_addr,
            **fields,
        )


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP status and JSON body, as the REST client sees it."""

    status: int
    body: Mapping[str, Any]


def request_digest(data: bytes) -> str:
    """The digest that ties an idempotency key to one request body."""
    return hashlib.sha256(data).hexdigest()


def check_callback_host(url: str | None, allowed: Sequence[str]) -> None:
    """Refuse callback URLs outside the allow-list (exact host, or '.example.com' for subdomains)."""
    if url is None or not allowed:
        return
    host = (urlsplit(url).hostname or "").lower()
    for entry in allowed:
        if host == entry or (entry.startswith(".") and (host.endswith(entry) or host == entry[1:])):
            return
    raise InvalidArgument(
        "Validation failed",
        details={
            "details": [
                {"path": ["callback_url"], "message": "callback_url host is not allowed", "code": "host_not_allowed"}
            ]
        },
    )


class Submissions:
    """POST /api/v1/investigate and /investigate/batch."""

    def __init__(self, store: IntakeStore, audit: AuditLog, *, delivery_window_seconds: int) -> None:
        self._store = store
        self._audit = audit
        self._delivery_window = delivery_window_seconds

    def rejected(self, caller: Caller, source: str, action: str, err: PmError) -> None:
        """Audit a refused request."""
        self._audit.record(
            caller.audit(source, action, "rejected", reason=err.message[:300], details=dict(err.details)),
            datetime.now(UTC),
        )

    async def _with_delivery(
        self,
        key: str | None,
        source: str,
        digest: str,
        invs: Sequence[NewInvestigation],
        audit: Audit,
        accepted: Reply,
    ) -> Reply:
        if key is None and len(invs) == 1:
            async with self._store.autocommit() as intake:
                await intake.create(invs, audit)
            return accepted
        async with self._store.transaction() as intake:
            if key is not None:
                replay = await intake.replayed(key, source, digest, self._delivery_window)
                if replay is not None:
                    if replay.request_sha256 != digest:
                        raise Conflict(
                            "Idempotency key was already used for a different request",
                            details={"idempotency_key": key.rpartition(":")[2]},
                        )
                    return Reply(replay.status, replay.body)
            await intake.create(invs, audit)
            if key is not None:
                await intake.remember(key, StoredResponse(digest, accepted.status, accepted.body), invs[0].id)
        return accepted

    async def investigate(
        self,
        caller: Caller,
        *,
        ticket_id: str,
        domain: str | None,
        mode: str,
        callback_url: str | None,
        idempotency_key: str | None,
        digest: str,
        budget: Mapping[str, float] | None = None,
    ) -> Reply:
        """Queue one investigation: 202, or 409 when the ticket already has an active one."""
        inv = new_investigation(
            ticket_id=ticket_id,
            domain=domain,
            mode=mode,
            trigger_source="api",
            priority=PRIORITY_TICKET,
            requested_by=caller.identity,
            callback_url=callback_url,
            budget=budget,
        )
        accepted = Reply(
            202,
            {
                "investigation_id": str(inv.id),
                "status": "queued",
                "message": QUEUED_MESSAGE,
                "status_url": status_url(inv.id),
            },
        )
        key = f"api:{caller.identity}:{idempotency_key}" if idempotency_key else None
        audit = caller.audit("api", "investigate", "accepted", details={"ticket_id": ticket_id, "mode": mode})
        try:
            return await self._with_delivery(key, "api", digest, [inv], audit, accepted)
        except ActiveConflict as exc:
            active = exc.active[0] if exc.active else None
            raise Conflict(
                ACTIVE_EXISTS,
                details={
                    "investigation_id": str(active.investigation_id) if active else None,
                    "status": active.status if active else None,
                },
            ) from None

    async def batch(
        self,
        caller: Caller,
        *,
        ticket_ids: Sequence[str],
        domain: str | None,
        mode: str,
        callback_url: str | None,
        idempotency_key: str | None,
        digest: str,
        budget: Mapping[str, float] | None = None,
    ) -> Reply:
        """Queue every ticket or none: 202, or 409 naming the tickets that are already active."""
        batch_id = uuid.uuid4()
        invs = [
            new_investigation(
                ticket_id=ticket,
                domain=domain,
                mode=mode,
                trigger_source="batch",
                priority=PRIORITY_BATCH,
                requested_by=caller.identity,
                callback_url=callback_url,
                batch_id=batch_id,
                budget=budget,
            )
            for ticket in ticket_ids
        ]
        accepted = Reply(
            202, {"batch_id": str(batch_id), "investigation_ids": [str(i.id) for i in invs], "status": "queued"}
        )
        key = f"api:{caller.identity}:{idempotency_key}" if idempotency_key else None
        audit = caller.audit(
            "api", "investigate_batch", "accepted", details={"batch_id": str(batch_id), "tickets": len(invs)}
        )
        try:
            return await self._with_delivery(key, "api", digest, invs, audit, accepted)
        except ActiveConflict as exc:
            raise Conflict(
                "Active investigations already exist for some tickets; nothing was queued",
                details={
                    "active": [
                        {"ticket_id": a.ticket_id, "investigation_id": str(a.investigation_id), "status": a.status}
                        for a in exc.active
                    ]
                },
            ) from None
