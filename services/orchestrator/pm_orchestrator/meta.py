"""Meta analysis: recommendations proposed from feedback patterns, reviewed by people, applied as
knowledge — over the predecessor's /api/v1/meta paths.

The analysis reads each rated investigation once (its latest feedback) over a window and, per
domain with enough ratings, proposes:
- `threshold_adjustment` when high stated confidence (>= 0.8) is right much less often than
  stated (the gap exceeds OVERCONFIDENCE_GAP): the domain's confidence should come down;
- `workflow_change` when the domain's verdicts are often wrong (inaccurate or partially
  accurate in at least POOR_SHARE of them) while it runs in fast or balanced mode: run it deep.
- `prompt_rewrite` when an active, corroborated correction keeps coming back (feedback on
  CORRECTION_REPEATS or more investigations): the hypothesis prompt should name that cause.
No proposal is repeated while an earlier one with the same type and target is pending or
approved, nor within COOLDOWN of the earlier one whatever became of it. Applying an approved
recommendation marks it applied and records its knowledge entry in one transaction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Annotated, Any

import asyncpg
from pydantic import BaseModel, ConfigDict, StringConstraints

from pm.knowledge.v1 import knowledge_pb2, knowledge_pb2_grpc
from pm_errors import Conflict, NotFound
from pm_grpc.bodies import parse_body, problem, request_object, validation_failed
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, audit, fetch_page, paging, parse_id
from pm_orchestrator.knowledge import entry_to_proto

STATUSES = ("pending", "approved", "rejected", "applied")
CATEGORY_OF_TYPE = {
    "workflow_change": "pattern",
    "threshold_adjustment": "known_issue",
    "prompt_rewrite": "memory_update",
}
# What the analysis needs before it proposes anything for a domain.
WINDOW = dt.timedelta(days=90)
MIN_RATED = 5
HIGH_CONFIDENCE = 0.8
OVERCONFIDENCE_GAP = 0.2
POOR_SHARE = 0.4
CORRECTION_REPEATS = 3
# How long a proposal is not repeated after it was made, whatever became of it.
COOLDOWN = dt.timedelta(days=30)

_RATED = """
SELECT DISTINCT ON (f.investigation_id) coalesce(i.domain, 'unknown') AS domain, i.mode, i.confidence, f.rating
FROM feedback f JOIN investigations i ON i.id = f.investigation_id
WHERE f.submitted_at >= $1
ORDER BY f.investigation_id, f.submitted_at DESC, f.id DESC
"""


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reviewer: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None
    note: Annotated[str, StringConstraints(max_length=5000)] | None = None


@dataclass(frozen=True)
class Proposal:
    type: str
    target: str
    current_value: str
    proposed_value: str
    rationale: str
    expected_impact: str


def recommendation_to_proto(row: Any) -> knowledge_pb2.Recommendation:
    message = knowledge_pb2.Recommendation(
        id=str(row["id"]),
        type=row["type"],
        target=row["target"],
        current_value=row["current_value"] or "",
        proposed_value=row["proposed_value"] or "",
        rationale=row["rationale"],
        expected_impact=row["expected_impact"] or "",
        status=row["status"],
        reviewer=row["reviewer"] or "",
        review_note=row["review_note"] or "",
    )
    message.created_at.FromDatetime(row["created_at"])
    for name in ("reviewed_at", "applied_at"):
        if row[name] is not None:
            getattr(message, name).FromDatetime(row[name])
    return message


def propose(rated: list[Any], repeated: list[Any]) -> list[Proposal]:
    """The proposals the feedback supports (pure: rows in, proposals out)."""
    by_domain: dict[str, list[Any]] = defaultdict(list)
    for row in rated:
        by_domain[row["domain"]].append(row)
    proposals = []
    for domain, rows in sorted(by_domain.items()):
        if len(rows) < MIN_RATED:
            continue
        confident = [
            r for r in rows if r["confidence"] is not None and round(float(r["confidence"]), 6) >= HIGH_CONFIDENCE
        ]
        if len(confident) >= MIN_RATED:
            stated = sum(float(r["confidence"]) for r in confident) / len(confident)
            observed = sum(r["rating"] == "accurate" for r in confident) / len(confident)
            if stated - observed > OVERCONFIDENCE_GAP:
                proposals.append(Proposal(
                    "threshold_adjustment", domain,
                    f"verdicts stated with confidence >= {HIGH_CONFIDENCE}: mean {stated:.2f}",
                    f"report at most {observed:.2f} for such verdicts in {domain}, or require every verification"
                    " check to pass before ROOT_CAUSE",
                    f"{len(confident)} confident verdicts in {domain} were accurate {observed:.0%} of the time,"
                    f" against a stated {stated:.0%}",
                    "confidence that matches observed accuracy (lower calibration error)",
                ))  # fmt: skip
        poor = sum(r["rating"] != "accurate" for r in rows) / len(rows)
        modes = {r["mode"] for r in rows}
        if poor >= POOR_SHARE and modes & {"fast", "balanced"}:
            proposals.append(Proposal(
                "workflow_change", domain,
                f"modes used: {', '.join(sorted(modes))}",
                f"investigate {domain} in deep mode (more hypothesis iterations, strongest model tier)",
                f"{poor:.0%} of {len(rows)} rated verdicts in {domain} were inaccurate or only partially accurate",
                "fewer wrong verdicts, at a higher cost per investigation",
            ))  # fmt: skip
    for entry in repeated:
        proposals.append(Proposal(
            "prompt_rewrite", "hypothesize",
            "the hypothesis prompt does not name this cause",
            f"name this known cause for {entry['service']}: "
            + str(entry["content"].get("corrected_root_cause", entry["title"])),
            f"people corrected {entry['investigations']} investigations of {entry['service']} to the same root cause"
            f" (knowledge entry {entry['id']})",
            "the cause is considered first when it recurs",
        ))  # fmt: skip
    return proposals


async def run_meta_analysis(pool: asyncpg.Pool, now: dt.datetime | None = None) -> list[Any]:
    """Store what the feedback supports and is not already proposed; the new rows."""
    since = (now or dt.datetime.now(dt.UTC)) - WINDOW
    async with pool.acquire() as conn, conn.transaction():
        # One analysis at a time (a scheduled run and an API call may overlap).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('pm:meta-analysis', 0))")
        rated = await conn.fetch(_RATED, since)
        repeated = await conn.fetch(
            """
            SELECT k.id, k.service, k.title, k.content, count(DISTINCT f.investigation_id) AS investigations
            FROM knowledge_entries k JOIN feedback f ON f.id = ANY (k.source_feedback_ids)
            WHERE k.confidence = 'active' AND k.source = 'corroborated'
            GROUP BY k.id HAVING count(DISTINCT f.investigation_id) >= $1
            """,
            CORRECTION_REPEATS,
        )
        created = []
        for proposal in propose(list(rated), list(repeated)):
            # Same type and target (and text, for prompt rewrites): skip while one is open, and for a
            # cool-down after one was proposed, so a rejected or applied idea is not back next week.
            known = await conn.fetchval(
                "SELECT 1 FROM recommendations WHERE type = $1 AND target = $2"
                " AND ($3 = '' OR proposed_value = $3)"
                " AND (status IN ('pending', 'approved') OR created_at > $4)",
                proposal.type,
                proposal.target,
                proposal.proposed_value if proposal.type == "prompt_rewrite" else "",
                (now or dt.datetime.now(dt.UTC)) - COOLDOWN,
            )
            if known:
                continue
            created.append(await conn.fetchrow(
                "INSERT INTO recommendations (id, type, target, current_value, proposed_value, rationale,"
                " expected_impact) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                uuid.uuid4(), proposal.type, proposal.target, proposal.current_value, proposal.proposed_value,
                proposal.rationale, proposal.expected_impact,
            ))  # fmt: skip
        return created


class MetaServicer(ApiBase, knowledge_pb2_grpc.MetaServiceServicer):
    """pm.knowledge.v1.MetaService."""

    async def ListRecommendations(
        self, request: knowledge_pb2.ListRecommendationsRequest, context: Context
    ) -> knowledge_pb2.ListRecommendationsResponse:
        await self._caller(context)
        page, limit = paging(request.page, request.limit)
        status = request.status or "pending"
        if status not in STATUSES:
            raise validation_failed([problem(["status"], f"must be one of {', '.join(STATUSES)}", "invalid_enum")])
        rows, pages = await fetch_page(self._pool, "recommendations", {"status": status}, page, limit)
        return knowledge_pb2.ListRecommendationsResponse(
            data=[recommendation_to_proto(r) for r in rows], pagination=pages
        )

    async def GetRecommendation(
        self, request: knowledge_pb2.GetRecommendationRequest, context: Context
    ) -> knowledge_pb2.Recommendation:
        await self._caller(context)
        row = await self._pool.fetchrow(
            "SELECT * FROM recommendations WHERE id = $1", parse_id(request.id, "recommendation")
        )
        if row is None:
            raise NotFound("Recommendation not found", details={"id": request.id})
        return recommendation_to_proto(row)

    async def _review(self, request: Any, context: Context, decision: str) -> knowledge_pb2.Recommendation:
        identity = await self._identity(context)
        recommendation_id = parse_id(request.id, "recommendation")
        body = parse_body(ReviewBody, request_object(request))
        if not body.reviewer:
            raise validation_failed([problem(["reviewer"], "reviewer is required", "missing")])
        if decision == "rejected" and not (body.note or "").strip():
            raise validation_failed([problem(["note"], "note is required when rejecting", "missing")])
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(
                "SELECT status FROM recommendations WHERE id = $1 FOR UPDATE", recommendation_id
            )
            if current is None:
                raise NotFound("Recommendation not found", details={"id": request.id})
            if current != "pending":
                verb = "approved" if decision == "approved" else "rejected"
                raise Conflict(f"Recommendation cannot be {verb}", details={"current_status": current})
            row = await conn.fetchrow(
                "UPDATE recommendations SET status = $2, reviewer = $3, review_note = $4, reviewed_at = now()"
                " WHERE id = $1 RETURNING *",
                recommendation_id,
                decision,
                body.reviewer,
                body.note,
            )
            action = "recommendation.approve" if decision == "approved" else "recommendation.reject"
            await audit(
                conn, identity, context, action, "recommendation", recommendation_id, {"reviewer": body.reviewer}
            )
        return recommendation_to_proto(row)

    async def ApproveRecommendation(
        self, request: knowledge_pb2.ApproveRecommendationRequest, context: Context
    ) -> knowledge_pb2.Recommendation:
        return await self._review(request, context, "approved")

    async def RejectRecommendation(
        self, request: knowledge_pb2.RejectRecommendationRequest, context: Context
    ) -> knowledge_pb2.Recommendation:
        return await self._review(request, context, "rejected")

    async def ApplyRecommendation(
        self, request: knowledge_pb2.ApplyRecommendationRequest, context: Context
    ) -> knowledge_pb2.ApplyRecommendationResponse:
        identity = await self._identity(context)
        recommendation_id = parse_id(request.id, "recommendation")
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM recommendations WHERE id = $1 FOR UPDATE", recommendation_id)
            if row is None:
                raise NotFound("Recommendation not found", details={"id": request.id})
            if row["status"] != "approved":
                raise Conflict(
                    "Only approved recommendations can be applied", details={"current_status": row["status"]}
                )
            await conn.execute(
                "UPDATE recommendations SET status = 'applied', applied_at = now() WHERE id = $1", row["id"]
            )
            entry = await conn.fetchrow(
                "INSERT INTO knowledge_entries (id, service, category, title, content, confidence, source,"
                " source_recommendation_id) VALUES ($1, $2, $3, $4, $5, 'active', 'agent', $6) RETURNING *",
                uuid.uuid4(),
                row["target"],
                CATEGORY_OF_TYPE[row["type"]],
                f"{row['type']}: {row['target']} ({str(row['id'])[:8]})",
                {k: row[k] for k in ("current_value", "proposed_value", "rationale", "expected_impact")},
                row["id"],
            )
            await audit(conn, identity, context, "recommendation.apply", "recommendation", row["id"],
                        {"knowledge_entry_id": str(entry["id"])})  # fmt: skip
        return knowledge_pb2.ApplyRecommendationResponse(
            message="Recommendation applied as knowledge entry", knowledge_entry=entry_to_proto(entry)
        )

    async def RunMetaAnalysis(
        self, request: knowledge_pb2.RunMetaAnalysisRequest, context: Context
    ) -> knowledge_pb2.RunMetaAnalysisResponse:
        identity = await self._identity(context)
        created = await run_meta_analysis(self._pool)
        async with self._pool.acquire() as conn:
            await audit(conn, identity, context, "meta.analyze", "recommendation", "-", {"created": len(created)})
        return knowledge_pb2.RunMetaAnalysisResponse(
            message="Meta-analysis complete",
            recommendations_created=len(created),
            recommendations=[recommendation_to_proto(r) for r in created],
        )
