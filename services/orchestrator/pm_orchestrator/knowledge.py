"""Knowledge entries over the predecessor's /api/v1/knowledge paths: list, get, export (active
entries of a service), verify and archive.

Lifecycle: an entry starts `provisional` (one submitter) or `active` (corroborated, or applied
from an approved recommendation). Verifying an entry records that a person confirmed it: it
refreshes last_verified_at and makes a provisional entry active. Archiving is final; archived
entries are neither verified nor exported. The scheduler's lifecycle job archives stale
provisional entries and downgrades active ones nobody verified for a long time.

`known_issues` is what the agents get of it: the active entries of an investigation's services
go to its HYPOTHESIZE and RECOMMEND steps as context.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import asyncpg
from google.protobuf import struct_pb2

from pm.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from pm_auth import CATEGORY_QUERY
from pm_errors import Conflict, NotFound
from pm_grpc.bodies import problem, validation_failed
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, audit, fetch_page, paging, parse_id

CATEGORIES = ("known_issue", "pattern", "memory_update")
CONFIDENCES = ("provisional", "active", "archived")


def entry_to_proto(row: Any) -> knowledge_pb2.KnowledgeEntry:
    message = knowledge_pb2.KnowledgeEntry(
        id=str(row["id"]),
        service=row["service"],
        category=row["category"],
        title=row["title"],
        confidence=row["confidence"],
        source=row["source"],
        source_recommendation_id=str(row["source_recommendation_id"] or ""),
        source_feedback_ids=[str(i) for i in row["source_feedback_ids"]],
    )
    content = struct_pb2.Struct()
    content.update(row["content"] or {})
    message.content.CopyFrom(content)
    message.created_at.FromDatetime(row["created_at"])
    message.last_verified_at.FromDatetime(row["last_verified_at"])
    if row["archived_at"] is not None:
        message.archived_at.FromDatetime(row["archived_at"])
    return message


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> list[dict[str, object]]:
    if value and value not in allowed:
        return [problem([name], f"must be one of {', '.join(allowed)}", "invalid_enum")]
    return []


class KnowledgeServicer(ApiBase, knowledge_pb2_grpc.KnowledgeServiceServicer):
    """pm.knowledge.v1.KnowledgeService."""

    async def ListKnowledge(
        self, request: knowledge_pb2.ListKnowledgeRequest, context: Context
    ) -> knowledge_pb2.ListKnowledgeResponse:
        await self._caller(context)
        page, limit = paging(request.page, request.limit)
        problems = _one_of("category", request.category, CATEGORIES) + _one_of(
            "confidence", request.confidence, CONFIDENCES
        )
        if problems:
            raise validation_failed(problems)
        filters = {"service": request.service, "category": request.category, "confidence": request.confidence}
        rows, pages = await fetch_page(self._pool, "knowledge_entries", filters, page, limit)
        return knowledge_pb2.ListKnowledgeResponse(data=[entry_to_proto(r) for r in rows], pagination=pages)

    async def ExportKnowledge(
        self, request: knowledge_pb2.ExportKnowledgeRequest, context: Context
    ) -> knowledge_pb2.ExportKnowledgeResponse:
        await self._caller(context)
        rows = await self._pool.fetch(
            "SELECT * FROM knowledge_entries WHERE service = $1 AND confidence = 'active'"
            " ORDER BY category, created_at DESC, id",
            request.service,
        )
        return knowledge_pb2.ExportKnowledgeResponse(
            service=request.service, entries=[entry_to_proto(r) for r in rows], count=len(rows)
        )

    async def GetKnowledge(
        self, request: knowledge_pb2.GetKnowledgeRequest, context: Context
    ) -> knowledge_pb2.KnowledgeEntry:
        await self._caller(context)
        row = await self._pool.fetchrow(
            "SELECT * FROM knowledge_entries WHERE id = $1", parse_id(request.id, "knowledge entry")
        )
        if row is None:
            raise NotFound("Knowledge entry not found", details={"id": request.id})
        return entry_to_proto(row)

    async def VerifyKnowledge(
        self, request: knowledge_pb2.VerifyKnowledgeRequest, context: Context
    ) -> knowledge_pb2.KnowledgeEntry:
        return await self._change(request.id, context, "verify")

    async def ArchiveKnowledge(
        self, request: knowledge_pb2.ArchiveKnowledgeRequest, context: Context
    ) -> knowledge_pb2.KnowledgeEntry:
        return await self._change(request.id, context, "archive")

    async def _change(self, raw_id: str, context: Context, action: str) -> knowledge_pb2.KnowledgeEntry:
        identity = await self._identity(context, CATEGORY_QUERY)
        entry_id = parse_id(raw_id, "knowledge entry")
        async with self._pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow("SELECT confidence FROM knowledge_entries WHERE id = $1 FOR UPDATE", entry_id)
            if before is None:
                raise NotFound("Knowledge entry not found", details={"id": raw_id})
            if action == "verify":
                if before["confidence"] == "archived":
                    raise Conflict("Archived entries cannot be verified", details={"current_confidence": "archived"})
                row = await conn.fetchrow(
                    "UPDATE knowledge_entries SET last_verified_at = now(), updated_at = now(),"
                    " confidence = 'active' WHERE id = $1 RETURNING *",
                    entry_id,
                )
            else:
                # Archiving twice keeps the first archived_at.
                row = await conn.fetchrow(
                    "UPDATE knowledge_entries SET confidence = 'archived', updated_at = now(),"
                    " archived_at = coalesce(archived_at, now()) WHERE id = $1 RETURNING *",
                    entry_id,
                )
            await audit(
                conn, identity, context, f"knowledge.{action}", "knowledge_entry", entry_id,
                {"confidence_before": before["confidence"]},
            )  # fmt: skip
        return entry_to_proto(row)


# Known issues a HYPOTHESIZE or RECOMMEND step gets at most.
CONTEXT_LIMIT = 10


async def known_issues(conn: asyncpg.Connection, investigation: Mapping[str, Any]) -> dict[str, Any]:
    """The active knowledge entries of the investigation's services: its domain's name, the
    domain config's services and primary services. {services, entries: [...]} (newest verified
    first), or no entries and the reason when the investigation has no domain."""
    domain = investigation["domain"]
    if not domain:
        return {"services": [], "entries": [], "reason": "the investigation has no domain"}
    config = await conn.fetchrow("SELECT services, settings FROM domain_configs WHERE name = $1", domain)
    services = [domain]
    if config is not None:
        primary = (config["settings"] or {}).get("primary_services") or []
        named = [*config["services"], *(p.get("name") for p in primary if isinstance(p, dict))]
        services += [s for s in named if isinstance(s, str) and s and s not in services]
    rows = await conn.fetch(
        "SELECT id, service, category, title, content, last_verified_at FROM knowledge_entries"
        " WHERE confidence = 'active' AND service = ANY($1::text[])"
        " ORDER BY last_verified_at DESC, id LIMIT $2",
        services,
        CONTEXT_LIMIT,
    )
    entries = [
        {
            "id": str(r["id"]),
            "service": r["service"],
            "category": r["category"],
            "title": r["title"],
            # What the entry says: a corrected root cause, or an applied recommendation's change.
            "says": str(
                (r["content"] or {}).get("corrected_root_cause")
                or (r["content"] or {}).get("proposed_value")
                or r["title"]
            )[:1000],
            "last_verified_at": r["last_verified_at"].isoformat(),
        }
        for r in rows
    ]
    return {"services": services, "entries": entries}
