"""Feedback on verdicts, and the knowledge it corroborates.

POST /api/v1/investigations/{id}/feedback rates a completed investigation. A corrected root cause
is folded into a knowledge entry for the investigation's domain, keyed by the correction's
normalised text (lower case, whitespace collapsed): while one submitter says it, the entry is
`provisional`; once two or more distinct submitters say it, it becomes `active` (source
`corroborated`), also when the second one arrives weeks later. A submitter is the body's
`submitted_by`, else the authenticated identity.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import asyncpg
from pydantic import BaseModel, ConfigDict, StringConstraints

from pm.investigation.v1 import investigation_pb2
from pm_auth import CATEGORY_QUERY
from pm_errors import Conflict, NotFound
from pm_grpc import set_http_status
from pm_grpc.bodies import parse_body, request_object
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, audit, parse_id

# Distinct submitters that turn a correction into active knowledge.
CORROBORATION_THRESHOLD = 2
TITLE_PREFIX = "Corrected RCA: "
# The normalisation, in SQL so every row is compared the same way.
_NORMALIZED = "lower(regexp_replace(btrim({}), '\\s+', ' ', 'g'))"


class FeedbackBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    rating: Literal["accurate", "partially_accurate", "inaccurate"]
    corrected_root_cause: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    submitted_by: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


async def corroborate(conn: asyncpg.Connection, feedback_id: uuid.UUID) -> uuid.UUID | None:
    """Fold a feedback's corrected root cause into knowledge: the entry's id (None without a correction)."""
    row = await conn.fetchrow(
        f"""
        SELECT coalesce(i.domain, 'unknown') AS service, {_NORMALIZED.format("f.corrected_root_cause")} AS normalized
        FROM feedback f JOIN investigations i ON i.id = f.investigation_id
        WHERE f.id = $1 AND btrim(coalesce(f.corrected_root_cause, '')) <> ''
        """,
        feedback_id,
    )
    return None if row is None else await _fold(conn, row["service"], row["normalized"])


async def _fold(conn: asyncpg.Connection, service: str, normalized: str) -> uuid.UUID:
    # One writer per (service, correction) at a time, so concurrent submitters count each other.
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"knowledge:{service}:{normalized}")
    support = await conn.fetch(
        f"""
        SELECT f.id, f.corrected_root_cause, coalesce(nullif(btrim(f.submitted_by), ''), f.identity) AS submitter
        FROM feedback f JOIN investigations i ON i.id = f.investigation_id
        WHERE coalesce(i.domain, 'unknown') = $1 AND {_NORMALIZED.format("f.corrected_root_cause")} = $2
        ORDER BY f.submitted_at, f.id
        """,
        service,
        normalized,
    )
    submitters = sorted({r["submitter"] for r in support})
    corroborated = len(submitters) >= CORROBORATION_THRESHOLD
    content = {
        "corrected_root_cause": support[0]["corrected_root_cause"].strip(),
        "normalized": normalized,
        "corroboration_count": len(submitters),
        "feedback_count": len(support),
    }
    title = TITLE_PREFIX + normalized[:100]
    ids = [r["id"] for r in support]
    existing = await conn.fetchrow(
        "SELECT id, confidence FROM knowledge_entries WHERE service = $1 AND title = $2 AND confidence <> 'archived'",
        service,
        title,
    )
    if existing is None:
        return await conn.fetchval(  # type: ignore[no-any-return]
            "INSERT INTO knowledge_entries (id, service, category, title, content, confidence, source,"
            " source_feedback_ids) VALUES ($1, $2, 'known_issue', $3, $4, $5, $6, $7) RETURNING id",
            uuid.uuid4(),
            service,
            title,
            content,
            "active" if corroborated else "provisional",
            "corroborated" if corroborated else "human",
            ids,
        )
    # Corroboration upgrades an entry; it never downgrades one (the lifecycle job does that).
    upgrade = corroborated and existing["confidence"] == "provisional"
    await conn.execute(
        "UPDATE knowledge_entries SET content = $2, source_feedback_ids = $3, updated_at = now(),"
        " confidence = CASE WHEN $4 THEN 'active' ELSE confidence END,"
        " source = CASE WHEN $4 THEN 'corroborated' ELSE source END,"
        " last_verified_at = CASE WHEN $4 THEN now() ELSE last_verified_at END WHERE id = $1",
        existing["id"],
        content,
        ids,
        upgrade,
    )
    return existing["id"]  # type: ignore[no-any-return]


def feedback_to_proto(row: Any) -> investigation_pb2.Feedback:
    message = investigation_pb2.Feedback(
        id=str(row["id"]),
        investigation_id=str(row["investigation_id"]),
        rating=row["rating"],
        corrected_root_cause=row["corrected_root_cause"] or "",
        submitted_by=row["submitted_by"] or "",
    )
    message.submitted_at.FromDatetime(row["submitted_at"])
    return message


class FeedbackRpcs(ApiBase):
    """SubmitFeedback and ListFeedback of pm.investigation.v1.InvestigationService."""

    async def SubmitFeedback(
        self, request: investigation_pb2.SubmitFeedbackRequest, context: Context
    ) -> investigation_pb2.SubmitFeedbackResponse:
        identity = await self._identity(context, CATEGORY_QUERY)
        investigation_id = parse_id(request.id, "investigation")
        body = parse_body(FeedbackBody, request_object(request))
        correction = (body.corrected_root_cause or "").strip() or None
        feedback_id = uuid.uuid4()
        async with self._pool.acquire() as conn, conn.transaction():
            status = await conn.fetchval("SELECT status FROM investigations WHERE id = $1 FOR SHARE", investigation_id)
            if status is None:
                raise NotFound("Investigation not found", details={"id": request.id})
            if status != "completed":
                raise Conflict("Feedback needs a completed investigation", details={"status": status})
            await conn.execute(
                "INSERT INTO feedback (id, investigation_id, rating, corrected_root_cause, submitted_by, identity)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                feedback_id,
                investigation_id,
                body.rating,
                correction,
                body.submitted_by,
                identity.subject,
            )
            entry = await corroborate(conn, feedback_id)
            await audit(
                conn,
                identity,
                context,
                "feedback.submit",
                "investigation",
                investigation_id,
                {
                    "feedback_id": str(feedback_id),
                    "rating": body.rating,
                    "knowledge_entry_id": str(entry) if entry else None,
                },
            )
        set_http_status(context, 201)
        return investigation_pb2.SubmitFeedbackResponse(feedback_id=str(feedback_id))

    async def ListFeedback(
        self, request: investigation_pb2.ListFeedbackRequest, context: Context
    ) -> investigation_pb2.ListFeedbackResponse:
        await self._caller(context)
        investigation_id = parse_id(request.id, "investigation")
        async with self._pool.acquire() as conn:
            if await conn.fetchval("SELECT 1 FROM investigations WHERE id = $1", investigation_id) is None:
                raise NotFound("Investigation not found", details={"id": request.id})
            rows = await conn.fetch(
                "SELECT * FROM feedback WHERE investigation_id = $1 ORDER BY submitted_at DESC, id", investigation_id
            )
        return investigation_pb2.ListFeedbackResponse(data=[feedback_to_proto(r) for r in rows])
